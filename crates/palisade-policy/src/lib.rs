//! # palisade-policy: the pure policy core
//!
//! Everything Palisade knows about network policy *semantics* lives here, with no I/O:
//! no files, sockets, async runtime, Kubernetes client or BPF. The agent, the controller,
//! the CLI and every test share this one implementation.
//!
//! The pipeline, in reading order:
//!
//! 1. [`manifest`]: parse YAML/JSON documents into Kubernetes objects and validate them
//!    the way the API server does, into the normalized [`model`]. A bad object yields
//!    an error naming the object and field; every other object still counts.
//! 2. [`verdict`]: the *reference evaluator*: `evaluate(cluster, flow)` answers allow or
//!    deny with the tier, policy and rule that decided. Written for clarity, not speed; it
//!    is the oracle the compiled form and the datapath are tested against.
//! 3. [`compile`]: turn a cluster into datapath-neutral tables: peer identities, an
//!    address → identity prefix map, and per-endpoint rule tables whose lookup cost does
//!    not depend on the number of policies. Incremental: one pod change touches only the
//!    state it affects.
//!
//! 4. [`services`]: Service frontends (ClusterIPs, external and load-balancer IPs,
//!    NodePorts) and their backends, which the datapath translates itself so that
//!    traffic to a Service is judged by the backend it really goes to.
//!
//! Start reading at [`model`], then [`verdict`].
#![deny(missing_docs)]

pub mod calico_selector;
pub mod compile;
pub mod compiled;
pub mod convert;
pub mod manifest;
pub mod model;
pub mod selector;
pub mod services;
pub mod verdict;
