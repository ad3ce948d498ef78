//! Requests and replies as they travel on the socket.

use std::net::IpAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where the agent listens unless told otherwise (`agentSocket`, `--socket`).
pub const DEFAULT_AGENT_SOCKET: &str = "/run/palisade/agent.sock";

/// File name of the agent's read-only socket, in the directory of its main socket
/// unless `--read-only-socket` says otherwise. It answers every request that does not
/// change the agent's state (see [`Request::mutates`]), and may be opened to a group.
pub const READ_ONLY_SOCKET_NAME: &str = "palisade-ro.sock";

/// Where the read-only socket is by default for an agent whose main socket is `main`:
/// [`READ_ONLY_SOCKET_NAME`] beside it.
pub fn read_only_socket_beside(main: &std::path::Path) -> std::path::PathBuf {
    match main.parent() {
        Some(dir) => dir.join(READ_ONLY_SOCKET_NAME),
        None => std::path::PathBuf::from(READ_ONLY_SOCKET_NAME),
    }
}

/// Everything the agent needs to enforce policy on one pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEndpoint {
    /// The pod's Kubernetes namespace (`K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// The pod's name (`K8S_POD_NAME`).
    pub pod: String,
    /// `CNI_CONTAINERID`: the sandbox id; unique per sandbox, reused on `DEL`.
    pub container_id: String,
    /// `CNI_NETNS`: path of the pod's network namespace.
    pub netns: String,
    /// Name of the host-side veth in the node's namespace, where the agent attaches
    /// its programs. Empty on `DEL` when no `prevResult` was given.
    pub host_ifname: String,
    /// The pod's addresses, without prefix length, at most one per family in practice.
    pub ips: Vec<IpAddr>,
}

/// A verdict as records and filters name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The packet passed.
    Allow,
    /// The packet was dropped.
    Deny,
}

impl Verdict {
    /// The wire name (`allow`, `deny`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

/// Every request the agent understands, as it is decoded on the agent's side. Clients
/// send one of the [`Call`] types, which turn into this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// From the CNI plugin on ADD: enforce on this interface, answer once in force.
    Register(PodEndpoint),
    /// From the CNI plugin on DEL. Idempotent on the agent's side.
    Unregister(PodEndpoint),
    /// From the CNI plugin on CHECK: is this pod's policy in force?
    Check(PodEndpoint),
    /// Reload the desired state now and answer once it is in force.
    Sync {
        /// Rebuild the compiled state and resynchronise the whole datapath (what the
        /// agent does every 30 s and after a failed pass), instead of applying only
        /// what changed.
        #[serde(default)]
        full: bool,
    },
    /// Agent status: endpoints and the generation in force, errors, counters.
    Status,
    /// One endpoint in detail.
    Endpoint {
        /// `namespace/name`.
        pod: String,
    },
    /// Decision records: recent ones, then live ones if `follow`.
    Flows {
        /// Keep streaming.
        #[serde(default)]
        follow: bool,
        /// Only this pod (`namespace/name`).
        #[serde(default)]
        pod: Option<String>,
        /// Only this verdict.
        #[serde(default)]
        verdict: Option<Verdict>,
    },
    /// Prometheus text exposition.
    Metrics,
}

impl Request {
    /// Whether the request changes the agent's state (its registrations, or what it
    /// has put in force), so it is served only on the root-only main socket and refused
    /// on the read-only one. Exhaustive on purpose: a new verb must be classified here.
    pub fn mutates(&self) -> bool {
        match self {
            Request::Register(_) | Request::Unregister(_) | Request::Sync { .. } => true,
            Request::Check(_)
            | Request::Status
            | Request::Endpoint { .. }
            | Request::Flows { .. }
            | Request::Metrics => false,
        }
    }

    /// The request's wire name (`op`), for messages.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Register(_) => "register",
            Request::Unregister(_) => "unregister",
            Request::Check(_) => "check",
            Request::Sync { .. } => "sync",
            Request::Status => "status",
            Request::Endpoint { .. } => "endpoint",
            Request::Flows { .. } => "flows",
            Request::Metrics => "metrics",
        }
    }

    /// The endpoint a CNI request is about.
    pub fn endpoint(&self) -> Option<&PodEndpoint> {
        match self {
            Request::Register(e) | Request::Unregister(e) | Request::Check(e) => Some(e),
            _ => None,
        }
    }
}

/// Decodes one request line as the agent receives it (surrounding whitespace, the
/// newline included, ignored). The agent's only decoder of client bytes, kept here and
/// pure so the protocol can be fuzzed without a socket.
pub fn decode_request(line: &str) -> Result<Request, serde_json::Error> {
    serde_json::from_str(line.trim())
}

