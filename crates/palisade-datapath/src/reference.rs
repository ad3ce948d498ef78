//! A small reference of the compiled-form lookup ([`palisade_policy::compiled`] "Shape"),
//! written for clarity: linear scans, no prefixes. It is the oracle of the
//! differential test until `palisade_policy::verdict::evaluate` is wired in.

use std::net::IpAddr;

use palisade_policy::compiled::{
    Compiled, IdentityId, TableId, TableVerdict, IDENTITY_ANY, PROTO_OTHER,
};

/// Longest prefix in `compiled.addresses` containing `addr`.
pub fn identity_of(compiled: &Compiled, addr: IpAddr) -> Option<IdentityId> {
    compiled
        .addresses
        .iter()
        .filter(|(net, _)| net.contains(&addr))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, id)| *id)
}

/// Protocol class of an IP protocol number.
pub fn proto_class(proto: u8) -> u8 {
    match proto {
        6 | 17 | 132 => proto,
        _ => PROTO_OTHER,
    }
}

/// Table lookup with the [`IDENTITY_ANY`] fallback: the peer's own entries for
/// this class if it has any, else the ANY entries.
pub fn table_lookup(
    compiled: &Compiled,
    table: TableId,
    peer: IdentityId,
    proto: u8,
    dport: u16,
) -> Option<TableVerdict> {
    let t = compiled.tables.get(&table)?;
    let class = proto_class(proto);
    let port = if class == PROTO_OTHER { 0 } else { dport };
    let find = |p: IdentityId| {
        let mut has = false;
        for e in t.entries.iter().filter(|e| e.peer == p && e.proto == class) {
            has = true;
            if e.port_lo <= port && port <= e.port_hi {
                return (true, Some(e.verdict));
            }
        }
        (has, None)
    };
    match find(peer) {
        (true, v) => v,
        (false, _) => find(IDENTITY_ANY).1,
    }
}

/// The verdict for a new flow: `table` of the endpoint's direction, `peer` the
/// remote address (destination for egress, source for ingress).
pub fn lookup(
    compiled: &Compiled,
    table: TableId,
    peer: IpAddr,
    proto: u8,
    dport: u16,
) -> Option<TableVerdict> {
    let id = identity_of(compiled, peer)?;
    table_lookup(compiled, table, id, proto, dport)
}
