//! `--live`: the objects the API server holds, as input documents for the offline
//! commands (`simulate`, `explain`, `validate`, `diff`, `view`).
//!
//! Read-only: every kind the agent watches ([`WatchedKind::ALL`]) is LISTED (paginated,
//! `limit` + `continue`), never watched or written, so a ClusterRole with get/list
//! (deploy/rbac/palisade-reader.yaml) is enough. Each object becomes one JSON document
//! named `live:PLURAL/NAMESPACE/NAME`, read by the same loader as a file, so a live
//! object Palisade cannot enforce is rejected with the same error as in a file.
//!
//! A kind whose API is not served (a CRD not installed) holds no object. A kind the
//! credentials may not list (403) is unknown, not empty: a NetworkPolicy left out
//! would turn a denied flow into "allowed", so the answer is withheld (see
//! [`crate::inputs::completeness_with`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use kube::api::{Api, DynamicObject, ListParams};
use palisade_agent::kube_source::{trimmed, WatchedKind};

/// Objects per list request.
const PAGE: u32 = 500;

/// Where the live objects come from.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LiveArgs {
    /// Answer from the objects the API server holds (list only), with the -f files
    /// overlaid: a file's object replaces the live one of the same kind, namespace
    /// and name, the others are added. Without --kubeconfig: KUBECONFIG,
    /// ~/.kube/config or the in-cluster service account.
    #[arg(long)]
    pub live: bool,
    /// Kubeconfig file for --live (implies --live).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig for --live (implies --live).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl LiveArgs {
    /// Whether the cluster is read (`--kubeconfig` and `--context` imply `--live`).
    pub fn enabled(&self) -> bool {
        self.live || self.kubeconfig.is_some() || self.context.is_some()
    }
}

/// The inputs of an offline command that can also read the cluster.
#[derive(Debug, clap::Args)]
pub struct Sources {
    /// Manifest files or directories (YAML, multi-document, or JSON); `-` for stdin.
    /// With --live, overlaid on the cluster's objects (and optional).
    #[arg(short = 'f', long = "filename", num_args = 1..,
        required_unless_present_any = ["live", "kubeconfig", "context"])]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub live: LiveArgs,
}

/// What listing the cluster found.
#[derive(Debug, Default)]
pub struct Listed {
    /// Which API server, as whom: said in every answer's `source` (docs/output.md).
    pub cluster: ClusterName,
    /// `(display name, JSON text)`, one per object.
    pub documents: Vec<(String, String)>,
    /// Objects read per resource (`pods`, `networkpolicies.crd.projectcalico.org`: the
    /// `PLURAL` of the document names), every kind that was listed, 0 included.
    pub objects: BTreeMap<String, usize>,
    /// Resources the cluster does not serve (CRDs not installed): they hold nothing.
    pub not_served: Vec<String>,
    /// Kinds the credentials may not list: their objects are unknown.
    pub forbidden: Vec<Forbidden>,
    /// Kinds worth mentioning that the cluster does not serve.
    pub notes: Vec<String>,
}

/// The API server read and the kubeconfig context that named it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterName {
    /// The server's URL, as the client config resolved it.
    pub server: String,
    /// The kubeconfig context used; `None` for the in-cluster service account.
    pub context: Option<String>,
}

/// A kind the credentials may not list (403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    /// `NetworkPolicy`.
    pub kind: String,
    /// `networking.k8s.io/v1`.
    pub api_version: String,
    /// `networkpolicies`.
    pub resource: String,
    /// The API server's message.
    pub message: String,
}

impl std::fmt::Display for Forbidden {
    /// `Kind (group/version, resource R): message`, the words of the INCOMPLETE line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, resource {}): {}",
            self.kind, self.api_version, self.resource, self.message
        )
    }
}

impl Forbidden {
    /// The `missingKinds` element of a JSON answer.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind,
            "apiVersion": self.api_version,
            "resource": self.resource,
            "message": self.message,
        })
    }
}

/// Every kind in `forbidden`, joined for one line.
pub fn joined(forbidden: &[Forbidden]) -> String {
    forbidden
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// How a list of one kind ended.
enum Outcome {
    Objects(Vec<serde_json::Value>),
    NotServed,
    Forbidden(String),
}

/// Lists every kind, read-only.
pub fn list(args: &LiveArgs) -> anyhow::Result<Listed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (config, context) =
            palisade_agent::run::kube_config(args.kubeconfig.as_deref(), args.context.as_deref())
                .await?;
        let url = &config.cluster_url;
        let mut server = url.to_string();
        // As the kubeconfig says it: `https://host:port`, not the URI's `.../`.
        if url.path() == "/" && url.query().is_none() {
            server = server.trim_end_matches('/').to_string();
        }
        let cluster = ClusterName { server, context };
        let client = kube::Client::try_from(config).context("building the Kubernetes client")?;
        let mut outcomes = Vec::new();
        for kind in WatchedKind::ALL {
            outcomes.push((kind, list_kind(&client, kind).await?));
        }
        let mut listed = assemble(outcomes);
        listed.cluster = cluster;
        Ok(listed)
    })
}

