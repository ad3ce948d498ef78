//! The node agent's registration protocol.
//!
//! Transport: a unix stream socket (default [`DEFAULT_AGENT_SOCKET`]). The client
//! connects, writes one [`Request`] as a single JSON line (`\n`-terminated), reads one
//! [`Response`] line, and closes. One request per connection keeps the agent's side
//! trivial and makes a half-dead connection impossible to reuse by mistake.
//!
//! Example exchange:
//!
//! ```text
//! > {"op":"register","namespace":"x","pod":"a","container_id":"c1","netns":"/run/netns/p1","host_ifname":"veth1234","ips":["10.244.0.5"]}
//! < {"ok":true,"generation":7,"in_force":true}
//! ```

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Where the agent listens unless the plugin config says `agentSocket`.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/palisade/agent.sock";

/// Everything the agent needs to enforce policy on one pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEndpoint {
    /// The pod's Kubernetes namespace (`K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// The pod's name (`K8S_POD_NAME`).
    pub pod: String,
    /// `CNI_CONTAINERID`: the sandbox id; unique per sandbox, reused on `DEL`.
    pub container_id: String,
    /// `CNI_NETNS`: path of the pod's network namespace.
    pub netns: String,
    /// Name of the host-side veth in the node's namespace, where the agent attaches
    /// its programs. Empty on `DEL` when no `prevResult` was given.
    pub host_ifname: String,
    /// The pod's addresses, without prefix length, at most one per family in practice.
    pub ips: Vec<IpAddr>,
}

/// A request from the plugin to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// `ADD`: enforce policy on this endpoint and answer once it is in force.
    Register(PodEndpoint),
    /// `DEL`: forget this endpoint. Idempotent on the agent's side.
    Unregister(PodEndpoint),
    /// `CHECK`: answer whether this endpoint's policy is in force.
    Check(PodEndpoint),
}

impl Request {
    /// The endpoint the request is about.
    pub fn endpoint(&self) -> &PodEndpoint {
        match self {
            Request::Register(e) | Request::Unregister(e) | Request::Check(e) => e,
        }
    }
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the agent did what was asked.
    pub ok: bool,
    /// The agent's policy generation that the answer reflects.
    #[serde(default)]
    pub generation: u64,
    /// Whether the endpoint's policy is attached and current in the kernel.
    #[serde(default)]
    pub in_force: bool,
    /// Why `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success answer.
    pub fn in_force(generation: u64) -> Self {
        Response {
            ok: true,
            generation,
            in_force: true,
            error: None,
        }
    }

    /// A failure answer.
    pub fn failed(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            generation: 0,
            in_force: false,
            error: Some(msg.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_request_serializes_with_op_tag_and_flat_fields() {
        let req = Request::Register(PodEndpoint {
            namespace: "x".into(),
            pod: "a".into(),
            container_id: "c1".into(),
            netns: "/run/netns/p".into(),
            host_ifname: "veth1".into(),
            ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        });
        let v: serde_json::Value = serde_json::to_value(&req).unwrap();
        assert_eq!(v["op"], "register");
        assert_eq!(v["host_ifname"], "veth1");
        assert_eq!(v["ips"][1], "fd00::1");
        let back: Request = serde_json::from_value(v).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn response_without_optional_fields_parses() {
        let r: Response = serde_json::from_str(r#"{"ok":false,"error":"boom"}"#).unwrap();
        assert!(!r.ok && !r.in_force);
        assert_eq!(r.error.as_deref(), Some("boom"));
    }
}
