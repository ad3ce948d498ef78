//! networking.k8s.io/v1 NetworkPolicy into [`crate::model::NetworkPolicy`], validated like
//! `ValidateNetworkPolicySpec` in kubernetes `pkg/apis/networking/validation` and
//! defaulted like the API server:
//!
//! 1. `policyTypes` absent or empty: `Ingress`, plus `Egress` if `egress` has rules.
//! 2. `from`/`to` absent or empty: every peer (`peers: None`).
//! 3. `ports` absent or empty: every port and protocol (`ports: None`).
//! 4. A port's `protocol` absent: TCP. A port without `port`: every port of the protocol.
//! 5. A peer with only `namespaceSelector`: every pod of the matching namespaces; with
//!    only `podSelector`: matching pods of the policy's own namespace; with both: pods
//!    matching both (AND). Two peers are ORed: one `-` changes the meaning.
//! 6. `ipBlock.cidr` and `except` are truncated to their network (see [`super::cidr`]).

use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::error::Problems;
use super::location::Sites;
use super::{cidr, ports, selector, strict};
use crate::model::{
    IpBlock, NamespaceMatch, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyRule, PortMatch,
};
use crate::selector::LabelSelector;

/// Decodes and validates one NetworkPolicy. `None` is a decode failure; every problem
/// goes to `p`.
pub(crate) fn network_policy(
    v: &Value,
    sites: &Sites,
    namespace: &str,
    name: &str,
    p: &mut Problems,
) -> Option<NetworkPolicy> {
    let np: net::NetworkPolicy = strict::decode(v, sites, p)?;
    if let Some(labels) = &np.metadata.labels {
        selector::check_labels(labels, "metadata.labels", p);
    }
    let spec = np.spec.unwrap_or_default();
    let pod_selector = match &spec.pod_selector {
        Some(s) => selector::selector(s, "spec.podSelector", p),
        None => LabelSelector::everything(),
    };

    let ingress_rules: Vec<_> = spec
        .ingress
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.from, r.ports))
        .collect();
    let egress_rules: Vec<_> = spec
        .egress
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.to, r.ports))
        .collect();

    let (mut has_ingress, mut has_egress) = (false, false);
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            has_ingress = true;
            has_egress = !egress_rules.is_empty();
        }
        Some(types) => {
            if types.len() > 2 {
                p.error(
                    "spec.policyTypes",
                    "may not specify more than two policyTypes",
                );
            }
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => has_ingress = true,
                    "Egress" => has_egress = true,
                    other => p.error(
                        format!("spec.policyTypes[{i}]"),
                        format!("unsupported value {other:?}: supported values: \"Egress\", \"Ingress\""),
                    ),
                }
            }
        }
    }
    if !has_ingress && !ingress_rules.is_empty() {
        p.warn(
            "spec.ingress",
            "ignored: spec.policyTypes does not include Ingress",
        );
    }
    if !has_egress && !egress_rules.is_empty() {
        p.warn(
            "spec.egress",
            "ignored: spec.policyTypes does not include Egress",
        );
    }

    let ingress = rules(&ingress_rules, "spec.ingress", "from", namespace, p);
    let egress = rules(&egress_rules, "spec.egress", "to", namespace, p);
    Some(NetworkPolicy {
        namespace: namespace.into(),
        name: name.into(),
        pod_selector,
        ingress: has_ingress.then_some(ingress),
        egress: has_egress.then_some(egress),
    })
}

type RawRule = (
    Option<Vec<net::NetworkPolicyPeer>>,
    Option<Vec<net::NetworkPolicyPort>>,
);

