//! Workload objects (apps/v1 Deployment, StatefulSet, DaemonSet, ReplicaSet; batch/v1
//! Job, CronJob) into [`Workload`]: the pod template's labels and ports, the replica
//! count, the controlling owner. Decoded as strictly as a Pod (an unknown field is an
//! error); the pods they run are made by [`crate::model::workload::simulate_pods`].

use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::error::Problems;
use super::location::Sites;
use super::objects::container_ports;
use super::selector::check_labels;
use super::strict::decode;
use crate::model::service_account_name;
use crate::model::workload::{Owner, Workload, WorkloadKind};

/// The controller an object names in `metadata.ownerReferences` (the entry with
/// `controller: true`), read from the raw object so it works for any kind.
pub(crate) fn controller_of(v: &Value) -> Option<Owner> {
    v.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
        .and_then(|o| {
            Some(Owner {
                kind: o.get("kind")?.as_str()?.to_string(),
                name: o.get("name")?.as_str()?.to_string(),
            })
        })
}

/// `replicas` as a count: the API server refuses a negative one, so do we.
fn count(n: Option<i32>, field: &str, p: &mut Problems) -> u32 {
    match n {
        None => 1,
        Some(n) if n < 0 => {
            p.error(
                field,
                format!("must be greater than or equal to 0, not {n}"),
            );
            0
        }
        Some(n) => n as u32,
    }
}

/// One workload of `kind`.
pub(crate) fn workload(
    v: &Value,
    sites: &Sites,
    kind: WorkloadKind,
    namespace: &str,
    name: &str,
    p: &mut Problems,
) -> Option<Workload> {
    let (template, at, replicas): (core::PodTemplateSpec, &str, Option<u32>) = match kind {
        WorkloadKind::Deployment => {
            let d: apps::Deployment = decode(v, sites, p)?;
            let s = d.spec;
            let r = count(s.replicas, "spec.replicas", p);
            (s.template, "spec.template", Some(r))
        }
        WorkloadKind::StatefulSet => {
            let d: apps::StatefulSet = decode(v, sites, p)?;
            let s = d.spec;
            let r = count(s.replicas, "spec.replicas", p);
            (s.template, "spec.template", Some(r))
        }
        WorkloadKind::ReplicaSet => {
            let d: apps::ReplicaSet = decode(v, sites, p)?;
            let s = d.spec;
            let r = count(s.replicas, "spec.replicas", p);
            (s.template.unwrap_or_default(), "spec.template", Some(r))
        }
        WorkloadKind::DaemonSet => {
            let d: apps::DaemonSet = decode(v, sites, p)?;
            (d.spec.template, "spec.template", None)
        }
        WorkloadKind::Job => {
            let d: batch::Job = decode(v, sites, p)?;
            let s = d.spec.unwrap_or_default();
            let r = count(s.parallelism, "spec.parallelism", p);
            (s.template, "spec.template", Some(r))
        }
        WorkloadKind::CronJob => {
            let d: batch::CronJob = decode(v, sites, p)?;
            let s = d.spec.job_template.spec.unwrap_or_default();
            let r = count(s.parallelism, "spec.jobTemplate.spec.parallelism", p);
            (s.template, "spec.jobTemplate.spec.template", Some(r))
        }
    };
    let meta: ObjectMeta = template.metadata.unwrap_or_default();
    let labels = meta.labels.unwrap_or_default();
    check_labels(&labels, &format!("{at}.metadata.labels"), p);
    let spec = template.spec.unwrap_or_default();
    let ports = container_ports(&spec, &format!("{at}.spec"), p);
    Some(Workload {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        replicas,
        labels,
        ports,
        host_network: spec.host_network.unwrap_or(false),
        service_account: service_account_name(
            spec.service_account_name.as_deref(),
            spec.service_account.as_deref(),
        ),
        owner: controller_of(v),
    })
}

#[cfg(test)]
mod tests {
    use crate::manifest::load;

    fn one(text: &str) -> crate::manifest::Loaded {
        load(&[("app.yaml".to_string(), text.to_string())])
    }

    const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx
        ports: [{name: http, containerPort: 8080}]
";

