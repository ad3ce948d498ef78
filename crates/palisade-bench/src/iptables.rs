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
use std::net::IpAddr;

use ipnet::IpNet;

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

/// One rule of the policy chain, kept structured so tests can evaluate the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRule {
    /// `-m conntrack --ctstate ESTABLISHED,RELATED` (matches no new flow).
    pub established: bool,
    /// `-s`.
    pub src: Option<IpNet>,
    /// `-p` (6, 17, 132).
    pub proto: Option<u8>,
    /// `--dport lo:hi`.
    pub dports: Option<(u16, u16)>,
    /// `-j ACCEPT` or `-j DROP`.
    pub accept: bool,
}

impl ChainRule {
    fn render(&self) -> Result<String, BenchError> {
        let mut r = String::new();
        if self.established {
            r.push_str("-m conntrack --ctstate ESTABLISHED,RELATED ");
        }
        if let Some(src) = self.src {
            let _ = write!(r, "-s {src} ");
        }
        if let Some(proto) = self.proto {
            let name = match proto {
                6 => "tcp",
                17 => "udp",
                132 => "sctp",
                p => {
                    return Err(BenchError::Policy(format!(
                        "iptables generator: protocol {p} not supported"
                    )))
                }
            };
            let _ = write!(r, "-p {name} ");
            if let Some((lo, hi)) = self.dports {
                let _ = write!(r, "-m {name} --dport {lo}:{hi} ");
            }
        }
        r.push_str(if self.accept { "-j ACCEPT" } else { "-j DROP" });
        Ok(r)
    }

    /// Whether the first packet of a new flow matches.
    pub fn matches_new(&self, src: IpAddr, proto: u8, dport: u16) -> bool {
        !self.established
            && self.src.is_none_or(|n| n.contains(&src))
            && self.proto.is_none_or(|p| p == proto)
            && self
                .dports
                .is_none_or(|(lo, hi)| lo <= dport && dport <= hi)
    }
}

/// An `iptables-restore` input for the filter table.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// The policy chain's rules, in order.
    pub chain: Vec<ChainRule>,
    /// The restore text.
    pub text: String,
    /// Number of rules in the policy chain (excluding the jump from FORWARD).
    pub rules: usize,
}

impl RuleSet {
    /// First-match verdict of the chain for a new flow (`true`: accepted).
    pub fn accepts_new(&self, src: IpAddr, proto: u8, dport: u16) -> bool {
        self.chain
            .iter()
            .find(|r| r.matches_new(src, proto, dport))
            .is_some_and(|r| r.accept)
    }
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

    let mut chain = Vec::with_capacity(specific.len() + any_allows.len() + 2);
    if flavor == Flavor::Stateful {
        chain.push(ChainRule {
            established: true,
            src: None,
            proto: None,
            dports: None,
            accept: true,
        });
    }
    for e in &specific {
        let nets = prefixes.get(&e.peer).map(Vec::as_slice).unwrap_or_default();
        for net in nets.iter().filter(|n| matches!(n, IpNet::V4(_))) {
            chain.push(rule_for(e, Some(*net))?);
        }
    }
    for e in &any_allows {
        chain.push(rule_for(e, None)?);
    }
    chain.push(ChainRule {
        established: false,
        src: None,
        proto: None,
        dports: None,
        accept: false,
    });

    let mut text = String::with_capacity(chain.len() * 72 + 256);
    text.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    let _ = writeln!(text, ":{CHAIN} - [0:0]");
    let _ = writeln!(text, "-A FORWARD -o {NODE_IF_SERVER} -j {CHAIN}");
    for r in &chain {
        let _ = writeln!(text, "-A {CHAIN} {}", r.render()?);
    }
    text.push_str("COMMIT\n");
    Ok(RuleSet {
        rules: chain.len(),
        chain,
        text,
    })
}

/// The empty filter table (used by `none` and `palisade`).
pub fn empty() -> RuleSet {
    RuleSet {
        chain: Vec::new(),
        text: "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
            .to_string(),
        rules: 0,
    }
}

