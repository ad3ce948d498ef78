//! Kubernetes Events (`events.k8s.io/v1`) on the policies this agent rejects: type
//! `Warning`, reason [`REASON`], a note naming each field and its error,
//! reportingController [`REPORTING_CONTROLLER`], reportingInstance the node's name.
//!
//! Every node sees the same bad object, and N agents writing N Events would be noise.
//! So, in this order:
//!
//! 1. **One Event per rejected version, cluster-wide.** Its name is derived from the
//!    object's uid, the resourceVersion its generation was first seen at (a status write
//!    is not a new version) and its errors, with a hash that is the same in every
//!    process ([`event_name`]). Every agent that writes it creates *the same* object;
//!    the API server keeps the first and answers the others `409 AlreadyExists`, which
//!    counts as done. A restarted agent creates nothing new either, and a relist or a
//!    resync changes none of the three inputs. kube-runtime's `events::Recorder` is not
//!    used for that reason: it names Events `{name}.{nanoseconds}` and deduplicates only
//!    within one process, so two nodes (or one node restarted) would write two.
//! 2. **At most [`WRITERS`] agents try.** Rendezvous hashing of (uid, node name) over
//!    the Nodes the agent watches (plus itself) picks the same [`WRITERS`] nodes on
//!    every agent without any coordination; the others never call the API for that
//!    object. More than one, so that one node down does not silence the Event.
//!    A rejection that lasts is written again after [`REFRESH`] (the API server deletes
//!    Events after its `--event-ttl`); while the Event exists that is one `409`.
//! 3. **Rate-limited and bounded.** Per agent, a token bucket of [`BURST`] writes refilled
//!    one per [`REFILL`]; after a transient failure (unreachable, throttled, forbidden)
//!    writes back off, doubling from [`REFILL`] up to [`MAX_BACKOFF`]. Nothing is
//!    queued: what is due is recomputed from the rejected objects of the latest pass,
//!    so memory is proportional to the rejected objects the API server holds now (the
//!    source holds them anyway), never to the history of rejections.
//! 4. **Never in the way of enforcement.** The reconciler hands over its snapshot's
//!    rejected objects and returns ([`EventWriter::offer`]); the writes happen on their
//!    own task. An API error is logged (at most once a minute) and counted
//!    (`palisade_kube_events_total{result="failed"}`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use palisade_crds::PolicyRef;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::source::Snapshot;

/// The Event's reason: stable, for `kubectl get events --field-selector reason=...`.
pub const REASON: &str = "PolicyRejected";
/// The Event's action (what failed regarding the object).
pub const ACTION: &str = "Enforce";
/// The Event's `reportingController` (a qualified name, as the API requires).
pub const REPORTING_CONTROLLER: &str = "palisade.io/agent";
/// How many agents (chosen by rendezvous hashing) write each object's Event.
pub const WRITERS: usize = 3;
/// Writes an agent may make at once after a quiet period.
pub const BURST: u32 = 10;
/// One more write is allowed per this interval (sustained: 1 write per second).
pub const REFILL: Duration = Duration::from_secs(1);
/// Longest wait after failed writes (the wait doubles from [`REFILL`] per failure).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a written Event counts as done. After it, the writers create it again if
/// the rejection is still current: the API server deletes Events after its
/// `--event-ttl` (1 h by default), and a rejection that lasts should keep its Event.
/// While the Event still exists, that costs one `409` per writer.
pub const REFRESH: Duration = Duration::from_secs(15 * 60);
/// The API server's limit on `note`, in bytes (`NoteLengthLimit`).
pub const MAX_NOTE_BYTES: usize = 1024;
/// The API server's limit on `reportingInstance`, in bytes.
const MAX_INSTANCE_BYTES: usize = 128;
/// Longest prefix of the object's name kept in the Event's name, in bytes (the name is
/// a DNS subdomain of at most 253; the rest is `.` and 16 hex digits).
const NAME_PREFIX_BYTES: usize = 200;

/// One rejected version of one policy object, as the Event describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Kind, namespace, name.
    pub object: PolicyRef,
    /// `apiVersion` of the object.
    pub api_version: String,
    /// `metadata.uid`.
    pub uid: String,
    /// The resourceVersion this generation was first seen at.
    pub resource_version: String,
    /// Each problem: the field (empty when the decoder could not name one) and why.
    pub problems: Vec<(String, String)>,
    /// An earlier version of the object is in force (the last good one).
    pub kept: bool,
}

