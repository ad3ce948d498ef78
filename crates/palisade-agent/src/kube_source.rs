//! The desired state from a Kubernetes API server (`palisade agent --source kubernetes`).
//!
//! One kube-runtime watcher per kind (Namespaces, Pods, Nodes, Services, EndpointSlices,
//! NetworkPolicies, and the network-policy-api kinds) keeps a store of the objects the
//! API server holds; watch restarts, `410 Gone`, relists and bookmarks are kube-runtime's.
//! A failed watch waits kube-runtime's default backoff, or less: until the agent's one
//! probe of the API server sees it come back from away ([`crate::reachability`]). Each object is read through the same decoder and validator
//! as a manifest file ([`palisade_policy::manifest::load`]), so an object the API server
//! accepted but Palisade cannot enforce exactly is rejected alone, with the field named,
//! and its last good version stays in force.
//!
//! Fail closed, never open:
//!
//! - [`Source::load`] refuses to answer until every kind has been listed once: a
//!   snapshot with the pods but not yet the policies would enforce "no policy" (allow
//!   everything). A kind whose API is not served (a CRD not installed) counts as listed
//!   and empty, and is watched on so that it is picked up once it appears.
//! - A relist replaces a kind's objects only once it is complete, and a relist that
//!   finds nothing changed changes nothing (the reconciler diffs object by object).
//! - When the API server goes away the stores keep their last state: the agent keeps
//!   enforcing it (no flush, no transient allow) while the watchers reconnect, all at
//!   once when the API server answers again; [`KubeSource::health`] says which watches are down and since when.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::Client;
use palisade_policy::manifest::{self, ManifestError};
use palisade_policy::model::Cluster;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::reachability::{Reachability, Woken};

/// The wait after an error should kube-runtime's backoff ever end (it does not).
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

use crate::source::{Changed, Refresh, Snapshot, Source, SourceError};

/// The kinds watched, in the order their objects are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum WatchedKind {
    /// core/v1 Namespace.
    Namespace,
    /// core/v1 Node.
    Node,
    /// core/v1 Pod.
    Pod,
    /// core/v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// core/v1 ServiceAccount: its labels, for Calico service account selectors
    /// (nothing else of it is read; it holds no secret, only references to them).
    ServiceAccount,
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy,
    /// policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy.
    ClusterNetworkPolicy,
    /// policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy.
    AdminNetworkPolicy,
    /// policy.networking.k8s.io/v1alpha1 BaselineAdminNetworkPolicy.
    BaselineAdminNetworkPolicy,
    /// projectcalico.org/v3 NetworkPolicy (Palisade's CRD where Calico is not
    /// installed; Calico's API server where it is).
    CalicoNetworkPolicy,
    /// projectcalico.org/v3 GlobalNetworkPolicy.
    CalicoGlobalNetworkPolicy,
    /// projectcalico.org/v3 NetworkSet.
    CalicoNetworkSet,
    /// projectcalico.org/v3 GlobalNetworkSet.
    CalicoGlobalNetworkSet,
    /// crd.projectcalico.org/v1 NetworkPolicy: Calico's own storage. While it is
    /// served it is read instead of [`WatchedKind::CalicoNetworkPolicy`] (the same
    /// objects, seen through Calico's API server).
    CalicoStoredNetworkPolicy,
    /// crd.projectcalico.org/v1 GlobalNetworkPolicy.
    CalicoStoredGlobalNetworkPolicy,
    /// crd.projectcalico.org/v1 NetworkSet.
    CalicoStoredNetworkSet,
    /// crd.projectcalico.org/v1 GlobalNetworkSet.
    CalicoStoredGlobalNetworkSet,
}

impl WatchedKind {
    /// Every kind, in merge order.
    pub const ALL: [WatchedKind; 18] = [
        WatchedKind::Namespace,
        WatchedKind::Node,
        WatchedKind::Pod,
        WatchedKind::Service,
        WatchedKind::EndpointSlice,
        WatchedKind::ServiceAccount,
        WatchedKind::NetworkPolicy,
        WatchedKind::ClusterNetworkPolicy,
        WatchedKind::AdminNetworkPolicy,
        WatchedKind::BaselineAdminNetworkPolicy,
        WatchedKind::CalicoNetworkPolicy,
        WatchedKind::CalicoGlobalNetworkPolicy,
        WatchedKind::CalicoNetworkSet,
        WatchedKind::CalicoGlobalNetworkSet,
        WatchedKind::CalicoStoredNetworkPolicy,
        WatchedKind::CalicoStoredGlobalNetworkPolicy,
        WatchedKind::CalicoStoredNetworkSet,
        WatchedKind::CalicoStoredGlobalNetworkSet,
    ];

    /// The policy kinds, whose versions the node reports.
    const POLICIES: [WatchedKind; 8] = [
        WatchedKind::NetworkPolicy,
        WatchedKind::ClusterNetworkPolicy,
        WatchedKind::AdminNetworkPolicy,
        WatchedKind::BaselineAdminNetworkPolicy,
        WatchedKind::CalicoNetworkPolicy,
        WatchedKind::CalicoGlobalNetworkPolicy,
        WatchedKind::CalicoStoredNetworkPolicy,
        WatchedKind::CalicoStoredGlobalNetworkPolicy,
    ];

    /// Whether the kind is a CRD that may not be installed.
    pub fn optional(self) -> bool {
        self.crd().is_some()
    }

    /// `(group, version, kind, plural)` of a kind watched as a [`DynamicObject`].
    pub fn crd(self) -> Option<(&'static str, &'static str, &'static str, &'static str)> {
        const NPAPI: &str = "policy.networking.k8s.io";
        const V3: &str = palisade_crds::calico::GROUP;
        const V1: &str = palisade_crds::calico::STORAGE_GROUP;
        let (v3, v1) = (
            palisade_crds::calico::VERSION,
            palisade_crds::calico::STORAGE_VERSION,
        );
        Some(match self {
            WatchedKind::ClusterNetworkPolicy => (
                NPAPI,
                "v1alpha2",
                "ClusterNetworkPolicy",
                "clusternetworkpolicies",
            ),
            WatchedKind::AdminNetworkPolicy => (
                NPAPI,
                "v1alpha1",
                "AdminNetworkPolicy",
                "adminnetworkpolicies",
            ),
            WatchedKind::BaselineAdminNetworkPolicy => (
                NPAPI,
                "v1alpha1",
                "BaselineAdminNetworkPolicy",
                "baselineadminnetworkpolicies",
            ),
            WatchedKind::CalicoNetworkPolicy => (V3, v3, "NetworkPolicy", "networkpolicies"),
            WatchedKind::CalicoGlobalNetworkPolicy => {
                (V3, v3, "GlobalNetworkPolicy", "globalnetworkpolicies")
            }
            WatchedKind::CalicoNetworkSet => (V3, v3, "NetworkSet", "networksets"),
            WatchedKind::CalicoGlobalNetworkSet => {
                (V3, v3, "GlobalNetworkSet", "globalnetworksets")
            }
            WatchedKind::CalicoStoredNetworkPolicy => (V1, v1, "NetworkPolicy", "networkpolicies"),
            WatchedKind::CalicoStoredGlobalNetworkPolicy => {
                (V1, v1, "GlobalNetworkPolicy", "globalnetworkpolicies")
            }
            WatchedKind::CalicoStoredNetworkSet => (V1, v1, "NetworkSet", "networksets"),
            WatchedKind::CalicoStoredGlobalNetworkSet => {
                (V1, v1, "GlobalNetworkSet", "globalnetworksets")
            }
            _ => return None,
        })
    }

