//! `--otlp`: every TCP socket session becomes one OpenTelemetry trace, exported over OTLP.
//!
//! [`crate::session`] turns state changes into completed states and sessions; this sink turns
//! those into spans ([`spans`]) and hands them to the export thread ([`export`]), configured
//! from the command line and the standard `OTEL_*` variables ([`settings`]).

pub mod export;
pub mod settings;
pub mod spans;

use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};

use self::{
    export::{ExportCounts, ExportError, SpanExport},
    settings::ExportSettings,
    spans::SpanFactory,
};
use crate::{
    clock::WallClock,
    session::{Completed, SessionIds},
};

/// Sends completed sessions and states as spans.
pub struct OtlpSink {
    factory: SpanFactory,
    export: SpanExport,
    ids: RandomIdGenerator,
}

impl OtlpSink {
    /// Starts exporting with `settings`; at most `queue_capacity` spans wait for the exporter.
    pub fn start(
        settings: &ExportSettings,
        clock: WallClock,
        queue_capacity: usize,
    ) -> Result<Self, ExportError> {
        let host_name = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok());
        let resource = settings::resource(host_name, std::env::var("OTEL_SERVICE_NAME").ok());
        Ok(Self {
            factory: SpanFactory::new(clock),
            export: SpanExport::start(settings, resource, queue_capacity)?,
            ids: RandomIdGenerator::default(),
        })
    }

    /// Fresh identifiers for a new session's trace.
    pub fn new_session_ids(&self) -> SessionIds {
        SessionIds {
            trace_id: u128::from_be_bytes(self.ids.new_trace_id().to_bytes()),
            root_span_id: u64::from_be_bytes(self.ids.new_span_id().to_bytes()),
        }
    }

    /// Queues the span of a completed state or session (never waits).
    pub fn export(&self, completed: &Completed) {
        let child_span_id = u64::from_be_bytes(self.ids.new_span_id().to_bytes());
        self.export
            .push(self.factory.span(completed, child_span_id));
    }

    /// What happened to the spans so far.
    pub fn counts(&self) -> ExportCounts {
        self.export.counts()
    }

    /// Exports everything queued (or gives up on it) and returns the final counts.
    pub fn finish(self) -> ExportCounts {
        self.export.finish()
    }
}
