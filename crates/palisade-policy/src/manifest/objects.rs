//! Cluster state objects (Namespace, Pod, Node, Service, EndpointSlice) into the
//! [`crate::model`], through `k8s-openapi` types.
//!
//! These are validated only as far as policy depends on them: labels (selectors match
//! them), named container ports (named policy ports resolve against them) and addresses.

use std::net::IpAddr;

use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::error::Problems;
use super::location::Sites;
use super::ports;
use super::selector::check_labels;
use super::strict::decode;
use crate::model::{
    service_account_name, ContainerPort, EndpointSlice, Namespace, Node, Pod, Service,
    ServiceAccount, ServicePort, ServiceType, TargetPort, NAMESPACE_NAME_LABEL,
};

/// The label EndpointSlices carry to name their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn ip(s: &str, field: &str, p: &mut Problems) -> Option<IpAddr> {
    match s.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            p.error(field, format!("invalid IP address {s:?}"));
            None
        }
    }
}

/// A ServiceAccount: its labels only (Calico selects service accounts by them). Its
/// `secrets` and `imagePullSecrets` are references by name, and are not read.
pub(crate) fn service_account(
    v: &Value,
    sites: &Sites,
    namespace: &str,
    name: &str,
    p: &mut Problems,
) -> Option<ServiceAccount> {
    let sa: core::ServiceAccount = decode(v, sites, p)?;
    let labels = sa.metadata.labels.unwrap_or_default();
    check_labels(&labels, "metadata.labels", p);
    Some(ServiceAccount {
        namespace: namespace.into(),
        name: name.into(),
        labels,
    })
}

/// A Namespace; the automatic `kubernetes.io/metadata.name` label is added (and wins
/// over a different value, as the API server makes it).
pub(crate) fn namespace(
    v: &Value,
    sites: &Sites,
    name: &str,
    p: &mut Problems,
) -> Option<Namespace> {
    let ns: core::Namespace = decode(v, sites, p)?;
    let mut labels = ns.metadata.labels.unwrap_or_default();
    check_labels(&labels, "metadata.labels", p);
    if let Some(old) = labels.insert(NAMESPACE_NAME_LABEL.into(), name.into()) {
        if old != name {
            p.warn(
                format!("metadata.labels[{NAMESPACE_NAME_LABEL:?}]"),
                format!("value {old:?} is replaced by the namespace name {name:?}, as the API server does"),
            );
        }
    }
    Some(Namespace {
        name: name.into(),
        labels,
    })
}

/// A Pod: labels, declared container ports, IPs (`status.podIPs`, else `status.podIP`).
pub(crate) fn pod(
    v: &Value,
    sites: &Sites,
    namespace: &str,
    name: &str,
    p: &mut Problems,
) -> Option<Pod> {
    let pod: core::Pod = decode(v, sites, p)?;
    let labels = pod.metadata.labels.unwrap_or_default();
    check_labels(&labels, "metadata.labels", p);
    let spec = pod.spec.unwrap_or_default();
    let ports = container_ports(&spec, "spec", p);
    let status = pod.status.unwrap_or_default();
    let mut ips = Vec::new();
    match status.pod_ips.as_deref() {
        Some(list) if !list.is_empty() => {
            for (i, a) in list.iter().enumerate() {
                if let Some(ip) = ip(&a.ip, &format!("status.podIPs[{i}].ip"), p) {
                    if ips.iter().any(|x: &IpAddr| x.is_ipv4() == ip.is_ipv4()) {
                        p.error(
                            format!("status.podIPs[{i}].ip"),
                            "may specify no more than one IP for each IP family",
                        );
                    } else {
                        ips.push(ip);
                    }
                }
            }
        }
        _ => {
            if let Some(s) = status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
                ips.extend(ip(s, "status.podIP", p));
            }
        }
    }
    Some(Pod {
        namespace: namespace.into(),
        name: name.into(),
        labels,
        ports,
        ips,
        host_network: spec.host_network.unwrap_or(false),
        node_name: spec.node_name.filter(|n| !n.is_empty()),
        service_account: service_account_name(
            spec.service_account_name.as_deref(),
            spec.service_account.as_deref(),
        ),
    })
}

