//! The benchmark's policy: one NetworkPolicy on the server pod whose ingress holds `N`
//! entries, built as a [`Cluster`] and compiled to the [`Compiled`] form that both the
//! Palisade datapath and the iptables generator consume.
//!
//! Entry `i` (0-based, `i < N - 1`) allows one /32 from `172.16.0.0/12` (never the
//! client) on a small port range of TCP or UDP; the last entry allows the client's /32 on
//! the measured ports. So a first-match engine (iptables) walks every other entry before
//! it reaches the measured flow's rule, which is the worst case for rule-walking and the
//! usual case for a large policy.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use palisade_policy::compiled::{Compiled, RuleTable, TableId};
use palisade_policy::model::{
    Cluster, IpBlock, Namespace, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyRule, Pod,
    PortMatch, Protocol, NAMESPACE_NAME_LABEL,
};
use palisade_policy::selector::{LabelSelector, Labels};

use crate::testbed::{CLIENT_IP, SERVER_IP};
use crate::BenchError;

/// Namespace of the server pod (and of its policy).
pub const SERVER_NAMESPACE: &str = "bench-server";
/// Namespace of the client pod.
pub const CLIENT_NAMESPACE: &str = "bench-client";
/// `namespace/name` of the server pod.
pub const SERVER_POD: &str = "bench-server/server";
/// `namespace/name` of the client pod.
pub const CLIENT_POD: &str = "bench-client/client";

/// UDP request/response port on the server.
pub const PORT_UDP_RR: u16 = 7001;
/// TCP request/response port.
pub const PORT_TCP_RR: u16 = 7002;
/// TCP connect/request/response/close port.
pub const PORT_TCP_CRR: u16 = 7003;
/// TCP bulk-throughput sink port.
pub const PORT_TCP_STREAM: u16 = 7004;
/// A TCP port with a listener that no rule allows for the client: the denied-port probe.
pub const PORT_DENIED: u16 = 7999;
/// The client's allowed TCP port range (covers every measured TCP port, not 7999).
pub const CLIENT_TCP_PORTS: (u16, u16) = (7002, 7004);
/// The client's allowed UDP port range.
pub const CLIENT_UDP_PORTS: (u16, u16) = (7001, 7001);

/// The address of filler entry `i`: `172.16.0.1` upwards, never a test-bed address.
fn filler_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 1)) + i as u32)
}

/// Builds the cluster: a server pod and a client pod in their own namespaces, and one
/// NetworkPolicy `bench-server/bench` selecting the server with `entries` ingress rules
/// (at least 1: the client's rule is always the last one).
pub fn cluster(entries: usize) -> Cluster {
    let entries = entries.max(1);
    let mut c = Cluster::default();
    for ns in [SERVER_NAMESPACE, CLIENT_NAMESPACE] {
        c.namespaces.insert(
            ns.to_string(),
            Namespace {
                name: ns.to_string(),
                labels: Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())]),
            },
        );
    }
    let pod = |ns: &str, name: &str, ip: Ipv4Addr| Pod {
        namespace: ns.to_string(),
        name: name.to_string(),
        labels: Labels::from([("app".to_string(), name.to_string())]),
        ports: Vec::new(),
        ips: vec![IpAddr::V4(ip)],
        host_network: false,
        node_name: Some("bench-node".to_string()),
    };
    let server = pod(SERVER_NAMESPACE, "server", SERVER_IP);
    let client = pod(CLIENT_NAMESPACE, "client", CLIENT_IP);
    c.pods.insert(server.key(), server);
    c.pods.insert(client.key(), client);

    let block = |ip: Ipv4Addr| {
        NetworkPolicyPeer::IpBlock(IpBlock {
            cidr: IpNet::V4(Ipv4Net::new(ip, 32).expect("/32 is a valid prefix")),
            except: Vec::new(),
        })
    };
    let mut ingress: Vec<NetworkPolicyRule> = (0..entries - 1)
        .map(|i| {
            let protocol = if i % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let port = 1000 + (i % 5000) as u16;
            NetworkPolicyRule {
                peers: Some(vec![block(filler_ip(i))]),
                ports: Some(vec![PortMatch::Range {
                    protocol,
                    port,
                    end_port: port + 3,
                }]),
            }
        })
        .collect();
    ingress.push(NetworkPolicyRule {
        peers: Some(vec![block(CLIENT_IP)]),
        ports: Some(vec![
            PortMatch::Range {
                protocol: Protocol::Tcp,
                port: CLIENT_TCP_PORTS.0,
                end_port: CLIENT_TCP_PORTS.1,
            },
            PortMatch::Range {
                protocol: Protocol::Udp,
                port: CLIENT_UDP_PORTS.0,
                end_port: CLIENT_UDP_PORTS.1,
            },
        ]),
    });
    let policy = NetworkPolicy {
        namespace: SERVER_NAMESPACE.to_string(),
        name: "bench".to_string(),
        pod_selector: LabelSelector::from_labels([("app", "server")]),
        ingress: Some(ingress),
        egress: None,
    };
    c.network_policies
        .insert(format!("{SERVER_NAMESPACE}/bench"), policy);
    c
}

