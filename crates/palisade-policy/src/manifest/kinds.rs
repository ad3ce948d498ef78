//! Which kinds Palisade reads, which it refuses, and which it skips.
//!
//! 1. The kinds of [`Kind`] at their one supported `apiVersion` are decoded.
//! 2. A policy kind that Palisade does not enforce is an error, because an answer
//!    computed without it is wrong (a Calico policy that denies the metadata address
//!    must not leave `explain` saying "allowed"):
//!    - a supported policy kind at another version (`networking.k8s.io/v1beta1`);
//!    - policy objects of Calico (`projectcalico.org`, `crd.projectcalico.org`) and
//!      Cilium (`cilium.io`): every `...Policy`, Calico's network sets, tiers and host
//!      endpoints, Cilium's CIDR groups;
//!    - any other kind whose name ends in `Policy`, except the API server's own
//!      admission and pod-security policies, which do not touch traffic.
//! 3. Anything else (ConfigMap, a known non-policy kind at another version) cannot
//!    change a verdict and is skipped with a warning. Workloads (Deployment, ...) never
//!    get here: the loader reads them first (`workloads`), as the pods they run.

use crate::model::{CalicoKind, ClusterPolicyKind};

/// The kinds this module understands, with their scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Namespace,
    Pod,
    Node,
    Service,
    EndpointSlice,
    ServiceAccount,
    NetworkPolicy,
    Cluster(ClusterPolicyKind),
    /// A Calico policy (either apiVersion).
    Calico(CalicoKind),
    /// A Calico NetworkSet (`global: false`) or GlobalNetworkSet.
    NetworkSet {
        global: bool,
    },
}

impl Kind {
    pub(crate) fn namespaced(self) -> bool {
        matches!(
            self,
            Kind::Pod
                | Kind::Service
                | Kind::EndpointSlice
                | Kind::ServiceAccount
                | Kind::NetworkPolicy
                | Kind::Calico(CalicoKind::NetworkPolicy)
                | Kind::NetworkSet { global: false }
        )
    }

    /// The kind's name, as objects are named (`Pod default/x`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Cluster(k) => k.as_str(),
            Kind::Calico(k) => k.as_str(),
            Kind::NetworkSet { global: false } => "NetworkSet.projectcalico.org",
            Kind::NetworkSet { global: true } => "GlobalNetworkSet.projectcalico.org",
        }
    }

    fn is_policy(self) -> bool {
        matches!(
            self,
            Kind::NetworkPolicy | Kind::Cluster(_) | Kind::Calico(_) | Kind::NetworkSet { .. }
        )
    }
}

/// What to do with a document of some `apiVersion` and `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dispatch {
    /// Decode it.
    Decode(Kind),
    /// Refuse it: a policy Palisade does not enforce. The message says why.
    Unenforced(String),
    /// Skip it with a warning on `field` (`kind` or `apiVersion`).
    Skip {
        field: &'static str,
        message: String,
    },
}

const POLICY_V1ALPHA1: &str = "policy.networking.k8s.io/v1alpha1";
const POLICY_V1ALPHA2: &str = "policy.networking.k8s.io/v1alpha2";

/// The supported kind named `kind` and the one `apiVersion` it is read at.
pub(crate) fn supported(kind: &str) -> Option<(&'static str, Kind)> {
    Some(match kind {
        "Namespace" => ("v1", Kind::Namespace),
        "Pod" => ("v1", Kind::Pod),
        "Node" => ("v1", Kind::Node),
        "Service" => ("v1", Kind::Service),
        "EndpointSlice" => ("discovery.k8s.io/v1", Kind::EndpointSlice),
        "ServiceAccount" => ("v1", Kind::ServiceAccount),
        "NetworkPolicy" => ("networking.k8s.io/v1", Kind::NetworkPolicy),
        "ClusterNetworkPolicy" => (
            POLICY_V1ALPHA2,
            Kind::Cluster(ClusterPolicyKind::ClusterNetworkPolicy),
        ),
        "AdminNetworkPolicy" => (
            POLICY_V1ALPHA1,
            Kind::Cluster(ClusterPolicyKind::AdminNetworkPolicy),
        ),
        "BaselineAdminNetworkPolicy" => (
            POLICY_V1ALPHA1,
            Kind::Cluster(ClusterPolicyKind::BaselineAdminNetworkPolicy),
        ),
        _ => return None,
    })
}

/// The Calico API versions read: the aggregated API and the CRD form behind it.
const CALICO_VERSIONS: [&str; 2] = ["projectcalico.org/v3", "crd.projectcalico.org/v1"];

