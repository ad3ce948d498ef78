//! Flows to a Service, judged as the datapath judges them: per backend
//! (docs/semantics.md §10). Shared by `explain` and `simulate`.
//!
//! The core ([`evaluate_service`]) gives each backend's verdict; this module adds what
//! the datapath does around it and the CLI must say: which Service port a `--to` name
//! or address stands for, a client that is one of the backends (never sent to itself),
//! frontends the datapath leaves untranslated (SCTP, the client as only backend: fail
//! closed), and a Service the input gives no address (judged by its backends).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use palisade_policy::model::{Cluster, Protocol, ServicePort, ServiceType, TargetPort};
use palisade_policy::services::{Backend, FrontendKind, ServiceFrontend, ServiceTable};
use palisade_policy::verdict::{evaluate_service, Decision, Flow, IpFamily, Peer};

/// What a `--to` value stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A pod, a workload or an address that is no Service frontend: judged as before.
    Direct(String),
    /// A Service by `namespace/name`.
    Service(String),
}

/// Reads a `--to` value: `svc/NS/NAME` or `service/NS/NAME` (or `svc/NAME` in `-n`)
/// is a Service; `pod/NS/NAME` a pod or workload; a plain `NS/NAME` is whichever
/// exists, and an error (invalid input) when both a pod or workload and a Service do.
/// Addresses are [`Target::Direct`]: [`frontend_at`] tells whether they are a
/// Service's. `place` is where a Service is looked for (`the manifests`, `the cluster`).
pub fn target(
    cluster: &Cluster,
    place: &str,
    is_pod_or_workload: impl Fn(&str) -> bool,
    to: &str,
    namespace: Option<&str>,
) -> anyhow::Result<Target> {
    let qualify = |rest: &str| crate::select::qualify(rest, namespace);
    for prefix in ["svc/", "service/"] {
        if let Some(rest) = to.strip_prefix(prefix) {
            if rest.is_empty() || is_pod_or_workload(to) {
                break;
            }
            let key = qualify(rest);
            if !cluster.services.contains_key(&key) {
                return Err(crate::inputs::InvalidInput(format!(
                    "Service {key} not found in {place}"
                ))
                .into());
            }
            return Ok(Target::Service(key));
        }
    }
    if let Some(rest) = to.strip_prefix("pod/") {
        if !rest.is_empty() && !is_pod_or_workload(to) {
            return Ok(Target::Direct(qualify(rest)));
        }
    }
    let key = qualify(to);
    let service = cluster.services.contains_key(&key);
    match (is_pod_or_workload(&key), service) {
        (true, true) => Err(crate::inputs::InvalidInput(format!(
            "--to {to} names both a pod (or workload) {key} and a Service {key}\n\nhint: say --to svc/{key} for the Service, or --to pod/{key} for the pod"
        ))
        .into()),
        (false, true) => Ok(Target::Service(key)),
        _ => Ok(Target::Direct(key)),
    }
}

/// The Service frontend a packet to `addr` at `port`/`protocol` addresses.
pub fn frontend_at(
    table: &ServiceTable,
    addr: IpAddr,
    port: u16,
    protocol: u8,
) -> Option<&ServiceFrontend> {
    table.resolve(addr, port, Protocol::from_number(protocol)?)
}

/// A note when `addr` is a Service address, but not at this port and protocol: the
/// datapath then judges the packet as addressed (an outside address), and so does
/// `explain`.
pub fn not_a_frontend_note(
    table: &ServiceTable,
    addr: IpAddr,
    port: u16,
    protocol: u8,
) -> Option<String> {
    let at: Vec<&ServiceFrontend> = table
        .frontends
        .values()
        .filter(|f| f.frontend.addr == addr)
        .collect();
    let first = at.first()?;
    let ports: Vec<String> = at
        .iter()
        .map(|f| format!("{}/{}", f.frontend.port, f.frontend.protocol))
        .collect();
    let proto = Protocol::from_number(protocol)
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| protocol.to_string());
    Some(format!(
        "note: {addr} is an address of Service {} ({}), but not at {proto}/{port}: the datapath does not translate it, so it is judged as an address outside the cluster",
        first.service,
        ports.join(", ")
    ))
}