/// Compiles the cluster with the policy core's compiler.
///
/// Until `palisade_policy::compile::compile` lands (branch `compile`), this uses
/// [`stand_in::compile`], which handles exactly the shape [`cluster`] builds; swap the
/// body for `palisade_policy::compile::compile(cluster)` then.
pub fn compile(cluster: &Cluster) -> Result<Compiled, BenchError> {
    stand_in::compile(cluster)
}

/// The server pod's ingress table and its id.
pub fn server_ingress(compiled: &Compiled) -> Result<(TableId, &RuleTable), BenchError> {
    let ep = compiled.endpoints.get(SERVER_POD).ok_or_else(|| {
        BenchError::Policy(format!("no endpoint {SERVER_POD} in the compiled form"))
    })?;
    let table = compiled.tables.get(&ep.ingress).ok_or_else(|| {
        BenchError::Policy(format!(
            "endpoint {SERVER_POD} points at missing table {}",
            ep.ingress
        ))
    })?;
    Ok((ep.ingress, table))
}

/// Prefixes of every identity, from the address map.
pub fn prefixes_by_identity(compiled: &Compiled) -> BTreeMap<u32, Vec<IpNet>> {
    let mut m: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
    for (net, id) in &compiled.addresses {
        m.entry(*id).or_default().push(*net);
    }
    m
}

/// A minimal compiler for the benchmark's policy shape (ipBlock peers without `except`,
/// port ranges, one NetworkPolicy selecting one pod), producing the documented
/// [`Compiled`] invariants. Exists only until the real compiler is merged.
mod stand_in {
    use super::*;
    use palisade_policy::compiled::{
        EndpointEntry, IdentityInfo, RuleOrigin, TableAction, TableEntry, TableVerdict,
        IDENTITY_ANY, PROTO_CLASSES, PROTO_OTHER,
    };
    use palisade_policy::model::Direction;

    /// `(port_lo, port_hi, rule id)` allowed for one `(peer, proto)`.
    type PortRun = (u16, u16, u32);

