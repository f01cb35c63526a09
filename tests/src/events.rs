//! Reading the agent's output back: rows of every text layout, `--json` lines, and grouping of
//! events into the lives of individual sockets.

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::Value;

/// One state change as the agent printed it, whatever the layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Kernel address of the socket, lowercase hex without `0x`.
    pub skaddr: String,
    /// C-PID: the process on the CPU when the state changed.
    pub pid: u32,
    /// C-COMM: that process's name (truncated as the layout truncates it).
    pub comm: String,
    /// Address family (4 or 6) where the layout shows it.
    pub ip: Option<u8>,
    /// Local address.
    pub laddr: IpAddr,
    /// Local port.
    pub lport: u16,
    /// Remote address.
    pub raddr: IpAddr,
    /// Remote port.
    pub rport: u16,
    /// State before the change, e.g. `SYN_SENT`.
    pub oldstate: String,
    /// State after the change.
    pub newstate: String,
    /// Milliseconds spent in `oldstate`.
    pub ms: f64,
}

impl Event {
    /// Whether `port` is this event's local or remote port.
    pub fn has_port(&self, port: u16) -> bool {
        self.lport == port || self.rport == port
    }

    /// The transition as `(oldstate, newstate)`.
    pub fn transition(&self) -> (&str, &str) {
        (&self.oldstate, &self.newstate)
    }
}

/// Which text layout the agent was asked for (`-T`, `-t`, `-w`, `-s`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    /// `-T`: a leading HH:MM:SS column.
    pub time: bool,
    /// `-t`: a leading seconds-since-first-event column (after TIME if both).
    pub timestamp: bool,
    /// `-w`: the IP column and wide addresses.
    pub wide: bool,
    /// `-s`: comma-separated values (always with the IP column).
    pub csv: bool,
}

/// One parsed row of text output.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The TIME column (`-T`), as printed.
    pub time: Option<String>,
    /// The TIME(s) column (`-t`).
    pub timestamp: Option<f64>,
    /// The rest of the row.
    pub event: Event,
}

/// One `--json` line.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonEvent {
    /// Kernel CLOCK_MONOTONIC time of the change, ns.
    pub ts_ns: u64,
    /// Wall-clock time of the change, RFC 3339.
    pub time: String,
    /// Nanoseconds spent in the old state.
    pub span_ns: u64,
    /// The socket's cookie.
    pub cookie: u64,
    /// The owner's pid, `None` when the agent does not know it.
    pub owner_pid: Option<u32>,
    /// The owner's command name, `None` when unknown.
    pub owner_comm: Option<String>,
    /// The socket's uid.
    pub uid: u32,
    /// Inode number of the socket's network namespace.
    pub netns: u64,
    /// Id of the socket's cgroup.
    pub cgroup_id: u64,
    /// At CLOSE: why the connection failed (`error`), `None` when it did not.
    pub error: Option<String>,
    /// At CLOSE: what the socket reported as it closed (`close`), as JSON; `None` elsewhere.
    pub close: Option<Value>,
    /// The common fields (`ip` always set).
    pub event: Event,
}

/// Anything that carries an [`Event`].
pub trait HasEvent {
    /// The event itself.
    fn event(&self) -> &Event;
}

impl HasEvent for Event {
    fn event(&self) -> &Event {
        self
    }
}

impl HasEvent for Row {
    fn event(&self) -> &Event {
        &self.event
    }
}

impl HasEvent for JsonEvent {
    fn event(&self) -> &Event {
        &self.event
    }
}

/// Parses one line of text output in `layout`; `None` for the header or anything that is not a
/// well-formed row.
pub fn parse_row(line: &str, layout: Layout) -> Option<Row> {
    if layout.csv {
        parse_csv_row(line, layout)
    } else {
        parse_text_row(line, layout)
    }
}

/// Parses every row of `lines` (skipping the header and anything else that is not a row).
pub fn parse_rows(lines: &[String], layout: Layout) -> Vec<Row> {
    lines.iter().filter_map(|l| parse_row(l, layout)).collect()
}

