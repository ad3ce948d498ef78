//! A real Kubernetes control plane for tests and the lab: upstream etcd and
//! kube-apiserver run as child processes of the caller, listening on 127.0.0.1 only,
//! with TLS everywhere, service-account signing keys, `--authorization-mode=Node,RBAC`
//! and admission on. It is not a mock and not a kubelet: no node runs pods here.
//!
//! The binaries are built from the Go module proxy by `scripts/k8s-binaries.sh`
//! (pins in `deploy/k8s-build/go.mod`) and found by [`Binaries::locate`].
//!
//! Start with [`ControlPlane::start`]. It owns a temporary directory (certificates,
//! etcd data, logs) and the processes it started; dropping it (also while a test
//! panics) stops exactly those processes, by PID, and removes the directory.
//! Components authenticate as themselves: [`ControlPlane::service_account_kubeconfig`]
//! mints a ServiceAccount token through the TokenRequest API, and
//! [`ControlPlane::client_cert_kubeconfig`] a client certificate with a chosen
//! user name (CN) and groups (O). The admin kubeconfig (group `system:masters`) is
//! for setting up tests only.
//!
//! [`crds`] installs the network-policy-api CRDs from the Go module cache.
//!
//! For the multi-node lab (`palisade lab up --kubernetes`) the same components run
//! *persistently* ([`persistent::PersistentControlPlane`]: detached, recorded by PID,
//! inside the API server's own network namespace of the [`topology`]), reached from
//! the root namespace through a loopback [`forward`]er.

#![deny(missing_docs)]

mod binaries;
mod components;
mod control_plane;
pub mod crds;
mod detached;
mod error;
pub mod forward;
mod kubectl;
pub mod persistent;
mod pki;
mod process;
pub mod topology;

pub use binaries::{Binaries, BINARIES_ENV};
pub use components::{KUBERNETES_SERVICE_IP, SERVICE_CIDR};
pub use control_plane::{ControlPlane, Kubeconfig};
pub use detached::spawn_detached;
pub use error::Error;
pub use pki::{Ca, KeyAndCert};
pub use process::Supervised;
