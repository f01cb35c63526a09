//! Sending OTLP trace export requests over gRPC (tonic) or HTTP (reqwest), as the
//! `OTEL_EXPORTER_OTLP_*` settings say.
//!
//! A batch's request is encoded once ([`TraceTransport::encode`]: protobuf, JSON for
//! `http/json`, gzip-compressed for HTTP when asked) and the same bytes are sent again after a
//! retryable failure: nothing is rebuilt or copied per attempt. Each answer is read whole —
//! the collector's status and message, a partial success, a pause asked for (HTTP
//! `Retry-After`, gRPC `RetryInfo`) — and classified as the OTLP specification says
//! ([`Failure`]). Retries are the export thread's ([`super::export`]), not the transport's.

use std::{io::Write as _, time::Duration};

use bytes::{Buf, BufMut, Bytes};
use flate2::{Compression, write::GzEncoder};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tonic::{
    Code, Status,
    client::Grpc,
    codec::CompressionEncoding,
    codegen::http::uri::PathAndQuery,
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt as _;

use crate::describe;

use super::{
    export::ExportError,
    settings::{ExportSettings, Protocol, Setting, Signal, first_set},
    tls,
};

/// The gRPC method of a trace export.
const EXPORT_METHOD: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Where a trace exporter sends without any endpoint setting.
const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
/// The longest pause a collector may ask for before the next attempt.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(30);
/// The longest message kept, in characters: a collector may answer with a page.
const MESSAGE_MAX: usize = 300;

/// What a failed export request means for its batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth sending again: the collector was unreachable, overloaded or timed out.
    Retryable,
    /// Refused for good, with this status (`HTTP 415`, `gRPC InvalidArgument`).
    Rejected(String),
}

/// The collector took a request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Spans it rejected all the same (partial success).
    pub rejected_spans: u64,
    /// Why, in its words.
    pub message: Option<String>,
}

/// A request that failed.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Whether to send it again.
    pub failure: Failure,
    /// What happened, one line: `HTTP 503`, `gRPC Unavailable: …`, a network error.
    pub description: String,
    /// The collector's message, when it gave one.
    pub message: Option<String>,
    /// The pause the collector asked for before the next attempt.
    pub retry_after: Option<Duration>,
    /// The request may have reached the collector although it failed: its connection broke
    /// after it was sent.
    pub may_have_arrived: bool,
}

impl Refusal {
    fn retryable(description: String, may_have_arrived: bool) -> Self {
        Self {
            failure: Failure::Retryable,
            description,
            message: None,
            retry_after: None,
            may_have_arrived,
        }
    }
}

/// An encoded export request, as it goes on the wire.
#[derive(Clone, Debug)]
pub struct Body(Bytes);

/// Sends trace export requests to one collector.
pub struct TraceTransport {
    wire: Wire,
    timeout: Duration,
}

enum Wire {
    Grpc {
        client: Grpc<Channel>,
        headers: MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: HeaderMap,
        json: bool,
        gzip: bool,
    },
}

impl TraceTransport {
    /// A transport as `settings` and the `OTEL_EXPORTER_OTLP_*` variables (`var` reads one) say;
    /// a gRPC one must be made inside the runtime it will run on.
    pub fn new(
        settings: &ExportSettings,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ExportError> {
        tls::install_crypto_provider();
        let headers = headers(first_set(&var, Signal::Traces.variables(Setting::Headers)));
        let gzip = first_set(&var, Signal::Traces.variables(Setting::Compression))
            .is_some_and(|(_, value)| value.trim().eq_ignore_ascii_case("gzip"));
        let wire = match settings.protocol {
            Protocol::Grpc => {
                let url = settings.endpoint.clone().unwrap_or_else(|| {
                    endpoint_variable(&var, DEFAULT_GRPC_ENDPOINT, str::to_owned)
                });
                let url = if url.contains("://") {
                    url
                } else {
                    format!("http://{url}")
                };
                let mut endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|err| ExportError::Endpoint(url.clone(), err.to_string()))?
                    .timeout(settings.timeout);
                if settings.secure {
                    endpoint = endpoint
                        .tls_config(tls::grpc_config(&settings.tls))
                        .map_err(|err| ExportError::Endpoint(url, err.to_string()))?;
                }
                let mut client = Grpc::new(endpoint.connect_lazy());
                if gzip {
                    client = client
                        .send_compressed(CompressionEncoding::Gzip)
                        .accept_compressed(CompressionEncoding::Gzip);
                }
                Wire::Grpc {
                    client,
                    headers: MetadataMap::from_headers(headers),
                }
            }
            Protocol::HttpProtobuf | Protocol::HttpJson => Wire::Http {
                client: tls::http_client(&settings.tls, settings.timeout)?,
                url: {
                    let url = settings.endpoint.clone().unwrap_or_else(|| {
                        endpoint_variable(&var, DEFAULT_HTTP_ENDPOINT, |endpoint| {
                            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                        })
                    });
                    // Refused now rather than retried as a failing request until exit.
                    reqwest::Url::parse(&url)
                        .map_err(|err| ExportError::Endpoint(url.clone(), err.to_string()))?;
                    url
                },
                headers,
                json: settings.protocol == Protocol::HttpJson,
                gzip,
            },
        };
        Ok(Self {
            wire,
            timeout: settings.timeout,
        })
    }

