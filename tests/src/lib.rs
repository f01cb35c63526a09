//! Harness for the privileged end-to-end tests of `tcpstates`.
//!
//! The tests in `tests/tests/` run as root against the real kernel and the real agent binary
//! (`$TCPSTATES_BIN`, else `target/debug/tcpstates`): each makes its own network namespace,
//! drives loopback TCP traffic there, and checks what the agent printed. They share the kernel
//! but not ports: each test file has its own block (connections 21xxx, filters 22xxx, timing
//! 23xxx, json 24xxx, journal 25xxx, layouts 26xxx, signals 27xxx, OTLP export 28xxx, least
//! privilege 32xxx), below
//! the ephemeral range, and each test its own ports in it, so they pass in parallel as well as
//! with `--test-threads=1`.
//! The OTLP receiver of [`otlp`] (rotel) listens on free loopback ports the kernel picks, in the
//! ephemeral range, so it never meets those blocks.

#![deny(missing_docs)]

pub mod agent;
pub mod deploy;
pub mod events;
pub mod journald;
pub mod metrics;
pub mod netns;
pub mod otlp;
pub mod owners;
pub mod scenario;
pub mod traces;
pub mod traffic;
pub mod vm;
