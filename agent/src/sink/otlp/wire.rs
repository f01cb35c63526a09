//! Spans and export requests written straight in OTLP's protobuf wire format.
//!
//! A span is encoded once, on the event path, into the bytes of an OTLP `Span` message
//! ([`SpanEncoder`], in a buffer reused for every span), and added at once to the chunk of
//! spans the export thread gets next ([`SpanChunk`]): no message structs are built, nested and
//! freed for it, no allocation is its own, and the export thread only frames whole chunks into
//! a request ([`encode_request`]). The fields and their
//! numbers are those of opentelemetry-proto's `trace.proto` and `common.proto` (v1), written
//! with prost's encoding functions; what the encoder writes decodes into opentelemetry-proto's
//! `Span` exactly as the message the SDK's conversion built (the tests in [`super::spans`]
//! decode every span they check).

use opentelemetry_proto::tonic::{
    common::v1::InstrumentationScope,
    resource::v1::Resource,
    trace::v1::{span::SpanKind, status::StatusCode},
};
use prost::{
    Message as _,
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint},
};

/// Field numbers of `opentelemetry.proto.trace.v1.Span`.
mod span_field {
    pub const TRACE_ID: u32 = 1;
    pub const SPAN_ID: u32 = 2;
    pub const PARENT_SPAN_ID: u32 = 4;
    pub const NAME: u32 = 5;
    pub const KIND: u32 = 6;
    pub const START_TIME: u32 = 7;
    pub const END_TIME: u32 = 8;
    pub const ATTRIBUTES: u32 = 9;
    pub const EVENTS: u32 = 11;
    pub const DROPPED_EVENTS: u32 = 12;
    pub const LINKS: u32 = 13;
    pub const STATUS: u32 = 15;
    pub const FLAGS: u32 = 16;
}

/// Field numbers of `Span.Event`, `Span.Link`, `Status`, `KeyValue` and `AnyValue`.
mod field {
    pub const EVENT_TIME: u32 = 1;
    pub const EVENT_NAME: u32 = 2;
    pub const EVENT_ATTRIBUTES: u32 = 3;
    pub const LINK_TRACE_ID: u32 = 1;
    pub const LINK_SPAN_ID: u32 = 2;
    pub const LINK_FLAGS: u32 = 6;
    pub const STATUS_MESSAGE: u32 = 2;
    pub const STATUS_CODE: u32 = 3;
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
    pub const STRING_VALUE: u32 = 1;
    pub const BOOL_VALUE: u32 = 2;
    pub const INT_VALUE: u32 = 3;
}

/// Field numbers of the request's envelope: `ExportTraceServiceRequest.resource_spans`,
/// `ResourceSpans.{resource, scope_spans, schema_url}`, `ScopeSpans.{scope, spans}`.
mod envelope_field {
    pub const RESOURCE_SPANS: u32 = 1;
    pub const RESOURCE: u32 = 1;
    pub const SCOPE_SPANS: u32 = 2;
    pub const SCHEMA_URL: u32 = 3;
    pub const SCOPE: u32 = 1;
    pub const SPANS: u32 = 2;
}

/// A span, encoded: the fields of its `Span` message, in the buffer it was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodedSpan<'a> {
    bytes: &'a [u8],
    root: bool,
}

/// Spans written one after another as the `spans` fields of a `ScopeSpans` message: what the
/// event path hands the export thread, which frames chunks into a request with one copy each
/// ([`encode_request`]). No span has an allocation of its own.
#[derive(Debug, Default)]
pub struct SpanChunk {
    bytes: Vec<u8>,
    spans: usize,
    roots: u64,
}

impl SpanChunk {
    /// An empty chunk with room for `capacity` bytes of spans.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(capacity),
            spans: 0,
            roots: 0,
        }
    }

    /// Adds `span`.
    pub fn push(&mut self, span: EncodedSpan<'_>) {
        bytes(&mut self.bytes, envelope_field::SPANS, span.bytes);
        self.spans += 1;
        self.roots += u64::from(span.root);
    }

    /// Its spans.
    pub fn spans(&self) -> usize {
        self.spans
    }

    /// Of its spans, the roots: whole sessions.
    pub fn roots(&self) -> u64 {
        self.roots
    }

    /// Whether it holds no span.
    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }
}