/// A request with its own reply type.
pub trait Call {
    /// What a successful reply decodes into (the whole reply line, `ok` and `error`
    /// having been checked).
    type Reply: DeserializeOwned + Serialize;
    /// The request as it goes on the wire.
    fn request(&self) -> Request;
}

/// `register` (CNI ADD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register(pub PodEndpoint);
/// `unregister` (CNI DEL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unregister(pub PodEndpoint);
/// `check` (CNI CHECK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check(pub PodEndpoint);
/// `sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sync {
    /// See [`Request::Sync`].
    pub full: bool,
}
/// `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status;
/// `metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metrics;
/// `endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// `namespace/name`.
    pub pod: String,
}

/// What `endpoint` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointReply {
    /// The endpoint view.
    pub data: crate::endpoint::EndpointView,
}

/// A pod's policy in force, as `register` and `check` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InForce {
    /// The agent's policy generation the answer reflects.
    pub generation: u64,
    /// Whether the endpoint's policy is attached and current in the kernel.
    pub in_force: bool,
    /// How a registration was put in force, when the agent says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Registration>,
}

impl InForce {
    /// In force at `generation`.
    pub fn at(generation: u64) -> Self {
        InForce {
            generation,
            in_force: true,
            data: None,
        }
    }
}

/// How a registration was put in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The pod was compiled already: only its interface was attached and its
    /// endpoint entry written, without a pass.
    pub fast_path: bool,
}

/// A reply that carries nothing but success (`unregister`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Done {}

/// Seconds spent in each stage of a pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stages {
    /// Reading the source (0 when the snapshot was reused).
    pub load: f64,
    /// Compiling.
    pub compile: f64,
    /// Attaching programs to interfaces.
    pub attach: f64,
    /// Writing maps.
    pub sync: f64,
}

/// What `sync` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncReply {
    /// The generation now in force.
    pub generation: u64,
    /// Always true on success: the desired state is in force.
    pub in_force: bool,
    /// Objects rejected, warnings and timings.
    pub data: SyncData,
}

/// The payload of [`SyncReply`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SyncData {
    /// Objects rejected (each names the file, object and field); the rest is enforced.
    pub errors: Vec<String>,
    /// Warnings worth an operator's attention.
    pub warnings: Vec<String>,
    /// Where the pass's time went.
    pub stages: Stages,
}

/// What `metrics` answers: the Prometheus text exposition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsReply {
    /// The exposition text.
    pub data: String,
}

/// What `status` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The status.
    pub data: StatusData,
}

/// The agent's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusData {
    /// Passes run since start.
    pub passes: u64,
    /// The generation of the last successful pass.
    pub generation: u64,
    /// Where the last pass's time went.
    pub last_pass_stages: Stages,
    /// Why the last pass failed, if it did.
    pub last_error: Option<String>,
    /// Objects rejected.
    pub errors: Vec<String>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// Registered endpoints by pod (`namespace/name`).
    pub endpoints: std::collections::BTreeMap<String, EndpointStatus>,
    /// The datapath's state (pin root, event settings, fill levels).
    pub datapath: DatapathStatus,
    /// Present when the answer is what the agent published after its last pass rather
    /// than a fresh reading (a pass was running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Published>,
    /// With `--source kubernetes`: one entry per watched kind. A client that wrote an
    /// object of kind K at resourceVersion R knows this node enforces it (or has
    /// rejected it, see `errors`) once K's `resource_version_in_force >= R`: the pass
    /// of `generation` started after the watch had seen R. (Only K: a kind nobody
    /// wrote to after R does not advance, as watch bookmarks are not surfaced.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watches: Vec<WatchStatus>,
}

/// One watched kind of the Kubernetes source, in [`StatusData`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WatchStatus {
    /// The Kubernetes kind (`Pod`, `NetworkPolicy`, ...).
    pub kind: String,
    /// Listed at least once, and the watch is not failing now.
    pub healthy: bool,
    /// Listed at least once (or not served: a CRD not installed counts as empty).
    pub synced: bool,
    /// The kind's API is not served (CRD not installed); watched until it appears.
    pub not_served: bool,
    /// The highest object resourceVersion the watch has delivered.
    pub resource_version: Option<u64>,
    /// The highest resourceVersion delivered before the last successful pass began:
    /// everything up to it is in force at `StatusData::generation`.
    pub resource_version_in_force: Option<u64>,
    /// Watch errors since start (each followed by a backoff and a retry).
    pub errors: u64,
    /// Retries started because the agent's probe saw the API server come back, before
    /// the watch's backoff ran out.
    #[serde(default)]
    pub retries_on_recovery: u64,
    /// Lists since start (the first, then one per watch that could not resume).
    pub relists: u64,
    /// The last watch error, if any.
    pub last_error: Option<String>,
}

