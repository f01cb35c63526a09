//! `-Y`: each state change also logged to the systemd journal, with bcc's structured fields.

use std::{io, net::IpAddr, path::Path};

use agent_common::decode::StateChange;
use libsystemd::logging::{self, Priority};

use super::Sink;

/// The journal's native-protocol socket.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// The journal is not there to log to.
#[derive(Debug, thiserror::Error)]
#[error("-Y needs the systemd journal, but {SOCKET} does not exist (is systemd-journald running?)")]
pub struct JournalUnavailable;

/// Sends state changes to the journal. An entry the journal does not take is counted, the first
/// failure said on standard error, and tracing goes on.
pub struct JournalSink {
    /// Whether to send `OBJECT_COMM`; as root, journald fills it in from `OBJECT_PID` itself.
    send_comm: bool,
    /// Entries that could not be sent.
    failures: u64,
}

impl JournalSink {
    /// A sink for the local journal; fails when journald's socket is absent.
    pub fn connect() -> Result<Self, JournalUnavailable> {
        if !Path::new(SOCKET).exists() {
            return Err(JournalUnavailable);
        }
        Ok(Self {
            send_comm: !nix::unistd::geteuid().is_root(),
            failures: 0,
        })
    }
}

impl Sink for JournalSink {
    fn write(&mut self, change: &StateChange) -> io::Result<()> {
        let fields = fields(change, self.send_comm);
        let message = message(change);
        if let Err(err) = logging::journal_send(Priority::Notice, &message, fields.into_iter()) {
            if self.failures == 0 {
                eprintln!("tcpstates: cannot log to the journal: {err}");
            }
            self.failures += 1;
        }
        Ok(())
    }

    fn report(&self) -> Option<String> {
        (self.failures > 0).then(|| format!("{} journal entries could not be sent", self.failures))
    }
}

/// `curl 127.0.0.1 0 → 127.0.0.1 80 CLOSE → SYN_SENT`, as bcc words it.
fn message(change: &StateChange) -> String {
    format!(
        "{} {} {} → {} {} {} → {}",
        change.comm.to_str_lossy(),
        change.local_addr,
        change.local_port,
        change.remote_addr,
        change.remote_port,
        change.oldstate,
        change.newstate
    )
}

fn fields(change: &StateChange, send_comm: bool) -> Vec<(&'static str, String)> {
    let (source, destination) = match change.local_addr {
        IpAddr::V4(_) => (
            "OBJECT_IPV4_SOURCE_ADDRESS",
            "OBJECT_IPV4_DESTINATION_ADDRESS",
        ),
        IpAddr::V6(_) => (
            "OBJECT_IPV6_SOURCE_ADDRESS",
            "OBJECT_IPV6_DESTINATION_ADDRESS",
        ),
    };
    let mut fields = vec![
        ("SYSLOG_IDENTIFIER", "tcpstates".to_owned()),
        ("OBJECT_PID", change.pid.to_string()),
        (source, change.local_addr.to_string()),
        ("OBJECT_TCP_SOURCE_PORT", change.local_port.to_string()),
        (destination, change.remote_addr.to_string()),
        (
            "OBJECT_TCP_DESTINATION_PORT",
            change.remote_port.to_string(),
        ),
        ("OBJECT_TCP_OLD_STATE", change.oldstate.to_string()),
        ("OBJECT_TCP_NEW_STATE", change.newstate.to_string()),
        ("OBJECT_TCP_SPAN_TIME", change.span_us().to_string()),
        ("TCPSTATES_SKADDR", format!("{:x}", change.skaddr)),
        ("TCPSTATES_COOKIE", change.cookie.to_string()),
        ("TCPSTATES_UID", change.uid.to_string()),
        ("TCPSTATES_NETNS", change.netns.to_string()),
        ("TCPSTATES_CGROUP_ID", change.cgroup_id.to_string()),
    ];
    if let Some(owner) = &change.owner {
        fields.push(("TCPSTATES_OWNER_PID", owner.pid.to_string()));
        fields.push((
            "TCPSTATES_OWNER_COMM",
            owner.comm.to_str_lossy().into_owned(),
        ));
    }
    if let Some(error) = super::error_type(change) {
        fields.push(("TCPSTATES_ERROR", error.into_owned()));
    }
    if send_comm {
        fields.push(("OBJECT_COMM", change.comm.to_str_lossy().into_owned()));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::fixtures;

    #[test]
    fn fields_follow_bcc() {
        let change = fixtures::example()[2];
        let fields = fields(&change, true);
        let get = |name: &str| {
            fields
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.as_str())
        };
        assert_eq!(get("SYSLOG_IDENTIFIER"), Some("tcpstates"));
        assert_eq!(get("OBJECT_PID"), Some("22384"));
        assert_eq!(get("OBJECT_COMM"), Some("curl"));
        assert_eq!(get("OBJECT_IPV4_SOURCE_ADDRESS"), Some("100.66.100.185"));
        assert_eq!(get("OBJECT_TCP_SOURCE_PORT"), Some("63446"));
        assert_eq!(get("OBJECT_IPV4_DESTINATION_ADDRESS"), Some("52.33.159.26"));
        assert_eq!(get("OBJECT_TCP_DESTINATION_PORT"), Some("80"));
        assert_eq!(get("OBJECT_TCP_OLD_STATE"), Some("ESTABLISHED"));
        assert_eq!(get("OBJECT_TCP_NEW_STATE"), Some("FIN_WAIT1"));
        assert_eq!(get("OBJECT_TCP_SPAN_TIME"), Some("176042"));
        assert_eq!(get("TCPSTATES_SKADDR"), Some("ffff9fd7e8192000"));
        assert_eq!(get("TCPSTATES_OWNER_PID"), Some("22384"));
        assert_eq!(get("TCPSTATES_OWNER_COMM"), Some("curl"));
        assert_eq!(get("TCPSTATES_COOKIE"), Some("4122"));
        assert_eq!(get("TCPSTATES_CGROUP_ID"), Some("7859"));
        assert_eq!(
            message(&change),
            "curl 100.66.100.185 63446 → 52.33.159.26 80 ESTABLISHED → FIN_WAIT1"
        );
        assert_eq!(
            super::fields(&change, false)
                .iter()
                .filter(|(k, _)| *k == "OBJECT_COMM")
                .count(),
            0
        );
        assert_eq!(get("TCPSTATES_ERROR"), None, "no error on this line");
    }

    #[test]
    fn a_failed_connects_close_says_why() {
        let refused = StateChange {
            oldstate: agent_common::decode::TcpState(agent_common::state::SYN_SENT),
            newstate: agent_common::decode::TcpState(agent_common::state::CLOSE),
            close: Some(agent_common::decode::Close {
                error: Some(libc::ECONNREFUSED.unsigned_abs()),
                ..agent_common::decode::Close::default()
            }),
            ..fixtures::example()[0]
        };
        let fields = fields(&refused, false);
        assert!(
            fields
                .iter()
                .any(|(key, value)| *key == "TCPSTATES_ERROR" && value == "connection_refused"),
            "{fields:?}"
        );
    }
}
