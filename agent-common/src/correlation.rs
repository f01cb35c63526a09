//! Correlation: the ids of the trace the agent exports for a TCP socket's session, computed
//! from the socket alone, so an application can link its own spans to that trace.
//!
//! The agent does not pick random ids for a session. It derives them from two numbers that
//! any process on the same host can also read: the host's boot id and the kernel's *socket
//! cookie*, a 64-bit number the kernel gives each socket once and never reuses until reboot.
//! User space reads it with `getsockopt(fd, SOL_SOCKET, SO_COOKIE)` (Linux 4.12 and later);
//! a BPF program gets the same number from `bpf_get_socket_cookie(sk)`. Both sides therefore
//! compute the same ids, without talking to each other.
//!
//! # Derivation
//!
//! This is fixed; any language can reimplement it:
//!
//! 1. **boot id**: the 16 bytes of the UUID in `/proc/sys/kernel/random/boot_id` (text like
//!    `1b0f4d8a-3c2e-4f5a-9b6d-7e8f9a0b1c2d`): hyphens removed, hex-decoded, bytes in text
//!    order.
//! 2. **input** = boot id (16 bytes) ‖ cookie as a little-endian `u64` (8 bytes): 24 bytes.
//! 3. **trace id** = XXH3-128(input, seed 0), the `u128` written big-endian (16 bytes).
//! 4. **root span id** (the session span) = XXH3-64(input, seed 1), big-endian (8 bytes).
//! 5. **span id of the n-th state span** of the session, `n` = 0, 1, 2, … in the order the
//!    states were entered: XXH3-64(input, seed 2 + n), big-endian. When the agent had to end
//!    a session early (its table of open sessions was full) and the socket lives on, the rest
//!    of the session goes in a span under the root that takes the next `n`, and its states
//!    the `n`s after it: no two spans of a trace share an id.
//! 6. An all-zero id, invalid in W3C trace context, is replaced by the value 1
//!    (`00…01`).
//!
//! In Python, with the `xxhash` package:
//!
//! ```python
//! import struct, uuid, xxhash
//! boot = uuid.UUID(open("/proc/sys/kernel/random/boot_id").read().strip()).bytes
//! data = boot + struct.pack("<Q", cookie)
//! trace_id = xxhash.xxh3_128_intdigest(data, seed=0) or 1     # as 32 hex digits
//! root_span_id = xxhash.xxh3_64_intdigest(data, seed=1) or 1  # as 16 hex digits
//! ```
//!
//! The boot id is the same in every container and network namespace of a host, and socket
//! cookies are unique across all of them, so the ids are unique per socket and host boot.
//! They name the session of *this end's* socket: on loopback the peer's socket is a session
//! of its own, with its own cookie.
//!
//! # Features
//!
//! The derivation itself ([`BootId`], [`ConnectionIds`]) is `no_std` and always compiled.
//! The `std` feature adds `BootId::read`, `socket_cookie` and `ConnectionIds::of_socket`;
//! the `opentelemetry` feature adds `ConnectionIds::span_context` and
//! `connection_span_context`, which turn a connected socket into the remote
//! `SpanContext` of the agent's session span, ready for a span link:
//!
//! ```no_run
//! # #[cfg(feature = "opentelemetry")]
//! # fn main() -> std::io::Result<()> {
//! use agent_common::correlation::connection_span_context;
//! use opentelemetry::{KeyValue, global, trace::{Link, SpanKind, Tracer as _}};
//!
//! let stream = std::net::TcpStream::connect("127.0.0.1:8080")?;
//! let connection = connection_span_context(&stream)?;
//! let tracer = global::tracer("my-app");
//! let _span = tracer
//!     .span_builder("request")
//!     .with_kind(SpanKind::Client)
//!     .with_links(vec![Link::new(
//!         connection,
//!         vec![KeyValue::new("tcpstates.link", "connection")],
//!         0,
//!     )])
//!     .start(&tracer);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "opentelemetry"))]
//! # fn main() {}
//! ```

use core::fmt;

use xxhash_rust::xxh3::{xxh3_64_with_seed, xxh3_128_with_seed};

