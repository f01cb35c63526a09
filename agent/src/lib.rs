//! tcpstates: trace TCP session state changes with durations.
