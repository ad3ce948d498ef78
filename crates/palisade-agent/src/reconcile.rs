//! The reconciler: desired state in, kernel state out, and a record of what is in force.
//!
//! One task owns the [`Reconciler`]; the API server talks to it through messages, so
//! there is no locking and every change is applied in one order.
//!
//! Each pass: load a [`Snapshot`] → overlay the addresses the CNI plugin reported →
//! compile → make sure every registered interface has programs attached → hand the
//! compiled state to the [`Enforcer`], which writes new state aside, switches endpoints
//! with one write each and removes stale state last → record the generation in force.
//! A failed pass changes nothing already enforced (the enforcer rejects an update as a
//! whole) and is retried on the next trigger.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use palisade_policy::compile::{changes_between, merge, Compiler, InUse};
use palisade_policy::compiled::{Compiled, Delta};

use crate::registry::{unix_now, Interface, Registry, RegistryError, DEFAULT_REGISTRATION_TTL};
use crate::source::{Changed, Refresh, Snapshot, Source, SourceError};

/// Why the kernel side refused or failed a write. Either way nothing already enforced
/// changed (the datapath applies an update whole or not at all).
#[derive(Debug, thiserror::Error)]
pub enum EnforcerError {
    /// Attaching programs to a pod's interface failed.
    #[error("attaching to {ifname} for pod {pod}")]
    Attach {
        /// `namespace/name`.
        pod: String,
        /// Host-side interface.
        ifname: String,
        /// Cause.
        #[source]
        source: Box<palisade_datapath::Error>,
    },
    /// Detaching from a pod's interface failed.
    #[error("detaching pod {pod}")]
    Detach {
        /// `namespace/name`.
        pod: String,
        /// Cause.
        #[source]
        source: Box<palisade_datapath::Error>,
    },
    /// Reading whether an interface's links are severed failed.
    #[error("checking the links of ifindex {ifindex}")]
    Links {
        /// The interface.
        ifindex: u32,
        /// Cause.
        #[source]
        source: Box<palisade_datapath::Error>,
    },
    /// Writing the compiled state failed or was refused (over capacity, not encodable).
    #[error("programming the datapath")]
    Write(#[source] Box<palisade_datapath::Error>),
    /// Another enforcer's failure (tests, future datapaths).
    #[error("{message}")]
    Other {
        /// What failed.
        message: String,
        /// See [`EnforcerError::retryable`].
        retryable: bool,
    },
}

impl EnforcerError {
    /// Whether trying again, with the same desired state, can succeed. A kernel call
    /// that failed (busy, out of memory, bpffs) can; so can a full map (the node is
    /// full now: the request itself is fine, and a retry succeeds once other pods or
    /// policies leave). Compiled state that cannot be encoded, or an interface that
    /// does not exist, cannot: the input has to change.
    pub fn retryable(&self) -> bool {
        use palisade_datapath::Error as D;
        match self {
            EnforcerError::Attach { source, .. }
            | EnforcerError::Detach { source, .. }
            | EnforcerError::Links { source, .. }
            | EnforcerError::Write(source) => !matches!(
                **source,
                D::Encode(_) | D::Interface(..) | D::NotAttached(_)
            ),
            EnforcerError::Other { retryable, .. } => *retryable,
        }
    }
}

/// Why a pass failed; nothing already enforced changed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The source gave no snapshot.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The kernel side failed.
    #[error(transparent)]
    Enforcer(#[from] EnforcerError),
    /// The interface registry could not be saved.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl PassError {
    /// Whether the same pass, retried later, can succeed (see each part's `retryable`).
    pub fn retryable(&self) -> bool {
        match self {
            PassError::Source(e) => e.retryable(),
            PassError::Enforcer(e) => e.retryable(),
            PassError::Registry(e) => e.retryable(),
        }
    }
}

/// An error with its causes, `a: b: c`, as logs and replies show it.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The kernel side, as the reconciler needs it. Implemented by the eBPF datapath
/// (`crate::enforcer::BpfEnforcer`).
pub trait Enforcer: Send {
    /// Binds `pod` to its host-side interface and ensures programs are attached;
    /// returns the ifindex. Idempotent: re-attaching keeps enforcement continuous.
    fn attach(&mut self, pod: &str, host_ifname: &str) -> Result<u32, EnforcerError>;
    /// Detaches programs from a pod's interface (which may already be gone).
    fn detach(&mut self, pod: &str) -> Result<(), EnforcerError>;
    /// The index the interface called `host_ifname` has now, if it exists. A
    /// registration whose name now resolves to another index is dead: its interface
    /// is gone (names are unique in a namespace) and the name belongs to someone else.
    fn ifindex_of(&self, host_ifname: &str) -> Option<u32> {
        palisade_datapath::ifindex_of(host_ifname).ok()
    }
    /// For a pod whose registered interface this namespace no longer has: if the
    /// kernel severed its links (the interface was deleted), removes what is left of it
    /// and returns true; if its links are alive (the interface lives elsewhere, e.g. the
    /// agent runs in the wrong namespace), changes nothing and returns false.
    fn release_if_gone(&mut self, pod: &str, ifindex: u32) -> Result<bool, EnforcerError>;
    /// Makes the kernel match `compiled` for every attached pod. Either the whole
    /// update is applied or nothing already enforced changes.
    fn sync(&mut self, compiled: &Compiled) -> Result<(), EnforcerError>;
    /// Applies one ordered delta. Either the whole delta is applied or nothing
    /// already enforced changes.
    fn apply(&mut self, delta: &Delta) -> Result<(), EnforcerError>;
    /// Makes the kernel's Service frontends and backends match `services`
    /// (docs/semantics.md §10), each frontend switched with one write. Called
    /// after the policy of the same pass is in force, so a new backend's identity
    /// exists before a packet can be sent to it. Enforcers without a datapath
    /// ignore it.
    fn sync_services(
        &mut self,
        _services: &palisade_policy::services::ServiceTable,
    ) -> Result<(), EnforcerError> {
        Ok(())
    }
    /// The ids the kernel holds (possibly from a previous run), so a new compiler
    /// never gives one of them another meaning.
    fn in_use(&mut self) -> InUse;
    /// The kernel's state for one endpoint, decoded back into policy terms.
    fn endpoint_state(&mut self, ifindex: u32) -> anyhow::Result<KernelEndpoint>;
    /// Which programs the kernel runs on interface `ifindex`, read from the kernel.
    fn attachment(&mut self, ifindex: u32) -> anyhow::Result<KernelAttachment>;
    /// Datapath counters, summed over CPUs.
    fn counters(&mut self) -> anyhow::Result<Vec<CounterSample>>;
    /// The datapath's decision-event counters (sent, suppressed); none by default.
    fn event_stats(&mut self) -> anyhow::Result<crate::metrics::EventStats> {
        Ok(Default::default())
    }
    /// The datapath part of `status` (pin root, event settings, map fill levels); a
    /// kernel read that fails is named in `unread`, not left out.
    fn status(&mut self) -> crate::api::DatapathStatus;
}

// The endpoint's kernel state is part of the API (`palisade endpoint get/diff`).
pub use palisade_api::{Action, KernelAttachment, KernelEndpoint, KernelHook, TableRow};

/// One datapath counter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CounterSample {
    /// `ingress` or `egress`.
    pub direction: String,
    /// `allow` or `deny`.
    pub verdict: String,
    /// Reason (`policy`, `established`, `spoofed-source`, `malformed`, ...).
    pub reason: String,
    /// Packets.
    pub packets: u64,
}