    /// Whether requests go as JSON (`http/json`) rather than protobuf.
    pub fn json(&self) -> bool {
        matches!(self.wire, Wire::Http { json: true, .. })
    }

    /// An `encoded` request (protobuf, or JSON if [`Self::json`]) as this transport sends it.
    pub fn body(&self, encoded: Vec<u8>) -> Body {
        match &self.wire {
            // tonic compresses the message itself, as gRPC marks it.
            Wire::Grpc { .. } => Body(encoded.into()),
            Wire::Http { gzip, .. } => {
                if *gzip {
                    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
                    let gzipped = encoder
                        .write_all(&encoded)
                        .and_then(|()| encoder.finish())
                        .expect("gzip into memory cannot fail");
                    Body(gzipped.into())
                } else {
                    Body(encoded.into())
                }
            }
        }
    }

    /// Sends `body` once and reads the answer, within the request timeout.
    pub async fn send(&self, body: Body) -> Result<Accepted, Refusal> {
        let sent = async {
            match &self.wire {
                Wire::Grpc { client, headers } => send_grpc(client.clone(), headers, body).await,
                Wire::Http {
                    client,
                    url,
                    headers,
                    json,
                    gzip,
                } => send_http(client, url, headers, (*json, *gzip), body).await,
            }
        };
        tokio::time::timeout(self.timeout, sent)
            .await
            .unwrap_or_else(|_| {
                Err(Refusal::retryable(
                    format!("no answer within {:?}", self.timeout),
                    true,
                ))
            })
    }
}

/// The endpoint `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` names as it is, else
/// `OTEL_EXPORTER_OTLP_ENDPOINT`'s or `default`, as `with_path` completes it.
fn endpoint_variable(
    var: impl Fn(&str) -> Option<String>,
    default: &str,
    with_path: impl Fn(&str) -> String,
) -> String {
    let [own, generic] = Signal::Traces.variables(Setting::Endpoint);
    match var(own) {
        Some(endpoint) => endpoint,
        None => with_path(var(generic).as_deref().unwrap_or(default)),
    }
}

/// The headers `OTEL_EXPORTER_OTLP_*HEADERS` names: `key=value,…`, values percent-decoded;
/// pairs without a key or a value, or that HTTP cannot carry, are left out. Both transports
/// send them (gRPC as its metadata).
fn headers(variable: Option<(&'static str, String)>) -> HeaderMap {
    let Some((_, value)) = variable else {
        return HeaderMap::new();
    };
    value
        .split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_or_else(|_| value.trim().to_owned(), |decoded| decoded.into_owned());
            let key = key.trim();
            if key.is_empty() || value.is_empty() {
                return None;
            }
            Some((
                HeaderName::from_bytes(key.as_bytes()).ok()?,
                HeaderValue::try_from(value).ok()?,
            ))
        })
        .collect()
}

