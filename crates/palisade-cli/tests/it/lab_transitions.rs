//! Full passes never open a window: a denied pod floods a peer with UDP from one fixed
//! 5-tuple while the agent runs 50 forced full passes (the pass it runs every 30 s,
//! after a failed pass and at start), each after a random policy edit that keeps the
//! flood denied. Not one datagram may arrive; allowed traffic must keep flowing.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lab::{netns_of, pod_yaml, write};
use crate::support::{privileged, run, LabGuard};

const TARGET: &str = "10.244.9.10";
const FLOODER: &str = "10.244.9.11";
const FRIEND: &str = "10.244.9.12";

/// A random edit that keeps flooder -> target:9000/UDP denied: the target's ingress
/// stays isolated by `target-from-friend`, and no edit allows the flooder.
fn edit(i: u64, rng: &mut u64) -> (String, Option<String>) {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let np = |name: &str, selector: &str, body: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      app: {selector}\n{body}"
        )
    };
    match *rng % 7 {
        0 => (
            "extra".into(),
            Some(np(
                "extra",
                "target",
                &format!("  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.244.0.0/16\n        except:\n        - {FLOODER}/32\n    ports:\n    - protocol: UDP\n      port: 9000\n"),
            )),
        ),
        1 => (
            "extra".into(),
            Some(np(
                "extra",
                "target",
                "  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: friend\n    ports:\n    - protocol: UDP\n      port: 9000\n      endPort: 9100\n",
            )),
        ),
        2 => ("extra".into(), None),
        3 => (
            "flooder-egress".into(),
            Some(np(
                "flooder-egress",
                "flooder",
                &format!("  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock:\n        cidr: 0.0.0.0/0\n        except:\n        - {TARGET}/32\n"),
            )),
        ),
        4 => ("flooder-egress".into(), None),
        5 => (
            "ns".into(),
            Some(format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels:\n    round: r{}\n",
                i % 3
            )),
        ),
        _ => (
            "friend-egress".into(),
            Some(np(
                "friend-egress",
                "friend",
                &format!("  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock:\n        cidr: {TARGET}/32\n"),
            )),
        ),
    }
}

#[test]
fn fifty_forced_full_passes_after_random_edits_let_no_denied_datagram_through() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("palisade-fullpass-{}", std::process::id()));
    let cluster = write(
        &dir,
        "cluster.yaml",
        &[
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n".to_string(),
            pod_yaml("target", "target", TARGET, &[]),
            pod_yaml("flooder", "flooder", FLOODER, &[]),
            pod_yaml("friend", "friend", FRIEND, &[]),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: target-from-friend\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      app: target\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: friend\n".to_string(),
        ]
        .join("---\n"),
    );
    let lab = LabGuard::up(&[cluster]);
    let (target_ns, flooder_ns, friend_ns) = (
        netns_of(&lab, "default/target"),
        netns_of(&lab, "default/flooder"),
        netns_of(&lab, "default/friend"),
    );
    let sink: SocketAddr = format!("{TARGET}:9000").parse().unwrap();
    let receiver = target_ns
        .run_in(move || UdpSocket::bind(sink).unwrap())
        .unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let flood_src: SocketAddr = format!("{FLOODER}:40000").parse().unwrap();
    let flooder = flooder_ns
        .run_in(move || UdpSocket::bind(flood_src).unwrap())
        .unwrap();
    flooder.set_nonblocking(true).unwrap();
    let friend_src: SocketAddr = format!("{FRIEND}:40001").parse().unwrap();
    let friend = friend_ns
        .run_in(move || UdpSocket::bind(friend_src).unwrap())
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (from_flooder, from_friend, last_friend) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let rx = {
        let (stop, from_flooder, from_friend, last_friend) = (
            stop.clone(),
            from_flooder.clone(),
            from_friend.clone(),
            last_friend.clone(),
        );
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, from)) = receiver.recv_from(&mut buf) {
                    if from.ip().to_string() == FLOODER {
                        from_flooder.fetch_add(1, Ordering::SeqCst);
                    } else if from.ip().to_string() == FRIEND && n == 8 {
                        from_friend.fetch_add(1, Ordering::SeqCst);
                        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                        last_friend.fetch_max(seq, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let tx = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            // Bounded: the flood stops with the test, or after 10 minutes at most.
            let start = Instant::now();
            while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(600) {
                if flooder.send_to(b"flood", sink).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    std::thread::yield_now();
                }
            }
        })
    };
    // Allowed traffic goes through: a sequence number the receiver must see (resent
    // while it has not, bounded; UDP may lose a datagram under the flood).
    let allowed_gets_through = |seq: u64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while last_friend.load(Ordering::SeqCst) < seq {
            assert!(
                Instant::now() < deadline,
                "allowed datagram {seq} friend -> target never arrived"
            );
            let _ = friend.send_to(&seq.to_be_bytes(), sink);
            let wait = Instant::now() + Duration::from_millis(100);
            while last_friend.load(Ordering::SeqCst) < seq && Instant::now() < wait {
                std::thread::yield_now();
            }
        }
    };
    allowed_gets_through(1);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let edits_dir = dir.join("edits");
    for i in 0..50u64 {
        let (name, body) = edit(i, &mut rng);
        let file = edits_dir.join(format!("{name}.yaml"));
        match body {
            Some(text) => {
                write(&edits_dir, &format!("{name}.yaml"), &text);
                lab.apply(&file);
            }
            None => {
                if file.exists() {
                    let mut c = lab.cmd(&["delete"]);
                    c.arg("-f").arg(&file);
                    run(&mut c);
                    std::fs::remove_file(&file).unwrap();
                }
            }
        }
        run(&mut lab.cmd(&["resync"]));
        allowed_gets_through(i + 2);
    }
    stop.store(true, Ordering::SeqCst);
    tx.join().unwrap();
    rx.join().unwrap();
    let (sent, leaked) = (
        sent.load(Ordering::SeqCst),
        from_flooder.load(Ordering::SeqCst),
    );
    println!(
        "full passes: {sent} denied datagrams sent during 50 forced full passes, {leaked} arrived; \
         {} allowed datagrams arrived",
        from_friend.load(Ordering::SeqCst)
    );
    assert!(sent > 1000, "the flood did not run: {sent} sent");
    assert_eq!(leaked, 0, "denied datagrams reached the target");
    let _ = std::fs::remove_dir_all(&dir);
}
