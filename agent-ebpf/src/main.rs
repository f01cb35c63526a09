//! Kernel half of tcpstates: two BTF programs on the `sock:inet_sock_set_state` tracepoint.
//!
//! For every TCP state change that passes the filters the main program records how long the
//! socket spent in the state it leaves and who owns it (both kept with the socket, in socket
//! storage), reads where the socket lives (network namespace, cgroup) and its cookie, and submits
//! one [`RawStateChange`](agent_common::event::RawStateChange) to the `EVENTS` ring buffer. The
//! backstop program does the same for the hits the kernel skips for the main one (see
//! [`tracepoint`]). Every transition that passes the filters is counted, and so is every one
//! that could not be delivered, so user space can report each loss. An iterator program
//! ([`iter`]) lists the TCP sockets processes already hold, for user space to start from.
#![no_std]
#![no_main]

mod iter;
mod tracepoint;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
