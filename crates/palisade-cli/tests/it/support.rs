//! Running the binary, and a lab guard that always tears down.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use palisade_testkit::Need;

/// The `palisade` binary under test.
pub fn palisade() -> Command {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// Runs and returns output; panics with stderr if it failed and `ok` is expected.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running palisade");
    if !out.status.success() {
        panic!(
            "{:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Directory holding `palisade-cni` (built beside the binary under test).
pub fn cni_dir() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_palisade"));
    let dir = exe.parent().unwrap().to_path_buf();
    assert!(
        dir.join("palisade-cni").is_file(),
        "palisade-cni must be built beside {} (cargo build --workspace --bins)",
        exe.display()
    );
    dir
}

/// Whether this lab test runs: it needs what a lab needs plus bpffs (the real agent
/// pins its programs). Panics as root or in CI when something is missing; `false`
/// (after printing `SKIPPED`) only for a developer (`palisade_testkit::require`).
pub fn privileged() -> bool {
    palisade_testkit::require(palisade_testkit::LAB) && palisade_testkit::require(&[Need::Bpffs])
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A lab that is brought down when dropped, even during a panic.
pub struct LabGuard {
    /// Lab name (short: namespace and interface names derive from it).
    pub name: String,
}

impl LabGuard {
    /// `palisade lab up` with these manifests.
    pub fn up(files: &[PathBuf]) -> LabGuard {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}x{n}", std::process::id() % 100_000);
        let guard = LabGuard { name };
        let mut cmd = palisade();
        cmd.args(["lab", "up", "--name", &guard.name, "--cni-bin"])
            .arg(cni_dir());
        for f in files {
            cmd.arg("-f").arg(f);
        }
        run(&mut cmd);
        guard
    }

    /// `palisade lab up` whose agent also gets `agent_args` (PALISADE_LAB_AGENT_ARGS,
    /// set for that command only).
    pub fn up_with_agent_args(files: &[PathBuf], agent_args: &str) -> LabGuard {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}x{n}", std::process::id() % 100_000);
        let guard = LabGuard { name };
        let mut cmd = palisade();
        cmd.args(["lab", "up", "--name", &guard.name, "--cni-bin"])
            .arg(cni_dir())
            .env("PALISADE_LAB_AGENT_ARGS", agent_args);
        for f in files {
            cmd.arg("-f").arg(f);
        }
        run(&mut cmd);
        guard
    }

    /// `palisade lab <args> --name <name>`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = palisade();
        c.arg("lab").args(args).args(["--name", &self.name]);
        c
    }

    /// Probes and returns the JSON.
    pub fn probe(&self, protocol: &str, port: u16, family: Option<&str>) -> serde_json::Value {
        let port = port.to_string();
        let mut args = vec![
            "probe",
            "--output",
            "json",
            "--protocol",
            protocol,
            "--port",
            &port,
        ];
        if let Some(f) = family {
            args.extend(["--family", f]);
        }
        let out = run(&mut self.cmd(&args));
        serde_json::from_slice(&out.stdout).expect("probe JSON")
    }

    /// Applies manifests (returns once in force).
    pub fn apply(&self, file: &Path) {
        let mut c = self.cmd(&["apply"]);
        c.arg("-f").arg(file);
        run(&mut c);
    }

    /// The lab's state file as JSON.
    pub fn state(&self) -> serde_json::Value {
        let p = PathBuf::from("/run/palisade-lab")
            .join(&self.name)
            .join("state.json");
        serde_json::from_slice(&std::fs::read(p).expect("lab state")).expect("state JSON")
    }

    /// The agent socket.
    pub fn socket(&self) -> PathBuf {
        PathBuf::from("/run/palisade-lab")
            .join(&self.name)
            .join("agent.sock")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = self.cmd(&["down"]).output();
    }
}

/// Verdict of one pair in a probe/simulate JSON.
pub fn verdict(m: &serde_json::Value, from: &str, to: &str) -> String {
    m["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["from"] == from && r["to"] == to)
        .unwrap_or_else(|| panic!("no pair {from} -> {to} in {m}"))["verdict"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `(from, to) -> verdict` of every pair.
pub fn verdicts(m: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = m["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["from"].as_str().unwrap().to_string(),
                r["to"].as_str().unwrap().to_string(),
                r["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}
