//! Benchmarks of Palisade's control plane against the real upstream API server
//! (`palisade_kube_lab::ControlPlane`), not a mock: they print figures and ratios and
//! are run by hand (`palisade bench fanout`, `palisade bench kube-memory`), never as timed tests.

pub mod aws_model;
pub mod fanout;
pub mod memory;
pub mod proxy;
