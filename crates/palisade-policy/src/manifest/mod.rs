//! Manifests in, [`Cluster`] out: parse YAML/JSON, validate like the API server, default,
//! normalize.
//!
//! Start at [`load`]. Input is a list of `(source name, text)` pairs: this module does no
//! I/O, so the CLI reads files, the lab embeds strings and tests write literals.
//!
//! ## Stages
//!
//! 1. `documents`: split each text into YAML documents (`---`) or JSON values and parse
//!    each on its own into a `serde_json::Value`; `kind: List` is expanded.
//!    YAML is read as YAML 1.2, as Kubernetes reads it (`y`, `no`, `on` are strings);
//!    a key written twice is an error; each field's line and column are kept
//!    (`location`) so errors can point at them.
//! 2. Dispatch on `apiVersion` + `kind` (`kinds`). A policy kind Palisade does not
//!    enforce (Calico, Cilium, `networking.k8s.io/v1beta1`, any other `...Policy`) is an
//!    error: answering without it would be wrong. Other unknown kinds cannot affect
//!    network policy and are skipped with a [`Warning`].
//! 3. Decode into `k8s-openapi` types (core and networking objects) or this module's own
//!    serde types (the policy.networking.k8s.io CRDs), strictly (`strict`: an unknown
//!    field or a value of the wrong type is an error, never dropped or converted),
//!    validate, default and convert to [`crate::model`]: `objects`, `network_policy`,
//!    `cluster_policy`.
//!
//! ## Decisions where the API server's behaviour varies
//!
//! - A CIDR with host bits set (`10.0.0.1/24`) is accepted, truncated (`10.0.0.0/24`)
//!   and warned about, as API servers do by default since 1.33 (KEP-4858); see `cidr.rs`.
//! - Rule limits follow the CRD schemas: 25 rules per direction for v1alpha2
//!   ClusterNetworkPolicy, 100 for v1alpha1 AdminNetworkPolicy/BaselineAdminNetworkPolicy.
//! - `Pass` in the Baseline tier is rejected (there is no later tier to pass to).
//!
//! ## Error policy
//!
//! Every problem of an object is collected (not just the first), each naming file,
//! object and field path. An object with any error is rejected alone; every other object
//! still loads. When two objects share kind, namespace and name, the later one (in input
//! order) wins, with a warning naming both places. [`lint`] then looks for objects that
//! loaded but probably do not do what was meant.

mod calico;
mod cidr;
mod cluster_policy;
mod documents;
mod error;
mod kinds;
mod lint;
mod location;
mod names;
mod network_policy;
mod objects;
mod ports;
mod selector;
mod strict;
mod workloads;

#[cfg(test)]
mod calico_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde_json::Value;

pub use error::{ManifestError, Warning};
pub use lint::lint;
pub use location::Position;

use crate::model::workload::{simulate_pods, Owner, Simulation, Workload, WorkloadKind};
use crate::model::Cluster;
use error::Problems;
use kinds::{Dispatch, Kind};
use location::Sites;

/// The warning each loaded workload gets until [`Loaded::simulate_pods`] counts it: a
/// reader of the pods that exist (an agent, the lab) does not run it.
pub const WORKLOAD_SKIPPED: &str = "a workload, not a pod: only offline answers (simulate, explain, validate) count the pods it would run; skipped here";