fn parse_text_row(line: &str, layout: Layout) -> Option<Row> {
    let mut rest = line;
    let time = if layout.time {
        let (time, tail) = rest.split_once(' ')?;
        rest = tail.trim_start();
        Some(time.to_owned())
    } else {
        None
    };
    let timestamp = if layout.timestamp {
        let (seconds, tail) = rest.split_once(' ')?;
        rest = tail.trim_start();
        Some(seconds.parse().ok()?)
    } else {
        None
    };
    let tokens: Vec<&str> = rest.split_whitespace().collect();
    // Fixed fields after C-COMM: [IP] LADDR LPORT RADDR RPORT OLDSTATE -> NEWSTATE MS.
    let fixed = if layout.wide { 9 } else { 8 };
    if tokens.len() < 2 + fixed {
        return None;
    }
    let (head, tail) = tokens.split_at(tokens.len() - fixed);
    let (ip, tail) = if layout.wide {
        (Some(parse_family(tail[0])?), &tail[1..])
    } else {
        (None, tail)
    };
    if tail[5] != "->" {
        return None;
    }
    let event = Event {
        skaddr: parse_skaddr(head[0])?,
        pid: head[1].parse().ok()?,
        comm: head[2..].join(" "),
        ip,
        laddr: tail[0].parse().ok()?,
        lport: tail[1].parse().ok()?,
        raddr: tail[2].parse().ok()?,
        rport: tail[3].parse().ok()?,
        oldstate: tail[4].to_owned(),
        newstate: tail[6].to_owned(),
        ms: tail[7].parse().ok()?,
    };
    Some(Row {
        time,
        timestamp,
        event,
    })
}

fn parse_csv_row(line: &str, layout: Layout) -> Option<Row> {
    let mut fields: Vec<&str> = line.split(',').collect();
    let prefix = usize::from(layout.time) + usize::from(layout.timestamp);
    if fields.len() != prefix + 11 {
        return None;
    }
    let time = layout.time.then(|| fields.remove(0).to_owned());
    let timestamp = if layout.timestamp {
        Some(fields.remove(0).parse().ok()?)
    } else {
        None
    };
    let event = Event {
        skaddr: parse_skaddr(fields[0])?,
        pid: fields[1].parse().ok()?,
        comm: fields[2].to_owned(),
        ip: Some(parse_family(fields[3])?),
        laddr: fields[4].parse().ok()?,
        lport: fields[5].parse().ok()?,
        raddr: fields[6].parse().ok()?,
        rport: fields[7].parse().ok()?,
        oldstate: fields[8].to_owned(),
        newstate: fields[9].to_owned(),
        ms: fields[10].parse().ok()?,
    };
    Some(Row {
        time,
        timestamp,
        event,
    })
}

fn parse_skaddr(text: &str) -> Option<String> {
    (!text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then(|| text.to_owned())
}

fn parse_family(text: &str) -> Option<u8> {
    match text {
        "4" => Some(4),
        "6" => Some(6),
        _ => None,
    }
}

/// Parses one `--json` line, checking that every field is present with its type.
pub fn parse_json(line: &str) -> Result<JsonEvent, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| format!("not a JSON object: {line}"))?;
    let field = |name: &str| {
        object
            .get(name)
            .ok_or_else(|| format!("no field {name:?} in {line}"))
    };
    let uint = |name: &str| {
        field(name)?
            .as_u64()
            .ok_or_else(|| format!("{name:?} is not an unsigned integer in {line}"))
    };
    let string = |name: &str| {
        field(name)?
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{name:?} is not a string in {line}"))
    };
    let port = |name: &str| {
        u16::try_from(uint(name)?).map_err(|_| format!("{name:?} is not a port in {line}"))
    };
    let addr = |name: &str| {
        string(name)?
            .parse::<IpAddr>()
            .map_err(|e| format!("{name:?}: {e} in {line}"))
    };
    let skaddr = string("skaddr")?;
    let event = Event {
        skaddr: parse_skaddr(&skaddr)
            .ok_or_else(|| format!("skaddr {skaddr:?} is not lowercase hex in {line}"))?,
        pid: u32::try_from(uint("pid")?).map_err(|_| format!("pid out of range in {line}"))?,
        comm: string("comm")?,
        ip: Some(match uint("ip")? {
            4 => 4,
            6 => 6,
            other => return Err(format!("ip {other} is neither 4 nor 6 in {line}")),
        }),
        laddr: addr("laddr")?,
        lport: port("lport")?,
        raddr: addr("raddr")?,
        rport: port("rport")?,
        oldstate: string("oldstate")?,
        newstate: string("newstate")?,
        ms: field("ms")?
            .as_f64()
            .ok_or_else(|| format!("\"ms\" is not a number in {line}"))?,
    };
    let optional = |name: &str| -> Result<Option<&Value>, String> {
        let value = field(name)?;
        Ok((!value.is_null()).then_some(value))
    };
    let owner_pid = optional("owner_pid")?
        .map(|value| {
            value
                .as_u64()
                .and_then(|pid| u32::try_from(pid).ok())
                .ok_or_else(|| format!("\"owner_pid\" is not a pid in {line}"))
        })
        .transpose()?;
    let owner_comm = optional("owner_comm")?
        .map(|value| {
            value
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("\"owner_comm\" is not a string in {line}"))
        })
        .transpose()?;
    let error = optional("error")?
        .map(|value| {
            value
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("\"error\" is not a string in {line}"))
        })
        .transpose()?;
    let close = optional("close")?.cloned();
    Ok(JsonEvent {
        error,
        close,
        ts_ns: uint("ts_ns")?,
        time: string("time")?,
        span_ns: uint("span_ns")?,
        cookie: uint("cookie")?,
        owner_pid,
        owner_comm,
        uid: u32::try_from(uint("uid")?).map_err(|_| format!("uid out of range in {line}"))?,
        netns: uint("netns")?,
        cgroup_id: uint("cgroup_id")?,
        event,
    })
}