/// One backend's verdict, as the datapath decides it.
#[derive(Debug, Clone)]
pub struct BackendVerdict {
    /// The backend address and target port.
    pub backend: Backend,
    /// Its pod, when the address is a pod's.
    pub pod: Option<String>,
    /// The evaluator's verdict for the flow rewritten to this backend.
    pub decision: Decision,
    /// The datapath's verdict when it sends the flow here.
    pub allowed: bool,
    /// `false` for the client itself among several backends: never chosen.
    pub chosen: bool,
}

/// The overall verdict of a flow to a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overall {
    /// Every backend the flow may be sent to allows it.
    Allowed,
    /// No backend allows it.
    Denied,
    /// `allowed` of `of` backends allow it: the verdict depends on the backend chosen.
    Partly {
        /// Backends that allow it.
        allowed: usize,
        /// Backends the flow may be sent to.
        of: usize,
    },
    /// No backend at all: the datapath drops the packet (`svc-no-backend`).
    NoBackend,
}

impl Overall {
    /// `allow`, `deny`, `partial` or `no-backend` (the JSON word).
    pub fn word(self) -> &'static str {
        match self {
            Overall::Allowed => "allow",
            Overall::Denied => "deny",
            Overall::Partly { .. } => "partial",
            Overall::NoBackend => "no-backend",
        }
    }
}

/// A flow to one Service port, judged per backend.
#[derive(Debug, Clone)]
pub struct ServiceAnswer {
    /// `namespace/name`.
    pub service: String,
    /// The frontend addressed; `None` when the input gives the Service no address
    /// (headless, or its ClusterIP not yet assigned): judged by its backends.
    pub frontend: Option<(IpAddr, FrontendKind)>,
    /// The Service port (or `nodePort` for a NodePort frontend).
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The Service port's `name`.
    pub port_name: Option<String>,
    /// The Service port's `targetPort` as written (`None`: the same as `port`).
    pub target_port: Option<TargetPort>,
    /// Backends come from the Service's selector (the input has no EndpointSlice).
    pub from_selector: bool,
    /// Backends are serving-but-terminating endpoints (no ready one is left).
    pub terminating: bool,
    /// The datapath leaves the frontend to kube-proxy (SCTP, or the client is the only
    /// backend): the source's egress must allow every backend.
    pub untranslated: bool,
    /// Every backend, in the frontend's order.
    pub backends: Vec<BackendVerdict>,
}

impl ServiceAnswer {
    /// The flow's verdict over the backends it may be sent to.
    pub fn overall(&self) -> Overall {
        let chosen: Vec<&BackendVerdict> = self.backends.iter().filter(|b| b.chosen).collect();
        let allowed = chosen.iter().filter(|b| b.allowed).count();
        match (chosen.len(), allowed) {
            (0, _) => Overall::NoBackend,
            (n, a) if a == n => Overall::Allowed,
            (_, 0) => Overall::Denied,
            (of, allowed) => Overall::Partly { allowed, of },
        }
    }

    /// The backend whose decision stands for the flow in one-decision outputs: the
    /// first denied backend, else the first one (`None`: no backend).
    pub fn deciding(&self) -> Option<&BackendVerdict> {
        let chosen = || self.backends.iter().filter(|b| b.chosen);
        chosen()
            .find(|b| !b.allowed)
            .or_else(|| chosen().next())
            .or_else(|| self.backends.first())
    }

    /// `namespace/name port 443 "https"` (`nodePort 30443` for a node address).
    pub fn service_port(&self) -> String {
        let which = match self.frontend {
            Some((_, FrontendKind::NodePort)) => "nodePort",
            _ => "port",
        };
        match &self.port_name {
            Some(n) => format!("{} {which} {} {n:?}", self.service, self.port),
            None => format!("{} {which} {}", self.service, self.port),
        }
    }

