//! # palisade-controller: is a policy in force, where, since when, and if not, why
//!
//! `palisade controller` runs as a Deployment of one or more replicas. They elect a
//! leader through a `coordination.k8s.io/v1` Lease ([`lease`]); only the leader writes.
//! It reads the nodes' `NodePolicyStatus` objects (each agent's report of what its
//! kernel enforces) and the desired state (policies, pods, namespaces: the agent's own
//! Kubernetes source, so selection is the evaluator's rule), aggregates them
//! ([`aggregate`], pure) and writes the answer where users look ([`status`]):
//! ClusterNetworkPolicy / AdminNetworkPolicy `status.conditions`, a
//! `NetworkPolicyStatus` per NetworkPolicy, and the `palisade.io/policy-enforced`
//! condition of pods that declare that readiness gate. (Events on rejected policies are
//! the agents': `palisade_agent::kube_events`.)
//!
//! It is not in the enforcement path: if it stops, nothing stops being enforced; only
//! the answers stop being updated.
//!
//! Start reading at [`aggregate`], then [`run`].
#![deny(missing_docs)]

pub mod aggregate;
pub mod lease;
pub mod report;
pub mod run;
pub mod status;
