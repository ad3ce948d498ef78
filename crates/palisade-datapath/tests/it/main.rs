//! Privileged integration tests of palisade-datapath (root, bpffs, kernel with TCX).
//! One binary, one module per area.

mod abi;
mod common;
mod differential;
mod netns;
mod prog;
