//! The plugin logic: environment + stdin in, stdout text or a [`CniError`] out.
//!
//! Kept free of process globals (env vars, stdio, exit codes live in `main.rs`) so every
//! path is a unit test away.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::client;
use crate::protocol::{PodEndpoint, Request, Response, DEFAULT_AGENT_SOCKET};
use crate::spec::{
    code, CniError, CniResult, Command, Env, FailPolicy, NetConf, CNI_VERSION, SUPPORTED_VERSIONS,
};

/// How long `ADD` waits for the agent unless `timeoutMs` says otherwise, in
/// milliseconds. Generous because the agent may be compiling a large policy set; the
/// kubelet's own CNI timeout is minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// `CNI_ARGS` key carrying the pod's namespace (set by the kubelet and by the lab).
pub const ARG_POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
/// `CNI_ARGS` key carrying the pod's name.
pub const ARG_POD_NAME: &str = "K8S_POD_NAME";

/// Runs one invocation. `stdin` is the network configuration; `log` receives
/// human-readable diagnostics (the binary sends them to stderr). Returns what to print
/// on stdout on success.
pub fn run(env: &Env, stdin: &[u8], log: &mut dyn Write) -> Result<String, CniError> {
    if env.command == Command::Version {
        return Ok(version_json());
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode network configuration",
            e.to_string(),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("unsupported cniVersion {:?}", conf.cni_version),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let socket = PathBuf::from(conf.agent_socket.as_deref().unwrap_or(DEFAULT_AGENT_SOCKET));
    let timeout = Duration::from_millis(conf.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
    let policy = conf.fail_policy.unwrap_or_default();
    match env.command {
        Command::Version => unreachable!("handled above"),
        Command::Add => {
            let prev = require_prev(&conf)?;
            let endpoint = endpoint(env, Some(&parse_prev(prev)?), true)?;
            let req = Request::Register(endpoint);
            confirm(&socket, &req, timeout, policy, log)?;
            Ok(serde_json::to_string(prev).expect("a JSON value serializes"))
        }
        Command::Check => {
            let prev = parse_prev(require_prev(&conf)?)?;
            let endpoint = endpoint(env, Some(&prev), true)?;
            if !interface_exists(&endpoint.host_ifname) {
                return Err(CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("host interface {} does not exist", endpoint.host_ifname),
                    "",
                ));
            }
            confirm(&socket, &Request::Check(endpoint), timeout, policy, log)?;
            Ok(String::new())
        }
        Command::Del => {
            // DEL must succeed whenever it can: the runtime retries DEL forever
            // otherwise, and a pod that is going away needs no protection.
            let prev = conf
                .prev_result
                .as_ref()
                .and_then(|p| serde_json::from_value(p.clone()).ok());
            let endpoint = match endpoint(env, prev.as_ref(), false) {
                Ok(e) => e,
                Err(e) => {
                    let _ = writeln!(
                        log,
                        "palisade-cni: DEL without pod identity, skipping: {}",
                        e.msg
                    );
                    return Ok(String::new());
                }
            };
            match client::call(&socket, &Request::Unregister(endpoint), timeout) {
                Ok(r) if r.ok => {}
                Ok(r) => {
                    let _ = writeln!(
                        log,
                        "palisade-cni: agent refused unregister: {}",
                        r.error.unwrap_or_default()
                    );
                }
                Err(e) => {
                    let _ = writeln!(log, "palisade-cni: unregister not delivered: {}", chain(&e));
                }
            }
            Ok(String::new())
        }
    }
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
    Ok(PodEndpoint {
        namespace,
        pod,
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        host_ifname: host_ifname.unwrap_or_default(),
        ips: prev
            .map(|p| p.container_ips(&env.ifname))
            .unwrap_or_default(),
    })
}

/// Asks the agent and applies the fail policy to anything but a confirmation.
fn confirm(
    socket: &std::path::Path,
    req: &Request,
    timeout: Duration,
    policy: FailPolicy,
    log: &mut dyn Write,
) -> Result<(), CniError> {
    let who = {
        let e = req.endpoint();
        format!("{}/{}", e.namespace, e.pod)
    };
    let failure = match client::call(socket, req, timeout) {
        Ok(Response {
            ok: true,
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
        Ok(r) => CniError::new(
            code::AGENT_REFUSED,
            format!("agent did not put policy in force for {who}"),
            r.error
                .unwrap_or_else(|| format!("ok={} in_force={}", r.ok, r.in_force)),
        ),
        Err(e) => CniError::new(
            code::TRY_AGAIN_LATER,
            format!("node agent unavailable for {who}"),
            chain(&e),
        ),
    };
    match policy {
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