/// XXH3 seed of the trace id.
const TRACE_ID_SEED: u64 = 0;
/// XXH3 seed of the root (session) span id.
const ROOT_SPAN_ID_SEED: u64 = 1;
/// XXH3 seed of the first state span's id; the n-th uses this plus n.
const FIRST_STATE_SPAN_ID_SEED: u64 = 2;
/// Bytes hashed: the boot id and the cookie.
const INPUT_LEN: usize = 16 + 8;

/// The host's boot id: a random UUID the kernel picks at boot, the same in every container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BootId(pub [u8; 16]);

impl BootId {
    /// Where the kernel publishes the boot id.
    pub const PATH: &'static str = "/proc/sys/kernel/random/boot_id";

    /// Parses UUID text, `1b0f4d8a-3c2e-4f5a-9b6d-7e8f9a0b1c2d` or the same 32 hex digits
    /// without hyphens, either case, surrounding whitespace (the file's newline) ignored.
    /// `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim_ascii().as_bytes();
        let hyphenated = match text.len() {
            36 => true,
            32 => false,
            _ => return None,
        };
        let mut bytes = [0u8; 16];
        let mut digits = 0;
        for (i, &c) in text.iter().enumerate() {
            if hyphenated && matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            let value = hex_value(c)?;
            let shift = if digits % 2 == 0 { 4 } else { 0 };
            bytes[digits / 2] |= value << shift;
            digits += 1;
        }
        Some(Self(bytes))
    }
}

impl fmt::Display for BootId {
    /// The canonical UUID text: lowercase, hyphenated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The value of one hex digit.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// An all-zero id is invalid in W3C trace context; it becomes 1.
fn nonzero_u128(id: u128) -> u128 {
    if id == 0 { 1 } else { id }
}

/// An all-zero id is invalid in W3C trace context; it becomes 1.
fn nonzero_u64(id: u64) -> u64 {
    if id == 0 { 1 } else { id }
}

/// The ids of the trace the agent exports for one socket's session (see the
/// [module docs](self) for the derivation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionIds {
    /// The session's trace id (W3C byte order).
    pub trace_id: [u8; 16],
    /// The span id of the session's root span (W3C byte order).
    pub root_span_id: [u8; 8],
    /// Boot id ‖ cookie (little-endian), kept for the state spans' ids.
    input: [u8; INPUT_LEN],
}

impl ConnectionIds {
    /// The ids of the session of the socket with `cookie` on the host booted as `boot_id`.
    pub fn new(boot_id: &BootId, cookie: u64) -> Self {
        let mut input = [0u8; INPUT_LEN];
        input[..16].copy_from_slice(&boot_id.0);
        input[16..].copy_from_slice(&cookie.to_le_bytes());
        let trace_id = nonzero_u128(xxh3_128_with_seed(&input, TRACE_ID_SEED));
        let root_span_id = nonzero_u64(xxh3_64_with_seed(&input, ROOT_SPAN_ID_SEED));
        Self {
            trace_id: trace_id.to_be_bytes(),
            root_span_id: root_span_id.to_be_bytes(),
            input,
        }
    }

    /// The span id of the session's `n`-th state span, counting from 0 in the order the
    /// states were entered.
    pub fn state_span_id(&self, n: u32) -> [u8; 8] {
        let seed = FIRST_STATE_SPAN_ID_SEED + u64::from(n);
        nonzero_u64(xxh3_64_with_seed(&self.input, seed)).to_be_bytes()
    }

    /// The trace id as a number (its bytes read big-endian).
    pub fn trace_id_u128(&self) -> u128 {
        u128::from_be_bytes(self.trace_id)
    }

    /// The root span id as a number (its bytes read big-endian).
    pub fn root_span_id_u64(&self) -> u64 {
        u64::from_be_bytes(self.root_span_id)
    }

    /// The boot id the ids were derived from.
    pub fn boot_id(&self) -> BootId {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&self.input[..16]);
        BootId(bytes)
    }

    /// The socket cookie the ids were derived from.
    pub fn cookie(&self) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&self.input[16..]);
        u64::from_le_bytes(bytes)
    }
}

#[cfg(feature = "opentelemetry")]
pub use self::user::connection_span_context;
#[cfg(feature = "std")]
pub use self::user::socket_cookie;