/// The rejected policy objects of `snap`, one entry per object (its errors together).
/// Objects whose uid is unknown are left out: an Event must name what it is about.
pub fn rejections(snap: &Snapshot) -> Vec<Rejection> {
    let in_force: HashSet<String> = snap.versions.iter().map(|v| v.policy.key()).collect();
    let mut by_key: BTreeMap<String, Rejection> = BTreeMap::new();
    for e in &snap.rejected {
        let key = e.object.key();
        let Some(r) = snap.rejected_refs.get(&key).filter(|r| !r.uid.is_empty()) else {
            continue;
        };
        by_key
            .entry(key.clone())
            .or_insert_with(|| Rejection {
                object: e.object.clone(),
                api_version: r.api_version.clone(),
                uid: r.uid.clone(),
                resource_version: e.resource_version.clone(),
                problems: Vec::new(),
                kept: in_force.contains(&key),
            })
            .problems
            .push((e.field.clone(), e.message.clone()));
    }
    by_key.into_values().collect()
}

/// FNV-1a (64 bit) of `parts`, each followed by a 0 byte, then a splitmix64 finaliser:
/// the same in every process and release (unlike `std`'s hasher), and well mixed.
fn stable_hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether `me` is among the [`WRITERS`] nodes with the highest rendezvous score for
/// `uid`, of `nodes` and `me` (so an agent that has not seen its own Node yet still
/// counts itself). Stops as soon as [`WRITERS`] nodes outrank it.
pub fn designated(uid: &str, me: &str, nodes: &[String]) -> bool {
    let score = |n: &str| (stable_hash([uid, n]), n.to_string());
    let mine = score(me);
    let mut higher = 0;
    for n in nodes.iter().filter(|n| n.as_str() != me) {
        if score(n) > mine {
            higher += 1;
            if higher >= WRITERS {
                return false;
            }
        }
    }
    true
}

/// The Event's name: the object's name (cut to [`NAME_PREFIX_BYTES`]), then a hash of
/// the uid, the resourceVersion and the problems, so that every agent names the same
/// rejection the same way and a new version or new errors get a new Event.
pub fn event_name(r: &Rejection) -> String {
    let mut parts: Vec<&str> = vec![&r.uid, &r.resource_version];
    for (field, message) in &r.problems {
        parts.push(field);
        parts.push(message);
    }
    let hash = stable_hash(parts);
    let mut prefix: String = r.object.name.to_ascii_lowercase();
    prefix.truncate(cut_at(&prefix, NAME_PREFIX_BYTES));
    let prefix = prefix.trim_end_matches(['.', '-']);
    if prefix.is_empty() {
        format!("palisade.{hash:016x}")
    } else {
        format!("{prefix}.{hash:016x}")
    }
}

/// The largest index `<= max` that is a char boundary of `s`.
fn cut_at(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0)
}

