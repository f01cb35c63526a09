//! `--otlp`: every TCP socket session becomes one OpenTelemetry trace, exported over OTLP.
//!
//! A [`SessionSink`]: the session stage ([`crate::session::stage`]) hands it each state a
//! session left and each session's end; it turns them into spans encoded in OTLP's wire format
//! ([`spans`], [`wire`]) and hands those to the export thread ([`export`]), which sends them
//! ([`transport`]) as the command line and the standard `OTEL_*` variables say ([`settings`],
//! [`tls`]).

pub mod export;
pub mod sampling;
pub mod settings;
pub mod spans;
pub mod tls;
pub mod transport;
pub mod wire;

use self::{
    export::{ExportCounts, ExportError, Origin, SpanExport},
    sampling::{StateRoute, TraceSampling},
    settings::ExportSettings,
    spans::SpanFactory,
};
use super::{Health, SessionSink, SessionSinkAccount};
use crate::{
    clock::WallClock,
    details::{Describe, SessionDetails},
    session::{SessionEnded, StateEnded},
};

/// Sends the states and sessions that ended as spans.
pub struct OtlpSink {
    factory: SpanFactory,
    export: SpanExport,
    sampling: TraceSampling,
    /// The counts at the last report.
    reported: ExportCounts,
}

impl OtlpSink {
    /// Starts exporting with `settings` the sessions `sampling` keeps; at most
    /// `queue_capacity` spans are held for the exporter.
    pub fn start(
        settings: &ExportSettings,
        sampling: TraceSampling,
        clock: WallClock,
        queue_capacity: usize,
    ) -> Result<Self, ExportError> {
        let host_name = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok());
        let resource = settings::resource(host_name, std::env::var("OTEL_SERVICE_NAME").ok());
        let origin = Origin::new(&resource, spans::scope());
        Ok(Self {
            factory: SpanFactory::new(clock),
            export: SpanExport::start(settings, origin, queue_capacity)?,
            sampling,
            reported: ExportCounts::default(),
        })
    }
}

impl SessionSink for OtlpSink {
    fn state_ended(&mut self, state: &StateEnded, details: &mut dyn Describe) {
        match self.sampling.route_state(state) {
            StateRoute::Export => self
                .export
                .push(|| self.factory.state_span(state, &details.details())),
            StateRoute::Hold => self.sampling.hold(state),
            StateRoute::Drop => {}
        }
    }

    fn session_ended(&mut self, session: &SessionEnded, details: &mut dyn Describe) {
        if let Some(held) = self.sampling.route_session(session) {
            let details = &details.details();
            // The session's details are its first state's, which only that state's span
            // carries.
            let none = SessionDetails::default();
            for state in &held {
                let state_details = if state.index == 0 { details } else { &none };
                self.export
                    .push(|| self.factory.state_span(state, state_details));
            }
            self.export
                .push(|| self.factory.session_span(session, details));
        }
    }

    fn end_of_drain(&mut self) {
        self.export.hand_over();
    }

    fn report_growth(&mut self, _health: &Health) {
        let counts = self.export.counts();
        if counts.dropped > self.reported.dropped {
            eprintln!(
                "tcpstates: {} more spans dropped (OTLP queue full); {} so far",
                counts.dropped - self.reported.dropped,
                counts.dropped
            );
        }
        self.reported = counts;
    }

    fn account(&self) -> SessionSinkAccount {
        SessionSinkAccount::Otlp {
            spans: self.export.counts(),
            sampling: self.sampling.counts(),
        }
    }

    fn finish(mut self: Box<Self>, health: &Health) -> SessionSinkAccount {
        // Spans of the sessions ended at exit may have met a full queue: said like any other.
        self.report_growth(health);
        let sampling = self.sampling.counts();
        SessionSinkAccount::Otlp {
            spans: self.export.finish(),
            sampling,
        }
    }
}
