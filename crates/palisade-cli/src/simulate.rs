//! `palisade simulate` and `palisade explain`: the reference evaluator on manifests.

use std::fmt::Write as _;

use palisade_policy::model::{Cluster, Protocol};
use palisade_policy::verdict::{describe, evaluate, Decision, Flow, IpFamily, Peer};
use serde::Serialize;

/// One ordered pair's verdict, in the JSON shape shared with `palisade lab probe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PairResult {
    /// `namespace/name`.
    pub from: String,
    /// `namespace/name`.
    pub to: String,
    /// `allow` or `deny`.
    pub verdict: String,
    /// Why, in plain words.
    pub reason: String,
}

/// The whole matrix, exactly `{"port": P, "protocol": "TCP", "results": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Matrix {
    /// Destination port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Every ordered pair of distinct pods.
    pub results: Vec<PairResult>,
}

/// Pods that take part in a matrix: every pod, host-network ones included (they are
/// matched by address), in name order.
pub fn matrix_pods(
    cluster: &Cluster,
    from: Option<&str>,
    to: Option<&str>,
) -> (Vec<String>, Vec<String>) {
    let all: Vec<String> = cluster.pods.keys().cloned().collect();
    let pick = |only: Option<&str>| match only {
        Some(p) => vec![p.to_string()],
        None => all.clone(),
    };
    (pick(from), pick(to))
}

/// The reason line for a decision: the side that denied, or both sides' allows.
pub fn reason(d: &Decision) -> String {
    let side = |name: &str, s: &Option<palisade_policy::verdict::SideDecision>| {
        s.as_ref()
            .map(|s| format!("{name}: {}", describe(&s.origin)))
    };
    if !d.allowed {
        let denying: Vec<String> = [("egress", &d.egress), ("ingress", &d.ingress)]
            .into_iter()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| !s.allowed))
            .filter_map(|(n, s)| side(n, s))
            .collect();
        return denying.join("; ");
    }
    [side("egress", &d.egress), side("ingress", &d.ingress)]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ")
}

/// Evaluates every ordered pair of distinct pods.
pub fn simulate(
    cluster: &Cluster,
    protocol: Protocol,
    port: u16,
    family: Option<IpFamily>,
    from: Option<&str>,
    to: Option<&str>,
) -> anyhow::Result<Matrix> {
    for p in [from, to].into_iter().flatten() {
        if !cluster.pods.contains_key(p) {
            anyhow::bail!("pod {p} not found in the manifests");
        }
    }
    let (froms, tos) = matrix_pods(cluster, from, to);
    let mut results = Vec::new();
    for f in &froms {
        for t in &tos {
            if f == t {
                continue;
            }
            let flow = match family {
                Some(fam) => Flow::between(cluster, f, t, fam, protocol.number(), port)?,
                None => {
                    Flow::with_protocol(Peer::Pod(f.clone()), Peer::Pod(t.clone()), protocol, port)
                }
            };
            let d = evaluate(cluster, &flow);
            results.push(PairResult {
                from: f.clone(),
                to: t.clone(),
                verdict: if d.allowed { "allow" } else { "deny" }.into(),
                reason: reason(&d),
            });
        }
    }
    Ok(Matrix {
        port,
        protocol: protocol.as_str().into(),
        results,
    })
}

/// Renders a matrix as a truth table: rows are sources, columns destinations.
/// `diff`, when given, marks cells where another matrix (e.g. the simulator) disagrees.
pub fn render_table(m: &Matrix, diff: Option<&Matrix>) -> String {
    let mut names: Vec<String> = Vec::new();
    for r in &m.results {
        for n in [&r.from, &r.to] {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names.sort();
    let idx = |n: &str| names.iter().position(|x| x == n).expect("name listed");
    let w = names.iter().map(|n| n.len()).max().unwrap_or(4) + 5;
    let cell = |from: &str, to: &str| -> String {
        if from == to {
            return "·".into();
        }
        let v = m.results.iter().find(|r| r.from == from && r.to == to);
        let mark = match v.map(|r| r.verdict.as_str()) {
            Some("allow") => "✓",
            Some("deny") => "✗",
            _ => " ",
        };
        let disagrees = diff
            .and_then(|d| d.results.iter().find(|r| r.from == from && r.to == to))
            .zip(v)
            .is_some_and(|(a, b)| a.verdict != b.verdict);
        if disagrees {
            format!("{mark}!")
        } else {
            mark.into()
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}/{}   rows: from, columns: to   ✓ allow  ✗ deny{}",
        m.protocol,
        m.port,
        if diff.is_some() {
            "  ! disagrees with the simulator"
        } else {
            ""
        }
    );
    let _ = write!(out, "{:w$}", "");
    for i in 0..names.len() {
        let _ = write!(out, "{:>3}", i + 1);
    }
    out.push('\n');
    for from in &names {
        let _ = write!(out, "{:>2} {:<w2$}", idx(from) + 1, from, w2 = w - 3);
        for to in &names {
            let _ = write!(out, "{:>3}", cell(from, to));
        }
        out.push('\n');
    }
    out
}
