//! Service frontends and their backends: where traffic to a Service address really goes.
//!
//! Palisade's programs see a pod's packet before kube-proxy rewrites a ClusterIP to one
//! backend, so the datapath translates it itself (docs/semantics.md §10): it looks the
//! destination up among the frontends built here, picks one of the frontend's
//! backends, rewrites the packet to it and judges the packet against that backend.
//! This module is the one definition of "frontend" and "backend" that the datapath,
//! the reference evaluator ([`crate::verdict::evaluate_service`]) and `explain` share.
//!
//! ## Frontends
//!
//! Per Service port (protocol, `port`): every `clusterIPs` address, every `externalIPs`
//! address and every load-balancer ingress IP at `port`; for `NodePort` and
//! `LoadBalancer` Services also every address of every Node at the port's `nodePort`.
//! `ExternalName` Services have none. Two Services claiming one frontend (which the API
//! server prevents for ClusterIPs but not for externalIPs) resolve to the one whose
//! `namespace/name` sorts first; the other is listed in [`ServiceTable::conflicts`].
//!
//! ## Backends (as kube-proxy builds them)
//!
//! From the EndpointSlices labelled with the Service's name in its namespace: a slice
//! port with the Service port's `name` and protocol gives the target port of that
//! slice's endpoints (the EndpointSlice controller resolves a named `targetPort` per
//! pod and groups pods by the number, so one Service port may have several numbers).
//! Only addresses of the frontend's family. Ready endpoints; if a frontend has none,
//! the serving-and-terminating ones (kube-proxy's graceful termination). A manifest set
//! with no EndpointSlice at all (offline use) derives them from the Service's selector
//! instead: pods of the namespace whose labels match, with an address, `targetPort`
//! resolved against each pod's container ports (a pod without the named port is no
//! backend, as the controller leaves it out).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{Cluster, Protocol, Service, ServicePort, ServiceType, TargetPort};

/// The destination a pod addresses: a Service address, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frontend {
    /// The Service address (ClusterIP, external IP, load-balancer IP or node address).
    pub addr: IpAddr,
    /// The Service port (or `nodePort`).
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.protocol),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.protocol),
        }
    }
}

/// Which Service field made an address a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FrontendKind {
    /// `spec.clusterIPs`.
    ClusterIp,
    /// `spec.externalIPs`.
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
    /// A node address at a `nodePort`.
    NodePort,
}

/// Where a frontend's traffic may be sent: a backend address and its target port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    /// The endpoint's address.
    pub addr: IpAddr,
    /// The resolved target port.
    pub port: u16,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// One frontend with everything the datapath needs to translate it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceFrontend {
    /// The frontend.
    pub frontend: Frontend,
    /// Which field it comes from.
    pub kind: FrontendKind,
    /// The Service's `namespace/name`.
    pub service: String,
    /// The Service port's `name`.
    pub port_name: Option<String>,
    /// The backends, sorted and without duplicates. Empty: kube-proxy rejects the
    /// traffic, and so does the datapath.
    pub backends: Vec<Backend>,
    /// The backends are serving-but-terminating endpoints (no ready one is left).
    pub terminating: bool,
    /// The backends come from the Service's selector (no EndpointSlice in the model).
    pub from_selector: bool,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

impl ServiceFrontend {
    /// Whether the datapath rewrites this frontend's packets itself. SCTP's checksum is
    /// a CRC32c over the whole packet that cannot be patched incrementally, so SCTP
    /// frontends are left to kube-proxy and judged by the fail-closed rule instead.
    pub fn translated(&self) -> bool {
        self.frontend.protocol != Protocol::Sctp
    }
}

/// Every frontend of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTable {
    /// By frontend.
    pub frontends: BTreeMap<Frontend, ServiceFrontend>,
    /// `"frontend: kept ns/a, ignored ns/b"` for every frontend two Services claim.
    pub conflicts: Vec<String>,
}

impl ServiceTable {
    /// Every frontend of `cluster` (see the module docs). Deterministic.
    pub fn build(cluster: &Cluster) -> ServiceTable {
        let mut t = ServiceTable::default();
        let no_slices = cluster.endpoint_slices.is_empty();
        // `cluster.services` iterates by key, so the first claimant of a frontend is
        // the Service whose key sorts first.
        for svc in cluster.services.values() {
            if svc.service_type == ServiceType::ExternalName {
                continue;
            }
            for sp in &svc.ports {
                for (addr, port, kind) in frontend_addresses(cluster, svc, sp) {
                    let frontend = Frontend {
                        addr,
                        port,
                        protocol: sp.protocol,
                    };
                    if let Some(kept) = t.frontends.get(&frontend) {
                        if kept.service != svc.key() {
                            t.conflicts.push(format!(
                                "{frontend}: kept {}, ignored {}",
                                kept.service,
                                svc.key()
                            ));
                        }
                        continue;
                    }
                    let (backends, terminating) = if no_slices {
                        (selector_backends(cluster, svc, sp, addr), false)
                    } else {
                        slice_backends(cluster, svc, sp, addr)
                    };
                    t.frontends.insert(
                        frontend,
                        ServiceFrontend {
                            frontend,
                            kind,
                            service: svc.key(),
                            port_name: sp.name.clone(),
                            backends,
                            terminating,
                            from_selector: no_slices,
                            affinity_timeout: svc.affinity_timeout,
                        },
                    );
                }
            }
        }
        t
    }

