//! The controller against the real upstream API server (palisade-kube-lab), with real
//! agents (BPF datapath, `--source kubernetes`, node-scoped) publishing their nodes'
//! reports, each component with its own service account and exactly the RBAC of
//! docs/architecture.md.

mod failover;
mod in_force;
mod support;
