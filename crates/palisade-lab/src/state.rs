//! The lab's state on disk, and teardown from it.
//!
//! `palisade lab up` returns while the pods keep existing and serving, so everything
//! needed to use or remove the lab later is written to `<state_dir>/state.json`:
//! namespaces, each pod's CNI attachment and cached result (for `DEL`), the processes
//! started (servers, and the agent, which the agent's launcher records), and pinned
//! BPF paths to remove. [`LabState::teardown`] undoes exactly what is recorded there,
//! and nothing else; it is idempotent.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use palisade_policy::model::ContainerPort;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::addressing::AddressPlan;
use crate::cni::{Attachment, CniRuntime, NetworkList};
use crate::netns::NetNs;
use crate::process::ProcessRecord;

/// Default parent of lab state directories.
pub const DEFAULT_STATE_ROOT: &str = "/run/palisade-lab";
/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// Only pins under this directory are ever removed.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// State file errors. Reading a missing file is not retryable: no lab by that name.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the file failed.
    #[error("lab state {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid state JSON.
    #[error("lab state {path} is corrupt")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// One pod of the lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    /// `namespace/name`.
    pub key: String,
    /// The pod's network namespace name.
    pub netns: String,
    /// The pod-side interface name (`CNI_IFNAME`).
    pub ifname: String,
    /// The host-side veth in the node namespace.
    pub host_ifname: String,
    /// Addresses assigned (static or host-local).
    pub ips: Vec<IpAddr>,
    /// Declared container ports (what its server listens on).
    pub ports: Vec<ContainerPort>,
    /// The CNI attachment, for `DEL`.
    pub attachment: Attachment,
    /// The network list used, for `DEL` in reverse.
    pub network: NetworkList,
    /// The chain's final `ADD` result, `prevResult` for `DEL`.
    pub cni_result: Value,
    /// The pod's server process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ProcessRecord>,
}

/// Everything the lab created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabState {
    /// Lab name; namespaces are named after it.
    pub name: String,
    /// Where this file and the IPAM store live.
    pub state_dir: PathBuf,
    /// The node namespace (holds host-side veths, forwarding, the datapath).
    pub node_netns: String,
    /// The CNI runtime used.
    pub cni: CniRuntime,
    /// Subnets and gateways.
    pub addressing: AddressPlan,
    /// Pods, in creation order.
    pub pods: Vec<PodRecord>,
    /// The node agent, once its launcher records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<ProcessRecord>,
    /// Other processes to stop on teardown.
    #[serde(default)]
    pub processes: Vec<ProcessRecord>,
    /// bpffs paths (files or directories under `/sys/fs/bpf`) to remove on teardown.
    #[serde(default)]
    pub pin_paths: Vec<PathBuf>,
}

impl LabState {
    /// `<state_dir>/state.json`.
    pub fn file(state_dir: &Path) -> PathBuf {
        state_dir.join(STATE_FILE)
    }

    /// Reads the state of the lab in `state_dir`.
    pub fn load(state_dir: &Path) -> Result<LabState, StateError> {
        let path = Self::file(state_dir);
        let text = std::fs::read(&path).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Writes the state atomically (temporary file, then rename).
    pub fn save(&self) -> Result<(), StateError> {
        let path = Self::file(&self.state_dir);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.state_dir).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("state serializes");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// The pod with key `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<&PodRecord> {
        self.pods.iter().find(|p| p.key == key)
    }

    /// Removes everything recorded, in this order, continuing past failures:
    ///
    /// 1. CNI `DEL` for every pod, in reverse creation order (chained plugins such as
    ///    palisade-cni unregister the pod while the agent still runs);
    /// 2. stop servers, other processes, then the agent (PID + start time checked);
    /// 3. delete pod namespaces, then the node namespace (taking host veths with it);
    /// 4. remove recorded pins under `/sys/fs/bpf` (and nothing outside it);
    /// 5. remove the state directory (state file, IPAM store, logs).
    ///
    /// Idempotent: anything already gone is skipped. Returns the problems met.
    pub fn teardown(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for pod in self.pods.iter().rev() {
            if NetNs::open(&self.node_netns).exists() {
                if let Err(e) = self
                    .cni
                    .del(&pod.network, &pod.attachment, Some(&pod.cni_result))
                {
                    problems.push(format!("CNI DEL {}: {e}", pod.key));
                }
            }
        }
        for pod in &self.pods {
            if let Some(s) = &pod.server {
                s.stop();
            }
        }
        for p in &self.processes {
            p.stop();
        }
        if let Some(a) = &self.agent {
            a.stop();
        }
        for ns in self
            .pods
            .iter()
            .map(|p| p.netns.as_str())
            .chain([self.node_netns.as_str()])
        {
            if let Err(e) = NetNs::delete(ns) {
                problems.push(e.to_string());
            }
        }
        for pin in &self.pin_paths {
            if !pin.starts_with(BPFFS_ROOT) || pin.components().any(|c| c.as_os_str() == "..") {
                problems.push(format!(
                    "refusing to remove {} (not under {BPFFS_ROOT})",
                    pin.display()
                ));
                continue;
            }
            let r = if pin.is_dir() {
                std::fs::remove_dir_all(pin)
            } else {
                std::fs::remove_file(pin)
            };
            match r {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    problems.push(format!("removing {}: {e}", pin.display()))
                }
                _ => {}
            }
        }
        match std::fs::remove_dir_all(&self.state_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                problems.push(format!("removing {}: {e}", self.state_dir.display()))
            }
            _ => {}
        }
        problems
    }
}
