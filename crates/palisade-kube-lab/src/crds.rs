//! The network-policy-api CRDs, installed as users install them: the upstream
//! release's CRD files, here taken from the Go module cache at run time
//! (`go mod download -json MODULE@VERSION` gives the directory), never copied into
//! this repository, and applied with kubectl.
//!
//! Two releases are needed: v0.3.0 publishes ClusterNetworkPolicy (v1alpha2) and no
//! longer ships AdminNetworkPolicy/BaselineAdminNetworkPolicy; v0.1.1, the newest
//! release on the module proxy that ships them, has their v1alpha1 CRDs.

use std::path::PathBuf;
use std::process::Command;

use crate::{ControlPlane, Error};

/// The Go module that publishes the CRDs.
pub const MODULE: &str = "sigs.k8s.io/network-policy-api";

/// How long a CRD gets to become Established, in seconds (`kubectl wait`).
const ESTABLISHED_TIMEOUT_S: u32 = 60;

/// One CRD file of one release.
#[derive(Debug, Clone, Copy)]
pub struct Crd {
    /// Release of [`MODULE`].
    pub release: &'static str,
    /// Path inside the module.
    pub file: &'static str,
    /// The CRD's name (`PLURAL.GROUP`).
    pub name: &'static str,
    /// The API version it serves that Palisade reads.
    pub version: &'static str,
}

/// The CRDs Palisade needs, in the order they are applied.
pub const CRDS: &[Crd] = &[
    Crd {
        // Same version as deploy/k8s-build/go.mod requires (a unit test checks).
        release: "v0.3.0",
        file: "config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml",
        name: "clusternetworkpolicies.policy.networking.k8s.io",
        version: "v1alpha2",
    },
    Crd {
        release: "v0.1.1",
        file: "config/crd/policy.networking.k8s.io_adminnetworkpolicies.yaml",
        name: "adminnetworkpolicies.policy.networking.k8s.io",
        version: "v1alpha1",
    },
    Crd {
        release: "v0.1.1",
        file: "config/crd/policy.networking.k8s.io_baselineadminnetworkpolicies.yaml",
        name: "baselineadminnetworkpolicies.policy.networking.k8s.io",
        version: "v1alpha1",
    },
];

/// The directory of `MODULE@release` in the Go module cache, downloading it (with
/// checksum verification) if it is not there yet.
pub fn module_dir(release: &str) -> Result<PathBuf, Error> {
    let spec = format!("{MODULE}@{release}");
    // Outside any module, so that no go.mod around the caller changes the answer.
    let cwd = std::env::temp_dir();
    let out = Command::new(go_program())
        .args(["mod", "download", "-json", &spec])
        .current_dir(&cwd)
        .env("GO111MODULE", "on")
        .output()
        .map_err(|source| Error::Spawn {
            program: "go (Debian/upstream Go toolchain)".to_string(),
            source,
        })?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::Crds(format!(
            "`go mod download -json {spec}` printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })?;
    if let Some(err) = info.get("Error").and_then(|e| e.as_str()) {
        return Err(Error::Crds(format!("`go mod download {spec}`: {err}")));
    }
    match info.get("Dir").and_then(|d| d.as_str()) {
        Some(dir) if out.status.success() => Ok(PathBuf::from(dir)),
        _ => Err(Error::Crds(format!(
            "`go mod download -json {spec}` gave no Dir ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// `go` from PATH, else Go's upstream install location (a non-login shell's PATH may
/// lack it), as scripts/k8s-binaries.sh does.
pub fn go_program() -> PathBuf {
    let upstream = PathBuf::from("/usr/local/go/bin/go");
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("go").is_file()))
        .unwrap_or(false);
    if !on_path && upstream.is_file() {
        upstream
    } else {
        PathBuf::from("go")
    }
}

/// The CRD file of `crd` in the module cache; fails naming the path if the release
/// does not have it.
pub fn crd_file(crd: &Crd) -> Result<PathBuf, Error> {
    let path = module_dir(crd.release)?.join(crd.file);
    if !path.is_file() {
        return Err(Error::Crds(format!(
            "{MODULE}@{} has no {} (looked at {})",
            crd.release,
            crd.file,
            path.display()
        )));
    }
    Ok(path)
}

/// Applies every CRD of [`CRDS`] as admin (server-side apply, as a large CRD's
/// last-applied annotation can exceed the annotation size limit) and waits until
/// each is Established. Returns their names.
pub fn install(cp: &ControlPlane) -> Result<Vec<&'static str>, Error> {
    install_with(|args| cp.kubectl(cp.admin(), args, None).map(drop))
}

/// [`install`] through any admin `kubectl` (the lab's control plane runs it inside
/// the API server's namespace).
pub fn install_with(
    kubectl: impl Fn(&[&str]) -> Result<(), Error>,
) -> Result<Vec<&'static str>, Error> {
    for crd in CRDS {
        let path = crd_file(crd)?;
        let path = path.display().to_string();
        kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=palisade-kube-lab",
            "-f",
            &path,
        ])?;
    }
    for crd in CRDS {
        kubectl(&[
            "wait",
            "--for=condition=Established",
            &format!("--timeout={ESTABLISHED_TIMEOUT_S}s"),
            &format!("crd/{}", crd.name),
        ])?;
    }
    Ok(CRDS.iter().map(|c| c.name).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_network_policy_release_is_the_one_the_go_module_pins() {
        let go_mod = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/k8s-build/go.mod");
        let text = std::fs::read_to_string(go_mod).expect("deploy/k8s-build/go.mod");
        let pinned = text
            .lines()
            .map(str::split_whitespace)
            .find_map(|mut w| (w.next() == Some(MODULE)).then(|| w.next()).flatten())
            .expect("go.mod requires sigs.k8s.io/network-policy-api");
        let cnp = CRDS
            .iter()
            .find(|c| c.name.starts_with("clusternetworkpolicies."))
            .expect("ClusterNetworkPolicy is installed");
        assert_eq!(cnp.release, pinned);
    }

    #[test]
    fn every_crd_release_is_prefetched_by_the_build_script() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/k8s-binaries.sh");
        let text = std::fs::read_to_string(script).expect("scripts/k8s-binaries.sh");
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("crd_releases=("))
            .expect("the script lists crd_releases");
        for crd in CRDS {
            let spec = format!("{MODULE}@{}", crd.release);
            assert!(line.contains(&spec), "{spec} missing from: {line}");
        }
    }
}
