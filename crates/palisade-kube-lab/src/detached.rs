//! Processes that outlive the program that starts them (the lab's control plane
//! outlives `palisade lab up`): a session of their own, no parent-death signal,
//! output to a log file, optionally inside a network namespace, and recorded by PID
//! and start time ([`ProcessRecord`]) so a later `lab down` stops exactly them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use palisade_lab::process::ProcessRecord;

use crate::Error;

/// Makes `cmd` join the network namespace at `netns` between fork and exec. The file
/// is opened now; the child only calls setns(2), which is async-signal-safe.
pub(crate) fn enter_netns_on_exec(cmd: &mut Command, netns: &Path) -> Result<(), Error> {
    let file = File::open(netns).map_err(|e| Error::io(netns, e))?;
    // SAFETY: the closure only calls setns(2) on an fd it owns (moved in, alive as
    // long as `cmd`); no allocation or locking.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Starts `cmd` as `role` in a new session (so it survives the caller and its
/// terminal), inside `netns` if given, stdout and stderr appended to `log`.
pub fn spawn_detached(
    role: &str,
    mut cmd: Command,
    log: &Path,
    netns: Option<&Path>,
) -> Result<ProcessRecord, Error> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(log, e))?;
    let err = out.try_clone().map_err(|e| Error::io(log, e))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    if let Some(ns) = netns {
        enter_netns_on_exec(&mut cmd, ns)?;
    }
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        program: format!("{role} ({:?})", cmd.get_program()),
        source,
    })?;
    let pid = child.id() as i32;
    ProcessRecord::of(role, pid).ok_or_else(|| Error::Exited {
        name: role.to_string(),
        status: "exited at once".to_string(),
        log: log.to_path_buf(),
        tail: crate::process::log_tail(log),
    })
}