/// The baseline is iptables-legacy, called by name: the machine's default `iptables`
/// (an update-alternatives choice, nft on Debian 12) is neither used nor changed.
/// Debian's `iptables` package installs it.
const RESTORE: &str = "iptables-legacy-restore";

/// Atomically replaces the node namespace's filter table with `rules`.
pub fn apply(bed: &TestBed, rules: &RuleSet) -> Result<(), BenchError> {
    bed.exec_with_input(&bed.node, RESTORE, &[], &rules.text)
}

fn rule_for(e: &TableEntry, src: Option<IpNet>) -> Result<ChainRule, BenchError> {
    if e.proto == PROTO_OTHER {
        return Err(BenchError::Policy(
            "iptables generator: entries for other protocols are not supported".into(),
        ));
    }
    let all_ports = e.port_lo == 0 && e.port_hi == u16::MAX;
    Ok(ChainRule {
        established: false,
        src,
        proto: Some(e.proto),
        dports: (!all_ports).then_some((e.port_lo, e.port_hi)),
        accept: e.verdict.action == TableAction::Allow,
    })
}

/// First match equals longest-prefix match only if no identity's prefix contains another
/// identity's more specific prefix (apart from the catch-all /0s, which carry no
/// specific-peer entries). The benchmark's /32s satisfy this; refuse anything else
/// rather than generate a wrong baseline.
fn check_prefixes_do_not_nest(compiled: &Compiled) -> Result<(), BenchError> {
    let mut prev: Option<&IpNet> = None;
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

    /// Issue 8, "Leave the user's machine as it was": nothing switches the machine's
    /// iptables alternative, and no code or test calls the default `iptables`
    /// (whose meaning that switch would change); they name `iptables-legacy*`.
    #[test]
    fn nothing_uses_or_switches_the_default_iptables() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let setup = std::fs::read_to_string(repo.join("scripts/setup.sh")).expect("setup.sh");
        assert!(
            !setup.contains("update-alternatives"),
            "scripts/setup.sh must leave the iptables alternatives alone"
        );
        // Built at run time so that this file does not match itself.
        let bare: Vec<String> = ["ip", "ip6"]
            .iter()
            .flat_map(|f| ["", "-restore"].map(|s| format!("\"{f}tables{s}\"")))
            .collect();
        // `package: "iptables"` names the Debian package, not a program.
        let (files, found) = palisade_testkit::rust_lines_matching(&repo.join("crates"), |line| {
            bare.iter().any(|b| line.contains(b.as_str())) && !line.contains("package:")
        });
        assert!(
            files > 50,
            "walked only {files} Rust files under {}",
            repo.display()
        );
        assert!(
            found.is_empty(),
            "calls of the default iptables:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn flat_chain_has_one_rule_per_entry_with_the_client_rule_last_before_drop() {
        let compiled = compile(&cluster(10));
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
    fn generated_chain_decides_every_new_flow_like_the_compiled_lookup() {
        let compiled = compile(&cluster(200));
        let (tid, _) = server_ingress(&compiled).expect("server table");
        let rs = generate(&compiled, Flavor::Flat).expect("generates");
        let srcs: Vec<IpAddr> = [
            "10.77.1.2",
            "10.77.1.3",
            "172.16.0.1",
            "172.16.0.2",
            "172.16.0.199",
            "172.16.0.200",
            "192.0.2.1",
        ]
        .iter()
        .map(|s| s.parse().expect("ip"))
        .collect();
        for src in srcs {
            for proto in [6u8, 17] {
                for port in [
                    0u16, 999, 1000, 1001, 1003, 1004, 1100, 1197, 7001, 7002, 7004, 7005, 7999,
                    65535,
                ] {
                    let id = compiled.lookup_identity(src);
                    let want = compiled.lookup(tid, id, proto, port).action == TableAction::Allow;
                    assert_eq!(
                        rs.accepts_new(src, proto, port),
                        want,
                        "{src} proto {proto} port {port}"
                    );
                }
            }
        }
    }

    #[test]
    fn stateful_chain_accepts_established_first() {
        let compiled = compile(&cluster(10));
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
