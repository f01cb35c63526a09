//! Types shared by the tcpstates kernel program (`agent-ebpf`) and the user-space agent, and
//! the public API applications use to link their spans to the agent's connection traces.
//!
//! The kernel-boundary types are `no_std`, `#[repr(C)]` and fixed-size so both sides agree on
//! every byte. The `user` feature adds what only the agent needs: `aya::Pod` impls and `decode`,
//! which turns a raw event into typed values. [`correlation`] derives a socket's trace ids from
//! the boot id and the socket cookie (`no_std`; its `std` and `opentelemetry` features read them
//! from a live socket and return a `SpanContext`).
#![no_std]
#![deny(missing_docs)]

pub mod correlation;
pub mod counters;
#[cfg(feature = "user")]
pub mod decode;
pub mod event;
pub mod filter;
pub mod listener;
pub mod offsets;
pub mod state;

#[cfg(feature = "std")]
extern crate std;
