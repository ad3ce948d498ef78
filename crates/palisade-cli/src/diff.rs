//! `palisade diff`: every flow whose verdict a proposed change turns around, with the
//! rule responsible on each side, so a pull request can be gated on "denies nothing
//! that is allowed today".
//!
//! Two states are loaded. The **current** state is a list of `(source, text)` documents
//! ([`current_inputs`]: the first `-f`, or `--current`; a live cluster's objects plug in
//! there as the same list). The **proposed** state is the current one with the proposed
//! files overlaid as `kubectl apply` would (same kind, namespace and name: replaced;
//! new: added) and the `--delete` objects taken out; with `--snapshot` the proposed
//! files are the whole proposed state instead (two checkouts of a repository).
//! Both sides are then evaluated on the same pod pairs and ports ([`ports_of`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::CommandFactory;
use palisade_policy::manifest::{self, Loaded};
use palisade_policy::model::workload::{Simulation, SIMULATION_V4, SIMULATION_V6};
use palisade_policy::model::{CalicoPort, Cluster, Direction, PortMatch, Protocol};
use palisade_policy::verdict::{evaluate, Flow, Peer};
use serde::Serialize;
use serde_json::json;

use crate::args::Format;
use crate::inputs::{self, InvalidInput};

/// Exit code: some flow allowed today is denied by the proposed state.
pub const EXIT_DENIES: i32 = 1;
/// Exit code: the proposed state only allows more (no flow allowed today is denied).
pub const EXIT_ONLY_ALLOWS: i32 = 5;

/// `palisade diff` options.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The current state, then the proposed change: `-f CURRENT -f PROPOSED...` (the
    /// first -f is the current state, every later one is overlaid on it).
    #[arg(short = 'f', long = "filename", num_args = 1, value_name = "PATH",
        conflicts_with_all = ["current", "proposed"])]
    pub files: Vec<PathBuf>,
    /// The current state (files or directories; `-` for stdin).
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub current: Vec<PathBuf>,
    /// The proposed change, overlaid on the current state (files or directories).
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub proposed: Vec<PathBuf>,
    /// An object of the current state the change deletes: `KIND/NAMESPACE/NAME`, or
    /// `KIND/NAME` for a cluster-scoped one (repeatable; kind case-insensitive).
    #[arg(long, value_name = "KIND/[NAMESPACE/]NAME")]
    pub delete: Vec<String>,
    /// The proposed files are the whole proposed state, not an overlay: an object of
    /// the current state that they do not hold is deleted.
    #[arg(long)]
    pub snapshot: bool,
    /// Read the subdirectories of directories too (as kubectl -R).
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Compare only this destination port (default: every port the destination pod
    /// declares, on either side, and every port a policy names).
    #[arg(long)]
    pub port: Option<u16>,
    /// Compare only this protocol: TCP, UDP or SCTP (with --port: default TCP).
    #[arg(long)]
    pub protocol: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// The current state is the cluster (`--live`): every -f is the proposed change.
    #[command(flatten)]
    pub live: crate::live::LiveArgs,
}

/// One side's verdict, the shape of a `simulate` result's `verdict` and `reason`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Verdict {
    /// `allow` or `deny`.
    pub verdict: String,
    /// The deciding rule of each side, in the words of `explain`.
    pub reason: String,
}

/// One flow (pod pair, protocol, port) whose verdict changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// Source pod, `namespace/name`.
    pub from: String,
    /// Destination pod, `namespace/name`.
    pub to: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Destination port.
    pub port: u16,
    /// `denied` (allowed today, denied as proposed) or `allowed` (the reverse).
    pub change: String,
    /// The verdict today.
    pub current: Verdict,
    /// The verdict as proposed.
    pub proposed: Verdict,
    /// The source's workload (`namespace/name`), if it is one's pod.
    pub from_workload: Option<String>,
    /// The destination's workload, if it is one's pod.
    pub to_workload: Option<String>,
}

