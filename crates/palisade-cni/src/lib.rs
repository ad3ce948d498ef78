//! # palisade-cni: the chained CNI plugin
//!
//! Palisade promises that a pod never runs unprotected: its policy is in force in the
//! kernel *before* its containers start. The kubelet (or the lab) creates the pod's
//! network through a CNI chain; this plugin is the link after the main plugin (ptp,
//! bridge, …). On `ADD` it reads the main plugin's `prevResult`, finds the host-side
//! veth (the interface entry without a `sandbox`), and asks the node agent over a unix
//! socket to register the pod. The agent answers only once the pod's programs and maps
//! are attached (`in_force`), and the plugin then passes `prevResult` on unchanged. If
//! the agent does not answer within `timeoutMs`, `failPolicy` decides: `closed`
//! (default) fails the `ADD` so the pod does not start; `open` lets it start anyway.
//! `DEL` unregisters and never fails, whatever its input (the rules are on `del` in
//! [`plugin`]); ADD and CHECK refuse stdin over [`plugin::MAX_STDIN`] and any address in
//! `prevResult` that does not parse.
//!
//! This crate is both the plugin binary (`src/main.rs`, thin) and a library:
//!
//! The requests it sends, their replies and the blocking client are the agent's API
//! crate, `palisade-api` (shared with the agent, the CLI and the lab; no tokio).
//!
//! - [`spec`]: the subset of the CNI 1.0.0 spec we need: network config, results,
//!   the error object, the environment. The lab reuses it to drive ptp/bridge;
//! - [`plugin`]: the plugin logic, a pure function of environment + stdin, so it is
//!   unit-testable without a namespace.
//!
//! - [`chain`]: chaining the plugin into the node's CNI configuration and out again;
//! - [`admin`]: `palisade-cni install|uninstall`, the DaemonSet's install steps.
//!
//! Start reading at [`plugin::run`].
#![deny(missing_docs)]

pub mod admin;
pub mod chain;
pub mod plugin;
pub mod spec;
