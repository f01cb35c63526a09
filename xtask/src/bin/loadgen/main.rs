//! `loadgen`: opens and closes loopback TCP connections as fast as it can, or at `--rate`.
//!
//! Each connection goes: the client connects, the server accepts and closes first, the client reads
//! end-of-file and closes. The kernel reports exactly 10 TCP state changes for such a connection
//! (5 on the client socket, 5 on the server's accepted socket), so a tracer's event count can be
//! checked against the number of connections printed here.
//!
//! The run lasts `--seconds` and stops by itself; every blocking call has a timeout. With `--rate`
//! the clients pace themselves to that many connections a second in all (for `cargo xtask soak`)
//! instead of going as fast as they can. At the end it prints one machine-readable line on stdout:
//! `connections=N failed=N seconds=F rate=F`.

mod client;
mod server;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

/// Command line of `loadgen`.
#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Open and close loopback TCP connections as fast as possible, or at --rate"
)]
struct Args {
    /// Address the server listens on and the clients connect to (must be a loopback address).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    addr: IpAddr,
    /// Server port (0: any free port).
    #[arg(long, default_value_t = 9099)]
    port: u16,
    /// How long the clients open connections, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Client threads, each running one connection at a time (8 gave the highest rate on a
    /// 2-core VM: enough connections in flight to keep both cores busy).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Server threads accepting and closing connections.
    #[arg(long, default_value_t = 2)]
    acceptors: usize,
    /// Listen backlog.
    #[arg(long, default_value_t = 4096)]
    backlog: i32,
    /// Connections a second in all, shared evenly by the clients (0: as fast as possible). A
    /// client that falls behind catches up by at most one second's worth of its connections.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    if !args.addr.is_loopback() {
        bail!("--addr {} is not a loopback address", args.addr);
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be in (0, 3600]");
    }
    if args.clients == 0 || args.acceptors == 0 {
        bail!("--clients and --acceptors must be at least 1");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a finite number of connections a second, 0 for no limit");
    }
    let server = server::Server::start(
        SocketAddr::new(args.addr, args.port),
        args.backlog,
        args.acceptors,
    )?;
    let addr = server.addr();

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = (0..args.clients)
        .map(|i| {
            let stop = Arc::clone(&stop);
            let pacing = client::Pacing::new(args.rate, args.clients, i, start);
            thread::Builder::new()
                .name(format!("client-{i}"))
                .spawn(move || client::run(addr, deadline, pacing, &stop))
                .context("spawning a client thread")
        })
        .collect::<Result<Vec<_>>>();
    let clients = match clients {
        Ok(clients) => clients,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
    };
    let mut total = client::Tally::default();
    for handle in clients {
        let tally = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        total.add(&tally);
    }
    let seconds = start.elapsed().as_secs_f64();
    server.stop()?;
    if let Some(error) = &total.first_error {
        eprintln!("loadgen: first failure: {error}");
    }
    println!(
        "connections={} failed={} seconds={seconds:.3} rate={:.1}",
        total.connections,
        total.failed,
        total.connections as f64 / seconds
    );
    Ok(())
}