    /// The Service port's `targetPort` in words: `6443`, or `"http" (named: resolved per
    /// backend pod)`.
    pub fn target_port_words(&self) -> String {
        match &self.target_port {
            None => format!("{} (unset: the port)", self.port),
            Some(TargetPort::Number(n)) => n.to_string(),
            Some(TargetPort::Name(n)) => format!("{n:?} (named: resolved per backend pod)"),
        }
    }
}

/// The Service port of `service` a packet at `port`/`protocol` uses, by `port` (a
/// NodePort frontend's `nodePort` counts too).
pub fn service_port<'a>(
    cluster: &'a Cluster,
    service: &str,
    port: u16,
    protocol: Protocol,
) -> Option<&'a ServicePort> {
    let svc = cluster.services.get(service)?;
    svc.ports
        .iter()
        .find(|p| p.protocol == protocol && p.port == port)
        .or_else(|| {
            svc.ports
                .iter()
                .find(|p| p.protocol == protocol && p.node_port == Some(port))
        })
}

/// `443/TCP "https", 80/TCP` for an error naming the ports a Service has.
pub fn ports_words(cluster: &Cluster, service: &str) -> String {
    let Some(svc) = cluster.services.get(service) else {
        return String::new();
    };
    let ports: Vec<String> = svc
        .ports
        .iter()
        .map(|p| match &p.name {
            Some(n) => format!("{}/{} {n:?}", p.port, p.protocol),
            None => format!("{}/{}", p.port, p.protocol),
        })
        .collect();
    if ports.is_empty() {
        "none".into()
    } else {
        ports.join(", ")
    }
}

/// Judges a flow from `src` to the Service frontend `frontend`.
pub fn judge_frontend(
    cluster: &Cluster,
    table: &ServiceTable,
    src: &Peer,
    frontend: &ServiceFrontend,
) -> Option<ServiceAnswer> {
    let f = frontend.frontend;
    let flow = Flow::with_protocol(src.clone(), Peer::Ip(f.addr), f.protocol, f.port);
    let d = evaluate_service(cluster, table, &flow)?;
    let sp = service_port(cluster, &frontend.service, f.port, f.protocol);
    let client_ips: Vec<IpAddr> = match src {
        Peer::Pod(k) => cluster
            .pods
            .get(k)
            .map(|p| p.ips.clone())
            .unwrap_or_default(),
        Peer::Ip(a) => vec![*a],
    };
    let is_client = |b: &Backend| client_ips.contains(&b.addr);
    let sole_client = d.backends.len() == 1 && is_client(&d.backends[0].backend);
    let untranslated = !d.frontend.translated() || sole_client;
    let egress_all = d.untranslated_egress_allowed();
    let backends = d
        .backends
        .into_iter()
        .map(|b| {
            let allowed = if untranslated {
                egress_all && b.decision.ingress.as_ref().is_none_or(|s| s.allowed)
            } else {
                b.decision.allowed
            };
            BackendVerdict {
                chosen: sole_client || !is_client(&b.backend),
                backend: b.backend,
                pod: b.pod,
                decision: b.decision,
                allowed,
            }
        })
        .collect();
    Some(ServiceAnswer {
        service: frontend.service.clone(),
        frontend: Some((f.addr, frontend.kind)),
        port: f.port,
        protocol: f.protocol,
        port_name: frontend.port_name.clone(),
        target_port: sp.and_then(|p| p.target_port.clone()),
        from_selector: frontend.from_selector,
        terminating: frontend.terminating,
        untranslated,
        backends,
    })
}

