//! Where the agent reads the desired state from.
//!
//! The reconciler sees only [`Snapshot`]s, never a watch stream, so a Kubernetes API
//! source (a later crate built on kube-rs reflectors) can replace the directory source
//! without touching the reconciler.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use palisade_policy::compile::Change;
use palisade_policy::manifest::{self, ManifestError};
use palisade_policy::model::Cluster;

/// One consistent view of the desired state.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The cluster the reconciler enforces.
    pub cluster: Cluster,
    /// Objects rejected; each error names the file (or API object), object and field.
    /// Never retryable: only a new version of the object fixes it.
    pub errors: Vec<ManifestError>,
    /// Warnings worth an operator's attention.
    pub warnings: Vec<String>,
    /// The API version (uid, resourceVersion) of each policy in `cluster`, when the
    /// source knows it (the Kubernetes source): what the node publishes as in force.
    pub versions: Vec<palisade_crds::PolicyInForce>,
    /// Each problem of each rejected policy object, with its resourceVersion (the
    /// Kubernetes source).
    pub rejected: Vec<palisade_crds::ObjectError>,
    /// The uid and apiVersion of each rejected policy object, by
    /// [`palisade_crds::PolicyRef::key`]: what an Event's `regarding` names.
    pub rejected_refs: BTreeMap<String, RejectedRef>,
}

/// What identifies a rejected API object beyond its kind, namespace and name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectedRef {
    /// `metadata.uid`.
    pub uid: String,
    /// `apiVersion` as the API server returned it.
    pub api_version: String,
}

/// Why a source gave no snapshot at all. A rejected object is not one of these: it is
/// reported in [`Snapshot::errors`] and the rest is enforced.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A directory or file of the manifest set could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not every kind has been listed from the API server yet: answering now would
    /// enforce a partial picture (fail closed).
    #[error("the API server's objects are not all listed yet; waiting for {}", waiting.join(", "))]
    NotListed {
        /// Each kind not listed, with the reason when known.
        waiting: Vec<String>,
    },
    /// A pod the CNI plugin named could not be read from the API server.
    #[error("reading pod {pod} from the API server")]
    Fetch {
        /// `namespace/name`.
        pod: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// Whether the cause is transient (API unreachable, throttled, 5xx).
        transient: bool,
    },
}

impl SourceError {
    /// Whether trying again later, with nothing else changed, can succeed: a file
    /// unreadable now, an API server not listed yet or unreachable. Not a forbidden or
    /// missing object, which needs someone to act first.
    pub fn retryable(&self) -> bool {
        match self {
            SourceError::Read { .. } | SourceError::NotListed { .. } => true,
            SourceError::Fetch { transient, .. } => *transient,
        }
    }
}

/// The objects a [`Source::refresh`] changed, by the model map they live in (Services
/// and EndpointSlices are not compiled, so not listed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changed {
    /// Namespace names.
    pub namespaces: BTreeSet<String>,
    /// Node names.
    pub nodes: BTreeSet<String>,
    /// Pods, `namespace/name`.
    pub pods: BTreeSet<String>,
    /// NetworkPolicies, `namespace/name`.
    pub network_policies: BTreeSet<String>,
    /// Cluster policies, `Kind/name`.
    pub cluster_policies: BTreeSet<String>,
    /// Services, `namespace/name` (Calico `services` peers).
    pub services: BTreeSet<String>,
    /// EndpointSlices, `namespace/name`.
    pub endpoint_slices: BTreeSet<String>,
    /// Calico policies, by `CalicoPolicy::key`.
    pub calico_policies: BTreeSet<String>,
    /// Calico network sets, by `NetworkSet::key`.
    pub network_sets: BTreeSet<String>,
    /// ServiceAccounts, `namespace/name` (Calico service account selectors).
    pub service_accounts: BTreeSet<String>,
}

