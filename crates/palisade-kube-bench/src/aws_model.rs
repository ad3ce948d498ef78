//! What a cluster-wide /32 design sends each node for the same cluster: the AWS
//! network policy controller's `PolicyEndpoint` objects.
//!
//! Model, from the upstream sources (read through the project's reference library):
//! - `aws/amazon-network-policy-controller-k8s`, `api/v1alpha1/policyendpoint_types.go`:
//!   a PolicyEndpoint holds the policy's resolved peers as `/32` entries (`ingress`,
//!   `egress`: cidr, ports) and the selected pods (`podSelectorEndpoints`: hostIP,
//!   podIP, name, namespace); the controller splits a policy into several objects of
//!   at most `endpointChunkSize` entries (1000 in its Helm chart's values, 200 as the
//!   binary's flag default).
//! - `aws/aws-network-policy-agent`, `controllers/policyendpoints_controller.go`: every
//!   node agent watches every PolicyEndpoint and "relies on [HostIP] to filter local
//!   pods", so each rewritten object goes to every node whole.
//!
//! So when a pod gets its address or goes away, each PolicyEndpoint chunk that lists
//! it (as a selected pod or as a peer) is rewritten once and sent, whole, to every
//! node. This module computes those objects' JSON sizes for the benchmark's cluster
//! without `managedFields` (a lower bound for the AWS figure). A pod update that
//! changes no policy's selection (a label nobody selects on) rewrites nothing there.

use serde_json::{json, Value};

/// The benchmark cluster's shape (shared with [`crate::fanout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Namespaces.
    pub namespaces: usize,
    /// Applications (Deployments) per namespace; one NetworkPolicy each.
    pub apps_per_namespace: usize,
    /// Pods per application.
    pub pods_per_app: usize,
    /// Nodes.
    pub nodes: usize,
}

impl Shape {
    /// Every pod.
    pub fn pods(&self) -> usize {
        self.namespaces * self.apps_per_namespace * self.pods_per_app
    }

    /// The pod with global index `i`: (namespace index, app index in it, replica).
    pub fn locate(&self, i: usize) -> (usize, usize, usize) {
        let per_ns = self.apps_per_namespace * self.pods_per_app;
        (
            i / per_ns,
            (i % per_ns) / self.pods_per_app,
            i % self.pods_per_app,
        )
    }

    /// Global index of (namespace, app, replica).
    pub fn index(&self, ns: usize, app: usize, replica: usize) -> usize {
        (ns * self.apps_per_namespace + app) * self.pods_per_app + replica
    }

    /// The apps whose pods may reach app `a` (its policy's ingress peers): the next two
    /// apps of the namespace.
    pub fn peers_of(&self, a: usize) -> [usize; 2] {
        let n = self.apps_per_namespace;
        [(a + 1) % n, (a + 2) % n]
    }

    /// Pod address for global index `i` (10.128.0.0/10 upward).
    pub fn pod_ip(&self, i: usize) -> String {
        let base: u32 = (10 << 24) | (128 << 16);
        std::net::Ipv4Addr::from(base + 10 + i as u32).to_string()
    }

    /// Node of pod `i`.
    pub fn node_of(&self, i: usize) -> usize {
        i % self.nodes
    }

    /// Node address.
    pub fn node_ip(&self, n: usize) -> String {
        format!("192.168.{}.{}", n / 250, n % 250 + 1)
    }
}

