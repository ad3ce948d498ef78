//! `palisade explain` to a Service: which Service port, every backend with its own
//! verdict and deciding rule, and the flow's verdict as the datapath computes it
//! (docs/output.md "explain to a Service").

use std::fmt::Write as _;

use palisade_policy::compiled::RuleOrigin;
use palisade_policy::model::workload::Simulation;
use palisade_policy::model::{Cluster, Direction, Protocol, TargetPort};
use palisade_policy::services::FrontendKind;
use palisade_policy::verdict::{Decision, Flow, Peer};
use serde_json::{json, Value};

use crate::args::Format;
use crate::service_flow::{self, Overall, ServiceAnswer, Target};

/// Exit code of `explain --exit-code` for a Service that some backends allow and
/// others deny: the connection's fate depends on the backend chosen.
pub const EXIT_PARTLY: i32 = 5;

/// What `explain` does with a `--to` value after this module has looked at it.
pub enum Explained {
    /// A flow to a Service, answered; the exit code.
    Done(i32),
    /// Not a Service: explain `to` as before, with `note` (an address that is a
    /// Service's at other ports) first.
    Direct {
        /// The pod, workload or address.
        to: String,
        /// A note to print first.
        note: Option<String>,
    },
}

/// Everything `explain` has resolved before the destination.
pub struct Request<'a> {
    /// The source: a pod key or an address.
    pub from: &'a str,
    /// `--to` as given.
    pub to: &'a str,
    /// `-n`.
    pub namespace: Option<&'a str>,
    /// IANA protocol number.
    pub protocol: u8,
    /// `--port`.
    pub port: u16,
    /// `-o`.
    pub output: Format,
    /// `--exit-code`.
    pub exit_code: bool,
    /// Where the input came from: its `source` object and where pods are looked for.
    pub source: &'a crate::inputs::InputSource,
}

/// Answers `explain` when `--to` is a Service or one of its frontends; prints the
/// answer (`notes` first, `errors` in the document).
pub fn explain(
    cluster: &Cluster,
    sim: &Simulation,
    req: &Request<'_>,
    notes: &[String],
    errors: Value,
) -> anyhow::Result<Explained> {
    let is_pod_or_workload =
        |k: &str| cluster.pods.contains_key(k) || sim.workloads.iter().any(|w| w.name == k);
    let (judged, table) = service_flow::with_stand_ins(cluster);
    let src: Peer = req.from.parse().expect("infallible");
    let answer = match service_flow::target(
        cluster,
        req.source.place(),
        is_pod_or_workload,
        req.to,
        req.namespace,
    )? {
        Target::Service(key) => {
            let Some(protocol) = Protocol::from_number(req.protocol) else {
                return Err(crate::inputs::InvalidInput(format!(
                    "Service {key}: protocol {} has no ports; a Service port is TCP, UDP or SCTP",
                    req.protocol
                ))
                .into());
            };
            check_source(cluster, req.source.place(), &src)?;
            service_flow::judge_service(&judged, &table, &src, &key, req.port, protocol, None)?
        }
        Target::Direct(to) => {
            let Ok(addr) = to.parse::<std::net::IpAddr>() else {
                return Ok(Explained::Direct { to, note: None });
            };
            if service_flow::is_stand_in(&addr) {
                // Not a frontend of the input: the stand-ins are this module's own.
                return Ok(Explained::Direct { to, note: None });
            }
            match service_flow::frontend_at(&table, addr, req.port, req.protocol) {
                Some(f) => {
                    check_source(cluster, req.source.place(), &src)?;
                    service_flow::judge_frontend(&judged, &table, &src, f)
                        .expect("a frontend of the table")
                }
                None => {
                    let note =
                        service_flow::not_a_frontend_note(&table, addr, req.port, req.protocol);
                    return Ok(Explained::Direct { to, note });
                }
            }
        }
    };
    let flow = Flow::new(
        src.clone(),
        match answer.frontend {
            Some((a, _)) => Peer::Ip(a),
            None => Peer::Pod(answer.service.clone()),
        },
        req.protocol,
        answer.port,
    );
    if matches!(req.output, Format::Json | Format::Yaml) {
        for n in notes {
            eprintln!("{n}");
        }
        let mut flow_json = crate::explain::flow_json(&flow);
        if answer.frontend.is_none() {
            flow_json["dst"] = json!({ "Service": answer.service });
        }
        let mut v = json!({
            "flow": flow_json,
            "service": service_json(cluster, &answer),
            "decision": answer.deciding().filter(|b| b.chosen).map(|b| &b.decision),
            "source": req.source.json_with(errors.as_array().is_some_and(|e| !e.is_empty())),
            "errors": errors,
        });
        crate::inputs::add_simulation_json(&mut v, sim);
        crate::select::print_document(&v, req.output)?;
    } else {
        for n in notes {
            println!("{n}");
        }
        print!("{}", render(cluster, &src, &answer));
    }
    let code = match answer.overall() {
        _ if !req.exit_code => 0,
        Overall::Allowed => 0,
        Overall::Denied | Overall::NoBackend => 1,
        Overall::Partly { .. } => EXIT_PARTLY,
    };
    Ok(Explained::Done(code))
}

