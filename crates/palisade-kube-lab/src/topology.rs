//! The lab cluster's network: every piece in a network namespace Palisade creates.
//!
//! ```text
//!   <lab>-api  eth0 10.240.0.2/24  fd00:240::2/64     (etcd, API server, controllers)
//!                 |
//!   <lab>-net  router: api 10.240.0.1, nI 10.240.I.1 (routes 10.244.I.0/24 -> node I)
//!                 |
//!   <lab>-nI   eth0 10.240.I.2/24  fd00:240:0:I::2/64 (agent, kube-proxy, pods' veths)
//!              pods: 10.244.I.0/24, fd00:244:0:I::/64
//!
//!   <lab>-imds eth0 169.254.169.254/30  fd00:ec2::254/64  (router side .253, ::1)
//! ```
//!
//! `<lab>-imds` stands in for the instance metadata service that every EKS pod can
//! reach by default at 169.254.169.254 (and `fd00:ec2::254` on IPv6 clusters): pods
//! reach it through their node and the router, as they reach it through the node's
//! primary interface on EC2, so a policy that must block it (seeds/002) is tested
//! against a real address. Nothing listens there until a test or a user starts a
//! server in that namespace.
//!
//! Routed, not bridged: each node owns its pod CIDRs and the router sends them to it,
//! as a VPC route table does; pods keep their addresses across nodes (no NAT).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use palisade_lab::netns::NetNs;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The most nodes a lab cluster has (one /24 of 10.240.0.0/16 and 10.244.0.0/16 each).
pub const MAX_NODES: usize = 250;
/// Every pod CIDR lies in this one (kube-proxy's `--cluster-cidr`).
pub const CLUSTER_CIDR_V4: &str = "10.244.0.0/16";
/// The IPv6 counterpart of [`CLUSTER_CIDR_V4`].
pub const CLUSTER_CIDR_V6: &str = "fd00:244::/48";

/// The instance metadata service's IPv4 address on EC2 (link-local).
pub const IMDS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Its IPv6 address on Nitro instances.
pub const IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Sysctls of the router and node namespaces (never of the root one), with why.
const FORWARDING: &[(&str, &str)] = &[
    // They route: the router between nodes, a node between its pods and the rest.
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
    // Addresses usable at once, not ~1 s "tentative".
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/all/accept_dad", "0"),
    // Asymmetric paths are normal here (a pod's reply leaves by another veth).
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
];

/// One end of a veth: its addresses (the IPv6 one is a /64).
struct Side {
    v4: IpAddr,
    v4_len: u8,
    v6: IpAddr,
}

/// One node's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNet {
    /// The node's name, `nI` (also the Kubernetes Node name).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its addresses (the Node's InternalIPs), IPv4 first.
    pub ips: Vec<IpAddr>,
    /// Its pod CIDRs, IPv4 first.
    pub pod_cidrs: Vec<String>,
}

/// The whole network, as recorded in the lab's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// The router's namespace.
    pub router: String,
    /// The API server's namespace.
    pub api_netns: String,
    /// The API server's addresses, IPv4 first.
    pub api_ips: Vec<IpAddr>,
    /// The metadata service stand-in's namespace (holds [`IMDS_V4`] and [`IMDS_V6`]);
    /// empty in the state of a lab made before it existed.
    #[serde(default)]
    pub imds_netns: String,
    /// The nodes.
    pub nodes: Vec<NodeNet>,
}

impl Topology {
    /// Creates the namespaces and links for lab `lab` with `nodes` nodes. On error,
    /// removes whatever it made.
    pub fn create(lab: &str, nodes: usize) -> Result<Self, Error> {
        if nodes == 0 || nodes > MAX_NODES {
            return Err(Error::Command {
                command: format!("lab {lab} --nodes {nodes}"),
                status: "refused".into(),
                stderr: format!("a lab cluster has 1 to {MAX_NODES} nodes"),
            });
        }
        let topo = Self {
            router: format!("{lab}-net"),
            api_netns: format!("{lab}-api"),
            api_ips: vec![v4(0, 2), v6(0, 2)],
            imds_netns: format!("{lab}-imds"),
            nodes: (1..=nodes)
                .map(|i| NodeNet {
                    name: format!("n{i}"),
                    netns: format!("{lab}-n{i}"),
                    ips: vec![v4(i, 2), v6(i, 2)],
                    pod_cidrs: vec![format!("10.244.{i}.0/24"), format!("fd00:244:0:{i:x}::/64")],
                })
                .collect(),
        };
        match topo.build() {
            Ok(()) => Ok(topo),
            Err(e) => {
                topo.delete();
                Err(e)
            }
        }
    }

