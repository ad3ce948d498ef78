//! Palisade's release artefacts: the chart and the plain manifests (`chart`), both
//! against the real API server (`kube`: server-side dry run, RBAC both ways), and the
//! OCI image (`image`).

mod capabilities;
mod chart;
mod image;
mod kube;

use std::path::PathBuf;

/// The directory of the workspace's debug binaries (`palisade`, `palisade-cni`), beside
/// this test's executable (`scripts/test.sh` builds them: `cargo build --workspace --bins`).
pub fn debug_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug/deps/it-*")
        .to_path_buf();
    for b in ["palisade", "palisade-cni"] {
        assert!(
            dir.join(b).is_file(),
            "{b} must be built in {} (cargo build --workspace --bins)",
            dir.display()
        );
    }
    dir
}
