//! The set of policy prefixes: every CIDR and `except` edge any policy mentions, plus
//! `0.0.0.0/0` and `::/0`.
//!
//! Prefixes are nested or disjoint, so for an address `a` with most specific prefix `P`
//! and any prefix `C` of the set, `a ∈ C ⇔ P ⊆ C`. That is why one identity per most
//! specific prefix decides every ipBlock membership.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::model::{ClusterPeer, ClusterPolicy, NetworkPolicy, NetworkPolicyPeer};

/// `0.0.0.0/0`: always in the set so that address lookups never miss.
pub(crate) fn default_v4() -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid"))
}

/// `::/0`: always in the set so that address lookups never miss.
pub(crate) fn default_v6() -> IpNet {
    IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).expect("/0 is valid"))
}

/// The host prefix (`/32` or `/128`) of an address.
pub(crate) fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// `net` truncated to `len` bits (`len` must not exceed the family's width).
pub(crate) fn truncate(net: IpNet, len: u8) -> IpNet {
    IpNet::new(net.addr(), len)
        .expect("length within the family width")
        .trunc()
}

/// Every prefix a NetworkPolicy mentions (ipBlock cidrs and excepts), normalized.
pub(crate) fn network_policy_prefixes(np: &NetworkPolicy) -> Vec<IpNet> {
    let mut out = Vec::new();
    for rules in [np.ingress.as_deref(), np.egress.as_deref()]
        .into_iter()
        .flatten()
    {
        for rule in rules {
            for peer in rule.peers.iter().flatten() {
                if let NetworkPolicyPeer::IpBlock(b) = peer {
                    out.push(b.cidr.trunc());
                    out.extend(b.except.iter().map(IpNet::trunc));
                }
            }
        }
    }
    out
}

/// Every prefix a cluster policy mentions (`networks` peers), normalized.
pub(crate) fn cluster_policy_prefixes(cp: &ClusterPolicy) -> Vec<IpNet> {
    let mut out = Vec::new();
    for rule in cp.ingress.iter().chain(&cp.egress) {
        for peer in &rule.peers {
            if let ClusterPeer::Networks(nets) = peer {
                out.extend(nets.iter().map(IpNet::trunc));
            }
        }
    }
    out
}

/// The policy prefix set, with the prefix lengths present per family so that a most
/// specific match costs one hash-free map probe per distinct length.
///
/// Each prefix counts the policy mentions that brought it, so that deleting the last
/// policy mentioning a CIDR retires it at once (its network identity and address entry
/// leave the maps with that change, not at the next full pass).
#[derive(Debug, Clone)]
pub(crate) struct PrefixSet {
    /// Prefix → number of mentions (the default routes hold one permanent mention).
    prefixes: BTreeMap<IpNet, usize>,
    /// Distinct prefix lengths present, IPv4, with their counts.
    lens_v4: BTreeMap<u8, usize>,
    /// Distinct prefix lengths present, IPv6, with their counts.
    lens_v6: BTreeMap<u8, usize>,
}

impl PrefixSet {
    /// The set holding only the two default routes.
    pub(crate) fn new() -> Self {
        let mut s = Self {
            prefixes: BTreeMap::new(),
            lens_v4: BTreeMap::new(),
            lens_v6: BTreeMap::new(),
        };
        s.insert(default_v4());
        s.insert(default_v6());
        s
    }

    /// Adds one mention of a prefix; returns whether the prefix was new.
    pub(crate) fn insert(&mut self, p: IpNet) -> bool {
        let p = p.trunc();
        let n = self.prefixes.entry(p).or_default();
        *n += 1;
        if *n > 1 {
            return false;
        }
        let lens = match p {
            IpNet::V4(_) => &mut self.lens_v4,
            IpNet::V6(_) => &mut self.lens_v6,
        };
        *lens.entry(p.prefix_len()).or_default() += 1;
        true
    }

    /// Drops one mention of a prefix; returns whether that was its last one (the
    /// prefix has left the set). Unknown prefixes are ignored.
    pub(crate) fn release(&mut self, p: IpNet) -> bool {
        let p = p.trunc();
        let Some(n) = self.prefixes.get_mut(&p) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        self.prefixes.remove(&p);
        let lens = match p {
            IpNet::V4(_) => &mut self.lens_v4,
            IpNet::V6(_) => &mut self.lens_v6,
        };
        if let Some(c) = lens.get_mut(&p.prefix_len()) {
            *c -= 1;
            if *c == 0 {
                lens.remove(&p.prefix_len());
            }
        }
        true
    }

    /// Whether `p` is a policy prefix.
    pub(crate) fn contains(&self, p: &IpNet) -> bool {
        self.prefixes.contains_key(p)
    }

    /// Every prefix, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.prefixes.keys()
    }

    /// The prefix lengths present in the family of `net`, longest first, not longer
    /// than `net` itself.
    pub(crate) fn lens_within(&self, net: &IpNet) -> impl Iterator<Item = u8> + '_ {
        let lens = match net {
            IpNet::V4(_) => &self.lens_v4,
            IpNet::V6(_) => &self.lens_v6,
        };
        lens.range(..=net.prefix_len()).rev().map(|(l, _)| *l)
    }

    /// The most specific prefix of the set containing `ip` (never misses: `/0` is there).
    pub(crate) fn most_specific(&self, ip: IpAddr) -> IpNet {
        let host = host_net(ip);
        for len in self.lens_within(&host) {
            let p = truncate(host, len);
            if self.contains(&p) {
                return p;
            }
        }
        unreachable!("the default routes are always present")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_prefix_is_the_longest_containing_one() {
        let mut s = PrefixSet::new();
        s.insert("10.0.0.0/8".parse().unwrap());
        s.insert("10.1.0.0/16".parse().unwrap());
        s.insert("fd00::/8".parse().unwrap());
        let p = |a: &str| s.most_specific(a.parse().unwrap()).to_string();
        assert_eq!(p("10.1.2.3"), "10.1.0.0/16");
        assert_eq!(p("10.2.2.3"), "10.0.0.0/8");
        assert_eq!(p("11.0.0.1"), "0.0.0.0/0");
        assert_eq!(p("fd00::1"), "fd00::/8");
        assert_eq!(p("2001::1"), "::/0");
    }
}
