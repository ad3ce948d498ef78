//! # palisade-kubelet: the lab kubelet
//!
//! A small kubelet of Palisade's own for the Kubernetes lab (`palisade lab up
//! --kubernetes`): one process per node, in the root network namespace, talking to the
//! API server as the node (`system:node:NAME`, so the Node authorizer and
//! NodeRestriction bound what it may do), doing its network work inside the node's
//! namespace and the pods' namespaces.
//!
//! - [`node`]: registers the Node and keeps it Ready (Lease + status).
//! - [`kubelet`]: watches the pods bound to the node (`spec.nodeName=NAME`), makes and
//!   unmakes them, reports their status, adopts its pods after a restart.
//! - [`sandbox`]: one pod's namespace, CNI chain (ptp + host-local or static IPAM, then
//!   e.g. `palisade-cni`: from `--chain`, or read at every ADD from the node's CNI
//!   configuration directory, `--cni-conf-dir`), sender and server; all undone on
//!   failure.
//! - [`podspec`]: what is read from a Pod, and its annotations
//!   ([`podspec::IPS_ANNOTATION`], [`podspec::SEND_ANNOTATION`]).
//! - [`records`]: the state directory.
//! - [`status`]: the Pod status it writes.
//! - [`config`]: the command line, a contract with the lab's launcher.
#![deny(missing_docs)]

pub mod config;
pub mod kubelet;
pub mod node;
pub mod podspec;
pub mod records;
pub mod sandbox;
pub mod status;

pub use config::{Args, Config};
pub use kubelet::{run, teardown};