    fn build(&self) -> Result<(), Error> {
        let netns = |name: &str| {
            NetNs::create(name)
                .map(NetNs::persist)
                .map_err(|e| cmd_error(&format!("ip netns add {name}"), e.to_string()))
        };
        netns(&self.router)?;
        sysctls(&self.router)?;
        netns(&self.api_netns)?;
        self.link(&self.api_netns, "api", 0)?;
        netns(&self.imds_netns)?;
        self.imds_link()?;
        for (i, node) in self.nodes.iter().enumerate() {
            netns(&node.netns)?;
            sysctls(&node.netns)?;
            self.link(&node.netns, &node.name, i + 1)?;
            for (cidr, via) in node.pod_cidrs.iter().zip(&node.ips) {
                ip(
                    &self.router,
                    &["route", "add", cidr, "via", &via.to_string()],
                )?;
            }
        }
        Ok(())
    }

    /// A veth `eth0` in `ns` (addresses .2 of link `index`) and `router_if` in the
    /// router (.1), with `ns`'s default routes through the router.
    fn link(&self, ns: &str, router_if: &str, index: usize) -> Result<(), Error> {
        let side = |host| Side {
            v4: v4(index, host),
            v4_len: 24,
            v6: v6(index, host),
        };
        self.veth(ns, router_if, side(1), side(2))
    }

    /// The veth between the router (`imds`) and the metadata stand-in (`eth0`): a /30
    /// and a /64 of their own, the stand-in's default routes through the router. The
    /// router reaches both addresses on-link, so no node needs a route of its own.
    fn imds_link(&self) -> Result<(), Error> {
        let router = Side {
            v4: IpAddr::V4(Ipv4Addr::from(u32::from(IMDS_V4) - 1)),
            v4_len: 30,
            v6: IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 1)),
        };
        let inside = Side {
            v4: IpAddr::V4(IMDS_V4),
            v4_len: 30,
            v6: IpAddr::V6(IMDS_V6),
        };
        self.veth(&self.imds_netns, "imds", router, inside)
    }

    /// A veth `router_if` (router) to `eth0` (`ns`) with these addresses, both ends
    /// and loopback up, and `ns`'s default routes via the router's end.
    fn veth(&self, ns: &str, router_if: &str, router: Side, inside: Side) -> Result<(), Error> {
        ip(
            &self.router,
            &[
                "link", "add", router_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        for (netns, ifname, a) in [
            (self.router.as_str(), router_if, &router),
            (ns, "eth0", &inside),
        ] {
            let v4 = format!("{}/{}", a.v4, a.v4_len);
            let v6 = format!("{}/64", a.v6);
            ip(netns, &["addr", "add", &v4, "dev", ifname])?;
            ip(netns, &["addr", "add", &v6, "dev", ifname, "nodad"])?;
            ip(netns, &["link", "set", ifname, "up"])?;
            ip(netns, &["link", "set", "lo", "up"])?;
        }
        ip(
            ns,
            &["route", "add", "default", "via", &router.v4.to_string()],
        )?;
        ip(
            ns,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &router.v6.to_string(),
            ],
        )
    }

    /// Deletes every namespace (their veths go with them). Returns what failed.
    pub fn delete(&self) -> Vec<String> {
        let names = self
            .nodes
            .iter()
            .map(|n| n.netns.as_str())
            .chain([self.api_netns.as_str(), self.router.as_str()])
            .chain((!self.imds_netns.is_empty()).then_some(self.imds_netns.as_str()));
        names
            .filter_map(|n| NetNs::delete(n).err().map(|e| format!("netns {n}: {e}")))
            .collect()
    }

    /// The path of the API server's namespace, for setns(2).
    pub fn api_netns_path(&self) -> std::path::PathBuf {
        NetNs::open(&self.api_netns).path()
    }
}

/// 10.240.LINK.HOST
fn v4(link: usize, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 240, link as u8, host))
}

/// fd00:240:0:LINK::HOST
fn v6(link: usize, host: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        0x240,
        0,
        link as u16,
        0,
        0,
        0,
        host.into(),
    ))
}

fn sysctls(ns: &str) -> Result<(), Error> {
    // `open` does not own the namespace: dropping it deletes nothing.
    let handle = NetNs::open(ns);
    FORWARDING
        .iter()
        .try_for_each(|(k, v)| handle.sysctl(k, v))
        .map_err(|e| cmd_error(&format!("sysctl in {ns}"), e.to_string()))
}

/// `ip -n NS ARGS...`.
fn ip(ns: &str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            program: "ip".into(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        command: format!("ip -n {ns} {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn cmd_error(command: &str, stderr: String) -> Error {
    Error::Command {
        command: command.to_string(),
        status: "failed".into(),
        stderr,
    }
}