/// The note: every problem (`field: message`), then the version and what stays
/// enforced, within [`MAX_NOTE_BYTES`] (problems cut first, marked `...`).
pub fn note(r: &Rejection) -> String {
    let tail = format!(
        " (resourceVersion {}; {})",
        r.resource_version,
        if r.kept {
            "its last valid version stays in force"
        } else {
            "not enforced until fixed"
        }
    );
    let mut body = r
        .problems
        .iter()
        .map(|(f, m)| {
            if f.is_empty() {
                m.clone()
            } else {
                format!("{f}: {m}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let room = MAX_NOTE_BYTES.saturating_sub(tail.len());
    if body.len() > room {
        body.truncate(cut_at(&body, room.saturating_sub(3)));
        body.push_str("...");
    }
    body + &tail
}

/// The Event for `r`, reported by `node`. Cluster-scoped objects' Events go to the
/// `default` namespace (the API requires it, as for Nodes).
pub fn event(r: &Rejection, node: &str) -> Event {
    let namespace = r
        .object
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let mut instance = node.to_string();
    instance.truncate(cut_at(&instance, MAX_INSTANCE_BYTES));
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(r)),
            namespace: Some(namespace),
            ..Default::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        type_: Some("Warning".to_string()),
        reason: Some(REASON.to_string()),
        action: Some(ACTION.to_string()),
        note: Some(note(r)),
        reporting_controller: Some(REPORTING_CONTROLLER.to_string()),
        reporting_instance: Some(instance),
        regarding: Some(ObjectReference {
            api_version: Some(r.api_version.clone()),
            // A Calico policy is reported as `NetworkPolicy.projectcalico.org`; the
            // reference names its kind, the group is in apiVersion.
            kind: Some(
                r.object
                    .kind
                    .split('.')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
            name: Some(r.object.name.clone()),
            namespace: r.object.namespace.clone(),
            uid: Some(r.uid.clone()),
            resource_version: Some(r.resource_version.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Handles onto the writer's metrics (registered by [`crate::metrics::Metrics`]).
#[derive(Clone, Debug, Default)]
pub struct EventCounters {
    /// Events created.
    pub written: Counter,
    /// Creates answered `409 AlreadyExists`: another node (or this one before a
    /// restart) wrote it. Done.
    pub exists: Counter,
    /// Creates that failed (each logged at most once a minute).
    pub failed: Counter,
    /// Events due from this node and not written yet.
    pub pending: Gauge,
}

/// A token bucket: [`BURST`] tokens, one more per [`REFILL`].
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Bucket {
            tokens: f64::from(BURST),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let gained = now.duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        self.tokens = (self.tokens + gained).min(f64::from(BURST));
        self.at = now;
    }

    /// How long until a token is there (zero: now).
    fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            REFILL.mul_f64(1.0 - self.tokens)
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The rejected objects of the latest pass, and the nodes to choose writers among.
#[derive(Debug, Clone, Default, PartialEq)]
struct Offer {
    rejections: Vec<Rejection>,
    nodes: Vec<String>,
}

/// Hands each pass's rejected objects to the writer task; see the module doc.
#[derive(Clone)]
pub struct EventWriter {
    tx: watch::Sender<Offer>,
}

impl EventWriter {
    /// Starts the writer for `node` on the current tokio runtime.
    pub fn start(client: Client, node: String, counters: EventCounters) -> Self {
        let (tx, rx) = watch::channel(Offer::default());
        tokio::spawn(write_loop(client, node, rx, counters));
        EventWriter { tx }
    }

    /// Offers the rejected objects of `snap` (a pass's snapshot); returns at once, and
    /// costs nothing when nothing is rejected now or before.
    pub fn offer(&self, snap: &Snapshot) {
        let rejections = rejections(snap);
        if rejections.is_empty() && self.tx.borrow().rejections.is_empty() {
            return;
        }
        let nodes = snap.cluster.nodes.keys().cloned().collect();
        self.tx.send_if_modified(|o| {
            if o.rejections == rejections && o.nodes == nodes {
                return false;
            }
            *o = Offer { rejections, nodes };
            true
        });
    }
}

/// How a create ended.
enum Outcome {
    /// Created, or it existed already: done.
    Done,
    /// The API refused this Event for good (invalid, namespace gone): given up.
    Refused,
    /// Worth retrying later (unreachable, throttled, forbidden, server error).
    Retry,
}

async fn create(client: &Client, ev: &Event, counters: &EventCounters) -> (Outcome, String) {
    let ns = ev.metadata.namespace.as_deref().unwrap_or("default");
    let api = Api::<Event>::namespaced(client.clone(), ns);
    match api.create(&PostParams::default(), ev).await {
        Ok(_) => {
            counters.written.inc();
            (Outcome::Done, String::new())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            counters.exists.inc();
            (Outcome::Done, String::new())
        }
        Err(e) => {
            counters.failed.inc();
            let outcome = match &e {
                kube::Error::Api(s) if s.code == 403 || s.code == 429 || s.code >= 500 => {
                    Outcome::Retry
                }
                kube::Error::Api(_) => Outcome::Refused,
                _ => Outcome::Retry,
            };
            (outcome, format!("{e:#}"))
        }
    }
}

async fn write_loop(
    client: Client,
    node: String,
    mut rx: watch::Receiver<Offer>,
    counters: EventCounters,
) {
    // Event names done (written, found existing, or refused for good) and when, kept
    // only while their rejection is still current.
    let mut done: HashMap<String, Instant> = HashMap::new();
    let mut bucket = Bucket::new(Instant::now());
    let mut backoff = REFILL;
    let mut retry_at: Option<Instant> = None;
    let mut failures = crate::ratelog::RateLog::new(Duration::from_secs(60));
    loop {
        let offer = rx.borrow_and_update().clone();
        let due: Vec<(String, &Rejection)> = offer
            .rejections
            .iter()
            .filter(|r| designated(&r.uid, &node, &offer.nodes))
            .map(|r| (event_name(r), r))
            .collect();
        let current: HashSet<&str> = due.iter().map(|(n, _)| n.as_str()).collect();
        done.retain(|n, _| current.contains(n.as_str()));
        let now = Instant::now();
        let pending: Vec<&(String, &Rejection)> = due
            .iter()
            .filter(|(n, _)| {
                done.get(n)
                    .is_none_or(|t| now.duration_since(*t) >= REFRESH)
            })
            .collect();
        counters.pending.set(pending.len() as i64);
        let mut changed = false;
        let mut next = 0;
        while let Some((name, r)) = pending.get(next).copied() {
            let now = Instant::now();
            let wait = bucket
                .wait(now)
                .max(retry_at.map_or(Duration::ZERO, |t| t.saturating_duration_since(now)));
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    r = rx.changed() => {
                        if r.is_err() {
                            return; // the agent is shutting down
                        }
                        changed = true;
                        break;
                    }
                }
            }
            if !bucket.take(Instant::now()) {
                continue;
            }
            let (outcome, error) = create(&client, &event(r, &node), &counters).await;
            match outcome {
                Outcome::Done | Outcome::Refused => {
                    if matches!(outcome, Outcome::Done) {
                        backoff = REFILL;
                        retry_at = None;
                    }
                    done.insert(name.clone(), Instant::now());
                    next += 1;
                    counters.pending.set((pending.len() - next) as i64);
                }
                Outcome::Retry => {
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            if !error.is_empty() {
                if let Some(unlogged) = failures.ready() {
                    tracing::warn!(object = %r.object, error = %error, unlogged,
                        "could not write the Event on a rejected object; enforcement is not affected");
                }
            }
        }
        if changed {
            continue;
        }
        // Wait for the next pass's offer, or for the oldest Event to be due again.
        let refresh = done.values().min().map(|t| *t + REFRESH);
        tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = async {
                match refresh {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a 64 of "u-1\0" "17\0" with the splitmix64 finaliser, computed apart (Python).
    const PINNED: u64 = 0xcd49_697e_ba3c_7d22;

    fn rejection(name: &str, uid: &str, rv: &str) -> Rejection {
        Rejection {
            object: PolicyRef {
                kind: "AdminNetworkPolicy".into(),
                namespace: None,
                name: name.into(),
            },
            api_version: "policy.networking.k8s.io/v1alpha1".into(),
            uid: uid.into(),
            resource_version: rv.into(),
            problems: vec![(
                "spec.ingress[0].ports[0].portRange".into(),
                "start (90) must not be greater than end (80)".into(),
            )],
            kept: false,
        }
    }

    #[test]
    fn the_event_name_is_the_same_everywhere_and_changes_with_the_version_or_the_errors() {
        let a = rejection("bad-range", "u-1", "17");
        // A fixed value: another process, or another release, must name it the same.
        assert_eq!(event_name(&a), event_name(&a.clone()));
        assert!(
            event_name(&a).starts_with("bad-range."),
            "{}",
            event_name(&a)
        );
        assert_eq!(event_name(&a).len(), "bad-range.".len() + 16);
        let newer = rejection("bad-range", "u-1", "18");
        assert_ne!(event_name(&a), event_name(&newer));
        let recreated = rejection("bad-range", "u-2", "17");
        assert_ne!(event_name(&a), event_name(&recreated));
        let mut other_error = a.clone();
        other_error.problems[0].1 = "something else".into();
        assert_ne!(event_name(&a), event_name(&other_error));
        // Whether an old version is kept is not part of the identity (nodes may differ).
        let mut kept = a.clone();
        kept.kept = true;
        assert_eq!(event_name(&a), event_name(&kept));
    }

    /// The hash is part of the Events' names and of who writes them: an agent of the
    /// next release must compute what this one does, or a rolling upgrade writes every
    /// Event again (and nodes of two releases disagree on the writers).
    #[test]
    fn the_stable_hash_does_not_change_between_releases() {
        assert_eq!(stable_hash(["u-1", "17"]), PINNED);
        assert_ne!(stable_hash(["u-1", "17"]), stable_hash(["u-117"]));
    }

    #[test]
    fn a_long_name_still_makes_a_valid_event_name() {
        let long = format!("{}-{}", "a".repeat(199), "b".repeat(50));
        let n = event_name(&rejection(&long, "u", "1"));
        assert!(n.len() <= 253, "{}", n.len());
        // Cut at 200 bytes lands after "a"*199 + "-": the dash is trimmed.
        assert!(n.starts_with(&"a".repeat(199)), "{n}");
        assert!(!n.contains("-."), "{n}");
    }

    #[test]
    fn the_note_names_each_field_and_fits_the_api_limit() {
        let mut r = rejection("x", "u", "5");
        let n = note(&r);
        assert!(
            n.starts_with("spec.ingress[0].ports[0].portRange: start (90)"),
            "{n}"
        );
        assert!(
            n.ends_with("(resourceVersion 5; not enforced until fixed)"),
            "{n}"
        );
        r.kept = true;
        assert!(note(&r).contains("its last valid version stays in force"));
        r.problems = (0..200)
            .map(|i| (format!("spec.egress[{i}].to[0]"), "é".repeat(20)))
            .collect();
        let n = note(&r);
        assert!(n.len() <= MAX_NOTE_BYTES, "{}", n.len());
        assert!(n.contains("...") && n.ends_with("stays in force)"), "{n}");
    }

    #[test]
    fn writers_are_the_same_few_nodes_whoever_computes_it() {
        let nodes: Vec<String> = (0..50).map(|i| format!("node-{i}")).collect();
        for uid in ["u-1", "u-2", "0f6c2d1e-8d1f-4a57-b7b2-1c9d8a7e6f50"] {
            let chosen: Vec<&String> = nodes
                .iter()
                .filter(|n| designated(uid, n, &nodes))
                .collect();
            assert_eq!(chosen.len(), WRITERS, "{uid}: {chosen:?}");
            // An agent whose own Node is not in its list yet still counts itself.
            let me = chosen[0];
            let without_me: Vec<String> = nodes.iter().filter(|n| *n != me).cloned().collect();
            assert!(designated(uid, me, &without_me));
        }
        // Different objects spread over different nodes.
        let firsts: HashSet<String> = (0..40)
            .map(|i| {
                let uid = format!("uid-{i}");
                nodes
                    .iter()
                    .find(|n| designated(&uid, n, &nodes))
                    .unwrap()
                    .clone()
            })
            .collect();
        assert!(firsts.len() > 10, "spread: {firsts:?}");
        // Fewer nodes than writers: all of them write.
        let two = vec!["n1".to_string(), "n2".to_string()];
        assert!(designated("u", "n1", &two) && designated("u", "n2", &two));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        for _ in 0..BURST {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0), "the burst is spent");
        assert_eq!(b.wait(t0), REFILL);
        let half = t0 + REFILL / 2;
        assert!(!b.take(half));
        assert!(b.take(t0 + REFILL));
        assert!(!b.take(t0 + REFILL));
        // A long quiet period refills to the burst, not beyond.
        let later = t0 + REFILL * 1000;
        let n = (0..1000).take_while(|_| b.take(later)).count();
        assert_eq!(n, BURST as usize);
    }

    #[test]
    fn rejections_group_an_objects_errors_and_say_whether_an_old_version_stays() {
        use palisade_crds::{ObjectError, PolicyInForce};
        let object = PolicyRef {
            kind: "NetworkPolicy".into(),
            namespace: Some("team-a".into()),
            name: "web".into(),
        };
        let err = |field: &str| ObjectError {
            object: object.clone(),
            resource_version: "9".into(),
            generation: 2,
            file: "api:NetworkPolicy/team-a/web".into(),
            field: field.into(),
            message: "bad".into(),
        };
        let mut snap = Snapshot {
            rejected: vec![err("spec.a"), err("spec.b")],
            ..Default::default()
        };
        assert!(rejections(&snap).is_empty(), "no uid known: no Event");
        snap.rejected_refs.insert(
            object.key(),
            crate::source::RejectedRef {
                uid: "u".into(),
                api_version: "networking.k8s.io/v1".into(),
            },
        );
        let r = rejections(&snap);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].problems.len(), 2);
        assert!(!r[0].kept);
        snap.versions.push(PolicyInForce {
            policy: object.clone(),
            uid: "u".into(),
            resource_version: "5".into(),
            generation: 1,
        });
        assert!(rejections(&snap)[0].kept);
        let ev = event(&rejections(&snap)[0], "node-1");
        assert_eq!(ev.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(ev.regarding.as_ref().unwrap().uid.as_deref(), Some("u"));
        assert_eq!(ev.reporting_instance.as_deref(), Some("node-1"));
        let cluster_scoped = event(&rejection("x", "u", "1"), "n");
        assert_eq!(
            cluster_scoped.metadata.namespace.as_deref(),
            Some("default")
        );
        assert_eq!(cluster_scoped.regarding.unwrap().namespace, None);
    }
}
