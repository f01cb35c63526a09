//! One traced scenario: start the agent, make traffic, wait for its events, stop the agent.

use crate::agent::{Agent, EVENT_TIMEOUT, Finished};
use crate::events::{Format, closed_sessions_on_port};

/// Starts the agent with `args` (which ask for output in `format`), runs `traffic`, waits until
/// the output shows `lives` socket lives on `port` that have reached CLOSE, stops the agent with
/// SIGINT and checks that it exited with 0. Returns what `traffic` returned and what the agent
/// left behind.
pub fn trace_port<T>(
    args: &[&str],
    format: Format,
    port: u16,
    lives: usize,
    traffic: impl FnOnce() -> T,
) -> (T, Finished) {
    let agent = Agent::start(args);
    let made = traffic();
    agent.await_stdout(
        &format!("{lives} closed socket lives on port {port}"),
        EVENT_TIMEOUT,
        |lines| closed_sessions_on_port(&format.events(lines), port, lives),
    );
    let finished = agent.stop(libc::SIGINT);
    assert_eq!(
        finished.code(),
        0,
        "tcpstates {args:?} after SIGINT; stderr:\n{}",
        finished.stderr.join("\n")
    );
    (made, finished)
}