impl Changed {
    /// Adds every compiled object of `c`.
    pub fn add_keys_of(&mut self, c: &Cluster) {
        self.namespaces.extend(c.namespaces.keys().cloned());
        self.nodes.extend(c.nodes.keys().cloned());
        self.pods.extend(c.pods.keys().cloned());
        self.network_policies
            .extend(c.network_policies.keys().cloned());
        self.cluster_policies
            .extend(c.cluster_policies.keys().cloned());
        self.services.extend(c.services.keys().cloned());
        self.endpoint_slices
            .extend(c.endpoint_slices.keys().cloned());
        self.calico_policies
            .extend(c.calico_policies.keys().cloned());
        self.network_sets.extend(c.network_sets.keys().cloned());
        self.service_accounts
            .extend(c.service_accounts.keys().cloned());
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.nodes.is_empty()
            && self.pods.is_empty()
            && self.network_policies.is_empty()
            && self.cluster_policies.is_empty()
            && self.services.is_empty()
            && self.endpoint_slices.is_empty()
            && self.calico_policies.is_empty()
            && self.network_sets.is_empty()
            && self.service_accounts.is_empty()
    }

    /// The compiler changes that turn `old` into `new` for these keys only, in the
    /// order of [`palisade_policy::compile::changes_between`] (upserts before removals),
    /// at a cost proportional to the keys, not to the cluster.
    pub fn changes(&self, old: &Cluster, new: &Cluster) -> Vec<Change> {
        fn upserts<V: PartialEq + Clone>(
            keys: &BTreeSet<String>,
            old: &BTreeMap<String, V>,
            new: &BTreeMap<String, V>,
            out: &mut Vec<Change>,
            f: impl Fn(V) -> Change,
        ) {
            for k in keys {
                if let Some(v) = new.get(k).filter(|v| old.get(k) != Some(*v)) {
                    out.push(f(v.clone()));
                }
            }
        }
        fn removals<V>(
            keys: &BTreeSet<String>,
            old: &BTreeMap<String, V>,
            new: &BTreeMap<String, V>,
            out: &mut Vec<Change>,
            f: impl Fn(String) -> Change,
        ) {
            for k in keys {
                if old.contains_key(k) && !new.contains_key(k) {
                    out.push(f(k.clone()));
                }
            }
        }
        let mut out = Vec::new();
        upserts(
            &self.namespaces,
            &old.namespaces,
            &new.namespaces,
            &mut out,
            Change::UpsertNamespace,
        );
        upserts(
            &self.nodes,
            &old.nodes,
            &new.nodes,
            &mut out,
            Change::UpsertNode,
        );
        upserts(
            &self.service_accounts,
            &old.service_accounts,
            &new.service_accounts,
            &mut out,
            Change::UpsertServiceAccount,
        );
        upserts(
            &self.pods,
            &old.pods,
            &new.pods,
            &mut out,
            Change::UpsertPod,
        );
        upserts(
            &self.network_policies,
            &old.network_policies,
            &new.network_policies,
            &mut out,
            Change::UpsertNetworkPolicy,
        );
        upserts(
            &self.cluster_policies,
            &old.cluster_policies,
            &new.cluster_policies,
            &mut out,
            Change::UpsertClusterPolicy,
        );
        upserts(
            &self.services,
            &old.services,
            &new.services,
            &mut out,
            Change::UpsertService,
        );
        upserts(
            &self.endpoint_slices,
            &old.endpoint_slices,
            &new.endpoint_slices,
            &mut out,
            Change::UpsertEndpointSlice,
        );
        upserts(
            &self.network_sets,
            &old.network_sets,
            &new.network_sets,
            &mut out,
            Change::UpsertNetworkSet,
        );
        upserts(
            &self.calico_policies,
            &old.calico_policies,
            &new.calico_policies,
            &mut out,
            Change::UpsertCalicoPolicy,
        );
        removals(
            &self.calico_policies,
            &old.calico_policies,
            &new.calico_policies,
            &mut out,
            Change::RemoveCalicoPolicy,
        );
        removals(
            &self.network_sets,
            &old.network_sets,
            &new.network_sets,
            &mut out,
            Change::RemoveNetworkSet,
        );
        removals(
            &self.endpoint_slices,
            &old.endpoint_slices,
            &new.endpoint_slices,
            &mut out,
            Change::RemoveEndpointSlice,
        );
        removals(
            &self.services,
            &old.services,
            &new.services,
            &mut out,
            Change::RemoveService,
        );
        removals(
            &self.cluster_policies,
            &old.cluster_policies,
            &new.cluster_policies,
            &mut out,
            Change::RemoveClusterPolicy,
        );
        removals(
            &self.network_policies,
            &old.network_policies,
            &new.network_policies,
            &mut out,
            Change::RemoveNetworkPolicy,
        );
        removals(
            &self.pods,
            &old.pods,
            &new.pods,
            &mut out,
            Change::RemovePod,
        );
        removals(
            &self.service_accounts,
            &old.service_accounts,
            &new.service_accounts,
            &mut out,
            Change::RemoveServiceAccount,
        );
        removals(
            &self.nodes,
            &old.nodes,
            &new.nodes,
            &mut out,
            Change::RemoveNode,
        );
        removals(
            &self.namespaces,
            &old.namespaces,
            &new.namespaces,
            &mut out,
            Change::RemoveNamespace,
        );
        out
    }
}