/// A `--from` pod must exist (an address need not); `place` is where it was looked for.
fn check_source(cluster: &Cluster, place: &str, src: &Peer) -> anyhow::Result<()> {
    match src {
        Peer::Pod(key) if !cluster.pods.contains_key(key) => Err(crate::inputs::pod_not_found(
            cluster,
            key,
            place,
            "name a pod as NAMESPACE/NAME (or NAME with -n NAMESPACE), a workload the same way, or give an IP address",
        )),
        _ => Ok(()),
    }
}

fn kind_word(k: FrontendKind) -> &'static str {
    match k {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::ExternalIp => "external IP",
        FrontendKind::LoadBalancer => "load-balancer IP",
        FrontendKind::NodePort => "node address at a nodePort",
    }
}

fn kind_json(k: FrontendKind) -> &'static str {
    match k {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::ExternalIp => "ExternalIP",
        FrontendKind::LoadBalancer => "LoadBalancer",
        FrontendKind::NodePort => "NodePort",
    }
}

/// The `service` object of the JSON document (docs/output.md).
pub fn service_json(cluster: &Cluster, a: &ServiceAnswer) -> Value {
    let overall = a.overall();
    let chosen = a.backends.iter().filter(|b| b.chosen).count();
    let allowed = a.backends.iter().filter(|b| b.chosen && b.allowed).count();
    json!({
        "name": a.service,
        "frontend": a.frontend.map(|(addr, k)| json!({"address": addr, "kind": kind_json(k)})),
        "port": a.port,
        "portName": a.port_name,
        "protocol": a.protocol.as_str(),
        "targetPort": match &a.target_port {
            None => json!(a.port),
            Some(TargetPort::Number(n)) => json!(n),
            Some(TargetPort::Name(n)) => json!(n),
        },
        "backendsFrom": if a.from_selector { "selector" } else { "EndpointSlices" },
        "terminating": a.terminating,
        "translated": !a.untranslated,
        "verdict": overall.word(),
        "allowedBackends": allowed,
        "chosenBackends": chosen,
        "backends": a.backends.iter().map(|b| json!({
            "address": b.backend.addr,
            "port": b.backend.port,
            "pod": b.pod,
            "verdict": if b.allowed { "allow" } else { "deny" },
            "chosen": b.chosen,
            "reason": reason(cluster, &b.decision),
            "decision": b.decision,
        })).collect::<Vec<_>>(),
    })
}

/// The headline verdict: `ALLOWED`, `DENIED`, `PARTLY ALLOWED: ...` or the no-backend
/// drop.
pub fn headline(overall: Overall) -> String {
    match overall {
        Overall::Allowed => "ALLOWED".into(),
        Overall::Denied => "DENIED".into(),
        Overall::Partly { allowed, of } => {
            format!("PARTLY ALLOWED: allowed to {allowed} of {of} backends, denied to the others")
        }
        Overall::NoBackend => {
            "DENIED: the Service has no ready backend (the datapath drops it: svc-no-backend)"
                .into()
        }
    }
}

/// [`crate::simulate::reason`] with the Service a deciding Calico rule names.
pub fn reason(cluster: &Cluster, d: &Decision) -> String {
    let mut r = crate::simulate::reason(d);
    for side in [&d.egress, &d.ingress].into_iter().flatten() {
        if let Some(s) = calico_service(cluster, &side.origin) {
            let _ = write!(r, " ({s})");
        }
    }
    r
}

/// `destination.services default/kubernetes` when `origin` is a Calico rule that
/// names a Service as its peer.
pub fn calico_service(cluster: &Cluster, origin: &RuleOrigin) -> Option<String> {
    let RuleOrigin::Calico {
        kind,
        namespace,
        name,
        direction,
        index,
        ..
    } = origin
    else {
        return None;
    };
    let policy = cluster
        .calico_policies
        .values()
        .find(|p| p.kind == *kind && p.namespace == *namespace && p.name == *name)?;
    let s = policy
        .rules(*direction)?
        .get(*index)?
        .peer
        .service
        .as_ref()?;
    let field = match direction {
        Direction::Egress => "destination",
        Direction::Ingress => "source",
    };
    Some(format!(
        "the rule's {field}.services names Service {}/{}",
        s.namespace, s.name
    ))
}

