//! The decision log file: JSON lines with a size cap and rotation, so a flood of
//! decisions cannot fill the node's disk. When the file would grow past `max_bytes`
//! it becomes `<file>.1` (the older ones shift to `.2` … `.<keep>`, the oldest is
//! removed) and a new file starts: the log takes at most `(keep + 1) * max_bytes`.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;

use crate::decisions::DecisionRecord;
use crate::ratelog::RateLog;

/// Default [`Rotation::max_bytes`]: 100 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
/// Default [`Rotation::keep`].
pub const DEFAULT_KEEP: u32 = 5;

/// How big the decision log may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Size of the current file at most, bytes (0 = no cap, never rotated).
    pub max_bytes: u64,
    /// Rotated files kept beside it (0 = the file is cut and restarted).
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
        }
    }
}

/// What the log counts, registered as metrics by [`crate::metrics::Metrics`].
#[derive(Debug, Clone, Default)]
pub struct LogCounters {
    /// Records written.
    pub written: Counter,
    /// Records not written: the write failed (disk full, ...).
    pub write_failed: Counter,
    /// Records not written: a single record larger than the cap.
    pub oversized: Counter,
    /// Rotations.
    pub rotations: Counter,
}

/// The open decision log.
pub struct DecisionLog {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
    counters: LogCounters,
    errors: RateLog,
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening decision log {}", path.display()))
}

/// `<path>.<n>`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

impl DecisionLog {
    /// Opens (appends to) `path`, creating its directory.
    pub fn open(path: &Path, rotation: Rotation, counters: LogCounters) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = open_append(path)?;
        let size = file
            .metadata()
            .with_context(|| format!("reading the size of {}", path.display()))?
            .len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
            counters,
            errors: RateLog::new(Duration::from_secs(10)),
        })
    }

    /// Appends one record; rotates first if it would pass the cap. Failures are
    /// counted and logged (rate-limited), never fatal: the datapath does not wait
    /// for its log.
    pub fn write(&mut self, record: &DecisionRecord) {
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let len = line.len() as u64;
        let cap = self.rotation.max_bytes;
        if cap > 0 && len > cap {
            self.counters.oversized.inc();
            return;
        }
        if cap > 0 && self.size + len > cap {
            if let Err(e) = self.rotate() {
                self.fail(&e);
                // Never pass the cap: drop the record rather than grow the file.
                self.counters.write_failed.inc();
                return;
            }
        }
        match self.file.write_all(&line) {
            Ok(()) => {
                self.size += len;
                self.counters.written.inc();
            }
            Err(e) => {
                self.counters.write_failed.inc();
                self.fail(&anyhow::Error::from(e).context("writing the decision log"));
            }
        }
    }

    fn fail(&mut self, e: &anyhow::Error) {
        if let Some(more) = self.errors.ready() {
            tracing::warn!(path = %self.path.display(), error = %format!("{e:#}"), also_failed = more, "decision log write failed; records dropped");
        }
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        let keep = self.rotation.keep;
        if keep == 0 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(rotated_path(&self.path, keep));
            for n in (1..keep).rev() {
                let from = rotated_path(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated_path(&self.path, n + 1))
                        .with_context(|| format!("rotating {}", from.display()))?;
                }
            }
            std::fs::rename(&self.path, rotated_path(&self.path, 1))
                .with_context(|| format!("rotating {}", self.path.display()))?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        self.counters.rotations.inc();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> DecisionRecord {
        DecisionRecord {
            time: "2026-12-01T00:00:00.000Z".into(),
            pod: "default/a".into(),
            direction: crate::decisions::Direction::Ingress,
            src: "10.0.0.2".into(),
            dst: "default/a".into(),
            src_ip: "10.0.0.2".into(),
            dst_ip: "10.0.0.1".into(),
            src_port: i as u16,
            dst_port: 80,
            protocol: "TCP".into(),
            verdict: crate::decisions::Verdict::Deny,
            reason: crate::decisions::Reason::PolicyDeny,
            policy: None,
            explanation: "x".repeat(i % 50),
        }
    }

    #[test]
    fn the_log_never_passes_its_cap_and_keeps_the_newest_files() {
        let dir = std::env::temp_dir().join(format!("palisade-dlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("decisions.jsonl");
        let counters = LogCounters::default();
        let rotation = Rotation {
            max_bytes: 4096,
            keep: 2,
        };
        let mut log = DecisionLog::open(&path, rotation, counters.clone()).unwrap();
        for i in 0..1000 {
            log.write(&record(i));
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        for p in [path.clone(), rotated_path(&path, 1), rotated_path(&path, 2)] {
            assert!(size(&p) <= 4096, "{} is {} bytes", p.display(), size(&p));
            assert!(size(&p) > 0, "{} is missing", p.display());
        }
        assert!(
            !rotated_path(&path, 3).exists(),
            "only 2 rotated files kept"
        );
        assert_eq!(counters.written.get(), 1000);
        assert!(counters.rotations.get() > 2);
        // The newest record is in the current file, whole lines only.
        let text = std::fs::read_to_string(&path).unwrap();
        let last: DecisionRecord = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last, record(999));
        // Reopening appends and keeps counting the size.
        drop(log);
        let mut log = DecisionLog::open(&path, rotation, counters.clone()).unwrap();
        for i in 0..200 {
            log.write(&record(i));
        }
        assert!(size(&path) <= 4096);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_larger_than_the_cap_is_counted_not_written() {
        let dir = std::env::temp_dir().join(format!("palisade-dlog2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("d.jsonl");
        let counters = LogCounters::default();
        let mut log = DecisionLog::open(
            &path,
            Rotation {
                max_bytes: 100,
                keep: 1,
            },
            counters.clone(),
        )
        .unwrap();
        log.write(&record(0));
        assert_eq!(counters.oversized.get(), 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