/// The datapath part of [`StatusData`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DatapathStatus {
    /// The event settings in force in the kernel (`None`: not read, see `unread`).
    pub events: Option<EventSettings>,
    /// Whether established flows are re-judged when their verdict's inputs change
    /// (`None`: not read).
    pub revoke_established: Option<bool>,
    /// The policy epoch the loader bumps after every batch of writes (`None`: not read).
    pub policy_epoch: Option<u64>,
    /// The bpffs directory holding the pins.
    pub pin_root: String,
    /// Whether this run adopted pins of an earlier one.
    pub adopted_pins: bool,
    /// Endpoint entries in the kernel.
    pub endpoints_in_kernel: usize,
    /// Policy entries in the kernel.
    pub policy_entries: usize,
    /// What could not be read from the kernel, and why (so a `None` above is explained,
    /// never silent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<String>,
}

/// Decision-event settings as the kernel holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventSettings {
    /// 0 off, 1 denies, 2 all.
    pub log_mode: u32,
    /// With log mode all: 1 in N allowed new flows.
    pub sample_allow: u32,
    /// CPUs the per-CPU budgets are split over.
    pub cpus: usize,
    /// Node budget per CPU.
    pub events_per_sec_per_cpu: u32,
    /// Node burst per CPU.
    pub events_burst_per_cpu: u32,
    /// Per-pod budget per CPU.
    pub pod_events_per_sec_per_cpu: u32,
    /// Raw config flags.
    pub flags: u32,
}

/// One registered endpoint in [`StatusData`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// Host-side interface.
    pub interface: String,
    /// Its index.
    pub ifindex: u32,
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
    /// The generation in force for this pod, if any.
    pub generation_in_force: Option<u64>,
    /// Whether the kernel runs our programs on the interface (`None`: could not tell).
    pub enforced: Option<bool>,
}

/// Why and how old a published answer is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Why the answer is not fresh.
    pub reason: String,
    /// Its age in milliseconds.
    pub age_ms: Option<u64>,
}

impl Call for Register {
    type Reply = InForce;
    fn request(&self) -> Request {
        Request::Register(self.0.clone())
    }
}
impl Call for Unregister {
    type Reply = Done;
    fn request(&self) -> Request {
        Request::Unregister(self.0.clone())
    }
}
impl Call for Check {
    type Reply = InForce;
    fn request(&self) -> Request {
        Request::Check(self.0.clone())
    }
}
impl Call for Sync {
    type Reply = SyncReply;
    fn request(&self) -> Request {
        Request::Sync { full: self.full }
    }
}
impl Call for Status {
    type Reply = StatusReply;
    fn request(&self) -> Request {
        Request::Status
    }
}
impl Call for Endpoint {
    type Reply = EndpointReply;
    fn request(&self) -> Request {
        Request::Endpoint {
            pod: self.pod.clone(),
        }
    }
}
impl Call for Metrics {
    type Reply = MetricsReply;
    fn request(&self) -> Request {
        Request::Metrics
    }
}

