//! Writes the man page `tcpstates.8` and the bash, zsh and fish completions of `tcpstates` into a
//! directory, all made from the agent's own command-line definition (`tcpstates::cli::Cli`), so
//! they cannot drift from the flags. `cargo xtask dist` runs it:
//!
//! ```sh
//! cargo run -p tcpstates --release --example gen-docs -- OUT_DIR [DATE]
//! ```
//!
//! Why an example of the agent's package: it has to link the agent's library (where `Cli` is),
//! which embeds the BPF object, so it cannot live in xtask (which must build without the BPF
//! toolchain to install it); a hidden flag of `tcpstates` itself would put packaging in the
//! product's command line; and an example may use dev-dependencies, so `clap_mangen` and
//! `clap_complete` are never linked into the product, and no feature of the library changes
//! (the release build of the agent is reused, not rebuilt).
//!
//! The man page has the sections of bcc's `tcpstates(8)` — NAME, SYNOPSIS, DESCRIPTION, OPTIONS,
//! EXAMPLES, FIELDS, OVERHEAD, SOURCE — plus ENVIRONMENT, EXIT STATUS, VERSION and SEE ALSO.
//! NAME, SYNOPSIS, OPTIONS and VERSION are clap's; EXAMPLES is the `--help` examples list; the
//! other sections are the text below.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};
use tcpstates::cli::{Cli, EXAMPLES};

/// DESCRIPTION: paragraphs.
const DESCRIPTION: &[&str] = &[
    "This tool traces TCP session state changes while tracing, and prints details including the \
     duration in each state. This can help explain the latency of TCP connections: whether the \
     time is spent in the ESTABLISHED state (data transfer), or initialization state (SYN_SENT), \
     etc. It prints what bcc's and libbpf-tools' tcpstates print, with the same flags and \
     columns, and accounts on standard error for every event it could not deliver.",
    "It also knows the process that owns each socket (the one that connected or listened; \
     sockets accepted from a listener belong to the listener's process), the socket's network \
     namespace and cgroup, and with --otlp it exports every socket session as an OpenTelemetry \
     trace: a root span for the session and a child span per state.",
    "It attaches eBPF programs to the BTF form of the sock:inet_sock_set_state tracepoint, so it \
     needs Linux 5.12 or later with BTF (/sys/kernel/btf/vmlinux), and root or the CAP_BPF and \
     CAP_PERFMON capabilities. It needs no tracefs and no locked-memory limit.",
];

/// FIELDS: (column, meaning).
const FIELDS: &[(&str, &str)] = &[
    ("TIME", "Time of the change, in HH:MM:SS format (-T)."),
    (
        "TIME(s)",
        "Time of the change, in seconds since the first event (-t).",
    ),
    (
        "SKADDR",
        "Kernel address of the socket: it tells interleaved sessions apart.",
    ),
    (
        "C-PID",
        "The on-CPU process ID when the state changed. State changes often run in softirq \
         context, so this is often 0 (the kernel) or the peer, not the socket's owner.",
    ),
    ("C-COMM", "The on-CPU process name, like C-PID."),
    (
        "PID",
        "The socket's owner (-x): the process that connected or listened; - when unknown \
         (a socket made before tcpstates started).",
    ),
    ("COMM", "The owner's process name (-x)."),
    ("UID", "The socket's user ID (-x)."),
    (
        "NETNS",
        "Inode of the socket's network namespace, as in /proc/PID/ns/net (-x).",
    ),
    (
        "CGROUP",
        "ID of the socket's cgroup v2 (the inode of its directory) (-x).",
    ),
    ("IP", "IP address family, 4 or 6 (-w)."),
    ("LADDR", "Local IP address."),
    ("LPORT", "Local port."),
    ("RADDR", "Remote IP address."),
    ("RPORT", "Remote port."),
    ("OLDSTATE", "Previous TCP state."),
    ("NEWSTATE", "New TCP state."),
    (
        "MS",
        "Time spent in OLDSTATE, in milliseconds (kernel timestamps, microsecond resolution); \
         0.000 on a socket's first line, whose previous state was not timed.",
    ),
];

/// ENVIRONMENT: (variable, meaning).
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "Where --otlp without ENDPOINT exports: an http:// or https:// URL (default \
         http://localhost:4317, or :4318 for OTLP/HTTP).",
    ),
    (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "grpc (default), http/protobuf or http/json.",
    ),
    (
        "OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION",
        "Request headers, the timeout of a request in milliseconds, gzip or none.",
    ),
    (
        "OTEL_EXPORTER_OTLP_CERTIFICATE, _CLIENT_CERTIFICATE, _CLIENT_KEY",
        "PEM files: a CA to trust besides the system's, and a client certificate and key.",
    ),
    (
        "OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES",
        "The exported resource's service.name (default tcpstates) and other attributes.",
    ),
];

/// EXIT STATUS: (code, meaning).
const EXIT_STATUS: &[(&str, &str)] = &[
    (
        "0",
        "Stopped by SIGINT or SIGTERM (or standard output closed) after printing the account.",
    ),
    (
        "1",
        "Could not trace: missing privileges, a kernel without BTF, a failure while running.",
    ),
    (
        "2",
        "Usage error: a bad flag, port list, path or OTEL_* value. Nothing was traced.",
    ),
];

