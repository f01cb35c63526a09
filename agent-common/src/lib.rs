//! Types shared by the tcpstates kernel program (`agent-ebpf`) and the user-space agent.
//!
//! Everything here is `no_std`, `#[repr(C)]` and fixed-size so both sides of the kernel
//! boundary agree on every byte. The `user` feature adds what only user space needs:
//! `aya::Pod` impls and [`decode`], which turns a raw event into typed values.
#![no_std]
#![deny(missing_docs)]

pub mod correlation;
pub mod counters;
#[cfg(feature = "user")]
pub mod decode;
pub mod event;
pub mod filter;
pub mod sock;
pub mod state;

#[cfg(feature = "std")]
extern crate std;