/// The result of [`load`]: everything that loaded, and why anything did not.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Every valid object.
    pub cluster: Cluster,
    /// Rejected documents and objects, in input order.
    pub errors: Vec<ManifestError>,
    /// Skipped documents, defaulting surprises and replaced duplicates, in input order.
    pub warnings: Vec<Warning>,
    /// The source name each loaded object came from, by `Kind namespace/name` or
    /// `Kind name` (as errors and warnings name objects).
    pub sources: BTreeMap<String, String>,
    /// How many documents (and `List` items) the inputs held, loaded or not: zero means
    /// the input was empty, which callers report rather than answer from.
    pub documents: usize,
    /// Workloads (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) by
    /// [`Workload::key`]. Not part of [`Loaded::cluster`]: their pods exist only once
    /// [`Loaded::simulate_pods`] imagines them, which only offline answers do.
    pub workloads: BTreeMap<String, Workload>,
    /// The controller each loaded Pod names (`metadata.ownerReferences`), by
    /// `namespace/name`, so a workload whose pods are in the input is not simulated.
    pub pod_owners: BTreeMap<String, Owner>,
    /// The model objects that were rejected (kind, key), for [`Loaded::keep_last_good`].
    rejected: Vec<(Kind, String)>,
    /// The model object each loaded object is (`Kind key` -> kind, key), for
    /// [`Loaded::remove_object`].
    placed: BTreeMap<String, (Kind, String)>,
    /// Whether some error could not be tied to one object (a document that does not
    /// parse, or does not name its object).
    unattributed: bool,
}

impl Loaded {
    /// For a reader that holds an earlier version of the same input (the agent, per
    /// file): puts into `cluster` the `previous` version of each object this load
    /// rejected, so a bad edit of one object keeps that object's last good version in
    /// force while every other object takes its new version. Returns the objects kept
    /// (`Kind key`), or `None` when some error cannot be tied to one object, and the
    /// caller must keep its whole previous version instead.
    pub fn keep_last_good(&self, cluster: &mut Cluster, previous: &Cluster) -> Option<Vec<String>> {
        fn copy<T: Clone>(
            from: &BTreeMap<String, T>,
            to: &mut BTreeMap<String, T>,
            key: &str,
        ) -> bool {
            match from.get(key) {
                Some(o) => {
                    to.insert(key.to_string(), o.clone());
                    true
                }
                None => false,
            }
        }
        if self.unattributed {
            return None;
        }
        let mut kept = Vec::new();
        for (kind, key) in &self.rejected {
            let p = previous;
            let found = match kind {
                Kind::Namespace => copy(&p.namespaces, &mut cluster.namespaces, key),
                Kind::Pod => copy(&p.pods, &mut cluster.pods, key),
                Kind::Node => copy(&p.nodes, &mut cluster.nodes, key),
                Kind::Service => copy(&p.services, &mut cluster.services, key),
                Kind::EndpointSlice => copy(&p.endpoint_slices, &mut cluster.endpoint_slices, key),
                Kind::ServiceAccount => {
                    copy(&p.service_accounts, &mut cluster.service_accounts, key)
                }
                Kind::NetworkPolicy => {
                    copy(&p.network_policies, &mut cluster.network_policies, key)
                }
                Kind::Cluster(k) => copy(
                    &p.cluster_policies,
                    &mut cluster.cluster_policies,
                    &format!("{}/{key}", k.as_str()),
                ),
                Kind::Calico(k) => copy(
                    &p.calico_policies,
                    &mut cluster.calico_policies,
                    &format!("{}/{key}", k.as_str()),
                ),
                Kind::NetworkSet { global } => copy(
                    &p.network_sets,
                    &mut cluster.network_sets,
                    &if *global {
                        format!("GlobalNetworkSet/{key}")
                    } else {
                        format!("NetworkSet/{key}")
                    },
                ),
            };
            if found {
                kept.push(format!("{} {key}", kind.name()));
            }
        }
        Some(kept)
    }

