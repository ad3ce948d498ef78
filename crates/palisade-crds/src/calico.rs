//! Calico's `projectcalico.org/v3` policy kinds, served by Palisade as CRDs where Calico
//! is not installed, so a Calico policy is applied with `kubectl apply` unchanged.
//!
//! These types exist only for their schema: the CRDs generated from them
//! ([`calico_crd_template`]) let the API server store and validate the objects as
//! Calico's own API server would (every field of Calico's reference pages is declared, so
//! `kubectl apply`'s strict field validation refuses an unknown one). What a policy
//! *means*, and what Palisade refuses to enforce (a tier other than `default`, `http`,
//! `icmp`...), is decided by `palisade_policy`'s decoder, object by object, as for a
//! manifest file. Field names and shapes follow Calico's reference pages
//! (`reference/resources/networkpolicy`, `globalnetworkpolicy`, `networkset`,
//! `globalnetworkset` on docs.tigera.io); nothing is copied from Calico's CRDs.
//!
//! Where Calico is installed its API server owns `projectcalico.org` (an aggregated
//! API) and these CRDs must not be installed (chart value `calico.serveCRDs: false`);
//! Palisade then reads Calico's storage kinds, `crd.projectcalico.org/v1`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// The API group Calico's API server serves, and these CRDs stand in for.
pub const GROUP: &str = "projectcalico.org";
/// Its version.
pub const VERSION: &str = "v3";
/// The group of Calico's own CRDs (its storage, behind its API server).
pub const STORAGE_GROUP: &str = "crd.projectcalico.org";
/// Their version.
pub const STORAGE_VERSION: &str = "v1";

/// A number or a string (`protocol: 6` or `TCP`, `ports: [80, "8080:8090", http]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A string.
    String(String),
}

impl JsonSchema for IntOrString {
    fn schema_name() -> Cow<'static, str> {
        "IntOrString".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"x-kubernetes-int-or-string": true})
    }
}

/// A rule's `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    /// Allow the traffic; final.
    Allow,
    /// Deny the traffic; final.
    Deny,
    /// Log and go on with the next rule.
    Log,
    /// Skip the rest of the tier.
    Pass,
}

/// A policy's `types`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PolicyType {
    /// The policy applies to the selected endpoints' ingress.
    Ingress,
    /// The policy applies to the selected endpoints' egress.
    Egress,
}

/// `icmp` / `notICMP`: an ICMP type and code.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Icmp {
    /// The ICMP type (0-254).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<i64>,
    /// The ICMP code (0-255; only with `type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
}

/// One HTTP path match: `exact` or `prefix`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HttpPath {
    /// The path, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// A path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// `http`: methods and paths (application layer; Palisade refuses it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HttpMatch {
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<HttpPath>>,
}

/// `serviceAccounts`: service accounts by name and by label selector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceAccountMatch {
    /// Service account names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    /// A selector on service accounts' labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// `services`: a Service, by name and namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceMatch {
    /// The Service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its namespace (in a NetworkPolicy, the policy's by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A rule's `source` or `destination`: every criterion set must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntityRule {
    /// The address is in one of these CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nets: Option<Vec<String>>,
    /// The address is in none of these CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_nets: Option<Vec<String>>,
    /// A selector on endpoints' and network sets' labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// A selector the endpoint must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<String>,
    /// A selector on namespaces' labels: the scope of `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Ports: numbers, `"lo:hi"` ranges and port names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<IntOrString>>,
    /// Ports that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ports: Option<Vec<IntOrString>>,
    /// Service accounts of the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountMatch>,
    /// A Service: its endpoints (and for egress its cluster IPs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<ServiceMatch>,
}

/// A rule's `metadata`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RuleMetadata {
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// What a match does.
    pub action: Action,
    /// The IP protocol: a name (`TCP`, `UDP`, `ICMP`, `ICMPv6`, `SCTP`, `UDPLite`) or a
    /// number 1-255.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<IntOrString>,
    /// A protocol that must not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<IntOrString>,
    /// ICMP type and code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Icmp>,
    /// ICMP type and code that must not match.
    #[serde(default, rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<Icmp>,
    /// 4 or 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<i64>,
    /// The source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EntityRule>,
    /// The destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<EntityRule>,
    /// HTTP match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpMatch>,
    /// Annotations of the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RuleMetadata>,
}

/// A namespaced Calico policy: ordered rules for the selected pods of its namespace.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "NetworkPolicy",
    plural = "networkpolicies",
    namespaced,
    annotation("helm.sh/resource-policy", "keep"),
    doc = "Calico NetworkPolicy (projectcalico.org/v3), served by Palisade where Calico is not installed",
    printcolumn = r#"{"name":"Order","type":"number","jsonPath":".spec.order"}"#,
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.selector"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Lower first; unset after every set order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// The tier (`default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The endpoints the policy applies to (default `all()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// A selector on the service accounts of the endpoints it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
    /// Ingress, Egress (default: from the rules present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<PolicyType>>,
    /// Ingress rules, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<Rule>>,
    /// Performance hints (`AssumeNeededOnEveryNode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_hints: Option<Vec<String>>,
}

