//! Encoding of the compiled form ([`palisade_policy::compiled`]) into map keys and
//! values, and decoding back for inspection. Pure functions, no syscalls: the loader
//! writes what these produce.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use palisade_policy::compiled::{
    EndpointEntry, IdentityId, RuleTable, TableAction, TableEntry, TableId, TableVerdict,
    PROTO_OTHER,
};

use crate::abi::{
    Addr4Key, Addr6Key, EndpointValue, PolicyKey, PolicyMatch, PolicyValue, ACTION_ALLOW,
    ACTION_DENY, MAX_IPS4, MAX_IPS6, POLICY_FIXED_BITS,
};

/// Errors turning compiled state into map entries. Not retryable: the input is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// More addresses than the endpoint layout holds.
    #[error("endpoint {pod}: {count} IPv{family} addresses, at most {max} fit")]
    TooManyAddresses {
        /// `namespace/name`.
        pod: String,
        /// 4 or 6.
        family: u8,
        /// Addresses given.
        count: usize,
        /// Addresses that fit.
        max: usize,
    },
    /// A port range with `port_lo > port_hi`.
    #[error("table {table}: entry for peer {peer} proto {proto} has empty port range {lo}-{hi}")]
    EmptyRange {
        /// Table.
        table: TableId,
        /// Peer.
        peer: IdentityId,
        /// Protocol class.
        proto: u8,
        /// First port.
        lo: u16,
        /// Last port.
        hi: u16,
    },
}

/// Splits `lo..=hi` into the fewest aligned power-of-two blocks, as
/// `(first port, prefix length in bits 0..=16)`; at most 30 blocks.
pub fn port_range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // Largest block aligned at lo that stays within hi.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

/// The port range a policy-key prefix covers.
pub fn prefix_port_range(port: u16, plen: u8) -> (u16, u16) {
    let span = 1u32 << (16 - u32::from(plen));
    let lo = u32::from(port) & !(span - 1);
    (lo as u16, (lo + span - 1) as u16)
}

/// The LPM key for `(table, peer, proto class, first port of the block / plen)`.
pub fn policy_key(table: TableId, peer: IdentityId, proto: u8, port: u16, plen: u8) -> PolicyKey {
    PolicyKey {
        prefixlen: POLICY_FIXED_BITS + u32::from(plen),
        table,
        peer,
        proto,
        pad: 0,
        dport: port.to_be(),
    }
}

impl PolicyKey {
    /// Splits off `prefixlen` for aya's `lpm_trie::Key`.
    pub fn to_lpm(self) -> aya::maps::lpm_trie::Key<PolicyMatch> {
        aya::maps::lpm_trie::Key::new(
            self.prefixlen,
            PolicyMatch {
                table: self.table,
                peer: self.peer,
                proto: self.proto,
                pad: 0,
                dport: self.dport,
            },
        )
    }

    /// Inverse of [`PolicyKey::to_lpm`].
    pub fn from_lpm(k: &aya::maps::lpm_trie::Key<PolicyMatch>) -> Self {
        let d = k.data();
        Self {
            prefixlen: k.prefix_len(),
            table: d.table,
            peer: d.peer,
            proto: d.proto,
            pad: 0,
            dport: d.dport,
        }
    }

    /// `(port_lo, port_hi)` this key covers.
    pub fn port_range(&self) -> (u16, u16) {
        prefix_port_range(
            u16::from_be(self.dport),
            (self.prefixlen - POLICY_FIXED_BITS) as u8,
        )
    }
}

/// Encodes a verdict.
pub fn policy_value(v: TableVerdict) -> PolicyValue {
    PolicyValue {
        rule_id: v.rule,
        action: match v.action {
            TableAction::Allow => ACTION_ALLOW,
            TableAction::Deny => ACTION_DENY,
        },
        pad: [0; 3],
    }
}

/// Decodes a verdict (anything but ALLOW is Deny, as in the program).
pub fn table_verdict(v: &PolicyValue) -> TableVerdict {
    TableVerdict {
        action: if v.action == ACTION_ALLOW {
            TableAction::Allow
        } else {
            TableAction::Deny
        },
        rule: v.rule_id,
    }
}

