//! Interfaces registered by the CNI plugin, persisted so a restarted agent knows which
//! host-side interface belongs to which pod without asking anyone.
//!
//! A registration is the only thing that tells the agent where to enforce, so it is
//! guarded like policy itself:
//!
//! 1. An interface has one owner: a registration naming an interface (by index) that
//!    another registration (another pod, or another sandbox of the same pod) holds is
//!    refused ([`RegistryError::InterfaceTaken`]).
//! 2. Only the owner removes it: `unregister` must name the same pod and the same
//!    non-empty container id, and, when it names an interface, the same interface.
//! 3. A registration whose pod has never been in the desired state expires after a TTL
//!    ([`DEFAULT_REGISTRATION_TTL`]); one whose pod has been seen never expires (if the
//!    pod leaves the desired state its interface stays fail-closed until the CNI DEL
//!    comes or the kernel deletes the interface, see `Reconciler::prune_registrations`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// How long a registration may wait for its pod to appear in the desired state before
/// it is forgotten: 10 minutes, far above the 30 s an ADD waits (`server::REGISTER_WAIT`),
/// so only registrations whose ADD already failed (or ran with `failPolicy: open`) and
/// whose DEL never came are cleaned up. Checked at every pass (at least every 30 s).
pub const DEFAULT_REGISTRATION_TTL: Duration = Duration::from_secs(600);

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
    /// When it was registered, in seconds since the Unix epoch (0 in files written
    /// before this field existed).
    #[serde(default)]
    pub registered_at: u64,
    /// Whether its pod has been in the desired state since it registered. Files written
    /// before this field existed count as seen, so an upgrade never expires anything.
    #[serde(default = "seen_by_default")]
    pub seen: bool,
}

fn seen_by_default() -> bool {
    true
}

