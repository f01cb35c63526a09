//! Metrics as the OTLP receiver ([`crate::otlp::Receiver`], rotel) reports them, and the parser of
//! its log of them.
//!
//! With `--debug-log metrics --debug-log-verbosity detailed` rotel prints every batch of metrics
//! it receives on stdout (all of a batch in one write, so batches of spans and of metrics never
//! mix):
//!
//! ```text
//! ResourceMetrics #0
//! Resource SchemaURL:
//! Resource attributes:
//!      -> service.name: Str(tcpstates)
//! ScopeMetrics #0
//! ScopeMetrics SchemaURL:
//! InstrumentationScope tcpstates 0.1.0
//! Metric #0
//! Descriptor:
//!      -> Name: tcp.rtt
//!      -> Description: Round trip time
//!      -> Unit: s
//!      -> DataType: Histogram
//!      -> AggregationTemporality: AGGREGATION_TEMPORALITY_DELTA
//! HistogramDataPoints #0
//! Data point attributes:
//!      -> state: Str(ESTABLISHED)
//! StartTimestamp: 1796191693594545773
//! Timestamp: 1796191693594854930
//! Count: 3
//! Sum: 2.5505
//! Min: 0.0005
//! Max: 2.5
//! ExplicitBounds #0: 0.001
//! ExplicitBounds #1: 0.1
//! Buckets #0, Count: 1
//! Buckets #1, Count: 1
//! Buckets #2, Count: 1
//! Metric #1
//! Descriptor:
//!      -> Name: tcp.open
//!      -> Description: Open connections
//!      -> Unit: {connection}
//!      -> DataType: Sum
//!      -> IsMonotonic: false
//!      -> AggregationTemporality: AGGREGATION_TEMPORALITY_CUMULATIVE
//! NumberDataPoints #0
//! StartTimestamp: 1796191693594625853
//! Timestamp: 1796191693594981168
//! Value: -2
//! ```
//!
//! A gauge has neither `IsMonotonic` nor `AggregationTemporality`. An exponential histogram's
//! points (`ExponentialHistogramDataPoints #N`) give their buckets by bounds rather than by scale
//! and offset: `Bucket [-1.68, -1.41), Count: 1` (negative), `Bucket [0, 0], Count: 1` (the zero
//! bucket, only when not empty), `Bucket (2.83, 3.36], Count: 1` (positive). Numbers are Rust's
//! `Display`: an integer value and a double of integral value look alike (`Value: 2`), and so do
//! histogram sums, bounds, minimums and maximums (`Max: 17`). `Exemplars:` sections (which the
//! Rust SDK does not send) are skipped; summaries (`DataType: Summary`) are reported as errors.

use std::collections::BTreeMap;

use crate::otlp::{AttrValue, is_log_line, parse_attributes};

/// What kind of data a metric carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// `DataType: Sum`: a counter (`monotonic`) or an up-down counter.
    Sum {
        /// `IsMonotonic: true`.
        monotonic: bool,
    },
    /// `DataType: Gauge`.
    Gauge,
    /// `DataType: Histogram`: explicit bucket bounds.
    Histogram,
    /// `DataType: ExponentialHistogram`.
    ExponentialHistogram,
}

/// Aggregation temporality of a sum or histogram (`AGGREGATION_TEMPORALITY_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    /// `AGGREGATION_TEMPORALITY_DELTA`: each point covers the time since the previous export.
    Delta,
    /// `AGGREGATION_TEMPORALITY_CUMULATIVE`: each point covers the time since a fixed start.
    Cumulative,
}

/// One metric as the receiver got it: one `Metric #N` of one batch (the same metric exported
/// again is another [`ReceivedMetric`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMetric {
    /// Metric name.
    pub name: String,
    /// Its description (empty when there is none).
    pub description: String,
    /// Its unit (empty when there is none).
    pub unit: String,
    /// What kind of data it carries.
    pub kind: MetricKind,
    /// Temporality of a sum or histogram; `None` for a gauge.
    pub temporality: Option<Temporality>,
    /// Its data points, in the order rotel printed them.
    pub data_points: Vec<DataPoint>,
    /// The attributes of the resource that sent it (`service.name`, …).
    pub resource: BTreeMap<String, AttrValue>,
    /// Name of the instrumentation scope.
    pub scope_name: String,
    /// Version of the instrumentation scope (empty when there is none).
    pub scope_version: String,
}