/// What the proposed files did to the current state's objects (`Kind namespace/name`).
#[derive(Debug, Default, Serialize)]
pub struct Objects {
    /// In the proposed files, not in the current state.
    pub added: Vec<String>,
    /// In both (overlay: the proposed version replaces; unchanged ones count too).
    pub replaced: Vec<String>,
    /// Taken out (`--delete`, or missing from a `--snapshot`).
    pub deleted: Vec<String>,
}

/// Both states, loaded and with their workloads' pods simulated.
pub struct States {
    /// Today.
    pub current: Loaded,
    /// Today's simulated pods.
    pub current_sim: Simulation,
    /// As proposed.
    pub proposed: Loaded,
    /// The proposed side's simulated pods (addresses aligned with today's).
    pub proposed_sim: Simulation,
    /// What the change does to objects.
    pub objects: Objects,
}

/// The whole answer.
#[derive(Debug, Default)]
pub struct Report {
    /// Every changed flow, sorted by destination, source, protocol, port.
    pub changes: Vec<Change>,
    /// Pods in both states (the only ones compared).
    pub pods: usize,
    /// Flows evaluated (pairs x ports).
    pub flows: usize,
    /// Pods only in the proposed state.
    pub added_pods: Vec<String>,
    /// Pods only in the current state.
    pub removed_pods: Vec<String>,
    /// Destination pods with no port to compare (none declared, none named by a policy).
    pub without_ports: Vec<String>,
}

impl Report {
    /// Flows allowed today and denied as proposed.
    pub fn denied(&self) -> usize {
        self.changes.iter().filter(|c| c.change == "denied").count()
    }

    /// The exit code: [`EXIT_DENIES`], else [`EXIT_ONLY_ALLOWS`], else 0.
    pub fn exit_code(&self) -> i32 {
        if self.denied() > 0 {
            EXIT_DENIES
        } else if !self.changes.is_empty() {
            EXIT_ONLY_ALLOWS
        } else {
            0
        }
    }
}

/// Stops with a usage error (exit 2), as clap reports one.
fn usage(message: &str) -> ! {
    let mut cmd = crate::args::Cli::command();
    let sub = cmd
        .find_subcommand_mut("diff")
        .expect("diff is a subcommand");
    sub.error(clap::error::ErrorKind::WrongNumberOfValues, message)
        .exit()
}

/// The current and proposed paths from `-f` or `--current`/`--proposed`; with
/// `--live` the current state is the cluster and every path is proposed.
fn sides(a: &DiffArgs) -> (Vec<PathBuf>, Vec<PathBuf>) {
    if a.live.enabled() {
        return (Vec::new(), [a.files.clone(), a.proposed.clone()].concat());
    }
    if !a.files.is_empty() {
        let (cur, prop) = a.files.split_at(1);
        return (cur.to_vec(), prop.to_vec());
    }
    (a.current.clone(), a.proposed.clone())
}

/// The current state as `(source, text)` documents: the place a live cluster's
/// objects come in (`--live`), the rest of `diff` is the same for both.
pub fn current_inputs(paths: &[PathBuf], recursive: bool) -> anyhow::Result<Vec<(String, String)>> {
    inputs::read_manifests(paths, recursive)
}