/// What a [`Source::refresh`] did to the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
// One value per pass, moved once: boxing the key sets would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Refresh {
    /// Replaced it: the reconciler diffs the whole snapshot.
    Whole,
    /// Changed only these objects (possibly none).
    Keys(Changed),
}

/// A source of desired state.
/// Wakes the reconciler's thread (see [`Source::set_waker`]).
pub type Waker = std::sync::Arc<dyn Fn() + Send + Sync>;

/// A source of desired state.
pub trait Source: Send {
    /// Reads the whole desired state now.
    fn load(&mut self) -> Result<Snapshot, SourceError>;

    /// Brings `snapshot` (the reconciler's, as this source last left it plus the CNI
    /// plugin's addresses) up to date and says which objects changed. Sources that
    /// track their objects one by one (a watch) change only those; the default reads
    /// everything again.
    fn refresh(&mut self, snapshot: &mut Snapshot) -> Result<Refresh, SourceError> {
        *snapshot = self.load()?;
        Ok(Refresh::Whole)
    }

    /// Gives the source a way to wake the reconciler. A source that learns of changes
    /// by itself (a watch) calls it on each change, so the change is acted on at once
    /// rather than at the next poll of [`Source::changed`] (a quarter second later).
    /// The default (a directory, polled by file times) keeps it unused.
    fn set_waker(&mut self, _wake: Waker) {}

    /// Reads the pod `namespace/name` (named by a CNI registration) now, when the
    /// source has not delivered it yet, so that the next refresh includes it. Returns
    /// whether the source has it now. The default (a directory) has nothing to ask.
    /// Blocks; called from the reconciler's thread, never from an async task.
    fn fetch_pod(&mut self, _pod: &str) -> Result<bool, SourceError> {
        Ok(false)
    }

    /// The state of each watch, for `status` and metrics (`resource_version_in_force`
    /// left empty: the reconciler fills it). None for a directory.
    fn watches(&self) -> Vec<palisade_api::WatchStatus> {
        Vec::new()
    }

    /// A cheap check of whether [`Source::load`] may now return something new.
    fn changed(&mut self) -> bool;
}

/// What identifies a file's version without reading it.
type Stamp = (SystemTime, u64);

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    /// The objects of the last version that loaded without errors, if any.
    good: Option<Cluster>,
    /// Errors and warnings of the current version.
    errors: Vec<ManifestError>,
    warnings: Vec<String>,
}

