//! The TCP sockets that already exist when the agent starts, each with a process that holds it,
//! so sessions and metrics can start from a known state rather than from the first transition
//! the tracepoint programs see.
//!
//! The kernel program `existing_tcp_sockets` (an `iter/task_file` iterator, in
//! `agent-ebpf/src/iter.rs`) visits every open file of every task and writes one
//! [`RawStateChange`] for each IPv4 or IPv6 TCP socket among them, from its current state to
//! itself; this module runs it, decodes its output and keeps one record per socket.

use std::{collections::BTreeMap, fs::File, io, io::Read as _};

use agent_common::{
    decode::{StateChange, decode},
    event::RawStateChange,
};
use aya::{
    Btf, Ebpf,
    programs::{Iter, ProgramError, links::LinkError},
};

use crate::probe;

/// Name of the iterator program in the object.
const PROGRAM: &str = "existing_tcp_sockets";

/// The kernel iterator it runs on: each open file of each task (`bpf_iter_task_file`).
const ITERATOR: &str = "task_file";

/// Why the existing sockets could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ExistingSocketsError {
    /// The kernel's BTF, which the iterator program is loaded against, could not be read.
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[source] aya::BtfError),
    /// The kernel's verifier refused the program; `reason` is the log's verdict.
    #[error("the kernel's verifier refused BPF program {PROGRAM}: {reason}")]
    Refused {
        /// The last line of the verifier's log that says what is wrong.
        reason: String,
    },
    /// The program is missing from the object, or could not be loaded or attached.
    #[error("BPF program {PROGRAM}: {0}")]
    Program(#[source] ProgramError),
    /// The iterator could not be opened.
    #[error("opening the iterator of BPF program {PROGRAM}: {0}")]
    Open(#[source] LinkError),
    /// Reading the iterator failed.
    #[error("reading the iterator of BPF program {PROGRAM}: {0}")]
    Read(#[source] io::Error),
    /// The program's output is not a whole number of records.
    #[error(
        "BPF program {PROGRAM} wrote {len} bytes, not whole records of {} bytes",
        size_of::<RawStateChange>()
    )]
    Truncated {
        /// Bytes read.
        len: usize,
    },
}

/// The IPv4 and IPv6 TCP sockets that processes hold a file descriptor of, one record each,
/// ordered by socket address (`skaddr`). A record is a transition from the socket's current
/// state to itself (`oldstate == newstate`; LISTEN, ESTABLISHED, CLOSE_WAIT, …, and CLOSE for a
/// socket not connected yet, or whose connection failed or was reset), timed now (`ts_ns`), with
/// its addresses, network namespace, cgroup and uid read as the tracepoint programs read them;
/// its local port is the one it holds (0 for a socket in CLOSE that holds none). Its owner (and
/// on-CPU process, `pid` and `comm`) is a process that holds it: of several, the one with the
/// lowest process id; for an accepted socket that is the process that accepted it, usually its
/// listener's owner.
///
/// `cookie` is 0 for a socket nothing has asked the cookie of yet (the program cannot make one,
/// see `agent-ebpf/src/iter.rs`); the tracepoint programs ask for it at the socket's next
/// transition, whose record has the same `skaddr`, which identifies the socket until then.
///
/// It cannot see the sockets no process holds a descriptor of: sockets still closing after
/// `close()` (FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK), connections the kernel completed but no
/// one has `accept()`ed yet, TIME_WAIT and connection requests (SYN_RECV), which are not full
/// sockets, and sockets only the kernel holds; nor sockets of processes outside the pid
/// namespace of the caller (it sees its namespace and those nested in it).
///
/// Call it once the tracepoint programs are attached: every socket then comes out here, or has
/// its next transition traced, or both (the caller keeps the later).
///
/// The program is loaded against `btf` on the first call; it needs Linux 5.11
/// (`bpf_sock_from_file`; task file iterators are 5.8), the tracepoint programs 5.12.
pub fn existing_sockets(
    ebpf: &mut Ebpf,
    btf: &Btf,
) -> Result<Vec<StateChange>, ExistingSocketsError> {
    let output = run_iterator(ebpf, btf)?;
    let records = records(&output)?;
    Ok(one_per_socket(
        records.iter().filter_map(|raw| decode(raw).ok()),
    ))
}

/// Runs the iterator program (loading it first if it is not yet) and returns all it wrote.
fn run_iterator(ebpf: &mut Ebpf, btf: &Btf) -> Result<Vec<u8>, ExistingSocketsError> {
    let program: &mut Iter = ebpf
        .program_mut(PROGRAM)
        .ok_or(ProgramError::NotLoaded)
        .and_then(TryInto::try_into)
        .map_err(ExistingSocketsError::Program)?;
    if program.fd().is_err() {
        program.load(ITERATOR, btf).map_err(|error| match error {
            ProgramError::LoadError { verifier_log, .. } => ExistingSocketsError::Refused {
                reason: probe::verdict(&verifier_log.to_string()),
            },
            error => ExistingSocketsError::Program(error),
        })?;
    }
    let link = program
        .attach()
        .and_then(|id| program.take_link(id))
        .map_err(ExistingSocketsError::Program)?;
    let mut iterator: File = link.into_file().map_err(ExistingSocketsError::Open)?;
    let mut output = Vec::new();
    iterator
        .read_to_end(&mut output)
        .map_err(ExistingSocketsError::Read)?;
    Ok(output)
}

