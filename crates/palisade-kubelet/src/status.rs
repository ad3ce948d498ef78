//! Pod status as the kubelet reports it through the `status` subresource (strategic
//! merge: conditions merge by `type`, container statuses by `name`).

use std::net::IpAddr;

use serde_json::{json, Value};

use crate::node::time_now;
use crate::podspec::PodPlan;

fn ip_list(ips: &[IpAddr]) -> Value {
    ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect()
}

/// Orders addresses as the API expects `podIPs`/`hostIPs`: the primary family (the
/// first pod CIDR's) first.
pub fn primary_first(ips: &[IpAddr], primary_v4: bool) -> Vec<IpAddr> {
    let mut v = ips.to_vec();
    v.sort_by_key(|ip| ip.is_ipv4() != primary_v4);
    v
}

fn condition(ty: &str, ok: bool, reason: Option<&str>, message: Option<&str>) -> Value {
    let mut c = json!({"type": ty, "status": if ok { "True" } else { "False" },
        "lastTransitionTime": time_now(), "lastProbeTime": null});
    if let Some(r) = reason {
        c["reason"] = r.into();
    }
    if let Some(m) = message {
        c["message"] = m.into();
    }
    c
}

/// `Running` and `Ready`, with addresses; `started` is when the pod was made.
pub fn running(plan: &PodPlan, pod_ips: &[IpAddr], host_ips: &[IpAddr], started: &Value) -> Value {
    let containers: Vec<Value> = plan
        .containers
        .iter()
        .map(|(name, image)| {
            json!({
                "name": name, "image": image, "imageID": "",
                "containerID": format!("palisade-lab://{}", plan.uid),
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            })
        })
        .collect();
    json!({"status": {
        "phase": "Running",
        "hostIP": host_ips.first().map(|i| i.to_string()),
        "hostIPs": ip_list(host_ips),
        "podIP": pod_ips.first().map(|i| i.to_string()),
        "podIPs": ip_list(pod_ips),
        "startTime": started,
        "conditions": [
            condition("PodReadyToStartContainers", true, None, None),
            condition("Initialized", true, None, None),
            condition("ContainersReady", true, None, None),
            condition("Ready", true, None, None),
            condition("PodScheduled", true, None, None),
        ],
        "containerStatuses": containers,
    }})
}

/// Still `Pending`, not Ready, with `reason` and the error as message (CNI `ADD` or
/// another step failed, or the pod cannot be run as written).
pub fn failed(
    plan_containers: &[(String, String)],
    host_ips: &[IpAddr],
    reason: &str,
    message: &str,
) -> Value {
    let containers: Vec<Value> = plan_containers
        .iter()
        .map(|(name, image)| {
            json!({
                "name": name, "image": image, "imageID": "", "ready": false, "started": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}},
            })
        })
        .collect();
    json!({"status": {
        "phase": "Pending",
        "hostIP": host_ips.first().map(|i| i.to_string()),
        "hostIPs": ip_list(host_ips),
        "conditions": [
            condition("PodReadyToStartContainers", false, Some(reason), Some(message)),
            condition("ContainersReady", false, Some(reason), Some(message)),
            condition("Ready", false, Some(reason), Some(message)),
        ],
        "containerStatuses": containers,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_family_goes_first() {
        let ips: Vec<IpAddr> = vec!["fd00::1".parse().unwrap(), "10.0.0.1".parse().unwrap()];
        assert!(primary_first(&ips, true)[0].is_ipv4());
        assert!(primary_first(&ips, false)[0].is_ipv6());
    }
}
