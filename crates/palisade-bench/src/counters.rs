//! Kernel counters of the programs on real traffic: `run_cnt` and `run_time_ns` of every
//! Palisade program (kept by the kernel while `kernel.bpf_stats_enabled` is 1), and
//! whether hardware instruction counters exist here.
//!
//! Why: wall-clock figures of a shared machine are noisy; the kernel's own time per
//! program run is not affected by what the other tenant's threads do between packets.

use std::path::{Path, PathBuf};

use aya::programs::ProgramInfo;

use crate::BenchError;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Sets `kernel.bpf_stats_enabled` to 1 and puts the old value back on drop (so also on
/// error and on Ctrl-C, which the runner turns into an error; only `kill -9` leaves it on).
#[derive(Debug)]
pub struct StatsGuard {
    previous: String,
}

impl StatsGuard {
    /// Enables the statistics.
    pub fn enable() -> Result<StatsGuard, BenchError> {
        let io = |what: &str| {
            let what = format!("{what} {SYSCTL}");
            move |source| BenchError::Io { what, source }
        };
        let previous = std::fs::read_to_string(SYSCTL).map_err(io("reading"))?;
        std::fs::write(SYSCTL, "1").map_err(io("writing 1 to"))?;
        Ok(StatsGuard {
            previous: previous.trim().to_string(),
        })
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.previous);
    }
}

/// Runs and run time summed over the programs pinned under `root/progs`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    /// Program runs.
    pub runs: u64,
    /// Nanoseconds spent in them.
    pub ns: u128,
}

impl Snapshot {
    /// Reads the counters of every program pinned under `root/progs`.
    pub fn read(root: &Path) -> Snapshot {
        let mut s = Snapshot::default();
        let dir: PathBuf = root.join("progs");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if let Ok(p) = ProgramInfo::from_pin(e.path()) {
                    s.runs += p.run_count();
                    s.ns += p.run_time().as_nanos();
                }
            }
        }
        s
    }

    /// Nanoseconds per run between `before` and `self`; `None` without runs.
    pub fn ns_per_run_since(&self, before: &Snapshot) -> Option<f64> {
        let runs = self.runs.checked_sub(before.runs)?;
        let ns = self.ns.checked_sub(before.ns)?;
        (runs > 0).then(|| ns as f64 / runs as f64)
    }
}

/// The first 64 bytes of `struct perf_event_attr` (PERF_ATTR_SIZE_VER0); libc does
/// not define it. `flags` holds the bitfield (bit 0 `disabled`, bit 6 `exclude_hv`).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

/// Whether `perf_event_open` of `PERF_COUNT_HW_INSTRUCTIONS` works on this machine
/// (what `bpftool prog profile` needs for instructions per run). `Err` says why not.
pub fn hw_instructions_available() -> Result<(), String> {
    const PERF_TYPE_HARDWARE: u32 = 0;
    const PERF_COUNT_HW_INSTRUCTIONS: u64 = 1;
    let attr = PerfEventAttr {
        kind: PERF_TYPE_HARDWARE,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: PERF_COUNT_HW_INSTRUCTIONS,
        flags: 1 | (1 << 6),
        ..Default::default()
    };
    // SAFETY: `attr` is a valid VER0 perf_event_attr that outlives the call; this
    // process, any CPU, no group, no flags. The fd, if any, is closed right away.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            0,
            -1,
            -1,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: `fd` is the descriptor just returned, owned here.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_per_run_is_the_delta_ratio_and_none_without_runs() {
        let a = Snapshot { runs: 10, ns: 1000 };
        let b = Snapshot { runs: 30, ns: 3000 };
        assert_eq!(b.ns_per_run_since(&a), Some(100.0));
        assert_eq!(a.ns_per_run_since(&a), None);
        assert_eq!(a.ns_per_run_since(&b), None);
    }
}
