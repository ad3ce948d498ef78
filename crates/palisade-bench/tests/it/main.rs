//! Privileged integration tests: they create network namespaces and iptables rules
//! inside them, so they need root. Each test's namespaces are owned by a guard inside
//! the library and deleted even when the test panics.

mod datapath;
mod network;
