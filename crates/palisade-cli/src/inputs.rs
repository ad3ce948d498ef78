//! Reading `-f PATH...` arguments (files or directories of manifests), and deciding
//! whether what loaded is complete enough to answer from.
//!
//! An answer computed while some objects were rejected leaves them out, and a left-out
//! deny policy turns into a wrong "allowed". So `simulate` and `explain` withhold their
//! answer (exit [`crate::EXIT_INVALID`]) unless `--ignore-invalid` is given, and then
//! say on the first line what the answer excludes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use palisade_policy::manifest::{self, Loaded, ManifestError};
use palisade_policy::model::workload::{Simulation, SIMULATION_V4, SIMULATION_V6};
use serde_json::{json, Value};

/// Input that cannot be answered from (empty, or no manifests in a directory): the
/// command exits with [`crate::EXIT_INVALID`], not as a failure to run.
#[derive(Debug)]
pub struct InvalidInput(pub String);

impl std::fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidInput {}

/// Expands files and directories (recursively; `*.yaml`, `*.yml`, `*.json`, sorted) and
/// reads them as `(display name, text)` pairs for [`manifest::load`]. `-` reads stdin.
/// A directory without manifests contributes nothing (the lab's state may be empty).
pub fn read_inputs(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    read(paths, false, true)
}

/// Reads `paths` for an offline answer: a directory without manifests is an
/// [`InvalidInput`], and without `recursive` its subdirectories are not read (see
/// [`read`]). For commands that load the texts themselves (`diff` loads two states).
pub fn read_manifests(paths: &[PathBuf], recursive: bool) -> anyhow::Result<Vec<(String, String)>> {
    read(paths, true, recursive)
}

/// [`read_inputs`], where a directory without manifests is an [`InvalidInput`] (a user
/// who names a directory expects manifests in it). Without `recursive` a directory's
/// subdirectories are not read (as `kubectl -f DIR` without `-R`), and each one holding
/// manifests is named on stderr, never silently dropped.
fn read(
    paths: &[PathBuf],
    require_files: bool,
    recursive: bool,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading standard input")?;
            out.push(("<stdin>".to_string(), text));
            continue;
        }
        let meta = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            let mut skipped = Vec::new();
            collect(p, &mut files, recursive, &mut skipped)?;
            skipped.sort();
            if files.is_empty() && require_files {
                let hint = if skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        "\n\nhint: its subdirectories hold some ({}); pass -R to read them",
                        skipped.join(", ")
                    )
                };
                return Err(InvalidInput(format!(
                    "directory {} holds no manifest files (*.yaml, *.yml, *.json){hint}",
                    p.display()
                ))
                .into());
            }
            for d in &skipped {
                eprintln!("note: {d} not read: it is a subdirectory (pass -R to read it)");
            }
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                out.push((f.display().to_string(), text));
            }
        } else {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            out.push((p.display().to_string(), text));
        }
    }
    Ok(out)
}

