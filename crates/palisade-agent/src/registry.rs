//! Interfaces registered by the CNI plugin, persisted so a restarted agent knows which
//! host-side interface belongs to which pod without asking anyone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// One pod's interface, as the CNI plugin reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// `namespace/name`.
    pub pod: String,
    /// Host-side interface name in the agent's network namespace.
    pub host_ifname: String,
    /// Its index, resolved when registered.
    pub ifindex: u32,
    /// Addresses assigned by the CNI chain (authoritative over the Pod object's status).
    pub ips: Vec<IpAddr>,
    /// CNI container id, so a stale DEL of an old sandbox does not remove a new one.
    pub container_id: String,
}

/// The registry, saved as JSON under the agent's state directory after every change.
#[derive(Debug, Default)]
pub struct Registry {
    path: Option<PathBuf>,
    by_pod: BTreeMap<String, Interface>,
}

impl Registry {
    /// Loads the registry saved at `path` (empty if absent).
    pub fn open(path: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let path = path.into();
        let by_pod = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("decoding {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self {
            path: Some(path),
            by_pod,
        })
    }

    /// Records or replaces a pod's interface and saves.
    pub fn insert(&mut self, iface: Interface) -> anyhow::Result<()> {
        self.by_pod.insert(iface.pod.clone(), iface);
        self.save()
    }

    /// Removes a pod's interface if the container id matches (or is empty) and saves.
    pub fn remove(&mut self, pod: &str, container_id: &str) -> anyhow::Result<Option<Interface>> {
        let matches = self.by_pod.get(pod).is_some_and(|i| {
            container_id.is_empty() || i.container_id.is_empty() || i.container_id == container_id
        });
        if !matches {
            return Ok(None);
        }
        let removed = self.by_pod.remove(pod);
        self.save()?;
        Ok(removed)
    }

    /// Every registered interface, by pod.
    pub fn interfaces(&self) -> &BTreeMap<String, Interface> {
        &self.by_pod
    }

    /// One pod's interface.
    pub fn get(&self, pod: &str) -> Option<&Interface> {
        self.by_pod.get(pod)
    }

    fn save(&self) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        write_atomically(path, &serde_json::to_vec_pretty(&self.by_pod)?)
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`, so a
/// crash leaves either the old or the new content, never half.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_survives_reopening_and_ignores_stale_container_ids() {
        let dir = std::env::temp_dir().join(format!("palisade-registry-{}", std::process::id()));
        let path = dir.join("endpoints.json");
        let mut r = Registry::open(&path).unwrap();
        r.insert(Interface {
            pod: "default/a".into(),
            host_ifname: "veth1".into(),
            ifindex: 7,
            ips: vec!["10.0.0.2".parse().unwrap()],
            container_id: "new".into(),
        })
        .unwrap();
        let mut again = Registry::open(&path).unwrap();
        assert_eq!(again.get("default/a").unwrap().ifindex, 7);
        assert!(
            again.remove("default/a", "old").unwrap().is_none(),
            "a DEL for an old sandbox must not remove the new one"
        );
        assert!(again.remove("default/a", "new").unwrap().is_some());
        assert!(Registry::open(&path).unwrap().interfaces().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