/// A cluster-wide Calico policy.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "GlobalNetworkPolicy",
    plural = "globalnetworkpolicies",
    annotation("helm.sh/resource-policy", "keep"),
    doc = "Calico GlobalNetworkPolicy (projectcalico.org/v3), served by Palisade where Calico is not installed",
    printcolumn = r#"{"name":"Order","type":"number","jsonPath":".spec.order"}"#,
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.selector"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkPolicySpec {
    /// Lower first; unset after every set order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// The tier (`default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The endpoints the policy applies to (default `all()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// A selector on the namespaces of the endpoints it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// A selector on the service accounts of the endpoints it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
    /// Ingress, Egress (default: from the rules present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<PolicyType>>,
    /// Ingress rules, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<Rule>>,
    /// Host endpoints: untracked policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_not_track: Option<bool>,
    /// Host endpoints: policy before DNAT.
    #[serde(default, rename = "preDNAT", skip_serializing_if = "Option::is_none")]
    pub pre_dnat: Option<bool>,
    /// Host endpoints: forwarded traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_on_forward: Option<bool>,
    /// Performance hints (`AssumeNeededOnEveryNode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_hints: Option<Vec<String>>,
}

/// Labelled CIDRs of one namespace, matched by rule selectors like endpoints.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "NetworkSet",
    plural = "networksets",
    namespaced,
    annotation("helm.sh/resource-policy", "keep"),
    doc = "Calico NetworkSet (projectcalico.org/v3), served by Palisade where Calico is not installed"
)]
pub struct NetworkSetSpec {
    /// CIDRs (a bare address is a host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nets: Option<Vec<String>>,
}

/// Labelled CIDRs for the whole cluster.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "projectcalico.org",
    version = "v3",
    kind = "GlobalNetworkSet",
    plural = "globalnetworksets",
    annotation("helm.sh/resource-policy", "keep"),
    doc = "Calico GlobalNetworkSet (projectcalico.org/v3), served by Palisade where Calico is not installed"
)]
pub struct GlobalNetworkSetSpec {
    /// CIDRs (a bare address is a host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nets: Option<Vec<String>>,
}

/// The chart value that installs these CRDs.
pub const CHART_VALUE: &str = "calico.serveCRDs";

/// The four CRDs as one multi-document YAML stream, for `kubectl apply -f -` (the
/// chart's template is this, behind its value).
pub fn calico_crds_yaml() -> String {
    let crds = [
        NetworkPolicy::crd(),
        GlobalNetworkPolicy::crd(),
        NetworkSet::crd(),
        GlobalNetworkSet::crd(),
    ];
    let mut out = String::new();
    for crd in &crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(crd).expect("a CRD serialises"));
    }
    out
}

/// Tests only: the four kinds as `crd.projectcalico.org/v1`, the group of Calico's own
/// CRDs, with these schemas. It stands in for an installed Calico (whose CRD files are
/// not copied here) where a test needs that group served: RBAC checks by discovery, the
/// agent switching to Calico's storage. Never installed by the chart.
pub fn storage_stand_in_yaml() -> String {
    let crds = [
        NetworkPolicy::crd(),
        GlobalNetworkPolicy::crd(),
        NetworkSet::crd(),
        GlobalNetworkSet::crd(),
    ];
    let mut out = String::new();
    for mut crd in crds {
        crd.spec.group = STORAGE_GROUP.to_string();
        crd.metadata.name = Some(format!("{}.{STORAGE_GROUP}", crd.spec.names.plural));
        crd.metadata.annotations = None;
        for v in &mut crd.spec.versions {
            v.name = STORAGE_VERSION.to_string();
        }
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).expect("a CRD serialises"));
    }
    out
}

/// The names (`PLURAL.GROUP`) of the four CRDs.
pub const CRD_NAMES: [&str; 4] = [
    "networkpolicies.projectcalico.org",
    "globalnetworkpolicies.projectcalico.org",
    "networksets.projectcalico.org",
    "globalnetworksets.projectcalico.org",
];

/// The chart template (`templates/calico-crds.yaml`) holding the four CRDs, rendered
/// only while `calico.serveCRDs` is true (a template, not `crds/`, because Helm installs
/// `crds/` unconditionally). Kept on `helm uninstall` (`helm.sh/resource-policy: keep`),
/// as Helm keeps `crds/`: deleting a CRD deletes every policy of its kind.
pub fn calico_crd_template() -> (String, String) {
    let mut out = String::from(
        "# Generated from crates/palisade-crds (cargo run -p palisade-crds --bin palisade-crds-gen); do not edit.\n\
         # Calico's projectcalico.org/v3 policy kinds, served by Palisade where Calico is not installed\n\
         # (docs/install.md, \"Calico policies\").\n\
         {{- if .Values.calico.serveCRDs }}\n",
    );
    out.push_str(&calico_crds_yaml());
    out.push_str("{{- end }}\n");
    ("calico-crds.yaml".to_string(), out)
}
