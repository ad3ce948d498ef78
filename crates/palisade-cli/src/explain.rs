//! `palisade explain`: the decision path of one connection, in plain words.

use std::fmt::Write as _;

use palisade_policy::model::workload::Simulation;
use palisade_policy::model::Cluster;
use palisade_policy::verdict::near_miss::{describe_near_miss, describe_rule};
use palisade_policy::verdict::{describe, evaluate, Decision, Flow, Peer, SideDecision};

/// The pods a `--from`/`--to` name stands for: a workload's pods (`shop/web` for
/// Deployment shop/web), else the name itself (a pod, or an address).
pub fn pods_named(cluster: &Cluster, sim: &Simulation, name: &str) -> Vec<String> {
    if cluster.pods.contains_key(name) {
        return vec![name.to_string()];
    }
    match sim.workloads.iter().find(|w| w.name == name) {
        Some(w) => w.pods.clone(),
        None => vec![name.to_string()],
    }
}

/// One pod for a `--from`/`--to` name: a workload's first pod, with a note in `notes`
/// saying so (its replicas differ only in address).
pub fn one_pod(cluster: &Cluster, sim: &Simulation, name: &str, notes: &mut Vec<String>) -> String {
    if cluster.pods.contains_key(name) {
        return name.to_string();
    }
    match sim.workloads.iter().find(|w| w.name == name) {
        Some(w) => match w.pods.first() {
            Some(p) => {
                notes.push(format!(
                    "note: {name} is {} {name} ({} pod(s)); explaining for its pod {p}",
                    w.kind, w.replicas
                ));
                p.clone()
            }
            None => name.to_string(),
        },
        None => name.to_string(),
    }
}

/// Evaluates one flow; a pod that is not in `cluster` is invalid input saying it was
/// looked for in `place` ([`crate::inputs::InputSource::place`]).
pub fn explain(
    cluster: &Cluster,
    place: &str,
    from: &str,
    to: &str,
    protocol: u8,
    port: u16,
) -> anyhow::Result<(Flow, Decision)> {
    let src: Peer = from.parse().expect("infallible");
    let dst: Peer = to.parse().expect("infallible");
    for p in [&src, &dst] {
        if let Peer::Pod(key) = p {
            if !cluster.pods.contains_key(key) {
                return Err(crate::inputs::pod_not_found(cluster, key, place, "name a pod as NAMESPACE/NAME (or NAME with -n NAMESPACE), a workload or (for --to) a Service the same way, or give an IP address"));
            }
        }
    }
    let flow = Flow::new(src, dst, protocol, port);
    let d = evaluate(cluster, &flow);
    Ok((flow, d))
}

/// The `flow` object of a JSON answer: the flow with its protocol by name (`TCP`,
/// `ICMPv6`, `protocol 47`), as every other protocol in Palisade's JSON.
pub fn flow_json(flow: &Flow) -> serde_json::Value {
    let mut v = serde_json::to_value(flow).expect("a flow is JSON");
    v["protocol"] = palisade_policy::verdict::near_miss::protocol_name(flow.protocol).into();
    v
}

fn side(out: &mut String, title: &str, s: &Option<SideDecision>, absent: &str, wide: bool) {
    let _ = writeln!(out, "{title}");
    match s {
        None => {
            let _ = writeln!(out, "  not enforced: {absent}");
        }
        Some(s) => {
            for (i, step) in s.consulted.iter().enumerate() {
                let _ = writeln!(out, "  {}. {step}", i + 1);
            }
            let _ = writeln!(
                out,
                "  => {}: {}",
                if s.allowed { "allow" } else { "deny" },
                describe(&s.origin)
            );
            if let Some(m) = &s.near_miss {
                let _ = writeln!(out, "  {}", describe_near_miss(m));
                if wide {
                    for r in &m.rules {
                        let _ = writeln!(out, "    {}", describe_rule(r, m.direction));
                    }
                }
            }
        }
    }
}

/// Renders the decision as numbered steps per side; a side denied by NetworkPolicy
/// isolation gets its closest rule.
pub fn render(flow: &Flow, protocol_name: &str, d: &Decision) -> String {
    render_wide(flow, protocol_name, d, false)
}

/// As [`render`]; `wide` (`-o wide`) adds, under the closest rule, why every rule of the
/// isolating policies failed.
pub fn render_wide(flow: &Flow, protocol_name: &str, d: &Decision, wide: bool) -> String {
    let mut out = String::new();
    let port = if flow.port == 0 {
        String::new()
    } else {
        format!("/{}", flow.port)
    };
    let _ = writeln!(
        out,
        "{} -> {} {protocol_name}{port}: {}\n",
        flow.src,
        flow.dst,
        if d.allowed { "ALLOWED" } else { "DENIED" }
    );
    side(
        &mut out,
        &format!("Egress of {}:", flow.src),
        &d.egress,
        "the source is not a pod endpoint",
        wide,
    );
    out.push('\n');
    side(
        &mut out,
        &format!("Ingress of {}:", flow.dst),
        &d.ingress,
        "the destination is not a pod endpoint",
        wide,
    );
    if d.allowed {
        let _ = writeln!(
            out,
            "\nReplies on this connection are allowed by connection tracking."
        );
    } else {
        let _ = writeln!(
            out,
            "\nA connection needs the source's egress and the destination's ingress to allow it."
        );
    }
    out
}