/// An attribute's value.
#[derive(Clone, Copy, Debug)]
pub enum AttributeValue<'a> {
    /// `string_value`.
    String(&'a str),
    /// `int_value`.
    Int(i64),
    /// `bool_value`.
    Bool(bool),
}

/// Writes one span's fields into a buffer it borrows (emptied first), reused span after span.
pub struct SpanEncoder<'a> {
    buf: &'a mut Vec<u8>,
    root: bool,
    flags: u32,
}

impl<'a> SpanEncoder<'a> {
    /// A span of the trace `trace_id` with id `span_id`, child of `parent` (none for a root),
    /// written into `buf`.
    pub fn new(
        buf: &'a mut Vec<u8>,
        trace_id: &[u8; 16],
        span_id: &[u8; 8],
        parent: Option<&[u8; 8]>,
    ) -> Self {
        buf.clear();
        bytes(buf, span_field::TRACE_ID, trace_id);
        bytes(buf, span_field::SPAN_ID, span_id);
        if let Some(parent) = parent {
            bytes(buf, span_field::PARENT_SPAN_ID, parent);
        }
        Self {
            buf,
            root: parent.is_none(),
            flags: 0,
        }
    }

    /// Its name, kind, start and end (Unix nanoseconds) and flags (written last: fields go in
    /// their numbers' order, as prost writes them, and the flags' is the highest).
    pub fn header(&mut self, name: &str, kind: SpanKind, (start, end): (u64, u64), flags: u32) {
        let buf = &mut *self.buf;
        bytes(buf, span_field::NAME, name.as_bytes());
        varint(buf, span_field::KIND, kind as u64);
        fixed64(buf, span_field::START_TIME, start);
        fixed64(buf, span_field::END_TIME, end);
        self.flags = flags;
    }

    /// One attribute.
    pub fn attribute(&mut self, key: &str, value: AttributeValue<'_>) {
        key_value(self.buf, span_field::ATTRIBUTES, key, value);
    }

    /// A string attribute.
    pub fn string(&mut self, key: &str, value: &str) {
        self.attribute(key, AttributeValue::String(value));
    }

    /// An integer attribute.
    pub fn int(&mut self, key: &str, value: i64) {
        self.attribute(key, AttributeValue::Int(value));
    }

    /// A boolean attribute.
    pub fn boolean(&mut self, key: &str, value: bool) {
        self.attribute(key, AttributeValue::Bool(value));
    }

    /// An event at `time` (Unix nanoseconds) with one string attribute.
    pub fn event(&mut self, time: u64, name: &str, (key, value): (&str, &str)) {
        let attribute = AttributeValue::String(value);
        let len = fixed64_len(time)
            + bytes_len(name.len())
            + 1
            + delimited_len(key_value_len(key, attribute));
        let buf = &mut *self.buf;
        put_key(buf, span_field::EVENTS, WireType::LengthDelimited);
        put_varint(buf, len as u64);
        fixed64(buf, field::EVENT_TIME, time);
        bytes(buf, field::EVENT_NAME, name.as_bytes());
        key_value(buf, field::EVENT_ATTRIBUTES, key, attribute);
    }

    /// Events left out.
    pub fn dropped_events(&mut self, count: u32) {
        varint(self.buf, span_field::DROPPED_EVENTS, u64::from(count));
    }

    /// A link to the span `span_id` of the trace `trace_id`.
    pub fn link(&mut self, trace_id: &[u8; 16], span_id: &[u8; 8], flags: u32) {
        let len = bytes_len(trace_id.len()) + bytes_len(span_id.len()) + fixed32_len(flags);
        let buf = &mut *self.buf;
        put_key(buf, span_field::LINKS, WireType::LengthDelimited);
        put_varint(buf, len as u64);
        bytes(buf, field::LINK_TRACE_ID, trace_id);
        bytes(buf, field::LINK_SPAN_ID, span_id);
        fixed32(buf, field::LINK_FLAGS, flags);
    }