/// Encodes table entries into policy map entries (range -> prefix expansion).
/// Class [`PROTO_OTHER`] entries are stored with port 0 /16, which is what the
/// program looks up for every other protocol.
pub fn encode_entries(
    table: TableId,
    entries: &[TableEntry],
) -> Result<Vec<(PolicyKey, PolicyValue)>, EncodeError> {
    let mut out = Vec::with_capacity(entries.len() * 2);
    for e in entries {
        if e.port_lo > e.port_hi {
            return Err(EncodeError::EmptyRange {
                table,
                peer: e.peer,
                proto: e.proto,
                lo: e.port_lo,
                hi: e.port_hi,
            });
        }
        let value = policy_value(e.verdict);
        if e.proto == PROTO_OTHER {
            out.push((policy_key(table, e.peer, PROTO_OTHER, 0, 16), value));
            continue;
        }
        for (port, plen) in port_range_prefixes(e.port_lo, e.port_hi) {
            out.push((policy_key(table, e.peer, e.proto, port, plen), value));
        }
    }
    Ok(out)
}

/// Encodes a whole table.
pub fn encode_table(
    table: TableId,
    t: &RuleTable,
) -> Result<Vec<(PolicyKey, PolicyValue)>, EncodeError> {
    encode_entries(table, &t.entries)
}

/// Decodes policy map entries of ONE table back into sorted table entries, merging
/// adjacent blocks with the same verdict into ranges.
pub fn decode_entries<'a>(
    entries: impl IntoIterator<Item = (&'a PolicyKey, &'a PolicyValue)>,
) -> RuleTable {
    let mut runs: BTreeMap<(IdentityId, u8, u16), (u16, TableVerdict)> = BTreeMap::new();
    for (k, v) in entries {
        let (lo, hi) = k.port_range();
        runs.insert((k.peer, k.proto, lo), (hi, table_verdict(v)));
    }
    let mut out: Vec<TableEntry> = Vec::new();
    for ((peer, proto, lo), (hi, verdict)) in runs {
        if let Some(last) = out.last_mut() {
            if last.peer == peer
                && last.proto == proto
                && last.verdict == verdict
                && u32::from(last.port_hi) + 1 == u32::from(lo)
            {
                last.port_hi = hi;
                continue;
            }
        }
        let (port_lo, port_hi) = if proto == PROTO_OTHER {
            (0, 0)
        } else {
            (lo, hi)
        };
        out.push(TableEntry {
            peer,
            proto,
            port_lo,
            port_hi,
            verdict,
        });
    }
    RuleTable { entries: out }
}

/// An address-map key of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrKey {
    /// `palisade_addr4`
    V4(Addr4Key),
    /// `palisade_addr6`
    V6(Addr6Key),
}

/// Encodes a prefix (host bits are cleared, as the trie ignores them anyway).
pub fn addr_key(net: &IpNet) -> AddrKey {
    match net.trunc() {
        IpNet::V4(n) => AddrKey::V4(Addr4Key {
            prefixlen: u32::from(n.prefix_len()),
            addr: n.addr().octets(),
        }),
        IpNet::V6(n) => AddrKey::V6(Addr6Key {
            prefixlen: u32::from(n.prefix_len()),
            addr: n.addr().octets(),
        }),
    }
}

/// Decodes an address key.
pub fn addr_net(k: &AddrKey) -> IpNet {
    match k {
        AddrKey::V4(k) => {
            IpNet::new(IpAddr::from(k.addr), k.prefixlen as u8).expect("prefix <= 32")
        }
        AddrKey::V6(k) => {
            IpNet::new(IpAddr::from(k.addr), k.prefixlen as u8).expect("prefix <= 128")
        }
    }
}

