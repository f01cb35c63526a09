//! What the collector said about each export request, beyond the outcome the exporter returns.
//!
//! opentelemetry-otlp 0.33 returns a failed request as its status alone (`HTTP export failed
//! with status code: 415`, `… failed with gRPC code: InvalidArgument`) and an accepted one as
//! `Ok`, and gives the rest only to its internal logs (`tracing` events, its `internal-logs`
//! feature): the collector's message (`HttpClient.StatusError`'s response body, a
//! `*.ExportFailed` event's gRPC message) and a partial success (`*.PartialSuccess`: spans
//! rejected and why). The export thread runs each request inside a [`REQUEST_SPAN`] naming it,
//! and [`AnswerLayer`], a `tracing` layer on that thread only, files those events under the
//! request, for [`Answers::take`] once the request has settled.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
};

use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id},
};
use tracing_subscriber::{
    Layer,
    filter::{FilterFn, Filtered},
    layer::Context,
    registry::LookupSpan,
};

/// The name of the span each export request runs in; its field `request` numbers it.
pub const REQUEST_SPAN: &str = "otlp_request";
/// The crate whose events are read.
const EXPORTER_TARGET: &str = "opentelemetry-otlp";
/// The longest message kept, in characters: a collector may answer with a page.
const MESSAGE_MAX: usize = 300;

/// What the collector said about one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// Its message: a refusal's reason, or a partial success's.
    pub message: Option<String>,
    /// Spans it rejected although it accepted the request (partial success).
    pub rejected_spans: u64,
}

/// The answers of requests not yet settled, by request number.
#[derive(Clone, Debug, Default)]
pub struct Answers(Arc<Mutex<HashMap<u64, Answer>>>);

impl Answers {
    /// What the collector said about `request`, forgotten once taken.
    pub fn take(&self, request: u64) -> Answer {
        self.lock().remove(&request).unwrap_or_default()
    }

