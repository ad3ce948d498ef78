//! The one error type of this crate: every variant says what was being done and
//! where to look (a path, a command, a log file).

use std::path::PathBuf;

/// Why the control plane could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upstream binaries were not found.
    #[error("Kubernetes binaries not found: {0}\n\nhint: run scripts/k8s-binaries.sh (or scripts/setup.sh) as root")]
    MissingBinaries(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A certificate or key could not be generated.
    #[error("generating {what}: {source}")]
    Pki {
        /// Which certificate or key.
        what: String,
        /// The underlying error.
        source: rcgen::Error,
    },
    /// A process could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A started process exited while it should be serving.
    #[error("{name} exited ({status}); last lines of {log}:\n{tail}")]
    Exited {
        /// Which component.
        name: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A condition did not hold before its deadline.
    #[error("timed out after {seconds}s waiting for {what}{detail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// Deadline in seconds.
        seconds: u64,
        /// The last observation (a log tail or command output), if any.
        detail: String,
    },
    /// A command (kubectl, go) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A CRD source file was missing or unusable.
    #[error("network-policy-api CRDs: {0}")]
    Crds(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
