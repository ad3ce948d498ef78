//! Privileged integration tests of palisade-datapath (root, bpffs, kernel with TCX).
//! One binary, one module per area.

mod abi;
mod attachment;
mod bench;
mod cluster_differential;
mod common;
mod differential;
mod malformed;
mod netns;
mod prog;
mod services;
mod spoofing;
mod transitions;
