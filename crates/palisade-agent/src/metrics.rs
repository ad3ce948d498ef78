//! Prometheus metrics (text exposition), via `prometheus-client`.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::reconcile::CounterSample;

/// Labels of the datapath packet counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    direction: String,
    verdict: String,
    reason: String,
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
        }
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
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.push_str("# encoding failed\n");
        }
        out
    }
}
