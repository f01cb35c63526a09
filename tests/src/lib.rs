//! Harness for the privileged end-to-end tests of `tcpstates`.
//!
//! The tests in `tests/tests/` run as root against the real kernel and the real agent binary
//! (`$TCPSTATES_BIN`, else `target/debug/tcpstates`): each makes its own network namespace,
//! drives loopback TCP traffic there, and checks what the agent printed. They share the kernel
//! but not ports: every test uses ports no other test uses, so they can run in parallel as well
//! as with `--test-threads=1`.

pub mod agent;
pub mod events;
pub mod journald;
pub mod netns;
pub mod scenario;
pub mod traffic;