/// Every object of `kind`, page by page.
async fn list_kind(client: &kube::Client, kind: WatchedKind) -> anyhow::Result<Outcome> {
    let ar = kind.api_resource();
    let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(PAGE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = match api.list(&lp).await {
            Ok(p) => p,
            Err(kube::Error::Api(r)) if r.code == 404 && kind.optional() => {
                return Ok(Outcome::NotServed)
            }
            Err(kube::Error::Api(r)) if r.code == 403 => {
                return Ok(Outcome::Forbidden(r.message));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "listing {} ({}) from the API server",
                        ar.plural, ar.api_version
                    )
                })
            }
        };
        for o in page.items {
            let mut v = serde_json::to_value(&o)?;
            // List items of built-in kinds carry no apiVersion/kind.
            v["apiVersion"] = ar.api_version.clone().into();
            v["kind"] = ar.kind.clone().into();
            out.push(trimmed(kind, v));
        }
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(Outcome::Objects(out)),
        }
    }
}

/// The resource of `kind` as the document names and `objects` say it: `PLURAL`, or
/// `PLURAL.GROUP` for Calico's kinds, whose plurals are also the Kubernetes ones.
fn resource(kind: WatchedKind) -> String {
    let ar = kind.api_resource();
    if kind.calico_pair().is_some() {
        format!("{}.{}", ar.plural, ar.group)
    } else {
        ar.plural.clone()
    }
}

/// The display name of a live object: `live:PLURAL/NAMESPACE/NAME` ([`resource`]).
fn display_name(kind: WatchedKind, v: &serde_json::Value) -> String {
    let resource = resource(kind);
    let meta = &v["metadata"];
    let name = meta["name"].as_str().unwrap_or("<unnamed>");
    match meta["namespace"].as_str() {
        Some(ns) => format!("live:{resource}/{ns}/{name}"),
        None => format!("live:{resource}/{name}"),
    }
}

/// Documents, forbidden kinds and notes from each kind's outcome. Of Calico's two views
/// of one resource only one is read, as the agent does: Calico's storage
/// (`crd.projectcalico.org/v1`) where it is served, else `projectcalico.org/v3`.
fn assemble(outcomes: Vec<(WatchedKind, Outcome)>) -> Listed {
    let served = |k: WatchedKind| {
        outcomes
            .iter()
            .any(|(o, r)| *o == k && !matches!(r, Outcome::NotServed))
    };
    let mut listed = Listed::default();
    let mut missing_npapi = Vec::new();
    let mut calico_served = false;
    for (kind, outcome) in &outcomes {
        let ar = kind.api_resource();
        if let Some((v3, stored)) = kind.calico_pair() {
            calico_served |= served(*kind);
            if *kind == v3 && served(stored) {
                continue;
            }
        }
        match outcome {
            Outcome::NotServed => {
                listed.not_served.push(resource(*kind));
                if kind.calico_pair().is_none() {
                    missing_npapi.push(ar.kind.clone());
                }
            }
            Outcome::Forbidden(message) => listed.forbidden.push(Forbidden {
                kind: ar.kind.clone(),
                api_version: ar.api_version.clone(),
                resource: ar.plural.clone(),
                message: message.clone(),
            }),
            Outcome::Objects(objects) => {
                listed.objects.insert(resource(*kind), objects.len());
                for v in objects {
                    let text = serde_json::to_string_pretty(v).unwrap_or_default();
                    listed.documents.push((display_name(*kind, v), text));
                }
            }
        }
    }
    if !missing_npapi.is_empty() {
        listed.notes.push(format!(
            "note: the cluster has no {} CRD (policy.networking.k8s.io): none read",
            missing_npapi.join(", ")
        ));
    }
    if !calico_served {
        listed.notes.push(
            "note: the cluster has no Calico policy CRDs (projectcalico.org): none read".into(),
        );
    }
    listed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(name: &str) -> serde_json::Value {
        serde_json::json!({"metadata": {"name": name, "namespace": "default"}})
    }

    #[test]
    fn calico_storage_is_read_instead_of_v3_and_forbidden_kinds_are_named() {
        let outcomes = vec![
            (WatchedKind::NetworkPolicy, Outcome::Forbidden("no".into())),
            (WatchedKind::AdminNetworkPolicy, Outcome::NotServed),
            (
                WatchedKind::CalicoNetworkPolicy,
                Outcome::Objects(vec![np("v3")]),
            ),
            (
                WatchedKind::CalicoStoredNetworkPolicy,
                Outcome::Objects(vec![np("stored")]),
            ),
        ];
        let l = assemble(outcomes);
        let names: Vec<&str> = l.documents.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["live:networkpolicies.crd.projectcalico.org/default/stored"]
        );
        assert_eq!(l.forbidden.len(), 1);
        assert!(l.forbidden[0]
            .to_string()
            .starts_with("NetworkPolicy (networking.k8s.io/v1, resource networkpolicies)"));
        assert_eq!(l.forbidden[0].json()["resource"], "networkpolicies");
        // The v3 view that was not read is not counted; the one read is, with its group.
        assert_eq!(
            l.objects.into_iter().collect::<Vec<_>>(),
            [("networkpolicies.crd.projectcalico.org".to_string(), 1)]
        );
        assert_eq!(l.not_served, ["adminnetworkpolicies"]);
        assert_eq!(
            l.notes,
            ["note: the cluster has no AdminNetworkPolicy CRD (policy.networking.k8s.io): none read"]
        );
    }

    #[test]
    fn without_calico_storage_v3_is_read() {
        let l = assemble(vec![
            (
                WatchedKind::CalicoNetworkPolicy,
                Outcome::Objects(vec![np("v3")]),
            ),
            (WatchedKind::CalicoStoredNetworkPolicy, Outcome::NotServed),
        ]);
        assert_eq!(l.documents.len(), 1);
        assert_eq!(
            l.documents[0].0,
            "live:networkpolicies.projectcalico.org/default/v3"
        );
        assert!(l.notes.is_empty());
    }
}