/// `palisade diff`.
pub fn run(a: DiffArgs) -> anyhow::Result<i32> {
    let (cur_paths, prop_paths) = sides(&a);
    let live = a.live.enabled();
    if live && !a.current.is_empty() {
        usage("--current conflicts with --live (the cluster is the current state)");
    }
    if cur_paths.is_empty() && !live {
        usage("the current state is missing: give -f CURRENT -f PROPOSED, or --current PATH --proposed PATH");
    }
    if prop_paths.is_empty() && a.delete.is_empty() {
        usage("the proposed change is missing: a second -f (or --proposed PATH), or --delete KIND/NAMESPACE/NAME");
    }
    if a.snapshot && prop_paths.is_empty() {
        usage("--snapshot needs the proposed files (a second -f, or --proposed PATH)");
    }
    let filter = port_filter(a.port, a.protocol.as_deref());
    let structured = matches!(a.output, Format::Json | Format::Yaml);
    let mut live_notes = Vec::new();
    let current = if live {
        let listed = crate::live::list(&a.live)?;
        if !listed.forbidden.is_empty() {
            eprintln!(
                "error: no answer: the current state is INCOMPLETE: the credentials may not list {}\n\nhint: grant get/list on every kind Palisade reads (deploy/rbac/palisade-reader.yaml)",
                crate::live::joined(&listed.forbidden)
            );
            return Ok(crate::EXIT_INVALID);
        }
        live_notes.push(format!(
            "note: live: the current state is the {} object(s) read from the cluster at {}",
            listed.documents.len(),
            inputs::cluster_words(&listed.cluster)
        ));
        live_notes.extend(listed.notes);
        listed.documents
    } else {
        current_inputs(&cur_paths, a.recursive)?
    };
    let proposed = if prop_paths.is_empty() {
        Vec::new()
    } else {
        inputs::read_manifests(&prop_paths, a.recursive)?
    };
    let states = match load_states(&current, &proposed, &a.delete, a.snapshot) {
        Ok(s) => s,
        Err(rejected) => {
            let lines = rejected.lines();
            for e in &lines {
                eprintln!("error: {e}");
            }
            eprintln!(
                "error: no answer: {} error(s) in the input; a diff that leaves objects out could hide a denied flow",
                lines.len()
            );
            if structured {
                let v = json!({"errors": rejected.json()});
                crate::select::print_document(&v, a.output)?;
            }
            return Ok(crate::EXIT_INVALID);
        }
    };
    if states.current.documents == 0 {
        return Err(InvalidInput("no Kubernetes objects in the current state".into()).into());
    }
    let report = compare(&states, filter.as_ref());
    let note = simulation_note(&states);
    let note: Vec<String> = live_notes.into_iter().chain(note).collect();
    if structured {
        for n in &note {
            eprintln!("{n}");
        }
        crate::select::print_document(&to_json(&states, &report), a.output)?;
    } else {
        for n in &note {
            println!("{n}");
        }
        print!("{}", render(&states, &report, a.output == Format::Wide));
    }
    Ok(report.exit_code())
}

/// `--port`/`--protocol` as a filter on the flows compared.
fn port_filter(port: Option<u16>, protocol: Option<&str>) -> Option<PortFilter> {
    let protocol = protocol.map(|p| {
        p.parse::<Protocol>()
            .unwrap_or_else(|e| usage(&format!("--protocol {p:?}: {e} (TCP, UDP or SCTP)")))
    });
    match (port, protocol) {
        (None, None) => None,
        (port, protocol) => Some(PortFilter {
            port,
            protocol: protocol.or(port.map(|_| Protocol::Tcp)),
        }),
    }
}

/// Which flows `--port`/`--protocol` keep.
#[derive(Debug, Clone, Copy)]
pub struct PortFilter {
    /// Only this port (then the flows are exactly this port, declared or not).
    pub port: Option<u16>,
    /// Only this protocol.
    pub protocol: Option<Protocol>,
}

/// Errors that leave no answer: the rejected objects (in `loaded.errors`, by file),
/// and `--delete` values that cannot be done (value, why).
pub struct Rejected {
    /// The load errors of both sides (boxed: a `Loaded` is large).
    pub loaded: Box<Loaded>,
    /// `--delete` problems.
    pub deletes: Vec<(String, String)>,
}

