//! # palisade-agent: the node agent
//!
//! Keeps the kernel in step with the desired state. It reads a [`source::Source`] (a
//! directory of manifests today), compiles it with the pure core, programs the eBPF
//! datapath through a [`reconcile::Enforcer`], and records per pod which generation of
//! its policy is in force. The CNI plugin, the CLI and the lab talk to it over a unix
//! socket ([`api`]).
//!
//! It is *not* where policy semantics live (that is `palisade-policy`), nor where BPF
//! maps are encoded (that is `palisade-datapath`).
//!
//! Start reading at [`reconcile`], then [`server`].
#![deny(missing_docs)]

pub mod api;
pub mod decision_log;
pub mod decisions;
pub mod enforcer;
pub mod inspect;
pub mod kube_events;
pub mod kube_source;
pub mod listener;
pub mod metrics;
pub mod publish;
pub mod ratelog;
pub mod reachability;
pub mod reconcile;
pub mod registry;
pub mod run;
pub mod server;
pub mod source;