    /// For a Calico kind: `(projectcalico.org/v3 kind, crd.projectcalico.org/v1 kind)`,
    /// the two views of one resource.
    pub fn calico_pair(self) -> Option<(WatchedKind, WatchedKind)> {
        use WatchedKind::*;
        Some(match self {
            CalicoNetworkPolicy | CalicoStoredNetworkPolicy => {
                (CalicoNetworkPolicy, CalicoStoredNetworkPolicy)
            }
            CalicoGlobalNetworkPolicy | CalicoStoredGlobalNetworkPolicy => {
                (CalicoGlobalNetworkPolicy, CalicoStoredGlobalNetworkPolicy)
            }
            CalicoNetworkSet | CalicoStoredNetworkSet => (CalicoNetworkSet, CalicoStoredNetworkSet),
            CalicoGlobalNetworkSet | CalicoStoredGlobalNetworkSet => {
                (CalicoGlobalNetworkSet, CalicoStoredGlobalNetworkSet)
            }
            _ => return None,
        })
    }

    /// The API resource of any kind (core kinds too), for a dynamic list of it
    /// (`palisade simulate --live` lists every kind the agent watches).
    pub fn api_resource(self) -> ApiResource {
        let (group, version, kind, plural) = match self.crd() {
            Some(c) => c,
            None => match self {
                WatchedKind::Namespace => ("", "v1", "Namespace", "namespaces"),
                WatchedKind::Node => ("", "v1", "Node", "nodes"),
                WatchedKind::Pod => ("", "v1", "Pod", "pods"),
                WatchedKind::Service => ("", "v1", "Service", "services"),
                WatchedKind::EndpointSlice => {
                    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
                }
                WatchedKind::ServiceAccount => ("", "v1", "ServiceAccount", "serviceaccounts"),
                WatchedKind::NetworkPolicy => (
                    "networking.k8s.io",
                    "v1",
                    "NetworkPolicy",
                    "networkpolicies",
                ),
                _ => unreachable!("every other kind is a CRD"),
            },
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    }

    /// How the node's report names a policy of this kind ([`palisade_crds::PolicyRef`]'s
    /// kind): both Calico views of a policy are one policy, named as kubectl names the
    /// resource (`NetworkPolicy.projectcalico.org`).
    pub fn report_kind(self) -> String {
        use palisade_policy::model::CalicoKind;
        match self {
            WatchedKind::CalicoNetworkPolicy | WatchedKind::CalicoStoredNetworkPolicy => {
                CalicoKind::NetworkPolicy.as_str().to_string()
            }
            WatchedKind::CalicoGlobalNetworkPolicy
            | WatchedKind::CalicoStoredGlobalNetworkPolicy => {
                CalicoKind::GlobalNetworkPolicy.as_str().to_string()
            }
            other => format!("{other:?}"),
        }
    }
}
impl WatchedKind {
    /// Removes the object `key` of this kind from `cluster` (where the manifest reader
    /// puts it: cluster policies under `Kind/name`) and notes it in `changed`.
    fn remove_from(self, cluster: &mut Cluster, key: &str, changed: &mut Changed) {
        match self {
            WatchedKind::Namespace => {
                cluster.namespaces.remove(key);
                changed.namespaces.insert(key.to_string());
            }
            WatchedKind::Node => {
                cluster.nodes.remove(key);
                changed.nodes.insert(key.to_string());
            }
            WatchedKind::Pod => {
                cluster.pods.remove(key);
                changed.pods.insert(key.to_string());
            }
            WatchedKind::Service => {
                cluster.services.remove(key);
                changed.services.insert(key.to_string());
            }
            WatchedKind::EndpointSlice => {
                cluster.endpoint_slices.remove(key);
                changed.endpoint_slices.insert(key.to_string());
            }
            WatchedKind::ServiceAccount => {
                cluster.service_accounts.remove(key);
                changed.service_accounts.insert(key.to_string());
            }
            WatchedKind::CalicoNetworkPolicy
            | WatchedKind::CalicoGlobalNetworkPolicy
            | WatchedKind::CalicoStoredNetworkPolicy
            | WatchedKind::CalicoStoredGlobalNetworkPolicy => {
                let key = format!("{}/{key}", self.report_kind());
                cluster.calico_policies.remove(&key);
                changed.calico_policies.insert(key);
            }
            WatchedKind::CalicoNetworkSet | WatchedKind::CalicoStoredNetworkSet => {
                let key = format!("NetworkSet/{key}");
                cluster.network_sets.remove(&key);
                changed.network_sets.insert(key);
            }
            WatchedKind::CalicoGlobalNetworkSet | WatchedKind::CalicoStoredGlobalNetworkSet => {
                let key = format!("GlobalNetworkSet/{key}");
                cluster.network_sets.remove(&key);
                changed.network_sets.insert(key);
            }
            WatchedKind::NetworkPolicy => {
                cluster.network_policies.remove(key);
                changed.network_policies.insert(key.to_string());
            }
            WatchedKind::ClusterNetworkPolicy
            | WatchedKind::AdminNetworkPolicy
            | WatchedKind::BaselineAdminNetworkPolicy => {
                let key = format!("{self:?}/{key}");
                cluster.cluster_policies.remove(&key);
                changed.cluster_policies.insert(key);
            }
        }
    }
}

/// One watch's state, for `palisade status` and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchHealth {
    /// The first complete list arrived (or the kind is not served).
    pub synced: bool,
    /// The kind's API is not served (CRD not installed); watched until it appears.
    pub not_served: bool,
    /// The watch is currently failing (API server unreachable, forbidden...).
    pub failing: bool,
    /// The last watch error, if any.
    pub last_error: Option<String>,
    /// When the watch started failing (RFC 3339).
    pub failing_since: Option<String>,
    /// Watch events received.
    pub events: u64,
    /// Watch errors (each followed by a backoff and a retry).
    pub errors: u64,
    /// Retries started by the probe seeing the API server back, before the backoff ran
    /// out.
    pub retries_on_recovery: u64,
    /// Lists started (the first one, then one per watch restart that could not resume:
    /// `410 Gone`, or the watch restarted).
    pub relists: u64,
    /// Lists completed.
    pub lists_completed: u64,
    /// The highest `metadata.resourceVersion` of an object of this kind seen in an
    /// event (they are etcd revisions; compared as numbers).
    pub resource_version: Option<u64>,
    /// Objects held.
    pub objects: usize,
}

/// An object's decoded form, as the store keeps it. Most objects are pods: each is
/// kept alone, not inside a [`Cluster`] of its own (nine empty maps and a map node
/// sized for eleven pods, about 2 KiB per pod); any other kind is kept as the
/// manifest reader gives it.
#[derive(Debug, Clone, PartialEq)]
enum Decoded {
    /// A cluster holding exactly this pod, under its `namespace/name`.
    Pod(palisade_policy::model::Pod),
    /// Anything else.
    Other(Box<Cluster>),
}

impl From<Cluster> for Decoded {
    fn from(c: Cluster) -> Self {
        let lone_pod = c.pods.len() == 1
            && c.namespaces.is_empty()
            && c.nodes.is_empty()
            && c.services.is_empty()
            && c.endpoint_slices.is_empty()
            && c.network_policies.is_empty()
            && c.cluster_policies.is_empty()
            && c.calico_policies.is_empty()
            && c.network_sets.is_empty()
            && c.service_accounts.is_empty()
            && c.pods.iter().all(|(k, p)| *k == p.key());
        if lone_pod {
            let pod = c.pods.into_values().next().expect("one pod");
            Decoded::Pod(pod)
        } else {
            Decoded::Other(Box::new(c))
        }
    }
}

impl Decoded {
    /// Puts a copy of the object into `cluster` (what [`Cluster::extend`] would do).
    fn add_to(&self, cluster: &mut Cluster) {
        match self {
            Decoded::Pod(p) => {
                cluster.pods.insert(p.key(), p.clone());
            }
            Decoded::Other(c) => cluster.extend((**c).clone()),
        }
    }