/// The lines naming the Service behind each deciding Calico rule of a direct flow's
/// decision (`explain --to 172.18.0.2`, an endpoint of the Service).
pub fn calico_service_lines(cluster: &Cluster, d: &Decision) -> String {
    let mut out = String::new();
    for (title, side) in [("Egress", &d.egress), ("Ingress", &d.ingress)] {
        if let Some(s) = side
            .as_ref()
            .and_then(|s| calico_service(cluster, &s.origin))
        {
            let _ = writeln!(
                out,
                "{title}: {s}: its endpoints' addresses{}.",
                if title == "Egress" {
                    " and ClusterIPs"
                } else {
                    ""
                }
            );
        }
    }
    out
}

/// The text answer.
pub fn render(cluster: &Cluster, src: &Peer, a: &ServiceAnswer) -> String {
    let mut out = String::new();
    let overall = a.overall();
    let dst = match a.frontend {
        Some((addr, _)) => addr.to_string(),
        None => format!("Service {}", a.service),
    };
    let _ = writeln!(
        out,
        "{src} -> {dst} {}/{}: {}\n",
        a.protocol,
        a.port,
        headline(overall)
    );
    let via = match a.frontend {
        Some((addr, k)) => format!("{addr} is the {} of Service {}", kind_word(k), a.service_port()),
        None => format!("Service {} (no address in the input: headless, or its ClusterIP not assigned yet; judged by its backends)", a.service_port()),
    };
    let chosen = a.backends.iter().filter(|b| b.chosen).count();
    let _ = writeln!(
        out,
        "{via} -> targetPort {}; {} backend(s) from {}{}:",
        a.target_port_words(),
        a.backends.len(),
        if a.from_selector {
            "its selector (the input has no EndpointSlice)"
        } else {
            "its EndpointSlices"
        },
        if a.terminating {
            ", all terminating (no ready endpoint left)"
        } else {
            ""
        }
    );
    if a.backends.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (i, b) in a.backends.iter().enumerate() {
        let who = match &b.pod {
            Some(p) => format!("{p} {}", b.backend),
            None => format!("{} (no pod of the input)", b.backend),
        };
        let verdict = if b.allowed { "allow" } else { "deny" };
        let self_note = if b.chosen {
            ""
        } else {
            " [the client itself: the datapath never sends it to itself]"
        };
        let _ = writeln!(
            out,
            "  {}. {who}: {verdict}: {}{self_note}",
            i + 1,
            reason(cluster, &b.decision)
        );
    }
    out.push('\n');
    if a.untranslated {
        let _ = writeln!(
            out,
            "The datapath does not translate this frontend ({}): the source's egress must allow every backend, and kube-proxy picks one.",
            if a.protocol == Protocol::Sctp {
                "SCTP"
            } else {
                "the client is its only backend"
            }
        );
    } else if chosen > 0 {
        let _ = writeln!(
            out,
            "The datapath sends each new connection to one backend{} and judges it against that backend.",
            if chosen > 1 { " (by hash)" } else { "" }
        );
    }
    // The full path of the first denied and the first allowed backend.
    let first = |allowed: bool| a.backends.iter().find(|b| b.chosen && b.allowed == allowed);
    for b in [first(false), first(true)].into_iter().flatten() {
        // Titled by the pod's name; the decision is the one judged for its address.
        let shown = match &b.pod {
            Some(p) => Peer::Pod(p.clone()),
            None => Peer::Ip(b.backend.addr),
        };
        let flow = Flow::new(src.clone(), shown, a.protocol.number(), b.backend.port);
        let _ = writeln!(
            out,
            "\nBackend {} {} ({}):",
            b.pod.as_deref().unwrap_or("address"),
            b.backend,
            if b.allowed { "allowed" } else { "denied" }
        );
        let text = crate::explain::render(&flow, a.protocol.as_str(), &b.decision);
        // The first line repeats the backend's verdict; the closing line is general.
        let body: Vec<&str> = text
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with("A connection needs") && !l.starts_with("Replies on this"))
            .collect();
        for line in body
            .iter()
            .rev()
            .skip_while(|l| l.is_empty())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            if line.is_empty() {
                out.push('\n');
            } else {
                let _ = writeln!(out, "  {line}");
            }
        }
        for line in calico_service_lines(cluster, &b.decision).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}
