//! The metrics pipeline: the SDK's meter provider, read every `OTEL_METRIC_EXPORT_INTERVAL`
//! (default 60 s) by its periodic reader, exported over OTLP by opentelemetry-otlp's metric
//! exporter.
//!
//! The periodic reader exports from a thread of its own, outside any async runtime, which
//! neither transport's client can work from; the exporter it is given runs each export on a
//! runtime of the pipeline's own (one worker thread), and counts what became of it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_otlp::{
    MetricExporter, RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    metrics::{
        Instrument, PeriodicReader, SdkMeterProvider, Stream, Temporality, data::ResourceMetrics,
        exporter::PushMetricExporter,
    },
};

use crate::sink::otlp::{
    export::ExportError,
    settings::{ExportSettings, Protocol},
    tls,
};

/// Most attribute sets each metric keeps per collection; beyond it, measurements with a new set
/// go to one overflow data point (`otel.metric.overflow=true`), as the SDK does.
pub const CARDINALITY_LIMIT: usize = 2000;

/// What became of the metric exports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsCounts {
    /// Exports the collector accepted.
    pub exported: u64,
    /// Exports that failed (after the exporter's own retries).
    pub failed: u64,
}

/// The export outcomes, shared with the exporter the reader owns.
#[derive(Debug, Default)]
struct Outcomes {
    exported: AtomicU64,
    failed: AtomicU64,
}

impl Outcomes {
    fn snapshot(&self) -> MetricsCounts {
        MetricsCounts {
            exported: self.exported.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// The OTLP exporter, run on the pipeline's runtime whatever thread asks for an export.
#[derive(Debug)]
struct OnRuntime {
    exporter: MetricExporter,
    runtime: tokio::runtime::Handle,
    outcomes: Arc<Outcomes>,
}

impl PushMetricExporter for OnRuntime {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.runtime.block_on(self.exporter.export(metrics));
        let counter = match result {
            Ok(()) => &self.outcomes.exported,
            Err(_) => &self.outcomes.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.exporter.temporality()
    }
}

/// A running metrics pipeline.
pub struct MetricsExport {
    provider: SdkMeterProvider,
    outcomes: Arc<Outcomes>,
    /// Runs the OTLP exports; `None` for a provider with another exporter (tests).
    runtime: Option<tokio::runtime::Runtime>,
}

impl MetricsExport {
    /// Starts the pipeline: exports with `settings` and `temporality`, under `resource`.
    pub fn start(
        settings: &ExportSettings,
        temporality: Temporality,
        resource: Resource,
    ) -> Result<Self, ExportError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-metrics")
            .enable_all()
            .build()
            .map_err(ExportError::Thread)?;
        let exporter = {
            // The gRPC client needs the runtime it will run on while it is built.
            let _entered = runtime.enter();
            build_exporter(settings, temporality)?
        };
        let outcomes = Arc::new(Outcomes::default());
        let reader = PeriodicReader::builder(OnRuntime {
            exporter,
            runtime: runtime.handle().clone(),
            outcomes: Arc::clone(&outcomes),
        })
        .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .with_view(cardinality_limit)
            .build();
        Ok(Self {
            provider,
            outcomes,
            runtime: Some(runtime),
        })
    }

    /// A pipeline around `provider` (made with [`cardinality_limit`] as its view), which
    /// exports as it was built to.
    #[cfg(test)]
    pub fn with_provider(provider: SdkMeterProvider) -> Self {
        Self {
            provider,
            outcomes: Arc::default(),
            runtime: None,
        }
    }

    /// The meter the instruments are made with.
    pub fn meter(&self) -> Meter {
        self.provider.meter(env!("CARGO_PKG_NAME"))
    }

    /// The counts so far.
    pub fn counts(&self) -> MetricsCounts {
        self.outcomes.snapshot()
    }

    /// Exports what was recorded since the last export, stops the pipeline and returns its
    /// counts.
    pub fn finish(self) -> MetricsCounts {
        // A failed last export is counted by the exporter; nothing more can be done about it.
        let _ = self.provider.shutdown();
        // Called from the event loop, which may not block on another runtime's shutdown; the
        // export is over, and what is left of the runtime ends with the process.
        if let Some(runtime) = self.runtime {
            runtime.shutdown_background();
        }
        self.outcomes.snapshot()
    }
}

/// The view every instrument gets: at most [`CARDINALITY_LIMIT`] attribute sets.
pub fn cardinality_limit(_: &Instrument) -> Option<Stream> {
    Stream::builder()
        .with_cardinality_limit(CARDINALITY_LIMIT)
        .build()
        .ok()
}

fn build_exporter(
    settings: &ExportSettings,
    temporality: Temporality,
) -> Result<MetricExporter, ExportError> {
    tls::install_crypto_provider();
    let builder = MetricExporter::builder().with_temporality(temporality);
    let exporter = match settings.protocol {
        Protocol::Grpc => configure_grpc(builder.with_tonic(), settings).build(),
        Protocol::HttpProtobuf | Protocol::HttpJson => {
            configure_http(builder.with_http(), settings)?.build()
        }
    };
    Ok(exporter?)
}

/// Retries within one request, by the exporter: on the failures the OTLP specification calls
/// retryable, honouring the collector's Retry-After (HTTP) or RetryInfo (gRPC), within the
/// request timeout; at most 0.5 s apart otherwise.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::recommended().with_max_delay(Duration::from_millis(500))
}

/// A gRPC exporter builder set up as `settings` say.
fn configure_grpc<B: WithExportConfig + WithTonicConfig>(
    builder: B,
    settings: &ExportSettings,
) -> B {
    let mut builder = builder
        .with_timeout(settings.timeout)
        .with_retry_policy(retry_policy());
    if settings.secure {
        builder = builder.with_tls_config(tls::grpc_config(&settings.tls));
    }
    match &settings.endpoint {
        Some(endpoint) => builder.with_endpoint(endpoint),
        None => builder,
    }
}

/// An HTTP exporter builder set up as `settings` say.
fn configure_http<B: WithExportConfig + WithHttpConfig>(
    builder: B,
    settings: &ExportSettings,
) -> Result<B, ExportError> {
    let protocol = if settings.protocol == Protocol::HttpJson {
        opentelemetry_otlp::Protocol::HttpJson
    } else {
        opentelemetry_otlp::Protocol::HttpBinary
    };
    let mut builder = builder
        .with_protocol(protocol)
        .with_timeout(settings.timeout)
        .with_retry_policy(retry_policy());
    if !settings.tls.is_empty() {
        builder = builder.with_http_client(tls::http_client(&settings.tls, settings.timeout)?);
    }
    Ok(match &settings.endpoint {
        Some(endpoint) => builder.with_endpoint(endpoint),
        None => builder,
    })
}