impl Rejected {
    /// Every problem, one line each.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.loaded.errors.iter().map(|e| e.to_string()).collect();
        out.extend(
            self.deletes
                .iter()
                .map(|(v, m)| format!("--delete {v}: {m}")),
        );
        out
    }

    /// The `errors` array: load errors, then `--delete` ones (`file` null, `field`
    /// `--delete`, `object` the value).
    pub fn json(&self) -> serde_json::Value {
        let mut v = inputs::errors_json(&self.loaded);
        if let Some(list) = v.as_array_mut() {
            for (value, message) in &self.deletes {
                list.push(json!({"file": null, "line": null, "column": null,
                    "object": value, "field": "--delete", "message": message}));
            }
        }
        v
    }
}

/// Loads both states. `current` and `proposed` are `(source, text)` documents;
/// `delete` names objects of the current state (`KIND/NAMESPACE/NAME`, `KIND/NAME`).
/// Any rejected object on either side, a `--delete` naming nothing, or one the proposed
/// files also hold, is a [`Rejected`] answer.
pub fn load_states(
    current: &[(String, String)],
    proposed: &[(String, String)],
    delete: &[String],
    snapshot: bool,
) -> Result<States, Rejected> {
    let cur = manifest::load(current);
    let proposed_files: BTreeSet<&str> = proposed.iter().map(|(n, _)| n.as_str()).collect();
    let mut prop = if snapshot {
        manifest::load(proposed)
    } else {
        manifest::load(&[current, proposed].concat())
    };
    let mut errors = Loaded::default();
    errors.errors = cur.errors.clone();
    // The merged load repeats the current side's errors; keep the proposed files' own.
    errors.errors.extend(
        prop.errors
            .iter()
            .filter(|e| snapshot || proposed_files.contains(e.file()))
            .cloned(),
    );
    // A file given on both sides is loaded twice: name each of its errors once.
    let mut seen = BTreeSet::new();
    errors.errors.retain(|e| seen.insert(e.to_string()));
    // Replacing a current object is what an overlay does: not worth a warning.
    prop.warnings.retain(|w| {
        snapshot
            || !(w
                .message
                .starts_with("duplicate object: replaces the one from ")
                && w.file
                    .as_deref()
                    .is_some_and(|f| proposed_files.contains(f))
                && current.iter().any(|(n, _)| {
                    w.message
                        .strip_prefix("duplicate object: replaces the one from ")
                        .is_some_and(|b| b.starts_with(&format!("{n} document ")))
                }))
    });
    let mut objects = Objects::default();
    for (object, file) in &prop.sources {
        if snapshot || proposed_files.contains(file.as_str()) {
            if cur.sources.contains_key(object) {
                objects.replaced.push(object.clone());
            } else {
                objects.added.push(object.clone());
            }
        }
    }
    if snapshot {
        objects.deleted = cur
            .sources
            .keys()
            .filter(|o| !prop.sources.contains_key(*o))
            .cloned()
            .collect();
    }
    let mut deletes = Vec::new();
    for d in delete {
        let found = named_objects(&cur, d);
        if found.is_empty() {
            deletes.push((
                d.clone(),
                "names no object of the current state (KIND/NAMESPACE/NAME, or KIND/NAME for a cluster-scoped kind)".to_string(),
            ));
        }
        for object in found {
            let in_proposed = prop
                .sources
                .get(&object)
                .is_some_and(|f| proposed_files.contains(f.as_str()));
            if in_proposed {
                deletes.push((
                    d.clone(),
                    format!(
                        "{object} is also in the proposed files ({}): delete it or change it, not both",
                        prop.sources[&object]
                    ),
                ));
                continue;
            }
            prop.remove_object(&object);
            objects.deleted.push(object);
        }
    }
    if !errors.errors.is_empty() || !deletes.is_empty() {
        return Err(Rejected {
            loaded: Box::new(errors),
            deletes,
        });
    }
    let mut cur = cur;
    let current_sim = cur.simulate_pods();
    let mut proposed_sim = prop.simulate_pods();
    align_addresses(
        &cur.cluster,
        &current_sim,
        &mut prop.cluster,
        &mut proposed_sim,
    );
    // After simulate_pods, which drops the "workload skipped" warnings of the counted.
    let own = |w: &&manifest::Warning| {
        (snapshot
            || w.file
                .as_deref()
                .is_some_and(|f| proposed_files.contains(f)))
            && !objects.deleted.contains(&w.object)
    };
    for w in cur.warnings.iter().chain(prop.warnings.iter().filter(own)) {
        eprintln!("warning: {w}");
    }
    objects.deleted.sort();
    objects.deleted.dedup();
    Ok(States {
        current: cur,
        current_sim,
        proposed: prop,
        proposed_sim,
        objects,
    })
}

