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
        service_account: "default".into(),
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

/// Compiles the cluster with the policy core's compiler, the same call the agent makes.
pub fn compile(cluster: &Cluster) -> Compiled {
    palisade_policy::compile::compile(cluster)
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

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::compiled::{TableAction, IDENTITY_ANY};

    #[test]
    fn client_rule_is_the_last_ingress_rule_and_allows_the_measured_ports() {
        let c = cluster(10);
        let p = &c.network_policies[&format!("{SERVER_NAMESPACE}/bench")];
        assert_eq!(p.ingress.as_ref().map(Vec::len), Some(10));
        let compiled = compile(&c);
        compiled.check().expect("compiled form is consistent");
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