    /// Its status (present even when unset, as the SDK's conversion makes it).
    pub fn status(&mut self, code: StatusCode, message: &str) {
        let code = code as u64;
        let len = bytes_len(message.len()) + varint_len(code);
        let buf = &mut *self.buf;
        put_key(buf, span_field::STATUS, WireType::LengthDelimited);
        put_varint(buf, len as u64);
        bytes(buf, field::STATUS_MESSAGE, message.as_bytes());
        varint(buf, field::STATUS_CODE, code);
    }

    /// The span, encoded.
    pub fn finish(self) -> EncodedSpan<'a> {
        fixed32(self.buf, span_field::FLAGS, self.flags);
        EncodedSpan {
            bytes: self.buf,
            root: self.root,
        }
    }
}

/// The protobuf encoding of the `ExportTraceServiceRequest` carrying the spans of `chunks`
/// from `resource` (with its schema URL) as `scope`: the envelope around the chunks' bytes.
pub fn encode_request(
    resource: &Resource,
    schema_url: &str,
    scope: &InstrumentationScope,
    chunks: &[SpanChunk],
) -> Vec<u8> {
    let spans_len: usize = chunks.iter().map(|chunk| chunk.bytes.len()).sum();
    let scope_spans_len = 1 + delimited_len(scope.encoded_len()) + spans_len;
    let schema_url_len = if schema_url.is_empty() {
        0
    } else {
        1 + delimited_len(schema_url.len())
    };
    let resource_spans_len = 1
        + delimited_len(resource.encoded_len())
        + 1
        + delimited_len(scope_spans_len)
        + schema_url_len;
    let mut buf = Vec::with_capacity(1 + delimited_len(resource_spans_len));
    put_key(
        &mut buf,
        envelope_field::RESOURCE_SPANS,
        WireType::LengthDelimited,
    );
    put_varint(&mut buf, resource_spans_len as u64);
    prost::encoding::message::encode(envelope_field::RESOURCE, resource, &mut buf);
    put_key(
        &mut buf,
        envelope_field::SCOPE_SPANS,
        WireType::LengthDelimited,
    );
    put_varint(&mut buf, scope_spans_len as u64);
    prost::encoding::message::encode(envelope_field::SCOPE, scope, &mut buf);
    for chunk in chunks {
        buf.extend_from_slice(&chunk.bytes);
    }
    if !schema_url.is_empty() {
        bytes(&mut buf, envelope_field::SCHEMA_URL, schema_url.as_bytes());
    }
    buf
}

/// A field's key: one byte for the fields numbered below 16, as all but the span's flags are.
#[inline(always)]
fn put_key(buf: &mut Vec<u8>, tag: u32, wire_type: WireType) {
    if tag < 16 {
        buf.push(((tag << 3) | wire_type as u32) as u8);
    } else {
        encode_key(tag, wire_type, buf);
    }
}

/// A varint: one byte below 128, as most lengths are, prost's encoding above.
#[inline(always)]
fn put_varint(buf: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        buf.push(value as u8);
    } else {
        encode_varint(value, buf);
    }
}

/// The length of a length-delimited field's length and contents (`len` bytes).
fn delimited_len(len: usize) -> usize {
    encoded_len_varint(len as u64) + len
}

/// The length of a bytes or string field of `len` bytes with a one-byte key ([`bytes`]).
fn bytes_len(len: usize) -> usize {
    if len == 0 { 0 } else { 1 + delimited_len(len) }
}

/// The length of a varint field with a one-byte key ([`varint`]).
fn varint_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + encoded_len_varint(value)
    }
}

/// The length of a fixed64 field with a one-byte key ([`fixed64`]).
fn fixed64_len(value: u64) -> usize {
    if value == 0 { 0 } else { 9 }
}

