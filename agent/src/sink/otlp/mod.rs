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

#[cfg(test)]
mod tests {
    use std::{num::NonZeroUsize, time::Duration};

    use agent_common::state::SYN_SENT;

    use super::{
        sampling::{
            KeepRules, SamplerChoice,
            tests::{ended, state},
        },
        settings::Protocol,
        tls::TlsFiles,
        *,
    };
    use crate::{failure::Failure, session::Outcome};

    /// Details that count how often a sink asks for them.
    #[derive(Default)]
    struct Asked(u32);

    impl Describe for Asked {
        fn details(&mut self) -> SessionDetails<'_> {
            self.0 += 1;
            SessionDetails::default()
        }
    }

    /// A sink sampling as `choice` says, keeping what `rules` keep, exporting to a port nobody
    /// listens on (its spans are never delivered; the test does not wait for them).
    fn sink(choice: SamplerChoice, rules: KeepRules) -> OtlpSink {
        let settings = ExportSettings {
            protocol: Protocol::Grpc,
            endpoint: Some("http://127.0.0.1:9".into()),
            secure: false,
            timeout: Duration::from_secs(1),
            tls: TlsFiles::default(),
        };
        let capacity = NonZeroUsize::new(16).expect("non-zero");
        let sampling = TraceSampling::new(choice, rules, capacity, None);
        OtlpSink::start(&settings, sampling, WallClock::from_epoch_at_boot_ns(0), 64)
            .expect("a sink")
    }

    #[test]
    fn only_a_session_made_into_spans_is_described() {
        let keep_errors = KeepRules {
            errors: true,
            ..KeepRules::default()
        };
        let refused = Outcome::Failed(Failure::ConnectionRefused);
        for (choice, rules, outcome, asked) in [
            // Sampled out: neither its state nor its end asks.
            (
                SamplerChoice::AlwaysOff,
                KeepRules::default(),
                Outcome::Normal,
                0,
            ),
            // Held, then dropped at its end.
            (
                SamplerChoice::AlwaysOff,
                keep_errors.clone(),
                Outcome::Normal,
                0,
            ),
            // Held, then kept at its end: asked once, for its root and its first state.
            (SamplerChoice::AlwaysOff, keep_errors, refused, 1),
            // Streamed: its first state span, then its root.
            (
                SamplerChoice::AlwaysOn,
                KeepRules::default(),
                Outcome::Normal,
                2,
            ),
        ] {
            let mut sink = sink(choice, rules.clone());
            let mut details = Asked::default();
            sink.state_ended(&state(7, SYN_SENT, 5), &mut details);
            sink.session_ended(&ended(7, outcome), &mut details);
            assert_eq!(details.0, asked, "{choice:?}, {rules:?}, {outcome:?}");
        }
    }
}
