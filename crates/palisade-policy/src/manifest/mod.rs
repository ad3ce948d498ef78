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
//! 2. Dispatch on `apiVersion` + `kind`. Unknown kinds, and known kinds at an
//!    unsupported version, are skipped with a [`Warning`].
//! 3. Decode into `k8s-openapi` types (core and networking objects) or this module's own
//!    serde types (the policy.networking.k8s.io CRDs), validate, default and convert to
//!    [`crate::model`]: `objects`, `network_policy`, `cluster_policy`.
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

mod cidr;
mod cluster_policy;
mod documents;
mod error;
mod lint;
mod names;
mod network_policy;
mod objects;
mod ports;
mod selector;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde_json::Value;

pub use error::{ManifestError, Warning};
pub use lint::lint;

use crate::model::{Cluster, ClusterPolicyKind};
use error::Problems;

/// The result of [`load`]: everything that loaded, and why anything did not.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Every valid object.
    pub cluster: Cluster,
    /// Rejected documents and objects, in input order.
    pub errors: Vec<ManifestError>,
    /// Skipped documents, defaulting surprises and replaced duplicates, in input order.
    pub warnings: Vec<Warning>,
}

/// Parses, validates and normalizes every object in `inputs` (`(source name, text)`
/// pairs; the name only labels errors). Never fails as a whole: see [`Loaded`].
pub fn load(inputs: &[(String, String)]) -> Loaded {
    let mut loader = Loader::default();
    for (file, text) in inputs {
        for doc in documents::split(text) {
            match doc.content {
                Ok(v) => loader.object(file, doc.number, "", v),
                Err(message) => loader.out.errors.push(ManifestError::Syntax {
                    file: file.clone(),
                    document: doc.number,
                    message,
                }),
            }
        }
    }
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

/// The kinds this module understands, with their scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Namespace,
    Pod,
    Node,
    Service,
    EndpointSlice,
    NetworkPolicy,
    Cluster(ClusterPolicyKind),
}

impl Kind {
    fn of(api_version: &str, kind: &str) -> Result<Kind, Option<&'static str>> {
        const POLICY_V1ALPHA1: &str = "policy.networking.k8s.io/v1alpha1";
        const POLICY_V1ALPHA2: &str = "policy.networking.k8s.io/v1alpha2";
        let (want, k) = match kind {
            "Namespace" => ("v1", Kind::Namespace),
            "Pod" => ("v1", Kind::Pod),
            "Node" => ("v1", Kind::Node),
            "Service" => ("v1", Kind::Service),
            "EndpointSlice" => ("discovery.k8s.io/v1", Kind::EndpointSlice),
            "NetworkPolicy" => ("networking.k8s.io/v1", Kind::NetworkPolicy),
            "ClusterNetworkPolicy" => (
                POLICY_V1ALPHA2,
                Kind::Cluster(ClusterPolicyKind::ClusterNetworkPolicy),
            ),
            "AdminNetworkPolicy" => (
                POLICY_V1ALPHA1,
                Kind::Cluster(ClusterPolicyKind::AdminNetworkPolicy),
            ),
            "BaselineAdminNetworkPolicy" => (
                POLICY_V1ALPHA1,
                Kind::Cluster(ClusterPolicyKind::BaselineAdminNetworkPolicy),
            ),
            _ => return Err(None),
        };
        if api_version == want {
            Ok(k)
        } else {
            Err(Some(want))
        }
    }

    fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::Pod | Kind::Service | Kind::EndpointSlice | Kind::NetworkPolicy
        )
    }
}

/// Where each loaded object came from, to name both places when one replaces another.
#[derive(Default)]
struct Loader {
    out: Loaded,
    origin: BTreeMap<String, String>,
}

