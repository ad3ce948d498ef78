//! A minimal CNI runtime: runs standard plugins the way the kubelet's container
//! runtime would, from *inside* the lab's node namespace.
//!
//! # Plugin choice: `ptp`
//!
//! The lab uses the `ptp` main plugin (not `bridge`). `ptp` gives every pod its own
//! veth pair and no shared L2 segment:
//!
//! - the host side stays in the node namespace, carries the gateway address as a
//!   /32 (/128) and a host route `podIP/32 dev vethXXXX`;
//! - the pod side gets `podIP/<prefix>`, a link route to the gateway and routes via it
//!   (ptp rewrites the on-link subnet route so that *all* traffic, even to a pod in the
//!   same subnet, goes to the gateway, i.e. through the node).
//!
//! So every packet between two pods crosses the node namespace and passes both pods'
//! host-side veths: exactly where the datapath attaches (`from_pod` on the sender's
//! veth, `to_pod` on the receiver's). With `bridge`, same-subnet pods would talk over
//! the bridge at L2 and TC on the veths would still see them, but ARP, hairpin and
//! bridge-netfilter details would leak into what the lab measures. No proxy ARP is
//! needed: the pod ARPs/NDPs only for the gateway, which is a local address of its
//! host veth. `ptp` itself enables `ip_forward` and IPv6 `forwarding` in the namespace
//! it runs in, which is why plugins run in the node namespace, never in the root one.
//!
//! # Invocation
//!
//! Each plugin in a [`NetworkList`] is executed with `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`, and its configuration on stdin:
//! the plugin's own object plus `name`, `cniVersion` and, after the first plugin,
//! `prevResult` (spec 1.0.0 "Network configuration lists"). `ADD` runs the chain in
//! order, each result feeding the next; `DEL` runs it in reverse with the cached
//! final result as `prevResult`. The child joins the node namespace between `fork` and
//! `exec`, so the host-side veths are created there and the root namespace is never
//! touched.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use palisade_cni::spec::{CniError, CniResult};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::netns::{NetNs, NetNsError};

/// The directory Debian's `containernetworking-plugins` installs into.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/cni";

/// A failed plugin invocation. Not retryable in general; [`CniRunError::Plugin`]
/// with code 11 is.
#[derive(Debug, thiserror::Error)]
pub enum CniRunError {
    /// No executable named after the plugin's `type` in the plugin directories.
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    NotFound {
        /// The `type`.
        plugin: String,
        /// Where we looked.
        dirs: Vec<PathBuf>,
    },
    /// The plugin ran and reported an error object.
    #[error("CNI plugin {plugin} {command}: {}{}", .error.msg, if .error.details.is_empty() { String::new() } else { format!(" ({})", .error.details) })]
    Plugin {
        /// The `type`.
        plugin: String,
        /// `ADD`, `DEL`, `CHECK`.
        command: &'static str,
        /// What it printed.
        error: CniError,
    },
    /// The plugin failed without a parsable error, or its result was not JSON.
    #[error("CNI plugin {plugin} {command} failed: {output}")]
    Garbled {
        /// The `type`.
        plugin: String,
        /// `ADD`, `DEL`, `CHECK`.
        command: &'static str,
        /// stdout and stderr.
        output: String,
    },
    /// The plugin entry has no `type`.
    #[error("network list {list}: plugin #{index} has no \"type\"")]
    NoType {
        /// The list name.
        list: String,
        /// Its position.
        index: usize,
    },
    /// Entering the node namespace failed.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// Spawning the plugin failed.
    #[error("running CNI plugin {plugin}")]
    Spawn {
        /// The `type`.
        plugin: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A network configuration list (`.conflist`): the main plugin then chained ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkList {
    /// Spec version, given to every plugin.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Network name, given to every plugin (host-local keys its store by it).
    pub name: String,
    /// Plugin configurations, each with at least `type`.
    pub plugins: Vec<Value>,
}

/// Which container and interface an invocation is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the pod namespace's path.
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface to create inside the pod.
    pub ifname: String,
    /// `CNI_ARGS` pairs (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, …).
    pub args: Vec<(String, String)>,
}

/// Runs plugins from `plugin_dirs` inside the namespace `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRuntime {
    /// Searched in order for an executable named after each plugin's `type`.
    pub plugin_dirs: Vec<PathBuf>,
    /// The node namespace's name.
    pub node_netns: String,
}

