//! `palisade simulate` and `palisade explain`: the reference evaluator on manifests.

use std::collections::{BTreeMap, BTreeSet};
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
/// matched by address), in name order; or only those named.
pub fn matrix_pods(
    cluster: &Cluster,
    from: Option<&[String]>,
    to: Option<&[String]>,
) -> (Vec<String>, Vec<String>) {
    let all: Vec<String> = cluster.pods.keys().cloned().collect();
    let pick = |only: Option<&[String]>| match only {
        Some(p) => p.to_vec(),
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

/// Evaluates every ordered pair of distinct pods; a `from`/`to` pod not in `cluster`
/// is invalid input saying it was looked for in `place`.
pub fn simulate(
    cluster: &Cluster,
    place: &str,
    protocol: Protocol,
    port: u16,
    family: Option<IpFamily>,
    from: Option<&[String]>,
    to: Option<&[String]>,
) -> anyhow::Result<Matrix> {
    for p in [from, to].into_iter().flatten().flatten() {
        if !cluster.pods.contains_key(p) {
            return Err(crate::inputs::pod_not_found(
                cluster,
                p,
                place,
                "name a pod or workload as NAMESPACE/NAME, or NAME with -n NAMESPACE",
            ));
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
    render_rows(m, diff, &BTreeMap::new())
}

/// [`render_table`] with pods grouped into rows: `rows` maps a pod to its row's label
/// (a workload: `shop/web (Deployment x3)`); other pods are rows of their own. A cell
/// of two groups is ✓ or ✗ when every pair of their pods agrees, `~` when they
/// differ (replicas with different addresses, against an ipBlock).
pub fn render_rows(m: &Matrix, diff: Option<&Matrix>, rows: &BTreeMap<String, String>) -> String {
    let label = |pod: &str| rows.get(pod).cloned().unwrap_or_else(|| pod.to_string());
    let mut names: Vec<String> = Vec::new();
    // Verdicts per (row, column), and whether any pair disagrees with `diff`.
    let mut cells: BTreeMap<(String, String), (BTreeSet<&str>, bool)> = BTreeMap::new();
    for r in &m.results {
        let (f, t) = (label(&r.from), label(&r.to));
        for n in [&f, &t] {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let disagrees = diff
            .and_then(|d| d.results.iter().find(|x| x.from == r.from && x.to == r.to))
            .is_some_and(|x| x.verdict != r.verdict);
        let c = cells.entry((f, t)).or_default();
        c.0.insert(r.verdict.as_str());
        c.1 |= disagrees;
    }
    names.sort();
    let idx = |n: &str| names.iter().position(|x| x == n).expect("name listed");
    let w = names.iter().map(|n| n.len()).max().unwrap_or(4) + 5;
    let cell = |from: &str, to: &str| -> String {
        let Some((verdicts, disagrees)) = cells.get(&(from.to_string(), to.to_string())) else {
            return if from == to { "·" } else { " " }.into();
        };
        let mark = match verdicts.iter().copied().collect::<Vec<_>>().as_slice() {
            ["allow"] => "✓",
            ["deny"] => "✗",
            _ => "~",
        };
        if *disagrees {
            format!("{mark}!")
        } else {
            mark.into()
        }
    };
    let mut out = String::new();
    let mixed = cells.values().any(|(v, _)| v.len() > 1);
    let _ = writeln!(
        out,
        "{}/{}   rows: from, columns: to   ✓ allow  ✗ deny{}{}",
        m.protocol,
        m.port,
        if mixed {
            "  ~ some pods of the pair allowed, others denied"
        } else {
            ""
        },
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

/// `-o wide`: one line per pair with its verdict and reason, after the table.
pub fn render_reasons(m: &Matrix) -> String {
    let mut out = String::from("\n");
    for r in &m.results {
        let _ = writeln!(out, "{} -> {}: {}: {}", r.from, r.to, r.verdict, r.reason);
    }
    out
}