impl ReceivedMetric {
    /// The data point whose attributes are exactly `attributes`, if there is one.
    pub fn point(&self, attributes: &[(&str, AttrValue)]) -> Option<&DataPoint> {
        let wanted: BTreeMap<String, AttrValue> = attributes
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect();
        self.data_points
            .iter()
            .find(|point| point.attributes == wanted)
    }
}

/// One data point of a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPoint {
    /// The point's attributes.
    pub attributes: BTreeMap<String, AttrValue>,
    /// Start of the time the point covers, in nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// When it was taken, in nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
    /// Its value.
    pub value: PointValue,
}

impl DataPoint {
    /// The value of a sum's or gauge's point.
    pub fn number(&self) -> Option<NumberValue> {
        match self.value {
            PointValue::Number(number) => Some(number),
            _ => None,
        }
    }

    /// The value of a histogram's point.
    pub fn histogram(&self) -> Option<&HistogramValue> {
        match &self.value {
            PointValue::Histogram(histogram) => Some(histogram),
            _ => None,
        }
    }

    /// The value of an exponential histogram's point.
    pub fn exponential_histogram(&self) -> Option<&ExponentialHistogramValue> {
        match &self.value {
            PointValue::ExponentialHistogram(histogram) => Some(histogram),
            _ => None,
        }
    }
}

/// The value of a data point, by kind of metric.
#[derive(Debug, Clone, PartialEq)]
pub enum PointValue {
    /// A sum's or a gauge's (`Value: …`).
    Number(NumberValue),
    /// A histogram's.
    Histogram(HistogramValue),
    /// An exponential histogram's.
    ExponentialHistogram(ExponentialHistogramValue),
}

/// A sum's or gauge's value. rotel prints an integer and a double of integral value alike, so a
/// double such as 2.0 comes back as `Int(2)`: compare [`NumberValue::as_f64`] for instruments of
/// `f64`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NumberValue {
    /// Printed without a fraction or exponent: `as_int`, or a double of integral value.
    Int(i64),
    /// Any other: `as_double`.
    Double(f64),
}

impl NumberValue {
    /// The value as a double, whichever way it was printed.
    pub fn as_f64(self) -> f64 {
        match self {
            NumberValue::Int(i) => i as f64,
            NumberValue::Double(d) => d,
        }
    }

    /// Parses a printed value: an integer if it reads as one, else a double.
    fn parse(text: &str) -> Result<NumberValue, String> {
        text.parse()
            .map(NumberValue::Int)
            .or_else(|_| text.parse().map(NumberValue::Double))
            .map_err(|_| format!("bad value {text:?}"))
    }
}

/// The value of a histogram's point (explicit bucket bounds).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramValue {
    /// How many measurements it counts.
    pub count: u64,
    /// Their sum, if it was sent.
    pub sum: Option<f64>,
    /// The smallest, if it was sent.
    pub min: Option<f64>,
    /// The largest, if it was sent.
    pub max: Option<f64>,
    /// Upper bounds of each bucket but the last.
    pub explicit_bounds: Vec<f64>,
    /// How many measurements fell in each bucket: one more than there are bounds.
    pub bucket_counts: Vec<u64>,
}

/// The value of an exponential histogram's point.
#[derive(Debug, Clone, PartialEq)]
pub struct ExponentialHistogramValue {
    /// How many measurements it counts.
    pub count: u64,
    /// Their sum, if it was sent.
    pub sum: Option<f64>,
    /// The smallest, if it was sent.
    pub min: Option<f64>,
    /// The largest, if it was sent.
    pub max: Option<f64>,
    /// Its buckets as rotel printed them: the negative ones from the lowest, the zero bucket (if
    /// not empty), then the positive ones.
    pub buckets: Vec<ExponentialBucket>,
}

