//! TLS to the collector, for `https://` endpoints: the system's trusted roots, plus the
//! collector's CA and the agent's client certificate from the standard variables
//! `OTEL_EXPORTER_OTLP_{,TRACES_,METRICS_}CERTIFICATE`, `_CLIENT_CERTIFICATE` and `_CLIENT_KEY` (PEM
//! files, read and checked at start). Both transports use rustls with the ring provider.

use std::{fs, path::PathBuf, time::Duration};

use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};

use super::settings::{Setting, Signal, first_set};

/// A file named by a TLS variable could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("{variable}={path}: {source}")]
    Read {
        /// The variable naming the file.
        variable: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file holds no PEM certificate, or the client key does not go with the certificate.
    #[error("{variable}={path}: {reason}")]
    Pem {
        /// The variable naming the file.
        variable: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of the client certificate and its key was given.
    #[error("{given} is set but {missing} is not: a client certificate needs its key")]
    HalfIdentity {
        /// The variable that is set.
        given: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
}

/// The PEM files TLS to the collector uses beyond the system's roots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificates of CAs to trust (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub ca: Option<Vec<u8>>,
    /// The agent's certificate and its private key, for collectors that ask for one
    /// (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `OTEL_EXPORTER_OTLP_CLIENT_KEY`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// The signal's own variable and the generic one, in the order the exporter reads them.
type Variables = [&'static str; 2];

impl TlsFiles {
    /// Reads the files the variables name (`var` reads a variable) and checks that they hold
    /// what they should.
    pub fn read(signal: Signal, var: impl Fn(&str) -> Option<String>) -> Result<Self, TlsError> {
        let client_certificate = signal.variables(Setting::ClientCertificate);
        let client_key = signal.variables(Setting::ClientKey);
        let ca = read_named(&var, signal.variables(Setting::Certificate))?;
        if let Some(file) = &ca {
            reqwest::Certificate::from_pem_bundle(&file.contents)
                .ok()
                .filter(|certificates| !certificates.is_empty())
                .ok_or_else(|| TlsError::Pem {
                    variable: file.variable,
                    path: file.path.clone(),
                    reason: "no PEM certificate in it".into(),
                })?;
        }
        let identity = match (
            read_named(&var, client_certificate)?,
            read_named(&var, client_key)?,
        ) {
            (None, None) => None,
            (Some(file), None) => {
                return Err(TlsError::HalfIdentity {
                    given: file.variable,
                    missing: client_key[1],
                });
            }
            (None, Some(file)) => {
                return Err(TlsError::HalfIdentity {
                    given: file.variable,
                    missing: client_certificate[1],
                });
            }
            (Some(certificate), Some(key)) => {
                reqwest::Identity::from_pem(
                    &[key.contents.as_slice(), &certificate.contents].concat(),
                )
                .map_err(|err| TlsError::Pem {
                    variable: certificate.variable,
                    path: certificate.path,
                    reason: format!("not a certificate that goes with the key: {err}"),
                })?;
                Some((certificate.contents, key.contents))
            }
        };
        Ok(Self {
            ca: ca.map(|file| file.contents),
            identity,
        })
    }

    /// Whether anything beyond the system's roots was given.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.identity.is_none()
    }
}

/// A file a variable names, read.
struct NamedFile {
    variable: &'static str,
    path: PathBuf,
    contents: Vec<u8>,
}

/// The first of `variables` that is set, with the file it names, read.
fn read_named(
    var: impl Fn(&str) -> Option<String>,
    variables: Variables,
) -> Result<Option<NamedFile>, TlsError> {
    let Some((variable, path)) = first_set(var, variables) else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    match fs::read(&path) {
        Ok(contents) => Ok(Some(NamedFile {
            variable,
            path,
            contents,
        })),
        Err(source) => Err(TlsError::Read {
            variable,
            path,
            source,
        }),
    }
}

/// Makes rustls use the ring provider in this process (both transports' TLS is rustls; the
/// HTTP client takes the process's provider).
pub fn install_crypto_provider() {
    // Err: a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The gRPC channel's TLS: the system's roots plus `files`.
pub fn grpc_config(files: &TlsFiles) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new().with_native_roots();
    if let Some(ca) = &files.ca {
        config = config.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((certificate, key)) = &files.identity {
        config = config.identity(Identity::from_pem(certificate, key));
    }
    config
}

/// An HTTP client trusting the system's roots plus `files`, giving up on a request after
/// `timeout`.
pub fn http_client(files: &TlsFiles, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(ca) = &files.ca {
        builder = builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(ca)?);
    }
    if let Some((certificate, key)) = &files.identity {
        builder = builder.identity(reqwest::Identity::from_pem(
            &[key.as_slice(), certificate].concat(),
        )?);
    }
    builder.build()
}