/// Manifests in a directory (recursively: `*.yaml`, `*.yml`, `*.json`), as the lab and
/// `palisade agent --manifests DIR` use.
///
/// Files are parsed on their own and cached by modification time and size, so a change
/// to one file costs one file's parse, not the whole directory's. Files are merged in
/// path order; an object defined twice takes the later file's version.
///
/// **Last known good, per object.** When an object of a file is rejected, its version
/// from the file's last good load stays in force and the errors are reported, while the
/// file's other objects take their new versions: an edit in progress or a typo never
/// removes or widens policy that is being enforced. When an error cannot be tied to one
/// object (a document that does not parse), the whole file's last good version stays.
/// A file that was never clean contributes its valid objects only.
#[derive(Debug)]
pub struct DirectorySource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Stamps of the tree at the last load.
    seen: Option<Vec<(PathBuf, Stamp)>>,
}

impl DirectorySource {
    /// A source reading `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            seen: None,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stamps(&self) -> Result<Vec<(PathBuf, Stamp)>, SourceError> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && d == self.dir => {
                    return Ok(out)
                }
                Err(source) => return Err(SourceError::Read { path: d, source }),
            };
            for entry in entries {
                let entry = entry.map_err(|source| SourceError::Read {
                    path: d.clone(),
                    source,
                })?;
                let path = entry.path();
                let Ok(md) = entry.metadata() else { continue };
                if md.is_dir() {
                    stack.push(path);
                } else if is_manifest(&path) {
                    out.push((
                        path,
                        (md.modified().unwrap_or(SystemTime::UNIX_EPOCH), md.len()),
                    ));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

fn parse(
    path: &Path,
    previous: Option<FileState>,
    stamp: Stamp,
) -> Result<Option<FileState>, SourceError> {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // Removed between listing and reading: treat as removed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SourceError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let loaded = manifest::load(&[(name.clone(), text)]);
    let errors = loaded.errors.clone();
    let mut warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    let good = if errors.is_empty() {
        Some(loaded.cluster)
    } else {
        match previous.and_then(|p| p.good) {
            Some(good) => {
                let mut cluster = loaded.cluster.clone();
                match loaded.keep_last_good(&mut cluster, &good) {
                    // Each rejected object keeps its last good version; the rest is new.
                    Some(kept) => {
                        for o in kept {
                            warnings.push(format!("{name}: {o}: keeping its last version that loaded cleanly until the errors are fixed"));
                        }
                        Some(cluster)
                    }
                    // An error no object can be blamed for: keep the whole file.
                    None => {
                        warnings.push(format!("{name}: keeping the last version that loaded cleanly until the errors are fixed"));
                        Some(good)
                    }
                }
            }
            // Never clean: its valid objects still count.
            None => Some(loaded.cluster),
        }
    };
    Ok(Some(FileState {
        stamp,
        good,
        errors,
        warnings,
    }))
}

impl Source for DirectorySource {
    fn load(&mut self) -> Result<Snapshot, SourceError> {
        let stamps = self.stamps()?;
        let mut files = BTreeMap::new();
        for (path, stamp) in &stamps {
            let previous = self.files.remove(path);
            let state = match previous {
                Some(p) if p.stamp == *stamp => Some(p),
                previous => parse(path, previous, *stamp)?,
            };
            if let Some(state) = state {
                files.insert(path.clone(), state);
            }
        }
        self.files = files;
        self.seen = Some(stamps);
        let mut snapshot = Snapshot::default();
        for state in self.files.values() {
            if let Some(good) = &state.good {
                snapshot.cluster.extend(good.clone());
            }
            snapshot.errors.extend(state.errors.iter().cloned());
            snapshot.warnings.extend(state.warnings.iter().cloned());
        }
        Ok(snapshot)
    }

    fn changed(&mut self) -> bool {
        match self.stamps() {
            Ok(s) => self.seen.as_ref() != Some(&s),
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: 80\n";
    const BAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: 80\n      endPort: 10\n";

    #[test]
    fn a_broken_edit_keeps_the_last_good_version_in_force() {
        let dir = std::env::temp_dir().join(format!("palisade-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.yaml");
        std::fs::write(&f, GOOD).unwrap();
        let mut src = DirectorySource::new(&dir);
        let s = src.load().unwrap();
        assert!(s.cluster.network_policies.contains_key("default/p"));
        assert!(!src.changed());
        std::fs::write(&f, BAD).unwrap();
        assert!(src.changed());
        let s = src.load().unwrap();
        assert!(
            s.cluster.network_policies.contains_key("default/p"),
            "the last good version must stay"
        );
        assert!(
            s.errors.iter().any(|e| e.to_string().contains("endPort")),
            "{:?}",
            s.errors
        );
        std::fs::remove_file(&f).unwrap();
        let s = src.load().unwrap();
        assert!(
            s.cluster.network_policies.is_empty(),
            "a removed file removes its objects"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 8: a typo in a field name rejects that object, and the agent keeps
    /// enforcing its last good version rather than a policy with the rule dropped.
    #[test]
    fn issue_8_a_field_typo_keeps_the_last_good_version_in_force() {
        let dir = std::env::temp_dir().join(format!("palisade-source-typo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p.yaml");
        std::fs::write(&f, GOOD).unwrap();
        let mut src = DirectorySource::new(&dir);
        src.load().unwrap();
        std::fs::write(&f, GOOD.replace("ingress:", "ingres:")).unwrap();
        let s = src.load().unwrap();
        let p = &s.cluster.network_policies["default/p"];
        assert_eq!(
            p.ingress.as_ref().map(Vec::len),
            Some(1),
            "the last good version, with its rule, stays in force"
        );
        assert!(
            s.errors.iter().any(|e| e
                .to_string()
                .contains("spec.ingres: unknown field; did you mean ingress?")),
            "{:?}",
            s.errors
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 8: the agent rejects the bad object alone: the file's other objects take
    /// their new versions.
    #[test]
    fn issue_8_a_bad_object_keeps_its_last_good_version_and_the_others_update() {
        let dir =
            std::env::temp_dir().join(format!("palisade-source-alone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("two.yaml");
        let other = GOOD.replace("name: p", "name: q");
        std::fs::write(&f, format!("{GOOD}---\n{other}")).unwrap();
        let mut src = DirectorySource::new(&dir);
        src.load().unwrap();
        // p gets a typo; q gains a second rule.
        let q2 = other.replace(
            "    - port: 80\n",
            "    - port: 80\n  - ports:\n    - port: 443\n",
        );
        std::fs::write(
            &f,
            format!("{}---\n{q2}", GOOD.replace("ingress:", "ingres:")),
        )
        .unwrap();
        let s = src.load().unwrap();
        let rules = |k: &str| s.cluster.network_policies[k].ingress.as_ref().map(Vec::len);
        assert_eq!(rules("default/p"), Some(1), "p keeps its last good version");
        assert_eq!(rules("default/q"), Some(2), "q takes its new version");
        assert!(
            s.warnings
                .iter()
                .any(|w| w.contains("NetworkPolicy default/p: keeping its last version")),
            "{:?}",
            s.warnings
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_never_loaded_cleanly_contributes_its_valid_objects() {
        let dir = std::env::temp_dir().join(format!("palisade-source-new-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("mixed.yaml"),
            format!("{}---\n{}", GOOD.replace("name: p", "name: ok"), BAD),
        )
        .unwrap();
        let s = DirectorySource::new(&dir).load().unwrap();
        assert!(s.cluster.network_policies.contains_key("default/ok"));
        assert!(!s.cluster.network_policies.contains_key("default/p"));
        assert_eq!(s.errors.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
