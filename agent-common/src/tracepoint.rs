//! Layout of the classic `sock:inet_sock_set_state` tracepoint record that the kernel
//! program reads.
//!
//! This is the layout of Linux ≥ 5.6 (when `family` was added and `protocol` became a u16);
//! the agent checks it against the kernel's own `format` file before loading the program.

/// Tracepoint category.
pub const CATEGORY: &str = "sock";
/// Tracepoint name.
pub const NAME: &str = "inet_sock_set_state";

/// A field of the tracepoint record: its name in the `format` file, offset and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Name as the `format` file spells it.
    pub name: &'static str,
    /// Byte offset in the record.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// `const void *skaddr`.
pub const SKADDR: Field = Field {
    name: "skaddr",
    offset: 8,
    size: 8,
};
/// `int oldstate`.
pub const OLDSTATE: Field = Field {
    name: "oldstate",
    offset: 16,
    size: 4,
};
/// `int newstate`.
pub const NEWSTATE: Field = Field {
    name: "newstate",
    offset: 20,
    size: 4,
};
/// `__u16 sport`.
pub const SPORT: Field = Field {
    name: "sport",
    offset: 24,
    size: 2,
};
/// `__u16 dport`.
pub const DPORT: Field = Field {
    name: "dport",
    offset: 26,
    size: 2,
};
/// `__u16 family`.
pub const FAMILY: Field = Field {
    name: "family",
    offset: 28,
    size: 2,
};
/// `__u16 protocol`.
pub const PROTOCOL: Field = Field {
    name: "protocol",
    offset: 30,
    size: 2,
};
/// `__u8 saddr[4]`.
pub const SADDR: Field = Field {
    name: "saddr",
    offset: 32,
    size: 4,
};
/// `__u8 daddr[4]`.
pub const DADDR: Field = Field {
    name: "daddr",
    offset: 36,
    size: 4,
};
/// `__u8 saddr_v6[16]`.
pub const SADDR_V6: Field = Field {
    name: "saddr_v6",
    offset: 40,
    size: 16,
};
/// `__u8 daddr_v6[16]`.
pub const DADDR_V6: Field = Field {
    name: "daddr_v6",
    offset: 56,
    size: 16,
};

/// Every field the kernel program reads.
pub const FIELDS: [Field; 11] = [
    SKADDR, OLDSTATE, NEWSTATE, SPORT, DPORT, FAMILY, PROTOCOL, SADDR, DADDR, SADDR_V6, DADDR_V6,
];
