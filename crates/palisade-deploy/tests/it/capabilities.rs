//! The agent's capabilities in the chart are enough, and why each is there: the real
//! agent runs in a network namespace of its own with exactly a capability set as its
//! bounding set (`setpriv`), and the real `palisade-cni` ADD registers a pod there.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use palisade_deploy::{documents, find, render};
use palisade_testkit::Need;

use crate::debug_bin_dir;

/// How long the agent gets to load its programs and open its socket.
const AGENT_DEADLINE: Duration = Duration::from_secs(30);

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// One run's namespaces, pins, files and agent; all removed when dropped.
struct Node {
    name: String,
    dir: tempfile::TempDir,
    pins: PathBuf,
    agent: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        for ns in [format!("{}p", self.name), self.name.clone()] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a run showed.
struct Outcome {
    /// The agent opened its socket (it loaded and pinned its programs).
    started: bool,
    /// CNI ADD returned success (policy in force).
    added: bool,
    /// `palisade endpoint diff` found the kernel matching.
    diff_ok: bool,
    /// The agent's log and the commands' output.
    log: String,
}

/// Runs the agent with bounding set `caps` (kernel names, e.g. `BPF`) and one pod.
fn run_with(caps: &[&str]) -> Outcome {
    start_node(caps).1
}

/// [`run_with`], keeping the node (its agent still running) for more checks.
fn start_node(caps: &[&str]) -> (Node, Outcome) {
    let bin = debug_bin_dir();
    let name = format!(
        "pkgcap{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    let mut node = Node {
        pins: PathBuf::from(format!("/sys/fs/bpf/palisade-test-{name}")),
        dir: tempfile::tempdir().unwrap(),
        name: name.clone(),
        agent: None,
    };
    let pod_ns = format!("{name}p");
    sh(Command::new("ip").args(["netns", "add", &name]));
    sh(Command::new("ip").args(["netns", "add", &pod_ns]));
    sh(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
    sh(Command::new("ip").args([
        "-n", &name, "link", "add", "hv0", "type", "veth", "peer", "name", "eth0", "netns", &pod_ns,
    ]));
    sh(Command::new("ip").args(["-n", &name, "link", "set", "hv0", "up"]));
    sh(Command::new("ip").args(["-n", &pod_ns, "addr", "add", "10.99.0.2/32", "dev", "eth0"]));
    sh(Command::new("ip").args(["-n", &pod_ns, "link", "set", "eth0", "up"]));
    let manifests = node.dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("pod.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: capspod, namespace: default, labels: {app: caps}}\n\
         spec: {containers: [{name: c, image: x}]}\nstatus: {podIP: 10.99.0.2}\n",
    )
    .unwrap();
    let socket = node.dir.path().join("agent.sock");
    let log_path = node.dir.path().join("agent.log");
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let netns = format!("--net=/run/netns/{name}");
    // nsenter, not `ip netns exec`: that remounts /sys and would hide bpffs.
    node.agent = Some(
        Command::new("nsenter")
            .arg(&netns)
            .arg("setpriv")
            .arg(format!("--bounding-set={bounding}"))
            .arg("--")
            .arg(bin.join("palisade"))
            .args(["agent", "--manifests"])
            .arg(&manifests)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(node.dir.path().join("state"))
            .arg("--pin-root")
            .arg(&node.pins)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .expect("nsenter setpriv palisade agent"),
    );
    let log = |extra: &str| {
        format!(
            "{}\n{extra}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    };
    let deadline = Instant::now() + AGENT_DEADLINE;
    while !socket.exists() {
        if node.agent.as_mut().unwrap().try_wait().unwrap().is_some() || Instant::now() > deadline {
            let log = log("");
            let outcome = Outcome {
                started: false,
                added: false,
                diff_ok: false,
                log,
            };
            return (node, outcome);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "t", "type": "palisade-cni",
        "agentSocket": socket,
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "hv0", "mac": "aa:00:00:00:00:01"},
                           {"name": "eth0", "mac": "aa:00:00:00:00:02", "sandbox": format!("/run/netns/{pod_ns}")}],
            "ips": [{"address": "10.99.0.2/32", "interface": 1}]}
    });
    let add = run_in(
        &netns,
        Command::new(bin.join("palisade-cni"))
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_NETNS", format!("/run/netns/{pod_ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=capspod"),
        Some(&conf.to_string()),
    );
    let diff = run_in(
        &netns,
        Command::new(bin.join("palisade"))
            .args(["endpoint", "diff", "default/capspod", "--socket"])
            .arg(&socket),
        None,
    );
    let log = log(&format!("ADD: {}\ndiff: {}", add.1, diff.1));
    (
        node,
        Outcome {
            started: true,
            added: add.0,
            diff_ok: diff.0,
            log,
        },
    )
}

/// Runs `cmd` in the node namespace (nsenter); success and its output.
fn run_in(netns: &str, cmd: &mut Command, stdin: Option<&str>) -> (bool, String) {
    use std::io::Write as _;
    let mut full = Command::new("nsenter");
    full.arg(netns).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            full.env(k, v);
        }
    }
    let mut child = full
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn chart_capabilities() -> Vec<String> {
    let docs = documents(&render(&[]).unwrap()).unwrap();
    let ds = find(&docs, "DaemonSet", "palisade-agent").unwrap();
    let agent = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .unwrap();
    agent["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_agent_enforces_with_the_charts_capabilities_and_needs_sys_admin_only_for_its_attachment_check(
) {
    if !palisade_testkit::require(&[Need::Root, Need::Bpffs, palisade_testkit::IP]) {
        return;
    }
    let caps = chart_capabilities();
    let all: Vec<&str> = caps.iter().map(String::as_str).collect();
    let run = run_with(&all);
    assert!(
        run.started && run.added && run.diff_ok,
        "with the chart's {all:?}:\n{}",
        run.log
    );

    let without = |drop: &[&str]| -> Vec<&str> {
        all.iter().copied().filter(|c| !drop.contains(c)).collect()
    };
    let run = run_with(&without(&["SYS_ADMIN"]));
    assert!(
        run.started && run.added,
        "enforcement works without SYS_ADMIN:\n{}",
        run.log
    );
    assert!(
        !run.diff_ok && run.log.contains("bpf_prog_get_fd_by_id"),
        "the attachment check needs it:\n{}",
        run.log
    );

    let run = run_with(&without(&["SYS_ADMIN", "PERFMON"]));
    assert!(
        !run.started && run.log.contains("BPF_PROG_LOAD"),
        "the programs need PERFMON:\n{}",
        run.log
    );
}

/// The kernel id of the program pinned at `pin` (bpftool), if any.
fn prog_id(pin: &std::path::Path) -> Option<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "pinned"])
        .arg(pin)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["id"].as_u64()
}

