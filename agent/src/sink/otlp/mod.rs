//! `--otlp`: every TCP socket session becomes one OpenTelemetry trace, exported over OTLP.
//!
//! [`crate::session`] turns state changes into completed states and sessions; this sink turns
//! those into spans ([`spans`]) and hands them to the export thread ([`export`]), configured
//! from the command line and the standard `OTEL_*` variables ([`settings`], [`tls`]).

pub mod answers;
pub mod export;
pub mod settings;
pub mod spans;
pub mod tls;

use agent_common::correlation::{BootId, ConnectionIds};

use self::{
    export::{ExportCounts, ExportError, SpanExport},
    settings::ExportSettings,
    spans::{SessionDetails, SpanFactory},
};
use crate::{clock::WallClock, session::Completed};

/// Sends completed sessions and states as spans.
pub struct OtlpSink {
    factory: SpanFactory,
    export: SpanExport,
    boot_id: BootId,
}

impl OtlpSink {
    /// Starts exporting with `settings`; at most `queue_capacity` spans wait for the exporter.
    /// Trace ids are derived from `boot_id` and each socket's cookie.
    pub fn start(
        settings: &ExportSettings,
        clock: WallClock,
        boot_id: BootId,
        queue_capacity: usize,
    ) -> Result<Self, ExportError> {
        let host_name = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok());
        let resource = settings::resource(host_name, std::env::var("OTEL_SERVICE_NAME").ok());
        Ok(Self {
            factory: SpanFactory::new(clock),
            export: SpanExport::start(settings, resource, queue_capacity)?,
            boot_id,
        })
    }

    /// The identifiers of the trace of the socket with `cookie`.
    pub fn session_ids(&self, cookie: u64) -> ConnectionIds {
        ConnectionIds::new(&self.boot_id, cookie)
    }

    /// Queues the span of a completed state or session (never waits); `details` describe a
    /// session's owner and location.
    pub fn export(&self, completed: &Completed, details: SessionDetails<'_>) {
        self.export.push(self.factory.span(completed, details));
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