/// Outcome of one reconcile pass, for logs and metrics.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// Wall time of the pass in seconds.
    pub seconds: f64,
    /// Endpoints programmed.
    pub endpoints: usize,
    /// Errors in the desired state (objects rejected).
    pub errors: Vec<palisade_policy::manifest::ManifestError>,
    /// Where the time went.
    pub stages: Stages,
}

/// Seconds spent in each stage of a pass (part of the API: `status`, `sync`).
pub use palisade_api::Stages;

/// Owns the desired state, the compiled state and the record of what is in force.
pub struct Reconciler {
    source: Box<dyn Source>,
    enforcer: Box<dyn Enforcer>,
    registry: Registry,
    snapshot: Snapshot,
    /// The incremental compiler holding the compiled state in the kernel; `None` until
    /// the first pass, which adopts the ids the kernel holds.
    compiler: Option<Compiler>,
    /// The node whose pods get endpoints (`None`: every pod of the desired state).
    local_node: Option<String>,
    /// Set by a failed pass: the compiler may be ahead of the kernel, so the next pass
    /// rebuilds (keeping every id's meaning) and syncs against the kernel's own state.
    needs_full: bool,
    /// Pod → the pass number whose desired state is in the kernel for it.
    in_force: BTreeMap<String, u64>,
    /// Monotonic count of successful passes.
    passes: u64,
    /// Generation of the last successful pass: persisted, so it only grows across
    /// agent restarts (a CNI plugin or operator never sees it go backwards).
    generation: u64,
    generation_file: Option<std::path::PathBuf>,
    /// The last pass's error (with its causes) and whether retrying can help.
    last_error: Option<(String, bool)>,
    last_stages: Stages,
    /// How long a registration whose pod never appears is kept.
    registration_ttl: std::time::Duration,
    /// Interfaces of sandboxes replaced by a newer one of the same pod: their links
    /// stay (the interface drops everything, having no entry) until the kernel severs
    /// them with the interface; each pass then releases their pins. In memory only: a
    /// restart releases severed pins when it adopts them.
    retired: BTreeMap<u32, String>,
    /// Per watched kind, the resourceVersion delivered before the last successful pass
    /// began (everything up to it is in force at `generation`).
    rv_in_force: BTreeMap<String, u64>,
    /// Publishes the node's `NodePolicyStatus` after every pass (`--publish-status`).
    publisher: Option<crate::publish::Publisher>,
    /// Writes Events on the objects rejected, after every pass.
    events: Option<crate::kube_events::EventWriter>,
}