    /// Takes out the loaded object named `object` (`Kind namespace/name` or `Kind name`,
    /// as [`Loaded::sources`] names it), as if its document had not been in the input:
    /// `palisade diff --delete` proposes a deletion this way. Call it before
    /// [`Loaded::simulate_pods`] for a workload. Returns whether there was such an object.
    pub fn remove_object(&mut self, object: &str) -> bool {
        if self.sources.remove(object).is_none() {
            return false;
        }
        if self.workloads.remove(object).is_some() {
            return true;
        }
        let Some((kind, key)) = self.placed.remove(object) else {
            return true;
        };
        let c = &mut self.cluster;
        match kind {
            Kind::Namespace => {
                let _ = c.namespaces.remove(&key);
            }
            Kind::Pod => {
                c.pods.remove(&key);
                self.pod_owners.remove(&key);
            }
            Kind::Node => {
                let _ = c.nodes.remove(&key);
            }
            Kind::Service => {
                let _ = c.services.remove(&key);
            }
            Kind::EndpointSlice => {
                let _ = c.endpoint_slices.remove(&key);
            }
            Kind::ServiceAccount => {
                let _ = c.service_accounts.remove(&key);
            }
            Kind::NetworkPolicy => {
                let _ = c.network_policies.remove(&key);
            }
            Kind::Cluster(k) => {
                let _ = c.cluster_policies.remove(&format!("{}/{key}", k.as_str()));
            }
            Kind::Calico(k) => {
                let _ = c.calico_policies.remove(&format!("{}/{key}", k.as_str()));
            }
            Kind::NetworkSet { global } => {
                let prefix = if global {
                    "GlobalNetworkSet"
                } else {
                    "NetworkSet"
                };
                let _ = c.network_sets.remove(&format!("{prefix}/{key}"));
            }
        }
        true
    }

    /// Adds the pods of every workload to [`Loaded::cluster`] and addresses from the
    /// simulation range to pods without one: see [`crate::model::workload`].
    /// The warnings that said each workload was skipped go: it now counts.
    pub fn simulate_pods(&mut self) -> Simulation {
        let workloads = &self.workloads;
        self.warnings
            .retain(|w| !(w.message == WORKLOAD_SKIPPED && workloads.contains_key(&w.object)));
        simulate_pods(&mut self.cluster, &self.workloads, &self.pod_owners)
    }

    /// [`lint`] of the loaded cluster, each warning naming the file of its object.
    pub fn lint(&self) -> Vec<Warning> {
        let mut out = lint(&self.cluster);
        for w in &mut out {
            w.file = self.sources.get(&w.object).cloned();
        }
        out
    }
}

/// Parses, validates and normalizes every object in `inputs` (`(source name, text)`
/// pairs; the name only labels errors). Never fails as a whole: see [`Loaded`].
pub fn load(inputs: &[(String, String)]) -> Loaded {
    let mut loader = Loader::default();
    for (file, text) in inputs {
        let docs = documents::split(text);
        if docs.is_empty() {
            loader.out.warnings.push(Warning {
                file: Some(file.clone()),
                at: None,
                object: String::new(),
                field: String::new(),
                message: "no Kubernetes object in this file (it is empty or only comments)".into(),
            });
        }
        for doc in docs {
            loader.out.documents += 1;
            match doc.content {
                Ok(v) => loader.object(file, doc.number, &doc.sites, "", v),
                Err(e) => {
                    loader.out.unattributed = true;
                    loader.out.errors.push(ManifestError::Syntax {
                        file: file.clone(),
                        at: e.at,
                        document: doc.number,
                        message: e.message,
                    })
                }
            }
        }
    }
    loader.out.cluster.resolve_host_network_addresses();
    loader.out
}

/// The objects in one text, one JSON value each (`kind: List` expanded), for tools
/// that store objects one by one (the lab keeps one file per object). Documents that
/// do not parse are errors with their number. No validation: use [`load`] for that.
pub fn split_objects(text: &str) -> Vec<Result<Value, String>> {
    let mut out = Vec::new();
    for doc in documents::split(text) {
        match doc.content {
            Ok(v) => match documents::list_items(&v) {
                Some(items) => out.extend(items.iter().cloned().map(Ok)),
                None => out.push(Ok(v)),
            },
            Err(e) => out.push(Err(format!("document {}: {e}", doc.number))),
        }
    }
    out
}

/// Where each loaded object came from, to name both places when one replaces another.
#[derive(Default)]
struct Loader {
    out: Loaded,
    origin: BTreeMap<String, String>,
}