fn prog_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn uninstall_after_the_agent_stops_removes_the_pins_and_the_kernel_frees_the_programs() {
    if !palisade_testkit::require(&[
        Need::Root,
        Need::Bpffs,
        palisade_testkit::IP,
        Need::Program {
            name: "bpftool",
            package: "bpftool",
        },
    ]) {
        return;
    }
    let caps = chart_capabilities();
    let all: Vec<&str> = caps.iter().map(String::as_str).collect();
    let (mut node, run) = start_node(&all);
    assert!(run.started && run.added && run.diff_ok, "{}", run.log);
    let progs: Vec<PathBuf> = std::fs::read_dir(node.pins.join("progs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let ids: Vec<u64> = progs.iter().filter_map(|p| prog_id(p)).collect();
    assert!(
        !ids.is_empty() && ids.len() == progs.len(),
        "pinned programs {progs:?} ids {ids:?}"
    );
    // The agent stops (as the DaemonSet is deleted): enforcement stays, pinned.
    let mut agent = node.agent.take().unwrap();
    agent.kill().unwrap();
    agent.wait().unwrap();
    assert!(
        ids.iter().all(|&id| prog_exists(id)),
        "programs outlive the agent"
    );

    let conf = node.dir.path().join("net.d");
    std::fs::create_dir(&conf).unwrap();
    let list =
        r#"{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"ptp"},{"type":"palisade-cni"}]}"#;
    std::fs::write(conf.join("10-k.conflist"), list).unwrap();
    let out = Command::new(debug_bin_dir().join("palisade-cni"))
        .args(["uninstall", "--conf-dir"])
        .arg(&conf)
        .arg("--pin-root")
        .arg(&node.pins)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(conf.join("10-k.conflist")).unwrap(),
        r#"{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"ptp"}]}"#
    );
    assert!(!node.pins.exists());
    // Unpinned and unlinked, the kernel frees the programs: nothing is left on the
    // pod's interface (the kernel releases a program once nothing refers to it; poll).
    let deadline = Instant::now() + Duration::from_secs(10);
    while ids.iter().any(|&id| prog_exists(id)) {
        assert!(
            Instant::now() < deadline,
            "programs {ids:?} still loaded after uninstall"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
