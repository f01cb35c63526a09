//! Where and how to export: the `--otlp` endpoint and the standard `OTEL_*` variables.
//!
//! Each signal (traces, metrics) has its own variables, read before the generic ones:
//! `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_*`, then `OTEL_EXPORTER_OTLP_*`. This module picks the
//! transport from `_PROTOCOL`, refuses a compression this build cannot do, reads `_TIMEOUT` and
//! the TLS files ([`super::tls`]), applies the `--otlp ENDPOINT` override and builds the
//! resource. The endpoint variables, `_HEADERS` and `_COMPRESSION` are read where they are
//! used: by the trace transport ([`super::transport`]) and by opentelemetry-otlp's metric
//! exporter.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::{
    Resource,
    resource::{EnvResourceDetector, ResourceDetector, TelemetryResourceDetector},
};
use opentelemetry_semantic_conventions::resource::{HOST_NAME, SERVICE_NAME};

use super::tls::{TlsError, TlsFiles};

/// The service name when `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` set none.
const DEFAULT_SERVICE_NAME: &str = "tcpstates";
/// How long an export request may take when `OTEL_EXPORTER_OTLP_TIMEOUT` says nothing.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What an exporter sends: it names the variables read before the generic ones, and the path
/// an OTLP/HTTP endpoint gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Spans (`OTEL_EXPORTER_OTLP_TRACES_*`, `/v1/traces`).
    Traces,
    /// Metrics (`OTEL_EXPORTER_OTLP_METRICS_*`, `/v1/metrics`).
    Metrics,
}

/// A setting with a variable of its own per signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Setting {
    Endpoint,
    Protocol,
    Compression,
    Headers,
    Timeout,
    Certificate,
    ClientCertificate,
    ClientKey,
}

impl Signal {
    /// The signal's own variable for `setting` and the generic one, in the order the exporter
    /// reads them.
    pub(super) fn variables(self, setting: Setting) -> [&'static str; 2] {
        macro_rules! variables {
            ($suffix:literal) => {
                match self {
                    Self::Traces => [
                        concat!("OTEL_EXPORTER_OTLP_TRACES_", $suffix),
                        concat!("OTEL_EXPORTER_OTLP_", $suffix),
                    ],
                    Self::Metrics => [
                        concat!("OTEL_EXPORTER_OTLP_METRICS_", $suffix),
                        concat!("OTEL_EXPORTER_OTLP_", $suffix),
                    ],
                }
            };
        }
        match setting {
            Setting::Endpoint => variables!("ENDPOINT"),
            Setting::Protocol => variables!("PROTOCOL"),
            Setting::Compression => variables!("COMPRESSION"),
            Setting::Headers => variables!("HEADERS"),
            Setting::Timeout => variables!("TIMEOUT"),
            Setting::Certificate => variables!("CERTIFICATE"),
            Setting::ClientCertificate => variables!("CLIENT_CERTIFICATE"),
            Setting::ClientKey => variables!("CLIENT_KEY"),
        }
    }

    /// The path an OTLP/HTTP base URL gets for the signal.
    fn http_path(self) -> &'static str {
        match self {
            Self::Traces => "/v1/traces",
            Self::Metrics => "/v1/metrics",
        }
    }
}

/// OTLP transports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`grpc`), the default.
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`).
    HttpProtobuf,
    /// OTLP/HTTP with JSON bodies (`http/json`).
    HttpJson,
}

/// A setting that makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// An `OTEL_EXPORTER_OTLP_*` variable holds a value it cannot take.
    #[error("{variable}={value}: {expected}")]
    Variable {
        /// The variable read.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What it can take.
        expected: &'static str,
    },
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("OTLP endpoint '{0}' is not an http:// or https:// URL such as http://localhost:4317")]
    Endpoint(String),
    /// A TLS file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Resolved export settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportSettings {
    /// Transport.
    pub protocol: Protocol,
    /// Full endpoint URL, when given on the command line; otherwise the exporter reads the
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` variables (or uses the OTLP default).
    pub endpoint: Option<String>,
    /// The endpoint, from the command line or the variables, is `https://`.
    pub secure: bool,
    /// How long one export request may take.
    pub timeout: Duration,
    /// TLS files beyond the system's roots.
    pub tls: TlsFiles,
}

