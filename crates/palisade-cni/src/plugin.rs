//! The plugin logic: environment + stdin in, stdout text or a [`CniError`] out.
//!
//! Kept free of process globals (env vars, stdio, exit codes live in `main.rs`) so every
//! path is a unit test away.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::spec::{
    code, CniError, CniResult, Command, Env, FailPolicy, NetConf, CNI_VERSION, SUPPORTED_VERSIONS,
};
use palisade_api::{
    client, Call, Check, ClientError, InForce, PodEndpoint, Register, Unregister,
    DEFAULT_AGENT_SOCKET,
};

/// How long `ADD` waits for the agent unless `timeoutMs` says otherwise, in
/// milliseconds. Generous because the agent may be compiling a large policy set; the
/// kubelet's own CNI timeout is minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// The most bytes of stdin the plugin reads (1 MiB). A network configuration with its
/// `prevResult` is a few KiB; the bound keeps a runaway or hostile caller from making
/// the plugin (run once per pod start) hold an unbounded buffer.
pub const MAX_STDIN: usize = 1 << 20;

/// Reads stdin up to [`MAX_STDIN`] + 1 bytes, so [`run`] can tell a configuration that
/// is exactly at the bound from one past it without reading the rest.
pub fn read_stdin(r: impl std::io::Read) -> Result<Vec<u8>, CniError> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    r.take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot read stdin", e.to_string()))?;
    Ok(buf)
}

/// The longest `timeoutMs` accepted, in milliseconds (10 minutes): container runtimes
/// give up on a sandbox far sooner (the kubelet's runtime request timeout is 2 minutes).
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// `CNI_ARGS` key carrying the pod's namespace (set by the kubelet and by the lab).
pub const ARG_POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
/// `CNI_ARGS` key carrying the pod's name.
pub const ARG_POD_NAME: &str = "K8S_POD_NAME";

/// How to reach the agent, as the network configuration says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// The agent's unix socket (`agentSocket`).
    pub socket: PathBuf,
    /// How long to wait for its answer (`timeoutMs`).
    pub timeout: Duration,
    /// What to do when it does not confirm (`failPolicy`).
    pub policy: FailPolicy,
}

/// What one invocation will do, decided from environment and stdin alone ([`plan`]):
/// everything the plugin checks about its input happens before any I/O, so the checks
/// are a pure function a fuzzer (and a unit test) can drive.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Print [`version_json`].
    Version,
    /// Register `endpoint`, then print `prev` unchanged.
    Add {
        /// Where and how to ask.
        agent: Agent,
        /// The pod to register (pod identity, host interface and addresses all set).
        endpoint: PodEndpoint,
        /// `prevResult` as received.
        prev: Value,
    },
    /// Ask whether `endpoint`'s policy is in force (its host interface must exist).
    Check {
        /// Where and how to ask.
        agent: Agent,
        /// The pod to check.
        endpoint: PodEndpoint,
        /// `prevResult` as received.
        prev: Value,
    },
    /// Unregister `endpoint` (best effort; `None`: no pod identity, nothing to name).
    Del {
        /// Where to ask (the fail policy does not apply: DEL never fails).
        agent: Agent,
        /// The registration to remove.
        endpoint: Option<PodEndpoint>,
        /// Diagnostics about the lenient reading, one line each, for the log.
        notes: Vec<String>,
    },
}

/// Runs one invocation. `stdin` is the network configuration; `log` receives
/// human-readable diagnostics (the binary sends them to stderr). Returns what to print
/// on stdout on success.
pub fn run(env: &Env, stdin: &[u8], log: &mut dyn Write) -> Result<String, CniError> {
    match plan(env, stdin)? {
        Plan::Version => Ok(version_json()),
        Plan::Del {
            agent,
            endpoint,
            notes,
        } => {
            for n in notes {
                let _ = writeln!(log, "palisade-cni: DEL: {n}");
            }
            if let Some(endpoint) = endpoint {
                unregister(&agent, endpoint, log);
            }
            Ok(String::new())
        }
        Plan::Add {
            agent,
            endpoint,
            prev,
        } => {
            confirm(&agent, &Register(endpoint), log)?;
            Ok(serde_json::to_string(&prev).expect("a JSON value serializes"))
        }
        Plan::Check {
            agent, endpoint, ..
        } => {
            if !interface_exists(&endpoint.host_ifname) {
                return Err(CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("host interface {} does not exist", endpoint.host_ifname),
                    "",
                ));
            }
            confirm(&agent, &Check(endpoint), log)?;
            Ok(String::new())
        }
    }
}