    /// Names the object's keys in `changed` (what [`Changed::add_keys_of`] would do).
    fn add_keys(&self, changed: &mut Changed) {
        match self {
            Decoded::Pod(p) => {
                changed.pods.insert(p.key());
            }
            Decoded::Other(c) => changed.add_keys_of(c),
        }
    }
}

/// One object's decoded state.
#[derive(Debug, Clone, Default, PartialEq)]
struct ObjectState {
    /// The last version that decoded cleanly (in force).
    good: Option<Decoded>,
    /// Errors of the current version (empty when it is the good one).
    errors: Vec<ManifestError>,
    /// Warnings of the current version.
    warnings: Vec<String>,
    /// Policies only: the API version of `good`, and the current version's problems.
    version: crate::publish::Versions,
}

impl ObjectState {
    fn flagged(&self) -> bool {
        !self.errors.is_empty() || !self.warnings.is_empty()
    }
}

type ObjectId = (WatchedKind, String);

#[derive(Debug, Default)]
struct Store {
    objects: BTreeMap<WatchedKind, BTreeMap<String, ObjectState>>,
    health: BTreeMap<WatchedKind, WatchHealth>,
    /// Objects whose state changed since the last [`Source::refresh`].
    changed: BTreeSet<ObjectId>,
    /// Objects with errors or warnings, so a refresh reports them without visiting
    /// every object.
    flagged: BTreeSet<ObjectId>,
}

impl Store {
    /// Records `id`'s new state (`None`: deleted), noting a change only when the
    /// state differs. Returns whether it did.
    fn put(&mut self, id: ObjectId, new: Option<ObjectState>) -> bool {
        let objects = self.objects.entry(id.0).or_default();
        let old = match &new {
            Some(st) => objects.insert(id.1.clone(), st.clone()),
            None => objects.remove(&id.1),
        };
        let n = objects.len();
        self.health.entry(id.0).or_default().objects = n;
        if new.as_ref().is_some_and(ObjectState::flagged) {
            self.flagged.insert(id.clone());
        } else {
            self.flagged.remove(&id);
        }
        if old == new {
            return false;
        }
        self.changed.insert(id);
        true
    }

    /// The kind whose objects are in force for `kind`'s resource: itself, except for
    /// Calico's two views of one resource, where Calico's storage
    /// (`crd.projectcalico.org/v1`) is read once it is served and listed (Calico is
    /// installed: its API server's `projectcalico.org/v3` shows the same objects), and
    /// `projectcalico.org/v3` (Palisade's CRDs) otherwise. Never both: a policy read
    /// twice could sort between other policies of its tier twice.
    fn shown(&self, kind: WatchedKind) -> WatchedKind {
        let Some((v3, stored)) = kind.calico_pair() else {
            return kind;
        };
        let in_charge = self
            .health
            .get(&stored)
            .is_some_and(|h| !h.not_served && h.lists_completed > 0);
        if in_charge {
            stored
        } else {
            v3
        }
    }

    /// Notes every object of both Calico views of `kind`'s resource as changed (the view
    /// in force switched).
    fn touch_views(&mut self, kind: WatchedKind) {
        let Some((v3, stored)) = kind.calico_pair() else {
            return;
        };
        for k in [v3, stored] {
            let keys: Vec<String> = self
                .objects
                .get(&k)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            self.changed.extend(keys.into_iter().map(|key| (k, key)));
        }
    }

    /// Errors and warnings of every flagged object, then of every failing watch, and
    /// the API versions of the policies (not of every object: pods have none).
    fn notes(&self, snap: &mut Snapshot) {
        snap.errors.clear();
        snap.warnings.clear();
        snap.versions.clear();
        snap.rejected.clear();
        snap.rejected_refs.clear();
        for kind in WatchedKind::POLICIES {
            if self.shown(kind) != kind {
                continue;
            }
            for o in self.objects.get(&kind).into_iter().flat_map(|m| m.values()) {
                o.version.add_to(snap);
            }
        }
        for (kind, key) in &self.flagged {
            if self.shown(*kind) != *kind {
                continue;
            }
            if let Some(o) = self.objects.get(kind).and_then(|m| m.get(key)) {
                snap.errors.extend(o.errors.iter().cloned());
                snap.warnings.extend(o.warnings.iter().cloned());
            }
        }
        for (kind, h) in &self.health {
            if h.failing {
                snap.warnings.push(format!(
                    "watch of {kind:?} failing since {}: {} (enforcing the last state read)",
                    h.failing_since.as_deref().unwrap_or("?"),
                    h.last_error.as_deref().unwrap_or("?")
                ));
            }
        }
    }

    /// `Err` naming the kinds not listed yet.
    fn listed(&self) -> Result<(), SourceError> {
        let waiting: Vec<String> = WatchedKind::ALL
            .iter()
            .filter(|k| !self.health.get(k).is_some_and(|h| h.synced))
            .map(|k| {
                let why = self
                    .health
                    .get(k)
                    .and_then(|h| h.last_error.clone())
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                format!("{k:?}{why}")
            })
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            // Not an answer from a partial picture: the pass fails and the kernel keeps
            // what it enforces.
            Err(SourceError::NotListed { waiting })
        }
    }
}

/// What the watch tasks share with the source and with whoever holds a [`KubeWatches`].
#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    dirty: Arc<AtomicBool>,
    wake: WakeSlot,
    reach: Reachability,
}

/// The reconciler's waker, once it has given one.
type WakeSlot = Arc<Mutex<Option<crate::source::Waker>>>;

/// A handle on the watches of a [`KubeSource`]: their health, and a way to restart
/// them (each restart lists every kind again).
#[derive(Clone)]
pub struct KubeWatches {
    shared: Shared,
    client: Option<Client>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl KubeWatches {
    /// Every watch's state.
    pub fn health(&self) -> BTreeMap<WatchedKind, WatchHealth> {
        self.shared.store.lock().expect("store lock").health.clone()
    }

    /// Stops every watch and starts it again from a fresh list, as after `410 Gone`.
    /// The stores keep their objects meanwhile; the new lists replace them kind by
    /// kind once complete, and objects found unchanged change nothing.
    pub fn restart(&self) {
        let Some(client) = &self.client else { return };
        let mut tasks = self.tasks.lock().expect("tasks lock");
        for t in tasks.drain(..) {
            t.abort();
        }
        *tasks = spawn_watches(client, &self.shared);
    }
}

/// How long a direct read of a pod (CNI ADD before the watch delivered it) may take.
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// See the module doc.
pub struct KubeSource {
    watches: KubeWatches,
    /// The client for direct reads, and the runtime to run them on.
    reads: Option<(Client, tokio::runtime::Handle)>,
    /// Whether [`Source::refresh`] has handed over a whole snapshot yet.
    delivered: bool,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in self.watches.tasks.lock().expect("tasks lock").iter() {
            t.abort();
        }
    }
}

fn spawn_watches(client: &Client, shared: &Shared) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let ctx = |kind| Watch {
        kind,
        store: shared.store.clone(),
        dirty: shared.dirty.clone(),
        wake: shared.wake.clone(),
        reach: shared.reach.clone(),
    };
    let probe_client = client.clone();
    tasks.push(tokio::spawn(shared.reach.clone().run(move || {
        let c = probe_client.clone();
        async move { crate::reachability::api_server_ready(&c).await }
    })));
    tasks.push(ctx(WatchedKind::Namespace).spawn(Api::<Namespace>::all(client.clone())));
    tasks.push(ctx(WatchedKind::Node).spawn(Api::<Node>::all(client.clone())));
    tasks.push(ctx(WatchedKind::Pod).spawn(Api::<Pod>::all(client.clone())));
    tasks.push(ctx(WatchedKind::Service).spawn(Api::<Service>::all(client.clone())));
    tasks.push(ctx(WatchedKind::EndpointSlice).spawn(Api::<EndpointSlice>::all(client.clone())));
    tasks.push(ctx(WatchedKind::ServiceAccount).spawn(Api::<ServiceAccount>::all(client.clone())));
    tasks.push(ctx(WatchedKind::NetworkPolicy).spawn(Api::<NetworkPolicy>::all(client.clone())));
    for kind in WatchedKind::ALL {
        if let Some((group, version, k, plural)) = kind.crd() {
            let gvk = GroupVersionKind::gvk(group, version, k);
            let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
            let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
            tasks.push(ctx(kind).spawn(api));
        }
    }
    tasks
}

