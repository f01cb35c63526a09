//! `--otlp https://…`: TLS to the collector. rotel listens in plain text only, so each test puts
//! a TLS terminator of its own in front of it (rustls, with a CA and certificates the test makes):
//! the agent's traces cross real TLS on loopback and arrive at the real receiver. The agent
//! trusts the test's CA only through `OTEL_EXPORTER_OTLP_CERTIFICATE`, and presents a client
//! certificate from `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`/`_CLIENT_KEY` where the terminator
//! asks for one.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use integration_tests::agent::{self, Agent, EVENT_TIMEOUT, assert_usage_error};
use integration_tests::netns::Netns;
use integration_tests::otlp::{Receiver, SpanKind};
use integration_tests::traces::{ARRIVAL_TIMEOUT, await_traces_on_port, check_trace, timed_states};
use integration_tests::traffic::{self, Closer, LISTENER, Transitions};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// A CA, a certificate it signed for the terminator (127.0.0.1 and localhost) and one for the
/// agent, with the PEM files the agent reads in a directory of their own, removed on drop.
struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    server: (CertificateDer<'static>, PrivatePkcs8KeyDer<'static>),
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("tcpstates-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the PKI directory");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tcpstates test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
        let issuer = Issuer::new(ca_params, ca_key);
        let sign = |names: Vec<String>| {
            let key = KeyPair::generate().expect("key");
            let certificate = CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &issuer)
                .expect("certificate");
            (certificate, key)
        };
        let (server, server_key) = sign(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client, client_key) = sign(vec!["tcpstates-agent".into()]);
        std::fs::write(dir.join("client.pem"), client.pem()).expect("write client.pem");
        std::fs::write(dir.join("client.key"), client_key.serialize_pem()).expect("write key");
        Pki {
            dir,
            ca: ca.der().clone(),
            server: (
                server.der().clone(),
                PrivatePkcs8KeyDer::from(server_key.serialize_der()),
            ),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS terminator on a loopback port: it completes each TLS handshake with the PKI's server
/// certificate (offering ALPN h2 and http/1.1, and asking for a client certificate signed by the
/// CA when told to) and relays the plain bytes to `upstream`. It records each handshake's
/// outcome, and stops when dropped.
struct TlsTerminator {
    port: u16,
    handshakes: Arc<Mutex<Vec<Result<(), String>>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TlsTerminator {
    fn start(pki: &Pki, upstream: u16, client_certificates: bool) -> TlsTerminator {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = if client_certificates {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca.clone()).expect("CA as a root");
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let (certificate, key) = &pki.server;
        let key = PrivatePkcs8KeyDer::from(key.secret_pkcs8_der().to_vec());
        let mut config = builder
            .with_single_cert(vec![certificate.clone()], PrivateKeyDer::Pkcs8(key))
            .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("address").port();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&handshakes);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let relay = async move {
                    while let Ok((socket, _)) = listener.accept().await {
                        let (acceptor, recorded) = (acceptor.clone(), Arc::clone(&recorded));
                        tokio::spawn(async move {
                            let tls = acceptor.accept(socket).await;
                            let outcome = tls.as_ref().map(|_| ()).map_err(|e| e.to_string());
                            recorded.lock().expect("handshakes").push(outcome);
                            let Ok(mut tls) = tls else { return };
                            let Ok(mut plain) =
                                tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, upstream))
                                    .await
                            else {
                                return;
                            };
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        });
                    }
                };
                tokio::select! {
                    () = relay => {}
                    _ = stopped => {}
                }
            });
        });
        TlsTerminator {
            port,
            handshakes,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn handshakes(&self) -> Vec<Result<(), String>> {
        self.handshakes.lock().expect("handshakes").clone()
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The agent exporting to `endpoint` with `protocol`, tracing local port `port` alone (the
/// client's ephemeral port is not traced: its traces are the listener's and the accepted
/// socket's), with `env` set.
fn agent_command(protocol: &str, endpoint: &str, port: u16, env: &[(&str, String)]) -> Command {
    let filter = port.to_string();
    let mut command = agent::command(&["--otlp", endpoint, "-q", "-L", &filter]);
    command.env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol);
    command.envs(env.iter().map(|(name, value)| (name, value)));
    command
}

/// Makes one connection to `port` with `agent` tracing it, and checks that its traces reach
/// `receiver` whole, through the terminator, whose every handshake succeeded.
fn traces_cross(agent: Agent, port: u16, receiver: &Receiver, terminator: &TlsTerminator) {
    let ns = Netns::create();
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    traffic::connect_and_close(&ns, server, Duration::ZERO, Closer::Client);
    let server_life = Closer::Client.server_transitions();
    let traces = await_traces_on_port(receiver, port, &[LISTENER, server_life], ARRIVAL_TIMEOUT);
    assert_eq!(traces.len(), 2, "one trace per socket: {traces:#?}");
    for trace in &traces {
        let life: Transitions = match trace.root.kind {
            SpanKind::Server => server_life,
            _ => LISTENER,
        };
        check_trace(trace, &timed_states(life), None);
    }
    let finished = agent.stop_within(libc::SIGTERM, ARRIVAL_TIMEOUT);
    assert_eq!(finished.code(), 0, "{finished:#?}");
    let handshakes = terminator.handshakes();
    assert!(
        !handshakes.is_empty() && handshakes.iter().all(Result::is_ok),
        "{handshakes:?}"
    );
}

#[test]
fn grpc_over_tls_trusts_the_collectors_ca_from_otel_exporter_otlp_certificate() {
    let pki = Pki::new("tls-grpc");
    let receiver = Receiver::start();
    let terminator = TlsTerminator::start(&pki, receiver.ports().grpc, false);
    let env = [("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem"))];
    let agent = Agent::start_command(agent_command("grpc", &terminator.endpoint(), 28050, &env));
    traces_cross(agent, 28050, &receiver, &terminator);
}

#[test]
fn http_over_tls_with_a_client_certificate() {
    let pki = Pki::new("tls-http");
    let receiver = Receiver::start();
    let terminator = TlsTerminator::start(&pki, receiver.ports().http, true);
    let env = [
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", pki.path("ca.pem")),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            pki.path("client.pem"),
        ),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.path("client.key")),
    ];
    let agent = Agent::start_command(agent_command(
        "http/protobuf",
        &format!("{}/v1/traces", terminator.endpoint()),
        28051,
        &env,
    ));
    traces_cross(agent, 28051, &receiver, &terminator);
}

