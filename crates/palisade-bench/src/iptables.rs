//! The iptables baselines, generated from the same [`Compiled`] form Palisade loads.
//!
//! The server pod's ingress table becomes one chain, entered from `FORWARD` for packets
//! leaving through the server's host-side interface (`-o ns`), which is where an
//! iptables-based engine enforces a pod's ingress. Replies from the server leave through
//! the client's interface and never enter the chain.
//!
//! Translation (first match wins in iptables, longest prefix + exact table lookup in
//! Palisade; the two agree because of the checks below):
//!
//! 1. For each *allow* entry of a specific peer identity, in policy rule order (the
//!    entry's [`RuleOrigin::NetworkPolicy`] index), one rule per prefix of the identity:
//!    `-s PREFIX -p PROTO --dport LO:HI -j ACCEPT`. So the client's rule, last in the
//!    policy, is last in the chain.
//! 2. Deny entries of specific peers are emitted (`-j DROP`) only when an allow entry of
//!    [`IDENTITY_ANY`] could otherwise match them; otherwise the final DROP covers them.
//! 3. Allow entries of [`IDENTITY_ANY`], without `-s`.
//! 4. `-j DROP`.
//!
//! `iptables-stateful` puts `-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT` first,
//! so only a connection's first packet walks the rules. The usual remedy for long
//! address lists, ipset (`-m set`), is impossible on this kernel: it is built without
//! `ip_set`, so each entry is its own rule, as in many real clusters without ipset.
//!
//! Rules are loaded with one `iptables-legacy-restore` per configuration switch (50k
//! rules load in about 0.4 s), so switching never leaves a half-loaded chain.

use std::fmt::Write as _;

use palisade_policy::compiled::{
    Compiled, RuleOrigin, TableAction, TableEntry, IDENTITY_ANY, PROTO_OTHER,
};

use crate::policy::{prefixes_by_identity, server_ingress};
use crate::testbed::{TestBed, NODE_IF_SERVER};
use crate::BenchError;

/// The chain holding the server pod's ingress rules.
const CHAIN: &str = "PALISADE-BENCH-INGRESS";

/// Which iptables baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Every packet towards the server walks the rules.
    Flat,
    /// ESTABLISHED,RELATED accepted first.
    Stateful,
}

/// An `iptables-restore` input for the filter table.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// The restore text.
    pub text: String,
    /// Number of rules in the policy chain (excluding the jump from FORWARD).
    pub rules: usize,
}

/// Generates the rule set for `flavor` from the compiled form.
pub fn generate(compiled: &Compiled, flavor: Flavor) -> Result<RuleSet, BenchError> {
    let (_, table) = server_ingress(compiled)?;
    let prefixes = prefixes_by_identity(compiled);
    check_prefixes_do_not_nest(compiled)?;

    let rule_index = |e: &TableEntry| match compiled.rules.get(&e.verdict.rule) {
        Some(RuleOrigin::NetworkPolicy { index, .. }) => *index,
        _ => usize::MAX,
    };
    let any_allows: Vec<&TableEntry> = table
        .entries
        .iter()
        .filter(|e| e.peer == IDENTITY_ANY && e.verdict.action == TableAction::Allow)
        .collect();
    let overlaps_any_allow = |e: &TableEntry| {
        any_allows
            .iter()
            .any(|a| a.proto == e.proto && a.port_lo <= e.port_hi && e.port_lo <= a.port_hi)
    };
    let mut specific: Vec<&TableEntry> = table
        .entries
        .iter()
        .filter(|e| e.peer != IDENTITY_ANY)
        .filter(|e| e.verdict.action == TableAction::Allow || overlaps_any_allow(e))
        .collect();
    specific.sort_by_key(|e| (rule_index(e), e.peer, e.proto, e.port_lo));

    let mut body = Vec::with_capacity(specific.len() + any_allows.len() + 2);
    if flavor == Flavor::Stateful {
        body.push("-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT".to_string());
    }
    for e in &specific {
        let nets = prefixes.get(&e.peer).map(Vec::as_slice).unwrap_or_default();
        for net in nets.iter().filter(|n| matches!(n, ipnet::IpNet::V4(_))) {
            body.push(format!(
                "-s {net} {} -j {}",
                match_proto_ports(e)?,
                target(e)
            ));
        }
    }
    for e in &any_allows {
        body.push(format!("{} -j ACCEPT", match_proto_ports(e)?));
    }
    body.push("-j DROP".to_string());

    let mut text = String::with_capacity(body.len() * 72 + 256);
    text.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    let _ = writeln!(text, ":{CHAIN} - [0:0]");
    let _ = writeln!(text, "-A FORWARD -o {NODE_IF_SERVER} -j {CHAIN}");
    for r in &body {
        let _ = writeln!(text, "-A {CHAIN} {r}");
    }
    text.push_str("COMMIT\n");
    Ok(RuleSet {
        text,
        rules: body.len(),
    })
}