/// One bucket of an exponential histogram, by the bounds rotel works out from its scale and
/// index (`[lower, upper)` below zero, `(lower, upper]` above, `[0, 0]` for the zero bucket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBucket {
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
    /// How many measurements fell in it.
    pub count: u64,
}

/// Which list the `     -> key: value` lines belong to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Section {
    #[default]
    None,
    Resource,
    /// Scope attributes, a point's exemplars: not recorded.
    Skipped,
    /// A metric's `Descriptor:` and the sum's or histogram's fields after it.
    Descriptor,
    /// `Data point attributes:`.
    PointAttributes,
}

/// A metric whose lines are still coming, its fields unparsed.
#[derive(Debug, Default)]
struct PartialMetric {
    /// `Name`, `Description`, `Unit`, `DataType`, `IsMonotonic`, `AggregationTemporality`.
    descriptor: Vec<(String, String)>,
    points: Vec<PartialPoint>,
}

/// A data point of a [`PartialMetric`], its fields unparsed.
#[derive(Debug, Default)]
struct PartialPoint {
    /// `Number`, `Histogram` or `ExponentialHistogram` (from `NumberDataPoints #N`, …).
    header: String,
    attributes: Vec<(String, String)>,
    /// `StartTimestamp`, `Timestamp`, `Value`, `Count`, `Sum`, `Min`, `Max`.
    fields: Vec<(String, String)>,
    explicit_bounds: Vec<String>,
    bucket_counts: Vec<String>,
    /// What follows `Bucket ` in each of an exponential histogram's bucket lines.
    exponential_buckets: Vec<String>,
}

/// A line-by-line parser of rotel's detailed metrics log.
#[derive(Debug, Default)]
pub(crate) struct MetricParser {
    resource_raw: Vec<(String, String)>,
    resource: BTreeMap<String, AttrValue>,
    scope_name: String,
    scope_version: String,
    section: Section,
    metric: Option<PartialMetric>,
}

impl MetricParser {
    /// Takes one line of rotel's output, from `ResourceMetrics #N` on: adds the metrics it
    /// completes to `metrics`, and what it cannot make sense of to `errors`.
    pub(crate) fn line(
        &mut self,
        line: &str,
        metrics: &mut Vec<ReceivedMetric>,
        errors: &mut Vec<String>,
    ) {
        if let Some(attr) = line.strip_prefix("     -> ") {
            let (key, value) = attr.split_once(": ").unwrap_or((attr, ""));
            let entry = (key.to_owned(), value.to_owned());
            let metric = self.metric.as_mut();
            match (self.section, metric) {
                (Section::Resource, _) => self.resource_raw.push(entry),
                (Section::Descriptor, Some(metric)) => metric.descriptor.push(entry),
                (Section::PointAttributes, Some(metric)) => {
                    if let Some(point) = metric.points.last_mut() {
                        point.attributes.push(entry);
                    }
                }
                _ => {}
            }
        } else if line.starts_with("ResourceMetrics #") {
            self.finish_metric(metrics, errors);
            self.resource_raw.clear();
            self.section = Section::None;
        } else if line == "Resource attributes:" {
            self.section = Section::Resource;
        } else if line.starts_with("ScopeMetrics #") {
            self.finish_metric(metrics, errors);
            self.resource = parse_attributes(&self.resource_raw, errors);
            self.section = Section::None;
        } else if let Some(scope) = line.strip_prefix("InstrumentationScope ") {
            if scope == "attributes:" {
                self.section = Section::Skipped;
            } else {
                let (name, version) = scope.split_once(' ').unwrap_or((scope, ""));
                self.scope_name = name.to_owned();
                self.scope_version = version.to_owned();
            }
        } else if line.starts_with("Metric #") {
            self.finish_metric(metrics, errors);
            self.metric = Some(PartialMetric::default());
            self.section = Section::None;
        } else if let Some(metric) = self.metric.as_mut() {
            if !metric.field(line, &mut self.section) {
                self.other_line(line, errors);
            }
        } else {
            self.other_line(line, errors);
        }
    }

