//! The subset of the [CNI 1.0.0 spec](https://github.com/containernetworking/cni/blob/spec-v1.0.0/SPEC.md)
//! Palisade needs, as plain serde types: the plugin environment, network
//! configuration, the result object and the error object.
//!
//! Unknown fields are kept (`extra`) so that a result read and written back loses
//! nothing, but the plugin returns `prevResult` as the raw JSON it received anyway.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The spec version this plugin speaks and emits.
pub const CNI_VERSION: &str = "1.0.0";

/// Versions accepted in a network configuration. 0.4.0 is the first with `CHECK`
/// and `prevResult` on `DEL`, and its result shape matches 1.0.0 for our purposes.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0"];

/// Well-known error codes (spec section "Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition (here, the agent is away).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific: the agent answered but refused or could not enforce.
    pub const AGENT_REFUSED: u32 = 100;
}

/// The error object a plugin prints on stdout when it exits non-zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// The spec version of the error object.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// One of [`code`] (1–99 reserved by the spec, 100+ plugin-specific).
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation, possibly empty.
    #[serde(default)]
    pub details: String,
}

impl CniError {
    /// An error with the given code, message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            cni_version: CNI_VERSION.to_owned(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Add the container to the network.
    Add,
    /// Remove it.
    Del,
    /// Verify it is still as `ADD` left it.
    Check,
    /// Report supported versions.
    Version,
}

impl Command {
    /// The spelling in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for `VERSION`).
    pub container_id: String,
    /// `CNI_NETNS` (may be empty on `DEL`).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed from `K1=V1;K2=V2`.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<String>,
}

impl Env {
    /// Reads and validates the environment through `get` (e.g. `std::env::var`),
    /// requiring what the spec requires for the command.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let missing =
            |name: &str| CniError::new(code::INVALID_ENV, format!("{name} is not set"), "");
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("unknown CNI_COMMAND {other:?}"),
                    "",
                ))
            }
            None => return Err(missing("CNI_COMMAND")),
        };
        let need = |name: &str, required: bool| -> Result<String, CniError> {
            match get(name).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v),
                None if required => Err(missing(name)),
                None => Ok(String::new()),
            }
        };
        let real = command != Command::Version;
        let raw_args = get("CNI_ARGS").unwrap_or_default();
        if matches!(command, Command::Add | Command::Check) {
            check_args(&raw_args).map_err(|why| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS: {why}"),
                    "CNI_ARGS is KEY=VALUE pairs separated by ';'",
                )
            })?;
        }
        let env = Env {
            command,
            container_id: need("CNI_CONTAINERID", real)?,
            netns: need(
                "CNI_NETNS",
                matches!(command, Command::Add | Command::Check),
            )?,
            ifname: need("CNI_IFNAME", real)?,
            args: parse_args(&raw_args),
            path: get("CNI_PATH")
                .unwrap_or_default()
                .split(':')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        Ok(env)
    }
}

/// Checks `CNI_ARGS` strictly (ADD and CHECK): every `;`-separated item is
/// `KEY=VALUE` with a non-empty key, and no key is given twice (which value would
/// name the pod?). Empty items (a trailing `;`) are allowed.
pub fn check_args(s: &str) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for item in s.split(';').filter(|i| !i.trim().is_empty()) {
        let Some((k, _)) = item.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            return Err(format!("{item:?} is not KEY=VALUE"));
        };
        if !seen.insert(k.trim()) {
            return Err(format!("{} is given twice", k.trim()));
        }
    }
    Ok(())
}

/// Parses `CNI_ARGS` (`K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;IgnoreUnknown=1`).
/// Lenient, for DEL, which must complete: pairs without `=` are ignored and a
/// repeated key keeps its last value. ADD and CHECK refuse both ([`check_args`]).
pub fn parse_args(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// One interface in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Namespace path; absent (or empty) for host-side interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Everything else (mtu, socketPath, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Interface {
    /// Whether this interface lives in a container namespace.
    pub fn in_sandbox(&self) -> bool {
        self.sandbox.as_deref().is_some_and(|s| !s.is_empty())
    }
}