/// Manifest files under `dir` into `out`; without `recursive`, the subdirectories
/// that hold some go into `skipped` instead.
fn collect(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    recursive: bool,
    skipped: &mut Vec<String>,
) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            if recursive {
                collect(&path, out, true, skipped)?;
            } else {
                let mut below = Vec::new();
                collect(&path, &mut below, true, skipped)?;
                if !below.is_empty() {
                    skipped.push(path.display().to_string());
                }
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Loads manifests read for an offline answer: workloads count as the pods they
/// would run and pods without an address get simulated ones (said by
/// [`simulation_note`]). Input that holds no object at all is an [`InvalidInput`]
/// error: there is nothing to answer from.
fn load_manifests(inputs: &[(String, String)]) -> anyhow::Result<(Loaded, Simulation)> {
    let mut loaded = manifest::load(inputs);
    let simulation = loaded.simulate_pods();
    if loaded.documents == 0 {
        let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
        return Err(InvalidInput(format!(
            "no Kubernetes objects in the input ({})",
            if names.is_empty() {
                "no files".to_string()
            } else {
                names.join(", ")
            }
        ))
        .into());
    }
    Ok((loaded, simulation))
}

/// Where an answer came from: the files read, and with `--live` the cluster. Every
/// JSON answer carries it as `source` ([`InputSource::json`], docs/output.md).
#[derive(Debug, Default)]
pub struct InputSource {
    /// The files read, as named in errors (`<stdin>` for `-`), in reading order.
    pub files: Vec<String>,
    /// What `--live` read; `None` for files alone.
    pub cluster: Option<ClusterRead>,
    /// Notes (objects read from the cluster, what the files replaced or added, CRDs not
    /// installed), shown before the answer. Empty for files alone.
    pub notes: Vec<String>,
    /// Kinds the credentials may not list (see [`completeness_with`]).
    pub forbidden: Vec<crate::live::Forbidden>,
}

/// The cluster side of an [`InputSource`].
#[derive(Debug, Default)]
pub struct ClusterRead {
    /// Server and context.
    pub name: crate::live::ClusterName,
    /// Objects read per resource.
    pub objects: std::collections::BTreeMap<String, usize>,
    /// Resources the cluster does not serve.
    pub not_served: Vec<String>,
    /// Live objects a file's object replaced.
    pub replaced: usize,
    /// File objects with no live counterpart.
    pub added: usize,
}

impl InputSource {
    /// A source of files alone.
    pub fn files(inputs: &[(String, String)]) -> Self {
        InputSource {
            files: inputs.iter().map(|(n, _)| n.clone()).collect(),
            ..Default::default()
        }
    }

    /// The `source` object: `{complete, files, cluster, missingKinds}`. `complete` is
    /// false when the answer leaves something out that the input holds (a kind that
    /// could not be listed, or an object rejected under `--ignore-invalid`), so a
    /// program can refuse such an answer without parsing notes.
    pub fn json(&self, loaded: &Loaded) -> Value {
        self.json_with(!loaded.errors.is_empty())
    }

    /// [`InputSource::json`] where `rejected` says whether objects were left out.
    pub fn json_with(&self, rejected: bool) -> Value {
        json!({
            "complete": self.forbidden.is_empty() && !rejected,
            "files": self.files,
            "cluster": self.cluster.as_ref().map(|c| json!({
                "server": c.name.server,
                "context": c.name.context,
                "objects": c.objects,
                "notServed": c.not_served,
                "overlay": {"replaced": c.replaced, "added": c.added},
            })),
            "missingKinds": self.forbidden.iter().map(|f| f.json()).collect::<Vec<_>>(),
        })
    }

    /// Where a `--from`/`--to` pod was looked for, for "not found in ...".
    pub fn place(&self) -> &'static str {
        match self.cluster {
            Some(_) if self.files.is_empty() => "the cluster",
            Some(_) => "the cluster (with the files overlaid)",
            None => "the manifests",
        }
    }
}

/// [`load_manifests`], or with `--live` the cluster's objects with the `-f` files
/// overlaid (no `-f` is fine then): the loader replaces a live object by a file's of
/// the same kind, namespace and name, which is what an overlay is, so those
/// replacements are counted in a note instead of warned about.
pub fn load_input(
    paths: &[PathBuf],
    recursive: bool,
    live: &crate::live::LiveArgs,
) -> anyhow::Result<(Loaded, Simulation, InputSource)> {
    if !live.enabled() {
        let inputs = read(paths, true, recursive)?;
        let (loaded, sim) = load_manifests(&inputs)?;
        return Ok((loaded, sim, InputSource::files(&inputs)));
    }
    let listed = crate::live::list(live)?;
    let files = read(paths, true, recursive)?;
    let (mut loaded, info) = overlay(listed, &files);
    let simulation = loaded.simulate_pods();
    Ok((loaded, simulation, info))
}