/// Parses every line of `--json` output, panicking on the first bad one.
pub fn parse_json_lines(lines: &[String]) -> Vec<JsonEvent> {
    lines
        .iter()
        .map(|line| parse_json(line).unwrap_or_else(|e| panic!("bad --json line: {e}")))
        .collect()
}

/// Splits `items` into socket lives: events of one SKADDR, in output order, up to and including
/// the one whose NEWSTATE is CLOSE (a later event at the same address starts a new life). Lives
/// are ordered by their first event.
pub fn sessions<T: HasEvent + Clone>(items: &[T]) -> Vec<Vec<T>> {
    let mut lives: Vec<Vec<T>> = Vec::new();
    let mut open: HashMap<String, usize> = HashMap::new();
    for item in items {
        let event = item.event();
        let index = *open.entry(event.skaddr.clone()).or_insert_with(|| {
            lives.push(Vec::new());
            lives.len() - 1
        });
        lives[index].push(item.clone());
        if event.newstate == "CLOSE" {
            open.remove(&event.skaddr);
        }
    }
    lives
}

/// The items that touch `port`, as local or remote port.
pub fn on_port<T: HasEvent + Clone>(items: &[T], port: u16) -> Vec<T> {
    items
        .iter()
        .filter(|item| item.event().has_port(port))
        .cloned()
        .collect()
}

/// The socket lives among `items` that touch `port` (as local or remote port), each ended by a
/// transition to CLOSE; `None` unless there are at least `count` of them.
pub fn closed_sessions_on_port<T: HasEvent + Clone>(
    items: &[T],
    port: u16,
    count: usize,
) -> Option<Vec<Vec<T>>> {
    let closed: Vec<Vec<T>> = sessions(&on_port(items, port))
        .into_iter()
        .filter(|life| life.last().is_some_and(|e| e.event().newstate == "CLOSE"))
        .collect();
    (closed.len() >= count).then_some(closed)
}

/// The `(oldstate, newstate)` pairs of one socket life.
pub fn transitions<T: HasEvent>(life: &[T]) -> Vec<(String, String)> {
    life.iter()
        .map(|item| {
            let event = item.event();
            (event.oldstate.clone(), event.newstate.clone())
        })
        .collect()
}

/// The output format the agent was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One of the text layouts (header, then rows).
    Text(Layout),
    /// `--json`.
    Json,
}

impl Format {
    /// The events among `lines`, skipping anything that does not parse (the header; and, while
    /// a test is still waiting, nothing else should be there — tests parse strictly at the end).
    pub fn events(self, lines: &[String]) -> Vec<Event> {
        match self {
            Format::Text(layout) => parse_rows(lines, layout)
                .into_iter()
                .map(|row| row.event)
                .collect(),
            Format::Json => lines
                .iter()
                .filter_map(|line| parse_json(line).ok())
                .map(|json| json.event)
                .collect(),
        }
    }
}

/// Checks that `lives` are exactly the socket lives `expected` names, one each, in any order,
/// and returns them in the order of `expected`. Panics with every life printed otherwise.
pub fn expect_lives<T: HasEvent + Clone>(
    lives: &[Vec<T>],
    expected: &[crate::traffic::Transitions],
) -> Vec<Vec<T>> {
    let mut left: Vec<&Vec<T>> = lives.iter().collect();
    let found = expected
        .iter()
        .map(|want| {
            let position = left.iter().position(|life| {
                transitions(life)
                    .iter()
                    .map(|(old, new)| (old.as_str(), new.as_str()))
                    .eq(want.iter().copied())
            });
            match position {
                Some(index) => left.remove(index).clone(),
                None => panic!(
                    "no socket went through {want:?}; the lives seen were:\n{}",
                    describe(lives)
                ),
            }
        })
        .collect();
    assert!(
        left.is_empty(),
        "unexpected socket lives besides {expected:?}; all lives seen:\n{}",
        describe(lives)
    );
    found
}

/// One line per event, a blank line between lives: for failure messages.
pub fn describe<T: HasEvent>(lives: &[Vec<T>]) -> String {
    lives
        .iter()
        .map(|life| {
            life.iter()
                .map(|item| {
                    let e = item.event();
                    format!(
                        "{} {} {} {}:{} -> {}:{} {} -> {} {:.3}",
                        e.skaddr,
                        e.pid,
                        e.comm,
                        e.laddr,
                        e.lport,
                        e.raddr,
                        e.rport,
                        e.oldstate,
                        e.newstate,
                        e.ms
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}
