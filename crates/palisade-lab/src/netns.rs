//! Named network namespaces (`/run/netns/<name>`, the `ip netns` convention) and
//! running code inside them.
//!
//! A namespace is created with `ip netns add`, which bind-mounts a fresh namespace on
//! `/run/netns/<name>` so it outlives any process: the lab's pods keep existing between
//! CLI invocations. Code enters a namespace per *thread* with `setns(2)`: network
//! namespaces may be joined by one thread of a multi-threaded process without
//! affecting the others, and every socket a thread creates belongs to the namespace the
//! thread is in at creation time. [`NetNs::run_in`] therefore spawns a fresh thread,
//! joins the namespace and runs the closure there; the thread ends with the closure, so
//! no thread is ever left in the wrong namespace. Child processes enter it between
//! `fork` and `exec` ([`NetNs::enter_on_exec`]).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{setns, CloneFlags};

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors about namespaces. Creation failures are not retryable (a name clash or
/// missing privilege); the others reflect the namespace vanishing under us.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// `ip netns add|del` failed.
    #[error("ip netns {op} {name}: {stderr}")]
    Ip {
        /// `add` or `del`.
        op: &'static str,
        /// The namespace.
        name: String,
        /// What `ip` said.
        stderr: String,
    },
    /// Running `ip` or opening the namespace file failed.
    #[error("namespace {name}")]
    Io {
        /// The namespace.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `setns(2)` failed.
    #[error("entering namespace {name}")]
    Setns {
        /// The namespace.
        name: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
}

/// A named network namespace. When created by [`NetNs::create`] the value *owns* it and
/// deletes it on drop (also while a panic unwinds) unless [`NetNs::persist`] was called.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    owned: bool,
}

impl NetNs {
    /// Creates `/run/netns/<name>` and brings its loopback up.
    pub fn create(name: &str) -> Result<NetNs, NetNsError> {
        run_ip("add", name, &["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_owned(),
            owned: true,
        };
        run_ip("add", name, &["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Refers to an existing namespace without owning it.
    pub fn open(name: &str) -> NetNs {
        NetNs {
            name: name.to_owned(),
            owned: false,
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the path given to CNI plugins as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// Whether the namespace still exists.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Gives up ownership: the namespace survives this value (the lab's `up` returns
    /// while pods keep existing). Returns the name.
    pub fn persist(mut self) -> String {
        self.owned = false;
        std::mem::take(&mut self.name)
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns its
    /// result. A panic in `f` is propagated to the caller.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, NetNsError> {
        let file = self.file()?;
        std::thread::scope(|s| {
            let handle = s.spawn(|| -> Result<R, NetNsError> {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetNsError::Setns {
                        name: self.name.clone(),
                        source,
                    }
                })?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Makes `cmd` join this namespace in the child, between `fork` and `exec`.
    /// The namespace file is opened now; the child only calls `setns(2)`, which is
    /// async-signal-safe.
    pub fn enter_on_exec(&self, cmd: &mut Command) -> Result<(), NetNsError> {
        use std::os::unix::process::CommandExt;
        let file = self.file()?;
        // SAFETY: the closure only calls setns(2) on an fd that stays open (moved into
        // the closure, which lives as long as `cmd`); no allocation or locking.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Writes a sysctl under `/proc/sys/` in this namespace, e.g.
    /// `sysctl("net/ipv4/ip_forward", "1")`. `/proc/sys/net` shows the namespace of
    /// the thread that opens it, so the write happens on a thread inside.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetNsError> {
        let path = Path::new("/proc/sys").join(key);
        self.run_in(|| std::fs::write(&path, value))?
            .map_err(|source| NetNsError::Io {
                name: format!("{} sysctl {key}", self.name),
                source,
            })
    }

    /// Deletes the namespace `name` if it exists. Idempotent.
    pub fn delete(name: &str) -> Result<(), NetNsError> {
        if !path_of(name).exists() {
            return Ok(());
        }
        run_ip("del", name, &["netns", "del", name])
    }

    fn file(&self) -> Result<File, NetNsError> {
        File::open(self.path()).map_err(|source| NetNsError::Io {
            name: self.name.clone(),
            source,
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = NetNs::delete(&self.name) {
                eprintln!("palisade-lab: cannot delete namespace {}: {e}", self.name);
            }
        }
    }
}

fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

fn run_ip(op: &'static str, name: &str, args: &[&str]) -> Result<(), NetNsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetNsError::Io {
            name: name.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetNsError::Ip {
            op,
            name: name.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_deleted_on_drop_even_when_a_closure_panics() {
        use palisade_testkit::{require, Need, IP};
        if !require(&[Need::Root, IP]) {
            return;
        }
        let name = format!("plt-unit-{}", std::process::id());
        let result = std::panic::catch_unwind(|| {
            let ns = NetNs::create(&name).unwrap();
            ns.sysctl("net/ipv4/ip_forward", "1").unwrap();
            let seen = ns
                .run_in(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap())
                .unwrap();
            assert_eq!(seen.trim(), "1", "sysctl written inside the namespace");
            let _ = ns.run_in(|| panic!("boom"));
        });
        assert!(result.is_err());
        assert!(!path_of(&name).exists(), "namespace must be gone");
    }
}
