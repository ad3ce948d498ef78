//! Reading `-f PATH...` arguments: files or directories of manifests.

use std::path::{Path, PathBuf};

use anyhow::Context;
use palisade_policy::manifest::{self, Loaded};

/// Expands files and directories (recursively; `*.yaml`, `*.yml`, `*.json`, sorted) and
/// reads them as `(display name, text)` pairs for [`manifest::load`]. `-` reads stdin.
pub fn read_inputs(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading standard input")?;
            out.push(("<stdin>".to_string(), text));
            continue;
        }
        let meta = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            collect(p, &mut files)?;
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?;
                out.push((f.display().to_string(), text));
            }
        } else {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            out.push((p.display().to_string(), text));
        }
    }
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads and loads manifests, printing every error and warning to stderr.
/// Returns the loaded cluster and whether there were errors.
pub fn load_manifests(paths: &[PathBuf]) -> anyhow::Result<Loaded> {
    let inputs = read_inputs(paths)?;
    Ok(manifest::load(&inputs))
}
