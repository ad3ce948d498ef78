//! A child process this crate started and alone stops: by its PID, on drop (which
//! also runs while a test unwinds from a panic). Output goes to a log file that
//! errors quote. The child also gets `PR_SET_PDEATHSIG` = SIGKILL, so a test process
//! killed outright (no unwinding) does not leave an API server behind. That signal
//! fires when the *thread* that started the child exits (prctl(2)), so start a
//! control plane from a thread that lives as long as it (a test's thread does).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;

/// How long a stopped process gets to exit after SIGTERM before SIGKILL, in seconds.
/// etcd and kube-apiserver shut down in well under a second when idle.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How many log lines an error quotes.
const TAIL_LINES: usize = 30;

/// A running child process, stopped (SIGTERM, then SIGKILL 10 s later) and
/// reaped when dropped.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Supervised {
    /// Starts `cmd` as component `name`, its stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, Error> {
        let out = File::create(log).map_err(|e| Error::io(log, e))?;
        let err = out.try_clone().map_err(|e| Error::io(log, e))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory
        // of the parent; it is the only thing done between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            program: format!("{name} ({:?})", cmd.get_program()),
            source,
        })?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Ok while the process runs; otherwise an error with its status and log tail.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log.clone(),
                tail: self.log_tail(),
            }),
            Err(e) => Err(Error::io(&self.log, e)),
        }
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Stops the process (SIGTERM, SIGKILL after the grace period) and reaps it.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill has no memory preconditions; `pid` is our own unreaped child,
        // so it cannot name another process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last [`TAIL_LINES`] lines of `log`, or a note that it could not be read.
pub(crate) fn log_tail(log: &Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", log.display()),
    }
}
