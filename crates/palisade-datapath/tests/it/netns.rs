//! Real packets: two network namespaces joined by a veth pair, the programs
//! attached (TCX) to the "host-side" end, TCP connects through them.
//! Traffic stays inside the namespaces this test creates.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use palisade_datapath::abi::{
    DIR_INGRESS, REASON_POLICY_ALLOW, REASON_POLICY_DENY, STAT_CT_REVOKED,
};
use palisade_datapath::{Datapath, MapSizes};
use palisade_policy::compiled::{Compiled, Delta, EndpointEntry, Op};

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

/// Namespaces `palisade-t-<pid>-<n>-pod` and `-host`, deleted on Drop (also on
/// panic); `n` keeps the tests of one binary apart when they run in parallel.
struct NetNsPair {
    pod: String,
    host: String,
}

static PAIRS: AtomicUsize = AtomicUsize::new(0);

impl NetNsPair {
    fn new() -> Self {
        let pid = std::process::id();
        let n = PAIRS.fetch_add(1, Ordering::SeqCst);
        let pair = NetNsPair {
            pod: format!("palisade-t-{pid}-{n}-pod"),
            host: format!("palisade-t-{pid}-{n}-host"),
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

/// The pod (10.200.0.1) with ingress: peer identity 5 allowed for UDP (rule 50)
/// and TCP (rule 51), everything else denied (rule 1); egress allowed. The host
/// side's 10.200.0.2 is identity 5.
fn pod_allowing_identity_5() -> Compiled {
    let extra = [ports(5, 17, &[], allow(50)), ports(5, 6, &[], allow(51))].concat();
    let mut c = compiled(
        table(deny(1), &extra),
        table(allow(2), &[]),
        &[("10.200.0.2/32", 5)],
    );
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
    c
}

fn put_address(dp: &mut Datapath, net: &str, id: u32) {
    dp.apply(&Delta {
        ops: vec![Op::PutAddress(net.parse().unwrap(), id)],
    })
    .unwrap();
}

/// A pod's servers, in its namespace: UDP echo on 5300 (until stopped), TCP
/// line echo on 8080 (one connection, until EOF or an idle read times out).
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl EchoServer {
    /// Returns once both sockets listen on `ip` inside namespace `ns`.
    fn start(ns: &str, ip: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns, ip, stopped) = (ns.to_string(), ip.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let udp = UdpSocket::bind(format!("{ip}:5300")).unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let tcp = TcpListener::bind(format!("{ip}:8080")).unwrap();
            ready_tx.send(()).unwrap();
            let tcp_echo = std::thread::spawn(move || {
                let (s, _) = tcp.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut w = s.try_clone().unwrap();
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    if w.write_all(format!("{line}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
            let mut buf = [0u8; 64];
            while !stopped.load(Ordering::SeqCst) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
            tcp_echo.join().unwrap();
        });
        ready_rx.recv().unwrap();
        EchoServer { stop, thread }
    }

    /// Stops the UDP loop and waits for the TCP connection to end too.
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
    }
}

/// Sends `msg` on a connected UDP socket, up to three times (a datagram lost
/// on a loaded machine must not read as a drop); true if its echo came back
/// within the socket's read timeout of a send.
fn udp_echoes(s: &UdpSocket, msg: &[u8]) -> bool {
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        s.send(msg).unwrap();
        loop {
            match s.recv(&mut buf) {
                Ok(n) if &buf[..n] == msg => return true,
                // A late echo of an earlier message: keep reading.
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    false
}

/// How long a TCP echo may take before it reads as dropped (TCP retransmits
/// a lost segment itself within this).
const TCP_WAIT: Duration = Duration::from_millis(1500);

/// Writes a line on a TCP connection; true if its echo came back within
/// [`TCP_WAIT`].
fn tcp_echoes(w: &mut TcpStream, r: &mut BufReader<TcpStream>, line: &str) -> bool {
    w.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut got = String::new();
    matches!(r.read_line(&mut got), Ok(n) if n > 0 && got.trim_end() == line)
}

/// Issue 8 on real packets: a UDP flow from a fixed source port and a
/// long-lived TCP connection, both allowed by the peer's identity, keep
/// working across an unrelated epoch, are cut when the peer's address is
/// re-mapped to an identity the table denies, and (revocation off) stay.
#[test]
fn issue_8_identity_change_cuts_established_udp_and_tcp_flows_through_veth() {
    let pair = NetNsPair::new();
    let root = PinRoot(unique_root());
    let server = EchoServer::start(&pair.pod, "10.200.0.1");

    let host_ns = pair.host.clone();
    let root_path = root.0.clone();
    let client = std::thread::spawn(move || {
        enter(&host_ns);
        let mut dp = Datapath::load_or_adopt(&root_path, MapSizes::default()).unwrap();
        dp.sync(&pod_allowing_identity_5()).unwrap();
        dp.attach("t/pod", "h0").unwrap();
        let wait = Duration::from_millis(700);
        let udp = UdpSocket::bind("10.200.0.2:5353").unwrap();
        udp.connect("10.200.0.1:5300").unwrap();
        udp.set_read_timeout(Some(wait)).unwrap();
        let tcp = TcpStream::connect_timeout(&"10.200.0.1:8080".parse().unwrap(), wait).unwrap();
        tcp.set_read_timeout(Some(TCP_WAIT)).unwrap();
        let mut tcp_w = tcp.try_clone().unwrap();
        let mut tcp_r = BufReader::new(tcp);
        let mut seen = Vec::new();
        seen.push(("udp allowed", udp_echoes(&udp, b"a")));
        seen.push(("tcp allowed", tcp_echoes(&mut tcp_w, &mut tcp_r, "1")));
        // Unrelated change: both flows are re-judged and keep passing replies.
        put_address(&mut dp, "203.0.113.0/24", 9);
        seen.push(("udp after unrelated epoch", udp_echoes(&udp, b"b")));
        seen.push((
            "tcp after unrelated epoch",
            tcp_echoes(&mut tcp_w, &mut tcp_r, "2"),
        ));
        // The peer's address now maps to an identity the table denies.
        put_address(&mut dp, "10.200.0.2/32", 6);
        seen.push(("udp after identity change", udp_echoes(&udp, b"c")));
        seen.push((
            "tcp after identity change",
            tcp_echoes(&mut tcp_w, &mut tcp_r, "3"),
        ));
        let revoked = dp.counters().unwrap().stats[STAT_CT_REVOKED as usize];
        // Revocation off: a flow admitted again stays across the same change.
        dp.set_revoke_established(false).unwrap();
        put_address(&mut dp, "10.200.0.2/32", 5);
        let udp2 = UdpSocket::bind("10.200.0.2:5354").unwrap();
        udp2.connect("10.200.0.1:5300").unwrap();
        udp2.set_read_timeout(Some(wait)).unwrap();
        seen.push(("udp, revocation off", udp_echoes(&udp2, b"d")));
        put_address(&mut dp, "10.200.0.2/32", 6);
        seen.push((
            "udp after identity change, revocation off",
            udp_echoes(&udp2, b"e"),
        ));
        // Let the TCP connection close cleanly so the server thread ends.
        dp.detach("t/pod").unwrap();
        drop((tcp_w, tcp_r));
        (seen, revoked)
    });
    let (seen, revoked) = client.join().unwrap();
    server.stop();
    drop(root);
    drop(pair);
    let expected = [
        ("udp allowed", true),
        ("tcp allowed", true),
        ("udp after unrelated epoch", true),
        ("tcp after unrelated epoch", true),
        ("udp after identity change", false),
        ("tcp after identity change", false),
        ("udp, revocation off", true),
        ("udp after identity change, revocation off", true),
    ];
    assert_eq!(seen, expected);
    assert_eq!(revoked, 2, "the UDP flow and the TCP connection, once each");
}

/// Pods `a` (10.210.0.1) and `b` (10.211.0.1) in their own namespaces, both
/// attached on one node namespace that routes between them (`ha`, `hb`).
struct TwoPods {
    a: String,
    b: String,
    node: String,
}

impl TwoPods {
    fn new() -> Self {
        let pid = std::process::id();
        let n = PAIRS.fetch_add(1, Ordering::SeqCst);
        let name = |x: &str| format!("palisade-t-{pid}-{n}-{x}");
        let t = TwoPods {
            a: name("a"),
            b: name("b"),
            node: name("node"),
        };
        for ns in [&t.a, &t.b, &t.node] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for (pod, host, net) in [(&t.a, "ha", "10.210.0"), (&t.b, "hb", "10.211.0")] {
            ip(&[
                "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", host, "netns",
                &t.node,
            ]);
            ip(&[
                "-n",
                pod,
                "addr",
                "add",
                &format!("{net}.1/24"),
                "dev",
                "eth0",
            ]);
            ip(&[
                "-n",
                &t.node,
                "addr",
                "add",
                &format!("{net}.254/24"),
                "dev",
                host,
            ]);
            ip(&["-n", pod, "link", "set", "eth0", "up"]);
            ip(&["-n", &t.node, "link", "set", host, "up"]);
            ip(&[
                "-n",
                pod,
                "route",
                "add",
                "default",
                "via",
                &format!("{net}.254"),
            ]);
        }
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.node,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()
            .expect("sysctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }
}

impl Drop for TwoPods {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// a is identity 5, b identity 7. b's ingress (table 1) allows identity 5 for
/// UDP and TCP and denies the rest (rule 1); a's ingress (table 3) denies all;
/// both egress tables allow all (table 2).
fn two_pods_policy() -> Compiled {
    let extra = [ports(5, 17, &[], allow(50)), ports(5, 6, &[], allow(51))].concat();
    let mut c = compiled(
        table(deny(1), &extra),
        table(allow(2), &[]),
        &[("10.210.0.1/32", 5), ("10.211.0.1/32", 7)],
    );
    c.tables.insert(3, table(deny(3), &[]));
    c.endpoints.clear();
    for (pod, addr, ingress) in [("t/a", "10.210.0.1", 3), ("t/b", "10.211.0.1", 1)] {
        c.endpoints.insert(
            pod.into(),
            EndpointEntry {
                pod: pod.into(),
                ips: vec![addr.parse().unwrap()],
                ingress,
                egress: 2,
                generation: 1,
            },
        );
    }
    c
}

/// Issue 8 between two local pods: each side has its own conntrack entry (a's
/// egress on ha, b's ingress on hb). Relabelling a (its address re-mapped to
/// identity 6) cuts a's UDP flow and TCP connection to b at b's ingress,
/// although a's own egress still allows them; mapped back, they work again.
#[test]
fn issue_8_relabelling_a_local_pod_cuts_its_flows_to_another_local_pod() {
    let pods = TwoPods::new();
    let root = PinRoot(unique_root());
    let server = EchoServer::start(&pods.b, "10.211.0.1");
    let (node, a, root_path) = (pods.node.clone(), pods.a.clone(), root.0.clone());
    let client = std::thread::spawn(move || {
        enter(&node);
        let mut dp = Datapath::load_or_adopt(&root_path, MapSizes::default()).unwrap();
        dp.sync(&two_pods_policy()).unwrap();
        dp.attach("t/a", "ha").unwrap();
        let hb = dp.attach("t/b", "hb").unwrap();
        // The client sockets live in a's namespace; map writes work from anywhere.
        enter(&a);
        let wait = Duration::from_millis(700);
        let udp = UdpSocket::bind("10.210.0.1:5353").unwrap();
        udp.connect("10.211.0.1:5300").unwrap();
        udp.set_read_timeout(Some(wait)).unwrap();
        let tcp = TcpStream::connect_timeout(&"10.211.0.1:8080".parse().unwrap(), wait).unwrap();
        tcp.set_read_timeout(Some(TCP_WAIT)).unwrap();
        let mut tcp_w = tcp.try_clone().unwrap();
        let mut tcp_r = BufReader::new(tcp);
        let mut seen = vec![
            ("udp allowed", udp_echoes(&udp, b"a")),
            ("tcp allowed", tcp_echoes(&mut tcp_w, &mut tcp_r, "1")),
        ];
        put_address(&mut dp, "10.210.0.1/32", 6);
        seen.push(("udp after a's relabel", udp_echoes(&udp, b"b")));
        seen.push((
            "tcp after a's relabel",
            tcp_echoes(&mut tcp_w, &mut tcp_r, "2"),
        ));
        let denied_at_b = dp.counters().unwrap().endpoints[&hb][DIR_INGRESS as usize]
            [REASON_POLICY_DENY as usize];
        put_address(&mut dp, "10.210.0.1/32", 5);
        seen.push(("udp after the label is back", udp_echoes(&udp, b"c")));
        // The connection resumes: the dropped segment "2" is retransmitted (on
        // the sender's backoff) and echoed, then "3" goes through.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut resumed = false;
        while !resumed && Instant::now() < deadline {
            let mut got = String::new();
            match tcp_r.read_line(&mut got) {
                Ok(0) => break,
                Ok(_) => resumed = got.trim_end() == "2",
                Err(_) => {}
            }
        }
        seen.push(("tcp resumes after the label is back", resumed));
        seen.push((
            "tcp after the label is back",
            tcp_echoes(&mut tcp_w, &mut tcp_r, "3"),
        ));
        dp.detach("t/a").unwrap();
        dp.detach("t/b").unwrap();
        drop((tcp_w, tcp_r));
        (seen, denied_at_b)
    });
    let (seen, denied_at_b) = client.join().unwrap();
    server.stop();
    drop(root);
    drop(pods);
    assert_eq!(
        seen,
        [
            ("udp allowed", true),
            ("tcp allowed", true),
            ("udp after a's relabel", false),
            ("tcp after a's relabel", false),
            ("udp after the label is back", true),
            ("tcp resumes after the label is back", true),
            ("tcp after the label is back", true),
        ]
    );
    assert!(denied_at_b >= 2, "dropped at b's ingress: {denied_at_b}");
}