/// The loaded objects (`Kind namespace/name`) that `KIND/NAMESPACE/NAME` or `KIND/NAME`
/// names; the kind is matched without regard to case.
fn named_objects(loaded: &Loaded, value: &str) -> Vec<String> {
    let Some((kind, key)) = value.split_once('/') else {
        return Vec::new();
    };
    loaded
        .sources
        .keys()
        .filter(|o| {
            o.split_once(' ')
                .is_some_and(|(k, rest)| k.eq_ignore_ascii_case(kind) && rest == key)
        })
        .cloned()
        .collect()
}

/// Gives a pod that is simulated on both sides the same address on both, and pods new
/// on the proposed side addresses no current pod has: otherwise adding a workload would
/// shift every later pod's simulated address and change `ipBlock` verdicts that the
/// change did not touch.
fn align_addresses(
    current: &Cluster,
    current_sim: &Simulation,
    proposed: &mut Cluster,
    proposed_sim: &mut Simulation,
) {
    let mut fresh = Vec::new();
    for (key, ips) in proposed_sim.addressed.iter_mut() {
        match current_sim.addressed.get(key) {
            Some(before) => {
                *ips = before.clone();
                if let Some(p) = proposed.pods.get_mut(key) {
                    p.ips = before.clone();
                }
            }
            None => fresh.push(key.clone()),
        }
    }
    if fresh.is_empty() {
        return;
    }
    let mut used: BTreeSet<IpAddr> = BTreeSet::new();
    for c in [current, &*proposed] {
        used.extend(c.pods.values().flat_map(|p| p.ips.iter().copied()));
        used.extend(c.nodes.values().flat_map(|n| n.addresses.iter().copied()));
        used.extend(
            c.services
                .values()
                .flat_map(|s| s.cluster_ips.iter().copied()),
        );
    }
    let v4: ipnet::Ipv4Net = SIMULATION_V4.parse().expect("a CIDR");
    let v6: ipnet::Ipv6Net = SIMULATION_V6.parse().expect("a CIDR");
    let mut v4 = v4.hosts().map(IpAddr::V4).filter(|a| !used.contains(a));
    let mut v6 = v6.hosts().map(IpAddr::V6).filter(|a| !used.contains(a));
    for key in fresh {
        let ips: Vec<IpAddr> = v4.next().into_iter().chain(v6.next()).collect();
        if let Some(p) = proposed.pods.get_mut(&key) {
            p.ips = ips.clone();
        }
        proposed_sim.addressed.insert(key, ips);
    }
}

/// Every (protocol, port) a policy of `c` names: single ports and both ends of ranges
/// (a range that grows or shrinks changes verdicts at its ends).
fn policy_ports(c: &Cluster, out: &mut BTreeSet<(Protocol, u16)>) {
    fn add(out: &mut BTreeSet<(Protocol, u16)>, ports: Option<&Vec<PortMatch>>) {
        for m in ports.into_iter().flatten() {
            if let PortMatch::Range {
                protocol,
                port,
                end_port,
            } = m
            {
                out.insert((*protocol, *port));
                out.insert((*protocol, *end_port));
            }
        }
    }
    for dir in [Direction::Ingress, Direction::Egress] {
        for np in c.network_policies.values() {
            for r in np.rules(dir).unwrap_or_default() {
                add(out, r.ports.as_ref());
            }
        }
        for cp in c.cluster_policies.values() {
            for r in cp.rules(dir) {
                add(out, r.ports.as_ref());
            }
        }
        for p in c.calico_policies.values() {
            for r in p.rules(dir).unwrap_or_default() {
                let Some(protocol) = r.protocol else { continue };
                for port in r.ports.iter().chain(&r.not_ports) {
                    if let CalicoPort::Range(lo, hi) = port {
                        out.insert((protocol, *lo));
                        out.insert((protocol, *hi));
                    }
                }
            }
        }
    }
}

