//! The decision log: one JSON line per verdict, naming the pod, the peer, the policy and
//! the rule behind it, or why the default applied.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How much the agent logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    /// Nothing.
    Off,
    /// Denies only.
    #[default]
    Denies,
    /// Every new-flow verdict (sampled by `sample`).
    All,
}

impl std::str::FromStr for LogMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(LogMode::Off),
            "denies" | "deny" => Ok(LogMode::Denies),
            "all" => Ok(LogMode::All),
            _ => Err(format!(
                "unknown decision log mode {s:?} (expected off, denies or all)"
            )),
        }
    }
}

/// One decision, as logged and streamed by `palisade flows` (part of the API).
pub use palisade_api::{DecisionRecord, Direction, Reason, Verdict};

/// A bounded history of recent records, for `palisade flows` without `--follow`.
#[derive(Debug)]
pub struct History {
    cap: usize,
    records: VecDeque<DecisionRecord>,
}

impl History {
    /// Keeps at most `cap` records.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            records: VecDeque::with_capacity(cap.min(4096)),
        }
    }

    /// Adds a record, dropping the oldest beyond the cap.
    pub fn push(&mut self, r: DecisionRecord) {
        if self.records.len() == self.cap {
            self.records.pop_front();
        }
        self.records.push_back(r);
    }

    /// Records, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &DecisionRecord> {
        self.records.iter()
    }
}

/// Whether a record passes `palisade flows` filters.
pub fn matches_filter(r: &DecisionRecord, pod: Option<&str>, verdict: Option<Verdict>) -> bool {
    pod.is_none_or(|p| r.pod == p || r.src == p || r.dst == p)
        && verdict.is_none_or(|v| r.verdict == v)
}

/// Formats a wall-clock time as RFC 3339 UTC with milliseconds.
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