/// The length of a fixed32 field with a one-byte key ([`fixed32`]).
fn fixed32_len(value: u32) -> usize {
    if value == 0 { 0 } else { 5 }
}

/// A bytes or string field; an empty one is left out, as proto3 does.
fn bytes(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    if value.is_empty() {
        return;
    }
    put_key(buf, tag, WireType::LengthDelimited);
    put_varint(buf, value.len() as u64);
    buf.extend_from_slice(value);
}

/// A varint field; zero is left out, as proto3 does.
fn varint(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        put_key(buf, tag, WireType::Varint);
        put_varint(buf, value);
    }
}

/// A fixed64 field; zero is left out, as proto3 does.
fn fixed64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        put_key(buf, tag, WireType::SixtyFourBit);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

/// A fixed32 field; zero is left out, as proto3 does.
fn fixed32(buf: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        put_key(buf, tag, WireType::ThirtyTwoBit);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

/// The length of an `AnyValue` holding `value` (a oneof: written even when zero).
fn any_value_len(value: AttributeValue<'_>) -> usize {
    1 + match value {
        AttributeValue::String(text) => delimited_len(text.len()),
        AttributeValue::Int(number) => encoded_len_varint(number as u64),
        AttributeValue::Bool(_) => 1,
    }
}

/// The length of a `KeyValue`.
fn key_value_len(key: &str, value: AttributeValue<'_>) -> usize {
    bytes_len(key.len()) + 1 + delimited_len(any_value_len(value))
}

/// A `KeyValue` as field `tag` of the message being written.
fn key_value(buf: &mut Vec<u8>, tag: u32, key: &str, value: AttributeValue<'_>) {
    put_key(buf, tag, WireType::LengthDelimited);
    put_varint(buf, key_value_len(key, value) as u64);
    bytes(buf, field::KEY, key.as_bytes());
    put_key(buf, field::VALUE, WireType::LengthDelimited);
    put_varint(buf, any_value_len(value) as u64);
    match value {
        AttributeValue::String(text) => {
            put_key(buf, field::STRING_VALUE, WireType::LengthDelimited);
            put_varint(buf, text.len() as u64);
            buf.extend_from_slice(text.as_bytes());
        }
        AttributeValue::Int(number) => {
            put_key(buf, field::INT_VALUE, WireType::Varint);
            put_varint(buf, number as u64);
        }
        AttributeValue::Bool(flag) => {
            put_key(buf, field::BOOL_VALUE, WireType::Varint);
            put_varint(buf, u64::from(flag));
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, KeyValue, any_value::Value},
        trace::v1::{
            ResourceSpans, ScopeSpans, Span, Status,
            span::{Event, Link},
        },
    };

    use super::*;

    /// What the tests read of a span: the agent only copies its bytes.
    impl EncodedSpan<'_> {
        /// Whether it has no parent: a whole session's root.
        pub fn is_root(&self) -> bool {
            self.root
        }

        /// The `Span` message it encodes.
        pub fn decode(&self) -> Result<Span, prost::DecodeError> {
            Span::decode(self.bytes)
        }
    }

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            key_strindex: 0,
        }
    }

    #[test]
    fn every_field_written_decodes_as_opentelemetry_protos_message() {
        let trace_id = [7; 16];
        let mut buf = vec![9; 3];
        let mut encoder = SpanEncoder::new(&mut buf, &trace_id, &[1; 8], Some(&[2; 8]));
        encoder.header("ESTABLISHED", SpanKind::Client, (5, u64::MAX), 0x101);
        encoder.string("a", "text");
        encoder.string("empty", "");
        encoder.int("n", -3);
        encoder.int("zero", 0);
        encoder.int("big", i64::MAX);
        encoder.boolean("no", false);
        encoder.boolean("yes", true);
        encoder.event(9, "retransmit", ("kind", "syn"));
        encoder.dropped_events(300);
        encoder.link(&[3; 16], &[4; 8], 0x101);
        encoder.status(StatusCode::Error, &"é".repeat(200));
        let span = encoder.finish();
        assert!(!span.is_root());
        let expected = Span {
            trace_id: trace_id.to_vec(),
            span_id: vec![1; 8],
            parent_span_id: vec![2; 8],
            flags: 0x101,
            name: "ESTABLISHED".into(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: 5,
            end_time_unix_nano: u64::MAX,
            attributes: vec![
                kv("a", Value::StringValue("text".into())),
                kv("empty", Value::StringValue(String::new())),
                kv("n", Value::IntValue(-3)),
                kv("zero", Value::IntValue(0)),
                kv("big", Value::IntValue(i64::MAX)),
                kv("no", Value::BoolValue(false)),
                kv("yes", Value::BoolValue(true)),
            ],
            events: vec![Event {
                time_unix_nano: 9,
                name: "retransmit".into(),
                attributes: vec![kv("kind", Value::StringValue("syn".into()))],
                dropped_attributes_count: 0,
            }],
            dropped_events_count: 300,
            links: vec![Link {
                trace_id: vec![3; 16],
                span_id: vec![4; 8],
                flags: 0x101,
                ..Link::default()
            }],
            status: Some(Status {
                message: "é".repeat(200),
                code: StatusCode::Error as i32,
            }),
            ..Span::default()
        };
        assert_eq!(span.decode().expect("a Span"), expected);
        // Byte for byte what prost writes for the message (the same field order).
        assert_eq!(span.bytes, expected.encode_to_vec());
    }

    #[test]
    fn a_root_with_an_unset_status_has_an_empty_status_and_no_parent() {
        let mut buf = Vec::new();
        let mut encoder = SpanEncoder::new(&mut buf, &[1; 16], &[1; 8], None);
        encoder.header("tcp session", SpanKind::Internal, (1, 2), 0x101);
        encoder.status(StatusCode::Unset, "");
        let span = encoder.finish();
        assert!(span.is_root());
        let decoded = span.decode().expect("a Span");
        assert!(decoded.parent_span_id.is_empty());
        assert_eq!(decoded.status, Some(Status::default()));
        assert_eq!(span.bytes, decoded.encode_to_vec());
    }

    #[test]
    fn the_request_frames_the_spans_as_prost_would() {
        let resource = Resource {
            attributes: vec![kv("service.name", Value::StringValue("tcpstates".into()))],
            ..Resource::default()
        };
        let scope = InstrumentationScope {
            name: "tcpstates".into(),
            version: "0.1.0".into(),
            ..InstrumentationScope::default()
        };
        // 300 spans in chunks of 1, 2, ... (the last one short), roots every third.
        let mut buf = Vec::new();
        let mut chunks = vec![SpanChunk::default()];
        let mut spans = Vec::new();
        for i in 0..300u16 {
            if chunks.last().unwrap().spans() == chunks.len() {
                chunks.push(SpanChunk::with_capacity(16));
            }
            let parent = (i % 3 != 0).then_some([3; 8]);
            let mut encoder = SpanEncoder::new(&mut buf, &[1; 16], &[2; 8], parent.as_ref());
            encoder.header(&"x".repeat(usize::from(i)), SpanKind::Server, (1, 2), 1);
            let span = encoder.finish();
            spans.push(span.decode().expect("a Span"));
            chunks.last_mut().unwrap().push(span);
        }
        assert_eq!(chunks.iter().map(SpanChunk::spans).sum::<usize>(), 300);
        assert_eq!(chunks.iter().map(SpanChunk::roots).sum::<u64>(), 100);
        for schema_url in ["", "https://opentelemetry.io/schemas/1.30.0"] {
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope.clone()),
                        spans: spans.clone(),
                        schema_url: String::new(),
                    }],
                    schema_url: schema_url.to_owned(),
                }],
            };
            let encoded = encode_request(&resource, schema_url, &scope, &chunks);
            assert_eq!(encoded, request.encode_to_vec(), "{schema_url:?}");
        }
    }
}