impl Loader {
    fn warn(&mut self, file: &str, object: &str, field: &str, message: impl Into<String>) {
        self.out.warnings.push(Warning {
            file: Some(file.into()),
            object: object.into(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn document_error(&mut self, file: &str, document: usize, message: impl Into<String>) {
        self.out.errors.push(ManifestError::Document {
            file: file.into(),
            document,
            message: message.into(),
        });
    }

    /// One document (or `List` item) `v`. `item` is `""` for a document, or the item's
    /// path (`items[3]`, `items[3].items[0]`) inside a list document.
    fn object(&mut self, file: &str, document: usize, item: &str, v: Value) {
        // Prefix for messages of document errors, whose Display already names the document.
        let at = if item.is_empty() {
            String::new()
        } else {
            format!("{item}: ")
        };
        if !v.is_object() {
            self.document_error(
                file,
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
            self.document_error(file, document, format!("{at}{missing} is required"));
            return;
        }
        if let Some(items) = documents::list_items(&v) {
            for (i, item_value) in items.clone().into_iter().enumerate() {
                let path = if item.is_empty() {
                    format!("items[{i}]")
                } else {
                    format!("{item}.items[{i}]")
                };
                self.object(file, document, &path, item_value);
            }
            return;
        }
        // How to name an object we skip: by kind and name when it has them.
        let skipped = {
            let name = v.pointer("/metadata/name").and_then(Value::as_str);
            let ns = v.pointer("/metadata/namespace").and_then(Value::as_str);
            match (name, ns) {
                (Some(n), Some(ns)) => format!("{kind_name} {ns}/{n}"),
                (Some(n), None) => format!("{kind_name} {n}"),
                _ if item.is_empty() => format!("document {document}"),
                _ => format!("document {document} {item}"),
            }
        };
        let kind = match Kind::of(api_version, kind_name) {
            Ok(k) => k,
            Err(None) => {
                self.warn(
                    file,
                    &skipped,
                    "kind",
                    format!(
                        "kind {kind_name} ({api_version}) has no effect on network policy; skipped"
                    ),
                );
                return;
            }
            Err(Some(want)) => {
                self.warn(
                    file,
                    &skipped,
                    "apiVersion",
                    format!("{kind_name} is supported as {want}, not {api_version}; skipped"),
                );
                return;
            }
        };

        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            self.document_error(
                file,
                document,
                format!("{at}{kind_name} has no metadata.name"),
            );
            return;
        }
        let namespace = kind.namespaced().then(|| {
            v.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_string()
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
        let parsed = match kind {
            Kind::Namespace => objects::namespace(v, &name, &mut p).map(Parsed::Namespace),
            Kind::Pod => objects::pod(v, ns, &name, &mut p).map(Parsed::Pod),
            Kind::Node => objects::node(v, &name, &mut p).map(Parsed::Node),
            Kind::Service => objects::service(v, ns, &name, &mut p).map(Parsed::Service),
            Kind::EndpointSlice => {
                objects::endpoint_slice(v, ns, &name, &mut p).map(Parsed::EndpointSlice)
            }
            Kind::NetworkPolicy => {
                network_policy::network_policy(v, ns, &name, &mut p).map(Parsed::NetworkPolicy)
            }
            Kind::Cluster(k) => {
                cluster_policy::cluster_policy(v, k, &name, &mut p).map(Parsed::ClusterPolicy)
            }
        };
        for (field, message) in p.warnings {
            self.out.warnings.push(Warning {
                file: Some(file.into()),
                object: object.clone(),
                field,
                message,
            });
        }
        let parsed = match parsed {
            Ok(o) => o,
            Err(message) => {
                self.out.errors.push(ManifestError::Decode {
                    file: file.into(),
                    object,
                    message,
                });
                return;
            }
        };
        if !p.errors.is_empty() {
            for (field, message) in p.errors {
                self.out.errors.push(ManifestError::Invalid {
                    file: file.into(),
                    object: object.clone(),
                    field,
                    message,
                });
            }
            return;
        }
        if parsed.insert(&key, &mut self.out.cluster) {
            let before = self.origin.get(&object).cloned().unwrap_or_default();
            self.warn(
                file,
                &object,
                "",
                format!("duplicate object: replaces the one from {before}"),
            );
        }
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
    NetworkPolicy(crate::model::NetworkPolicy),
    ClusterPolicy(crate::model::ClusterPolicy),
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
            Parsed::NetworkPolicy(o) => c.network_policies.insert(key, o).is_some(),
            Parsed::ClusterPolicy(o) => c
                .cluster_policies
                .insert(format!("{}/{}", o.kind.as_str(), o.name), o)
                .is_some(),
        }
    }
}