/// OVERHEAD: paragraphs.
const OVERHEAD: &[&str] = &[
    "This traces the kernel TCP set state tracepoint, which fires much less often than send and \
     receive, and therefore has lower overhead than tracing them. The overhead is relative to \
     the rate of new TCP sessions (about five state changes per socket): most of it is waking user \
     space and formatting output, not the BPF program. Port, family, process, cgroup and network \
     namespace filters run in the kernel, so filtered-out changes cost no output.",
    "You can find out the rate of new TCP sessions using \"sar -n TCP 1\", and adding the \
     active/s and passive/s columns. As always, test and understand this tool's overhead for \
     your types of workloads before production use.",
];

/// SOURCE: paragraphs.
const SOURCE: &[&str] = &[
    "https://github.com/tcpstates-otel/tcpstates-otel",
    "A reimplementation, in Rust with aya, of bcc's tcpstates (https://github.com/iovisor/bcc) \
     and its libbpf-tools port.",
];

/// SEE ALSO.
const SEE_ALSO: &str =
    "tcplife(8), tcpconnect(8), tcpaccept(8), ss(8), systemd.exec(5), capabilities(7)";

fn main() -> io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out_dir), date) = (args.next().map(PathBuf::from), args.next()) else {
        eprintln!("usage: gen-docs OUT_DIR [DATE]");
        std::process::exit(2);
    };
    let date = date.map(|date| date.to_string_lossy().into_owned());
    fs::create_dir_all(&out_dir)?;
    fs::write(
        out_dir.join("tcpstates.8"),
        man_page(date.as_deref().unwrap_or_default())?,
    )?;
    for (shell, name) in [
        (Shell::Bash, "tcpstates.bash"),
        (Shell::Zsh, "_tcpstates"),
        (Shell::Fish, "tcpstates.fish"),
    ] {
        write_completion(shell, &out_dir.join(name))?;
    }
    Ok(())
}

/// The completion script of `shell`, written to `path`.
fn write_completion(shell: Shell, path: &Path) -> io::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "tcpstates", &mut script);
    fs::write(path, script)
}

/// The man page, in roff.
fn man_page(date: &str) -> io::Result<Vec<u8>> {
    let man = Man::new(Cli::command())
        .section("8")
        .date(date)
        .manual("System Manager's Manual");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    // Each render adds the apostrophe preamble; the title's is the one the page needs.
    let mut clap_section = |render: &dyn Fn(&mut Vec<u8>) -> io::Result<()>| {
        let mut section = Vec::new();
        render(&mut section)?;
        let preamble = Roff::new().render();
        page.extend_from_slice(
            section
                .strip_prefix(preamble.as_bytes())
                .unwrap_or(&section),
        );
        io::Result::Ok(())
    };
    clap_section(&|w| man.render_name_section(w))?;
    clap_section(&|w| man.render_synopsis_section(w))?;
    clap_section(&|w| write_own(w, |roff| paragraphs(roff, "DESCRIPTION", DESCRIPTION)))?;
    clap_section(&|w| man.render_options_section(w))?;
    clap_section(&|w| write_own(w, examples))?;
    clap_section(&|w| write_own(w, |roff| tagged(roff, "FIELDS", FIELDS)))?;
    clap_section(&|w| write_own(w, |roff| tagged(roff, "ENVIRONMENT", ENVIRONMENT)))?;
    clap_section(&|w| write_own(w, |roff| tagged(roff, "EXIT STATUS", EXIT_STATUS)))?;
    clap_section(&|w| write_own(w, |roff| paragraphs(roff, "OVERHEAD", OVERHEAD)))?;
    clap_section(&|w| write_own(w, |roff| paragraphs(roff, "SOURCE", SOURCE)))?;
    clap_section(&|w| man.render_version_section(w))?;
    clap_section(&|w| {
        write_own(w, |roff| {
            roff.control("SH", ["SEE ALSO"]).text([roman(SEE_ALSO)]);
        })
    })?;
    Ok(page)
}

/// Writes a section built by `build`.
fn write_own(w: &mut Vec<u8>, build: impl FnOnce(&mut Roff)) -> io::Result<()> {
    let mut roff = Roff::new();
    build(&mut roff);
    roff.to_writer(w)
}

/// A section of plain paragraphs.
fn paragraphs(roff: &mut Roff, title: &str, paragraphs: &[&str]) {
    roff.control("SH", [title]);
    for (i, paragraph) in paragraphs.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        roff.text([roman(*paragraph)]);
    }
}

/// A section of tagged paragraphs: the tag in bold, its text indented below.
fn tagged(roff: &mut Roff, title: &str, items: &[(&str, &str)]) {
    roff.control("SH", [title]);
    for (tag, text) in items {
        roff.control("TP", [])
            .text([bold(*tag)])
            .text([roman(*text)]);
    }
}

/// EXAMPLES, from the `--help` examples: each `command  # what it does` line becomes the
/// description followed by the command, as bcc's man pages show them.
fn examples(roff: &mut Roff) {
    roff.control("SH", ["EXAMPLES"]);
    for line in EXAMPLES.lines().skip(1) {
        let (command, what) = match line.split_once('#') {
            Some((command, what)) => (command.trim(), what.trim()),
            None => (line.trim(), ""),
        };
        if command.is_empty() {
            continue;
        }
        if what.is_empty() {
            roff.control("PP", []);
        } else {
            roff.control("TP", [])
                .text([roman(capitalised(what) + ":")]);
        }
        roff.text([bold(format!("# {command}"))]);
    }
}

/// `text` with its first letter in upper case.
fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}