/// Loads the live documents with `files` overlaid, counting what the files did.
pub fn overlay(listed: crate::live::Listed, files: &[(String, String)]) -> (Loaded, InputSource) {
    let live_objects = manifest::load(&listed.documents).sources;
    let mut loaded = manifest::load(&[listed.documents.as_slice(), files].concat());
    loaded.warnings.retain(|w| {
        !(w.message
            .starts_with("duplicate object: replaces the one from live:")
            && w.file.as_deref().is_some_and(|f| !f.starts_with("live:")))
    });
    let (mut added, mut replaced) = (0, 0);
    for (object, source) in &loaded.sources {
        if !source.starts_with("live:") {
            if live_objects.contains_key(object) {
                replaced += 1;
            } else {
                added += 1;
            }
        }
    }
    let mut notes = listed.notes;
    notes.insert(
        0,
        format!(
            "note: live: {} object(s) read from the cluster at {}; the files replaced {replaced} and added {added}",
            listed.documents.len(),
            cluster_words(&listed.cluster)
        ),
    );
    (
        loaded,
        InputSource {
            files: files.iter().map(|(n, _)| n.clone()).collect(),
            cluster: Some(ClusterRead {
                name: listed.cluster,
                objects: listed.objects,
                not_served: listed.not_served,
                replaced,
                added,
            }),
            notes,
            forbidden: listed.forbidden,
        },
    )
}

/// A `--from`/`--to` pod the input does not hold: invalid input naming where it was
/// looked for (`place`: [`InputSource::place`]) and its namespace, with that
/// namespace's pods when they are few enough to read, then `hint`.
pub fn pod_not_found(
    cluster: &palisade_policy::model::Cluster,
    key: &str,
    place: &str,
    hint: &str,
) -> anyhow::Error {
    /// More pod names than this are counted, not listed.
    const LISTED: usize = 5;
    let why = match key.split_once('/') {
        Some((ns, _)) => {
            let here: Vec<&str> = cluster
                .pods
                .keys()
                .filter_map(|k| k.strip_prefix(ns)?.strip_prefix('/'))
                .collect();
            match here.len() {
                0 if cluster.namespaces.contains_key(ns) => {
                    format!(": namespace {ns} has no pod")
                }
                0 => format!(": there is no namespace {ns}"),
                n if n <= LISTED => format!(": namespace {ns} has {}", here.join(", ")),
                n => format!(": namespace {ns} has {n} other pods"),
            }
        }
        None => String::new(),
    };
    InvalidInput(format!(
        "pod {key} not found in {place}{why}\n\nhint: {hint}"
    ))
    .into()
}

/// `SERVER (context NAME)`, or `SERVER (in-cluster service account)`.
pub fn cluster_words(c: &crate::live::ClusterName) -> String {
    match &c.context {
        Some(ctx) => format!("{} (context {ctx})", c.server),
        None => format!("{} (in-cluster service account)", c.server),
    }
}

/// The line that says which pods have simulated addresses, if any did not have one.
pub fn simulation_note(s: &Simulation) -> Option<String> {
    if s.addressed.is_empty() {
        return None;
    }
    Some(format!(
        "note: {} pod(s) without status.podIP have simulated addresses from {} and {} (docs/semantics.md, \"Workloads and simulated addresses\")",
        s.addressed.len(),
        SIMULATION_V4,
        SIMULATION_V6
    ))
}

/// A workload's pods when it is shown as one row, with the count it runs.
pub fn workload_rows(s: &Simulation) -> std::collections::BTreeMap<String, String> {
    let mut rows = std::collections::BTreeMap::new();
    for w in &s.workloads {
        let shown = if (w.pods.len() as u32) < w.replicas {
            format!(", {} simulated", w.pods.len())
        } else {
            String::new()
        };
        let label = format!("{} ({} x{}{shown})", w.name, w.kind, w.replicas);
        for p in &w.pods {
            rows.insert(p.clone(), label.clone());
        }
    }
    rows
}