/// Decides what an invocation does from its environment and stdin, without I/O. Every
/// input problem of ADD and CHECK is an error here; DEL is never an error ([`Plan::Del`]).
pub fn plan(env: &Env, stdin: &[u8]) -> Result<Plan, CniError> {
    match env.command {
        Command::Version => return Ok(Plan::Version),
        Command::Del => return Ok(del(env, stdin)),
        Command::Add | Command::Check => {}
    }
    if stdin.len() > MAX_STDIN {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "the network configuration on stdin is larger than {} KiB",
                MAX_STDIN / 1024
            ),
            "a configuration with its prevResult is a few KiB; check what the runtime passes",
        ));
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode network configuration",
            e.to_string(),
        )
    })?;
    // Decoded whole as well: serde skips an unknown field's value without checking that
    // its strings are Unicode, so without this a configuration with invalid UTF-8 (or a
    // lone surrogate escape) in a misspelt key would pass, and skip the typo check too
    // (found by the `cni` fuzz target).
    let fields = serde_json::from_slice::<serde_json::Map<String, Value>>(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode network configuration",
            e.to_string(),
        )
    })?;
    if let Some((typo, meant)) = near_miss(fields.keys()) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("unknown field {typo:?} in the network configuration; did you mean {meant:?}?"),
            "a misspelt palisade-cni option would silently fall back to its default",
        ));
    }
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("unsupported cniVersion {:?}", conf.cni_version),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let socket = PathBuf::from(conf.agent_socket.as_deref().unwrap_or(DEFAULT_AGENT_SOCKET));
    let timeout_ms = conf.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("timeoutMs {timeout_ms} is outside 1..={MAX_TIMEOUT_MS}"),
            "0 would fail every ADD; past 10 minutes the runtime has given up long before",
        ));
    }
    let agent = Agent {
        socket,
        timeout: Duration::from_millis(timeout_ms),
        policy: conf.fail_policy.unwrap_or_default(),
    };
    let prev = require_prev(&conf)?;
    let endpoint = endpoint(env, Some(&parse_prev(prev)?), true)?;
    Ok(match env.command {
        Command::Add => Plan::Add {
            agent,
            endpoint,
            prev: prev.clone(),
        },
        Command::Check => Plan::Check {
            agent,
            endpoint,
            prev: prev.clone(),
        },
        Command::Version | Command::Del => unreachable!("handled above"),
    })
}

/// `DEL`. It never fails (CNI 1.0: "plugins should generally complete a DEL action
/// without error even if some resources are missing"; a failing DEL is retried by the
/// runtime and keeps the pod terminating, and a pod going away needs no protection):
///
/// 1. The registration is named by the pod (`CNI_ARGS`) and `CNI_CONTAINERID` from the
///    environment; without a pod identity there is nothing to name and DEL only logs.
/// 2. The configuration is read leniently: `agentSocket` and `timeoutMs` are used when
///    present with the right type, the defaults otherwise (also when stdin is over
///    [`MAX_STDIN`] or not JSON at all). `cniVersion` is not checked.
/// 3. `prevResult`, when present and decodable, contributes the host interface, which
///    the agent then requires to be the registered one; when missing or undecodable,
///    the container id alone names the registration.
/// 4. An agent that is away or refuses (no such registration: a repeated DEL) is
///    logged; a registration left behind is removed by the agent when its interface is
///    found gone (see `palisade_agent::registry`).
fn del(env: &Env, stdin: &[u8]) -> Plan {
    let mut notes = Vec::new();
    let conf: Option<Value> = if stdin.len() > MAX_STDIN {
        notes.push(format!(
            "stdin is over {} KiB; using the default agent socket",
            MAX_STDIN / 1024
        ));
        None
    } else {
        serde_json::from_slice(stdin)
            .map_err(|e| {
                notes.push(format!(
                    "configuration is not JSON ({e}); using the default agent socket"
                ))
            })
            .ok()
    };
    let field = |k: &str| conf.as_ref().and_then(|c| c.get(k));
    let socket = PathBuf::from(
        field("agentSocket")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_AGENT_SOCKET),
    );
    let timeout = Duration::from_millis(
        field("timeoutMs")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_TIMEOUT_MS),
    );
    let prev: Option<CniResult> =
        field("prevResult").and_then(|p| match serde_json::from_value(p.clone()) {
            Ok(r) => Some(r),
            Err(e) => {
                notes.push(format!(
                    "prevResult not decodable ({e}); naming the registration by container id"
                ));
                None
            }
        });
    let endpoint = match endpoint(env, prev.as_ref(), false) {
        Ok(e) => Some(e),
        Err(e) => {
            notes.push(format!("without pod identity, skipping: {}", e.msg));
            None
        }
    };
    Plan::Del {
        agent: Agent {
            socket,
            timeout,
            policy: FailPolicy::Open,
        },
        endpoint,
        notes,
    }
}