/// A scalar as text, for naming an object whose name or namespace has the wrong type
/// (`namespace: 1` must not become the default namespace).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Loader {
    fn warn(
        &mut self,
        file: &str,
        at: Option<Position>,
        object: &str,
        field: &str,
        message: impl Into<String>,
    ) {
        self.out.warnings.push(Warning {
            file: Some(file.into()),
            at,
            object: object.into(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn document_error(
        &mut self,
        file: &str,
        at: Option<Position>,
        document: usize,
        message: impl Into<String>,
    ) {
        self.out.unattributed = true;
        self.out.errors.push(ManifestError::Document {
            file: file.into(),
            at,
            document,
            message: message.into(),
        });
    }

    /// One document (or `List` item) `v`. `item` is `""` for a document, or the item's
    /// path (`items[3]`, `items[3].items[0]`) inside a list document; `sites` are the
    /// document's, so an item's are found under its path.
    fn object(&mut self, file: &str, document: usize, doc_sites: &Sites, item: &str, v: Value) {
        let sites = doc_sites.under(item);
        let root = sites.locate("", false);
        // Prefix for messages of document errors, whose Display already names the document.
        let at = if item.is_empty() {
            String::new()
        } else {
            format!("{item}: ")
        };
        if !v.is_object() {
            self.document_error(
                file,
                root,
                document,
                format!(
                    "{at}not a Kubernetes object (expected a mapping with apiVersion and kind)"
                ),
            );
            return;
        }
        let api_version = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind_name = v.get("kind").and_then(Value::as_str).unwrap_or_default();
        if api_version.is_empty() || kind_name.is_empty() {
            let missing = if api_version.is_empty() {
                "apiVersion"
            } else {
                "kind"
            };
            let problem = if v.get(missing).is_some_and(|x| !x.is_string()) {
                "must be a string"
            } else {
                "is required"
            };
            self.document_error(
                file,
                sites.locate(missing, false).or(root),
                document,
                format!("{at}{missing} {problem}"),
            );
            return;
        }
        if let Some(items) = documents::list_items(&v) {
            for (i, item_value) in items.clone().into_iter().enumerate() {
                let path = if item.is_empty() {
                    format!("items[{i}]")
                } else {
                    format!("{item}.items[{i}]")
                };
                self.object(file, document, doc_sites, &path, item_value);
            }
            return;
        }
        let name = v.pointer("/metadata/name").and_then(scalar_text);
        let given_ns = v.pointer("/metadata/namespace").and_then(scalar_text);
        // How to name an object we skip or refuse: by kind and name when it has them.
        let skipped = match (&name, &given_ns) {
            (Some(n), Some(ns)) => format!("{kind_name} {ns}/{n}"),
            (Some(n), None) => format!("{kind_name} {n}"),
            _ if item.is_empty() => format!("document {document}"),
            _ => format!("document {document} {item}"),
        };
        if let Some(wk) = WorkloadKind::parse(api_version, kind_name) {
            self.workload(file, document, &sites, wk, name, given_ns, &v);
            return;
        }
        let kind = match kinds::dispatch(api_version, kind_name) {
            Dispatch::Decode(k) => k,
            Dispatch::Unenforced(message) => {
                // A supported kind at another version replaces that kind's object:
                // record it, so an earlier version can stay in force.
                match (kinds::supported(kind_name), &name) {
                    (Some((_, k)), Some(n)) => {
                        let key = match (k.namespaced(), &given_ns) {
                            (true, Some(ns)) if !ns.is_empty() => format!("{ns}/{n}"),
                            (true, _) => format!("default/{n}"),
                            (false, _) => n.clone(),
                        };
                        self.out.rejected.push((k, key));
                    }
                    (Some(_), None) => self.out.unattributed = true,
                    // Never part of the model: nothing earlier to keep.
                    (None, _) => {}
                }
                self.out.errors.push(ManifestError::Invalid {
                    file: file.into(),
                    at: sites.locate("kind", false),
                    object: skipped,
                    field: "kind".into(),
                    message,
                });
                return;
            }
            Dispatch::Skip { field, message } => {
                self.warn(file, sites.locate(field, false), &skipped, field, message);
                return;
            }
        };

        let name = name.unwrap_or_default();
        if name.is_empty() {
            self.document_error(
                file,
                sites.locate("metadata.name", false).or(root),
                document,
                format!("{at}{kind_name} has no metadata.name"),
            );
            return;
        }
        let namespace = kind.namespaced().then(|| {
            given_ns
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_string())
        });
        let key = match &namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.clone(),
        };
        let object = format!("{kind_name} {key}");

        let mut p = Problems::default();
        let name_errs = match kind {
            Kind::Namespace => names::dns1123_label(&name),
            Kind::Service => names::dns1035_label(&name),
            _ => names::dns1123_subdomain(&name),
        };
        for m in name_errs {
            p.error("metadata.name", format!("invalid name {name:?}: {m}"));
        }
        if let Some(ns) = &namespace {
            for m in names::dns1123_label(ns) {
                p.error(
                    "metadata.namespace",
                    format!("invalid namespace {ns:?}: {m}"),
                );
            }
        }
        let ns = namespace.as_deref().unwrap_or_default();
        // Decode and validate; the object is inserted only if it has no errors.
        let s = &sites;
        let parsed =
            match kind {
                Kind::Namespace => objects::namespace(&v, s, &name, &mut p).map(Parsed::Namespace),
                Kind::Pod => objects::pod(&v, s, ns, &name, &mut p).map(Parsed::Pod),
                Kind::Node => objects::node(&v, s, &name, &mut p).map(Parsed::Node),
                Kind::Service => objects::service(&v, s, ns, &name, &mut p).map(Parsed::Service),
                Kind::EndpointSlice => {
                    objects::endpoint_slice(&v, s, ns, &name, &mut p).map(Parsed::EndpointSlice)
                }
                Kind::ServiceAccount => {
                    objects::service_account(&v, s, ns, &name, &mut p).map(Parsed::ServiceAccount)
                }
                Kind::NetworkPolicy => network_policy::network_policy(&v, s, ns, &name, &mut p)
                    .map(Parsed::NetworkPolicy),
                Kind::Cluster(k) => cluster_policy::cluster_policy(&v, s, k, &name, &mut p)
                    .map(Parsed::ClusterPolicy),
                Kind::Calico(k) => calico::policy(&v, s, k, namespace.as_deref(), &name, &mut p)
                    .map(Parsed::CalicoPolicy),
                Kind::NetworkSet { .. } => {
                    calico::network_set(&v, s, namespace.as_deref(), &name, &mut p)
                        .map(Parsed::NetworkSet)
                }
            };
        for (field, message) in p.warnings {
            self.out.warnings.push(Warning {
                file: Some(file.into()),
                at: sites.locate(&field, false),
                object: object.clone(),
                field,
                message,
            });
        }
        if parsed.is_none() || !p.errors.is_empty() {
            self.out.rejected.push((kind, key.clone()));
            for (field, message) in p.errors {
                let at = sites.locate(&field, message.starts_with("unknown field"));
                self.out.errors.push(ManifestError::Invalid {
                    file: file.into(),
                    at,
                    object: object.clone(),
                    field,
                    message,
                });
            }
            return;
        }
        let parsed = parsed.expect("checked above");
        if parsed.insert(&key, &mut self.out.cluster) {
            let before = self.origin.get(&object).cloned().unwrap_or_default();
            self.warn(
                file,
                root,
                &object,
                "",
                format!("duplicate object: replaces the one from {before}"),
            );
        }
        self.out.placed.insert(object.clone(), (kind, key.clone()));
        if kind == Kind::Pod {
            if let Some(o) = workloads::controller_of(&v) {
                self.out.pod_owners.insert(key, o);
            }
        }
        self.out.sources.insert(object.clone(), file.to_string());
        self.origin
            .insert(object, format!("{file} document {document}"));
    }

    /// One workload document (a namespaced kind, defaulting to `default` as a Pod does).
    #[allow(clippy::too_many_arguments)]
    fn workload(
        &mut self,
        file: &str,
        document: usize,
        sites: &Sites,
        kind: WorkloadKind,
        name: Option<String>,
        given_ns: Option<String>,
        v: &Value,
    ) {
        let root = sites.locate("", false);
        let name = name.unwrap_or_default();
        if name.is_empty() {
            self.document_error(
                file,
                sites.locate("metadata.name", false).or(root),
                document,
                format!("{} has no metadata.name", kind.as_str()),
            );
            return;
        }
        let ns = given_ns
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let object = format!("{} {ns}/{name}", kind.as_str());
        let mut p = Problems::default();
        for m in names::dns1123_subdomain(&name) {
            p.error("metadata.name", format!("invalid name {name:?}: {m}"));
        }
        for m in names::dns1123_label(&ns) {
            p.error(
                "metadata.namespace",
                format!("invalid namespace {ns:?}: {m}"),
            );
        }
        let parsed = workloads::workload(v, sites, kind, &ns, &name, &mut p);
        for (field, message) in p.warnings {
            self.out.warnings.push(Warning {
                file: Some(file.into()),
                at: sites.locate(&field, false),
                object: object.clone(),
                field,
                message,
            });
        }
        let Some(w) = parsed.filter(|_| p.errors.is_empty()) else {
            for (field, message) in p.errors {
                let at = sites.locate(&field, message.starts_with("unknown field"));
                self.out.errors.push(ManifestError::Invalid {
                    file: file.into(),
                    at,
                    object: object.clone(),
                    field,
                    message,
                });
            }
            return;
        };
        self.warn(
            file,
            sites.locate("kind", false),
            &object,
            "kind",
            WORKLOAD_SKIPPED,
        );
        if self.out.workloads.insert(w.key(), w).is_some() {
            let before = self.origin.get(&object).cloned().unwrap_or_default();
            self.warn(
                file,
                root,
                &object,
                "",
                format!("duplicate object: replaces the one from {before}"),
            );
        }
        self.out.sources.insert(object.clone(), file.to_string());
        self.origin
            .insert(object, format!("{file} document {document}"));
    }
}

/// A decoded, valid object of any supported kind.
enum Parsed {
    Namespace(crate::model::Namespace),
    Pod(crate::model::Pod),
    Node(crate::model::Node),
    Service(crate::model::Service),
    EndpointSlice(crate::model::EndpointSlice),
    ServiceAccount(crate::model::ServiceAccount),
    NetworkPolicy(crate::model::NetworkPolicy),
    ClusterPolicy(crate::model::ClusterPolicy),
    CalicoPolicy(crate::model::CalicoPolicy),
    NetworkSet(crate::model::NetworkSet),
}

impl Parsed {
    /// Inserts under `key` (`namespace/name` or `name`); returns whether it replaced one.
    fn insert(self, key: &str, c: &mut Cluster) -> bool {
        let key = key.to_string();
        match self {
            Parsed::Namespace(o) => c.namespaces.insert(key, o).is_some(),
            Parsed::Pod(o) => c.pods.insert(key, o).is_some(),
            Parsed::Node(o) => c.nodes.insert(key, o).is_some(),
            Parsed::Service(o) => c.services.insert(key, o).is_some(),
            Parsed::EndpointSlice(o) => c.endpoint_slices.insert(key, o).is_some(),
            Parsed::ServiceAccount(o) => c.service_accounts.insert(key, o).is_some(),
            Parsed::NetworkPolicy(o) => c.network_policies.insert(key, o).is_some(),
            Parsed::ClusterPolicy(o) => c
                .cluster_policies
                .insert(format!("{}/{}", o.kind.as_str(), o.name), o)
                .is_some(),
            Parsed::CalicoPolicy(o) => c.calico_policies.insert(o.key(), o).is_some(),
            Parsed::NetworkSet(o) => c.network_sets.insert(o.key(), o).is_some(),
        }
    }
}
