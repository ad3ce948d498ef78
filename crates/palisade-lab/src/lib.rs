//! # palisade-lab: a one-node cluster on one Linux machine
//!
//! The lab makes Palisade's promises visible on real packets without Kubernetes:
//!
//! - a **node** network namespace plays the node: it holds every pod's host-side veth,
//!   forwards between pods, and is where the datapath attaches and the agent runs;
//! - each **pod** is a network namespace attached with the standard `ptp` CNI plugin
//!   (static IPAM with the manifest's `status.podIPs`, host-local otherwise), invoked
//!   like a container runtime would from inside the node namespace, optionally followed
//!   by chained plugins (`palisade-cni`, which registers the pod with the agent);
//! - each pod runs a small **server** process on its declared ports answering with the
//!   pod's `namespace/name`;
//! - the **prober** tries every pair of pods for real and reports in the same JSON
//!   format as `palisade simulate`, so measured and predicted verdicts diff directly;
//! - **state** on disk records everything created, so `palisade lab up` can return
//!   while the lab keeps running, and `down` removes exactly what was made.
//!
//! The root network namespace is never modified: no veth, route or sysctl there.
//!
//! What this crate is not: it does not load BPF or run the agent; the agent's launcher
//! records the agent's PID and pins in [`state::LabState`] so teardown covers them.
//!
//! Start reading at [`lab::Lab`]; the wiring details are in [`cni`] (why ptp) and
//! [`addressing`]; the verdict rules of measurements are in [`probe`].
#![deny(missing_docs)]

pub mod addressing;
pub mod cni;
pub mod lab;
pub mod netns;
pub mod probe;
pub mod process;
pub mod server;
pub mod state;

pub use lab::{palisade_cni_plugin, Lab, LabConfig, LabError};
