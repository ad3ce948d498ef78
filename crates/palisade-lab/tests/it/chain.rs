//! The lab with `palisade-cni` chained after ptp, against a fake agent socket (the
//! agent's counterpart; the real agent is tested in its own crate).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use palisade_api::{Reply, Request};
use palisade_lab::{palisade_cni_plugin, Lab, LabConfig, LabError};

use crate::{can_run, unique_name};

/// Builds the plugin binary (it is not a dependency artifact of this crate) and
/// returns its directory.
fn palisade_cni_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "-q", "-p", "palisade-cni", "--bin", "palisade-cni"])
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building palisade-cni");
    let serve = PathBuf::from(env!("CARGO_BIN_EXE_palisade-lab-serve"));
    let dir = serve.parent().unwrap().to_owned();
    assert!(
        dir.join("palisade-cni").is_file(),
        "palisade-cni next to {}",
        serve.display()
    );
    dir
}

/// A fake agent that answers every request with `answer` and records requests.
fn fake_agent(path: &Path, answer: Reply) -> Arc<Mutex<Vec<Request>>> {
    let listener = UnixListener::bind(path).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_err() {
                continue;
            }
            if let Ok(req) = serde_json::from_str::<Request>(&line) {
                log.lock().unwrap().push(req);
            }
            let mut s = &stream;
            let _ = writeln!(s, "{}", serde_json::to_string(&answer).unwrap());
        }
    });
    seen
}

fn config(name: &str, socket: &Path) -> LabConfig {
    let mut c = LabConfig::new(name);
    c.state_dir = std::env::temp_dir().join(format!("palisade-lab-test-{name}"));
    c.server = None;
    c.plugin_dirs.push(palisade_cni_dir());
    c.chain = vec![palisade_cni_plugin(socket, 2000)];
    c
}

#[test]
fn chained_palisade_cni_registers_each_pod_with_its_host_veth_and_unregisters_on_down() {
    if !can_run() {
        return;
    }
    let name = unique_name();
    let sock = std::env::temp_dir().join(format!("{name}.sock"));
    let seen = fake_agent(&sock, Reply::in_force(3));
    let pods = crate::lab::pods();
    let lab = Lab::up(config(&name, &sock), &pods[..2]).expect("lab up");
    let state = lab.state().clone();
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        for (req, rec) in seen.iter().zip(&state.pods) {
            let Request::Register(e) = req else {
                panic!("expected register, got {req:?}")
            };
            assert_eq!(format!("{}/{}", e.namespace, e.pod), rec.key);
            assert_eq!(e.host_ifname, rec.host_ifname);
            assert_eq!(e.ips, rec.ips);
            assert_eq!(
                Path::new(&e.netns),
                Path::new("/run/netns").join(&rec.netns)
            );
        }
    }
    lab.check_pod("x/a")
        .expect("CHECK passes through ptp and palisade-cni");
    assert!(matches!(
        seen.lock().unwrap().last(),
        Some(Request::Check(_))
    ));
    assert!(lab.down().is_empty());
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.iter()
            .filter(|r| matches!(r, Request::Unregister(_)))
            .count(),
        2
    );
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn a_pod_the_agent_does_not_confirm_is_not_created() {
    if !can_run() {
        return;
    }
    let name = unique_name();
    let sock = std::env::temp_dir().join(format!("{name}.sock"));
    let _seen = fake_agent(&sock, Reply::error("policy does not compile"));
    let pods = crate::lab::pods();
    let mut lab = Lab::create(config(&name, &sock)).expect("lab");
    let err = lab.add_pod(&pods[0]).unwrap_err();
    assert!(matches!(err, LabError::Cni { .. }), "{err}");
    assert!(lab.state().pods.is_empty());
    assert!(
        !Path::new("/run/netns").join(format!("{name}-p0")).exists(),
        "namespace rolled back"
    );
    // ptp's DEL ran too: no host veth is left in the node namespace.
    let links = std::process::Command::new("ip")
        .args([
            "-n",
            &lab.state().node_netns,
            "-o",
            "link",
            "show",
            "type",
            "veth",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&links.stdout).trim().is_empty(),
        "veth leaked"
    );
    assert!(lab.down().is_empty());
    let _ = std::fs::remove_file(&sock);
}
