//! Which sessions' traces are exported: the OpenTelemetry sampler `OTEL_TRACES_SAMPLER` names
//! (the SDK's own, deciding on the trace id alone, so an application that computes its
//! connection's trace id can tell whether it was kept), and keep rules that override it when a
//! session ends: failed or evicted sessions (`--keep-errors`), a state longer than a threshold
//! (`--keep-slower`), a port (`--keep-port`).
//!
//! A session the sampler keeps streams its state spans as they end. One it drops while keep
//! rules are set holds its states (not yet made into spans: most such sessions are dropped)
//! until its end decides (at most `--max-sessions` sessions held at once; beyond, a session's
//! states are not held, and a rule that keeps it exports its root alone): such a session's spans
//! all arrive at its end.
//!
//! `--max-traces-per-second N` puts a token bucket (N a second, bursts of N) in front of the
//! exporter: a session takes a token when its first span would go out (its first state span, or
//! its end when it was held); a session that finds none is refused whole, and counted.

use foldhash::{HashMap, HashMapExt as _};
use std::{
    collections::hash_map::Entry,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use agent_common::decode::TcpState;
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample as _};

use super::settings::SettingsError;
use crate::{
    config::PortList,
    failure::Failure,
    session::{Incomplete, Retransmits, SessionEnded, StateEnded},
};

/// The variable naming the sampler.
const SAMPLER_VARIABLE: &str = "OTEL_TRACES_SAMPLER";
/// The variable giving the ratio samplers' ratio.
const SAMPLER_ARG_VARIABLE: &str = "OTEL_TRACES_SAMPLER_ARG";

/// The samplers `OTEL_TRACES_SAMPLER` can name (a connection has no parent, so the
/// `parentbased_*` ones act as their root sampler).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerChoice {
    /// `always_on` (the default), `parentbased_always_on`.
    AlwaysOn,
    /// `always_off`, `parentbased_always_off`.
    AlwaysOff,
    /// `traceidratio`, `parentbased_traceidratio`: the ratio `OTEL_TRACES_SAMPLER_ARG` gives
    /// (default 1.0).
    TraceIdRatio(f64),
}

impl SamplerChoice {
    /// The sampler the variables name (`var` reads one); a name or ratio the SDK would quietly
    /// replace is refused.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let Some(name) = var(SAMPLER_VARIABLE) else {
            return Ok(Self::AlwaysOn);
        };
        match name.trim() {
            "always_on" | "parentbased_always_on" => Ok(Self::AlwaysOn),
            "always_off" | "parentbased_always_off" => Ok(Self::AlwaysOff),
            "traceidratio" | "parentbased_traceidratio" => match var(SAMPLER_ARG_VARIABLE) {
                None => Ok(Self::TraceIdRatio(1.0)),
                Some(arg) => match arg.trim().parse::<f64>() {
                    Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(Self::TraceIdRatio(ratio)),
                    _ => Err(SettingsError::Variable {
                        variable: SAMPLER_ARG_VARIABLE,
                        value: arg,
                        expected: "the ratio must be a number from 0 to 1",
                    }),
                },
            },
            _ => Err(SettingsError::Variable {
                variable: SAMPLER_VARIABLE,
                value: name,
                expected: "the sampler must be always_on, always_off, traceidratio, \
                           parentbased_always_on, parentbased_always_off or \
                           parentbased_traceidratio",
            }),
        }
    }

    fn sampler(self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
        }
    }
}

/// Rules that keep a session the sampler dropped, decided at its end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeepRules {
    /// Keep sessions that failed (refused, timed out, reset…) or were evicted.
    pub errors: bool,
    /// Keep sessions that spent longer than this in one of these states.
    pub slower: Vec<(TcpState, Duration)>,
    /// Keep sessions with one of these ports at either end.
    pub ports: Option<PortList>,
}

impl KeepRules {
    fn is_empty(&self) -> bool {
        !self.errors && self.slower.is_empty() && self.ports.is_none()
    }

