//! Running upstream `kubectl` with one identity's kubeconfig, optionally inside a
//! network namespace (the lab's API server is reachable only from there).

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::{Binaries, Error};

/// Runs kubectl with `kubeconfig` (and `stdin`, if any), inside the network namespace
/// at `netns` if given, whatever its exit status (`auth can-i` answers "no" with 1).
pub(crate) fn output(
    binaries: &Binaries,
    kubeconfig: &Path,
    netns: Option<&Path>,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, Error> {
    let program = binaries.path("kubectl");
    let mut cmd = Command::new(&program);
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--request-timeout=20s")
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ns) = netns {
        crate::detached::enter_netns_on_exec(&mut cmd, ns)?;
    }
    let spawn_err = |source| Error::Spawn {
        program: program.display().to_string(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // Feed stdin from another thread while this one drains stdout and stderr, so a
    // large manifest and a large reply cannot block each other on full pipes.
    let writer = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_string();
        std::thread::spawn(move || {
            use std::io::Write;
            pipe.write_all(input.as_bytes())
        })
    });
    let out = child.wait_with_output().map_err(spawn_err)?;
    if let Some(w) = writer {
        // kubectl may exit before reading everything (a usage error): its status and
        // stderr then say why, which matters more than the broken pipe.
        let _ = w.join();
    }
    Ok(out)
}

/// Like [`output`], but a non-zero exit is an error quoting stderr; stdout on success.
pub(crate) fn run(
    binaries: &Binaries,
    kubeconfig: &Path,
    user: &str,
    netns: Option<&Path>,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, Error> {
    let out = output(binaries, kubeconfig, netns, args, stdin)?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("kubectl {} (as {user})", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
