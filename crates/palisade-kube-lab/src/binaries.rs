//! Where the upstream binaries are: built by `scripts/k8s-binaries.sh` into a cache
//! outside the clone, keyed by version and pins, so this crate asks the script
//! (`--where`, which never builds) rather than guessing the cache layout.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// Environment variable naming a directory that holds the binaries; it overrides
/// the script's cache (for a machine that built them elsewhere).
pub const BINARIES_ENV: &str = "PALISADE_K8S_BIN";

/// The script that builds the binaries and, with `--where`, prints their directory.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/k8s-binaries.sh");

/// The directory holding the upstream control-plane binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// Every binary the script builds; [`Binaries::at`] checks them all.
    pub const NAMES: &'static [&'static str] = &[
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "kubectl",
    ];

    /// `$PALISADE_K8S_BIN` if set, else the directory `scripts/k8s-binaries.sh --where`
    /// prints. Fails (never builds) when they have not been built.
    pub fn locate() -> Result<Self, Error> {
        if let Some(dir) = std::env::var_os(BINARIES_ENV).filter(|d| !d.is_empty()) {
            return Self::at(PathBuf::from(dir));
        }
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg("--where")
            .output()
            .map_err(|source| Error::Spawn {
                program: SCRIPT.to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::MissingBinaries(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Self::at(PathBuf::from(dir))
    }

    /// The binaries in `dir`; fails naming the first one missing.
    pub fn at(dir: PathBuf) -> Result<Self, Error> {
        for name in Self::NAMES {
            let p = dir.join(name);
            if !is_executable(&p) {
                return Err(Error::MissingBinaries(format!(
                    "{} is missing or not executable",
                    p.display()
                )));
            }
        }
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one binary, e.g. `kubectl`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