fn rules(
    raw: &[RawRule],
    field: &str,
    peers_field: &str,
    namespace: &str,
    p: &mut Problems,
) -> Vec<NetworkPolicyRule> {
    raw.iter()
        .enumerate()
        .map(|(i, (peers, port_list))| {
            let f = format!("{field}[{i}]");
            let peers = peers.as_deref().filter(|l| !l.is_empty()).map(|l| {
                l.iter()
                    .enumerate()
                    .filter_map(|(j, peer)| {
                        self::peer(peer, &format!("{f}.{peers_field}[{j}]"), namespace, p)
                    })
                    .collect()
            });
            let ports = port_list.as_deref().filter(|l| !l.is_empty()).map(|l| {
                l.iter()
                    .enumerate()
                    .filter_map(|(j, port)| self::port(port, &format!("{f}.ports[{j}]"), p))
                    .collect()
            });
            NetworkPolicyRule { peers, ports }
        })
        .collect()
}

fn peer(
    peer: &net::NetworkPolicyPeer,
    field: &str,
    namespace: &str,
    p: &mut Problems,
) -> Option<NetworkPolicyPeer> {
    let set = [
        peer.pod_selector.is_some(),
        peer.namespace_selector.is_some(),
        peer.ip_block.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set == 0 {
        p.error(field, "must specify a peer");
        return None;
    }
    if set > 1 && peer.ip_block.is_some() {
        p.error(field, "may not specify both ipBlock and another peer");
        return None;
    }
    if let Some(b) = &peer.ip_block {
        return ip_block(b, &format!("{field}.ipBlock"), p).map(NetworkPolicyPeer::IpBlock);
    }
    let pods = match &peer.pod_selector {
        Some(s) => selector::selector(s, &format!("{field}.podSelector"), p),
        None => LabelSelector::everything(),
    };
    let namespaces = match &peer.namespace_selector {
        Some(s) => NamespaceMatch::Selector(selector::selector(
            s,
            &format!("{field}.namespaceSelector"),
            p,
        )),
        None => NamespaceMatch::Named(namespace.into()),
    };
    Some(NetworkPolicyPeer::Pods { namespaces, pods })
}

fn ip_block(b: &net::IPBlock, field: &str, p: &mut Problems) -> Option<IpBlock> {
    let Some(net) = cidr::parse(&b.cidr, &format!("{field}.cidr"), p) else {
        // Still check the holes, to report every problem at once.
        for (i, e) in b.except.iter().flatten().enumerate() {
            cidr::parse(e, &format!("{field}.except[{i}]"), p);
        }
        return None;
    };
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        let Some(hole) = cidr::parse(e, &f, p) else {
            continue;
        };
        if hole.addr().is_ipv4() != net.addr().is_ipv4() {
            p.error(
                f,
                format!(
                    "{e:?} must be a strict subset of `cidr` ({net}): it is of another IP family"
                ),
            );
        } else if !net.contains(&hole.network()) || hole.prefix_len() <= net.prefix_len() {
            p.error(
                f,
                format!("{e:?} must be a strict subset of `cidr` ({net})"),
            );
        } else {
            except.push(hole);
        }
    }
    Some(IpBlock { cidr: net, except })
}

fn port(port: &net::NetworkPolicyPort, field: &str, p: &mut Problems) -> Option<PortMatch> {
    let protocol = ports::protocol(port.protocol.as_deref(), &format!("{field}.protocol"), p);
    let end_field = format!("{field}.endPort");
    match &port.port {
        None => {
            if port.end_port.is_some() {
                p.error(
                    end_field,
                    "may not be specified when `port` is not specified",
                );
                return None;
            }
            Some(PortMatch::AllPorts(protocol))
        }
        Some(IntOrString::Int(n)) => {
            let start = ports::number((*n).into(), &format!("{field}.port"), p);
            let end = match port.end_port {
                None => start,
                Some(e) => {
                    let end = ports::number(e.into(), &end_field, p);
                    if e < *n {
                        p.error(end_field, format!("must not be less than port ({n})"));
                        return None;
                    }
                    end
                }
            };
            Some(PortMatch::Range {
                protocol,
                port: start?,
                end_port: end?,
            })
        }
        Some(IntOrString::String(name)) => {
            if port.end_port.is_some() {
                p.error(end_field, "may not be specified when `port` is non-numeric");
            }
            ports::check_name(name, &format!("{field}.port"), p);
            Some(PortMatch::Named {
                protocol,
                name: name.clone(),
            })
        }
    }
}