/// The (protocol, port)s compared for flows to `pod`: its containerPorts on either side
/// and every port a policy of either side names, or exactly `--port`; `--protocol`
/// keeps one protocol.
pub fn ports_of(
    states: &States,
    policy: &BTreeSet<(Protocol, u16)>,
    pod: &str,
    filter: Option<&PortFilter>,
) -> BTreeSet<(Protocol, u16)> {
    if let Some(PortFilter {
        port: Some(port),
        protocol,
    }) = filter
    {
        return [(protocol.unwrap_or(Protocol::Tcp), *port)].into();
    }
    let mut out = policy.clone();
    for c in [&states.current.cluster, &states.proposed.cluster] {
        if let Some(p) = c.pods.get(pod) {
            out.extend(p.ports.iter().map(|cp| (cp.protocol, cp.port)));
        }
    }
    if let Some(proto) = filter.and_then(|f| f.protocol) {
        out.retain(|(p, _)| *p == proto);
    }
    out
}

fn verdict(cluster: &Cluster, from: &str, to: &str, protocol: Protocol, port: u16) -> Verdict {
    let flow = Flow::with_protocol(
        Peer::Pod(from.to_string()),
        Peer::Pod(to.to_string()),
        protocol,
        port,
    );
    let d = evaluate(cluster, &flow);
    Verdict {
        verdict: if d.allowed { "allow" } else { "deny" }.into(),
        reason: crate::simulate::reason(&d),
    }
}

/// The workload (`namespace/name`) each simulated or owned pod belongs to.
fn workload_of(states: &States) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in [&states.current_sim, &states.proposed_sim] {
        for w in &s.workloads {
            for p in &w.pods {
                out.insert(p.clone(), w.name.clone());
            }
        }
    }
    out
}

/// Evaluates every flow between pods of both states, on both, and keeps those whose
/// verdict differs.
pub fn compare(states: &States, filter: Option<&PortFilter>) -> Report {
    let (cur, prop) = (&states.current.cluster, &states.proposed.cluster);
    let mut report = Report::default();
    let both: Vec<&String> = cur
        .pods
        .keys()
        .filter(|k| prop.pods.contains_key(*k))
        .collect();
    report.pods = both.len();
    report.removed_pods = cur
        .pods
        .keys()
        .filter(|k| !prop.pods.contains_key(*k))
        .cloned()
        .collect();
    report.added_pods = prop
        .pods
        .keys()
        .filter(|k| !cur.pods.contains_key(*k))
        .cloned()
        .collect();
    let mut policy = BTreeSet::new();
    policy_ports(cur, &mut policy);
    policy_ports(prop, &mut policy);
    let workloads = workload_of(states);
    for to in &both {
        let ports = ports_of(states, &policy, to, filter);
        if ports.is_empty() {
            report.without_ports.push(to.to_string());
            continue;
        }
        for from in &both {
            if from == to {
                continue;
            }
            for &(protocol, port) in &ports {
                report.flows += 1;
                let now = verdict(cur, from, to, protocol, port);
                let then = verdict(prop, from, to, protocol, port);
                if now.verdict == then.verdict {
                    continue;
                }
                report.changes.push(Change {
                    from: from.to_string(),
                    to: to.to_string(),
                    protocol: protocol.as_str().into(),
                    port,
                    change: if then.verdict == "deny" {
                        "denied"
                    } else {
                        "allowed"
                    }
                    .into(),
                    current: now,
                    proposed: then,
                    from_workload: workloads.get(*from).cloned(),
                    to_workload: workloads.get(*to).cloned(),
                });
            }
        }
    }
    report
}