/// The envelope every reply line has: `{"ok":true, ...}` or `{"ok":false,"error":"..."}`.
/// The agent builds replies with it; clients check it before decoding the typed reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The error, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When not ok: whether asking again later, unchanged, can succeed (the agent is
    /// still listing the API server, a kernel write failed, the node's maps are full),
    /// as opposed to a request that must change. The CNI plugin answers "try again
    /// later" (code 11) for these. Absent means false (agents before this field).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
    /// For register, check and sync: the generation now in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// For register, check and sync: whether the desired state is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_force: Option<bool>,
    /// Request-specific payload (one of the typed `data` fields above).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Reply {
    /// The success reply to a request of type `C`, built from the very type clients
    /// decode it into, so the agent cannot answer a request with another's payload.
    pub fn of<C: Call>(reply: &C::Reply) -> Self {
        let mut v = serde_json::to_value(reply).expect("replies always serialize");
        if let Some(o) = v.as_object_mut() {
            o.insert("ok".into(), serde_json::Value::Bool(true));
        }
        serde_json::from_value(v).expect("every typed reply fits the envelope")
    }

    /// A pod or the desired state in force at `generation` (`register`, `check`).
    pub fn in_force(generation: u64) -> Self {
        Self::of::<Register>(&InForce::at(generation))
    }

    /// A failure that only a changed request can fix.
    pub fn error(msg: impl Into<String>) -> Self {
        Self::failure(msg, false)
    }

    /// A failure; `retryable` says whether the same request may succeed later.
    pub fn failure(msg: impl Into<String>, retryable: bool) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            retryable,
            generation: None,
            in_force: None,
            data: serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> PodEndpoint {
        PodEndpoint {
            namespace: "x".into(),
            pod: "a".into(),
            container_id: "c1".into(),
            netns: "/run/netns/p".into(),
            host_ifname: "veth1".into(),
            ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        }
    }

    #[test]
    fn register_request_serializes_with_op_tag_and_flat_fields() {
        let req = Register(endpoint()).request();
        let v: serde_json::Value = serde_json::to_value(&req).unwrap();
        assert_eq!(v["op"], "register");
        assert_eq!(v["host_ifname"], "veth1");
        assert_eq!(v["ips"][1], "fd00::1");
        let back: Request = serde_json::from_value(v).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn every_op_keeps_its_wire_name() {
        let cases = [
            (
                Sync { full: true }.request(),
                r#"{"op":"sync","full":true}"#,
            ),
            (Status.request(), r#"{"op":"status"}"#),
            (Metrics.request(), r#"{"op":"metrics"}"#),
            (
                Request::Flows {
                    follow: false,
                    pod: None,
                    verdict: Some(Verdict::Deny),
                },
                r#"{"op":"flows","follow":false,"pod":null,"verdict":"deny"}"#,
            ),
        ];
        for (req, line) in cases {
            assert_eq!(serde_json::to_string(&req).unwrap(), line);
            assert_eq!(serde_json::from_str::<Request>(line).unwrap(), req);
        }
        // Old clients leave optional fields out.
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"sync"}"#).unwrap(),
            Request::Sync { full: false }
        );
    }

    /// One request of every verb, with whether it changes the agent's state.
    fn every_verb() -> Vec<(Request, bool)> {
        vec![
            (Register(endpoint()).request(), true),
            (Unregister(endpoint()).request(), true),
            (Sync { full: false }.request(), true),
            (Sync { full: true }.request(), true),
            (Check(endpoint()).request(), false),
            (Status.request(), false),
            (Endpoint { pod: "x/a".into() }.request(), false),
            (
                Request::Flows {
                    follow: true,
                    pod: None,
                    verdict: None,
                },
                false,
            ),
            (Metrics.request(), false),
        ]
    }

    #[test]
    fn only_register_unregister_and_sync_mutate() {
        for (req, mutates) in every_verb() {
            assert_eq!(req.mutates(), mutates, "{req:?}");
        }
    }

    #[test]
    fn op_is_the_wire_name() {
        for (req, _) in every_verb() {
            let v = serde_json::to_value(&req).unwrap();
            assert_eq!(v["op"], req.op(), "{req:?}");
        }
    }

    #[test]
    fn the_read_only_socket_is_beside_the_main_one() {
        assert_eq!(
            read_only_socket_beside(std::path::Path::new("/run/palisade/agent.sock")),
            std::path::Path::new("/run/palisade/palisade-ro.sock")
        );
        assert_eq!(
            read_only_socket_beside(std::path::Path::new("agent.sock")),
            std::path::Path::new("palisade-ro.sock")
        );
    }

    #[test]
    fn a_verdict_filter_the_agent_does_not_know_is_refused() {
        let e = serde_json::from_str::<Request>(r#"{"op":"flows","verdict":"allowed"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("allowed"), "{e}");
    }

    #[test]
    fn an_in_force_reply_decodes_from_the_envelope() {
        let line = serde_json::to_string(&Reply::in_force(7)).unwrap();
        assert_eq!(line, r#"{"ok":true,"generation":7,"in_force":true}"#);
        let r: InForce = serde_json::from_str(&line).unwrap();
        assert_eq!(r, InForce::at(7));
    }

    #[test]
    fn every_typed_reply_fits_the_envelope_and_decodes_back() {
        let sync = SyncReply {
            generation: 4,
            in_force: true,
            data: SyncData {
                errors: vec!["a.yaml: x".into()],
                ..Default::default()
            },
        };
        let line = serde_json::to_string(&Reply::of::<Sync>(&sync)).unwrap();
        assert_eq!(
            crate::client::decode::<Sync>(&line).unwrap(),
            sync,
            "{line}"
        );
        let metrics = MetricsReply {
            data: "# x\n".into(),
        };
        let line = serde_json::to_string(&Reply::of::<Metrics>(&metrics)).unwrap();
        assert_eq!(crate::client::decode::<Metrics>(&line).unwrap(), metrics);
        let line = serde_json::to_string(&Reply::of::<Unregister>(&Done {})).unwrap();
        assert_eq!(line, r#"{"ok":true}"#);
        let fast = InForce {
            data: Some(Registration { fast_path: true }),
            ..InForce::at(9)
        };
        let line = serde_json::to_string(&Reply::of::<Register>(&fast)).unwrap();
        assert_eq!(
            line,
            r#"{"ok":true,"generation":9,"in_force":true,"data":{"fast_path":true}}"#
        );
    }
}