fn pe_object(shape: &Shape, ns: usize, app: usize, chunk: usize, c: usize) -> Value {
    let targets: Vec<usize> = (0..shape.pods_per_app)
        .map(|r| shape.index(ns, app, r))
        .collect();
    let peers: Vec<usize> = shape
        .peers_of(app)
        .iter()
        .flat_map(|&p| (0..shape.pods_per_app).map(move |r| (p, r)))
        .map(|(p, r)| shape.index(ns, p, r))
        .collect();
    let slice = |v: &[usize]| -> Vec<usize> {
        v.iter()
            .copied()
            .skip(chunk * c)
            .take(c)
            .collect::<Vec<_>>()
    };
    let policy = format!("app-{app}");
    json!({
        "type": "MODIFIED",
        "object": {
            "apiVersion": "networking.k8s.aws/v1alpha1",
            "kind": "PolicyEndpoint",
            "metadata": {
                "name": format!("{policy}-x7k2q{chunk}"),
                "generateName": format!("{policy}-"),
                "namespace": format!("ns-{ns}"),
                "uid": "5b0c6a8e-3f7d-4c1e-9a2b-6d4e8f0a1c3b",
                "resourceVersion": "123456789",
                "generation": 42,
                "creationTimestamp": "2026-12-01T00:00:00Z",
                "ownerReferences": [{
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicy",
                    "name": policy,
                    "uid": "0f9e8d7c-6b5a-4938-8271-605f4e3d2c1b",
                    "controller": true,
                    "blockOwnerDeletion": true
                }]
            },
            "spec": {
                "isGlobal": false,
                "priority": 0,
                "podSelector": {"matchLabels": {"app": policy}},
                "policyRef": {"name": policy, "namespace": format!("ns-{ns}")},
                "podIsolation": ["Ingress"],
                "podSelectorEndpoints": slice(&targets).iter().map(|&i| json!({
                    "hostIP": shape.node_ip(shape.node_of(i)),
                    "podIP": shape.pod_ip(i),
                    "name": pod_name(shape, i),
                    "namespace": format!("ns-{ns}"),
                })).collect::<Vec<_>>(),
                "ingress": slice(&peers).iter().map(|&i| json!({
                    "action": "Allow",
                    "cidr": format!("{}/32", shape.pod_ip(i)),
                    "ports": [{"protocol": "TCP", "port": 8080}],
                })).collect::<Vec<_>>(),
            }
        }
    })
}

/// The benchmark's pod name for global index `i` (a Deployment's pod name shape).
pub fn pod_name(shape: &Shape, i: usize) -> String {
    let (_, app, r) = shape.locate(i);
    format!("app-{app}-5d8f7c9b4-{r:05}")
}

/// Bytes every node receives when pod `i` gets its address (or loses it): the
/// watch events of each PolicyEndpoint chunk that lists it, with chunk size `c`.
pub fn bytes_per_address_change(shape: &Shape, i: usize, c: usize) -> usize {
    let (ns, app, r) = shape.locate(i);
    let n = shape.apps_per_namespace;
    let mut total = 0;
    // As a selected pod of its own app's policy.
    total += size(&pe_object(shape, ns, app, r / c, c));
    // As an ingress peer of the policies of the two apps before it.
    for back in [1, 2] {
        let owner = (app + n - back) % n;
        let pos = shape
            .peers_of(owner)
            .iter()
            .position(|&p| p == app)
            .expect("peer by construction");
        let k = pos * shape.pods_per_app + r;
        total += size(&pe_object(shape, ns, owner, k / c, c));
    }
    total
}

fn size(v: &Value) -> usize {
    serde_json::to_vec(v).expect("json").len() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_listed_in_three_policy_endpoints_and_bigger_chunks_cost_more() {
        let shape = Shape {
            namespaces: 2,
            apps_per_namespace: 5,
            pods_per_app: 100,
            nodes: 4,
        };
        let small = bytes_per_address_change(&shape, 7, 50);
        let big = bytes_per_address_change(&shape, 7, 1000);
        // Three objects of at least 50 entries of ~60 bytes each.
        assert!(small > 3 * 50 * 60, "{small}");
        assert!(big > small, "{big} <= {small}");
        // Every index maps back to itself.
        for i in 0..shape.pods() {
            let (ns, a, r) = shape.locate(i);
            assert_eq!(shape.index(ns, a, r), i);
        }
    }
}