    #[test]
    fn a_deployment_loads_as_a_workload_with_its_template_and_no_warning() {
        let mut l = one(DEPLOYMENT);
        assert!(l.errors.is_empty(), "{l:?}");
        assert_eq!(
            l.warnings.len(),
            1,
            "skipped, for a reader that does not simulate"
        );
        assert_eq!(l.warnings[0].message, crate::manifest::WORKLOAD_SKIPPED);
        let w = &l.workloads["Deployment shop/web"];
        assert_eq!(w.replicas, Some(3));
        assert_eq!(w.labels["app"], "web");
        assert_eq!(w.ports[0].name.as_deref(), Some("http"));
        assert!(l.cluster.pods.is_empty(), "no pod until simulated");
        let s = l.simulate_pods();
        assert!(l.warnings.is_empty(), "counted now: {:?}", l.warnings);
        assert_eq!(s.workloads[0].pods.len(), 3);
        let p = &l.cluster.pods["shop/web-0"];
        assert_eq!(
            p.resolve_named_port("http", crate::model::Protocol::Tcp),
            Some(8080)
        );
    }

    #[test]
    fn simulated_pods_run_as_the_templates_service_account_or_default() {
        let mut l = one(&DEPLOYMENT.replace(
            "      containers:",
            "      serviceAccountName: shop-web\n      containers:",
        ));
        assert!(l.errors.is_empty(), "{l:?}");
        l.simulate_pods();
        assert_eq!(l.cluster.pods["shop/web-0"].service_account, "shop-web");
        let mut d = one(DEPLOYMENT);
        d.simulate_pods();
        assert_eq!(d.cluster.pods["shop/web-0"].service_account, "default");
    }

    #[test]
    fn an_unknown_field_in_a_workload_template_is_an_error_naming_its_path() {
        let l = one(&DEPLOYMENT.replace("image: nginx", "image: nginx\n        imagePolicy: x"));
        assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
        let e = l.errors[0].to_string();
        assert!(e.contains("Deployment shop/web"), "{e}");
        assert!(e.contains("spec.template.spec.containers[0]"), "{e}");
        assert!(l.workloads.is_empty());
    }

    #[test]
    fn a_negative_replica_count_is_refused() {
        let l = one(&DEPLOYMENT.replace("replicas: 3", "replicas: -1"));
        assert!(
            l.errors.iter().any(|e| e.field() == Some("spec.replicas")),
            "{:?}",
            l.errors
        );
    }

    #[test]
    fn a_kubectl_list_of_a_deployment_its_replicaset_and_pods_counts_each_pod_once() {
        let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
 {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
  "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
           "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web"}]}}}},
 {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-5d8f", "namespace": "shop",
   "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u1", "controller": true}]},
  "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
           "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web"}]}}}},
 {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-5d8f-a", "namespace": "shop", "labels": {"app": "web"},
   "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f", "uid": "u2", "controller": true}]},
  "spec": {"containers": [{"name": "web"}]}, "status": {"podIP": "10.0.0.7"}}
]}"#;
        let mut l = one(text);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let s = l.simulate_pods();
        assert_eq!(s.workloads.len(), 1, "{:?}", s.workloads);
        assert_eq!(s.workloads[0].pods, ["shop/web-5d8f-a"]);
        assert!(!s.workloads[0].simulated);
        assert_eq!(l.cluster.pods.len(), 1, "the input's pod, nothing invented");
        assert!(s.addressed.is_empty(), "it has its own address");
    }

    #[test]
    fn every_workload_kind_loads_with_its_replica_count() {
        let template = "{metadata: {labels: {app: x}}, spec: {containers: [{name: c}]}}";
        let text = format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db}}\nspec: {{replicas: 2, serviceName: db, selector: {{matchLabels: {{app: x}}}}, template: {template}}}\n---\n\
apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: agent}}\nspec: {{selector: {{matchLabels: {{app: x}}}}, template: {template}}}\n---\n\
apiVersion: batch/v1\nkind: Job\nmetadata: {{name: once}}\nspec: {{parallelism: 4, template: {template}}}\n---\n\
apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: nightly}}\nspec: {{schedule: '0 0 * * *', jobTemplate: {{spec: {{template: {template}}}}}}}\n"
        );
        let mut l = one(&text);
        l.simulate_pods();
        assert!(l.errors.is_empty() && l.warnings.is_empty(), "{l:?}");
        let r = |k: &str| l.workloads[k].replicas;
        assert_eq!(r("StatefulSet default/db"), Some(2));
        assert_eq!(r("DaemonSet default/agent"), None);
        assert_eq!(r("Job default/once"), Some(4));
        assert_eq!(r("CronJob default/nightly"), Some(1));
    }
}
