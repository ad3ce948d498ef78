//! Prometheus metrics (text exposition), via `prometheus-client`.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::decision_log::LogCounters;
use crate::listener::TransportStats;
use crate::reconcile::CounterSample;

/// Labels of the datapath packet counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    direction: String,
    verdict: String,
    reason: String,
}

/// Label of suppressed decision events and dropped decision records.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

/// Label naming a watched kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// Label of the Kubernetes Event writes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// Label naming a pod.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    pod: String,
}

/// The kernel's decision-event counters (absolute, since the maps were created).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Events written to the ring buffer.
    pub sent: u64,
    /// Events suppressed by a token bucket (the node's or a pod's).
    pub rate_limited: u64,
    /// Events lost because the ring buffer was full.
    pub ring_full: u64,
    /// Of `rate_limited`, those suppressed by each endpoint's own bucket, by host-side
    /// ifindex (0 = interfaces without an endpoint entry).
    pub pod_suppressed: BTreeMap<u32, u64>,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    passes: Counter,
    failed_passes: Counter,
    rejected_objects: Gauge,
    endpoints: Gauge,
    reconcile_seconds: Histogram,
    register_seconds: Histogram,
    packets: Family<PacketLabels, Counter>,
    /// Last absolute value read from the kernel per label set; the kernel counters are
    /// absolute, Prometheus counters are incremented by the difference.
    last: BTreeMap<(String, String, String), u64>,
    events_sent: Counter,
    events_suppressed: Family<CauseLabels, Counter>,
    events_suppressed_by_pod: Family<PodLabels, Counter>,
    /// Last absolute kernel value of each event counter, by metric and label.
    last_events: BTreeMap<(&'static str, String), u64>,
    log: LogCounters,
    api_connections: Gauge,
    api_evicted: Counter,
    api_refused: Counter,
    api_accept_errors: Counter,
    last_transport: TransportStats,
    /// Both API sockets' connections (main, read-only): the series are their sums.
    connections: Vec<crate::listener::Connections>,
    read_errors: Counter,
    watch_errors: Family<KindLabels, Counter>,
    watch_relists: Family<KindLabels, Counter>,
    watch_up: Family<KindLabels, Gauge>,
    kube_events: crate::kube_events::EventCounters,
    /// Last absolute value of each watch counter, by metric and kind.
    last_watch: BTreeMap<(&'static str, String), u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("palisade");
        let passes = Counter::default();
        let failed_passes = Counter::default();
        let rejected_objects = Gauge::default();
        let endpoints = Gauge::default();
        // 100 µs .. ~3 s.
        let reconcile_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let register_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let packets = Family::<PacketLabels, Counter>::default();
        registry.register(
            "reconcile_passes",
            "Successful reconcile passes",
            passes.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconcile passes that failed (kernel state kept)",
            failed_passes.clone(),
        );
        registry.register(
            "rejected_objects",
            "Objects rejected by validation in the last pass",
            rejected_objects.clone(),
        );
        registry.register(
            "endpoints_programmed",
            "Endpoints whose policy is in force",
            endpoints.clone(),
        );
        registry.register(
            "reconcile_seconds",
            "Duration of a reconcile pass",
            reconcile_seconds.clone(),
        );
        registry.register(
            "cni_register_seconds",
            "CNI registration to policy in force",
            register_seconds.clone(),
        );
        registry.register(
            "datapath_packets",
            "Packets by direction, verdict and reason",
            packets.clone(),
        );
        let events_sent = Counter::default();
        registry.register(
            "decision_events_sent",
            "Decision events the datapath wrote to its ring buffer",
            events_sent.clone(),
        );
        let events_suppressed = Family::<CauseLabels, Counter>::default();
        registry.register(
            "decision_events_suppressed",
            "Decision events the datapath did not report: cause rate-limit-node (the node's budget), rate-limit-pod (the pod's budget) or ring-full",
            events_suppressed.clone(),
        );
        let events_suppressed_by_pod = Family::<PodLabels, Counter>::default();
        registry.register(
            "decision_events_suppressed_by_pod",
            "Decision events suppressed by the pod's own budget, by pod (- = interfaces without an endpoint)",
            events_suppressed_by_pod.clone(),
        );
        let log = LogCounters::default();
        registry.register(
            "decision_records_written",
            "Decision records written to the decision log file",
            log.written.clone(),
        );
        let records_dropped = Family::<CauseLabels, Counter>::default();
        // The log's own counters are handles onto these series. One statement each: a
        // `get_or_create` guard held across the next one would deadlock the family.
        let write_failed = records_dropped
            .get_or_create(&CauseLabels {
                cause: "write-failed".into(),
            })
            .clone();
        let oversized = records_dropped
            .get_or_create(&CauseLabels {
                cause: "oversized".into(),
            })
            .clone();
        let log = LogCounters {
            write_failed,
            oversized,
            ..log
        };
        registry.register(
            "decision_records_dropped",
            "Decision records not written to the decision log: cause write-failed or oversized",
            records_dropped.clone(),
        );
        registry.register(
            "decision_log_rotations",
            "Rotations of the decision log file",
            log.rotations.clone(),
        );
        let api_connections = Gauge::default();
        registry.register(
            "api_connections",
            "Open connections on the agent's API sockets (main and read-only)",
            api_connections.clone(),
        );
        let api_evicted = Counter::default();
        registry.register(
            "api_connections_evicted",
            "Idle API connections closed to make room (connection limit or fd limit)",
            api_evicted.clone(),
        );
        let api_refused = Counter::default();
        registry.register(
            "api_connections_refused",
            "API connections refused because every connection was busy",
            api_refused.clone(),
        );
        let api_accept_errors = Counter::default();
        registry.register(
            "api_accept_errors",
            "Failed accepts on the agent's API sockets (EMFILE, ENFILE, ...)",
            api_accept_errors.clone(),
        );
        let read_errors = Counter::default();
        registry.register(
            "datapath_read_errors",
            "Scrapes whose datapath counters could not be read (those series did not move)",
            read_errors.clone(),
        );
        let watch_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "kube_watch_errors",
            "Kubernetes watch errors by kind (each followed by a backoff and a retry)",
            watch_errors.clone(),
        );
        let watch_relists = Family::<KindLabels, Counter>::default();
        registry.register(
            "kube_watch_relists",
            "Kubernetes lists by kind (the first, then one per watch that could not resume)",
            watch_relists.clone(),
        );
        let watch_up = Family::<KindLabels, Gauge>::default();
        registry.register(
            "kube_watch_up",
            "1 when the kind is listed and its watch is not failing, else 0",
            watch_up.clone(),
        );
        let kube_events = Family::<ResultLabels, Counter>::default();
        // Handles onto the series, one statement each (see the decision log's above).
        let written = kube_events
            .get_or_create(&ResultLabels {
                result: "written".into(),
            })
            .clone();
        let exists = kube_events
            .get_or_create(&ResultLabels {
                result: "exists".into(),
            })
            .clone();
        let failed = kube_events
            .get_or_create(&ResultLabels {
                result: "failed".into(),
            })
            .clone();
        registry.register(
            "kube_events",
            "Kubernetes Events on rejected objects: written, exists (409: written by another node or before a restart), failed (logged once a minute)",
            kube_events,
        );
        let pending = Gauge::default();
        registry.register(
            "kube_events_pending",
            "Kubernetes Events due from this node and not written yet (rate limit or backoff)",
            pending.clone(),
        );
        let kube_events = crate::kube_events::EventCounters {
            written,
            exists,
            failed,
            pending,
        };
        Self {
            registry,
            passes,
            failed_passes,
            rejected_objects,
            endpoints,
            reconcile_seconds,
            register_seconds,
            packets,
            last: BTreeMap::new(),
            events_sent,
            events_suppressed,
            events_suppressed_by_pod,
            last_events: BTreeMap::new(),
            log,
            api_connections,
            api_evicted,
            api_refused,
            api_accept_errors,
            last_transport: TransportStats::default(),
            connections: Vec::new(),
            read_errors,
            watch_errors,
            watch_relists,
            watch_up,
            last_watch: BTreeMap::new(),
            kube_events,
        }
    }

    /// Handles onto the Kubernetes Event writer's counters
    /// (for [`crate::kube_events::EventWriter`]).
    pub fn kube_event_counters(&self) -> crate::kube_events::EventCounters {
        self.kube_events.clone()
    }

    /// Reports an API socket's connections too (called once per socket; the series
    /// are summed over them).
    pub fn watch_connections(&mut self, connections: crate::listener::Connections) {
        self.connections.push(connections);
    }

    /// Handles onto the decision log's counters (for [`crate::decision_log::DecisionLog`]).
    pub fn log_counters(&self) -> LogCounters {
        self.log.clone()
    }

    /// Folds in the kernel's event counters; `pod_of` names an ifindex.
    pub fn record_events(&mut self, e: &EventStats, pod_of: impl Fn(u32) -> Option<String>) {
        let mut bump = |metric: &'static str, label: &str, now: u64| -> u64 {
            let prev = self
                .last_events
                .insert((metric, label.to_string()), now)
                .unwrap_or(0);
            now.saturating_sub(prev)
        };
        let sent = bump("sent", "", e.sent);
        let limited = bump("rate_limited", "", e.rate_limited);
        let ring = bump("ring_full", "", e.ring_full);
        let by_pod: Vec<(String, u64)> = e
            .pod_suppressed
            .iter()
            .map(|(ifindex, n)| {
                let name = if *ifindex == 0 {
                    "-".to_string()
                } else {
                    pod_of(*ifindex).unwrap_or_else(|| format!("ifindex {ifindex}"))
                };
                (name, bump("by_pod", &ifindex.to_string(), *n))
            })
            .collect();
        // Deltas, not absolute values: an endpoint that leaves takes its count along.
        let pod: u64 = by_pod.iter().map(|(_, d)| d).sum();
        let node = limited.saturating_sub(pod);
        self.events_sent.inc_by(sent);
        for (cause, d) in [
            ("rate-limit-node", node),
            ("rate-limit-pod", pod),
            ("ring-full", ring),
        ] {
            self.events_suppressed
                .get_or_create(&CauseLabels {
                    cause: cause.into(),
                })
                .inc_by(d);
        }
        for (pod, d) in by_pod {
            if d > 0 {
                self.events_suppressed_by_pod
                    .get_or_create(&PodLabels { pod })
                    .inc_by(d);
            }
        }
    }

    /// Counts datapath reads that failed during a scrape.
    pub fn record_read_errors(&mut self, n: usize) {
        self.read_errors.inc_by(n as u64);
    }

    /// Records the Kubernetes watches' counters (absolute since start) and health.
    pub fn record_watches(&mut self, watches: &[palisade_api::WatchStatus]) {
        for w in watches {
            let labels = KindLabels {
                kind: w.kind.clone(),
            };
            for (name, family, now) in [
                ("errors", &self.watch_errors, w.errors),
                ("relists", &self.watch_relists, w.relists),
            ] {
                let last = self.last_watch.entry((name, w.kind.clone())).or_insert(0);
                family
                    .get_or_create(&labels)
                    .inc_by(now.saturating_sub(*last));
                *last = now;
            }
            self.watch_up
                .get_or_create(&labels)
                .set(i64::from(w.healthy));
        }
    }

    /// Folds in the API transport's counters.
    pub fn record_transport(&mut self, t: TransportStats) {
        let prev = self.last_transport;
        self.api_connections.set(t.open as i64);
        self.api_evicted
            .inc_by(t.evicted.saturating_sub(prev.evicted));
        self.api_refused
            .inc_by(t.refused.saturating_sub(prev.refused));
        self.api_accept_errors
            .inc_by(t.accept_errors.saturating_sub(prev.accept_errors));
        self.last_transport = t;
    }

    /// Records a successful pass.
    pub fn record_pass(&mut self, seconds: f64, endpoints: usize, rejected: usize) {
        self.passes.inc();
        self.reconcile_seconds.observe(seconds);
        self.endpoints.set(endpoints as i64);
        self.rejected_objects.set(rejected as i64);
    }

    /// Records a failed pass.
    pub fn record_failed_pass(&mut self) {
        self.failed_passes.inc();
    }

    /// Records the latency of a CNI registration.
    pub fn record_register(&mut self, seconds: f64) {
        self.register_seconds.observe(seconds);
    }

    /// Folds in the kernel's counters and renders the text exposition.
    pub fn encode(&mut self, counters: &[CounterSample]) -> String {
        for c in counters {
            let key = (c.direction.clone(), c.verdict.clone(), c.reason.clone());
            let prev = self.last.insert(key, c.packets).unwrap_or(0);
            let labels = PacketLabels {
                direction: c.direction.clone(),
                verdict: c.verdict.clone(),
                reason: c.reason.clone(),
            };
            self.packets
                .get_or_create(&labels)
                .inc_by(c.packets.saturating_sub(prev));
        }
        if !self.connections.is_empty() {
            let t = self.connections.iter().map(|c| c.stats()).fold(
                TransportStats::default(),
                |a, b| TransportStats {
                    open: a.open + b.open,
                    evicted: a.evicted + b.evicted,
                    refused: a.refused + b.refused,
                    accept_errors: a.accept_errors + b.accept_errors,
                },
            );
            self.record_transport(t);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.push_str("# encoding failed\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_counters_become_deltas_split_by_cause_and_pod() {
        let mut m = Metrics::new();
        let names = |i: u32| (i == 7).then(|| "default/a".to_string());
        let mut e = EventStats {
            sent: 10,
            rate_limited: 30,
            ring_full: 1,
            pod_suppressed: [(7, 20), (0, 0)].into_iter().collect(),
        };
        m.record_events(&e, names);
        // The endpoint leaves (its count goes with it); the node limit suppresses 5 more.
        e.pod_suppressed.remove(&7);
        e.rate_limited = 35;
        m.record_events(&e, names);
        let text = m.encode(&[]);
        let get = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
                .to_string()
        };
        assert_eq!(get("palisade_decision_events_sent_total"), "10");
        assert_eq!(
            get(r#"palisade_decision_events_suppressed_total{cause="rate-limit-pod"}"#),
            "20"
        );
        assert_eq!(
            get(r#"palisade_decision_events_suppressed_total{cause="rate-limit-node"}"#),
            "15"
        );
        assert_eq!(
            get(r#"palisade_decision_events_suppressed_by_pod_total{pod="default/a"}"#),
            "20"
        );
        assert_eq!(
            get("palisade_decision_records_dropped_total{cause=\"oversized\"}"),
            "0"
        );
    }
}