async fn send_grpc(
    mut client: Grpc<Channel>,
    headers: &MetadataMap,
    body: Body,
) -> Result<Accepted, Refusal> {
    client
        .ready()
        .await
        .map_err(|err| Refusal::retryable(format!("gRPC transport: {err}"), false))?;
    let mut request = tonic::Request::new(Encoded(body.0));
    *request.metadata_mut() = headers.clone();
    let codec = tonic_prost::ProstCodec::<Encoded, ExportTraceServiceResponse>::default();
    match client
        .unary(request, PathAndQuery::from_static(EXPORT_METHOD), codec)
        .await
    {
        Ok(response) => Ok(accepted(response.into_inner())),
        Err(status) => Err(grpc_refusal(&status)),
    }
}

/// What a gRPC status means, as the OTLP specification classes its codes. A status tonic made
/// for a connection that failed (`transport error`) is a network error whatever its code.
fn grpc_refusal(status: &Status) -> Refusal {
    let text = describe(status);
    let transport = text.contains("transport error");
    let retryable = transport
        || matches!(
            status.code(),
            Code::Unavailable
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::OutOfRange
                | Code::DataLoss
                | Code::ResourceExhausted
        );
    Refusal {
        failure: if retryable {
            Failure::Retryable
        } else {
            Failure::Rejected(format!("gRPC {:?}", status.code()))
        },
        description: one_line(&format!("gRPC {:?}: {text}", status.code())),
        message: (!transport && !status.message().is_empty()).then(|| one_line(status.message())),
        retry_after: status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .map(|delay| delay.min(RETRY_AFTER_MAX)),
        // A connection that broke once the request was made, not one that never connected.
        may_have_arrived: transport && !text.contains("connect error"),
    }
}

async fn send_http(
    client: &reqwest::Client,
    url: &str,
    headers: &HeaderMap,
    (json, gzip): (bool, bool),
    body: Body,
) -> Result<Accepted, Refusal> {
    let content_type = if json {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    let mut request = client
        .post(url)
        .headers(headers.clone())
        .header(CONTENT_TYPE, content_type);
    if gzip {
        request = request.header(CONTENT_ENCODING, "gzip");
    }
    let response = request.body(body.0).send().await.map_err(|err| {
        // Connected and sent, but no answer: the collector may have it.
        Refusal::retryable(
            one_line(&format!("HTTP: {}", describe(&err))),
            !err.is_connect(),
        )
    })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_retry_after);
    let answer = response.bytes().await.unwrap_or_default();
    if status.is_success() {
        let response = if json {
            serde_json::from_slice(&answer).unwrap_or_default()
        } else {
            ExportTraceServiceResponse::decode(answer).unwrap_or_default()
        };
        return Ok(accepted(response));
    }
    let code = status.as_u16();
    Err(Refusal {
        failure: match code {
            429 | 502 | 503 | 504 => Failure::Retryable,
            _ => Failure::Rejected(format!("HTTP {code}")),
        },
        description: format!("HTTP {code}"),
        message: http_error_message(&answer),
        retry_after,
        may_have_arrived: false,
    })
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let delay = match value.trim().parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value.trim())
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(delay.min(RETRY_AFTER_MAX))
}

/// An accepted request's partial success, if any.
fn accepted(response: ExportTraceServiceResponse) -> Accepted {
    response
        .partial_success
        .map(|partial| Accepted {
            rejected_spans: u64::try_from(partial.rejected_spans).unwrap_or(0),
            message: (!partial.error_message.is_empty()).then(|| one_line(&partial.error_message)),
        })
        .unwrap_or_default()
}

/// `google.rpc.Status`, which an OTLP/HTTP collector sends with a failure.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The message of an OTLP/HTTP error body: a `google.rpc.Status`'s, else the body as text.
fn http_error_message(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let text = match RpcStatus::decode(body) {
        Ok(status) if !status.message.is_empty() => status.message,
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    let text = one_line(&text);
    (!text.is_empty()).then_some(text)
}

/// `text` on one line, whitespace runs as one space, at most [`MESSAGE_MAX`] characters.
fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MESSAGE_MAX) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