/// One address in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation, e.g. `10.244.0.5/24`.
    pub address: String,
    /// Gateway, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

impl IpConfig {
    /// The address without its prefix length.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split('/').next()?.parse().ok()
    }

    /// The prefix length, if given.
    pub fn prefix_len(&self) -> Option<u8> {
        self.address.split_once('/')?.1.parse().ok()
    }
}

/// A plugin's result (`ADD` output, the next plugin's `prevResult`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CniResult {
    /// Spec version of the result.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Interfaces created.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Everything else (routes, dns, …).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl CniResult {
    /// The container interface named `ifname` (in a sandbox), with its index.
    pub fn container_interface(&self, ifname: &str) -> Option<(usize, &Interface)> {
        self.interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == ifname && i.in_sandbox())
    }

    /// The host-side interface of the container interface `ifname`.
    ///
    /// Main plugins list the host-side veth without `sandbox`. ptp lists exactly the
    /// host veth and the container interface; bridge lists the bridge, then the host
    /// veth, then the container interface. When several host-side entries exist we
    /// take the one listed right before the container interface, which is the veth
    /// peer in both plugins' output (a bridge is listed first).
    ///
    /// Nothing is guessed: without a sandbox interface named `ifname`, or without a
    /// host-side interface listed before it, there is no answer (enforcing on the
    /// wrong interface, a bridge say, would be worse than refusing).
    pub fn host_interface(&self, ifname: &str) -> Option<&Interface> {
        let (idx, _) = self.container_interface(ifname)?;
        self.interfaces[..idx]
            .iter()
            .rev()
            .find(|i| !i.in_sandbox())
    }

    /// The container's addresses (all of them if no address names an interface).
    ///
    /// Every entry of `ips` must be an address in CIDR notation whose `interface`, if
    /// given, is an index into `interfaces`: an entry that is not is an error (code
    /// [`code::DECODE_FAILURE`]) naming its field, never skipped, so a pod is never
    /// registered with fewer addresses than its main plugin gave it.
    pub fn container_ips(&self, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        let idx = self.container_interface(ifname).map(|(i, _)| i);
        let mut out = Vec::new();
        for (n, c) in self.ips.iter().enumerate() {
            let bad = |why: String| {
                CniError::new(
                    code::DECODE_FAILURE,
                    format!("prevResult.ips[{n}]: {why}"),
                    "addresses are what the pod is identified and checked by; none is skipped",
                )
            };
            let (Some(ip), Some(len)) = (c.ip(), c.prefix_len()) else {
                return Err(bad(format!(
                    "address {:?} is not an IP address in CIDR notation",
                    c.address
                )));
            };
            if len > if ip.is_ipv4() { 32 } else { 128 } {
                return Err(bad(format!(
                    "address {:?} has a prefix length longer than the address",
                    c.address
                )));
            }
            let broadcast = matches!(ip, IpAddr::V4(a) if a.is_broadcast());
            if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || broadcast {
                return Err(bad(format!(
                    "address {:?} is not a unicast address a pod can have",
                    c.address
                )));
            }
            if let Some(i) = c.interface.filter(|i| *i >= self.interfaces.len()) {
                return Err(bad(format!(
                    "interface {i} is not an index into interfaces (which has {})",
                    self.interfaces.len()
                )));
            }
            let ours = match (c.interface, idx) {
                (Some(i), Some(want)) => i == want,
                _ => true,
            };
            if ours {
                out.push(ip);
            }
        }
        Ok(out)
    }
}