/// Every declared container port of a pod spec found at `at` (`spec` for a Pod,
/// `spec.template.spec` for a Deployment), each problem named under it.
pub(crate) fn container_ports(
    spec: &core::PodSpec,
    at: &str,
    p: &mut Problems,
) -> Vec<ContainerPort> {
    let mut ports = Vec::new();
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", c))
        .chain(spec.containers.iter().map(|c| ("containers", c)));
    let mut per_kind_index = std::collections::BTreeMap::<&str, usize>::new();
    for (kind, c) in containers {
        let ci = *per_kind_index
            .entry(kind)
            .and_modify(|i| *i += 1)
            .or_insert(0);
        for (pi, cp) in c.ports.iter().flatten().enumerate() {
            let f = format!("{at}.{kind}[{ci}].ports[{pi}]");
            let protocol = ports::protocol(cp.protocol.as_deref(), &format!("{f}.protocol"), p);
            let port = ports::number(cp.container_port.into(), &format!("{f}.containerPort"), p);
            if let Some(n) = &cp.name {
                ports::check_name(n, &format!("{f}.name"), p);
            }
            if let Some(port) = port {
                ports.push(ContainerPort {
                    name: cp.name.clone(),
                    port,
                    protocol,
                });
            }
        }
    }
    ports
}

/// A Node: labels and `InternalIP`/`ExternalIP` addresses (other address types, such as
/// `Hostname`, are not IPs and are skipped).
pub(crate) fn node(v: &Value, sites: &Sites, name: &str, p: &mut Problems) -> Option<Node> {
    let node: core::Node = decode(v, sites, p)?;
    let labels = node.metadata.labels.unwrap_or_default();
    check_labels(&labels, "metadata.labels", p);
    let mut addresses = Vec::new();
    for (i, a) in node
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
            if let Some(ip) = ip(&a.address, &format!("status.addresses[{i}].address"), p) {
                if !addresses.contains(&ip) {
                    addresses.push(ip);
                }
            }
        }
    }
    Some(Node {
        name: name.into(),
        labels,
        addresses,
    })
}

/// A Service. An empty `selector` means selector-less, as in the API.
pub(crate) fn service(
    v: &Value,
    sites: &Sites,
    namespace: &str,
    name: &str,
    p: &mut Problems,
) -> Option<Service> {
    let svc: core::Service = decode(v, sites, p)?;
    let spec = svc.spec.unwrap_or_default();
    let selector = spec.selector.filter(|s| !s.is_empty());
    if let Some(s) = &selector {
        check_labels(s, "spec.selector", p);
    }
    let mut cluster_ips = Vec::new();
    let (list, field) = match spec.cluster_ips {
        Some(l) if !l.is_empty() => (l, "spec.clusterIPs"),
        _ => (spec.cluster_ip.into_iter().collect(), "spec.clusterIP"),
    };
    for (i, s) in list.iter().enumerate() {
        // Headless Services say "None"; unallocated ones leave it empty.
        if s.is_empty() || s == "None" {
            continue;
        }
        let f = if field == "spec.clusterIPs" {
            format!("{field}[{i}]")
        } else {
            field.to_string()
        };
        cluster_ips.extend(ip(s, &f, p));
    }
    let mut ports = Vec::new();
    for (i, sp) in spec.ports.iter().flatten().enumerate() {
        let f = format!("spec.ports[{i}]");
        let protocol = ports::protocol(sp.protocol.as_deref(), &format!("{f}.protocol"), p);
        let target_port = match &sp.target_port {
            None => None,
            Some(IntOrString::Int(n)) => {
                ports::number((*n).into(), &format!("{f}.targetPort"), p).map(TargetPort::Number)
            }
            Some(IntOrString::String(name)) => {
                ports::check_name(name, &format!("{f}.targetPort"), p);
                Some(TargetPort::Name(name.clone()))
            }
        };
        let node_port = sp
            .node_port
            .and_then(|n| ports::number(n.into(), &format!("{f}.nodePort"), p));
        if let Some(port) = ports::number(sp.port.into(), &format!("{f}.port"), p) {
            ports.push(ServicePort {
                name: sp.name.clone(),
                port,
                protocol,
                target_port,
                node_port,
            });
        }
    }
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            p.error(
                "spec.type",
                format!("unsupported value {other:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
            );
            ServiceType::ClusterIp
        }
    };
    let mut external_ips = Vec::new();
    for (i, s) in spec.external_ips.iter().flatten().enumerate() {
        external_ips.extend(ip(s, &format!("spec.externalIPs[{i}]"), p));
    }
    let mut load_balancer_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        if let Some(s) = &ing.ip {
            load_balancer_ips.extend(ip(s, &format!("status.loadBalancer.ingress[{i}].ip"), p));
        }
    }
    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            // The API's default timeout is 10800 s (3 hours).
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            if !(1..=86400).contains(&t) {
                p.error(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("invalid value {t}: must be greater than 0 and less than 86400"),
                );
            }
            Some(t.clamp(1, 86400) as u32)
        }
        Some(other) => {
            p.error(
                "spec.sessionAffinity",
                format!("unsupported value {other:?}: supported values: \"ClientIP\", \"None\""),
            );
            None
        }
    };
    Some(Service {
        namespace: namespace.into(),
        name: name.into(),
        selector,
        cluster_ips,
        ports,
        service_type,
        external_ips,
        load_balancer_ips,
        affinity_timeout,
    })
}