/// Sends `unregister`, logging (never failing on) an agent that is away or refuses.
fn unregister(agent: &Agent, endpoint: PodEndpoint, log: &mut dyn Write) {
    match client::call(&agent.socket, &Unregister(endpoint), agent.timeout) {
        Ok(_) => {}
        Err(ClientError::Refused(why)) => {
            let _ = writeln!(log, "palisade-cni: agent refused unregister: {why}");
        }
        Err(e) => {
            let _ = writeln!(log, "palisade-cni: unregister not delivered: {}", chain(&e));
        }
    }
}

/// This plugin's own options: a key that is almost one of them is a typo.
const OWN_KEYS: [&str; 3] = ["agentSocket", "timeoutMs", "failPolicy"];

/// The first key that is not one of [`OWN_KEYS`] but is within two edits of one (or
/// equal ignoring case), with the key it probably meant. Other unknown keys are left
/// alone: the runtime adds its own (`runtimeConfig`, `capabilities`, `args`, ...).
fn near_miss<'a>(keys: impl Iterator<Item = &'a String>) -> Option<(String, &'static str)> {
    for key in keys {
        if OWN_KEYS.contains(&key.as_str()) {
            continue;
        }
        if let Some(meant) = OWN_KEYS
            .iter()
            .find(|own| own.eq_ignore_ascii_case(key) || edit_distance(own, key) <= 2)
        {
            return Some((key.clone(), meant));
        }
    }
    None
}

/// Levenshtein distance over chars (keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The `VERSION` answer.
pub fn version_json() -> String {
    serde_json::json!({"cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
        .to_string()
}

fn require_prev(conf: &NetConf) -> Result<&Value, CniError> {
    conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "palisade-cni must be chained after a main plugin",
            "prevResult is missing from the network configuration",
        )
    })
}

fn parse_prev(prev: &Value) -> Result<CniResult, CniError> {
    serde_json::from_value(prev.clone()).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode prevResult",
            e.to_string(),
        )
    })
}

/// Builds the endpoint from the environment and, when present, the previous result.
/// `strict` requires a pod identity and a host interface (ADD, CHECK).
fn endpoint(env: &Env, prev: Option<&CniResult>, strict: bool) -> Result<PodEndpoint, CniError> {
    let arg = |k: &str| env.args.get(k).cloned().unwrap_or_default();
    let (namespace, pod) = (arg(ARG_POD_NAMESPACE), arg(ARG_POD_NAME));
    if namespace.is_empty() || pod.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            "CNI_ARGS must carry K8S_POD_NAMESPACE and K8S_POD_NAME",
            format!("CNI_ARGS keys: {:?}", env.args.keys().collect::<Vec<_>>()),
        ));
    }
    let host_ifname = prev
        .and_then(|p| p.host_interface(&env.ifname))
        .map(|i| i.name.clone());
    if strict && host_ifname.is_none() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "prevResult has no host-side interface",
            "palisade-cni enforces on the host-side veth; chain it after ptp or bridge",
        ));
    }
    // DEL names the registration by pod, sandbox and interface; addresses do not
    // matter to it, so a bad one must not stop it.
    let ips = match prev {
        Some(p) if strict => p.container_ips(&env.ifname)?,
        _ => Vec::new(),
    };
    if strict && ips.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("prevResult has no address for {}", env.ifname),
            "Palisade identifies a pod and checks its source address by the addresses its main plugin assigns; configure IPAM in the main plugin",
        ));
    }
    Ok(PodEndpoint {
        namespace,
        pod,
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        host_ifname: host_ifname.unwrap_or_default(),
        ips,
    })
}