/// Without the CA the collector's certificate is not trusted: the export fails and says so,
/// and the terminator sees the agent abort the handshake. Over `protocol`, on port `port`.
fn an_unknown_ca_is_refused(protocol: &str, port: u16) {
    let pki = Pki::new(&format!("tls-unknown-{port}"));
    let receiver = Receiver::start();
    let upstream = match protocol {
        "grpc" => receiver.ports().grpc,
        _ => receiver.ports().http,
    };
    let terminator = TlsTerminator::start(&pki, upstream, false);
    let agent = Agent::start_command(agent_command(protocol, &terminator.endpoint(), port, &[]));
    let ns = Netns::create();
    let server = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    traffic::connect_and_close(&ns, server, Duration::ZERO, Closer::Client);
    agent.await_stderr("an export failure", EVENT_TIMEOUT, |lines| {
        lines
            .iter()
            .any(|line| line.starts_with("tcpstates: OTLP export failing, will retry: "))
            .then_some(())
    });
    let finished = agent.stop_within(libc::SIGTERM, Duration::from_secs(30));
    assert_eq!(finished.code(), 0, "{finished:#?}");
    let handshakes = terminator.handshakes();
    assert!(
        !handshakes.is_empty() && handshakes.iter().all(Result::is_err),
        "every handshake refused by the agent: {handshakes:?}"
    );
    assert!(receiver.spans().is_empty(), "nothing crossed");
}

#[test]
fn grpc_over_tls_refuses_a_collector_signed_by_an_unknown_ca() {
    an_unknown_ca_is_refused("grpc", 28052);
}

#[test]
fn http_over_tls_refuses_a_collector_signed_by_an_unknown_ca() {
    an_unknown_ca_is_refused("http/protobuf", 28053);
}

#[test]
fn unreadable_or_unfit_tls_files_are_usage_errors_naming_the_variable() {
    let pki = Pki::new("tls-files");
    let missing = pki.path("missing.pem");
    let not_pem = pki.path("client.key");
    for (env, named) in [
        (
            vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", missing.as_str())],
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
        (
            vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", not_pem.as_str())],
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ),
        (
            vec![(
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                &*pki.path("client.pem"),
            )],
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        ),
    ] {
        let mut command = agent::command(&["--otlp", "https://127.0.0.1:4317"]);
        command.envs(env);
        assert_usage_error(command, named);
    }
}