/// The note on simulated addresses, for the pods of both sides.
fn simulation_note(states: &States) -> Option<String> {
    let mut all = states.current_sim.clone();
    all.addressed.extend(states.proposed_sim.addressed.clone());
    inputs::simulation_note(&all)
}

/// The JSON document (docs/output.md, "diff").
pub fn to_json(states: &States, r: &Report) -> serde_json::Value {
    json!({
        "changes": r.changes,
        "summary": {
            "denied": r.denied(),
            "allowed": r.changes.len() - r.denied(),
            "pods": r.pods,
            "flows": r.flows,
        },
        "objects": states.objects,
        "pods": {
            "added": r.added_pods,
            "removed": r.removed_pods,
            "withoutPorts": r.without_ports,
        },
        "errors": [],
    })
}

/// A row of the table: the flows of one source and destination (a workload counts as
/// one) on one port with the same verdicts and reasons.
type RowKey<'a> = (
    String,
    String,
    String,
    &'a str,
    u16,
    &'a Verdict,
    &'a Verdict,
);

/// The table: a summary, then the changed flows grouped by the destination's namespace
/// and workload, each with the deciding rules today and as proposed. `wide` lists
/// every pod pair of a row too.
pub fn render(states: &States, r: &Report, wide: bool) -> String {
    let mut out = String::new();
    let denied = r.denied();
    if r.changes.is_empty() {
        let _ = writeln!(out, "no flow changes its verdict");
    } else {
        let _ = writeln!(
            out,
            "{} flow(s) change: {denied} allowed today would be denied, {} denied today would be allowed",
            r.changes.len(),
            r.changes.len() - denied
        );
    }
    let _ = writeln!(
        out,
        "compared {} flow(s) between {} pod(s) in both states",
        r.flows, r.pods
    );
    let o = &states.objects;
    for (what, list) in [
        ("added", &o.added),
        ("replaced", &o.replaced),
        ("deleted", &o.deleted),
    ] {
        if !list.is_empty() {
            let _ = writeln!(out, "{what}: {}", list.join(", "));
        }
    }
    for (what, list) in [
        (
            "pods only in the proposed state (not compared)",
            &r.added_pods,
        ),
        (
            "pods only in the current state (not compared)",
            &r.removed_pods,
        ),
        (
            "pods with no declared port and none named by a policy (not compared; give --port)",
            &r.without_ports,
        ),
    ] {
        if !list.is_empty() {
            let _ = writeln!(out, "{what}: {}", list.join(", "));
        }
    }
    let mut labels = inputs::workload_rows(&states.current_sim);
    labels.extend(inputs::workload_rows(&states.proposed_sim));
    let label = |pod: &str| labels.get(pod).cloned().unwrap_or_else(|| pod.to_string());
    let mut rows: BTreeMap<RowKey, Vec<&Change>> = BTreeMap::new();
    for c in &r.changes {
        let ns = c.to.split_once('/').map(|(n, _)| n).unwrap_or_default();
        rows.entry((
            ns.to_string(),
            label(&c.to),
            label(&c.from),
            c.protocol.as_str(),
            c.port,
            &c.current,
            &c.proposed,
        ))
        .or_default()
        .push(c);
    }
    let mut last_ns = None;
    for ((ns, to, from, protocol, port, now, then), pairs) in &rows {
        if last_ns != Some(ns) {
            let _ = writeln!(out, "\nnamespace {ns}");
            last_ns = Some(ns);
        }
        let shown = |v: &Verdict| {
            if v.verdict == "deny" && now.verdict == "allow" {
                "DENY".to_string()
            } else {
                v.verdict.clone()
            }
        };
        let count = if pairs.len() > 1 {
            format!("  ({} pod pairs)", pairs.len())
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {from} -> {to}  {protocol}/{port}  {} -> {}{count}",
            now.verdict,
            shown(then)
        );
        let _ = writeln!(out, "      current:  {}", or_none(&now.reason));
        let _ = writeln!(out, "      proposed: {}", or_none(&then.reason));
        if wide {
            for c in pairs {
                let _ = writeln!(out, "      pair: {} -> {}", c.from, c.to);
            }
        }
    }
    out
}