/// The input, with a stand-in ClusterIP for each Service it gives no address
/// (headless, or a repository's manifest whose ClusterIP the API server assigns):
/// `0.0.0.N` and `100::N` (RFC 6666's discard prefix), addresses no pod or real
/// Service has. Such a Service is judged by the backends it would have at any
/// ClusterIP. Borrowed when every Service has an address.
pub fn with_stand_ins(cluster: &Cluster) -> (Cow<'_, Cluster>, ServiceTable) {
    let missing: Vec<String> = cluster
        .services
        .values()
        .filter(|s| {
            s.service_type != ServiceType::ExternalName
                && s.cluster_ips.is_empty()
                && s.external_ips.is_empty()
                && s.load_balancer_ips.is_empty()
        })
        .map(|s| s.key())
        .collect();
    if missing.is_empty() {
        return (Cow::Borrowed(cluster), ServiceTable::build(cluster));
    }
    let mut c = cluster.clone();
    for (i, key) in missing.iter().enumerate() {
        let n = i as u32 + 1;
        if let Some(s) = c.services.get_mut(key) {
            s.cluster_ips = vec![
                Ipv4Addr::from(n).into(),
                Ipv6Addr::from((0x0100_u128 << 112) | u128::from(n)).into(),
            ];
        }
    }
    let t = ServiceTable::build(&c);
    (Cow::Owned(c), t)
}

/// Whether `addr` is one of [`with_stand_ins`]' stand-in ClusterIPs.
pub fn is_stand_in(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.octets()[0] == 0,
        IpAddr::V6(a) => a.segments()[..4] == [0x0100, 0, 0, 0],
    }
}

/// Judges a flow from `src` to the Service `service` at `port`/`protocol` (`cluster`
/// and `table` from [`with_stand_ins`]): through its first frontend of that port
/// (ClusterIPs first, in `spec.clusterIPs` order, then external and load-balancer IPs)
/// of `family` when given. `Err` (invalid input) when the Service has no such port.
pub fn judge_service(
    cluster: &Cluster,
    table: &ServiceTable,
    src: &Peer,
    service: &str,
    port: u16,
    protocol: Protocol,
    family: Option<IpFamily>,
) -> anyhow::Result<ServiceAnswer> {
    let Some(sp) = service_port(cluster, service, port, protocol) else {
        return Err(crate::inputs::InvalidInput(format!(
            "Service {service} has no port {port}/{protocol} (its ports: {})\n\nhint: give --port and --protocol of one of its ports",
            ports_words(cluster, service)
        ))
        .into());
    };
    let svc = &cluster.services[service];
    let rank = |k: FrontendKind| match k {
        FrontendKind::ClusterIp => 0,
        FrontendKind::ExternalIp => 1,
        FrontendKind::LoadBalancer => 2,
        FrontendKind::NodePort => 3,
    };
    let order = |a: &IpAddr| {
        svc.cluster_ips
            .iter()
            .position(|c| c == a)
            .unwrap_or(usize::MAX)
    };
    let mut candidates: Vec<&ServiceFrontend> = table
        .of_service(service)
        .filter(|f| f.frontend.protocol == protocol && f.frontend.port == sp.port)
        .filter(|f| family.is_none_or(|fam| IpFamily::of(&f.frontend.addr) == fam))
        .collect();
    candidates.sort_by_key(|f| (rank(f.kind), order(&f.frontend.addr)));
    // A stand-in's families are guesses: take the first that has backends.
    if candidates.iter().all(|f| is_stand_in(&f.frontend.addr)) {
        if let Some(i) = candidates.iter().position(|f| !f.backends.is_empty()) {
            candidates.swap(0, i);
        }
    }
    let Some(f) = candidates.first() else {
        return Err(crate::inputs::InvalidInput(match svc.service_type {
            ServiceType::ExternalName => format!(
                "Service {service} is an ExternalName Service: a DNS name, with no backends to judge"
            ),
            _ => format!(
                "Service {service} has no address of the asked family at port {port}/{protocol}"
            ),
        })
        .into());
    };
    let mut a = judge_frontend(cluster, table, src, f).expect("a frontend of the table");
    if is_stand_in(&f.frontend.addr) {
        a.frontend = None;
    }
    Ok(a)
}