    fn keeps_state(&self, ended: &StateEnded) -> bool {
        let took = Duration::from_nanos(ended.end_ns.saturating_sub(ended.start_ns));
        self.slower
            .iter()
            .any(|(state, threshold)| *state == ended.state && took > *threshold)
    }

    fn keeps_session(&self, ended: &SessionEnded) -> bool {
        let ends = &ended.session.endpoints;
        (self.errors
            && (ended.outcome.failure().is_some() || ended.incomplete == Some(Incomplete::Evicted)))
            || self.ports.as_ref().is_some_and(|ports| {
                ports.contains(ends.local_port) || ports.contains(ends.remote_port)
            })
    }
}

/// What became of the sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplingCounts {
    /// Sessions the sampler kept.
    pub by_sampler: u64,
    /// Sessions the sampler dropped that a keep rule kept.
    pub by_rule: u64,
    /// Sessions dropped.
    pub sampled_out: u64,
    /// Sessions kept that the rate limit refused.
    pub rate_limited: u64,
}

/// A token bucket: `rate` tokens a second, at most `rate` at once.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// `per_second` traces a second, in bursts of as many.
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        Self {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Takes a token at `now`, if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where a state's span goes.
#[derive(Debug, PartialEq, Eq)]
pub enum StateRoute {
    /// Exported now: the sampler keeps its session.
    Export,
    /// Held until its session ends.
    Hold,
    /// Dropped: the sampler drops its session and no rule could keep it.
    Drop,
}

/// A state held: what its span needs beyond its session's identity, ids and ends, which the
/// session's end supplies: 80 bytes, where a [`StateEnded`] takes 216.
#[derive(Debug)]
struct HeldState {
    index: u32,
    state: TcpState,
    next_state: Option<TcpState>,
    start_ns: u64,
    end_ns: u64,
    incomplete: Option<Incomplete>,
    start_unknown: bool,
    retransmits: Retransmits,
    failure: Option<Failure>,
}

impl HeldState {
    fn of(ended: &StateEnded) -> Self {
        Self {
            index: ended.index,
            state: ended.state,
            next_state: ended.next_state,
            start_ns: ended.start_ns,
            end_ns: ended.end_ns,
            incomplete: ended.incomplete,
            start_unknown: ended.start_unknown,
            retransmits: ended.retransmits.clone(),
            failure: ended.failure,
        }
    }

    /// The state as it ended, in the session `ended` (its ends and owner as they were at the
    /// session's end, the most that was learnt of them).
    fn ended_in(self, ended: &SessionEnded) -> StateEnded {
        let session = &ended.session;
        StateEnded {
            ids: session.ids,
            index: self.index,
            parent_span_id: session.span_id(),
            state: self.state,
            next_state: self.next_state,
            start_ns: self.start_ns,
            end_ns: self.end_ns,
            incomplete: self.incomplete,
            start_unknown: self.start_unknown,
            retransmits: self.retransmits,
            failure: self.failure,
            endpoints: session.endpoints,
            context: session.context,
            role: session.role,
        }
    }
}

/// A session the sampler dropped, held until its end decides.
#[derive(Debug)]
struct Held {
    states: Vec<HeldState>,
    /// A state already met a keep rule.
    kept: bool,
}

/// Emptied vectors of held states kept for the next sessions held, at most: most held
/// sessions are dropped at their end, and each would otherwise allocate one and free it.
const SPARE_HELD_VECTORS: usize = 256;

/// The sampler and the keep rules, with the sessions held for a decision.
pub struct TraceSampling {
    sampler: Sampler,
    rules: KeepRules,
    held: HashMap<[u8; 16], Held>,
    spare: Vec<Vec<HeldState>>,
    capacity: usize,
    limit: Option<RateLimit>,
    /// Sessions the rate limit refused, until their end (as bounded as the held ones).
    refused: lru::LruCache<[u8; 16], ()>,
    counts: SamplingCounts,
}

impl TraceSampling {
    /// Samples with `choice`, keeps what `rules` keep, holding at most `capacity` sessions,
    /// and lets out what `limit` allows.
    pub fn new(
        choice: SamplerChoice,
        rules: KeepRules,
        capacity: NonZeroUsize,
        limit: Option<RateLimit>,
    ) -> Self {
        Self {
            sampler: choice.sampler(),
            rules,
            held: HashMap::new(),
            spare: Vec::new(),
            capacity: capacity.get(),
            limit,
            refused: crate::bounded::lru(capacity),
            counts: SamplingCounts::default(),
        }
    }

    /// Whether the rate limit lets a session out (taking its token); one it refuses is
    /// remembered until its end.
    fn admitted(&mut self, trace_id: [u8; 16]) -> bool {
        let admitted = self
            .limit
            .as_mut()
            .is_none_or(|limit| limit.take(Instant::now()));
        if !admitted {
            self.refused.put(trace_id, ());
        }
        admitted
    }

    /// Whether the sampler keeps the trace `trace_id`.
    fn sampled(&self, trace_id: [u8; 16]) -> bool {
        let result = self.sampler.should_sample(
            None,
            TraceId::from_bytes(trace_id),
            "",
            &SpanKind::Internal,
            &[],
            &[],
        );
        result.decision == SamplingDecision::RecordAndSample
    }

    /// Where the span of `ended` goes.
    pub fn route_state(&mut self, ended: &StateEnded) -> StateRoute {
        let trace_id = ended.ids.trace_id;
        if self.sampled(trace_id) {
            // The first state span of a trace takes its token.
            let refused =
                self.refused.contains(&trace_id) || (ended.index == 0 && !self.admitted(trace_id));
            if refused {
                StateRoute::Drop
            } else {
                StateRoute::Export
            }
        } else if self.rules.is_empty() {
            StateRoute::Drop
        } else {
            StateRoute::Hold
        }
    }

    /// Holds `ended` (routed [`StateRoute::Hold`]) until its session ends.
    pub fn hold(&mut self, ended: &StateEnded) {
        let kept = self.rules.keeps_state(ended);
        let full = self.held.len() >= self.capacity;
        let held = match self.held.entry(ended.ids.trace_id) {
            Entry::Occupied(held) => held.into_mut(),
            Entry::Vacant(_) if full => return,
            Entry::Vacant(room) => room.insert(Held {
                states: self.spare.pop().unwrap_or_default(),
                kept: false,
            }),
        };
        held.states.push(HeldState::of(ended));
        held.kept |= kept;
    }

    /// Takes back the emptied vector of a session no longer held.
    fn recycle(&mut self, mut states: Vec<HeldState>) {
        if self.spare.len() < SPARE_HELD_VECTORS && states.capacity() > 0 {
            states.clear();
            self.spare.push(states);
        }
    }

    /// Whether the session `ended` is exported: with the states held for it, or `None`.
    pub fn route_session(&mut self, ended: &SessionEnded) -> Option<Vec<StateEnded>> {
        let trace_id = ended.session.ids.trace_id;
        if self.sampled(trace_id) {
            if self.refused.pop(&trace_id).is_some() {
                self.counts.rate_limited += 1;
                return None;
            }
            self.counts.by_sampler += 1;
            return Some(Vec::new());
        }
        let (mut states, kept) = self
            .held
            .remove(&trace_id)
            .map_or((Vec::new(), false), |held| (held.states, held.kept));
        let exported = if !self.rules.is_empty() && (kept || self.rules.keeps_session(ended)) {
            if self.admitted(trace_id) {
                self.counts.by_rule += 1;
                Some(
                    states
                        .drain(..)
                        .map(|state| state.ended_in(ended))
                        .collect(),
                )
            } else {
                self.refused.pop(&trace_id);
                self.counts.rate_limited += 1;
                None
            }
        } else {
            self.counts.sampled_out += 1;
            None
        };
        self.recycle(states);
        exported
    }

    /// The counts so far.
    pub fn counts(&self) -> SamplingCounts {
        self.counts
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use agent_common::{
        correlation::{BootId, ConnectionIds},
        state::{ESTABLISHED, SYN_SENT},
    };

    use super::*;
    use crate::{
        failure::Failure,
        session::{Context, Endpoints, Outcome, Role},
        sink::otlp::settings::tests::env,
    };

    #[test]
    fn the_sampler_variables_name_the_sdks_samplers_and_refuse_the_rest() {
        let choice = |vars: &[(&str, &str)]| SamplerChoice::from_env(env(vars));
        assert_eq!(choice(&[]).expect("default"), SamplerChoice::AlwaysOn);
        assert_eq!(
            choice(&[(SAMPLER_VARIABLE, "parentbased_always_off")]).expect("valid"),
            SamplerChoice::AlwaysOff
        );
        assert_eq!(
            choice(&[
                (SAMPLER_VARIABLE, "traceidratio"),
                (SAMPLER_ARG_VARIABLE, "0.1")
            ])
            .expect("valid"),
            SamplerChoice::TraceIdRatio(0.1)
        );
        for (vars, named) in [
            (&[(SAMPLER_VARIABLE, "xray")][..], SAMPLER_VARIABLE),
            (
                &[
                    (SAMPLER_VARIABLE, "traceidratio"),
                    (SAMPLER_ARG_VARIABLE, "1.5"),
                ],
                SAMPLER_ARG_VARIABLE,
            ),
            (
                &[
                    (SAMPLER_VARIABLE, "traceidratio"),
                    (SAMPLER_ARG_VARIABLE, "half"),
                ],
                SAMPLER_ARG_VARIABLE,
            ),
        ] {
            let err = choice(vars).expect_err("refused");
            assert!(err.to_string().starts_with(named), "{err}");
        }
    }

    const CAPACITY: NonZeroUsize = NonZeroUsize::new(16).expect("non-zero");

    #[test]
    fn the_rate_limit_lets_out_its_rate_in_bursts_of_as_many() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10);
        let at = |ms| start + Duration::from_millis(ms);
        let burst = (0..20).filter(|_| limit.take(at(0))).count();
        assert_eq!(burst, 10, "a burst of the rate");
        assert!(!limit.take(at(50)), "half a token after 50 ms");
        assert!(limit.take(at(100)), "a whole one after 100 ms");
        // A second later the bucket is full again: a burst, then the rate.
        let second = (0..100).filter(|i| limit.take(at(1_100 + i * 10))).count();
        assert!((19..=20).contains(&second), "{second} in that second");
    }

    fn ids(cookie: u64) -> ConnectionIds {
        ConnectionIds::new(&BootId([5; 16]), cookie)
    }

    fn ends() -> Endpoints {
        Endpoints {
            local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 40_000,
            remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            remote_port: 443,
        }
    }

    /// The first state of the session of `cookie`, `state`, ending after `nanos`.
    pub(in crate::sink::otlp) fn state(cookie: u64, state: u32, nanos: u64) -> StateEnded {
        StateEnded {
            ids: ids(cookie),
            index: 0,
            parent_span_id: ids(cookie).root_span_id,
            state: TcpState(state),
            next_state: Some(TcpState(ESTABLISHED)),
            start_ns: 0,
            end_ns: nanos,
            incomplete: None,
            start_unknown: false,
            retransmits: crate::session::Retransmits::default(),
            failure: None,
            endpoints: ends(),
            context: Context {
                owner: None,
                uid: 0,
                netns: 1,
                cgroup_id: 1,
            },
            role: Role::Connect,
        }
    }

    /// The session of `cookie` ending, as `outcome` says.
    pub(in crate::sink::otlp) fn ended(cookie: u64, outcome: Outcome) -> SessionEnded {
        let crate::session::Completed::Session(mut ended) = ({
            let mut table = crate::session::SessionTable::new(
                std::num::NonZeroUsize::new(2).expect("non-zero"),
                BootId([5; 16]),
            );
            let mut out = Vec::new();
            let change = |old, new, ts| agent_common::decode::StateChange {
                ts_ns: ts,
                skaddr: cookie,
                cookie,
                owner: None,
                uid: 0,
                netns: 1,
                cgroup_id: 1,
                span_ns: 0,
                pid: 0,
                comm: agent_common::decode::Comm::new([0; agent_common::event::COMM_LEN]),
                local_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                local_port: 40_000,
                remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                remote_port: 443,
                oldstate: TcpState(old),
                newstate: TcpState(new),
                reset_received: false,
                close: None,
            };
            table.observe(&change(agent_common::state::CLOSE, SYN_SENT, 1), &mut out);
            table.observe(&change(SYN_SENT, agent_common::state::CLOSE, 2), &mut out);
            out.pop().expect("the session")
        }) else {
            panic!("a session")
        };
        ended.outcome = outcome;
        *ended
    }

    #[test]
    fn always_off_keeps_only_what_a_rule_keeps_with_the_spans_held_for_it() {
        let rules = KeepRules {
            errors: true,
            slower: vec![(TcpState(SYN_SENT), Duration::from_secs(1))],
            ports: None,
        };
        let mut sampling = TraceSampling::new(SamplerChoice::AlwaysOff, rules, CAPACITY, None);
        // A failed session: its state held, then exported with its root.
        assert_eq!(
            sampling.route_state(&state(1, SYN_SENT, 1_000)),
            StateRoute::Hold
        );
        sampling.hold(&state(1, SYN_SENT, 1_000));
        let failed = ended(1, Outcome::Failed(Failure::ConnectionRefused));
        assert_eq!(
            sampling.route_session(&failed).map(|held| held.len()),
            Some(1)
        );
        // A slow handshake: kept by its state.
        sampling.hold(&state(2, SYN_SENT, 1_500_000_000));
        assert!(sampling.route_session(&ended(2, Outcome::Normal)).is_some());
        // A fast, orderly one: dropped, its held span with it.
        sampling.hold(&state(3, SYN_SENT, 1_000));
        assert!(sampling.route_session(&ended(3, Outcome::Normal)).is_none());
        assert_eq!(
            sampling.counts(),
            SamplingCounts {
                by_sampler: 0,
                by_rule: 2,
                sampled_out: 1,
                rate_limited: 0
            }
        );
        assert!(sampling.held.is_empty(), "nothing left held");
    }

    #[test]
    fn without_rules_a_dropped_session_holds_nothing_and_the_ratio_decides_by_trace_id() {
        let mut sampling = TraceSampling::new(
            SamplerChoice::TraceIdRatio(0.5),
            KeepRules::default(),
            CAPACITY,
            None,
        );
        let (mut kept, mut dropped) = (0, 0);
        for cookie in 1..=200 {
            match sampling.route_state(&state(cookie, SYN_SENT, 1)) {
                StateRoute::Export => kept += 1,
                StateRoute::Drop => dropped += 1,
                StateRoute::Hold => panic!("no rule to hold for"),
            }
            let exported = sampling
                .route_session(&ended(cookie, Outcome::Normal))
                .is_some();
            let by_sdk = Sampler::TraceIdRatioBased(0.5)
                .should_sample(
                    None,
                    TraceId::from_bytes(ids(cookie).trace_id),
                    "",
                    &SpanKind::Internal,
                    &[],
                    &[],
                )
                .decision
                == SamplingDecision::RecordAndSample;
            assert_eq!(exported, by_sdk, "cookie {cookie}");
        }
        assert!((70..=130).contains(&kept), "{kept} kept, {dropped} dropped");
    }
}