    /// A line that is no metric field: the continuation of a multi-line string, one of rotel's
    /// own log lines, or something this parser does not know.
    fn other_line(&mut self, line: &str, errors: &mut Vec<String>) {
        if is_log_line(line) {
            return;
        }
        let in_metric = self.metric.is_some();
        let last = match (self.section, self.metric.as_mut()) {
            (Section::Resource, _) => self.resource_raw.last_mut(),
            (Section::Descriptor, Some(metric)) => metric.descriptor.last_mut(),
            (Section::PointAttributes, Some(metric)) => metric
                .points
                .last_mut()
                .and_then(|point| point.attributes.last_mut()),
            _ => None,
        };
        if let Some((_, value)) = last {
            value.push('\n');
            value.push_str(line);
        } else if in_metric && self.section != Section::Skipped {
            errors.push(format!("unexpected line in a metric: {line:?}"));
        }
    }

    /// Publishes the metric in progress, if any.
    pub(crate) fn finish_metric(
        &mut self,
        metrics: &mut Vec<ReceivedMetric>,
        errors: &mut Vec<String>,
    ) {
        let Some(partial) = self.metric.take() else {
            return;
        };
        self.section = Section::None;
        match partial.build(self, errors) {
            Ok(metric) => metrics.push(metric),
            Err(error) => errors.push(format!("{error} in {partial:?}")),
        }
    }
}

impl PartialMetric {
    /// Takes `line` if it is one of a metric's own lines; `section` follows the section headers.
    fn field(&mut self, line: &str, section: &mut Section) -> bool {
        if line == "Descriptor:" {
            *section = Section::Descriptor;
        } else if let Some((header, _)) = line.split_once("DataPoints #") {
            self.points.push(PartialPoint {
                header: header.to_owned(),
                ..PartialPoint::default()
            });
            *section = Section::None;
        } else if line == "Exemplars:" || line.starts_with("Exemplar #") {
            *section = Section::Skipped;
        } else if let Some(point) = self.points.last_mut() {
            return point.field(line, section);
        } else {
            return false;
        }
        true
    }

    /// The descriptor field `key`, if it was printed.
    fn get(&self, key: &str) -> Option<&str> {
        self.descriptor
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
    }

    fn build(
        &self,
        parser: &MetricParser,
        errors: &mut Vec<String>,
    ) -> Result<ReceivedMetric, String> {
        let field = |key: &str| self.get(key).ok_or_else(|| format!("no {key}"));
        let kind = match field("DataType")? {
            "Sum" => MetricKind::Sum {
                monotonic: match field("IsMonotonic")? {
                    "true" => true,
                    "false" => false,
                    other => return Err(format!("bad IsMonotonic {other:?}")),
                },
            },
            "Gauge" => MetricKind::Gauge,
            "Histogram" => MetricKind::Histogram,
            "ExponentialHistogram" => MetricKind::ExponentialHistogram,
            other => return Err(format!("unsupported DataType {other:?}")),
        };
        let temporality = match kind {
            MetricKind::Gauge => None,
            _ => Some(match field("AggregationTemporality")? {
                "AGGREGATION_TEMPORALITY_DELTA" => Temporality::Delta,
                "AGGREGATION_TEMPORALITY_CUMULATIVE" => Temporality::Cumulative,
                other => return Err(format!("unknown temporality {other:?}")),
            }),
        };
        Ok(ReceivedMetric {
            name: field("Name")?.to_owned(),
            description: field("Description")?.to_owned(),
            unit: field("Unit")?.to_owned(),
            kind,
            temporality,
            data_points: self
                .points
                .iter()
                .map(|point| point.build(kind, errors))
                .collect::<Result<_, String>>()?,
            resource: parser.resource.clone(),
            scope_name: parser.scope_name.clone(),
            scope_version: parser.scope_version.clone(),
        })
    }
}

