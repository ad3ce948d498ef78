//! Where the agent reads the desired state from.
//!
//! The reconciler sees only [`Snapshot`]s, never a watch stream, so a Kubernetes API
//! source (a later crate built on kube-rs reflectors) can replace the directory source
//! without touching the reconciler.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use palisade_policy::manifest;
use palisade_policy::model::Cluster;

/// One consistent view of the desired state.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The cluster the reconciler enforces.
    pub cluster: Cluster,
    /// Problems found; each names the file, object and field.
    pub errors: Vec<String>,
    /// Warnings worth an operator's attention.
    pub warnings: Vec<String>,
}

/// A source of desired state.
pub trait Source: Send {
    /// Reads the whole desired state now.
    fn load(&mut self) -> anyhow::Result<Snapshot>;

    /// A cheap check of whether [`Source::load`] may now return something new.
    /// Sources that are notified of changes may always answer `true` after a notice.
    fn changed(&mut self) -> bool;
}

/// Manifests in a directory (recursively: `*.yaml`, `*.yml`, `*.json`), as the lab and
/// `palisade agent --manifests DIR` use.
///
/// **Last known good, per file.** When a file stops parsing or validating cleanly, the
/// objects it last held cleanly stay in force and the error is reported: an edit in
/// progress or a typo never removes policy that is being enforced. A file that was never
/// clean contributes its valid objects only (the core rejects bad objects one by one).
#[derive(Debug)]
pub struct DirectorySource {
    dir: PathBuf,
    /// Text of each file the last time it loaded without errors.
    last_good: BTreeMap<PathBuf, String>,
    /// Modification stamp of the directory tree at the last load.
    stamp: Option<Vec<(PathBuf, SystemTime, u64)>>,
}

impl DirectorySource {
    /// A source reading `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            last_good: BTreeMap::new(),
            stamp: None,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && d == self.dir => {
                    return Ok(out)
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("reading directory {}", d.display()))
                }
            };
            for entry in entries {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if is_manifest(&path) {
                    out.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn current_stamp(&self) -> anyhow::Result<Vec<(PathBuf, SystemTime, u64)>> {
        let mut stamp = Vec::new();
        for f in self.files()? {
            if let Ok(md) = std::fs::metadata(&f) {
                stamp.push((f, md.modified().unwrap_or(SystemTime::UNIX_EPOCH), md.len()));
            }
        }
        Ok(stamp)
    }
}

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

impl Source for DirectorySource {
    fn load(&mut self) -> anyhow::Result<Snapshot> {
        self.stamp = Some(self.current_stamp()?);
        let mut chosen = Vec::new();
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut seen = Vec::new();
        for path in self.files()? {
            let name = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                // Removed between listing and reading: treat as removed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {name}")),
            };
            seen.push(path.clone());
            let alone = manifest::load(&[(name.clone(), text.clone())]);
            if alone.errors.is_empty() {
                self.last_good.insert(path, text.clone());
                chosen.push((name, text));
            } else {
                errors.extend(alone.errors.iter().map(|e| e.to_string()));
                match self.last_good.get(&path) {
                    Some(good) => {
                        warnings.push(format!("{name}: keeping the last version that loaded cleanly until the errors are fixed"));
                        chosen.push((name, good.clone()));
                    }
                    None => chosen.push((name, text)),
                }
            }
        }
        self.last_good.retain(|p, _| seen.contains(p));
        let loaded = manifest::load(&chosen);
        // Errors of files replaced by their last good version were reported above.
        for e in loaded.errors {
            let e = e.to_string();
            if !errors.contains(&e) {
                errors.push(e);
            }
        }
        warnings.extend(loaded.warnings.iter().map(|w| w.to_string()));
        Ok(Snapshot {
            cluster: loaded.cluster,
            errors,
            warnings,
        })
    }

    fn changed(&mut self) -> bool {
        match self.current_stamp() {
            Ok(s) => self.stamp.as_ref() != Some(&s),
            Err(_) => true,
        }
    }
}