impl ExportSettings {
    /// Settings of `signal` from the command line's `endpoint` and the environment (`var`
    /// reads a variable).
    pub fn resolve(
        signal: Signal,
        endpoint: Option<&str>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        if let Some((variable, value)) = first_set(&var, signal.variables(Setting::Compression))
            && !["gzip", "none"].contains(&value.trim().to_ascii_lowercase().as_str())
        {
            return Err(SettingsError::Variable {
                variable,
                value,
                expected: "the compression must be gzip or none",
            });
        }
        let protocol = first_set(&var, signal.variables(Setting::Protocol))
            .map(|(variable, value)| match value.trim() {
                "grpc" => Ok(Protocol::Grpc),
                "http/protobuf" => Ok(Protocol::HttpProtobuf),
                "http/json" => Ok(Protocol::HttpJson),
                _ => Err(SettingsError::Variable {
                    variable,
                    value,
                    expected: "the protocol must be grpc, http/protobuf or http/json",
                }),
            })
            .transpose()?
            .unwrap_or(Protocol::Grpc);
        let endpoint = endpoint
            .map(|endpoint| {
                if !is_http_url(endpoint) {
                    return Err(SettingsError::Endpoint(endpoint.to_owned()));
                }
                Ok(match protocol {
                    Protocol::Grpc => endpoint.to_owned(),
                    // Like OTEL_EXPORTER_OTLP_ENDPOINT: a base URL gets the signal's path.
                    Protocol::HttpProtobuf | Protocol::HttpJson => {
                        with_signal_path(endpoint, signal.http_path())
                    }
                })
            })
            .transpose()?;
        let variable_endpoint = first_set(&var, signal.variables(Setting::Endpoint));
        // The exporter reads the variable only without `--otlp ENDPOINT`. A value without a
        // scheme is left to it (OTLP/gRPC takes `host:port`); another scheme than http(s) would
        // only fail later, as a failed name lookup.
        if endpoint.is_none()
            && let Some((variable, value)) = &variable_endpoint
            && has_scheme(value)
            && !is_http_url(value)
        {
            return Err(SettingsError::Variable {
                variable,
                value: value.clone(),
                expected: "the endpoint must be an http:// or https:// URL such as \
                           http://localhost:4317",
            });
        }
        let secure = endpoint
            .clone()
            .or_else(|| variable_endpoint.map(|(_, value)| value))
            .is_some_and(|endpoint| endpoint.trim().to_ascii_lowercase().starts_with("https://"));
        let timeout = first_set(&var, signal.variables(Setting::Timeout))
            .map(|(variable, value)| match value.trim().parse() {
                Ok(ms) => Ok(Duration::from_millis(ms)),
                Err(_) => Err(SettingsError::Variable {
                    variable,
                    value,
                    expected: "the timeout must be a number of milliseconds",
                }),
            })
            .transpose()?
            .unwrap_or(DEFAULT_TIMEOUT);
        Ok(Self {
            protocol,
            endpoint,
            secure,
            timeout,
            tls: TlsFiles::read(signal, &var)?,
        })
    }
}

/// The first of `variables` that is set (the signal's own before the generic one, as the
/// exporter reads them), with its value.
pub(super) fn first_set(
    var: impl Fn(&str) -> Option<String>,
    variables: [&'static str; 2],
) -> Option<(&'static str, String)> {
    variables
        .into_iter()
        .find_map(|variable| var(variable).map(|value| (variable, value)))
}

/// Whether `endpoint` starts with a scheme: `://` before any `/`, `?` or `#`.
fn has_scheme(endpoint: &str) -> bool {
    endpoint
        .trim()
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.contains(['/', '?', '#']))
}

