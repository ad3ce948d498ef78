//! What is evaluated: a connection between two peers, and how peers are resolved.
//!
//! ## Resolution (the choice made here, see `docs/semantics.md`)
//!
//! A flow names each side either as a pod (`namespace/name`) or as an address:
//!
//! - An address that belongs to a pod that is not host-network **is that pod**:
//!   `--to 10.244.0.5` and `--to default/web` give the same answer when `default/web`
//!   has that address.
//! - An address that belongs to nothing, to a node or to a host-network pod is an
//!   outside peer: never a policy subject, never matched by pod selectors, matched by
//!   `ipBlock`, `networks` and `nodes` only.
//! - A pod named by name is seen at **its address of the flow's family**. The family is
//!   that of the first side given as an address (source first); when both sides are
//!   named pods, it is the family of the source pod's first address (its primary
//!   family), falling back to the destination's. A pod without an address of that
//!   family has no address: `ipBlock` peers do not match it, pod selectors still do.
//!
//! [`Flow::between`] builds the fully explicit form (both sides as addresses of one
//! family), which is what the datapath sees and what oracle tests should use.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::{Cluster, Protocol};

/// One side of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Peer {
    /// A pod by `namespace/name`.
    Pod(String),
    /// An address (which may belong to a pod; see the module docs).
    Ip(IpAddr),
}

impl FromStr for Peer {
    type Err = std::convert::Infallible;
    /// An IP address parses as [`Peer::Ip`], anything else as a pod key.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.parse::<IpAddr>() {
            Ok(ip) => Peer::Ip(ip),
            Err(_) => Peer::Pod(s.to_string()),
        })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pod(key) => f.write_str(key),
            Peer::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

/// A new connection from `src` to `dst`. Replies are not flows: the datapath lets
/// them through by connection tracking, and the evaluator never sees them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flow {
    /// Who opens the connection.
    pub src: Peer,
    /// Who it is opened to.
    pub dst: Peer,
    /// IANA IP protocol number: 6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6, ...
    pub protocol: u8,
    /// Destination port; 0 for protocols without ports.
    pub port: u16,
}

/// Why [`Flow::between`] could not build a flow.
///
/// Not retryable with the same cluster snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// No pod has this `namespace/name`.
    #[error("pod {0} not found")]
    UnknownPod(String),
    /// The pod has no address of the requested family (unscheduled or single-stack).
    #[error("pod {pod} has no {family:?} address")]
    NoAddress {
        /// `namespace/name`.
        pod: String,
        /// The family asked for.
        family: IpFamily,
    },
}

impl Flow {
    /// A flow with any protocol number.
    pub fn new(src: Peer, dst: Peer, protocol: u8, port: u16) -> Self {
        Flow {
            src,
            dst,
            protocol,
            port,
        }
    }

    /// A flow of a port-carrying protocol (TCP, UDP, SCTP).
    pub fn with_protocol(src: Peer, dst: Peer, protocol: Protocol, port: u16) -> Self {
        Flow::new(src, dst, protocol.number(), port)
    }

    /// The explicit form: both pods at their address of `family`, as the datapath sees
    /// them. Fails if a pod is unknown or has no address of that family.
    pub fn between(
        cluster: &Cluster,
        src: &str,
        dst: &str,
        family: IpFamily,
        protocol: u8,
        port: u16,
    ) -> Result<Flow, FlowError> {
        let addr = |key: &str| -> Result<IpAddr, FlowError> {
            let pod = cluster
                .pods
                .get(key)
                .ok_or_else(|| FlowError::UnknownPod(key.to_string()))?;
            pod.ips
                .iter()
                .copied()
                .find(|ip| IpFamily::of(ip) == family)
                .ok_or_else(|| FlowError::NoAddress {
                    pod: key.to_string(),
                    family,
                })
        };
        Ok(Flow::new(
            Peer::Ip(addr(src)?),
            Peer::Ip(addr(dst)?),
            protocol,
            port,
        ))
    }

    /// The family named pods are seen in (see the module docs); `None` when neither
    /// side has any address.
    pub fn family(&self, cluster: &Cluster) -> Option<IpFamily> {
        let explicit = [&self.src, &self.dst].into_iter().find_map(|p| match p {
            Peer::Ip(ip) => Some(IpFamily::of(ip)),
            Peer::Pod(_) => None,
        });
        explicit.or_else(|| {
            [&self.src, &self.dst].into_iter().find_map(|p| match p {
                Peer::Pod(key) => cluster.pods.get(key)?.ips.first().map(IpFamily::of),
                Peer::Ip(_) => None,
            })
        })
    }
}

impl fmt::Display for Flow {
    /// `src -> dst 80/TCP`, or `src -> dst proto 1` for other protocols.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Protocol::from_number(self.protocol) {
            Some(p) => write!(f, "{} -> {} {}/{}", self.src, self.dst, self.port, p),
            None => write!(f, "{} -> {} proto {}", self.src, self.dst, self.protocol),
        }
    }
}