/// Asks the agent and applies the fail policy to anything but a confirmation.
fn confirm<C: Call<Reply = InForce>>(
    agent: &Agent,
    req: &C,
    log: &mut dyn Write,
) -> Result<(), CniError> {
    let who = match req.request().endpoint() {
        Some(e) => format!("{}/{}", e.namespace, e.pod),
        None => "?".into(),
    };
    let refused = |details: String| {
        CniError::new(
            code::AGENT_REFUSED,
            format!("agent did not put policy in force for {who}"),
            details,
        )
    };
    let failure = match client::call(&agent.socket, req, agent.timeout) {
        Ok(InForce {
            in_force: true,
            generation,
            ..
        }) => {
            let _ = writeln!(
                log,
                "palisade-cni: {who}: policy in force at generation {generation}"
            );
            return Ok(());
        }
        Ok(r) => refused(format!("ok=true in_force={}", r.in_force)),
        Err(ClientError::Refused(why)) => refused(why),
        Err(e) => CniError::new(
            code::TRY_AGAIN_LATER,
            format!("node agent unavailable for {who}"),
            chain(&e),
        ),
    };
    match agent.policy {
        FailPolicy::Closed => Err(failure),
        FailPolicy::Open => {
            let _ = writeln!(
                log,
                "palisade-cni: failPolicy=open: continuing unprotected: {}: {}",
                failure.msg, failure.details
            );
            Ok(())
        }
    }
}

fn interface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// `{:#}`-style one-line error chain.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment of a `cmd` invocation for pod x/a.
    fn env(cmd: &str) -> Env {
        Env::from_lookup(|k| match k {
            "CNI_COMMAND" => Some(cmd.into()),
            "CNI_CONTAINERID" => Some("c1".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_NETNS" => Some("/run/netns/p".into()),
            "CNI_ARGS" => Some("K8S_POD_NAMESPACE=x;K8S_POD_NAME=a".into()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn timeout_ms_out_of_range_is_a_config_error() {
        let env = env("ADD");
        for t in [0, MAX_TIMEOUT_MS + 1] {
            let conf = format!(r#"{{"cniVersion":"1.0.0","timeoutMs":{t},"prevResult":{{}}}}"#);
            let err = run(&env, conf.as_bytes(), &mut Vec::new()).unwrap_err();
            assert_eq!(err.code, code::INVALID_CONFIG, "{t}: {}", err.msg);
            assert!(err.msg.contains("timeoutMs"), "{}", err.msg);
        }
    }

    #[test]
    fn plan_decides_without_io_and_del_never_fails() {
        let conf = br#"{"cniVersion":"1.0.0","timeoutMs":5,"prevResult":{"interfaces":[{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/p"}],"ips":[{"address":"10.244.0.5/24","interface":1}]}}"#;
        match plan(&env("ADD"), conf).unwrap() {
            Plan::Add {
                agent, endpoint, ..
            } => {
                assert_eq!(agent.timeout, Duration::from_millis(5));
                assert_eq!(endpoint.host_ifname, "veth1");
                assert_eq!(
                    endpoint.ips,
                    ["10.244.0.5".parse::<std::net::IpAddr>().unwrap()]
                );
            }
            other => panic!("{other:?}"),
        }
        for junk in [&b"not json"[..], b"", b"{\"prevResult\":7}"] {
            assert!(plan(&env("ADD"), junk).is_err());
            match plan(&env("DEL"), junk).unwrap() {
                Plan::Del {
                    endpoint: Some(e), ..
                } => assert_eq!((e.pod.as_str(), e.host_ifname.as_str()), ("a", "")),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_configuration_with_invalid_unicode_in_an_unknown_field_is_refused() {
        let env = env("ADD");
        // The fuzz target's find: a misspelt agentSocket whose value is not UTF-8.
        let mut conf = br#"{"cniVersion":"1.0.0","agentSocAet":"/run/x"#.to_vec();
        conf.extend_from_slice(&[0xd1]);
        conf.extend_from_slice(br#"a.sock","prevResult":{}}"#);
        let surrogate = br#"{"cniVersion":"1.0.0","agentSockt":"\ud800","prevResult":{}}"#;
        for c in [&conf[..], &surrogate[..]] {
            let err = plan(&env, c).unwrap_err();
            assert_eq!(err.code, code::DECODE_FAILURE, "{}", err.msg);
        }
    }

    #[test]
    fn a_misspelt_option_is_named_with_the_one_meant_and_runtime_keys_pass() {
        let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        for (typo, meant) in [
            ("failPolcy", "failPolicy"),
            ("FailPolicy", "failPolicy"),
            ("timeout_ms", "timeoutMs"),
            ("agentSockt", "agentSocket"),
        ] {
            let k = keys(&["cniVersion", typo]);
            assert_eq!(
                near_miss(k.iter()),
                Some((typo.to_string(), meant)),
                "{typo}"
            );
        }
        let fine = keys(&[
            "cniVersion",
            "name",
            "type",
            "prevResult",
            "runtimeConfig",
            "capabilities",
            "args",
            "agentSocket",
            "timeoutMs",
            "failPolicy",
        ]);
        assert_eq!(near_miss(fine.iter()), None);
    }
}