/// The plugin's network configuration (one entry of a conflist, as the runtime passes
/// it: with `name`, `cniVersion` and, when chained, `prevResult`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetConf {
    /// Spec version.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// Plugin type (`palisade-cni`).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The previous plugin's result; raw so it can be returned byte-for-byte equal
    /// in meaning.
    #[serde(
        rename = "prevResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub prev_result: Option<Value>,
    /// Unix socket of the node agent.
    #[serde(
        rename = "agentSocket",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub agent_socket: Option<String>,
    /// How long `ADD` waits for the agent to confirm, in milliseconds.
    #[serde(rename = "timeoutMs", default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `closed` (default) or `open`.
    #[serde(
        rename = "failPolicy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub fail_policy: Option<FailPolicy>,
}

/// What `ADD` does when the agent cannot confirm the pod's policy is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailPolicy {
    /// Fail the `ADD`: the pod does not start unprotected.
    #[default]
    Closed,
    /// Let the pod start; it is default-allow until the agent catches up.
    Open,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTP_RESULT: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "veth3a9c1e2f", "mac": "f2:0b:6e:00:00:01"},
            {"name": "eth0", "mac": "a6:00:00:00:00:02", "sandbox": "/run/netns/p1"}
        ],
        "ips": [
            {"address": "10.244.0.5/24", "gateway": "10.244.0.1", "interface": 1},
            {"address": "fd00:10:244::5/64", "gateway": "fd00:10:244::1", "interface": 1}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    }"#;

    #[test]
    fn ptp_result_yields_host_veth_and_both_families() {
        let r: CniResult = serde_json::from_str(PTP_RESULT).unwrap();
        assert_eq!(r.host_interface("eth0").unwrap().name, "veth3a9c1e2f");
        assert_eq!(
            r.container_ips("eth0").unwrap(),
            vec![
                "10.244.0.5".parse::<IpAddr>().unwrap(),
                "fd00:10:244::5".parse().unwrap()
            ]
        );
        assert_eq!(r.ips[1].prefix_len(), Some(64));
        assert!(r.extra.contains_key("routes"), "unknown fields are kept");
    }

    // Issue 8: an address that did not parse was dropped and ADD succeeded without it.
    #[test]
    fn issue_8_a_bad_address_in_the_result_is_an_error_naming_it() {
        for (bad, field) in [
            (r#"{"address":"10.244.0.300/24","interface":1}"#, "ips[1]"),
            (r#"{"address":"10.244.0.6","interface":1}"#, "ips[1]"),
            (r#"{"address":"10.244.0.6/33","interface":1}"#, "ips[1]"),
            (r#"{"address":"10.244.0.6/24","interface":7}"#, "ips[1]"),
            (r#"{"address":"0.0.0.0/0","interface":1}"#, "ips[1]"),
            (r#"{"address":"ff02::1/64","interface":1}"#, "ips[1]"),
            (r#"{"address":"127.0.0.1/8","interface":1}"#, "ips[1]"),
        ] {
            let text = PTP_RESULT.replace(
                r#"{"address": "fd00:10:244::5/64", "gateway": "fd00:10:244::1", "interface": 1}"#,
                bad,
            );
            assert_ne!(text, PTP_RESULT, "the fixture changed");
            let r: CniResult = serde_json::from_str(&text).unwrap();
            let err = r.container_ips("eth0").unwrap_err();
            assert_eq!(err.code, code::DECODE_FAILURE);
            assert!(err.msg.contains(field), "{bad}: {}", err.msg);
        }
    }

    #[test]
    fn no_host_interface_is_guessed() {
        // No sandbox interface named eth0: the host-side entries say nothing about it.
        let r: CniResult = serde_json::from_str(
            r#"{"interfaces":[{"name":"cni0"},{"name":"vethabc"},{"name":"net1","sandbox":"/p"}]}"#,
        )
        .unwrap();
        assert_eq!(r.host_interface("eth0"), None);
        assert_eq!(r.host_interface("net1").unwrap().name, "vethabc");
        // The container interface listed first: nothing before it is its peer.
        let r: CniResult = serde_json::from_str(
            r#"{"interfaces":[{"name":"eth0","sandbox":"/p"},{"name":"vethabc"}]}"#,
        )
        .unwrap();
        assert_eq!(r.host_interface("eth0"), None);
    }

    #[test]
    fn bridge_result_picks_the_veth_not_the_bridge() {
        let r: CniResult = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","interfaces":[
                {"name":"cni0","mac":"00:00:00:00:00:01"},
                {"name":"vethabc","mac":"00:00:00:00:00:02"},
                {"name":"eth0","mac":"00:00:00:00:00:03","sandbox":"/run/netns/p"}],
              "ips":[{"address":"10.1.0.2/16","interface":2}]}"#,
        )
        .unwrap();
        assert_eq!(r.host_interface("eth0").unwrap().name, "vethabc");
    }

    #[test]
    fn netconf_reads_plugin_fields_and_defaults_fail_policy_to_closed() {
        let c: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"lab","type":"palisade-cni",
                "agentSocket":"/tmp/a.sock","timeoutMs":250,"prevResult":{"ips":[]}}"#,
        )
        .unwrap();
        assert_eq!(c.agent_socket.as_deref(), Some("/tmp/a.sock"));
        assert_eq!(c.timeout_ms, Some(250));
        assert_eq!(c.fail_policy.unwrap_or_default(), FailPolicy::Closed);
        let open: NetConf =
            serde_json::from_str(r#"{"cniVersion":"1.0.0","failPolicy":"open"}"#).unwrap();
        assert_eq!(open.fail_policy, Some(FailPolicy::Open));
    }

    #[test]
    fn error_object_has_exactly_the_spec_fields() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "agent down", "connect refused");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.0.0","code":11,"msg":"agent down","details":"connect refused"})
        );
    }

    #[test]
    fn env_requires_netns_on_add_but_not_on_del() {
        let base = |cmd: &'static str, netns: Option<&'static str>| {
            move |k: &str| -> Option<String> {
                match k {
                    "CNI_COMMAND" => Some(cmd.into()),
                    "CNI_CONTAINERID" => Some("c1".into()),
                    "CNI_IFNAME" => Some("eth0".into()),
                    "CNI_NETNS" => netns.map(Into::into),
                    "CNI_ARGS" => Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a".into()),
                    _ => None,
                }
            }
        };
        let err = Env::from_lookup(base("ADD", None)).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV);
        let del = Env::from_lookup(base("DEL", None)).unwrap();
        assert_eq!(del.command, Command::Del);
        assert_eq!(del.args["K8S_POD_NAME"], "a");
        assert_eq!(del.args["K8S_POD_NAMESPACE"], "x");
        let version = Env::from_lookup(|k| (k == "CNI_COMMAND").then(|| "VERSION".into())).unwrap();
        assert_eq!(version.command, Command::Version);
    }

    #[test]
    fn add_refuses_malformed_or_ambiguous_cni_args_and_del_reads_them_anyway() {
        for (args, why) in [
            ("K8S_POD_NAMESPACE=x;K8S_POD_NAME", "is not KEY=VALUE"),
            ("=x;K8S_POD_NAME=a", "is not KEY=VALUE"),
            ("K8S_POD_NAME=a;K8S_POD_NAME=b", "given twice"),
        ] {
            let env = |cmd: &'static str| {
                move |k: &str| -> Option<String> {
                    match k {
                        "CNI_COMMAND" => Some(cmd.into()),
                        "CNI_CONTAINERID" => Some("c1".into()),
                        "CNI_IFNAME" => Some("eth0".into()),
                        "CNI_NETNS" => Some("/run/netns/p".into()),
                        "CNI_ARGS" => Some(args.into()),
                        _ => None,
                    }
                }
            };
            let err = Env::from_lookup(env("ADD")).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV);
            assert!(err.msg.contains(why), "{args}: {}", err.msg);
            assert!(Env::from_lookup(env("DEL")).is_ok(), "{args}");
        }
        assert!(check_args("IgnoreUnknown=1;K8S_POD_NAME=a;").is_ok());
    }
}
