//! Kernel half of tcpstates: one program on the `sock:inet_sock_set_state` tracepoint.
//!
//! For every TCP state change that passes the family and port filters it records how long the
//! socket spent in the state it leaves (from its own previous transition, kept in an LRU map
//! and deleted at CLOSE) and submits one [`RawStateChange`] to the `EVENTS` ring buffer.
//! Every transition that passes the filters is counted, and so is every one that could not
//! be delivered, so user space can report each loss.
#![no_std]
#![no_main]

mod tracepoint;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
