//! Reading member offsets of kernel structs from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! aya-ebpf has no CO-RE field relocations, so the kernel program reads `struct sock` (and the
//! network namespace and cgroup it points to) at offsets this module finds at run time and hands
//! over as globals. Only what that
//! needs is parsed: the type table, struct and union members, and the qualifiers and typedefs
//! between them.

use std::{fs, io, path::Path};

/// Where the running kernel exposes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

/// BTF kinds (`BTF_KIND_*`) this parser needs to tell apart.
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// The BTF could not be read or is not what this parser understands.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The data is not BTF or is cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// A struct or member is not there.
    #[error("BTF has no {0}")]
    Missing(String),
}

/// One type of the table: its kind, name, size-or-type field and where its trailing data is.
#[derive(Clone, Copy, Debug)]
struct Type {
    kind: u32,
    name_off: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    extra: usize,
}

/// A parsed BTF blob.
pub struct Btf {
    data: Vec<u8>,
    strings: usize,
    strings_len: usize,
    /// Types by id; id 0 (void) is `types[0]`, a placeholder.
    types: Vec<Type>,
}

/// Where a member lies: byte offset from the start of the outer struct, and byte size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Byte offset.
    pub offset: u32,
    /// Byte size of the member's type.
    pub size: u32,
}

impl Btf {
    /// Reads and parses the BTF at `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    /// Parses a BTF blob (native endianness).
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let u32_at = |at: usize| -> Result<u32, BtfError> {
            data.get(at..at + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(BtfError::Malformed("truncated"))
        };
        let magic = data
            .get(0..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(BtfError::Malformed("truncated header"))?;
        if magic != MAGIC {
            return Err(BtfError::Malformed("bad magic (or foreign endianness)"));
        }
        let hdr_len = u32_at(4)? as usize;
        let type_off = hdr_len + u32_at(8)? as usize;
        let type_len = u32_at(12)? as usize;
        let strings = hdr_len + u32_at(16)? as usize;
        let strings_len = u32_at(20)? as usize;
        if data.len() < strings + strings_len || data.len() < type_off + type_len {
            return Err(BtfError::Malformed("sections beyond the data"));
        }
        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            vlen: 0,
            kind_flag: false,
            size_or_type: 0,
            extra: 0,
        }];
        let mut at = type_off;
        while at < type_off + type_len {
            let info = u32_at(at + 4)?;
            let ty = Type {
                kind: (info >> 24) & 0x1f,
                name_off: u32_at(at)?,
                vlen: (info & 0xffff) as usize,
                kind_flag: info >> 31 == 1,
                size_or_type: u32_at(at + 8)?,
                extra: at + 12,
            };
            let trailing = match ty.kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * ty.vlen,
                kind::ENUM | kind::FUNC_PROTO => 8 * ty.vlen,
                _ => 0,
            };
            types.push(ty);
            at = ty.extra + trailing;
        }
        Ok(Self {
            data,
            strings,
            strings_len,
            types,
        })
    }

    fn name(&self, name_off: u32) -> &str {
        let start = self.strings + name_off as usize;
        let end = self.strings + self.strings_len;
        let bytes = self.data.get(start..end).unwrap_or_default();
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..len]).unwrap_or_default()
    }

    fn u32_at(&self, at: usize) -> u32 {
        self.data
            .get(at..at + 4)
            .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The type behind typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Some(ty),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let ty = self.resolve(id)?;
        match ty.kind {
            kind::ARRAY => {
                let element = self.u32_at(ty.extra);
                let count = self.u32_at(ty.extra + 8);
                Some(self.size_of(element)? * count)
            }
            kind::STRUCT | kind::UNION | kind::INT | kind::ENUM | kind::ENUM64 => {
                Some(ty.size_or_type)
            }
            kind::PTR => Some(8),
            _ => None,
        }
    }

    /// Finds `member` of `ty` (a struct or union), looking through anonymous members;
    /// returns its bit offset from the start of `ty`, its type id and, for a bit field, its
    /// width in bits (0 otherwise).
    fn find(&self, ty: &Type, member: &str) -> Option<(u32, u32, u32)> {
        if ty.kind != kind::STRUCT && ty.kind != kind::UNION {
            return None;
        }
        for index in 0..ty.vlen {
            let at = ty.extra + 12 * index;
            let name = self.name(self.u32_at(at));
            let member_type = self.u32_at(at + 4);
            let raw_offset = self.u32_at(at + 8);
            let (bit_offset, bit_width) = if ty.kind_flag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24)
            } else {
                (raw_offset, 0)
            };
            if name == member {
                return Some((bit_offset, member_type, bit_width));
            }
            if name.is_empty()
                && let Some(inner) = self.resolve(member_type)
                && let Some((offset, found, width)) = self.find(inner, member)
            {
                return Some((bit_offset + offset, found, width));
            }
        }
        None
    }

    /// Walks `path` (members separated by `.`) from struct `outer`; returns the bit offset of
    /// its last member, that member's type id and its bit-field width (0 if not a bit field).
    fn walk(&self, outer: &str, path: &str) -> Result<(u32, u32, u32), BtfError> {
        let missing = || BtfError::Missing(format!("{outer}.{path}"));
        let mut ty = self
            .types
            .iter()
            .find(|ty| ty.kind == kind::STRUCT && self.name(ty.name_off) == outer)
            .ok_or_else(|| BtfError::Missing(format!("struct {outer}")))?;
        let (mut bits, mut type_id, mut width) = (0, 0, 0);
        for name in path.split('.') {
            let (offset, id, bit_width) = self.find(ty, name).ok_or_else(missing)?;
            bits += offset;
            type_id = id;
            width = bit_width;
            ty = self.resolve(id).ok_or_else(missing)?;
        }
        Ok((bits, type_id, width))
    }

    /// The byte offset and size of `path` (members separated by `.`) inside struct `outer`,
    /// e.g. `("sock", "__sk_common.skc_family")`. Anonymous members are looked through.
    pub fn member(&self, outer: &str, path: &str) -> Result<Member, BtfError> {
        let (bits, type_id, width) = self.walk(outer, path)?;
        if width != 0 || bits % 8 != 0 {
            return Err(BtfError::Missing(format!("{outer}.{path} (a bit field)")));
        }
        Ok(Member {
            offset: bits / 8,
            size: self
                .size_of(type_id)
                .ok_or_else(|| BtfError::Missing(format!("{outer}.{path}")))?,
        })
    }

    /// The bit offset of bit `index` (least significant first) of the integer or bit field
    /// `path` inside struct `outer`, counted from the struct's first byte (the x86-64 layout).
    pub fn bit(&self, outer: &str, path: &str, index: u32) -> Result<u32, BtfError> {
        let (bits, type_id, width) = self.walk(outer, path)?;
        let width = if width != 0 {
            width
        } else {
            self.size_of(type_id).unwrap_or(0) * 8
        };
        if index < width {
            Ok(bits + index)
        } else {
            Err(BtfError::Missing(format!(
                "{outer}.{path} with a bit {index}"
            )))
        }
    }

    /// The bit offset of the one-bit field `path` inside struct `outer`, counted from the
    /// struct's first byte, least significant bit first (the x86-64 layout), e.g.
    /// `("sock", "__sk_common.skc_reuseport")`.
    pub fn flag_bit(&self, outer: &str, path: &str) -> Result<u32, BtfError> {
        let (bits, _, width) = self.walk(outer, path)?;
        if width == 1 {
            Ok(bits)
        } else {
            Err(BtfError::Missing(format!(
                "{outer}.{path} as a 1-bit field"
            )))
        }
    }
}