/// Whether `endpoint` is an `http://` or `https://` URL (any case) with something after the
/// scheme: the only schemes the exporter's transports speak.
fn is_http_url(endpoint: &str) -> bool {
    endpoint
        .trim()
        .split_once("://")
        .is_some_and(|(scheme, rest)| {
            (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                && !rest.is_empty()
        })
}

/// `http://host:4318` → `http://host:4318/v1/traces` (`path`); a URL with a path is kept.
fn with_signal_path(endpoint: &str, path: &str) -> String {
    let after_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    match after_scheme.split_once('/') {
        Some((_, path)) if !path.is_empty() => endpoint.to_owned(),
        _ => format!("{}{path}", endpoint.trim_end_matches('/')),
    }
}

/// The resource every span is exported with: `service.name` (`OTEL_SERVICE_NAME`, else
/// `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else `tcpstates`), `host.name`, the SDK's
/// `telemetry.sdk.*`, and every attribute of `OTEL_RESOURCE_ATTRIBUTES`.
pub fn resource(host_name: Option<String>, service_name_var: Option<String>) -> Resource {
    let detectors: [Box<dyn ResourceDetector>; 2] = [
        Box::new(TelemetryResourceDetector),
        Box::new(EnvResourceDetector::new()),
    ];
    let mut builder = Resource::builder_empty()
        .with_service_name(DEFAULT_SERVICE_NAME)
        .with_attributes(host_name.map(|name| KeyValue::new(HOST_NAME, name)))
        .with_detectors(&detectors);
    if let Some(name) = service_name_var.filter(|name| !name.is_empty()) {
        builder = builder.with_attribute(KeyValue::new(SERVICE_NAME, name));
    }
    builder.build()
}

#[cfg(test)]
pub(super) mod tests {
    use opentelemetry::{Key, Value};

    use super::*;

    /// Reads variables from `vars` instead of the environment.
    pub(in crate::sink::otlp) fn env<'a>(
        vars: &'a [(&'a str, &'a str)],
    ) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn grpc_by_default_and_endpoint_kept() {
        let settings =
            ExportSettings::resolve(Signal::Traces, Some("http://127.0.0.1:4317"), env(&[]))
                .expect("valid");
        assert_eq!(settings.protocol, Protocol::Grpc);
        assert_eq!(settings.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        let settings = ExportSettings::resolve(Signal::Traces, None, env(&[])).expect("valid");
        assert_eq!(settings.endpoint, None);
    }

    #[test]
    fn http_base_url_gets_the_traces_path() {
        let vars = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        let settings =
            ExportSettings::resolve(Signal::Traces, Some("http://127.0.0.1:4318"), env(&vars))
                .expect("valid");
        assert_eq!(settings.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            settings.endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        let custom = ExportSettings::resolve(
            Signal::Traces,
            Some("http://c:4318/custom/path"),
            env(&vars),
        )
        .expect("valid");
        assert_eq!(
            custom.endpoint.as_deref(),
            Some("http://c:4318/custom/path")
        );
    }

    #[test]
    fn traces_protocol_wins_over_the_generic_one() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let settings = ExportSettings::resolve(Signal::Traces, None, env(&vars)).expect("valid");
        assert_eq!(settings.protocol, Protocol::HttpJson);
    }

    #[test]
    fn bad_protocol_and_endpoint_are_named() {
        let vars = [("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")];
        let err = ExportSettings::resolve(Signal::Traces, None, env(&vars))
            .expect_err("unknown protocol");
        assert!(
            err.to_string()
                .contains("OTEL_EXPORTER_OTLP_PROTOCOL=thrift"),
            "{err}"
        );
        let err = ExportSettings::resolve(Signal::Traces, Some("localhost:4317"), env(&[]))
            .expect_err("no scheme");
        assert!(err.to_string().contains("'localhost:4317'"), "{err}");
    }

    #[test]
    fn endpoint_scheme_is_http_or_https() {
        for endpoint in [
            "http://c:4317",
            "https://c:4317",
            "HTTPS://c:4317/v1/traces",
        ] {
            ExportSettings::resolve(Signal::Traces, Some(endpoint), env(&[])).expect(endpoint);
        }
        for endpoint in [
            "ftp://collector:4317",
            "unix:///run/otlp.sock",
            "http://",
            "c:4317",
        ] {
            let err = ExportSettings::resolve(Signal::Traces, Some(endpoint), env(&[]))
                .expect_err(endpoint);
            assert!(
                err.to_string()
                    .contains(&format!("'{endpoint}' is not an http:// or https:// URL")),
                "{err}"
            );
        }
        // The variable the exporter would read, the signal's own first; none when the flag
        // gives the endpoint.
        let vars = [
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "grpc://collector:4317",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ];
        let err =
            ExportSettings::resolve(Signal::Traces, None, env(&vars)).expect_err("grpc:// scheme");
        assert!(
            err.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=grpc://collector:4317: "),
            "{err}"
        );
        ExportSettings::resolve(Signal::Traces, Some("http://c:4317"), env(&vars))
            .expect("the flag wins");
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4317")];
        let err =
            ExportSettings::resolve(Signal::Traces, None, env(&vars)).expect_err("ftp:// scheme");
        assert!(err.to_string().contains("http:// or https://"), "{err}");
        // OTLP/gRPC takes a bare host:port from the variables (the exporter adds the scheme).
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")];
        ExportSettings::resolve(Signal::Traces, None, env(&vars)).expect("host:port");
    }

    #[test]
    fn compression_is_gzip_or_none() {
        for value in ["gzip", "GZIP", "none"] {
            let vars = [("OTEL_EXPORTER_OTLP_COMPRESSION", value)];
            ExportSettings::resolve(Signal::Traces, None, env(&vars)).expect("valid");
        }
        let vars = [
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ];
        let err = ExportSettings::resolve(Signal::Traces, None, env(&vars)).expect_err("no zstd");
        assert!(
            err.to_string()
                .contains("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION=zstd"),
            "{err}"
        );
    }

    #[test]
    fn timeout_in_milliseconds_and_https_from_the_flag_or_the_variables() {
        let settings = ExportSettings::resolve(Signal::Traces, None, env(&[])).expect("valid");
        assert_eq!(
            (settings.timeout, settings.secure),
            (Duration::from_secs(10), false)
        );
        let vars = [
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "x"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "HTTPS://collector:4317"),
        ];
        let settings = ExportSettings::resolve(Signal::Traces, None, env(&vars)).expect("valid");
        assert_eq!(
            (settings.timeout, settings.secure),
            (Duration::from_millis(250), true)
        );
        let flag = ExportSettings::resolve(Signal::Traces, Some("http://c:4317"), env(&vars))
            .expect("valid");
        assert!(!flag.secure, "the flag wins over the variable");
        let vars = [("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")];
        let err = ExportSettings::resolve(Signal::Traces, None, env(&vars)).expect_err("not ms");
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_TIMEOUT=10s"),
            "{err}"
        );
    }

    #[test]
    fn service_name_defaults_to_tcpstates_and_follows_otel_service_name() {
        let name = |resource: &Resource| resource.get(&Key::new(SERVICE_NAME));
        let resource = resource(Some("web-1".into()), None);
        assert_eq!(name(&resource), Some(Value::from("tcpstates")));
        assert_eq!(
            resource.get(&Key::new(HOST_NAME)),
            Some(Value::from("web-1"))
        );
        let named = super::resource(None, Some("edge-agent".into()));
        assert_eq!(name(&named), Some(Value::from("edge-agent")));
    }
}