/// An EndpointSlice: addresses of endpoints not marked `ready: false` (an absent
/// `ready` means ready, per the API). FQDN slices carry no IPs and are kept empty.
pub(crate) fn endpoint_slice(
    v: &Value,
    sites: &Sites,
    namespace: &str,
    name: &str,
    p: &mut Problems,
) -> Option<EndpointSlice> {
    let es: discovery::EndpointSlice = decode(v, sites, p)?;
    let labels = es.metadata.labels.unwrap_or_default();
    check_labels(&labels, "metadata.labels", p);
    let mut addresses = Vec::new();
    let is_ip = matches!(es.address_type.as_str(), "IPv4" | "IPv6");
    if !is_ip && es.address_type != "FQDN" {
        p.error(
            "addressType",
            format!(
                "unsupported value {:?}: supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
                es.address_type
            ),
        );
    }
    if !is_ip && es.endpoints.as_ref().is_some_and(|e| !e.is_empty()) {
        p.warn(
            "endpoints",
            "FQDN endpoints are not IP addresses and are ignored",
        );
    }
    let mut terminating = Vec::new();
    for (i, e) in es.endpoints.iter().flatten().enumerate() {
        if !is_ip {
            continue;
        }
        let c = e.conditions.as_ref();
        // Absent conditions mean ready (and so serving), per the API.
        let ready = c.and_then(|c| c.ready) != Some(false);
        let serving_terminating =
            c.and_then(|c| c.serving) == Some(true) && c.and_then(|c| c.terminating) == Some(true);
        let into = if ready {
            &mut addresses
        } else if serving_terminating {
            &mut terminating
        } else {
            continue;
        };
        for (j, a) in e.addresses.iter().enumerate() {
            if let Some(ip) = ip(a, &format!("endpoints[{i}].addresses[{j}]"), p) {
                if !into.contains(&ip) {
                    into.push(ip);
                }
            }
        }
    }
    let mut ports = Vec::new();
    for (i, ep) in es.ports.iter().flatten().enumerate() {
        let f = format!("ports[{i}]");
        let protocol = ports::protocol(ep.protocol.as_deref(), &format!("{f}.protocol"), p);
        // An absent port means "all ports" for the slice; there is nothing to record.
        if let Some(n) = ep.port {
            if let Some(port) = ports::number(n.into(), &format!("{f}.port"), p) {
                ports.push(ServicePort {
                    name: ep.name.clone(),
                    port,
                    protocol,
                    target_port: None,
                    node_port: None,
                });
            }
        }
    }
    Some(EndpointSlice {
        namespace: namespace.into(),
        name: name.into(),
        service_name: labels.get(SERVICE_NAME_LABEL).cloned(),
        addresses,
        terminating,
        ports,
    })
}