impl Reconciler {
    /// A reconciler; nothing is read or written until [`Reconciler::reconcile`].
    pub fn new(source: Box<dyn Source>, enforcer: Box<dyn Enforcer>, registry: Registry) -> Self {
        Self {
            source,
            enforcer,
            registry,
            snapshot: Snapshot::default(),
            compiler: None,
            needs_full: false,
            local_node: None,
            in_force: BTreeMap::new(),
            passes: 0,
            generation: 0,
            generation_file: None,
            last_error: None,
            last_stages: Stages::default(),
            registration_ttl: DEFAULT_REGISTRATION_TTL,
            retired: BTreeMap::new(),
            publisher: None,
            events: None,
            rv_in_force: BTreeMap::new(),
        }
    }

    /// One pass. `reload` re-reads the source; without it the last snapshot is reused
    /// (a CNI registration changes only the registry, and re-parsing every manifest
    /// would put that cost on every pod start). `full` rebuilds the compiled state from
    /// scratch and resynchronises the whole datapath instead of applying the object-level
    /// changes as deltas. On error the kernel keeps what it had.
    pub fn reconcile(&mut self, reload: bool, full: bool) -> Result<PassReport, PassError> {
        let report = self.reconcile_pass(reload, full);
        if let Some(p) = &self.publisher {
            p.offer(crate::publish::report(p.node(), self));
        }
        if let Some(e) = &self.events {
            e.offer(&self.snapshot);
        }
        report
    }