impl KubeSource {
    /// Starts one watcher per kind on the current tokio runtime.
    pub fn start(client: Client) -> Self {
        let shared = Shared {
            store: Arc::default(),
            dirty: Arc::new(AtomicBool::new(true)),
            wake: WakeSlot::default(),
            reach: Reachability::default(),
        };
        let tasks = spawn_watches(&client, &shared);
        KubeSource {
            watches: KubeWatches {
                shared,
                client: Some(client.clone()),
                tasks: Arc::new(Mutex::new(tasks)),
            },
            reads: Some((client, tokio::runtime::Handle::current())),
            delivered: false,
        }
    }

    /// Direct reads (a pod named by CNI ADD) go through `client`: its own connection
    /// pool, so a read never queues behind a watch connection that is stuck.
    pub fn with_reads(mut self, client: Client) -> Self {
        self.reads = Some((client, tokio::runtime::Handle::current()));
        self
    }

    /// A handle on the watches, usable after the source moved into a reconciler.
    pub fn watches(&self) -> KubeWatches {
        self.watches.clone()
    }

    /// Every watch's state.
    pub fn health(&self) -> BTreeMap<WatchedKind, WatchHealth> {
        self.watches.health()
    }

    /// Whether every kind has been listed once.
    pub fn synced(&self) -> bool {
        self.store().listed().is_ok()
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.watches.shared.store.lock().expect("store lock")
    }
}

impl Source for KubeSource {
    fn load(&mut self) -> Result<Snapshot, SourceError> {
        self.watches.shared.dirty.store(false, Ordering::SeqCst);
        let s = self.store();
        s.listed()?;
        let mut snap = Snapshot::default();
        for (kind, objects) in &s.objects {
            if s.shown(*kind) != *kind {
                continue;
            }
            for o in objects.values() {
                if let Some(good) = &o.good {
                    good.add_to(&mut snap.cluster);
                }
            }
        }
        s.notes(&mut snap);
        Ok(snap)
    }

    /// The first call hands over the whole snapshot; every later one changes only the
    /// objects whose state changed since (a relist that found nothing new: none).
    fn refresh(&mut self, snapshot: &mut Snapshot) -> Result<Refresh, SourceError> {
        if !self.delivered {
            *snapshot = self.load()?;
            self.store().changed.clear();
            self.delivered = true;
            return Ok(Refresh::Whole);
        }
        self.watches.shared.dirty.store(false, Ordering::SeqCst);
        let mut s = self.store();
        s.listed()?;
        let mut changed = Changed::default();
        for (kind, key) in std::mem::take(&mut s.changed) {
            kind.remove_from(&mut snapshot.cluster, &key, &mut changed);
            // The other Calico view of the same key shares its model key: what is in
            // force for it is the view shown.
            let good = s
                .objects
                .get(&s.shown(kind))
                .and_then(|m| m.get(&key))
                .and_then(|o| o.good.as_ref());
            if let Some(good) = good {
                good.add_keys(&mut changed);
                good.add_to(&mut snapshot.cluster);
            }
        }
        s.notes(snapshot);
        Ok(Refresh::Keys(changed))
    }

    fn changed(&mut self) -> bool {
        self.watches.shared.dirty.load(Ordering::SeqCst)
    }

    fn watches(&self) -> Vec<palisade_api::WatchStatus> {
        let s = self.store();
        WatchedKind::ALL
            .iter()
            .map(|k| {
                let h = s.health.get(k).cloned().unwrap_or_default();
                palisade_api::WatchStatus {
                    kind: format!("{k:?}"),
                    healthy: h.synced && !h.failing,
                    synced: h.synced,
                    not_served: h.not_served,
                    resource_version: h.resource_version,
                    resource_version_in_force: None,
                    errors: h.errors,
                    retries_on_recovery: h.retries_on_recovery,
                    relists: h.relists,
                    last_error: h.last_error,
                }
            })
            .collect()
    }

    /// `GET namespaces/NS/pods/NAME`, decoded like a watch event; the watch's version,
    /// when it arrives, replaces it as usual. A pod the watch delivered already is not
    /// read again.
    fn set_waker(&mut self, wake: crate::source::Waker) {
        *self.watches.shared.wake.lock().expect("wake lock") = Some(wake);
    }

    fn fetch_pod(&mut self, pod: &str) -> Result<bool, SourceError> {
        let Some((client, rt)) = &self.reads else {
            return Ok(false);
        };
        let Some((ns, name)) = pod.split_once('/') else {
            return Ok(false);
        };
        if self
            .store()
            .objects
            .get(&WatchedKind::Pod)
            .is_some_and(|m| m.contains_key(pod))
        {
            return Ok(true);
        }
        let api = Api::<Pod>::namespaced(client.clone(), ns);
        let got =
            rt.block_on(async { tokio::time::timeout(FETCH_TIMEOUT, api.get_opt(name)).await });
        let fail =
            |source: Box<dyn std::error::Error + Send + Sync>, transient| SourceError::Fetch {
                pod: pod.to_string(),
                source,
                transient,
            };
        let object = match got {
            Err(_) => {
                return Err(fail(
                    format!("no answer within {}s", FETCH_TIMEOUT.as_secs()).into(),
                    true,
                ))
            }
            Ok(Err(e)) => {
                // Unreachable, throttled or a server error: a retry can help. A
                // refusal (forbidden: RBAC must grant `get pods`) cannot.
                let transient = match &e {
                    kube::Error::Api(r) => r.code == 429 || r.code >= 500,
                    _ => true,
                };
                return Err(fail(Box::new(e), transient));
            }
            Ok(Ok(None)) => return Ok(false),
            Ok(Ok(Some(p))) => p,
        };
        let v = serde_json::to_value(&object).unwrap_or_default();
        let st = decode(WatchedKind::Pod, v, None);
        let mut s = self.store();
        if !s
            .objects
            .get(&WatchedKind::Pod)
            .is_some_and(|m| m.contains_key(pod))
            && s.put((WatchedKind::Pod, pod.to_string()), Some(st))
        {
            self.watches.shared.dirty.store(true, Ordering::SeqCst);
        }
        Ok(true)
    }
}

/// What the decoder needs of an object from the API: its fields, without the
/// server-side bookkeeping that no policy depends on (managed fields, the status of
/// everything but the addresses).
pub fn trimmed(kind: WatchedKind, mut v: serde_json::Value) -> serde_json::Value {
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("managedFields");
    }
    // A ServiceAccount matters by its labels only: its secret and image pull secret
    // references are dropped as it arrives, never kept or decoded.
    if kind == WatchedKind::ServiceAccount {
        if let Some(obj) = v.as_object_mut() {
            obj.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
        }
    }
    let keep_status: &[&str] = match kind {
        WatchedKind::Pod => &["podIP", "podIPs", "hostIP", "hostIPs"],
        WatchedKind::Node => &["addresses"],
        _ => &[],
    };
    if let Some(obj) = v.as_object_mut() {
        match obj.get_mut("status").and_then(|s| s.as_object_mut()) {
            Some(status) if !keep_status.is_empty() => {
                status.retain(|k, _| keep_status.contains(&k.as_str()));
            }
            _ => {
                obj.remove("status");
            }
        }
    }
    v
}

