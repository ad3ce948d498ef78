//! What the kubelet needs from a Pod object, read once and checked: a bad field or
//! annotation is an error naming the pod and the field, and only that pod fails.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use palisade_lab::sender::{parse_targets, SendTarget};
use palisade_policy::model::{ContainerPort, Protocol};

/// Static addresses for the pod (comma-separated), instead of host-local IPAM. The
/// lab copies manifests' `status.podIPs` here, since the API server drops `status`
/// on create.
pub const IPS_ANNOTATION: &str = "lab.palisade.io/ips";
/// Targets for the pod's sender (see [`palisade_lab::sender`] for the format).
pub const SEND_ANNOTATION: &str = "lab.palisade.io/send";

/// A pod as the kubelet runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPlan {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// Every container's ports (servers answer on each).
    pub ports: Vec<ContainerPort>,
    /// Container names and images, for `status.containerStatuses`.
    pub containers: Vec<(String, String)>,
    /// From [`IPS_ANNOTATION`]; empty for host-local.
    pub static_ips: Vec<IpAddr>,
    /// From [`SEND_ANNOTATION`].
    pub sends: Vec<SendTarget>,
}

impl PodPlan {
    /// `namespace/name`, the identity servers answer with.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A pod the kubelet cannot run as written.
#[derive(Debug, thiserror::Error)]
#[error("pod {pod}: {field}: {problem}")]
pub struct PodSpecError {
    /// `namespace/name`.
    pub pod: String,
    /// The field or annotation.
    pub field: String,
    /// Why.
    pub problem: String,
}

/// Reads a pod. `metadata.uid`, `namespace` and `name` are set on every object the API
/// server returns; a missing one is an error all the same.
pub fn plan(pod: &Pod) -> Result<PodPlan, PodSpecError> {
    let md = &pod.metadata;
    let namespace = md.namespace.clone().unwrap_or_default();
    let name = md.name.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let err = |field: &str, problem: String| PodSpecError {
        pod: key.clone(),
        field: field.to_owned(),
        problem,
    };
    let uid = md
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| err("metadata.uid", "missing".into()))?;
    if namespace.is_empty() || name.is_empty() {
        return Err(err("metadata", "namespace and name are required".into()));
    }
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| err("spec", "missing".into()))?;
    let mut ports = Vec::new();
    let mut containers = Vec::new();
    for (ci, c) in spec.containers.iter().enumerate() {
        containers.push((c.name.clone(), c.image.clone().unwrap_or_default()));
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = || format!("spec.containers[{ci}].ports[{pi}]");
            let port = u16::try_from(p.container_port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    err(
                        &field(),
                        format!("containerPort {} out of range", p.container_port),
                    )
                })?;
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                other => return Err(err(&field(), format!("protocol {other:?}"))),
            };
            let cp = ContainerPort {
                name: p.name.clone(),
                port,
                protocol,
            };
            // Two containers declaring the same port/protocol would make the second
            // server fail to bind; serve it once.
            if !ports
                .iter()
                .any(|q: &ContainerPort| q.port == port && q.protocol == protocol)
            {
                ports.push(cp);
            }
        }
    }
    let annotations = md.annotations.as_ref();
    let annotation = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    let mut static_ips = Vec::new();
    if let Some(v) = annotation(IPS_ANNOTATION) {
        for part in v.split(',').map(str::trim) {
            let ip: IpAddr = part.parse().map_err(|_| {
                err(
                    &format!("metadata.annotations[{IPS_ANNOTATION}]"),
                    format!("{part:?} is not an IP address"),
                )
            })?;
            if static_ips
                .iter()
                .any(|s: &IpAddr| s.is_ipv4() == ip.is_ipv4())
            {
                return Err(err(
                    &format!("metadata.annotations[{IPS_ANNOTATION}]"),
                    format!("more than one address of {ip}'s family"),
                ));
            }
            static_ips.push(ip);
        }
    }
    let sends = match annotation(SEND_ANNOTATION) {
        None => Vec::new(),
        Some(v) => parse_targets(v).map_err(|e| {
            err(
                &format!("metadata.annotations[{SEND_ANNOTATION}]"),
                e.to_string(),
            )
        })?,
    };
    let host_network = spec.host_network.unwrap_or(false);
    if host_network && !static_ips.is_empty() {
        return Err(err(
            &format!("metadata.annotations[{IPS_ANNOTATION}]"),
            "a hostNetwork pod has its node's addresses".into(),
        ));
    }
    Ok(PodPlan {
        uid,
        namespace,
        name,
        host_network,
        ports,
        containers,
        static_ips,
        sends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": "a", "namespace": "x", "uid": "u-1"},
            "spec": {"containers": [
                {"name": "c", "image": "i", "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}]},
                {"name": "d", "ports": [{"containerPort": 80}]}
            ]}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn ports_are_collected_once_and_annotations_parsed() {
        let p = plan(&pod(serde_json::json!({"metadata": {"annotations": {
            IPS_ANNOTATION: "10.244.1.9, fd00::9",
            SEND_ANNOTATION: "udp://10.244.2.5:7000?every=5ms",
        }}})))
        .unwrap();
        assert_eq!(p.key(), "x/a");
        assert_eq!(p.ports.len(), 2, "80/TCP declared twice is served once");
        assert_eq!(p.ports[1].protocol, Protocol::Udp);
        assert_eq!(p.static_ips.len(), 2);
        assert_eq!(p.sends.len(), 1);
        assert_eq!(p.containers[1], ("d".into(), String::new()));
    }

    #[test]
    fn bad_annotations_name_the_pod_and_annotation() {
        for (ann, value, needle) in [
            (IPS_ANNOTATION, "10.244.1.300", "not an IP"),
            (IPS_ANNOTATION, "10.244.1.1,10.244.1.2", "more than one"),
            (SEND_ANNOTATION, "sctp://1.2.3.4:5", "sctp"),
        ] {
            let e = plan(&pod(
                serde_json::json!({"metadata": {"annotations": {ann: value}}}),
            ))
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("x/a") && e.contains(ann) && e.contains(needle),
                "{e}"
            );
        }
        let e = plan(&pod(serde_json::json!({"spec": {"hostNetwork": true},
            "metadata": {"annotations": {IPS_ANNOTATION: "10.0.0.1"}}})))
        .unwrap_err()
        .to_string();
        assert!(e.contains("hostNetwork"), "{e}");
    }
}