    fn reconcile_pass(&mut self, reload: bool, full: bool) -> Result<PassReport, PassError> {
        let start = Instant::now();
        let result = self.pass(reload || self.passes == 0, full);
        match &result {
            Ok(_) => self.last_error = None,
            Err(e) => {
                self.last_error = Some((chain(e), e.retryable()));
                // The compiler may be ahead of the kernel now: the next pass rebuilds
                // and syncs against what the kernel really holds (the datapath rejected
                // the update whole, or reloaded its mirror after a write error). The
                // compiler is kept so that every id keeps its meaning.
                self.needs_full = true;
            }
        }
        let (endpoints, stages) = result?;
        self.passes += 1;
        self.generation += 1;
        if let Some(path) = &self.generation_file {
            if let Err(e) =
                crate::registry::write_atomically(path, self.generation.to_string().as_bytes())
            {
                tracing::warn!(error = %format!("{e:#}"), "could not persist the generation");
            }
        }
        self.last_stages = stages;
        Ok(PassReport {
            seconds: start.elapsed().as_secs_f64(),
            endpoints,
            errors: self.snapshot.errors.clone(),
            stages,
        })
    }

    fn pass(&mut self, reload: bool, full: bool) -> Result<(usize, Stages), PassError> {
        let mut stages = Stages::default();
        let t = Instant::now();
        // What the watches had delivered before this refresh: in force if it succeeds.
        let observed: BTreeMap<String, u64> = self
            .source
            .watches()
            .into_iter()
            .filter_map(|w| Some((w.kind, w.resource_version?)))
            .collect();
        // The snapshot is updated in place: a watch source changes only the objects
        // that changed, so a pass costs what changed, not the size of the cluster.
        let refresh = if reload {
            self.source.refresh(&mut self.snapshot)?
        } else {
            Refresh::Keys(Changed::default())
        };
        stages.load = t.elapsed().as_secs_f64();
        let unreachable = self.prune_registrations()?;
        // The CNI chain is the authority on a pod's addresses: a Pod object may not
        // carry status.podIPs yet when its sandbox is created.
        let mut registered = BTreeSet::new();
        for iface in self.registry.interfaces().values() {
            registered.insert(iface.pod.clone());
            if let Some(pod) = self.snapshot.cluster.pods.get_mut(&iface.pod) {
                if !iface.ips.is_empty() {
                    pod.ips = iface.ips.clone();
                }
            }
        }
        let t = Instant::now();
        // Incremental unless asked for a full pass (or after a failed one): each
        // changed object becomes a Delta that touches only what it affects, and the
        // pass's deltas are merged into one update (one capacity check, one safe order).
        // A full pass keeps the number of everything unchanged; the first pass of a run
        // takes over the kernel's numbers (see `Compiler::adopting`).
        let mut delta = Delta::default();
        let cluster = &self.snapshot.cluster;
        let rebuild = match self.compiler.as_mut() {
            Some(compiler) if !full && !self.needs_full => {
                let changes = match refresh {
                    Refresh::Whole => changes_between(compiler.cluster(), cluster),
                    // What the source changed, and the registered pods (whose
                    // addresses the CNI plugin may just have given).
                    Refresh::Keys(mut keys) => {
                        keys.pods.extend(registered);
                        keys.changes(compiler.cluster(), cluster)
                    }
                };
                let deltas: Vec<Delta> = changes
                    .into_iter()
                    .map(|change| compiler.apply(change))
                    .collect();
                delta = merge(deltas);
                false
            }
            Some(compiler) => {
                compiler.rebuild(cluster.clone());
                true
            }
            None => {
                let in_use = self.enforcer.in_use();
                self.compiler = Some(Compiler::adopting_on(
                    cluster.clone(),
                    &in_use,
                    self.local_node.clone(),
                ));
                true
            }
        };
        let compiled = self.compiler.as_ref().expect("set above").compiled();
        stages.compile = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut ifindexes = BTreeMap::new();
        for iface in self.registry.interfaces().values() {
            if compiled.endpoints.contains_key(&iface.pod) && !unreachable.contains(&iface.pod) {
                let ifindex = self.enforcer.attach(&iface.pod, &iface.host_ifname)?;
                ifindexes.insert(iface.pod.clone(), ifindex);
            }
        }
        stages.attach = t.elapsed().as_secs_f64();
        let t = Instant::now();
        if rebuild {
            self.enforcer.sync(compiled)?;
        } else if !delta.ops.is_empty() {
            self.enforcer.apply(&delta)?;
        }
        // Services: rebuilt from the snapshot every pass (cost: Services x
        // EndpointSlices) and written as a difference of the kernel's frontends.
        let services = palisade_policy::services::ServiceTable::build(&self.snapshot.cluster);
        self.enforcer.sync_services(&services)?;
        self.needs_full = false;
        stages.sync = t.elapsed().as_secs_f64();
        // Generation = the number of this pass: "the desired state as read by pass N is
        // in the kernel for this pod". Monotonic across the agent's lifetime.
        let generation = self.generation + 1;
        self.in_force = ifindexes
            .keys()
            .map(|pod| (pod.clone(), generation))
            .collect();
        if reload {
            self.rv_in_force = observed;
        }
        Ok((ifindexes.len(), stages))
    }