    pub fn compile(cluster: &Cluster) -> Result<Compiled, BenchError> {
        let mut out = Compiled::default();
        let mut next_id = 1u32;
        let mut id_of = |out: &mut Compiled, net: IpNet| -> u32 {
            if let Some(id) = out.addresses.get(&net) {
                return *id;
            }
            let id = next_id;
            next_id += 1;
            out.addresses.insert(net, id);
            out.identities
                .insert(id, IdentityInfo::Network { prefix: net });
            id
        };
        id_of(&mut out, "0.0.0.0/0".parse().expect("valid"));
        id_of(&mut out, "::/0".parse().expect("valid"));
        for pod in cluster.pods.values() {
            for ip in &pod.ips {
                id_of(&mut out, IpNet::from(*ip));
            }
        }
        // Table 1: allow everything (default, no policy). Tables 2..: one per policy.
        let allow_all = |rule| RuleTable {
            entries: PROTO_CLASSES
                .iter()
                .map(|&proto| TableEntry {
                    peer: IDENTITY_ANY,
                    proto,
                    port_lo: 0,
                    port_hi: if proto == PROTO_OTHER { 0 } else { u16::MAX },
                    verdict: TableVerdict {
                        action: TableAction::Allow,
                        rule,
                    },
                })
                .collect(),
        };
        out.rules.insert(
            0,
            RuleOrigin::Default {
                direction: Direction::Ingress,
            },
        );
        out.rules.insert(
            1,
            RuleOrigin::Default {
                direction: Direction::Egress,
            },
        );
        out.tables.insert(1, allow_all(0));
        out.tables.insert(2, allow_all(1));
        let mut next_rule = 2u32;
        for pod in cluster.pods.values() {
            out.endpoints.insert(
                pod.key(),
                EndpointEntry {
                    pod: pod.key(),
                    ips: pod.ips.clone(),
                    ingress: 1,
                    egress: 2,
                    generation: 1,
                },
            );
        }
        let mut next_table = 3u32;
        for (key, policy) in &cluster.network_policies {
            if policy.egress.is_some() {
                return Err(BenchError::Policy(format!(
                    "stand-in compiler: {key}: egress unsupported"
                )));
            }
            let Some(rules) = &policy.ingress else {
                continue;
            };
            let isolated = next_rule;
            next_rule += 1;
            out.rules.insert(
                isolated,
                RuleOrigin::Isolated {
                    direction: Direction::Ingress,
                    policies: vec![key.clone()],
                },
            );
            // (peer, proto) -> allowed ranges with their rule id.
            let mut allowed: BTreeMap<(u32, u8), Vec<PortRun>> = BTreeMap::new();
            for (index, rule) in rules.iter().enumerate() {
                let rid = next_rule;
                next_rule += 1;
                out.rules.insert(
                    rid,
                    RuleOrigin::NetworkPolicy {
                        namespace: policy.namespace.clone(),
                        name: policy.name.clone(),
                        direction: Direction::Ingress,
                        index,
                    },
                );
                let (Some(peers), Some(ports)) = (&rule.peers, &rule.ports) else {
                    return Err(BenchError::Policy(format!(
                        "stand-in compiler: {key}: rules need peers and ports"
                    )));
                };
                for peer in peers {
                    let NetworkPolicyPeer::IpBlock(b) = peer else {
                        return Err(BenchError::Policy(format!(
                            "stand-in compiler: {key}: only ipBlock peers"
                        )));
                    };
                    if !b.except.is_empty() || b.cidr.prefix_len() != b.cidr.max_prefix_len() {
                        return Err(BenchError::Policy(format!(
                            "stand-in compiler: {key}: only host ipBlocks without except"
                        )));
                    }
                    let id = id_of(&mut out, b.cidr);
                    for port in ports {
                        let PortMatch::Range {
                            protocol,
                            port,
                            end_port,
                        } = port
                        else {
                            return Err(BenchError::Policy(format!(
                                "stand-in compiler: {key}: only port ranges"
                            )));
                        };
                        allowed
                            .entry((id, protocol.number()))
                            .or_default()
                            .push((*port, *end_port, rid));
                    }
                }
            }
            let deny = TableVerdict {
                action: TableAction::Deny,
                rule: isolated,
            };
            let mut table = RuleTable::default();
            for &proto in &PROTO_CLASSES {
                table.entries.push(TableEntry {
                    peer: IDENTITY_ANY,
                    proto,
                    port_lo: 0,
                    port_hi: if proto == PROTO_OTHER { 0 } else { u16::MAX },
                    verdict: deny,
                });
            }
            for ((peer, proto), mut ranges) in allowed {
                ranges.sort();
                let mut next: u32 = 0;
                for (lo, hi, rid) in ranges {
                    if u32::from(lo) < next {
                        return Err(BenchError::Policy(format!(
                            "stand-in compiler: {key}: overlapping ports for one peer"
                        )));
                    }
                    if u32::from(lo) > next {
                        table.entries.push(TableEntry {
                            peer,
                            proto,
                            port_lo: next as u16,
                            port_hi: lo - 1,
                            verdict: deny,
                        });
                    }
                    table.entries.push(TableEntry {
                        peer,
                        proto,
                        port_lo: lo,
                        port_hi: hi,
                        verdict: TableVerdict {
                            action: TableAction::Allow,
                            rule: rid,
                        },
                    });
                    next = u32::from(hi) + 1;
                }
                if next <= u32::from(u16::MAX) {
                    table.entries.push(TableEntry {
                        peer,
                        proto,
                        port_lo: next as u16,
                        port_hi: u16::MAX,
                        verdict: deny,
                    });
                }
            }
            table.entries.sort_by_key(|e| (e.peer, e.proto, e.port_lo));
            let tid = next_table;
            next_table += 1;
            out.tables.insert(tid, table);
            for pod in cluster.pods.values() {
                if pod.namespace == policy.namespace && policy.pod_selector.matches(&pod.labels) {
                    if let Some(ep) = out.endpoints.get_mut(&pod.key()) {
                        ep.ingress = tid;
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::compiled::{TableAction, IDENTITY_ANY};

    #[test]
    fn client_rule_is_the_last_ingress_rule_and_allows_the_measured_ports() {
        let c = cluster(10);
        let p = &c.network_policies[&format!("{SERVER_NAMESPACE}/bench")];
        assert_eq!(p.ingress.as_ref().map(Vec::len), Some(10));
        let compiled = compile(&c).expect("compiles");
        let (_, table) = server_ingress(&compiled).expect("server table");
        let client_id = compiled.addresses[&IpNet::from(IpAddr::V4(CLIENT_IP))];
        let allows = |proto: u8, port: u16| {
            table
                .entries
                .iter()
                .find(|e| {
                    e.peer == client_id
                        && e.proto == proto
                        && e.port_lo <= port
                        && port <= e.port_hi
                })
                .map(|e| e.verdict.action == TableAction::Allow)
        };
        assert_eq!(allows(6, PORT_TCP_RR), Some(true));
        assert_eq!(allows(17, PORT_UDP_RR), Some(true));
        assert_eq!(allows(6, PORT_DENIED), Some(false));
        assert!(table.entries.iter().any(|e| e.peer == IDENTITY_ANY));
    }
}