/// A Calico kind Palisade decodes, at either of [`CALICO_VERSIONS`].
fn calico(kind: &str) -> Option<Kind> {
    Some(match kind {
        "NetworkPolicy" => Kind::Calico(CalicoKind::NetworkPolicy),
        "GlobalNetworkPolicy" => Kind::Calico(CalicoKind::GlobalNetworkPolicy),
        "NetworkSet" => Kind::NetworkSet { global: false },
        "GlobalNetworkSet" => Kind::NetworkSet { global: true },
        _ => return None,
    })
}

/// Decides per the numbered rules above.
pub(crate) fn dispatch(api_version: &str, kind: &str) -> Dispatch {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    if matches!(group, "projectcalico.org" | "crd.projectcalico.org") {
        if let Some(k) = calico(kind) {
            if CALICO_VERSIONS.contains(&api_version) {
                return Dispatch::Decode(k);
            }
            return Dispatch::Unenforced(format!(
                "Calico {kind} is read as projectcalico.org/v3 or crd.projectcalico.org/v1, not {api_version}; refusing it rather than answering without it"
            ));
        }
        if kind.starts_with("Staged") {
            return Dispatch::Unenforced(format!(
                "Calico {kind} ({api_version}) is a staged (audit-only) policy, which Palisade does not support; refusing it rather than answering as if it were enforced or absent"
            ));
        }
    }
    if let Some((want, k)) = supported(kind) {
        if api_version == want {
            return Dispatch::Decode(k);
        }
        if k.is_policy() {
            return Dispatch::Unenforced(format!(
                "{kind} is enforced only as {want}, not {api_version}; refusing it rather than answering without it"
            ));
        }
        return Dispatch::Skip {
            field: "apiVersion",
            message: format!("{kind} is supported as {want}, not {api_version}; skipped"),
        };
    }
    let vendor = match group {
        "projectcalico.org" | "crd.projectcalico.org" => Some("Calico"),
        "cilium.io" => Some("Cilium"),
        _ => None,
    };
    let ends_in_policy = kind.ends_with("Policy");
    let vendor_policy = ends_in_policy
        || kind.ends_with("NetworkSet")
        || matches!(kind, "Tier" | "HostEndpoint" | "CiliumCIDRGroup");
    if let Some(vendor) = vendor.filter(|_| vendor_policy) {
        return Dispatch::Unenforced(format!(
            "{vendor} {kind} ({api_version}) is not enforced by Palisade; refusing it rather than answering without it"
        ));
    }
    let harmless_policy = group == "admissionregistration.k8s.io"
        || (group == "policy" && kind == "PodSecurityPolicy");
    if ends_in_policy && !harmless_policy {
        return Dispatch::Unenforced(format!(
            "kind {kind} ({api_version}) is a policy Palisade does not enforce; refusing it rather than answering without it"
        ));
    }
    Dispatch::Skip {
        field: "kind",
        message: format!("kind {kind} ({api_version}) has no effect on network policy; skipped"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_palisade_does_not_enforce_are_refused_and_other_kinds_skipped() {
        for (v, k) in [
            ("projectcalico.org/v3", "StagedGlobalNetworkPolicy"),
            ("crd.projectcalico.org/v1", "StagedNetworkPolicy"),
            ("projectcalico.org/v3", "Tier"),
            ("projectcalico.org/v3", "HostEndpoint"),
            ("projectcalico.org/v1", "NetworkPolicy"),
            ("cilium.io/v2", "CiliumNetworkPolicy"),
            ("networking.k8s.io/v1beta1", "NetworkPolicy"),
            ("policy.networking.k8s.io/v1alpha1", "ClusterNetworkPolicy"),
            ("example.com/v1", "EgressPolicy"),
        ] {
            assert!(
                matches!(dispatch(v, k), Dispatch::Unenforced(_)),
                "{v} {k} must be refused"
            );
        }
        for (v, k) in [
            ("apps/v1", "Deployment"),
            ("v1", "ConfigMap"),
            ("crd.projectcalico.org/v1", "IPPool"),
            (
                "admissionregistration.k8s.io/v1",
                "ValidatingAdmissionPolicy",
            ),
            ("v2", "Pod"),
        ] {
            assert!(
                matches!(dispatch(v, k), Dispatch::Skip { .. }),
                "{v} {k} must be skipped"
            );
        }
        assert_eq!(
            dispatch("networking.k8s.io/v1", "NetworkPolicy"),
            Dispatch::Decode(Kind::NetworkPolicy)
        );
        for v in CALICO_VERSIONS {
            assert_eq!(
                dispatch(v, "NetworkPolicy"),
                Dispatch::Decode(Kind::Calico(CalicoKind::NetworkPolicy))
            );
            assert_eq!(
                dispatch(v, "GlobalNetworkSet"),
                Dispatch::Decode(Kind::NetworkSet { global: true })
            );
        }
    }
}