    /// Drops registrations that cannot be enforced on: their pod never appeared within
    /// the TTL, or their interface is gone (its name missing or now another index).
    /// Without this, one stale registration would make every later pass fail to attach.
    ///
    /// Returns the pods whose interface is not here but whose links are alive: they are
    /// kept, and skipped by this pass's attach.
    fn prune_registrations(&mut self) -> Result<BTreeSet<String>, RegistryError> {
        let pods = &self.snapshot.cluster.pods;
        self.registry.mark_seen(|p| pods.contains_key(p))?;
        let dead: Vec<(String, String)> = self
            .registry
            .expired(unix_now(), self.registration_ttl)
            .into_iter()
            .map(|p| (p, "its pod never appeared in the desired state".to_string()))
            .collect();
        for (pod, why) in dead {
            if self.registry.forget(&pod)?.is_some() {
                tracing::warn!(pod = %pod, reason = %why, "registration dropped");
                self.in_force.remove(&pod);
                let _ = self.enforcer.detach(&pod);
            }
        }
        let retired = std::mem::take(&mut self.retired);
        for (ifindex, pod) in retired {
            if !matches!(self.enforcer.release_if_gone(&pod, ifindex), Ok(true)) {
                self.retired.insert(ifindex, pod);
            }
        }
        let mut unreachable = BTreeSet::new();
        let registered: Vec<Interface> = self.registry.interfaces().values().cloned().collect();
        for iface in registered {
            let why = match self.enforcer.ifindex_of(&iface.host_ifname) {
                Some(i) if i == iface.ifindex => continue,
                Some(i) => format!(
                    "interface {} is now ifindex {i}, not {}",
                    iface.host_ifname, iface.ifindex
                ),
                None => format!("interface {} is gone", iface.host_ifname),
            };
            match self.enforcer.release_if_gone(&iface.pod, iface.ifindex) {
                Ok(true) => {
                    self.registry.forget(&iface.pod)?;
                    self.in_force.remove(&iface.pod);
                    tracing::warn!(pod = %iface.pod, reason = %why, "registration dropped");
                }
                outcome => {
                    // Not attached this pass (that would fail it, or bind a recycled
                    // name), and not removed: its programs may be enforcing elsewhere.
                    tracing::warn!(pod = %iface.pod, reason = %why, error = ?outcome.err(),
                        "registered interface not in this namespace but its links are alive; is the agent in the right network namespace?");
                    self.in_force.remove(&iface.pod);
                    unreachable.insert(iface.pod);
                }
            }
        }
        Ok(unreachable)
    }

    /// Publishes what this node enforces after every pass.
    pub fn with_publisher(mut self, publisher: Option<crate::publish::Publisher>) -> Self {
        self.publisher = publisher;
        self
    }

    /// Writes Kubernetes Events on the objects rejected, after every pass.
    pub fn with_events(mut self, events: Option<crate::kube_events::EventWriter>) -> Self {
        self.events = events;
        self
    }