impl PartialPoint {
    /// Takes `line` if it is one of a data point's own lines; `section` follows the section
    /// headers.
    fn field(&mut self, line: &str, section: &mut Section) -> bool {
        if line == "Data point attributes:" {
            *section = Section::PointAttributes;
            return true;
        }
        if let Some(bound) = line.strip_prefix("ExplicitBounds #") {
            let Some((_, bound)) = bound.split_once(": ") else {
                return false;
            };
            self.explicit_bounds.push(bound.to_owned());
        } else if let Some(bucket) = line.strip_prefix("Buckets #") {
            let Some((_, count)) = bucket.split_once(", Count: ") else {
                return false;
            };
            self.bucket_counts.push(count.to_owned());
        } else if let Some(bucket) = line.strip_prefix("Bucket ") {
            self.exponential_buckets.push(bucket.to_owned());
        } else if let Some((key, value)) = line.split_once(": ")
            && matches!(
                key,
                "StartTimestamp" | "Timestamp" | "Value" | "Count" | "Sum" | "Min" | "Max"
            )
        {
            self.fields.push((key.to_owned(), value.to_owned()));
        } else {
            return false;
        }
        *section = Section::None;
        true
    }

    /// The value of field `key`, if it was printed.
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
    }

    fn build(&self, kind: MetricKind, errors: &mut Vec<String>) -> Result<DataPoint, String> {
        let expected_header = match kind {
            MetricKind::Sum { .. } | MetricKind::Gauge => "Number",
            MetricKind::Histogram => "Histogram",
            MetricKind::ExponentialHistogram => "ExponentialHistogram",
        };
        if self.header != expected_header {
            return Err(format!("{}DataPoints in a {kind:?}", self.header));
        }
        let required = |key: &str| self.get(key).ok_or_else(|| format!("no {key}"));
        let nanos = |key: &str| {
            let text = required(key)?;
            text.parse::<u64>()
                .map_err(|_| format!("bad {key} {text:?}"))
        };
        let count = || {
            let text = required("Count")?;
            text.parse::<u64>()
                .map_err(|_| format!("bad Count {text:?}"))
        };
        let optional = |key: &str| {
            self.get(key)
                .map(|text| {
                    text.parse::<f64>()
                        .map_err(|_| format!("bad {key} {text:?}"))
                })
                .transpose()
        };
        let value = match kind {
            MetricKind::Sum { .. } | MetricKind::Gauge => {
                PointValue::Number(NumberValue::parse(required("Value")?)?)
            }
            MetricKind::Histogram => PointValue::Histogram(HistogramValue {
                count: count()?,
                sum: optional("Sum")?,
                min: optional("Min")?,
                max: optional("Max")?,
                explicit_bounds: self
                    .explicit_bounds
                    .iter()
                    .map(|b| b.parse().map_err(|_| format!("bad bound {b:?}")))
                    .collect::<Result<_, String>>()?,
                bucket_counts: self
                    .bucket_counts
                    .iter()
                    .map(|c| c.parse().map_err(|_| format!("bad bucket count {c:?}")))
                    .collect::<Result<_, String>>()?,
            }),
            MetricKind::ExponentialHistogram => {
                PointValue::ExponentialHistogram(ExponentialHistogramValue {
                    count: count()?,
                    sum: optional("Sum")?,
                    min: optional("Min")?,
                    max: optional("Max")?,
                    buckets: self
                        .exponential_buckets
                        .iter()
                        .map(|bucket| parse_exponential_bucket(bucket))
                        .collect::<Result<_, String>>()?,
                })
            }
        };
        Ok(DataPoint {
            attributes: parse_attributes(&self.attributes, errors),
            start_unix_nano: nanos("StartTimestamp")?,
            time_unix_nano: nanos("Timestamp")?,
            value,
        })
    }
}

