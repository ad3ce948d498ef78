//! Traffic to a Service frontend, judged by the backend it is sent to.
//!
//! The datapath translates a frontend to one backend before it judges the packet
//! (docs/semantics.md §10), so a flow to a frontend has one verdict per backend and
//! the flow's verdict is the chosen backend's. SCTP frontends are not translated: the
//! source's side allows them only if it allows every backend (fail closed).

use serde::{Deserialize, Serialize};

use super::{evaluate, Decision, Flow, Peer};
use crate::model::{Cluster, Protocol};
use crate::services::{Backend, ServiceFrontend, ServiceTable};

/// The verdict for one backend of a frontend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendDecision {
    /// The backend.
    pub backend: Backend,
    /// The backend's pod (`namespace/name`), when the address is a pod's.
    pub pod: Option<String>,
    /// The verdict for the flow rewritten to this backend.
    pub decision: Decision,
}

/// A flow to a Service frontend, judged per backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDecision {
    /// The frontend addressed.
    pub frontend: ServiceFrontend,
    /// One verdict per backend, in the frontend's backend order.
    pub backends: Vec<BackendDecision>,
}

impl ServiceDecision {
    /// The verdict for the flow when the datapath chose `backend`; `None` if it is not
    /// one of the frontend's backends (which the datapath never chooses).
    pub fn chosen(&self, backend: &Backend) -> Option<&Decision> {
        self.backends
            .iter()
            .find(|b| b.backend == *backend)
            .map(|b| &b.decision)
    }

    /// Whether some backend is allowed and some is not: the verdict depends on the
    /// backend chosen.
    pub fn partial(&self) -> bool {
        self.backends.iter().any(|b| b.decision.allowed)
            && self.backends.iter().any(|b| !b.decision.allowed)
    }

    /// The source side's verdict for a frontend the datapath does not translate
    /// (SCTP): allowed only if every backend's egress side allows it, and there is at
    /// least one backend. kube-proxy picks the backend later, so any one may be used.
    pub fn untranslated_egress_allowed(&self) -> bool {
        !self.backends.is_empty()
            && self
                .backends
                .iter()
                .all(|b| b.decision.egress.as_ref().is_none_or(|s| s.allowed))
    }
}

/// Judges `flow` as the datapath does if its destination is a Service frontend of
/// `table` (built from `cluster`): `None` when the destination is not a frontend (the
/// flow is then judged by [`evaluate`] as addressed). The destination must be given as
/// an address; the port and protocol must be the frontend's.
pub fn evaluate_service(
    cluster: &Cluster,
    table: &ServiceTable,
    flow: &Flow,
) -> Option<ServiceDecision> {
    let Peer::Ip(addr) = flow.dst else {
        return None;
    };
    let protocol = Protocol::from_number(flow.protocol)?;
    let frontend = table.resolve(addr, flow.port, protocol)?.clone();
    let backends = frontend
        .backends
        .iter()
        .map(|b| {
            let via = Flow::new(flow.src.clone(), Peer::Ip(b.addr), flow.protocol, b.port);
            BackendDecision {
                backend: *b,
                pod: cluster.pod_by_ip(&b.addr).map(|p| p.key()),
                decision: evaluate(cluster, &via),
            }
        })
        .collect();
    Some(ServiceDecision { frontend, backends })
}