    /// Sets how long a registration whose pod never appears in the desired state is
    /// kept (default [`DEFAULT_REGISTRATION_TTL`]).
    pub fn with_registration_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.registration_ttl = ttl;
        self
    }

    /// See [`crate::source::Source::set_waker`].
    pub fn set_source_waker(&mut self, wake: crate::source::Waker) {
        self.source.set_waker(wake);
    }

    /// Whether the source reports a change since the last load.
    pub fn source_changed(&mut self) -> bool {
        self.source.changed()
    }

    /// Programs only the pods of `node` (their `spec.nodeName`); every other pod is kept
    /// as a peer only. Without it every pod of the desired state gets tables, which is
    /// right for the lab and a directory of one node's manifests.
    pub fn with_local_node(mut self, node: Option<String>) -> Self {
        self.local_node = node;
        self
    }

    /// Persists the generation at `path` and continues from the value stored there.
    pub fn with_generation_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        let path = path.into();
        self.generation = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        self.generation_file = Some(path);
        self
    }

    /// The source's watches, with what the last successful pass put in force.
    pub fn watches(&self) -> Vec<palisade_api::WatchStatus> {
        let mut w = self.source.watches();
        for s in &mut w {
            s.resource_version_in_force = self.rv_in_force.get(&s.kind).copied();
        }
        w
    }

    /// The generation of the last successful pass.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records a CNI registration (the caller then reconciles and checks
    /// [`Self::in_force`]). Refused when another registration owns the interface.
    pub fn register(&mut self, iface: Interface) -> Result<(), RegistryError> {
        if !self.knows_pod(&iface.pod) {
            // CNI ADD may come before the watch delivers the Pod: read it now, so the
            // next pass (the one this ADD waits for) enforces its policy.
            match self.source.fetch_pod(&iface.pod) {
                Ok(found) => {
                    tracing::debug!(pod = %iface.pod, found, "pod read directly for its registration")
                }
                Err(e) => {
                    tracing::warn!(pod = %iface.pod, error = %chain(&e), retryable = e.retryable(), "could not read the pod directly; waiting for the watch")
                }
            }
        }
        let iface = Interface {
            registered_at: unix_now(),
            seen: self.knows_pod(&iface.pod),
            ..iface
        };
        let replaced = self
            .registry
            .get(&iface.pod)
            .map(|old| old.ifindex)
            .filter(|&old| old != iface.ifindex);
        let pod = iface.pod.clone();
        self.registry.insert(iface)?;
        if let Some(old) = replaced {
            self.retired.insert(old, pod);
        }
        Ok(())
    }

    /// The fast path of a CNI registration: when the pod is already compiled with these
    /// addresses, its tables are already in the kernel; attaching writes its endpoint
    /// entry and it is in force. Returns the
    /// generation, or `None` when a full pass is needed.
    pub fn register_fast(&mut self, iface: &Interface) -> Result<Option<u64>, EnforcerError> {
        // Whether the source changed since is not checked (a stat of every manifest):
        // the generation reported is the one really in the kernel, and the next pass
        // (at most `server::SOURCE_POLL` away) applies anything newer, as for any change.
        // After a failed pass the compiled state may be ahead of the kernel.
        if self.passes == 0 || self.needs_full {
            return Ok(None);
        }
        let Some(entry) = self.compiled().endpoints.get(&iface.pod) else {
            return Ok(None);
        };
        if !iface.ips.is_empty() && entry.ips != iface.ips {
            return Ok(None);
        }
        self.enforcer.attach(&iface.pod, &iface.host_ifname)?;
        self.in_force.insert(iface.pod.clone(), self.generation);
        Ok(Some(self.generation))
    }

    /// Forgets a pod's interface and detaches from it, only if `container_id` (never
    /// empty) is the sandbox that registered it and `host_ifname` (when given) is the
    /// interface it registered; anything else is an error and changes nothing.
    pub fn unregister(
        &mut self,
        pod: &str,
        container_id: &str,
        host_ifname: &str,
    ) -> Result<(), RegistryError> {
        let iface = self.registry.remove(pod, container_id, host_ifname)?;
        self.in_force.remove(pod);
        // The veth is usually gone already with the sandbox; that is fine.
        let _ = self.enforcer.detach(&iface.pod);
        Ok(())
    }

    /// Whether the kernel runs our programs first on the registered interface and has
    /// its endpoint entry (`None` when that cannot be queried). Recorded generations
    /// say what was written; this says what the kernel does now.
    pub fn enforced(&mut self, iface: &Interface) -> Option<bool> {
        self.enforcer
            .attachment(iface.ifindex)
            .ok()
            .map(|a| a.problems(&iface.host_ifname).is_empty())
    }

    /// CNI CHECK: the registration is this sandbox's (same container id, and the same
    /// interface when named), its policy is in force, and the kernel runs our programs
    /// on its interface now. Returns the generation in force. When the attachment
    /// cannot be queried (kernels without TCX) only the first two are checked.
    pub fn check(
        &mut self,
        pod: &str,
        container_id: &str,
        host_ifname: &str,
    ) -> anyhow::Result<u64> {
        let iface = self.registry.owned(pod, container_id, host_ifname)?.clone();
        let generation = self
            .in_force(pod)
            .ok_or_else(|| anyhow::anyhow!("policy not in force"))?;
        if let Ok(a) = self.enforcer.attachment(iface.ifindex) {
            let problems = a.problems(&iface.host_ifname);
            if !problems.is_empty() {
                anyhow::bail!("not enforced: {}", problems.join("; "));
            }
        }
        Ok(generation)
    }

    /// The generation in force for a pod, if programmed.
    pub fn in_force(&self, pod: &str) -> Option<u64> {
        self.in_force.get(pod).copied()
    }

    /// Whether the pod exists in the desired state.
    pub fn knows_pod(&self, pod: &str) -> bool {
        self.snapshot.cluster.pods.contains_key(pod)
    }

    /// The last snapshot loaded.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The compiled state last handed to the kernel.
    pub fn compiled(&self) -> &Compiled {
        static EMPTY: std::sync::OnceLock<Compiled> = std::sync::OnceLock::new();
        match &self.compiler {
            Some(c) => c.compiled(),
            None => EMPTY.get_or_init(Compiled::default),
        }
    }

    /// Registered interfaces.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every pod's generation in force.
    pub fn in_force_all(&self) -> &BTreeMap<String, u64> {
        &self.in_force
    }

    /// Successful passes so far.
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// Stage timings of the last successful pass.
    pub fn last_stages(&self) -> Stages {
        self.last_stages
    }

    /// The last pass's error, if it failed.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_ref().map(|(e, _)| e.as_str())
    }

    /// Whether the last pass failed with an error a retry can fix (`None`: it did not
    /// fail).
    pub fn last_error_retryable(&self) -> Option<bool> {
        self.last_error.as_ref().map(|(_, r)| *r)
    }

    /// The enforcer, for inspection requests.
    pub fn enforcer_mut(&mut self) -> &mut dyn Enforcer {
        self.enforcer.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_a_retry_can_fix_are_retryable() {
        let full = EnforcerError::Write(Box::new(palisade_datapath::Error::Capacity {
            map: "policy",
            needed: 10,
            capacity: 5,
        }));
        assert!(full.retryable(), "a full node may have room later: {full}");
        let gone = EnforcerError::Attach {
            pod: "x/a".into(),
            ifname: "veth1".into(),
            source: Box::new(palisade_datapath::Error::Interface(
                "veth1".into(),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )),
        };
        assert!(!gone.retryable(), "{gone}");
        let listing = PassError::from(SourceError::NotListed {
            waiting: vec!["Pod".into()],
        });
        assert!(listing.retryable());
        let taken = PassError::from(RegistryError::BadPodName { pod: "x".into() });
        assert!(!taken.retryable());
        assert_eq!(
            chain(&gone),
            "attaching to veth1 for pod x/a: interface veth1: entity not found"
        );
    }
}
