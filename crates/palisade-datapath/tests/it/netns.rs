//! Real packets: two network namespaces joined by a veth pair, the programs
//! attached (TCX) to the "host-side" end, TCP connects through them.
//! Traffic stays inside the namespaces this test creates.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use palisade_datapath::abi::{DIR_INGRESS, REASON_POLICY_ALLOW, REASON_POLICY_DENY};
use palisade_datapath::{Datapath, MapSizes};
use palisade_policy::compiled::EndpointEntry;

use crate::common::*;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip(8)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces `palisade-t-<pid>-pod` and `-host`, deleted on Drop (also on panic).
struct NetNsPair {
    pod: String,
    host: String,
}

impl NetNsPair {
    fn new() -> Self {
        let pid = std::process::id();
        let pair = NetNsPair {
            pod: format!("palisade-t-{pid}-pod"),
            host: format!("palisade-t-{pid}-host"),
        };
        ip(&["netns", "add", &pair.pod]);
        ip(&["netns", "add", &pair.host]);
        ip(&[
            "-n", &pair.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "h0", "netns",
            &pair.host,
        ]);
        ip(&[
            "-n",
            &pair.pod,
            "addr",
            "add",
            "10.200.0.1/24",
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &pair.host,
            "addr",
            "add",
            "10.200.0.2/24",
            "dev",
            "h0",
        ]);
        for (ns, dev) in [
            (&pair.pod, "eth0"),
            (&pair.pod, "lo"),
            (&pair.host, "h0"),
            (&pair.host, "lo"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }
}

impl Drop for NetNsPair {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.host] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Moves the calling thread into a named namespace (threads only: never the test harness's main thread).
fn enter(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    // SAFETY: plain syscall on a valid fd; affects only this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

#[test]
fn denied_tcp_connect_fails_and_allowed_one_succeeds_through_veth() {
    let pair = NetNsPair::new();
    let root = PinRoot(unique_root());

    // The pod listens on 8080 (allowed) and 8081 (denied).
    let (ready_tx, ready_rx) = mpsc::channel();
    let pod_ns = pair.pod.clone();
    let server = std::thread::spawn(move || {
        enter(&pod_ns);
        let a = TcpListener::bind("10.200.0.1:8080").unwrap();
        let b = TcpListener::bind("10.200.0.1:8081").unwrap();
        ready_tx.send(()).unwrap();
        let (_s1, _) = a.accept().unwrap();
        let (_s2, _) = a.accept().unwrap();
        drop(b);
    });
    ready_rx.recv().unwrap();

    let host_ns = pair.host.clone();
    let root_path = root.0.clone();
    let client = std::thread::spawn(move || {
        enter(&host_ns);
        let mut dp = Datapath::load_or_adopt(&root_path, MapSizes::default()).unwrap();
        let ingress = table(deny(1), &ports(0, 6, &[(8080, 8080, allow(80))], deny(81)));
        let mut c = compiled(ingress, table(allow(2), &[]), &[]);
        c.endpoints.clear();
        c.endpoints.insert(
            "t/pod".into(),
            EndpointEntry {
                pod: "t/pod".into(),
                ips: vec!["10.200.0.1".parse().unwrap()],
                ingress: 1,
                egress: 2,
                generation: 1,
            },
        );
        dp.sync(&c).unwrap();
        let ifindex = dp.attach("t/pod", "h0").unwrap();
        let allowed: SocketAddr = "10.200.0.1:8080".parse().unwrap();
        let denied: SocketAddr = "10.200.0.1:8081".parse().unwrap();
        let ok = TcpStream::connect_timeout(&allowed, Duration::from_secs(3));
        let blocked = TcpStream::connect_timeout(&denied, Duration::from_millis(1500));
        let counters = dp.counters().unwrap().endpoints[&ifindex];
        // Agent restart/upgrade: drop everything but the pins, adopt, and the
        // pinned links are switched to the reloaded programs: still enforced,
        // before and after the pod is re-attached.
        drop(dp);
        let blocked_while_down =
            TcpStream::connect_timeout(&denied, Duration::from_millis(500)).is_err();
        let mut dp = Datapath::load_or_adopt(&root_path, MapSizes::default()).unwrap();
        assert!(dp.adopted());
        let blocked_after_restart =
            TcpStream::connect_timeout(&denied, Duration::from_millis(500)).is_err();
        assert_eq!(dp.attach("t/pod", "h0").unwrap(), ifindex);
        dp.sync(&c).unwrap();
        let still_ok = TcpStream::connect_timeout(&allowed, Duration::from_secs(3)).is_ok();
        assert!(
            blocked_while_down && blocked_after_restart && still_ok,
            "enforcement across restart"
        );
        dp.detach("t/pod").unwrap();
        // Detached: the denied port now answers (RST from the closed/listening socket).
        let after = TcpStream::connect_timeout(&denied, Duration::from_secs(3));
        (
            ok.is_ok(),
            blocked.map_err(|e| e.kind()),
            counters,
            after.map(|_| ()).map_err(|e| e.kind()),
        )
    });
    let (ok, blocked, counters, after) = client.join().unwrap();
    server.join().unwrap();
    drop(root);
    assert!(ok, "connect to the allowed port must succeed");
    assert_eq!(
        blocked.map(|_| ()),
        Err(std::io::ErrorKind::TimedOut),
        "connect to the denied port must time out"
    );
    assert!(counters[DIR_INGRESS as usize][REASON_POLICY_ALLOW as usize] >= 1);
    assert!(
        counters[DIR_INGRESS as usize][REASON_POLICY_DENY as usize] >= 1,
        "SYNs to 8081 dropped: {counters:?}"
    );
    assert!(
        after.is_ok() || after == Err(std::io::ErrorKind::ConnectionRefused),
        "after detach: {after:?}"
    );
    drop(pair);
}
