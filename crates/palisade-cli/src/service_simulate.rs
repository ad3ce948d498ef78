//! `palisade simulate`: Services as destinations, after the pod matrix, when the input
//! has Services. Each cell is a flow from a pod to a Service port judged per backend
//! (docs/semantics.md §10): every backend allowed, none, or some of them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use palisade_policy::model::{Cluster, Protocol, ServiceType};
use palisade_policy::verdict::{IpFamily, Peer};
use serde::Serialize;

use crate::service_flow::{self, Overall};

/// One backend in a [`ServiceResult`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendResult {
    /// Backend address.
    pub address: std::net::IpAddr,
    /// Target port.
    pub port: u16,
    /// Its pod, if the address is a pod's.
    pub pod: Option<String>,
    /// `allow` or `deny`.
    pub verdict: String,
    /// `false` for the client itself (never sent to itself).
    pub chosen: bool,
    /// Why, in plain words.
    pub reason: String,
}

/// A pod's flow to one Service port (the `services` array of `simulate -o json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceResult {
    /// The source pod.
    pub from: String,
    /// The Service, `namespace/name`.
    pub service: String,
    /// The frontend address judged; `None` when the input gives the Service none.
    pub frontend: Option<std::net::IpAddr>,
    /// `allow`, `deny`, `partial` or `no-backend`.
    pub verdict: String,
    /// Backends that allow the flow, among those it may be sent to.
    pub allowed_backends: usize,
    /// Backends the flow may be sent to.
    pub chosen_backends: usize,
    /// Every backend.
    pub backends: Vec<BackendResult>,
}

/// The Services that have a port at `port`/`protocol` (in `namespace` when given).
fn services_at(
    cluster: &Cluster,
    protocol: Protocol,
    port: u16,
    namespace: Option<&str>,
) -> Vec<String> {
    cluster
        .services
        .values()
        .filter(|s| s.service_type != ServiceType::ExternalName)
        .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
        .filter(|s| {
            s.ports
                .iter()
                .any(|p| p.protocol == protocol && p.port == port)
        })
        .map(|s| s.key())
        .collect()
}

/// Every pod of `froms` to every Service with a port at `port`/`protocol`; `notes`
/// gets a line per Service that could not be judged (no address of `family`).
pub fn simulate(
    cluster: &Cluster,
    protocol: Protocol,
    port: u16,
    family: Option<IpFamily>,
    froms: &[String],
    namespace: Option<&str>,
    notes: &mut Vec<String>,
) -> Vec<ServiceResult> {
    let (judged, table) = service_flow::with_stand_ins(cluster);
    let mut out = Vec::new();
    for svc in services_at(cluster, protocol, port, namespace) {
        for from in froms {
            let src = Peer::Pod(from.clone());
            let a = match service_flow::judge_service(
                &judged, &table, &src, &svc, port, protocol, family,
            ) {
                Ok(a) => a,
                Err(e) => {
                    notes.push(format!("note: Service {svc} left out: {e}"));
                    break;
                }
            };
            let overall = a.overall();
            let (allowed, chosen) = match overall {
                Overall::Partly { allowed, of } => (allowed, of),
                _ => {
                    let chosen = a.backends.iter().filter(|b| b.chosen).count();
                    (
                        if overall == Overall::Allowed {
                            chosen
                        } else {
                            0
                        },
                        chosen,
                    )
                }
            };
            out.push(ServiceResult {
                from: from.clone(),
                service: svc.clone(),
                frontend: a.frontend.map(|(addr, _)| addr),
                verdict: overall.word().into(),
                allowed_backends: allowed,
                chosen_backends: chosen,
                backends: a
                    .backends
                    .iter()
                    .map(|b| BackendResult {
                        address: b.backend.addr,
                        port: b.backend.port,
                        pod: b.pod.clone(),
                        verdict: if b.allowed { "allow" } else { "deny" }.into(),
                        chosen: b.chosen,
                        reason: crate::service_explain::reason(cluster, &b.decision),
                    })
                    .collect(),
            });
        }
    }
    out
}

/// One cell's mark: ✓ every backend, ✗ none, `2/3` some, `-` no backend.
fn mark(r: &ServiceResult) -> String {
    match r.verdict.as_str() {
        "allow" => "✓".into(),
        "deny" => "✗".into(),
        "partial" => format!("{}/{}", r.allowed_backends, r.chosen_backends),
        _ => "-".into(),
    }
}

/// The Services section of the table: rows are sources (grouped as the matrix groups
/// them), columns Services. Empty when there is nothing to show.
pub fn render(
    results: &[ServiceResult],
    protocol: Protocol,
    port: u16,
    rows: &BTreeMap<String, String>,
) -> String {
    if results.is_empty() {
        return String::new();
    }
    let label = |pod: &str| rows.get(pod).cloned().unwrap_or_else(|| pod.to_string());
    let mut services: Vec<&str> = Vec::new();
    let mut froms: BTreeSet<String> = BTreeSet::new();
    let mut cells: BTreeMap<(String, &str), BTreeSet<String>> = BTreeMap::new();
    let mut frontends: BTreeMap<&str, String> = BTreeMap::new();
    for r in results {
        if !services.contains(&r.service.as_str()) {
            services.push(&r.service);
        }
        let f = label(&r.from);
        froms.insert(f.clone());
        cells.entry((f, &r.service)).or_default().insert(mark(r));
        frontends.entry(&r.service).or_insert_with(|| {
            let at = match r.frontend {
                Some(a) => format!("{a}:{port}"),
                None => "no address in the input".into(),
            };
            format!("{at}, {} backend(s)", r.backends.len())
        });
    }
    let w = froms.iter().map(|n| n.len()).max().unwrap_or(4) + 5;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nServices at {protocol}/{port}   rows: from, columns: Service   ✓ every backend allowed  ✗ none  n/m allowed to n of m backends  - no backend"
    );
    let _ = write!(out, "{:w$}", "");
    for i in 0..services.len() {
        let _ = write!(out, "{:>5}", format!("S{}", i + 1));
    }
    out.push('\n');
    for (i, from) in froms.iter().enumerate() {
        let _ = write!(out, "{:>2} {:<w2$}", i + 1, from, w2 = w - 3);
        for s in &services {
            let m = match cells.get(&(from.clone(), *s)) {
                Some(v) if v.len() == 1 => v.iter().next().cloned().unwrap_or_default(),
                Some(_) => "~".into(),
                None => " ".into(),
            };
            let _ = write!(out, "{m:>5}");
        }
        out.push('\n');
    }
    for (i, s) in services.iter().enumerate() {
        let _ = writeln!(out, "S{} Service {s} ({})", i + 1, frontends[s]);
    }
    out
}

/// `-o wide`: one line per source and Service with every backend's verdict.
pub fn render_reasons(results: &[ServiceResult]) -> String {
    let mut out = String::new();
    for r in results {
        let _ = writeln!(
            out,
            "{} -> Service {}: {} ({} of {} backends allowed)",
            r.from, r.service, r.verdict, r.allowed_backends, r.chosen_backends
        );
        for b in &r.backends {
            let who = b.pod.clone().unwrap_or_else(|| b.address.to_string());
            let _ = writeln!(
                out,
                "    {who} port {}: {}{}: {}",
                b.port,
                b.verdict,
                if b.chosen { "" } else { " (the client itself)" },
                b.reason
            );
        }
    }
    out
}
