//! The object-level difference between two cluster snapshots, as [`Change`]s for the
//! incremental [`super::Compiler`]. Sources that deliver whole snapshots (a directory of
//! manifests, a relist) use this; watch-based sources produce changes directly.

use std::collections::BTreeMap;

use super::Change;
use crate::model::Cluster;

/// Changes that turn `old` into `new`, upserts before removals so that, for example, a
/// policy moved between files is never briefly absent. Services and EndpointSlices
/// are included: Calico `services` rules depend on them.
pub fn changes_between(old: &Cluster, new: &Cluster) -> Vec<Change> {
    let mut out = Vec::new();
    upserts(&old.namespaces, &new.namespaces, &mut out, |v| {
        Change::UpsertNamespace(v.clone())
    });
    upserts(&old.nodes, &new.nodes, &mut out, |v| {
        Change::UpsertNode(v.clone())
    });
    upserts(
        &old.service_accounts,
        &new.service_accounts,
        &mut out,
        |v| Change::UpsertServiceAccount(v.clone()),
    );
    upserts(&old.pods, &new.pods, &mut out, |v| {
        Change::UpsertPod(v.clone())
    });
    upserts(
        &old.network_policies,
        &new.network_policies,
        &mut out,
        |v| Change::UpsertNetworkPolicy(v.clone()),
    );
    upserts(
        &old.cluster_policies,
        &new.cluster_policies,
        &mut out,
        |v| Change::UpsertClusterPolicy(v.clone()),
    );
    upserts(&old.services, &new.services, &mut out, |v| {
        Change::UpsertService(v.clone())
    });
    upserts(&old.endpoint_slices, &new.endpoint_slices, &mut out, |v| {
        Change::UpsertEndpointSlice(v.clone())
    });
    upserts(&old.network_sets, &new.network_sets, &mut out, |v| {
        Change::UpsertNetworkSet(v.clone())
    });
    upserts(&old.calico_policies, &new.calico_policies, &mut out, |v| {
        Change::UpsertCalicoPolicy(v.clone())
    });
    removals(
        &old.calico_policies,
        &new.calico_policies,
        &mut out,
        Change::RemoveCalicoPolicy,
    );
    removals(
        &old.network_sets,
        &new.network_sets,
        &mut out,
        Change::RemoveNetworkSet,
    );
    removals(
        &old.endpoint_slices,
        &new.endpoint_slices,
        &mut out,
        Change::RemoveEndpointSlice,
    );
    removals(
        &old.services,
        &new.services,
        &mut out,
        Change::RemoveService,
    );
    removals(
        &old.cluster_policies,
        &new.cluster_policies,
        &mut out,
        Change::RemoveClusterPolicy,
    );
    removals(
        &old.network_policies,
        &new.network_policies,
        &mut out,
        Change::RemoveNetworkPolicy,
    );
    removals(&old.pods, &new.pods, &mut out, Change::RemovePod);
    removals(
        &old.service_accounts,
        &new.service_accounts,
        &mut out,
        Change::RemoveServiceAccount,
    );
    removals(&old.nodes, &new.nodes, &mut out, Change::RemoveNode);
    removals(
        &old.namespaces,
        &new.namespaces,
        &mut out,
        Change::RemoveNamespace,
    );
    out
}

fn upserts<V: PartialEq>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
    out: &mut Vec<Change>,
    f: impl Fn(&V) -> Change,
) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.push(f(v));
        }
    }
}

fn removals<V>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
    out: &mut Vec<Change>,
    f: impl Fn(String) -> Change,
) {
    for k in old.keys() {
        if !new.contains_key(k) {
            out.push(f(k.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile, Compiler};
    use crate::model::{Namespace, NetworkPolicy, Pod, NAMESPACE_NAME_LABEL};
    use crate::selector::{LabelSelector, Labels};

    fn pod(name: &str, app: &str, ip: &str) -> Pod {
        Pod {
            namespace: "default".into(),
            name: name.into(),
            labels: Labels::from([("app".to_string(), app.to_string())]),
            ports: vec![],
            ips: vec![ip.parse().unwrap()],
            host_network: false,
            node_name: None,
            service_account: "default".into(),
        }
    }

    fn cluster(pods: &[Pod], deny_app: Option<&str>) -> Cluster {
        let mut c = Cluster::default();
        c.namespaces.insert(
            "default".into(),
            Namespace {
                name: "default".into(),
                labels: Labels::from([(NAMESPACE_NAME_LABEL.to_string(), "default".to_string())]),
            },
        );
        for p in pods {
            c.pods.insert(p.key(), p.clone());
        }
        if let Some(app) = deny_app {
            c.network_policies.insert(
                "default/deny".into(),
                NetworkPolicy {
                    namespace: "default".into(),
                    name: "deny".into(),
                    pod_selector: LabelSelector::from_labels([("app", app)]),
                    ingress: Some(vec![]),
                    egress: None,
                },
            );
        }
        c
    }

    #[test]
    fn applying_the_changes_reaches_the_same_verdicts_as_compiling_the_new_cluster() {
        let a = pod("a", "web", "10.0.0.2");
        let b = pod("b", "db", "10.0.0.3");
        let old = cluster(&[a.clone(), b.clone()], Some("web"));
        let mut b2 = b.clone();
        b2.labels.insert("app".into(), "web".into());
        let new = cluster(&[b2, pod("c", "db", "10.0.0.4")], Some("db"));
        let changes = changes_between(&old, &new);
        // a removed, b relabelled, c added, policy changed.
        assert_eq!(changes.len(), 4, "{changes:?}");
        let mut compiler = Compiler::new(old);
        for ch in changes {
            let _ = compiler.apply(ch);
        }
        assert_eq!(compiler.cluster(), &new);
        let want = compile(&new);
        let got = compiler.compiled();
        for pod in ["default/b", "default/c"] {
            let (we, ge) = (&want.endpoints[pod], &got.endpoints[pod]);
            for peer in ["10.0.0.2", "10.0.0.3", "10.0.0.4", "8.8.8.8"] {
                let ip = peer.parse().unwrap();
                let (wi, gi) = (want.lookup_identity(ip), got.lookup_identity(ip));
                for port in [0u16, 80] {
                    assert_eq!(
                        want.lookup(we.ingress, wi, 6, port).action,
                        got.lookup(ge.ingress, gi, 6, port).action,
                        "{pod} from {peer}:{port}"
                    );
                }
            }
        }
        assert!(!got.endpoints.contains_key("default/a"));
    }

    #[test]
    fn equal_snapshots_produce_no_change() {
        let c = cluster(&[pod("a", "web", "10.0.0.2")], Some("web"));
        assert!(changes_between(&c, &c.clone()).is_empty());
    }
}