/// The outcome of a successful `ADD`: the final result, raw (to cache for `DEL`) and
/// parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct AddOutcome {
    /// The last plugin's result as it printed it.
    pub raw: Value,
    /// The same, typed.
    pub result: CniResult,
}

impl CniRuntime {
    /// `ADD` through the whole chain. If a plugin fails, the plugins before it are
    /// rolled back with `DEL` (as the spec asks of runtimes) so nothing leaks.
    pub fn add(&self, list: &NetworkList, att: &Attachment) -> Result<AddOutcome, CniRunError> {
        let mut prev: Option<Value> = None;
        for (i, plugin) in list.plugins.iter().enumerate() {
            match self.exec(list, i, plugin, "ADD", att, prev.as_ref()) {
                Ok(out) => prev = Some(out),
                Err(e) => {
                    let _ = self.del(list, att, prev.as_ref());
                    return Err(e);
                }
            }
        }
        let raw = prev.unwrap_or_else(|| serde_json::json!({"cniVersion": list.cni_version}));
        let result = serde_json::from_value(raw.clone()).map_err(|e| CniRunError::Garbled {
            plugin: list.name.clone(),
            command: "ADD",
            output: format!("result does not parse: {e}"),
        })?;
        Ok(AddOutcome { raw, result })
    }

    /// `DEL` through the chain in reverse, with `cached` (the `ADD` result) as
    /// `prevResult`. Every plugin runs even if an earlier one fails; the first error
    /// is returned.
    pub fn del(
        &self,
        list: &NetworkList,
        att: &Attachment,
        cached: Option<&Value>,
    ) -> Result<(), CniRunError> {
        let mut first = None;
        for (i, plugin) in list.plugins.iter().enumerate().rev() {
            if let Err(e) = self.exec(list, i, plugin, "DEL", att, cached) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// `CHECK` through the chain in order with the cached result.
    pub fn check(
        &self,
        list: &NetworkList,
        att: &Attachment,
        cached: &Value,
    ) -> Result<(), CniRunError> {
        for (i, plugin) in list.plugins.iter().enumerate() {
            self.exec(list, i, plugin, "CHECK", att, Some(cached))?;
        }
        Ok(())
    }

    fn find(&self, plugin: &str) -> Result<PathBuf, CniRunError> {
        self.plugin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| CniRunError::NotFound {
                plugin: plugin.to_owned(),
                dirs: self.plugin_dirs.clone(),
            })
    }

    fn exec(
        &self,
        list: &NetworkList,
        index: usize,
        plugin: &Value,
        command: &'static str,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Value, CniRunError> {
        let ty = plugin
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| CniRunError::NoType {
                list: list.name.clone(),
                index,
            })?
            .to_owned();
        let exe = self.find(&ty)?;
        let mut conf = plugin.clone();
        conf["name"] = Value::from(list.name.clone());
        conf["cniVersion"] = Value::from(list.cni_version.clone());
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let cni_path = std::env::join_paths(&self.plugin_dirs)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let args: Vec<String> = att.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut cmd = Command::new(&exe);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", args.join(";"))
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        NetNs::open(&self.node_netns).enter_on_exec(&mut cmd)?;
        let spawn_err = |source| CniRunError::Spawn {
            plugin: ty.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let stdin_bytes = serde_json::to_vec(&conf).expect("JSON serializes");
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin may fail before reading its configuration; what it printed
            // then says why, better than the broken pipe.
            match stdin.write_all(&stdin_bytes) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(spawn_err(e)),
                _ => {}
            }
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(match serde_json::from_str::<CniError>(&stdout) {
                Ok(error) => CniRunError::Plugin {
                    plugin: ty,
                    command,
                    error,
                },
                Err(_) => CniRunError::Garbled {
                    plugin: ty,
                    command,
                    output: format!(
                        "{} {}",
                        stdout.trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                },
            });
        }
        if command != "ADD" {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).map_err(|e| CniRunError::Garbled {
            plugin: ty,
            command,
            output: format!("result is not JSON ({e}): {stdout}"),
        })
    }
}