/// A message encoded already: tonic's prost codec writes its bytes as they are.
#[derive(Clone, Debug, Default)]
struct Encoded(Bytes);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Never decoded: only sent.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use tonic_types::{ErrorDetails, StatusExt as _};

    use super::*;
    use crate::sink::otlp::settings::tests::env;

    fn http_url(vars: &[(&str, &str)]) -> String {
        endpoint_variable(env(vars), DEFAULT_HTTP_ENDPOINT, |endpoint| {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        })
    }

    #[test]
    fn the_traces_endpoint_is_taken_as_it_is_the_generic_one_gets_the_path() {
        assert_eq!(http_url(&[]), "http://localhost:4318/v1/traces");
        assert_eq!(
            http_url(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            http_url(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/custom"),
            ]),
            "http://t:4318/custom"
        );
    }

    #[test]
    fn headers_are_pairs_with_percent_decoded_values() {
        let variable = Some((
            "OTEL_EXPORTER_OTLP_HEADERS",
            " x-tenant = blue ,api-key=a%20b%3Dc,empty=,=novalue,plain".to_owned(),
        ));
        let map = headers(variable);
        assert_eq!(
            map.iter()
                .map(|(key, value)| (key.as_str(), value.to_str().expect("text")))
                .collect::<Vec<_>>(),
            [("x-tenant", "blue"), ("api-key", "a b=c")]
        );
        assert!(headers(None).is_empty());
    }

    #[test]
    fn retry_after_is_seconds_or_a_date_and_bounded() {
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("86400"), Some(RETRY_AFTER_MAX));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(5));
        let pause = parse_retry_after(&soon).expect("a date");
        assert!(
            pause <= Duration::from_secs(5) && pause >= Duration::from_secs(3),
            "{pause:?}"
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn grpc_codes_as_the_otlp_specification_classes_them() {
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::DataLoss,
            Code::ResourceExhausted,
        ] {
            let refusal = grpc_refusal(&Status::new(code, "busy"));
            assert_eq!(refusal.failure, Failure::Retryable, "{code:?}");
            assert_eq!(refusal.message.as_deref(), Some("busy"));
            assert!(!refusal.may_have_arrived);
        }
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Unimplemented,
            Code::Internal,
            Code::Unknown,
        ] {
            let refusal = grpc_refusal(&Status::new(code, "no"));
            assert_eq!(
                refusal.failure,
                Failure::Rejected(format!("gRPC {code:?}")),
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_broken_grpc_connection_is_retryable_and_may_have_delivered_a_refused_one_not() {
        let broken = grpc_refusal(&Status::unknown("transport error"));
        assert_eq!(broken.failure, Failure::Retryable);
        assert!(broken.may_have_arrived);
        assert_eq!(broken.message, None, "tonic's words, not the collector's");
        let refused = grpc_refusal(&Status::unavailable(
            "transport error: tcp connect error: Connection refused (os error 111)",
        ));
        assert_eq!(refused.failure, Failure::Retryable);
        assert!(!refused.may_have_arrived);
    }

    #[test]
    fn grpc_retry_info_is_the_pause_asked_for() {
        let status = Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        assert_eq!(
            grpc_refusal(&status).retry_after,
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn an_http_error_body_says_why_as_a_status_or_as_text() {
        let status = RpcStatus {
            code: 3,
            message: "protobuf\n only".into(),
        };
        assert_eq!(
            http_error_message(&status.encode_to_vec()).as_deref(),
            Some("protobuf only")
        );
        assert_eq!(
            http_error_message(b"unsupported media type").as_deref(),
            Some("unsupported media type")
        );
        assert_eq!(http_error_message(b""), None);
        let long = "x ".repeat(400);
        let message = http_error_message(long.as_bytes()).expect("a message");
        assert_eq!(
            message.chars().count(),
            MESSAGE_MAX + 1,
            "cut, with an ellipsis"
        );
    }

    #[test]
    fn a_partial_success_counts_its_rejected_spans() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        let response = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "too old".into(),
            }),
        };
        assert_eq!(
            accepted(response),
            Accepted {
                rejected_spans: 2,
                message: Some("too old".into())
            }
        );
        assert_eq!(
            accepted(ExportTraceServiceResponse::default()),
            Accepted::default()
        );
    }

    #[test]
    fn an_encoded_message_is_written_as_it_is() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![Default::default()],
        };
        let encoded = Encoded(request.encode_to_vec().into());
        assert_eq!(encoded.encoded_len(), request.encoded_len());
        assert_eq!(
            ExportTraceServiceRequest::decode(encoded.encode_to_vec().as_slice()).expect("decode"),
            request
        );
    }
}
