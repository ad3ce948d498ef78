//! # palisade-deploy: Palisade's release artefacts, checked
//!
//! The artefacts themselves are not Rust: the Helm chart (`deploy/helm/palisade`), the
//! same rendered as plain manifests (`deploy/manifests/palisade.yaml`, written by
//! `scripts/render-manifests.sh`), and the OCI image (`scripts/image.sh`). This crate is
//! what their tests share: where the repository and Helm are, rendering the chart the
//! one way the manifests are rendered, and reading the output as JSON objects.
//! The tests (`tests/it`) are the point; start there.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The namespace the plain manifests install into (`helm --namespace` otherwise).
pub const NAMESPACE: &str = "palisade-system";
/// The release name the plain manifests are rendered with.
pub const RELEASE: &str = "palisade";

/// Errors of rendering and reading manifests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A program failed.
    #[error("{command} failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Rendered output is not YAML.
    #[error("document {index} of the rendered chart: {message}")]
    Yaml {
        /// Which document (from 0).
        index: usize,
        /// The reader's message.
        message: String,
    },
}

/// The repository's root (this crate is `crates/palisade-deploy`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/palisade-deploy is two levels down")
        .to_path_buf()
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repo_root().join("deploy/helm/palisade")
}

/// The plain manifests file.
pub fn manifests_file() -> PathBuf {
    repo_root().join("deploy/manifests/palisade.yaml")
}

/// Helm, as `scripts/helm-binary.sh` built it (`--where` never builds).
pub fn helm() -> Result<PathBuf, Error> {
    let script = repo_root().join("scripts/helm-binary.sh");
    let out = run(Command::new("bash").arg(&script).arg("--where"))?;
    Ok(PathBuf::from(out.trim()))
}

/// `helm template` of the chart with the manifests' release and namespace, the CRDs
/// included, plus `--set` pairs. With no pairs this is `deploy/manifests/palisade.yaml`
/// (the script renders it with the same arguments: [`MANIFEST_ARGS`]).
pub fn render(set: &[(&str, &str)]) -> Result<String, Error> {
    let mut cmd = Command::new(helm()?);
    cmd.arg("template").arg(RELEASE).arg(chart_dir());
    cmd.args(MANIFEST_ARGS);
    for (k, v) in set {
        cmd.arg("--set").arg(format!("{k}={v}"));
    }
    run(&mut cmd)
}

/// The arguments after `helm template palisade CHART` that render the plain manifests;
/// `scripts/render-manifests.sh` uses the same (if not, `manifests_are_the_chart_rendered` fails).
pub const MANIFEST_ARGS: &[&str] = &[
    "--namespace",
    NAMESPACE,
    "--include-crds",
    "--set",
    "createNamespace=true",
];

/// The documents of a multi-document YAML stream as JSON (empty documents dropped).
pub fn documents(yaml: &str) -> Result<Vec<Value>, Error> {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    yaml.split("\n---")
        .map(|d| d.trim_start_matches("---"))
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
        })
        .enumerate()
        .map(|(index, d)| {
            serde_saphyr::from_str_with_options::<Value>(d, options.clone()).map_err(|e| {
                Error::Yaml {
                    index,
                    message: e.to_string(),
                }
            })
        })
        .collect()
}

/// The object of `kind` named `name` among `docs`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

/// Runs `cmd`; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String, Error> {
    let program = format!("{:?}", cmd.get_program());
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Failed {
            command: format!(
                "{program} {}",
                cmd.get_args()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