    /// Forgets every answer (the requests were abandoned).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// A layer filing the exporter's events into these answers; it sees nothing else.
    pub fn layer<S>(&self) -> Filtered<AnswerLayer, FilterFn, S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        AnswerLayer {
            answers: self.clone(),
        }
        .with_filter(FilterFn::new(
            exporter_or_request as fn(&tracing::Metadata<'_>) -> bool,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Answer>> {
        // A panic while filing an answer leaves a map still worth reading.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether an event or span is the exporter's or a request's: all [`AnswerLayer`] reads. The
/// rest (hyper's, h2's, tonic's) is never enabled, so it costs next to nothing.
fn exporter_or_request(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.target() == EXPORTER_TARGET || metadata.name() == REQUEST_SPAN
}

/// The `tracing` layer of [`Answers::layer`].
pub struct AnswerLayer {
    answers: Answers,
}

/// The request number of a [`REQUEST_SPAN`], kept in the span's extensions.
struct RequestNumber(u64);

impl<S> Layer<S> for AnswerLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != REQUEST_SPAN {
            return;
        }
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(request), Some(span)) = (fields.request, ctx.span(id)) {
            span.extensions_mut().insert(RequestNumber(request));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(request) = ctx.event_scope(event).and_then(|scope| {
            scope
                .from_root()
                .find_map(|span| span.extensions().get::<RequestNumber>().map(|n| n.0))
        }) else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let name = event.metadata().name();
        let mut answers = self.answers.lock();
        let answer = answers.entry(request).or_default();
        if name.ends_with(".PartialSuccess") {
            answer.rejected_spans += fields.rejected_spans.unwrap_or(0);
            answer.message = fields.error_message.filter(|m| !m.is_empty());
        } else if name == "HttpClient.StatusError" {
            answer.message = fields.response_body.as_deref().and_then(http_error_message);
        } else if name.ends_with(".ExportFailed") {
            answer.message = fields.grpc_message.filter(|m| !m.is_empty());
        }
    }
}

/// The fields read from the exporter's events and the request span.
#[derive(Default)]
struct Fields {
    request: Option<u64>,
    rejected_spans: Option<u64>,
    error_message: Option<String>,
    response_body: Option<String>,
    grpc_message: Option<String>,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "request" => self.request = Some(value),
            "rejected_spans" => self.rejected_spans = Some(value),
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if let Ok(value) = u64::try_from(value) {
            self.record_u64(field, value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let value = Some(one_line(value));
        match field.name() {
            "error_message" => self.error_message = value,
            "response_body" => self.response_body = value,
            "grpc_message" => self.grpc_message = value,
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error response (protobuf encoding).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The message of an OTLP/HTTP error response's body, given as the exporter logs it (the
/// `Debug` form of its bytes, `b"…"`): a `google.rpc.Status`'s message as the OTLP
/// specification asks collectors to send, or else the body's text. `None` for an empty body.
fn http_error_message(logged: &str) -> Option<String> {
    let body = logged
        .strip_prefix("b\"")
        .and_then(|rest| rest.strip_suffix('"'))
        .map_or_else(|| logged.as_bytes().to_vec(), unescape);
    if body.is_empty() {
        return None;
    }
    let text = match <RpcStatus as prost::Message>::decode(body.as_slice()) {
        Ok(status) if !status.message.is_empty() => status.message,
        _ => String::from_utf8_lossy(&body).into_owned(),
    };
    let text = one_line(&text);
    (!text.is_empty()).then_some(text)
}

/// The bytes of a byte string's `Debug` form (between its quotes): `\xNN`, `\n`, `\r`, `\t`,
/// `\0`, `\\`, `\"` and `\'` decoded, everything else as it is.
fn unescape(escaped: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut chars = escaped.bytes();
    while let Some(byte) = chars.next() {
        if byte != b'\\' {
            bytes.push(byte);
            continue;
        }
        match chars.next() {
            Some(b'n') => bytes.push(b'\n'),
            Some(b'r') => bytes.push(b'\r'),
            Some(b't') => bytes.push(b'\t'),
            Some(b'0') => bytes.push(0),
            Some(b'x') => {
                let hex = [chars.next(), chars.next()];
                let value = hex
                    .iter()
                    .flatten()
                    .try_fold(0u8, |acc, &digit| {
                        let digit = char::from(digit).to_digit(16)?;
                        Some(acc * 16 + u8::try_from(digit).ok()?)
                    })
                    .filter(|_| hex.iter().all(Option::is_some));
                bytes.extend(value);
            }
            Some(other) => bytes.push(other),
            None => bytes.push(b'\\'),
        }
    }
    bytes
}

/// `text` on one line, trimmed, at most [`MESSAGE_MAX`] characters.
fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MESSAGE_MAX) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use tracing::Instrument as _;
    use tracing_subscriber::{Registry, layer::SubscriberExt as _};

    use super::*;

    /// Runs `emit` inside request `request`'s span, with the layer installed on this thread.
    fn within_request(answers: &Answers, request: u64, emit: impl FnOnce()) {
        let subscriber = Registry::default().with(answers.layer());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::debug_span!(target: "tcpstates", "otlp_request", request);
            span.in_scope(emit);
        });
    }

    #[test]
    fn a_partial_success_is_filed_under_its_request() {
        let answers = Answers::default();
        within_request(&answers, 7, || {
            // As opentelemetry-otlp's `otel_warn!` emits it.
            tracing::warn!(
                name: "TonicTracesClient.PartialSuccess",
                target: "opentelemetry-otlp",
                name = "TonicTracesClient.PartialSuccess",
                rejected_spans = 3_i64,
                error_message = "spans too old"
            );
        });
        assert_eq!(
            answers.take(7),
            Answer {
                message: Some("spans too old".into()),
                rejected_spans: 3
            }
        );
        // Taken once.
        assert_eq!(answers.take(7), Answer::default());
    }

    #[test]
    fn a_grpc_refusal_keeps_the_collector_message() {
        let answers = Answers::default();
        within_request(&answers, 1, || {
            tracing::debug!(
                name: "TonicTracesClient.ExportFailed",
                target: "opentelemetry-otlp",
                name = "TonicTracesClient.ExportFailed",
                grpc_code = "InvalidArgument",
                grpc_message = "trace id\nall zeros",
                grpc_details = "[]"
            );
        });
        assert_eq!(
            answers.take(1).message.as_deref(),
            Some("trace id all zeros")
        );
    }

    #[test]
    fn an_http_refusal_body_is_decoded_as_a_status_or_read_as_text() {
        let status = RpcStatus {
            code: 3,
            message: "unsupported content type".into(),
        }
        .encode_to_vec();
        // As the exporter logs a response body: the `Debug` form of its `Bytes`.
        let logged = format!("{:?}", bytes::Bytes::from(status));
        assert_eq!(
            http_error_message(&logged).as_deref(),
            Some("unsupported content type")
        );
        assert_eq!(
            http_error_message(r#"b"quota \"exceeded\"\n""#).as_deref(),
            Some("quota \"exceeded\"")
        );
        assert_eq!(http_error_message(r#"b"""#), None);
        let answers = Answers::default();
        within_request(&answers, 2, || {
            tracing::debug!(
                name: "HttpClient.StatusError",
                target: "opentelemetry-otlp",
                name = "HttpClient.StatusError",
                status_code = 415_u16,
                response_body = logged.as_str()
            );
        });
        assert_eq!(
            answers.take(2).message.as_deref(),
            Some("unsupported content type")
        );
    }

    #[test]
    fn events_outside_a_request_or_from_elsewhere_are_ignored() {
        let answers = Answers::default();
        let subscriber = Registry::default().with(answers.layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                name: "TonicTracesClient.PartialSuccess",
                target: "opentelemetry-otlp",
                rejected_spans = 3_i64
            );
            let span = tracing::debug_span!(target: "tcpstates", "otlp_request", request = 4_u64);
            let _entered = span.enter();
            tracing::warn!(target: "h2", rejected_spans = 9_i64, "not the exporter");
        });
        assert_eq!(answers.take(4), Answer::default());
        assert!(answers.lock().is_empty());
    }

    #[test]
    fn answers_follow_their_request_across_await_points() {
        let answers = Answers::default();
        let subscriber = Registry::default().with(answers.layer());
        let _default = tracing::subscriber::set_default(subscriber);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let request = |n: u64, rejected: i64| {
                async move {
                    tokio::task::yield_now().await;
                    tracing::warn!(
                        name: "HttpTraceClient.PartialSuccess",
                        target: "opentelemetry-otlp",
                        rejected_spans = rejected,
                        error_message = ""
                    );
                }
                .instrument(tracing::debug_span!(target: "tcpstates", "otlp_request", request = n))
            };
            tokio::join!(request(1, 10), request(2, 20));
        });
        assert_eq!(answers.take(1).rejected_spans, 10);
        assert_eq!(answers.take(2).rejected_spans, 20);
    }
}