/// The records of the program's output, which holds them back to back.
fn records(output: &[u8]) -> Result<Vec<RawStateChange>, ExistingSocketsError> {
    let size = size_of::<RawStateChange>();
    if !output.len().is_multiple_of(size) {
        return Err(ExistingSocketsError::Truncated { len: output.len() });
    }
    Ok(output
        .chunks_exact(size)
        // SAFETY: `RawStateChange` is plain old data (any bytes are a valid value) and each
        // chunk is exactly its size; the read copes with any alignment.
        .map(|chunk| unsafe { chunk.as_ptr().cast::<RawStateChange>().read_unaligned() })
        .collect())
}

/// One record per socket (by its address, which no two live sockets share): of a socket several
/// descriptors or processes hold, the record of the lowest process id, the first of equals, with
/// the cookie one of its records has (a socket's cookie may be made while the program runs);
/// ordered by address.
fn one_per_socket(changes: impl Iterator<Item = StateChange>) -> Vec<StateChange> {
    let mut by_address = BTreeMap::new();
    for change in changes {
        by_address
            .entry(change.skaddr)
            .and_modify(|kept: &mut StateChange| {
                let cookie = kept.cookie.max(change.cookie);
                if change.pid < kept.pid {
                    *kept = change;
                }
                kept.cookie = cookie;
            })
            .or_insert(change);
    }
    by_address.into_values().collect()
}

#[cfg(test)]
mod tests {
    use agent_common::{
        event::FLAG_OWNER_KNOWN,
        state::{AF_INET, ESTABLISHED},
    };

    use super::*;

    fn raw(skaddr: u64, cookie: u64, pid: u32) -> RawStateChange {
        RawStateChange {
            skaddr,
            cookie,
            pid,
            owner_pid: pid,
            oldstate: ESTABLISHED,
            newstate: ESTABLISHED,
            family: AF_INET,
            flags: FLAG_OWNER_KNOWN,
            ..RawStateChange::default()
        }
    }

    fn bytes(records: &[RawStateChange]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|record| {
                // SAFETY: `RawStateChange` is plain old data without padding.
                unsafe {
                    std::slice::from_raw_parts(
                        std::ptr::from_ref(record).cast::<u8>(),
                        size_of::<RawStateChange>(),
                    )
                }
                .to_vec()
            })
            .collect()
    }

    /// `(skaddr, cookie, pid)` of each socket [`one_per_socket`] keeps of `records`.
    fn kept(records: &[RawStateChange]) -> Vec<(u64, u64, u32)> {
        let changes = records.iter().map(|raw| decode(raw).expect("AF_INET"));
        one_per_socket(changes)
            .iter()
            .map(|change| (change.skaddr, change.cookie, change.pid))
            .collect()
    }

    #[test]
    fn records_lie_back_to_back() {
        let written = [raw(0x100, 7, 1), raw(0x200, 8, 2)];
        let mut output = vec![0xaa];
        output.extend(bytes(&written));
        // Unaligned on purpose: the reader must not assume the buffer's alignment.
        assert_eq!(records(&output[1..]).expect("two records"), written);
        assert!(records(&[]).expect("nothing").is_empty());
    }

    #[test]
    fn a_partial_record_is_an_error() {
        let output = bytes(&[raw(0x100, 7, 1)]);
        let err = records(&output[..output.len() - 1]).expect_err("one byte short");
        assert!(matches!(err, ExistingSocketsError::Truncated { len } if len == output.len() - 1));
    }

    #[test]
    fn a_socket_held_several_times_comes_out_once_with_its_lowest_pid() {
        let records = [
            raw(0x900, 9, 300),
            raw(0x500, 5, 40),
            raw(0x900, 9, 20),
            raw(0x900, 9, 20),
            raw(0x500, 5, 41),
        ];
        assert_eq!(kept(&records), [(0x500, 5, 40), (0x900, 9, 20)]);
    }

    #[test]
    fn sockets_without_a_cookie_are_told_apart_by_address() {
        let records = [raw(0x300, 0, 10), raw(0x100, 0, 10), raw(0x200, 0, 10)];
        assert_eq!(
            kept(&records),
            [(0x100, 0, 10), (0x200, 0, 10), (0x300, 0, 10)]
        );
    }

    #[test]
    fn a_cookie_made_while_the_program_ran_is_kept() {
        let records = [raw(0x100, 0, 10), raw(0x100, 77, 30), raw(0x100, 0, 20)];
        assert_eq!(kept(&records), [(0x100, 77, 10)]);
    }
}