    /// The frontend a packet to `addr:port` of `protocol` addresses, if any.
    pub fn resolve(&self, addr: IpAddr, port: u16, protocol: Protocol) -> Option<&ServiceFrontend> {
        self.frontends.get(&Frontend {
            addr,
            port,
            protocol,
        })
    }

    /// Every frontend of the Service `namespace/name`.
    pub fn of_service<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a ServiceFrontend> {
        self.frontends.values().filter(move |f| f.service == key)
    }
}

/// The `(address, port, kind)` frontends of one Service port.
fn frontend_addresses(
    cluster: &Cluster,
    svc: &Service,
    sp: &ServicePort,
) -> Vec<(IpAddr, u16, FrontendKind)> {
    let mut out: Vec<(IpAddr, u16, FrontendKind)> = Vec::new();
    out.extend(
        svc.cluster_ips
            .iter()
            .map(|a| (*a, sp.port, FrontendKind::ClusterIp)),
    );
    out.extend(
        svc.external_ips
            .iter()
            .map(|a| (*a, sp.port, FrontendKind::ExternalIp)),
    );
    if svc.service_type == ServiceType::LoadBalancer {
        out.extend(
            svc.load_balancer_ips
                .iter()
                .map(|a| (*a, sp.port, FrontendKind::LoadBalancer)),
        );
    }
    if matches!(
        svc.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    ) {
        if let Some(np) = sp.node_port {
            for node in cluster.nodes.values() {
                out.extend(
                    node.addresses
                        .iter()
                        .map(|a| (*a, np, FrontendKind::NodePort)),
                );
            }
        }
    }
    out
}

/// Backends from the Service's EndpointSlices: ready ones, else serving-terminating.
fn slice_backends(
    cluster: &Cluster,
    svc: &Service,
    sp: &ServicePort,
    frontend: IpAddr,
) -> (Vec<Backend>, bool) {
    let mut ready = Vec::new();
    let mut terminating = Vec::new();
    let slices = cluster.endpoint_slices.values().filter(|es| {
        es.namespace == svc.namespace && es.service_name.as_deref() == Some(&svc.name)
    });
    for es in slices {
        let Some(port) = es
            .ports
            .iter()
            .find(|p| same_port_name(&p.name, &sp.name) && p.protocol == sp.protocol)
            .map(|p| p.port)
        else {
            continue;
        };
        let same_family = |a: &&IpAddr| a.is_ipv4() == frontend.is_ipv4();
        ready.extend(
            es.addresses
                .iter()
                .filter(same_family)
                .map(|&addr| Backend { addr, port }),
        );
        terminating.extend(
            es.terminating
                .iter()
                .filter(same_family)
                .map(|&addr| Backend { addr, port }),
        );
    }
    let (mut out, is_terminating) = if ready.is_empty() && !terminating.is_empty() {
        (terminating, true)
    } else {
        (ready, false)
    };
    out.sort();
    out.dedup();
    (out, is_terminating)
}

/// Whether an EndpointSlice port's name is the Service port's. The EndpointSlice
/// controller writes `name: ""` for an unnamed Service port, whose `name` is absent:
/// kube-proxy treats both as the empty name, and so must this (seen on real slices in
/// the Kubernetes lab: without it, every single-port unnamed Service had no backend).
fn same_port_name(slice: &Option<String>, service: &Option<String>) -> bool {
    slice.as_deref().unwrap_or("") == service.as_deref().unwrap_or("")
}

/// Backends from the selector, for a model without EndpointSlices.
fn selector_backends(
    cluster: &Cluster,
    svc: &Service,
    sp: &ServicePort,
    frontend: IpAddr,
) -> Vec<Backend> {
    let Some(selector) = &svc.selector else {
        return Vec::new();
    };
    let mut out: Vec<Backend> = cluster
        .pods
        .values()
        .filter(|p| {
            p.namespace == svc.namespace
                && selector
                    .iter()
                    .all(|(k, v)| p.labels.get(k).is_some_and(|pv| pv == v))
        })
        .filter_map(|p| {
            let addr = *p.ips.iter().find(|a| a.is_ipv4() == frontend.is_ipv4())?;
            let port = match &sp.target_port {
                None => sp.port,
                Some(TargetPort::Number(n)) => *n,
                Some(TargetPort::Name(name)) => p.resolve_named_port(name, sp.protocol)?,
            };
            Some(Backend { addr, port })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests;