fn object_key(v: &serde_json::Value) -> String {
    let meta = &v["metadata"];
    match (meta["namespace"].as_str(), meta["name"].as_str()) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.to_string(),
        _ => "<unnamed>".to_string(),
    }
}

fn resource_version(v: &serde_json::Value) -> Option<u64> {
    v["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

/// Decodes one object as the manifest reader would, keeping its last good version
/// when the new one is rejected.
fn decode(kind: WatchedKind, v: serde_json::Value, previous: Option<&ObjectState>) -> ObjectState {
    let v = trimmed(kind, v);
    let key = object_key(&v);
    let previous_version = previous.map(|p| p.version.clone());
    let label = format!("api:{kind:?}/{key}");
    let text = serde_json::to_string_pretty(&v).unwrap_or_default();
    let loaded = manifest::load(&[(label, text)]);
    let warnings = loaded.warnings.iter().map(|w| w.to_string()).collect();
    if loaded.errors.is_empty() {
        return ObjectState {
            good: Some(Decoded::from(loaded.cluster)),
            errors: Vec::new(),
            warnings,
            version: crate::publish::Versions::accepted(kind, &v, previous_version.as_ref()),
        };
    }
    let version = crate::publish::Versions::rejected(kind, &v, previous_version, &loaded.errors);
    ObjectState {
        good: previous.and_then(|p| p.good.clone()),
        errors: loaded.errors,
        warnings,
        version,
    }
}

/// How a watch lists. Streaming lists (`sendInitialEvents`, the WatchList feature,
/// on by default since Kubernetes 1.32) come from the API server's watch cache as one
/// stream: no continue token to expire, whatever the number of objects and however
/// slowly the agent reads, and no page of 500 objects held at once. Paginated lists
/// from etcd are the fallback: with tens of agents listing 10k pods at once on a busy
/// API server, their continue tokens outlived etcd's compaction (`410 Gone` on
/// continue, and the list started over).
fn list_config(streaming: bool) -> watcher::Config {
    if streaming {
        watcher::Config::default().streaming_lists()
    } else {
        watcher::Config::default()
    }
}

/// Whether `e` says the API server does not accept streaming lists: it rejects the
/// request as invalid (WatchList disabled: 422, or 400).
fn streaming_refused(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::WatchStartFailed(kube::Error::Api(r)) if r.code == 422 || r.code == 400
    )
}

struct Watch {
    kind: WatchedKind,
    store: Arc<Mutex<Store>>,
    dirty: Arc<AtomicBool>,
    wake: WakeSlot,
    reach: Reachability,
}

impl Watch {
    /// Something changed: flag it and wake the reconciler.
    fn mark(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        if let Some(wake) = self.wake.lock().expect("wake lock").as_ref() {
            wake();
        }
    }

    fn spawn<K>(self, api: Api<K>) -> tokio::task::JoinHandle<()>
    where
        K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
    {
        tokio::spawn(async move {
            // Streaming lists first (see `list_config`); paginated lists if this API
            // server refuses them.
            let mut streaming = true;
            loop {
                let config = list_config(streaming);
                // kube-runtime's `default_backoff()`, with the wait cut short when the
                // probe sees the API server come back (see `crate::reachability`): like
                // `StreamBackoff`, an error waits the next backoff delay and any event
                // resets it.
                let mut backoff = watcher::DefaultBackoff::default();
                let mut stream = watcher::watcher(api.clone(), config).boxed();
                // Objects of a relist in progress: they replace the kind's objects only
                // once the list is complete.
                let mut relist: Option<BTreeMap<String, ObjectState>> = None;
                let mut list_started: Option<std::time::Instant> = None;
                let mut refused = false;
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(ev) => {
                            backoff.reset();
                            self.log_relist(&ev, &mut list_started);
                            self.on_event(ev, &mut relist)
                        }
                        Err(e) if streaming && streaming_refused(&e) => {
                            refused = true;
                            break;
                        }
                        Err(e) => {
                            self.on_error(&e);
                            let delay = backoff.next().unwrap_or(MAX_BACKOFF);
                            if self.reach.wait(delay).await == Woken::Recovered {
                                backoff.reset();
                                let mut s = self.store.lock().expect("store lock");
                                s.health.entry(self.kind).or_default().retries_on_recovery += 1;
                            }
                        }
                    }
                }
                if !refused {
                    return;
                }
                tracing::info!(kind = ?self.kind, "the API server refuses streaming lists (WatchList); using paginated lists");
                streaming = false;
            }
        })
    }

    /// Says how long a list took when it follows a failed watch: the time from the API
    /// server's return to enforcement is mostly these lists.
    fn log_relist<K>(&self, ev: &Event<K>, started: &mut Option<std::time::Instant>) {
        match ev {
            Event::Init => *started = Some(std::time::Instant::now()),
            Event::InitDone => {
                let Some(t) = started.take() else { return };
                let errors = {
                    let s = self.store.lock().expect("store lock");
                    s.health.get(&self.kind).map_or(0, |h| h.errors)
                };
                if errors > 0 {
                    tracing::info!(kind = ?self.kind, seconds = t.elapsed().as_secs_f64(), "listed again after the watch failed");
                }
            }
            _ => {}
        }
    }

    fn on_event<K: Serialize>(
        &self,
        ev: Event<K>,
        relist: &mut Option<BTreeMap<String, ObjectState>>,
    ) {
        let mut s = self.store.lock().expect("store lock");
        let shown = s.shown(self.kind);
        self.on_event_locked(&mut s, ev, relist);
        self.view_switch(&mut s, shown);
    }

    /// Calico's storage kinds appearing (Calico installed) or going away switch the
    /// view in force: every object of both views is a change.
    fn view_switch(&self, s: &mut Store, shown_before: WatchedKind) {
        if s.shown(self.kind) != shown_before {
            tracing::info!(kind = ?self.kind, now = ?s.shown(self.kind), "Calico policies are now read from this view");
            s.touch_views(self.kind);
            self.mark();
        }
    }

    fn on_event_locked<K: Serialize>(
        &self,
        s: &mut Store,
        ev: Event<K>,
        relist: &mut Option<BTreeMap<String, ObjectState>>,
    ) {
        let h = s.health.entry(self.kind).or_default();
        h.events += 1;
        h.failing = false;
        h.failing_since = None;
        h.not_served = false;
        let value = |o: &K| serde_json::to_value(o).unwrap_or_default();
        let observe = |s: &mut Store, v: &serde_json::Value| {
            if let Some(rv) = resource_version(v) {
                let h = s.health.entry(self.kind).or_default();
                h.resource_version = Some(h.resource_version.map_or(rv, |old| old.max(rv)));
            }
        };
        match ev {
            Event::Init => {
                h.relists += 1;
                *relist = Some(BTreeMap::new());
            }
            Event::InitApply(o) => {
                let v = value(&o);
                observe(s, &v);
                let key = object_key(&v);
                let prev = s.objects.get(&self.kind).and_then(|m| m.get(&key));
                let st = decode(self.kind, v, prev);
                relist.get_or_insert_with(BTreeMap::new).insert(key, st);
            }
            Event::InitDone => {
                s.health.entry(self.kind).or_default().lists_completed += 1;
                // The complete list replaces the kind's objects; only those whose
                // state differs are changes (a relist that found nothing new changes
                // nothing, in the store or in the kernel).
                let mut objects = relist.take().unwrap_or_default();
                let old: Vec<String> = s
                    .objects
                    .get(&self.kind)
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                let mut any = false;
                for key in old {
                    if !objects.contains_key(&key) {
                        any |= s.put((self.kind, key), None);
                    }
                }
                for (key, st) in std::mem::take(&mut objects) {
                    any |= s.put((self.kind, key), Some(st));
                }
                let h = s.health.entry(self.kind).or_default();
                let first = !h.synced;
                h.synced = true;
                if any || first {
                    self.mark();
                }
            }
            Event::Apply(o) => {
                let v = value(&o);
                observe(s, &v);
                let key = object_key(&v);
                let prev = s.objects.get(&self.kind).and_then(|m| m.get(&key));
                let st = decode(self.kind, v, prev);
                if s.put((self.kind, key), Some(st)) {
                    self.mark();
                }
            }
            Event::Delete(o) => {
                let v = value(&o);
                observe(s, &v);
                if s.put((self.kind, object_key(&v)), None) {
                    self.mark();
                }
            }
        }
    }

    fn on_error(&self, e: &watcher::Error) {
        let not_found = matches!(
            e,
            watcher::Error::InitialListFailed(kube::Error::Api(r))
                | watcher::Error::WatchStartFailed(kube::Error::Api(r))
                if r.code == 404
        );
        let mut s = self.store.lock().expect("store lock");
        let shown = s.shown(self.kind);
        self.on_error_locked(&mut s, e, not_found);
        self.view_switch(&mut s, shown);
    }

    fn on_error_locked(&self, s: &mut Store, e: &watcher::Error, not_found: bool) {
        let h = s.health.entry(self.kind).or_default();
        h.errors += 1;
        h.last_error = Some(e.to_string());
        if not_found && self.kind.optional() {
            // A CRD that is not installed: nothing of that kind can exist. Listed and
            // empty until it appears (the watcher keeps retrying). Not failing either,
            // also when it failed while the API server was away.
            h.not_served = true;
            h.failing = false;
            h.failing_since = None;
            if !h.synced {
                h.synced = true;
                self.mark();
            }
            return;
        }
        if !h.failing {
            h.failing = true;
            h.failing_since = Some(crate::decisions::rfc3339_now());
            tracing::warn!(kind = ?self.kind, error = %e, "watch failing; enforcing the last state read, retrying with backoff");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(kind: WatchedKind, store: &Arc<Mutex<Store>>, dirty: &Arc<AtomicBool>) -> Watch {
        Watch {
            kind,
            store: store.clone(),
            dirty: dirty.clone(),
            wake: WakeSlot::default(),
            reach: Reachability::default(),
        }
    }

    fn source(store: &Arc<Mutex<Store>>, dirty: &Arc<AtomicBool>) -> KubeSource {
        KubeSource {
            watches: KubeWatches {
                shared: Shared {
                    store: store.clone(),
                    dirty: dirty.clone(),
                    wake: WakeSlot::default(),
                    reach: Reachability::default(),
                },
                client: None,
                tasks: Arc::default(),
            },
            reads: None,
            delivered: false,
        }
    }

    fn np(name: &str, port: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": port}]}]}
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": "x"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    /// Lists every kind once, empty, except what `f` does.
    fn list_all_empty(store: &Arc<Mutex<Store>>, dirty: &Arc<AtomicBool>, except: &[WatchedKind]) {
        for kind in WatchedKind::ALL {
            if except.contains(&kind) {
                continue;
            }
            let w = watch(kind, store, dirty);
            let mut relist = None;
            w.on_event::<Pod>(Event::Init, &mut relist);
            w.on_event::<Pod>(Event::InitDone, &mut relist);
        }
    }

    #[test]
    fn service_accounts_and_a_pods_service_account_reach_the_cluster_and_secrets_do_not() {
        let (store, dirty) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let mut src = source(&store, &dirty);
        list_all_empty(
            &store,
            &dirty,
            &[WatchedKind::Pod, WatchedKind::ServiceAccount],
        );
        let mut relist = None;
        let w = watch(WatchedKind::Pod, &store, &dirty);
        let mut p = pod("web", "10.0.0.9");
        p.spec.as_mut().unwrap().service_account_name = Some("web-sa".into());
        w.on_event::<Pod>(Event::Init, &mut relist);
        w.on_event(Event::InitApply(p), &mut relist);
        w.on_event::<Pod>(Event::InitDone, &mut relist);
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "web-sa", "namespace": "default", "labels": {"team": "a"}},
            "secrets": [{"name": "web-sa-token"}],
            "imagePullSecrets": [{"name": "registry"}]
        }))
        .unwrap();
        let trimmed_sa = trimmed(
            WatchedKind::ServiceAccount,
            serde_json::to_value(&sa).unwrap(),
        );
        assert!(trimmed_sa.get("secrets").is_none(), "{trimmed_sa}");
        assert!(trimmed_sa.get("imagePullSecrets").is_none(), "{trimmed_sa}");
        let w = watch(WatchedKind::ServiceAccount, &store, &dirty);
        w.on_event::<ServiceAccount>(Event::Init, &mut relist);
        w.on_event(Event::InitApply(sa), &mut relist);
        w.on_event::<ServiceAccount>(Event::InitDone, &mut relist);
        let snap = src.load().unwrap();
        assert_eq!(snap.cluster.pods["default/web"].service_account, "web-sa");
        assert_eq!(
            snap.cluster.service_accounts["default/web-sa"].labels["team"],
            "a"
        );
    }

    #[test]
    fn no_answer_until_every_kind_is_listed() {
        let (store, dirty) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let mut src = source(&store, &dirty);
        list_all_empty(&store, &dirty, &[WatchedKind::NetworkPolicy]);
        let err = src.load().unwrap_err().to_string();
        assert!(err.contains("NetworkPolicy"), "{err}");
        let w = watch(WatchedKind::NetworkPolicy, &store, &dirty);
        let mut relist = None;
        w.on_event::<NetworkPolicy>(Event::Init, &mut relist);
        w.on_event(Event::InitApply(np("a", 80.into())), &mut relist);
        // Mid-list: still no answer.
        assert!(src.load().is_err());
        w.on_event::<NetworkPolicy>(Event::InitDone, &mut relist);
        let snap = src.load().unwrap();
        assert!(snap.cluster.network_policies.contains_key("default/a"));
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    }

    #[test]
    fn a_crd_that_is_not_served_counts_as_listed_and_empty() {
        let (store, dirty) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let mut src = source(&store, &dirty);
        list_all_empty(&store, &dirty, &[WatchedKind::AdminNetworkPolicy]);
        let status: kube::core::Status =
            serde_json::from_value(serde_json::json!({"code": 404, "message": "not found"}))
                .unwrap();
        let w = watch(WatchedKind::AdminNetworkPolicy, &store, &dirty);
        w.on_error(&watcher::Error::InitialListFailed(kube::Error::Api(
            Box::new(status.clone()),
        )));
        assert!(src.load().is_ok());
        assert!(src.health()[&WatchedKind::AdminNetworkPolicy].not_served);
        // A core kind failing the same way is not "empty": it is failing.
        let w = watch(WatchedKind::Pod, &store, &dirty);
        w.on_error(&watcher::Error::InitialListFailed(kube::Error::Api(
            Box::new(status),
        )));
        assert!(src.health()[&WatchedKind::Pod].failing);
    }

    #[test]
    fn a_rejected_update_keeps_the_last_good_version_and_names_the_field() {
        let (store, dirty) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let mut src = source(&store, &dirty);
        list_all_empty(&store, &dirty, &[]);
        let w = watch(WatchedKind::NetworkPolicy, &store, &dirty);
        let mut relist = None;
        w.on_event(Event::Apply(np("a", 80.into())), &mut relist);
        w.on_event(Event::Apply(np("b", 443.into())), &mut relist);
        // A port name Kubernetes would not accept either: rejected alone.
        w.on_event(Event::Apply(np("a", "Not_A_Port!".into())), &mut relist);
        let snap = src.load().unwrap();
        let a = &snap.cluster.network_policies["default/a"];
        assert_eq!(
            serde_json::to_value(a).unwrap()["ingress"][0]["ports"][0]["Range"]["port"],
            80,
            "last good version in force: {a:?}"
        );
        assert!(snap.cluster.network_policies.contains_key("default/b"));
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert!(
            snap.errors[0].field() == Some("spec.ingress[0].ports[0].port"),
            "{:?}",
            snap.errors
        );
    }

    #[test]
    fn a_remote_pod_is_kept_alone_with_what_peers_need() {
        let (store, dirty) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let mut src = source(&store, &dirty);
        list_all_empty(&store, &dirty, &[]);
        let w = watch(WatchedKind::Pod, &store, &dirty);
        let mut relist = None;
        let p: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                         "labels": {"app": "web", "pod-template-hash": "5d8f"},
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"nodeName": "other-node", "containers": [
                {"name": "c", "image": "x", "env": [{"name": "A", "value": "b"}],
                 "ports": [{"name": "http", "containerPort": 8080},
                           {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.7",
                       "podIPs": [{"ip": "10.0.0.7"}, {"ip": "fd00::7"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        w.on_event(Event::Apply(p), &mut relist);
        {
            let s = store.lock().unwrap();
            let st = &s.objects[&WatchedKind::Pod]["shop/web-1"];
            assert!(
                matches!(st.good, Some(Decoded::Pod(_))),
                "a pod is kept on its own, not in a Cluster: {:?}",
                st.good
            );
        }
        let snap = src.load().unwrap();
        let pod = &snap.cluster.pods["shop/web-1"];
        assert_eq!(pod.namespace, "shop");
        assert_eq!(pod.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(pod.labels.len(), 2);
        let ips: Vec<String> = pod.ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, ["10.0.0.7", "fd00::7"]);
        assert_eq!(
            pod.resolve_named_port("http", palisade_policy::model::Protocol::Tcp),
            Some(8080)
        );
        assert_eq!(
            pod.resolve_named_port("dns", palisade_policy::model::Protocol::Udp),
            Some(53)
        );
        assert_eq!(pod.node_name.as_deref(), Some("other-node"));
        // What the store hands over is what the manifest reader makes of the object.
        let mut refreshed = Snapshot::default();
        assert_eq!(src.refresh(&mut refreshed).unwrap(), Refresh::Whole);
        assert_eq!(refreshed.cluster, snap.cluster);
    }

    #[test]
    fn a_relist_replaces_a_kind_only_once_complete_and_pod_status_is_kept_to_addresses() {
        let (store, dirty) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let mut src = source(&store, &dirty);
        list_all_empty(&store, &dirty, &[WatchedKind::Pod]);
        let w = watch(WatchedKind::Pod, &store, &dirty);
        let mut relist = None;
        w.on_event::<Pod>(Event::Init, &mut relist);
        w.on_event(Event::InitApply(pod("x", "10.0.0.1")), &mut relist);
        w.on_event(Event::InitApply(pod("y", "10.0.0.2")), &mut relist);
        w.on_event::<Pod>(Event::InitDone, &mut relist);
        let snap = src.load().unwrap();
        assert_eq!(snap.cluster.pods.len(), 2);
        assert!(snap.errors.is_empty(), "{:?}", snap.errors);
        assert_eq!(
            snap.cluster.pods["default/x"].ips,
            vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        // A relist (after 410 Gone) in progress: the old objects stay until it is done.
        w.on_event::<Pod>(Event::Init, &mut relist);
        w.on_event(Event::InitApply(pod("x", "10.0.0.1")), &mut relist);
        assert_eq!(src.load().unwrap().cluster.pods.len(), 2);
        w.on_event::<Pod>(Event::InitDone, &mut relist);
        let pods = src.load().unwrap().cluster.pods;
        assert_eq!(pods.keys().collect::<Vec<_>>(), vec!["default/x"]);
        // Deleted.
        w.on_event(Event::Delete(pod("x", "10.0.0.1")), &mut relist);
        assert!(src.load().unwrap().cluster.pods.is_empty());
    }

    #[test]
    fn a_relist_that_finds_nothing_new_changes_nothing_and_a_change_only_its_object() {
        let (store, dirty) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let mut src = source(&store, &dirty);
        list_all_empty(
            &store,
            &dirty,
            &[WatchedKind::Pod, WatchedKind::NetworkPolicy],
        );
        let pods = watch(WatchedKind::Pod, &store, &dirty);
        let nps = watch(WatchedKind::NetworkPolicy, &store, &dirty);
        let (mut rp, mut rn) = (None, None);
        let list = |pod_ip: &str, with_policy: bool, rp: &mut _, rn: &mut _| {
            pods.on_event::<Pod>(Event::Init, rp);
            pods.on_event(Event::InitApply(pod("x", pod_ip)), rp);
            pods.on_event(Event::InitApply(pod("y", "10.0.0.2")), rp);
            pods.on_event::<Pod>(Event::InitDone, rp);
            nps.on_event::<NetworkPolicy>(Event::Init, rn);
            if with_policy {
                nps.on_event(Event::InitApply(np("a", 80.into())), rn);
            }
            nps.on_event::<NetworkPolicy>(Event::InitDone, rn);
        };
        list("10.0.0.1", true, &mut rp, &mut rn);
        let mut snap = Snapshot::default();
        assert_eq!(src.refresh(&mut snap).unwrap(), Refresh::Whole);
        assert_eq!(snap.cluster.pods.len(), 2);
        assert!(!src.changed());

        // The same objects listed again (a watch restart, 410 Gone): no change at all.
        list("10.0.0.1", true, &mut rp, &mut rn);
        assert!(
            !src.changed(),
            "a relist of the same objects is not a change"
        );
        assert_eq!(src.health()[&WatchedKind::Pod].relists, 2);
        let before = snap.cluster.clone();
        assert_eq!(
            src.refresh(&mut snap).unwrap(),
            Refresh::Keys(Changed::default())
        );
        assert_eq!(snap.cluster, before);

        // A relist that finds x moved and the policy gone: exactly those two.
        list("10.0.0.9", false, &mut rp, &mut rn);
        assert!(src.changed());
        let Refresh::Keys(keys) = src.refresh(&mut snap).unwrap() else {
            panic!("a later refresh names its keys")
        };
        assert_eq!(keys.pods.iter().collect::<Vec<_>>(), ["default/x"]);
        assert_eq!(
            keys.network_policies.iter().collect::<Vec<_>>(),
            ["default/a"]
        );
        assert!(keys.namespaces.is_empty() && keys.nodes.is_empty());
        // The patched snapshot is what a whole load gives.
        assert_eq!(snap.cluster, src.load().unwrap().cluster);
        let changes = keys.changes(&before, &snap.cluster);
        assert_eq!(changes.len(), 2, "{changes:?}");

        // A status-only update of a pod (same addresses): not a change either.
        let mut x = pod("x", "10.0.0.9");
        x.metadata.resource_version = Some("99".into());
        pods.on_event(Event::Apply(x), &mut rp);
        assert!(!src.changed());
        assert_eq!(src.health()[&WatchedKind::Pod].resource_version, Some(99));
    }

    /// The seed-002 policy as the API server returns it (from either Calico group).
    fn calico_policy(api_version: &str, name: &str, rv: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": api_version,
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}"),
                         "resourceVersion": rv, "generation": 1},
            "spec": {
                "selector": "(app.kubernetes.io/managed-by == 'manager') && (app.kubernetes.io/part-of == 'super-feature')",
                "types": ["Egress"],
                "egress": [
                    {"action": "Deny", "destination": {"nets": ["169.254.169.254/32"]}},
                    {"action": "Deny", "destination": {"services": {"name": "kubernetes", "namespace": "default"}}},
                    {"action": "Allow"}
                ]
            }
        })
    }

    fn not_found() -> watcher::Error {
        let status: kube::core::Status =
            serde_json::from_value(serde_json::json!({"code": 404, "message": "not found"}))
                .unwrap();
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn calico_policies_are_decoded_one_by_one_reported_and_named_in_a_refresh() {
        let (store, dirty) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let mut src = source(&store, &dirty);
        // Calico is not installed: its storage kind is not served.
        list_all_empty(&store, &dirty, &[WatchedKind::CalicoStoredNetworkPolicy]);
        watch(WatchedKind::CalicoStoredNetworkPolicy, &store, &dirty).on_error(&not_found());
        let w = watch(WatchedKind::CalicoNetworkPolicy, &store, &dirty);
        let mut relist = None;
        w.on_event(
            Event::Apply(calico_policy("projectcalico.org/v3", "seed", "10")),
            &mut relist,
        );
        // One the decoder cannot enforce (ICMP type match): rejected alone, field named.
        let mut bad = calico_policy("projectcalico.org/v3", "icmp", "11");
        bad["spec"]["egress"][0]["icmp"] = serde_json::json!({"type": 8});
        w.on_event(Event::Apply(bad), &mut relist);
        let mut snap = Snapshot::default();
        assert_eq!(src.refresh(&mut snap).unwrap(), Refresh::Whole);
        let key = "NetworkPolicy.projectcalico.org/default/seed";
        let p = snap
            .cluster
            .calico_policies
            .get(key)
            .unwrap_or_else(|| panic!("{:?}", snap.errors));
        assert_eq!(p.egress.as_ref().map(Vec::len), Some(3), "{p:?}");
        assert_eq!(snap.cluster.calico_policies.len(), 1, "the bad one is out");
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert_eq!(snap.errors[0].field(), Some("spec.egress[0].icmp"));
        assert!(
            snap.errors[0]
                .file()
                .contains("CalicoNetworkPolicy/default/icmp"),
            "{}",
            snap.errors[0].file()
        );
        // Reported under the name kubectl gives the resource, with its version, and
        // the rejected one as an error of that kind.
        assert!(
            snap.versions
                .iter()
                .any(|v| v.policy.key() == key && v.uid == "u-seed"),
            "{:?}",
            snap.versions
        );
        assert!(
            snap.rejected
                .iter()
                .any(|e| e.object.kind == "NetworkPolicy.projectcalico.org"
                    && e.field == "spec.egress[0].icmp"),
            "{:?}",
            snap.rejected
        );

        // Deleted: the refresh names its key, and the compiler change follows.
        let before = snap.cluster.clone();
        w.on_event(
            Event::Delete(calico_policy("projectcalico.org/v3", "seed", "12")),
            &mut relist,
        );
        let Refresh::Keys(keys) = src.refresh(&mut snap).unwrap() else {
            panic!("a later refresh names its keys")
        };
        assert_eq!(keys.calico_policies.iter().collect::<Vec<_>>(), [key]);
        assert!(snap.cluster.calico_policies.is_empty());
        let changes = keys.changes(&before, &snap.cluster);
        assert!(
            matches!(&changes[..], [palisade_policy::compile::Change::RemoveCalicoPolicy(k)] if k == key),
            "{changes:?}"
        );
    }

    #[test]
    fn calicos_storage_is_read_instead_of_projectcalico_org_once_it_is_served() {
        let (store, dirty) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let mut src = source(&store, &dirty);
        list_all_empty(&store, &dirty, &[WatchedKind::CalicoStoredNetworkPolicy]);
        let stored = watch(WatchedKind::CalicoStoredNetworkPolicy, &store, &dirty);
        let v3 = watch(WatchedKind::CalicoNetworkPolicy, &store, &dirty);
        let (mut r1, mut r3) = (None, None);
        // Calico not installed: its storage kind is not served; the v3 CRD is read.
        stored.on_error(&not_found());
        v3.on_event(
            Event::Apply(calico_policy("projectcalico.org/v3", "a", "5")),
            &mut r3,
        );
        let mut snap = Snapshot::default();
        src.refresh(&mut snap).unwrap();
        assert_eq!(
            snap.cluster.calico_policies.keys().collect::<Vec<_>>(),
            ["NetworkPolicy.projectcalico.org/default/a"]
        );

        // Calico installed: its storage lists the same policy (named as Calico stores
        // it) and another. Mid-list nothing switches (no window without policies).
        stored.on_event::<serde_json::Value>(Event::Init, &mut r1);
        stored.on_event(
            Event::InitApply(calico_policy("crd.projectcalico.org/v1", "default.a", "6")),
            &mut r1,
        );
        assert_eq!(
            src.refresh(&mut snap).unwrap(),
            Refresh::Keys(Changed::default())
        );
        stored.on_event(
            Event::InitApply(calico_policy("crd.projectcalico.org/v1", "b", "7")),
            &mut r1,
        );
        stored.on_event::<serde_json::Value>(Event::InitDone, &mut r1);
        let Refresh::Keys(keys) = src.refresh(&mut snap).unwrap() else {
            panic!("keys")
        };
        let want = [
            "NetworkPolicy.projectcalico.org/default/b",
            "NetworkPolicy.projectcalico.org/default/default.a",
        ];
        assert_eq!(
            snap.cluster.calico_policies.keys().collect::<Vec<_>>(),
            want
        );
        assert!(keys
            .calico_policies
            .contains("NetworkPolicy.projectcalico.org/default/a"));
        assert_eq!(snap.cluster, src.load().unwrap().cluster, "refresh = load");
        // Only the storage's versions are reported: one policy is never reported twice.
        let mut reported: Vec<String> = snap.versions.iter().map(|v| v.policy.key()).collect();
        reported.sort();
        assert_eq!(reported, want);

        // A v3 object with the storage's name changing while hidden changes nothing
        // in force (the storage's copy of that key stays).
        v3.on_event(
            Event::Apply(calico_policy("projectcalico.org/v3", "b", "8")),
            &mut r3,
        );
        v3.on_event(
            Event::Delete(calico_policy("projectcalico.org/v3", "b", "9")),
            &mut r3,
        );
        src.refresh(&mut snap).unwrap();
        assert_eq!(
            snap.cluster.calico_policies.keys().collect::<Vec<_>>(),
            want
        );

        // Calico's CRDs removed again: back to projectcalico.org/v3.
        stored.on_error(&not_found());
        src.refresh(&mut snap).unwrap();
        assert_eq!(
            snap.cluster.calico_policies.keys().collect::<Vec<_>>(),
            ["NetworkPolicy.projectcalico.org/default/a"]
        );
        assert_eq!(snap.cluster, src.load().unwrap().cluster);
    }

    #[test]
    fn a_changed_endpoint_slice_or_service_is_named_in_the_refresh() {
        let (store, dirty) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let mut src = source(&store, &dirty);
        list_all_empty(&store, &dirty, &[]);
        let mut snap = Snapshot::default();
        src.refresh(&mut snap).unwrap();
        let slice = |ip: &str| -> EndpointSlice {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip]}],
                "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
            }))
            .unwrap()
        };
        let w = watch(WatchedKind::EndpointSlice, &store, &dirty);
        let mut relist = None;
        w.on_event(Event::Apply(slice("10.240.0.2")), &mut relist);
        let before = snap.cluster.clone();
        let Refresh::Keys(keys) = src.refresh(&mut snap).unwrap() else {
            panic!("keys")
        };
        assert_eq!(
            keys.endpoint_slices.iter().collect::<Vec<_>>(),
            ["default/kubernetes"]
        );
        assert_eq!(keys.changes(&before, &snap.cluster).len(), 1);
        // The API server moved: the change reaches the compiler at once, not at the
        // next full pass.
        w.on_event(Event::Apply(slice("10.240.0.3")), &mut relist);
        let before = snap.cluster.clone();
        let Refresh::Keys(keys) = src.refresh(&mut snap).unwrap() else {
            panic!("keys")
        };
        let changes = keys.changes(&before, &snap.cluster);
        assert!(
            matches!(
                &changes[..],
                [palisade_policy::compile::Change::UpsertEndpointSlice(_)]
            ),
            "{changes:?}"
        );
    }
}
