//! The kubelet's state directory: one JSON record per pod it made, so a restarted
//! kubelet adopts its pods instead of recreating them, and `--teardown` removes
//! exactly what was made.
//!
//! ```text
//! <state-dir>/pods/<uid>.json      PodRecord (written before the netns is created)
//! <state-dir>/logs/<netns>.log     servers' and sender's stderr (arrival lines)
//! <state-dir>/ipam/                host-local's store (dataDir)
//! <state-dir>/addressing.json      gateways chosen per subnet
//! ```
//!
//! A record is written (atomically: temporary file then rename) *before* the pod's
//! namespace is created and updated after each step, so a kubelet killed half-way
//! leaves a record that names whatever exists, and teardown finds it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use palisade_lab::cni::{Attachment, CniRuntime, NetworkList};
use palisade_lab::process::ProcessRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A state directory problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading or writing failed.
    #[error("kubelet state {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record does not parse.
    #[error("kubelet state {path} is corrupt")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Milliseconds since the Unix epoch of each step, for measurements and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// CNI `ADD` returned (or, for host-network pods, the pod was taken on).
    pub network_ready_ms: Option<u128>,
    /// The sender had sent its first packet to every target (it was started the
    /// instant CNI `ADD` returned, and the kubelet waited for this before anything else).
    pub sender_started_ms: Option<u128>,
    /// Every server printed its ready line.
    pub servers_ready_ms: Option<u128>,
    /// The API server accepted the Running/Ready status.
    pub ready_reported_ms: Option<u128>,
}

/// One pod the kubelet made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The pod's own namespace; `None` for a host-network pod (it runs in the node's).
    pub netns: Option<String>,
    /// How plugins were run (node namespace, plugin directories), for `DEL`.
    pub cni: CniRuntime,
    /// The network list `ADD` ran, once it started.
    pub network: Option<NetworkList>,
    /// The attachment `ADD` ran with.
    pub attachment: Option<Attachment>,
    /// The chain's final `ADD` result, for `DEL`'s `prevResult`.
    pub cni_result: Option<Value>,
    /// The pod's addresses (the node's for host-network pods).
    pub ips: Vec<IpAddr>,
    /// Static addresses reserved in host-local's store, released on delete.
    pub reserved: Vec<IpAddr>,
    /// The sender, if the pod has targets.
    pub sender: Option<ProcessRecord>,
    /// The server on the pod's ports.
    pub server: Option<ProcessRecord>,
    /// When each step happened.
    #[serde(default)]
    pub timeline: Timeline,
}

impl PodRecord {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating) `root` and its subdirectories.
    pub fn open(root: &Path) -> Result<StateDir, RecordError> {
        for d in ["pods", "logs", "ipam"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(|source| RecordError::Io { path: p, source })?;
        }
        Ok(StateDir {
            root: root.to_owned(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// host-local's `dataDir`.
    pub fn ipam_dir(&self) -> PathBuf {
        self.root.join("ipam")
    }

    /// Where the gateways are remembered.
    pub fn addressing_file(&self) -> PathBuf {
        self.root.join("addressing.json")
    }

    /// The log of a pod's processes, named by its namespace (or uid when host-network).
    pub fn log(&self, stem: &str) -> PathBuf {
        self.root.join("logs").join(format!("{stem}.log"))
    }

    /// The log of `rec`'s sender and server.
    pub fn pod_log(&self, rec: &PodRecord) -> PathBuf {
        self.log(rec.netns.as_deref().unwrap_or(&rec.uid))
    }

    fn record_path(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(format!("{uid}.json"))
    }

    /// Writes a record atomically.
    pub fn save(&self, r: &PodRecord) -> Result<(), RecordError> {
        write_atomic(
            &self.record_path(&r.uid),
            &serde_json::to_vec_pretty(r).expect("records serialize"),
        )
    }

    /// Removes a record. Idempotent.
    pub fn remove(&self, uid: &str) -> Result<(), RecordError> {
        let path = self.record_path(uid);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RecordError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Every record. A corrupt one is returned as an error in the list (the others
    /// still load), so the caller can report it by name.
    pub fn load_all(&self) -> Result<Vec<Result<PodRecord, RecordError>>, RecordError> {
        let dir = self.root.join("pods");
        let entries = std::fs::read_dir(&dir).map_err(|source| RecordError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            out.push(
                std::fs::read(&path)
                    .map_err(|source| RecordError::Io {
                        path: path.clone(),
                        source,
                    })
                    .and_then(|b| {
                        serde_json::from_slice(&b).map_err(|source| RecordError::Corrupt {
                            path: path.clone(),
                            source,
                        })
                    }),
            );
        }
        Ok(out)
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RecordError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| RecordError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