fn or_none(reason: &str) -> &str {
    if reason.is_empty() {
        "no policy applies (allowed by default)"
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str, text: &str) -> (String, String) {
        (name.to_string(), text.to_string())
    }

    const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default, labels: {app: a}}\nspec: {containers: [{name: c, image: x}]}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: default, labels: {app: b}}\nspec: {containers: [{name: c, image: x, ports: [{containerPort: 8080}]}]}\nstatus: {podIP: 10.0.0.2}\n";
    const DENY_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: default}\nspec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}\n";

    #[test]
    fn a_deny_all_denies_the_declared_port_and_nothing_else_changes() {
        let s = load_states(
            &[doc("cur.yaml", PODS)],
            &[doc("new.yaml", DENY_B)],
            &[],
            false,
        )
        .ok()
        .expect("loads");
        let r = compare(&s, None);
        assert_eq!(r.changes.len(), 1, "{:?}", r.changes);
        let c = &r.changes[0];
        assert_eq!(
            (c.from.as_str(), c.to.as_str(), c.port, c.change.as_str()),
            ("default/a", "default/b", 8080, "denied")
        );
        assert!(
            c.proposed.reason.contains("deny-b"),
            "{}",
            c.proposed.reason
        );
        assert_eq!(r.exit_code(), EXIT_DENIES);
        assert_eq!(s.objects.added, ["NetworkPolicy default/deny-b"]);
        assert_eq!(r.without_ports, ["default/a"], "a declares no port");
    }

    #[test]
    fn deleting_the_deny_only_allows_more_and_a_delete_naming_nothing_is_rejected() {
        let cur = [doc("cur.yaml", &format!("{PODS}---\n{DENY_B}"))];
        let s = load_states(&cur, &[], &["networkpolicy/default/deny-b".into()], false)
            .ok()
            .expect("loads");
        let r = compare(&s, None);
        assert_eq!(r.exit_code(), EXIT_ONLY_ALLOWS, "{:?}", r.changes);
        assert_eq!(s.objects.deleted, ["NetworkPolicy default/deny-b"]);
        let Err(e) = load_states(&cur, &[], &["NetworkPolicy/default/nope".into()], false) else {
            panic!("a --delete naming nothing must be rejected");
        };
        assert!(e.lines()[0].starts_with("--delete NetworkPolicy/default/nope: names no object"));
    }

    #[test]
    fn a_new_workload_does_not_shift_the_simulated_addresses_of_the_others() {
        let dep = |name: &str| {
            format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: default}}\nspec: {{selector: {{matchLabels: {{app: {name}}}}}, template: {{metadata: {{labels: {{app: {name}}}}}, spec: {{containers: [{{name: c, image: x}}]}}}}}}\n")
        };
        let s = load_states(
            &[doc("cur.yaml", &dep("web"))],
            &[doc("new.yaml", &dep("aaa"))],
            &[],
            false,
        )
        .ok()
        .expect("loads");
        let (c, p) = (&s.current.cluster.pods, &s.proposed.cluster.pods);
        assert_eq!(c["default/web-0"].ips, p["default/web-0"].ips);
        assert_ne!(p["default/aaa-0"].ips, p["default/web-0"].ips);
        assert_eq!(p["default/aaa-0"].ips.len(), 2, "one address per family");
    }
}