/// The empty filter table (used by `none` and `palisade`).
pub fn empty() -> RuleSet {
    RuleSet {
        text: "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
            .to_string(),
        rules: 0,
    }
}

/// Atomically replaces the node namespace's filter table with `rules`.
pub fn apply(bed: &TestBed, rules: &RuleSet) -> Result<(), BenchError> {
    bed.exec_with_input(&bed.node, restore_binary(), &[], &rules.text)
}

/// `iptables-legacy-restore` when installed (the baseline is iptables-legacy), else
/// whatever `iptables-restore` is.
fn restore_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/iptables-legacy-restore").exists() {
        "iptables-legacy-restore"
    } else {
        "iptables-restore"
    }
}

fn target(e: &TableEntry) -> &'static str {
    match e.verdict.action {
        TableAction::Allow => "ACCEPT",
        TableAction::Deny => "DROP",
    }
}

fn match_proto_ports(e: &TableEntry) -> Result<String, BenchError> {
    let name = match e.proto {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        PROTO_OTHER => {
            return Err(BenchError::Policy(
                "iptables generator: entries for other protocols are not supported".into(),
            ))
        }
        p => {
            return Err(BenchError::Policy(format!(
                "iptables generator: unknown protocol {p}"
            )))
        }
    };
    if e.port_lo == 0 && e.port_hi == u16::MAX {
        Ok(format!("-p {name}"))
    } else {
        Ok(format!(
            "-p {name} -m {name} --dport {}:{}",
            e.port_lo, e.port_hi
        ))
    }
}

/// First match equals longest-prefix match only if no identity's prefix contains another
/// identity's more specific prefix (apart from the catch-all /0s, which carry no
/// specific-peer entries). The benchmark's /32s satisfy this; refuse anything else
/// rather than generate a wrong baseline.
fn check_prefixes_do_not_nest(compiled: &Compiled) -> Result<(), BenchError> {
    let mut prev: Option<&ipnet::IpNet> = None;
    for net in compiled.addresses.keys().filter(|n| n.prefix_len() > 0) {
        if let Some(p) = prev {
            if p.contains(net) {
                return Err(BenchError::Policy(format!(
                    "iptables generator: prefix {net} nests inside {p}; not supported"
                )));
            }
        }
        prev = Some(net);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{cluster, compile};

    #[test]
    fn flat_chain_has_one_rule_per_entry_with_the_client_rule_last_before_drop() {
        let compiled = compile(&cluster(10)).expect("compiles");
        let rs = generate(&compiled, Flavor::Flat).expect("generates");
        let lines: Vec<&str> = rs
            .text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {CHAIN}")))
            .collect();
        // 9 filler entries, client TCP + UDP, final DROP.
        assert_eq!(lines.len(), 12, "{}", rs.text);
        assert!(lines[9].contains("-s 10.77.1.2/32"), "{}", lines[9]);
        assert!(lines[10].contains("-s 10.77.1.2/32"), "{}", lines[10]);
        assert!(lines[11].ends_with("-j DROP"));
    }

    #[test]
    fn stateful_chain_accepts_established_first() {
        let compiled = compile(&cluster(10)).expect("compiles");
        let rs = generate(&compiled, Flavor::Stateful).expect("generates");
        let first = rs
            .text
            .lines()
            .find(|l| l.starts_with(&format!("-A {CHAIN}")))
            .expect("rules");
        assert!(first.contains("ESTABLISHED,RELATED"));
        assert_eq!(rs.rules, 13);
    }
}
