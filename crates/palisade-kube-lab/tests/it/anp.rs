//! AdminNetworkPolicy / BaselineAdminNetworkPolicy with rules, written through the real
//! API server with the CRDs the lab installs (v0.1.1), read back and decoded by
//! palisade-policy: what the API server accepts, Palisade accepts.

use palisade_kube_lab::crds;
use palisade_policy::model::ClusterPeer;
use palisade_policy::selector::LabelSelector;

const ANP: &str = "apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata:
  name: rules
spec:
  priority: 10
  subject:
    namespaces:
      matchLabels:
        team: a
  ingress:
  - name: from-monitoring
    action: Allow
    from:
    - namespaces:
        namespaceSelector:
          matchLabels:
            team: monitoring
    - pods:
        namespaces:
          namespaceSelector: {}
        podSelector:
          matchLabels:
            app: scraper
    ports:
    - portNumber:
        protocol: TCP
        port: 8080
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata:
  name: default
spec:
  subject:
    namespaces: {}
  egress:
  - action: Deny
    to:
    - namespaces:
        namespaceSelector: {}
";

#[test]
fn admin_policies_with_rules_accepted_by_the_api_server_are_accepted_by_the_decoder() {
    let Some(cp) = super::start(true) else { return };
    crds::install(&cp).expect("CRDs install");
    cp.kubectl(cp.admin(), &["create", "-f", "-"], Some(ANP))
        .expect("the API server accepts the v0.1.1 peer shape");
    let json = cp
        .kubectl(
            cp.admin(),
            &[
                "get",
                "adminnetworkpolicies,baselineadminnetworkpolicies",
                "-o",
                "json",
            ],
            None,
        )
        .expect("read back");
    let loaded = palisade_policy::manifest::load(&[("api.json".to_string(), json)]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let anp = &loaded.cluster.cluster_policies["AdminNetworkPolicy/rules"];
    assert_eq!(
        anp.ingress[0].peers,
        vec![
            ClusterPeer::Namespaces(LabelSelector::from_labels([("team", "monitoring")])),
            ClusterPeer::Pods {
                namespaces: LabelSelector::everything(),
                pods: LabelSelector::from_labels([("app", "scraper")]),
            },
        ]
    );
    let banp = &loaded.cluster.cluster_policies["BaselineAdminNetworkPolicy/default"];
    assert_eq!(
        banp.egress[0].peers,
        vec![ClusterPeer::Namespaces(LabelSelector::everything())]
    );
}