/// Encodes an endpoint for the `palisade_endpoints` map.
pub fn endpoint_value(
    e: &EndpointEntry,
    slot: u32,
    flags: u32,
) -> Result<EndpointValue, EncodeError> {
    let mut v = EndpointValue {
        ingress_table: e.ingress,
        egress_table: e.egress,
        slot,
        flags,
        generation: e.generation,
        ..Default::default()
    };
    let v4: Vec<_> = e
        .ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(a) => Some(a.octets()),
            _ => None,
        })
        .collect();
    let v6: Vec<_> = e
        .ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(a) => Some(a.octets()),
            _ => None,
        })
        .collect();
    if v4.len() > MAX_IPS4 {
        return Err(EncodeError::TooManyAddresses {
            pod: e.pod.clone(),
            family: 4,
            count: v4.len(),
            max: MAX_IPS4,
        });
    }
    if v6.len() > MAX_IPS6 {
        return Err(EncodeError::TooManyAddresses {
            pod: e.pod.clone(),
            family: 6,
            count: v6.len(),
            max: MAX_IPS6,
        });
    }
    for (i, a) in v4.iter().enumerate() {
        v.ipv4[i] = *a;
    }
    for (i, a) in v6.iter().enumerate() {
        v.ipv6[i] = *a;
    }
    v.n_ipv4 = v4.len() as u8;
    v.n_ipv6 = v6.len() as u8;
    Ok(v)
}

/// The addresses an endpoint value holds.
pub fn endpoint_ips(v: &EndpointValue) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = v.ipv4[..usize::from(v.n_ipv4).min(MAX_IPS4)]
        .iter()
        .map(|a| IpAddr::from(*a))
        .collect();
    out.extend(
        v.ipv6[..usize::from(v.n_ipv6).min(MAX_IPS6)]
            .iter()
            .map(|a| IpAddr::from(*a)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_policy::compiled::TableAction;

    #[test]
    fn port_ranges_expand_to_minimal_disjoint_prefixes() {
        assert_eq!(port_range_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_range_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_range_prefixes(1, 65535).len(), 16);
        assert_eq!(port_range_prefixes(1, 65534).len(), 30);
        for (lo, hi) in [
            (0u16, 0u16),
            (1, 1),
            (5, 1000),
            (1024, 2047),
            (8000, 8080),
            (65535, 65535),
            (3, 65534),
        ] {
            let mut covered = Vec::new();
            for (p, l) in port_range_prefixes(lo, hi) {
                let (a, b) = prefix_port_range(p, l);
                assert_eq!(a, p, "prefix aligned");
                covered.push((a, b));
            }
            assert_eq!(covered.first().unwrap().0, lo);
            assert_eq!(covered.last().unwrap().1, hi);
            for w in covered.windows(2) {
                assert_eq!(u32::from(w[0].1) + 1, u32::from(w[1].0), "contiguous");
            }
        }
    }

    #[test]
    fn table_entries_round_trip_through_the_encoding() {
        let v = |a, r| TableVerdict { action: a, rule: r };
        let t = RuleTable {
            entries: vec![
                TableEntry {
                    peer: 0,
                    proto: 0,
                    port_lo: 0,
                    port_hi: 0,
                    verdict: v(TableAction::Deny, 1),
                },
                TableEntry {
                    peer: 0,
                    proto: 6,
                    port_lo: 0,
                    port_hi: 79,
                    verdict: v(TableAction::Deny, 1),
                },
                TableEntry {
                    peer: 0,
                    proto: 6,
                    port_lo: 80,
                    port_hi: 8080,
                    verdict: v(TableAction::Allow, 2),
                },
                TableEntry {
                    peer: 0,
                    proto: 6,
                    port_lo: 8081,
                    port_hi: 65535,
                    verdict: v(TableAction::Deny, 1),
                },
                TableEntry {
                    peer: 7,
                    proto: 17,
                    port_lo: 0,
                    port_hi: 65535,
                    verdict: v(TableAction::Allow, 3),
                },
            ],
        };
        let enc = encode_table(9, &t).unwrap();
        assert!(enc.iter().all(|(k, _)| k.table == 9));
        let dec = decode_entries(enc.iter().map(|(k, v)| (k, v)));
        assert_eq!(dec, t);
    }
}
