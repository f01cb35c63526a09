//! Library target of the kernel program's crate. It exists so that the agent can list this
//! crate as a build dependency, which makes cargo rebuild the embedded object when it changes;
//! the program itself is the `agent-ebpf` binary.
#![no_std]
