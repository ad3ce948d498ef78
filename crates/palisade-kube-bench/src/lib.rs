//! Benchmarks of Palisade's control plane against the real upstream API server
//! (`palisade_kube_lab::ControlPlane`), not a mock: they print figures and ratios and
//! are run by hand (`palisade bench fanout`, `palisade bench kube-memory`), never as timed tests.

pub mod aws_model;
pub mod fanout;
pub mod memory;
pub mod proxy;

/// The load's policy for `app-{app}`: ingress on its named port `http` from the pods
/// of each app in `peers` (one shape for every benchmark, so their figures compare).
pub(crate) fn app_policy(
    app: usize,
    peers: &[usize],
) -> serde_json::Result<k8s_openapi::api::networking::v1::NetworkPolicy> {
    let from: Vec<_> = peers
        .iter()
        .map(|p| serde_json::json!({"podSelector": {"matchLabels": {"app": format!("app-{p}")}}}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("app-{app}")},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app-{app}")}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": from, "ports": [{"port": "http"}]}],
        },
    }))
}