/// Offsets of the fields the kernel program reads: the socket's addresses, ports, family,
/// protocol, uid and `SO_REUSEPORT` flag, the path to its network namespace's inode and its
/// cgroup's id, the on-CPU task's process id and command name, what a socket's CLOSE
/// reports: its error and its `tcp_sock` counters; and for the iterator of the sockets processes
/// hold, a socket file's socket, the socket's type and cookie, and the iterator's output.
pub fn field_offsets(btf: &Btf) -> Result<agent_common::offsets::FieldOffsets, BtfError> {
    let field = |outer: &str, path: &str, size: u32| -> Result<u32, BtfError> {
        let member = btf.member(outer, path)?;
        if member.size == size {
            Ok(member.offset)
        } else {
            Err(BtfError::Missing(format!(
                "{outer}.{path} of {size} bytes (it has {})",
                member.size
            )))
        }
    };
    Ok(agent_common::offsets::FieldOffsets {
        family: field("sock", "__sk_common.skc_family", 2)?,
        protocol: field("sock", "sk_protocol", 2)?,
        num: field("sock", "__sk_common.skc_num", 2)?,
        sport: field("tcp_sock", "inet_conn.icsk_inet.inet_sport", 2)?,
        dport: field("sock", "__sk_common.skc_dport", 2)?,
        rcv_saddr: field("sock", "__sk_common.skc_rcv_saddr", 4)?,
        daddr: field("sock", "__sk_common.skc_daddr", 4)?,
        rcv_saddr_v6: field("sock", "__sk_common.skc_v6_rcv_saddr", 16)?,
        daddr_v6: field("sock", "__sk_common.skc_v6_daddr", 16)?,
        uid: field("sock", "sk_uid", 4)?,
        net: field("sock", "__sk_common.skc_net.net", 8)?,
        net_inum: field("net", "ns.inum", 4)?,
        cgroup: field("sock", "sk_cgrp_data.cgroup", 8)?,
        cgroup_kn: field("cgroup", "kn", 8)?,
        cgroup_level: field("cgroup", "level", 4)?,
        cgroup_ancestors: btf.member("cgroup", "ancestors")?.offset,
        kn_id: field("kernfs_node", "id", 8)?,
        task_tgid: field("task_struct", "tgid", 4)?,
        task_comm: field("task_struct", "comm", 16)?,
        reuseport_bit: btf.flag_bit("sock", "__sk_common.skc_reuseport")?,
        state: field("sock", "__sk_common.skc_state", 1)?,
        sk_err: field("sock", "sk_err", 4)?,
        sk_err_soft: field("sock", "sk_err_soft", 4)?,
        bytes_sent: field("tcp_sock", "bytes_sent", 8)?,
        bytes_retrans: field("tcp_sock", "bytes_retrans", 8)?,
        bytes_received: field("tcp_sock", "bytes_received", 8)?,
        // SOCK_DONE is 1 in `enum sock_flags` (after SOCK_DEAD), on every kernel; the flags
        // are in `sock_common` on newer kernels, in `sock` itself on older ones.
        peer_fin_bit: btf
            .bit("sock", "__sk_common.skc_flags", 1)
            .or_else(|_| btf.bit("sock", "sk_flags", 1))?,
        srtt_us: field("tcp_sock", "srtt_us", 4)?,
        min_rtt_us: btf.member("tcp_sock", "rtt_min")?.offset + field("minmax_sample", "v", 4)?,
        total_retrans: field("tcp_sock", "total_retrans", 4)?,
        snt_synack: field("tcp_request_sock", "snt_synack", 8)?,
        sk_type: field("sock", "sk_type", 2)?,
        socket_sk: field("socket", "sk", 8)?,
        iter_seq: field("bpf_iter_meta", "seq", 8)?,
        sk_cookie: field("sock", "__sk_common.skc_cookie", 8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_socket_fields_of_the_running_kernel() {
        let btf = Btf::from_file(VMLINUX).expect("the CI kernel has BTF");
        assert_eq!(
            btf.member("sock", "__sk_common")
                .expect("sock_common")
                .offset,
            0
        );
        assert_eq!(
            btf.member("inet_sock", "sk").expect("inet_sock.sk").offset,
            0
        );
        let family = btf
            .member("sock", "__sk_common.skc_family")
            .expect("family");
        let sock_common = btf.member("sock", "__sk_common").expect("sock_common");
        assert!(
            family.offset < sock_common.size,
            "{family:?} within {sock_common:?}"
        );
        let offsets = field_offsets(&btf).expect("every field");
        assert_ne!(offsets.rcv_saddr_v6, offsets.daddr_v6);
        for (name, offset) in [
            ("num", offsets.num),
            ("dport", offsets.dport),
            ("rcv_saddr", offsets.rcv_saddr),
            ("net", offsets.net),
        ] {
            assert!(offset < sock_common.size, "{name} lies within sock_common");
        }
    }

    #[test]
    fn the_task_file_iterator_context_has_the_slots_the_program_reads() {
        use agent_common::offsets::{TASK_FILE_FILE, TASK_FILE_META, TASK_FILE_TASK};
        let btf = Btf::from_file(VMLINUX).expect("the CI kernel has BTF");
        for (member, slot) in [
            ("meta", TASK_FILE_META),
            ("task", TASK_FILE_TASK),
            ("file", TASK_FILE_FILE),
        ] {
            let found = btf
                .member("bpf_iter__task_file", member)
                .expect("bpf_iter__task_file");
            assert_eq!(
                found,
                Member {
                    offset: 8 * slot as u32,
                    size: 8
                },
                "{member}"
            );
        }
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(matches!(
            Btf::parse(vec![0; 10]),
            Err(BtfError::Malformed(_))
        ));
        let mut header = vec![0u8; 24];
        header[..2].copy_from_slice(&MAGIC.to_ne_bytes());
        header[4..8].copy_from_slice(&24u32.to_ne_bytes());
        header[12..16].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(Btf::parse(header), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn a_missing_member_is_named() {
        let btf = Btf::from_file(VMLINUX).expect("the CI kernel has BTF");
        let err = btf.member("sock", "no_such_field").expect_err("absent");
        assert!(err.to_string().contains("sock.no_such_field"), "{err}");
    }

    #[test]
    fn bit_fields_are_told_from_whole_members() {
        let btf = Btf::from_file(VMLINUX).expect("the CI kernel has BTF");
        let reuse = btf
            .flag_bit("sock", "__sk_common.skc_reuse")
            .expect_err("skc_reuse is 4 bits wide");
        assert!(reuse.to_string().contains("1-bit"), "{reuse}");
        let reuseport = btf
            .flag_bit("sock", "__sk_common.skc_reuseport")
            .expect("skc_reuseport");
        let ipv6only = btf
            .flag_bit("sock", "__sk_common.skc_ipv6only")
            .expect("skc_ipv6only");
        // `skc_reuse:4; skc_reuseport:1; skc_ipv6only:1;` share one byte, in that order.
        assert_eq!(ipv6only, reuseport + 1);
        assert_eq!(reuseport / 8, ipv6only / 8);
        let err = btf
            .member("sock", "__sk_common.skc_reuseport")
            .expect_err("a bit field has no byte offset");
        assert!(err.to_string().contains("bit field"), "{err}");
    }
}