/// What an error left out of the model: the object, or the document it was in.
pub fn left_out(e: &ManifestError) -> String {
    match e {
        ManifestError::Syntax { file, document, .. }
        | ManifestError::Document { file, document, .. } => format!("{file} document {document}"),
        ManifestError::Decode { object, .. } | ManifestError::Invalid { object, .. } => {
            object.clone()
        }
    }
}

/// Every error as JSON: `{file, line, column, object, field, message}` (absent parts
/// are null).
pub fn errors_json(loaded: &Loaded) -> Value {
    loaded
        .errors
        .iter()
        .map(|e| {
            json!({
                "file": e.file(),
                "line": e.position().map(|p| p.line),
                "column": e.position().map(|p| p.column),
                "object": left_out(e),
                "field": e.field(),
                "message": e.message(),
            })
        })
        .collect()
}

/// The objects left out, each once, in input order.
fn left_out_list(loaded: &Loaded) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in &loaded.errors {
        let o = left_out(e);
        if !out.contains(&o) {
            out.push(o);
        }
    }
    out
}

/// Prints load warnings and errors to stderr, for commands that answer from manifests.
pub fn print_problems(loaded: &Loaded) {
    for e in &loaded.errors {
        eprintln!("error: {e}");
    }
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
}

/// Whether to answer. `Ok(None)`: the model is complete. `Ok(Some(note))`: some objects
/// were rejected and `ignore_invalid` was given; `note` is the line that must open the
/// answer. `Err(message)`: rejected objects and no `--ignore-invalid`; withhold the
/// answer and print `message`.
pub fn completeness(loaded: &Loaded, ignore_invalid: bool) -> Result<Option<String>, String> {
    if loaded.errors.is_empty() {
        return Ok(None);
    }
    let list = left_out_list(loaded);
    if ignore_invalid {
        Ok(Some(format!(
            "note: this answer excludes {} invalid object(s): {}",
            list.len(),
            list.join(", ")
        )))
    } else {
        Err(format!(
            "error: no answer: {} object(s) were rejected and an answer would leave them out: {}\n\nhint: fix them, or pass --ignore-invalid to answer without them",
            list.len(),
            list.join(", ")
        ))
    }
}

/// [`completeness`], where `forbidden` names kinds that could not be listed: their
/// objects are unknown, so the answer is INCOMPLETE and withheld (the error's first line
/// names them) unless `ignore_invalid`, when the note opening the answer says so.
pub fn completeness_with(
    loaded: &Loaded,
    forbidden: &[crate::live::Forbidden],
    ignore_invalid: bool,
) -> Result<Option<String>, String> {
    let objects = completeness(loaded, ignore_invalid);
    if forbidden.is_empty() {
        return objects;
    }
    let kinds = crate::live::joined(forbidden);
    if !ignore_invalid {
        let mut message = format!(
            "error: no answer: the input is INCOMPLETE: the credentials may not list {kinds}"
        );
        if let Err(m) = objects {
            message.push('\n');
            message.push_str(&m);
        }
        message.push_str("\n\nhint: grant get/list on every kind Palisade reads (deploy/rbac/palisade-reader.yaml), or pass --ignore-invalid to answer without them");
        return Err(message);
    }
    let mut note = format!(
        "note: this answer is INCOMPLETE: it excludes every object of the kinds the credentials may not list: {kinds}"
    );
    if let Ok(Some(n)) = objects {
        note.push('\n');
        note.push_str(&n);
    }
    Ok(Some(note))
}

/// Adds what was simulated to a JSON answer, only when something was: `workloads`
/// (`[{kind, name, replicas, pods, simulated}]`) and `simulatedAddresses`
/// (`{"ns/pod": ["10.244.0.1", "fd00:10:244::1"]}`). An input of pods with addresses
/// keeps the answer's documented keys exactly.
pub fn add_simulation_json(v: &mut Value, s: &Simulation) {
    if !s.workloads.is_empty() {
        v["workloads"] = json!(s.workloads);
    }
    if !s.addressed.is_empty() {
        v["simulatedAddresses"] = json!(s.addressed);
    }
}