/// Why a registration or an unregistration was refused. Only [`RegistryError::Save`] is
/// retryable as is: the others name something the agent will not accept until the
/// request (or the other owner) changes.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The pod is not `namespace/name` with both parts non-empty.
    #[error("pod {pod:?}: the namespace and the name must both be non-empty")]
    BadPodName {
        /// What was given.
        pod: String,
    },
    /// The request carries no container id, so it cannot prove which sandbox it is.
    #[error("pod {pod}: the container id is empty")]
    EmptyContainerId {
        /// `namespace/name`.
        pod: String,
    },
    /// Another registration holds the interface.
    #[error(
        "pod {pod}: interface {ifname} (ifindex {ifindex}) already belongs to pod {owner} (container {owner_container})"
    )]
    InterfaceTaken {
        /// The pod asking.
        pod: String,
        /// The interface asked for.
        ifname: String,
        /// Its index.
        ifindex: u32,
        /// The pod holding it.
        owner: String,
        /// The owner's container id.
        owner_container: String,
    },
    /// No registration of this pod with this container id.
    #[error("pod {pod}: no registration with container id {container_id:?}")]
    Unknown {
        /// `namespace/name`.
        pod: String,
        /// The container id given.
        container_id: String,
    },
    /// The registration of this sandbox is on another interface than the one named.
    #[error("pod {pod}: container {container_id} is registered on {registered}, not {given}")]
    OtherInterface {
        /// `namespace/name`.
        pod: String,
        /// The container id.
        container_id: String,
        /// The interface it holds.
        registered: String,
        /// The interface the request named.
        given: String,
    },
    /// More addresses of one family than an endpoint entry holds: enforcing with some
    /// of them dropped would misjudge the pod's own traffic as spoofed, and the
    /// datapath would reject the whole pass.
    #[error("pod {pod}: {count} IPv{family} addresses; an endpoint holds at most {max}")]
    TooManyAddresses {
        /// `namespace/name`.
        pod: String,
        /// 4 or 6.
        family: u8,
        /// How many were given.
        count: usize,
        /// The datapath's limit.
        max: usize,
    },
    /// The change was made in memory but could not be saved.
    #[error("saving the interface registry")]
    Save(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl RegistryError {
    /// Whether the same request can succeed later: only saving (a full or read-only
    /// disk can recover); every other refusal names something the request must change.
    pub fn retryable(&self) -> bool {
        matches!(self, RegistryError::Save(_))
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

    /// Records a pod's interface (replacing the pod's previous sandbox, if any) and
    /// saves. Refused when the container id is empty or when another registration
    /// holds the same interface index (rule 1 of the module doc).
    pub fn insert(&mut self, iface: Interface) -> Result<(), RegistryError> {
        if !iface
            .pod
            .split_once('/')
            .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        {
            return Err(RegistryError::BadPodName { pod: iface.pod });
        }
        if iface.container_id.is_empty() {
            return Err(RegistryError::EmptyContainerId { pod: iface.pod });
        }
        for (family, max) in [
            (4, palisade_datapath::abi::MAX_IPS4),
            (6, palisade_datapath::abi::MAX_IPS6),
        ] {
            let count = iface
                .ips
                .iter()
                .filter(|ip| ip.is_ipv4() == (family == 4))
                .count();
            if count > max {
                return Err(RegistryError::TooManyAddresses {
                    pod: iface.pod,
                    family,
                    count,
                    max,
                });
            }
        }
        let same_owner = |o: &Interface| o.pod == iface.pod && o.container_id == iface.container_id;
        if let Some(owner) = self
            .by_pod
            .values()
            .find(|o| o.ifindex == iface.ifindex && !same_owner(o))
        {
            return Err(RegistryError::InterfaceTaken {
                pod: iface.pod.clone(),
                ifname: iface.host_ifname.clone(),
                ifindex: iface.ifindex,
                owner: owner.pod.clone(),
                owner_container: owner.container_id.clone(),
            });
        }
        // A repeated ADD of the same sandbox keeps its age and what was seen.
        let kept = self
            .by_pod
            .get(&iface.pod)
            .filter(|o| same_owner(o))
            .map(|o| (o.registered_at, o.seen));
        let mut iface = iface;
        if let Some((registered_at, seen)) = kept {
            iface.registered_at = registered_at;
            iface.seen |= seen;
        }
        self.by_pod.insert(iface.pod.clone(), iface);
        self.save()
    }

    /// Removes the registration of `pod` made by sandbox `container_id` and saves
    /// (rule 2 of the module doc). `host_ifname`, when not empty, must be the
    /// registered interface.
    pub fn remove(
        &mut self,
        pod: &str,
        container_id: &str,
        host_ifname: &str,
    ) -> Result<Interface, RegistryError> {
        self.owned(pod, container_id, host_ifname)?;
        let removed = self.by_pod.remove(pod).expect("checked above");
        self.save()?;
        Ok(removed)
    }

    /// The registration of `pod` made by sandbox `container_id` (never empty), on
    /// `host_ifname` when that is not empty; an error naming the mismatch otherwise.
    pub fn owned(
        &self,
        pod: &str,
        container_id: &str,
        host_ifname: &str,
    ) -> Result<&Interface, RegistryError> {
        if container_id.is_empty() {
            return Err(RegistryError::EmptyContainerId { pod: pod.into() });
        }
        let Some(iface) = self
            .by_pod
            .get(pod)
            .filter(|i| i.container_id == container_id)
        else {
            return Err(RegistryError::Unknown {
                pod: pod.into(),
                container_id: container_id.into(),
            });
        };
        if !host_ifname.is_empty() && iface.host_ifname != host_ifname {
            return Err(RegistryError::OtherInterface {
                pod: pod.into(),
                container_id: container_id.into(),
                registered: iface.host_ifname.clone(),
                given: host_ifname.into(),
            });
        }
        Ok(iface)
    }

    /// Removes a registration the agent itself found dead (expired, or its interface
    /// is gone) and saves.
    pub fn forget(&mut self, pod: &str) -> Result<Option<Interface>, RegistryError> {
        let removed = self.by_pod.remove(pod);
        if removed.is_some() {
            self.save()?;
        }
        Ok(removed)
    }

    /// Marks the registrations whose pod is in the desired state as seen (they never
    /// expire after that) and saves if anything changed.
    pub fn mark_seen(
        &mut self,
        in_desired_state: impl Fn(&str) -> bool,
    ) -> Result<(), RegistryError> {
        let mut changed = false;
        for iface in self.by_pod.values_mut() {
            if !iface.seen && in_desired_state(&iface.pod) {
                iface.seen = true;
                changed = true;
            }
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }

    /// The registrations whose pod was never seen and that are older than `ttl` at
    /// `now` (seconds since the epoch), without removing them.
    pub fn expired(&self, now: u64, ttl: Duration) -> Vec<String> {
        self.by_pod
            .values()
            .filter(|i| !i.seen && now.saturating_sub(i.registered_at) >= ttl.as_secs())
            .map(|i| i.pod.clone())
            .collect()
    }

    /// Every registered interface, by pod.
    pub fn interfaces(&self) -> &BTreeMap<String, Interface> {
        &self.by_pod
    }

    /// One pod's interface.
    pub fn get(&self, pod: &str) -> Option<&Interface> {
        self.by_pod.get(pod)
    }

    fn save(&self) -> Result<(), RegistryError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes =
            serde_json::to_vec_pretty(&self.by_pod).map_err(|e| RegistryError::Save(e.into()))?;
        write_atomically(path, &bytes).map_err(|e| RegistryError::Save(e.into()))
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

    fn iface(pod: &str, ifname: &str, ifindex: u32, container: &str) -> Interface {
        Interface {
            pod: pod.into(),
            host_ifname: ifname.into(),
            ifindex,
            ips: vec!["10.0.0.2".parse().unwrap()],
            container_id: container.into(),
            registered_at: 1_000,
            seen: false,
        }
    }

    #[test]
    fn registry_survives_reopening_and_ignores_stale_container_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoints.json");
        let mut r = Registry::open(&path).unwrap();
        r.insert(iface("default/a", "veth1", 7, "new")).unwrap();
        let mut again = Registry::open(&path).unwrap();
        assert_eq!(again.get("default/a").unwrap().ifindex, 7);
        assert!(
            matches!(
                again.remove("default/a", "old", ""),
                Err(RegistryError::Unknown { .. })
            ),
            "a DEL for an old sandbox must not remove the new one"
        );
        again.remove("default/a", "new", "veth1").unwrap();
        assert!(Registry::open(&path).unwrap().interfaces().is_empty());
    }

    // Issue 8: `"container_id": ""` detached any pod.
    #[test]
    fn issue_8_an_empty_container_id_neither_registers_nor_unregisters() {
        let mut r = Registry::default();
        assert!(matches!(
            r.insert(iface("default/a", "veth1", 7, "")),
            Err(RegistryError::EmptyContainerId { .. })
        ));
        for bad in ["/a", "default/", "a", "a/b/c"] {
            assert!(matches!(
                r.insert(iface(bad, "veth1", 7, "c1")),
                Err(RegistryError::BadPodName { .. })
            ));
        }
        r.insert(iface("default/a", "veth1", 7, "c1")).unwrap();
        assert!(matches!(
            r.remove("default/a", "", ""),
            Err(RegistryError::EmptyContainerId { .. })
        ));
        assert!(r.get("default/a").is_some(), "the registration must stay");
    }

    // Issue 8: a registration naming another
    // pod's interface took it over, and its DEL removed that pod's programs.
    #[test]
    fn issue_8_an_interface_has_one_owner_and_only_the_owner_removes_it() {
        let mut r = Registry::default();
        r.insert(iface("default/victim", "vethv", 7, "cv")).unwrap();
        let err = r
            .insert(iface("default/attacker", "vethv", 7, "ca"))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("already belongs to pod default/victim"),
            "{err}"
        );
        // The same pod from another sandbox cannot take it either.
        assert!(matches!(
            r.insert(iface("default/victim", "vethv", 7, "other")),
            Err(RegistryError::InterfaceTaken { .. })
        ));
        // The right pod and sandbox naming another interface does not remove it.
        assert!(matches!(
            r.remove("default/victim", "cv", "vethx"),
            Err(RegistryError::OtherInterface { .. })
        ));
        assert!(matches!(
            r.remove("default/attacker", "ca", "vethv"),
            Err(RegistryError::Unknown { .. })
        ));
        assert_eq!(r.get("default/victim").unwrap().container_id, "cv");
        // A repeated ADD of the owner is fine; a new sandbox on a new interface too.
        r.insert(iface("default/victim", "vethv", 7, "cv")).unwrap();
        r.insert(iface("default/victim", "vethw", 8, "cv2"))
            .unwrap();
        assert_eq!(r.get("default/victim").unwrap().ifindex, 8);
    }

    #[test]
    fn a_registration_with_more_addresses_than_an_endpoint_holds_is_refused() {
        let mut r = Registry::default();
        let many = (1..=palisade_datapath::abi::MAX_IPS4 as u8 + 1)
            .map(|i| IpAddr::from([10, 0, 0, i]))
            .collect();
        let err = r
            .insert(Interface {
                ips: many,
                ..iface("default/a", "veth1", 7, "c1")
            })
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::TooManyAddresses { family: 4, .. }),
            "{err}"
        );
        assert!(r.get("default/a").is_none());
    }

    #[test]
    fn only_registrations_whose_pod_was_never_seen_expire() {
        let mut r = Registry::default();
        r.insert(iface("default/ghost", "veth1", 7, "c1")).unwrap();
        r.insert(iface("default/real", "veth2", 8, "c2")).unwrap();
        r.mark_seen(|p| p == "default/real").unwrap();
        let ttl = Duration::from_secs(600);
        assert!(r.expired(1_000 + 599, ttl).is_empty(), "not yet");
        assert_eq!(
            r.expired(1_000 + 600, ttl),
            vec!["default/ghost".to_string()]
        );
        // A repeated ADD does not make a registration young again.
        r.insert(Interface {
            registered_at: 5_000,
            ..iface("default/ghost", "veth1", 7, "c1")
        })
        .unwrap();
        assert_eq!(r.get("default/ghost").unwrap().registered_at, 1_000);
        assert!(r.forget("default/ghost").unwrap().is_some());
        assert!(r.expired(u64::MAX, ttl).is_empty());
    }

    #[test]
    fn files_written_before_expiry_existed_never_expire() {
        let old = r#"{"default/a":{"pod":"default/a","host_ifname":"veth1","ifindex":7,"ips":[],"container_id":"c"}}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoints.json");
        std::fs::write(&path, old).unwrap();
        let r = Registry::open(&path).unwrap();
        assert!(r.get("default/a").unwrap().seen);
        assert!(r.expired(u64::MAX, Duration::ZERO).is_empty());
    }
}