/// Parses what follows `Bucket ` in an exponential histogram's bucket line:
/// `[-1.68, -1.41), Count: 1`, `[0, 0], Count: 1` or `(2.83, 3.36], Count: 1`.
fn parse_exponential_bucket(text: &str) -> Result<ExponentialBucket, String> {
    let bad = || format!("bad bucket {text:?}");
    let (range, count) = text.rsplit_once(", Count: ").ok_or_else(bad)?;
    let (lower, upper) = range
        .strip_prefix(['[', '('])
        .and_then(|range| range.strip_suffix([')', ']']))
        .and_then(|range| range.split_once(", "))
        .ok_or_else(bad)?;
    Ok(ExponentialBucket {
        lower: lower.parse().map_err(|_| bad())?,
        upper: upper.parse().map_err(|_| bad())?,
        count: count.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` as one burst of rotel's metrics output.
    fn parse(text: &str) -> (Vec<ReceivedMetric>, Vec<String>) {
        let (mut metrics, mut errors) = (Vec::new(), Vec::new());
        let mut parser = MetricParser::default();
        for line in text.lines() {
            parser.line(line, &mut metrics, &mut errors);
        }
        parser.finish_metric(&mut metrics, &mut errors);
        (metrics, errors)
    }

    fn attrs(pairs: &[(&str, AttrValue)]) -> BTreeMap<String, AttrValue> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect()
    }

    fn str(value: &str) -> AttrValue {
        AttrValue::Str(value.to_owned())
    }

    /// Two batches as rotel 0.0.1a15 printed them (trailing spaces included) for metrics that
    /// opentelemetry-otlp 0.33.1 exported over gRPC with delta temporality: the first export
    /// (every kind of instrument but the exponential histogram), and the last one, at shutdown,
    /// which has nothing new but the up-down counter (the SDK keeps those cumulative).
    const SAMPLE: &str = "\
2026-12-02T06:08:12.123256Z  INFO Starting Rotel. grpc_endpoint=\"127.0.0.1:14417\" http_endpoint=\"127.0.0.1:14418\"
ResourceMetrics #0
Resource SchemaURL: 
Resource attributes:
     -> service.name: Str(metricgen)
     -> host.name: Str(h1)
ScopeMetrics #0
ScopeMetrics SchemaURL: 
InstrumentationScope gen-scope 9.8.7
InstrumentationScope attributes:
     -> scope.attr: Str(x)
Metric #0
Descriptor:
     -> Name: tcp.rtt
     -> Description: Round trip \"time\": a, b
     -> Unit: s
     -> DataType: Histogram
     -> AggregationTemporality: AGGREGATION_TEMPORALITY_DELTA
HistogramDataPoints #0
Data point attributes:
     -> network.peer.port: Int(8080)
     -> ok: Bool(true)
     -> ratio: Double(0.5)
     -> state: Str(ESTABLISHED)
StartTimestamp: 1796191693594545773
Timestamp: 1796191693594854930
Count: 3
Sum: 2.5505
Min: 0.0005
Max: 2.5
ExplicitBounds #0: 0.001
ExplicitBounds #1: 0.01
ExplicitBounds #2: 0.1
Buckets #0, Count: 1
Buckets #1, Count: 0
Buckets #2, Count: 1
Buckets #3, Count: 1
HistogramDataPoints #1
Data point attributes:
     -> state: Str(SYN_SENT)
StartTimestamp: 1796191693594545773
Timestamp: 1796191693594854930
Count: 1
Sum: 0.002
Min: 0.002
Max: 0.002
ExplicitBounds #0: 0.001
ExplicitBounds #1: 0.01
ExplicitBounds #2: 0.1
Buckets #0, Count: 0
Buckets #1, Count: 1
Buckets #2, Count: 0
Buckets #3, Count: 0
Metric #1
Descriptor:
     -> Name: tcp.bytes
     -> Description: Bytes
     -> Unit: By
     -> DataType: Sum
     -> IsMonotonic: true
     -> AggregationTemporality: AGGREGATION_TEMPORALITY_DELTA
NumberDataPoints #0
Data point attributes:
     -> direction: Str(rx)
StartTimestamp: 1796191693594592062
Timestamp: 1796191693594963492
Value: 7
NumberDataPoints #1
Data point attributes:
     -> direction: Str(tx)
StartTimestamp: 1796191693594592062
Timestamp: 1796191693594963492
Value: 100
Metric #2
Descriptor:
     -> Name: tcp.open
     -> Description: Open connections
     -> Unit: {connection}
     -> DataType: Sum
     -> IsMonotonic: false
     -> AggregationTemporality: AGGREGATION_TEMPORALITY_CUMULATIVE
NumberDataPoints #0
StartTimestamp: 1796191693594625853
Timestamp: 1796191693594981168
Value: -2
Metric #3
Descriptor:
     -> Name: tcp.cwnd
     -> Description: Congestion window
     -> Unit: 
     -> DataType: Gauge
NumberDataPoints #0
Data point attributes:
     -> k: Str(v)
StartTimestamp: 1796191693594647685
Timestamp: 1796191693594988850
Value: 14.5
Metric #4
Descriptor:
     -> Name: tcp.igauge
     -> Description: 
     -> Unit: 
     -> DataType: Gauge
NumberDataPoints #0
StartTimestamp: 1796191693594675096
Timestamp: 1796191693595002790
Value: -42
Metric #5
Descriptor:
     -> Name: tcp.fcounter
     -> Description: 
     -> Unit: 
     -> DataType: Sum
     -> IsMonotonic: true
     -> AggregationTemporality: AGGREGATION_TEMPORALITY_DELTA
NumberDataPoints #0
StartTimestamp: 1796191693594692111
Timestamp: 1796191693595008619
Value: 1.25
ResourceMetrics #0
Resource SchemaURL: 
Resource attributes:
     -> service.name: Str(metricgen)
     -> host.name: Str(h1)
ScopeMetrics #0
ScopeMetrics SchemaURL: 
InstrumentationScope gen-scope 9.8.7
InstrumentationScope attributes:
     -> scope.attr: Str(x)
Metric #0
Descriptor:
     -> Name: tcp.open
     -> Description: Open connections
     -> Unit: {connection}
     -> DataType: Sum
     -> IsMonotonic: false
     -> AggregationTemporality: AGGREGATION_TEMPORALITY_CUMULATIVE
NumberDataPoints #0
StartTimestamp: 1796191693594625853
Timestamp: 1796191694242644786
Value: -4
2026-12-02T06:08:15.252910Z  INFO Shutdown signal received.
";

    #[test]
    fn parses_every_kind_of_metric_and_its_points() {
        let (metrics, errors) = parse(SAMPLE);
        assert_eq!(errors, Vec::<String>::new());
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tcp.rtt",
                "tcp.bytes",
                "tcp.open",
                "tcp.cwnd",
                "tcp.igauge",
                "tcp.fcounter",
                "tcp.open"
            ]
        );
        let resource = attrs(&[("service.name", str("metricgen")), ("host.name", str("h1"))]);
        for metric in &metrics {
            assert_eq!(metric.resource, resource, "{}", metric.name);
            assert_eq!(
                (metric.scope_name.as_str(), metric.scope_version.as_str()),
                ("gen-scope", "9.8.7")
            );
        }

        let rtt = &metrics[0];
        assert_eq!(rtt.description, "Round trip \"time\": a, b");
        assert_eq!(rtt.unit, "s");
        assert_eq!(rtt.kind, MetricKind::Histogram);
        assert_eq!(rtt.temporality, Some(Temporality::Delta));
        let established = attrs(&[
            ("network.peer.port", AttrValue::Int(8080)),
            ("ok", AttrValue::Bool(true)),
            ("ratio", AttrValue::Double(0.5)),
            ("state", str("ESTABLISHED")),
        ]);
        assert_eq!(
            rtt.data_points,
            [
                DataPoint {
                    attributes: established,
                    start_unix_nano: 1796191693594545773,
                    time_unix_nano: 1796191693594854930,
                    value: PointValue::Histogram(HistogramValue {
                        count: 3,
                        sum: Some(2.5505),
                        min: Some(0.0005),
                        max: Some(2.5),
                        explicit_bounds: vec![0.001, 0.01, 0.1],
                        bucket_counts: vec![1, 0, 1, 1],
                    }),
                },
                DataPoint {
                    attributes: attrs(&[("state", str("SYN_SENT"))]),
                    start_unix_nano: 1796191693594545773,
                    time_unix_nano: 1796191693594854930,
                    value: PointValue::Histogram(HistogramValue {
                        count: 1,
                        sum: Some(0.002),
                        min: Some(0.002),
                        max: Some(0.002),
                        explicit_bounds: vec![0.001, 0.01, 0.1],
                        bucket_counts: vec![0, 1, 0, 0],
                    }),
                },
            ]
        );

        let bytes = &metrics[1];
        assert_eq!(
            (bytes.description.as_str(), bytes.unit.as_str()),
            ("Bytes", "By")
        );
        assert_eq!(bytes.kind, MetricKind::Sum { monotonic: true });
        assert_eq!(bytes.temporality, Some(Temporality::Delta));
        let by_direction = |direction: &str| {
            bytes
                .point(&[("direction", str(direction))])
                .and_then(DataPoint::number)
        };
        assert_eq!(by_direction("rx"), Some(NumberValue::Int(7)));
        assert_eq!(by_direction("tx"), Some(NumberValue::Int(100)));
        assert_eq!(bytes.data_points[0].start_unix_nano, 1796191693594592062);
        assert_eq!(bytes.data_points[0].time_unix_nano, 1796191693594963492);

        let open = &metrics[2];
        assert_eq!(open.unit, "{connection}");
        assert_eq!(open.kind, MetricKind::Sum { monotonic: false });
        assert_eq!(open.temporality, Some(Temporality::Cumulative));
        assert_eq!(
            open.point(&[]).and_then(DataPoint::number),
            Some(NumberValue::Int(-2))
        );

        let cwnd = &metrics[3];
        assert_eq!((cwnd.kind, cwnd.temporality), (MetricKind::Gauge, None));
        assert_eq!(cwnd.unit, "");
        assert_eq!(
            cwnd.point(&[("k", str("v"))]).and_then(DataPoint::number),
            Some(NumberValue::Double(14.5))
        );
        assert_eq!(
            metrics[4].data_points[0].number(),
            Some(NumberValue::Int(-42))
        );
        assert_eq!(metrics[4].description, "");
        assert_eq!(
            metrics[5].data_points[0].number(),
            Some(NumberValue::Double(1.25))
        );

        let last = &metrics[6];
        assert_eq!(
            last.data_points,
            [DataPoint {
                attributes: BTreeMap::new(),
                start_unix_nano: 1796191693594625853,
                time_unix_nano: 1796191694242644786,
                value: PointValue::Number(NumberValue::Int(-4)),
            }]
        );
    }

    #[test]
    fn multi_line_strings_continue_their_value() {
        let sample = SAMPLE
            .replace("Str(SYN_SENT)", "Str(SYN\nSENT)")
            .replace("Description: Bytes", "Description: Bytes\nsent");
        let (metrics, errors) = parse(&sample);
        assert_eq!(errors, Vec::<String>::new());
        assert!(metrics[0].point(&[("state", str("SYN\nSENT"))]).is_some());
        assert_eq!(metrics[1].description, "Bytes\nsent");
    }

    #[test]
    fn reports_what_it_cannot_parse() {
        let (metrics, errors) = parse(&SAMPLE.replace("DataType: Gauge", "DataType: Summary"));
        assert_eq!(metrics.len(), 5, "the two gauges are left out");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("unsupported DataType \"Summary\""),
            "{errors:?}"
        );
        let (_, errors) = parse(&SAMPLE.replace("Buckets #2, Count: 1", "Buckets #2, Count: x"));
        assert!(
            errors[0].starts_with("bad bucket count \"x\""),
            "{errors:?}"
        );
        let (_, errors) = parse(&SAMPLE.replace("Value: 14.5", "Valeur: 14.5"));
        assert!(
            errors[0].starts_with("unexpected line in a metric: \"Valeur: 14.5\""),
            "{errors:?}"
        );
    }
}
