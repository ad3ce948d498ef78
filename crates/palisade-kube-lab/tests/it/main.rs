//! Against the real upstream control plane (etcd + kube-apiserver from
//! scripts/k8s-binaries.sh). Without the binaries these tests fail as root or in CI
//! (palisade-testkit's rule) and skip, saying so, only for a developer.

use std::path::Path;
use std::time::{Duration, Instant};

use palisade_kube_lab::{crds, Binaries, ControlPlane, Kubeconfig};
use palisade_testkit::{decide, Context, Decision};

mod anp;
mod controllers;
mod rbac;

/// How long RBAC gets to see a new binding (the authorizer reads an informer cache).
const RBAC_DEADLINE: Duration = Duration::from_secs(30);

/// Starts a control plane, or `None` when a developer lacks the binaries (`go` too
/// when `needs_go`); panics as root or in CI.
pub fn start(needs_go: bool) -> Option<ControlPlane> {
    can_run(needs_go).then(|| ControlPlane::start().expect("control plane starts"))
}

/// Whether the binaries (and `go` when `needs_go`) are here: false (with `SKIPPED`)
/// only for a developer; panics as root or in CI.
pub fn can_run(needs_go: bool) -> bool {
    let mut missing = Vec::new();
    if let Err(e) = Binaries::locate() {
        missing.push(e.to_string());
    }
    if needs_go
        && std::process::Command::new(crds::go_program())
            .arg("version")
            .output()
            .is_err()
    {
        missing.push("needs `go` (the Go toolchain) to read the CRDs from the module cache".into());
    }
    let thread = std::thread::current();
    match decide(
        thread.name().unwrap_or("test"),
        &missing,
        Context::current(),
    ) {
        Decision::Run => true,
        Decision::Skip(msg) => {
            eprintln!("{msg}");
            false
        }
        Decision::Fail(msg) => panic!("{msg}"),
    }
}

/// `kubectl auth can-i VERB RESOURCE ...` as `who`: true for "yes", false for "no",
/// panics on anything else (an error is not a refusal).
pub fn can_i(cp: &ControlPlane, who: &Kubeconfig, args: &[&str]) -> bool {
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    let out = cp.kubectl_output(who, &full, None).expect("kubectl runs");
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {args:?} as {}: {other:?} {}",
            who.user(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Polls `can_i` until it answers `want` or the deadline passes; the last answer.
pub fn await_can_i(cp: &ControlPlane, who: &Kubeconfig, args: &[&str], want: bool) -> bool {
    let deadline = Instant::now() + RBAC_DEADLINE;
    loop {
        let got = can_i(cp, who, args);
        if got == want || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Addresses of the TCP sockets process `pid` listens on, from /proc.
fn listening_addresses(pid: u32) -> Vec<String> {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read fds") {
        let target = std::fs::read_link(fd.expect("fd").path()).unwrap_or_default();
        let t = target.to_string_lossy();
        if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
            inodes.insert(inode.to_string());
        }
    }
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).expect("net table");
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A = LISTEN), ..., inode is field 9.
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                found.push(format!("{table} {}", decode_addr(f[1])));
            }
        }
    }
    found
}

/// /proc/net/tcp's `HEXADDR:HEXPORT` (little-endian words) as `ip:port`.
fn decode_addr(s: &str) -> String {
    let (addr, port) = s.split_once(':').expect("addr:port");
    let port = u16::from_str_radix(port, 16).expect("port");
    let bytes: Vec<u8> = (0..addr.len() / 2)
        .map(|i| u8::from_str_radix(&addr[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let ip: std::net::IpAddr = match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[3], bytes[2], bytes[1], bytes[0]).into(),
        _ => {
            let mut b = [0u8; 16];
            for w in 0..4 {
                for i in 0..4 {
                    b[w * 4 + i] = bytes[w * 4 + 3 - i];
                }
            }
            std::net::Ipv6Addr::from(b).into()
        }
    };
    format!("{ip}:{port}")
}

#[test]
fn control_plane_is_ready_on_loopback_only_and_drop_stops_exactly_its_processes() {
    let Some(cp) = start(false) else { return };
    let ready = cp
        .kubectl(cp.admin(), &["get", "--raw", "/readyz"], None)
        .expect("readyz");
    assert_eq!(ready.trim(), "ok");
    assert!(
        cp.server().starts_with("https://127.0.0.1:"),
        "{}",
        cp.server()
    );

    let (etcd, apiserver) = cp.pids();
    for (name, pid) in [("etcd", etcd), ("kube-apiserver", apiserver)] {
        let listening = listening_addresses(pid);
        assert!(!listening.is_empty(), "{name} listens on nothing");
        for a in &listening {
            assert!(
                a.starts_with("tcp 127.0.0.1:"),
                "{name} listens beyond loopback: {a} (all: {listening:?})"
            );
        }
    }

    // A token the API server did not issue is refused outright (401), not treated as
    // anonymous.
    let bogus = cp
        .token_kubeconfig("nobody", "not-a-token")
        .expect("kubeconfig");
    let out = cp
        .kubectl_output(&bogus, &["get", "--raw", "/api/v1/namespaces"], None)
        .expect("kubectl runs");
    assert!(!out.status.success(), "a bogus token listed namespaces");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Unauthorized"), "{stderr}");

    let dir = cp.dir().to_path_buf();
    drop(cp);
    for pid in [etcd, apiserver] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still exists after drop"
        );
    }
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[test]
fn network_policy_api_crds_from_the_module_cache_are_established_and_served() {
    let Some(cp) = start(true) else { return };
    let names = crds::install(&cp).expect("CRDs install");
    assert_eq!(names.len(), crds::CRDS.len());
    for crd in crds::CRDS {
        let json = cp
            .kubectl(cp.admin(), &["get", "crd", crd.name, "-o", "json"], None)
            .expect("get crd");
        let v: serde_json::Value = serde_json::from_str(&json).expect("crd json");
        let established = v["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True");
        assert!(established, "{} not Established: {}", crd.name, v["status"]);
        let served = v["spec"]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .any(|ver| ver["name"] == crd.version && ver["served"] == true);
        assert!(served, "{} does not serve {}", crd.name, crd.version);
        // The API is live, not just registered: an empty list, not an error.
        let plural = crd.name.split('.').next().expect("plural");
        let list = cp
            .kubectl(cp.admin(), &["get", plural, "-A", "-o", "name"], None)
            .expect("list custom resources");
        assert_eq!(list.trim(), "", "fresh cluster holds no {plural}");
    }
}

#[test]
fn a_test_that_panics_still_stops_and_reaps_its_control_plane() {
    if !can_run(false) {
        return;
    }
    let payload = std::thread::spawn(|| {
        let cp = ControlPlane::start().expect("control plane starts");
        std::panic::panic_any(cp.pids());
    })
    .join()
    .expect_err("the thread panics");
    let (etcd, apiserver) = *payload.downcast::<(u32, u32)>().expect("pids");
    // Reaped, not merely killed: PR_SET_PDEATHSIG alone would leave zombies, which
    // still have a /proc entry. Only the drop during unwinding waits for them.
    for pid in [etcd, apiserver] {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left behind by a panicking test"
        );
    }
}
