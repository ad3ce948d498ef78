//! Processes the lab starts and must later stop: recorded by PID *and* start time, so
//! a recycled PID is never signalled.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// How long [`ProcessRecord::stop`] waits after `SIGTERM` before `SIGKILL`.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// A process the lab started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What it is, e.g. `server x/a` or `agent`.
    pub role: String,
    /// Its PID.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot) when it
    /// was recorded; a process with the same PID but another start time is not ours.
    pub start_ticks: u64,
}

impl ProcessRecord {
    /// Records the running process `pid`. `None` if it is already gone.
    pub fn of(role: impl Into<String>, pid: i32) -> Option<ProcessRecord> {
        Some(ProcessRecord {
            role: role.into(),
            pid,
            start_ticks: start_ticks(pid)?,
        })
    }

    /// Whether this very process is still alive (not a zombie, not a recycled PID).
    pub fn is_alive(&self) -> bool {
        match stat(self.pid) {
            Some((state, ticks)) => ticks == self.start_ticks && state != 'Z' && state != 'X',
            None => false,
        }
    }

    /// Stops the process: `SIGTERM`, up to [`STOP_GRACE`], then `SIGKILL`. Reaps it if
    /// it is our child. Does nothing if it is gone or the PID now belongs to another
    /// process. Idempotent.
    pub fn stop(&self) {
        let pid = Pid::from_raw(self.pid);
        if self.is_alive() {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while self.is_alive() && Instant::now() < deadline {
                reap(pid);
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.is_alive() {
                let _ = kill(pid, Signal::SIGKILL);
                let deadline = Instant::now() + STOP_GRACE;
                while self.is_alive() && Instant::now() < deadline {
                    reap(pid);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        reap(pid);
    }
}

/// Collects `pid`'s exit status if it is our child; harmless otherwise.
fn reap(pid: Pid) {
    let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
}

fn start_ticks(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, t)| t)
}

/// (state, start time) from `/proc/<pid>/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    let state = fields.first()?.chars().next()?;
    Some((state, fields.get(19)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_kills_our_child_and_a_recycled_pid_is_left_alone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let rec = ProcessRecord::of("sleep", child.id() as i32).unwrap();
        assert!(rec.is_alive());
        let stranger = ProcessRecord {
            start_ticks: rec.start_ticks + 1,
            ..rec.clone()
        };
        stranger.stop();
        assert!(
            rec.is_alive(),
            "a record with another start time must not signal"
        );
        rec.stop();
        let _ = child.try_wait(); // already reaped by stop(); keeps the handle honest
        assert!(!rec.is_alive());
    }
}