/// What needs the standard library: reading the boot id and socket cookies.
#[cfg(feature = "std")]
mod user {
    use std::{
        io,
        os::fd::{AsFd, AsRawFd as _},
        sync::OnceLock,
    };

    use super::{BootId, ConnectionIds};

    impl BootId {
        /// Reads and parses [`BootId::PATH`].
        pub fn read() -> io::Result<Self> {
            let text = std::fs::read_to_string(Self::PATH)?;
            Self::parse(&text).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    std::format!("{}: not a UUID: {:?}", Self::PATH, text.trim_ascii()),
                )
            })
        }

        /// The boot id, read once per process: it only changes at reboot.
        fn cached() -> io::Result<Self> {
            static BOOT_ID: OnceLock<BootId> = OnceLock::new();
            if let Some(boot_id) = BOOT_ID.get() {
                return Ok(*boot_id);
            }
            let boot_id = Self::read()?;
            Ok(*BOOT_ID.get_or_init(|| boot_id))
        }
    }

    /// The kernel's cookie of the socket `fd` (`getsockopt(SOL_SOCKET, SO_COOKIE)`, Linux 4.12
    /// and later): the number `bpf_get_socket_cookie` gives BPF programs for the same socket.
    /// The kernel assigns it on first use and keeps it for the socket's life.
    pub fn socket_cookie(fd: impl AsFd) -> io::Result<u64> {
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: the descriptor is borrowed for the whole call; `cookie` and `len` are live
        // locals and `len` holds the size of `cookie`, so the kernel writes within them.
        let ret = unsafe {
            libc::getsockopt(
                fd.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_COOKIE,
                (&raw mut cookie).cast(),
                &mut len,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        if len as usize != size_of::<u64>() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                std::format!("SO_COOKIE returned {len} bytes, not 8"),
            ));
        }
        Ok(cookie)
    }

    impl ConnectionIds {
        /// The ids of the session of the socket `fd` on this host. The boot id is read once
        /// per process.
        pub fn of_socket(fd: impl AsFd) -> io::Result<Self> {
            let cookie = socket_cookie(fd)?;
            Ok(Self::new(&BootId::cached()?, cookie))
        }
    }

    #[cfg(feature = "opentelemetry")]
    mod otel {
        use std::{io, os::fd::AsFd};

        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

        use super::ConnectionIds;

        impl ConnectionIds {
            /// The session's root span as a remote, sampled [`SpanContext`], for a span link
            /// (the agent exports every session it sees).
            pub fn span_context(&self) -> SpanContext {
                SpanContext::new(
                    TraceId::from_bytes(self.trace_id),
                    SpanId::from_bytes(self.root_span_id),
                    TraceFlags::SAMPLED,
                    true,
                    TraceState::NONE,
                )
            }
        }

        /// The [`SpanContext`] of the agent's session span for the socket `fd` on this host:
        /// [`ConnectionIds::of_socket`] then [`ConnectionIds::span_context`].
        pub fn connection_span_context(fd: impl AsFd) -> io::Result<SpanContext> {
            Ok(ConnectionIds::of_socket(fd)?.span_context())
        }
    }

    #[cfg(feature = "opentelemetry")]
    pub use otel::connection_span_context;
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT_ID_TEXT: &str = "1b0f4d8a-3c2e-4f5a-9b6d-7e8f9a0b1c2d";
    const BOOT_ID: BootId = BootId([
        0x1b, 0x0f, 0x4d, 0x8a, 0x3c, 0x2e, 0x4f, 0x5a, 0x9b, 0x6d, 0x7e, 0x8f, 0x9a, 0x0b, 0x1c,
        0x2d,
    ]);

    fn hex<const N: usize>(text: &str) -> [u8; N] {
        let mut bytes = [0u8; N];
        assert_eq!(text.len(), 2 * N, "{text}");
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex");
        }
        bytes
    }

    #[test]
    fn parses_boot_ids() {
        assert_eq!(BootId::parse(BOOT_ID_TEXT), Some(BOOT_ID));
        assert_eq!(
            BootId::parse(" 1B0F4D8A-3C2E-4F5A-9B6D-7E8F9A0B1C2D\n"),
            Some(BOOT_ID)
        );
        assert_eq!(
            BootId::parse("1b0f4d8a3c2e4f5a9b6d7e8f9a0b1c2d"),
            Some(BOOT_ID)
        );
        assert_eq!(
            BootId::parse("00000000-0000-0000-0000-000000000000"),
            Some(BootId([0; 16]))
        );
    }

    #[test]
    fn rejects_other_text() {
        for text in [
            "",
            "1b0f4d8a-3c2e-4f5a-9b6d-7e8f9a0b1c2",
            "1b0f4d8a-3c2e-4f5a-9b6d-7e8f9a0b1c2d0",
            "1b0f4d8a3-c2e-4f5a-9b6d-7e8f9a0b1c2d",
            "1b0f4d8a-3c2e-4f5a-9b6d-7e8f9a0b1c2g",
            "1b0f4d8a-3c2e-4f5a-9b6d+7e8f9a0b1c2d",
            "1b0f4d8a3c2e4f5a9b6d7e8f9a0b1c2-",
            "{1b0f4d8a-3c2e-4f5a-9b6d-7e8f9a0b1c}",
            "1b0f4d8a-3c2e-4f5a-9b6d-7e8f9a0b1c2é",
        ] {
            assert_eq!(BootId::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn displays_canonical_text() {
        extern crate std;
        use std::string::ToString as _;
        assert_eq!(BOOT_ID.to_string(), BOOT_ID_TEXT);
    }

    /// Computed with Python's `xxhash` 3.x (`xxh3_128_intdigest(data, seed=0)`,
    /// `xxh3_64_intdigest(data, seed=1)`, `seed=2+n`), independently of this crate.
    #[test]
    fn known_answers() {
        // (boot id, cookie, trace id, root span id, state span ids 0..3)
        let vectors: [(&str, u64, &str, &str, [&str; 3]); 4] = [
            (
                BOOT_ID_TEXT,
                1,
                "acbc535df073cc6a6930e9d352ba1bb8",
                "54b4d1f6593eb594",
                ["e93411c0372275d5", "dfff07bef96a3486", "96586480288d2fa1"],
            ),
            (
                BOOT_ID_TEXT,
                4097,
                "579e8ea60241085d26b1f570e4f15b1d",
                "ec9a7df5814fbb3a",
                ["c13b98d32310f82c", "0cc337a9187f5737", "f3be75ad36fe3712"],
            ),
            (
                BOOT_ID_TEXT,
                0xdead_beef_cafe_f00d,
                "9d6596ab69a63f8e0fba926753f3480f",
                "0a0d21f4ac77fc48",
                ["6032e9b53def87b7", "89e82efeb4cb397f", "bfde670c4577130e"],
            ),
            (
                "00000000-0000-0000-0000-000000000000",
                0,
                "10e45c7ce2292320743df94ee4c78a2a",
                "00012273b9065b5b",
                ["6531f36c6a688231", "17ece989bec18a8b", "9745d6c1aed0cacc"],
            ),
        ];
        for (boot_id, cookie, trace_id, root_span_id, state_span_ids) in vectors {
            let boot_id = BootId::parse(boot_id).expect("boot id");
            let ids = ConnectionIds::new(&boot_id, cookie);
            assert_eq!(ids.trace_id, hex::<16>(trace_id), "cookie {cookie}");
            assert_eq!(ids.root_span_id, hex::<8>(root_span_id), "cookie {cookie}");
            for (n, span_id) in (0..).zip(state_span_ids) {
                assert_eq!(
                    ids.state_span_id(n),
                    hex::<8>(span_id),
                    "cookie {cookie} n {n}"
                );
            }
            assert_eq!(
                ids.trace_id_u128(),
                u128::from_str_radix(trace_id, 16).unwrap()
            );
            assert_eq!(
                ids.root_span_id_u64(),
                u64::from_str_radix(root_span_id, 16).unwrap()
            );
            assert_eq!(ids.boot_id(), boot_id);
            assert_eq!(ids.cookie(), cookie);
        }
    }

    #[test]
    fn deterministic_and_distinct() {
        let ids = ConnectionIds::new(&BOOT_ID, 42);
        assert_eq!(ids, ConnectionIds::new(&BOOT_ID, 42));
        assert_ne!(ids.trace_id, ConnectionIds::new(&BOOT_ID, 43).trace_id);
        let mut other_boot = BOOT_ID;
        other_boot.0[0] ^= 1;
        assert_ne!(ids.trace_id, ConnectionIds::new(&other_boot, 42).trace_id);
        // Every id of one session differs from the others.
        let mut span_ids = [ids.root_span_id; 9];
        for (n, span_id) in (0..).zip(&mut span_ids[1..]) {
            *span_id = ids.state_span_id(n);
        }
        for (i, a) in span_ids.iter().enumerate() {
            for b in &span_ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Many cookies, no trace id twice (a collision would be a derivation bug).
        let mut trace_ids: [u128; 1000] = core::array::from_fn(|cookie| {
            ConnectionIds::new(&BOOT_ID, cookie as u64).trace_id_u128()
        });
        trace_ids.sort_unstable();
        assert!(trace_ids.windows(2).all(|pair| pair[0] != pair[1]));
    }

    #[test]
    fn zero_ids_become_one() {
        assert_eq!(nonzero_u128(0), 1);
        assert_eq!(nonzero_u128(7), 7);
        assert_eq!(nonzero_u128(u128::MAX), u128::MAX);
        assert_eq!(nonzero_u64(0), 1);
        assert_eq!(nonzero_u64(7), 7);
        assert_eq!(nonzero_u64(u64::MAX), u64::MAX);
    }

    #[cfg(feature = "std")]
    mod user {
        extern crate std;

        use std::net::{TcpListener, TcpStream};

        use super::super::*;

        fn loopback_pair() -> (TcpListener, TcpStream) {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let stream = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            (listener, stream)
        }

        #[test]
        fn reads_this_hosts_boot_id() {
            let text = std::fs::read_to_string(BootId::PATH).expect("boot_id");
            let boot_id = BootId::read().expect("read");
            assert_eq!(
                std::format!("{boot_id}"),
                text.trim_ascii().to_ascii_lowercase()
            );
        }

        #[test]
        fn socket_cookies_are_stable_and_unique() {
            let (listener, a) = loopback_pair();
            let (accepted, _) = listener.accept().expect("accept");
            let b = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let cookie = socket_cookie(&a).expect("cookie");
            assert_ne!(cookie, 0);
            assert_eq!(socket_cookie(&a).expect("cookie again"), cookie);
            let others = [&accepted, &b].map(|s| socket_cookie(s).expect("cookie"));
            assert!(others.iter().all(|&other| other != 0 && other != cookie));
            assert_ne!(others[0], others[1]);
            assert_ne!(socket_cookie(&listener).expect("listener cookie"), cookie);
        }

        #[test]
        fn cookie_of_a_non_socket_is_an_error() {
            let file = std::fs::File::open(BootId::PATH).expect("open");
            let error = socket_cookie(&file).expect_err("not a socket");
            assert_eq!(error.raw_os_error(), Some(libc::ENOTSOCK));
        }

        #[test]
        fn of_socket_combines_boot_id_and_cookie() {
            let (_listener, stream) = loopback_pair();
            let ids = ConnectionIds::of_socket(&stream).expect("ids");
            let expected = ConnectionIds::new(
                &BootId::read().expect("boot id"),
                socket_cookie(&stream).expect("cookie"),
            );
            assert_eq!(ids, expected);
        }

        #[cfg(feature = "opentelemetry")]
        #[test]
        fn span_context_is_remote_and_sampled() {
            use opentelemetry::trace::{SpanId, TraceId};

            let ids = ConnectionIds::new(&super::BOOT_ID, 1);
            let context = ids.span_context();
            assert!(context.is_valid());
            assert!(context.is_remote());
            assert!(context.is_sampled());
            assert_eq!(
                context.trace_id(),
                TraceId::from_hex("acbc535df073cc6a6930e9d352ba1bb8").unwrap()
            );
            assert_eq!(
                context.span_id(),
                SpanId::from_hex("54b4d1f6593eb594").unwrap()
            );

            let (_listener, stream) = loopback_pair();
            let context = connection_span_context(&stream).expect("span context");
            let ids = ConnectionIds::of_socket(&stream).expect("ids");
            assert_eq!(context, ids.span_context());
        }
    }
}
