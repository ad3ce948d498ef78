//! `Datapath::attachment` reads what the kernel runs on an interface (TCX query and the
//! endpoint map), so `palisade endpoint diff` can tell a detached interface from an
//! enforced one even when the maps still hold its tables.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

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

/// A namespace `palisade-att-<pid>` holding a veth pair `a0`/`b0`, deleted on Drop.
struct Ns(String);

impl Ns {
    fn new() -> Self {
        let ns = Ns(format!("palisade-att-{}", std::process::id()));
        ip(&["netns", "add", &ns.0]);
        ip(&[
            "-n", &ns.0, "link", "add", "a0", "type", "veth", "peer", "name", "b0",
        ]);
        ns
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn attachment_reports_our_programs_first_and_sees_a_detached_or_deleted_interface() {
    let ns = Ns::new();
    let root = PinRoot(unique_root());
    let (name, path) = (ns.0.clone(), root.0.clone());
    std::thread::spawn(move || {
        let f = File::open(format!("/var/run/netns/{name}")).expect("netns file");
        // SAFETY: plain syscall on a valid fd; moves only this thread's network namespace.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let mut dp = Datapath::load_or_adopt(&path, MapSizes::default()).unwrap();
        let mut c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
        c.endpoints.clear();
        c.endpoints.insert(
            "t/pod".into(),
            EndpointEntry {
                pod: "t/pod".into(),
                ips: vec!["10.201.0.1".parse().unwrap()],
                ingress: 1,
                egress: 2,
                generation: 1,
            },
        );
        dp.sync(&c).unwrap();
        let ifindex = dp.attach("t/pod", "a0").unwrap();
        let a = dp.attachment(ifindex).unwrap();
        assert_eq!(a.ifname.as_deref(), Some("a0"));
        assert!(a.endpoint_entry);
        assert_eq!(a.hooks.len(), 2);
        for h in &a.hooks {
            assert_eq!(h.programs, vec![h.ours], "{}: only ours runs", h.hook);
        }
        assert!(a.enforced(), "{a:?}");
        // The other end never had programs.
        let other = palisade_datapath::ifindex_of("b0").unwrap();
        let b = dp.attachment(other).unwrap();
        assert!(
            !b.enforced() && b.hooks.iter().all(|h| h.programs.is_empty()),
            "{b:?}"
        );

        dp.detach("t/pod").unwrap();
        let a = dp.attachment(ifindex).unwrap();
        assert!(!a.enforced(), "detached yet enforced: {a:?}");
        assert!(!a.endpoint_entry);
        assert!(a.hooks.iter().all(|h| h.programs.is_empty()), "{a:?}");

        // The maps alone do not make an interface enforced: an endpoint entry
        // written without programs attached is still reported as not enforced.
        dp.bind("t/pod", ifindex).unwrap();
        let a = dp.attachment(ifindex).unwrap();
        assert!(a.endpoint_entry && !a.enforced(), "{a:?}");

        ip(&["-n", &name, "link", "del", "a0"]);
        let gone = dp.attachment(ifindex).unwrap();
        assert_eq!(gone.ifname, None);
        assert!(!gone.enforced());
    })
    .join()
    .unwrap();
    drop(root);
    drop(ns);
}

/// A pod deleted while the agent was down leaves its links pinned with their interface
/// gone; the next agent must still load and adopt (issue 8: a lost DEL must not stop
/// enforcement elsewhere).
#[test]
fn adopting_pins_whose_interface_was_deleted_still_loads() {
    let ns = Ns(format!("palisade-att2-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    for (a, b) in [("a0", "a1"), ("b0", "b1")] {
        ip(&[
            "-n", &ns.0, "link", "add", a, "type", "veth", "peer", "name", b,
        ]);
    }
    let root = PinRoot(unique_root());
    let (name, path) = (ns.0.clone(), root.0.clone());
    std::thread::spawn(move || {
        let f = File::open(format!("/var/run/netns/{name}")).expect("netns file");
        // SAFETY: plain syscall on a valid fd; moves only this thread's network namespace.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let mut dp = Datapath::load_or_adopt(&path, MapSizes::default()).unwrap();
        let gone = dp.attach("t/gone", "a0").unwrap();
        let kept = dp.attach("t/kept", "b0").unwrap();
        drop(dp);
        ip(&["-n", &name, "link", "del", "a0"]);
        let mut dp = Datapath::load_or_adopt(&path, MapSizes::default())
            .expect("adopting pins of a deleted interface");
        assert!(dp.adopted());
        let k = dp.attachment(kept).unwrap();
        assert!(
            k.hooks.len() == 2 && k.hooks.iter().all(|h| h.programs == vec![h.ours]),
            "the other interface runs the new programs: {k:?}"
        );
        for hook in ["from_pod", "to_pod"] {
            let pin = path.join("links").join(format!("{gone}-{hook}"));
            assert!(!pin.exists(), "severed pin {} left behind", pin.display());
        }
    })
    .join()
    .unwrap();
    drop(root);
    drop(ns);
}

/// A pod re-registered from a new sandbox moves to a new interface; the old one keeps
/// no endpoint entry (its programs then drop everything) instead of stale tables.
#[test]
fn rebinding_a_pod_to_a_new_interface_leaves_the_old_one_fail_closed() {
    let ns = Ns(format!("palisade-att3-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    for (a, b) in [("a0", "a1"), ("b0", "b1")] {
        ip(&[
            "-n", &ns.0, "link", "add", a, "type", "veth", "peer", "name", b,
        ]);
    }
    let root = PinRoot(unique_root());
    let (name, path) = (ns.0.clone(), root.0.clone());
    std::thread::spawn(move || {
        let f = File::open(format!("/var/run/netns/{name}")).expect("netns file");
        // SAFETY: plain syscall on a valid fd; moves only this thread's network namespace.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let mut dp = Datapath::load_or_adopt(&path, MapSizes::default()).unwrap();
        let mut c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
        c.endpoints.clear();
        c.endpoints.insert(
            "t/pod".into(),
            EndpointEntry {
                pod: "t/pod".into(),
                ips: vec!["10.202.0.1".parse().unwrap()],
                ingress: 1,
                egress: 2,
                generation: 1,
            },
        );
        dp.sync(&c).unwrap();
        let old = dp.attach("t/pod", "a0").unwrap();
        assert!(dp.attachment(old).unwrap().endpoint_entry);
        let new = dp.attach("t/pod", "b0").unwrap();
        assert!(dp.attachment(new).unwrap().enforced());
        let o = dp.attachment(old).unwrap();
        assert!(!o.endpoint_entry, "the old interface kept an entry: {o:?}");
        assert!(!dp.endpoint_entries().contains_key(&old));
    })
    .join()
    .unwrap();
    drop(root);
    drop(ns);
}

/// An agent that cannot see an interface (another namespace) must not unpin its live
/// links; only links the kernel severed (interface deleted) are released.
#[test]
fn only_severed_links_are_released_never_live_ones_seen_from_another_namespace() {
    let ns = Ns(format!("palisade-att4-{}", std::process::id()));
    let other = Ns(format!("palisade-att5-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["netns", "add", &other.0]);
    ip(&[
        "-n", &ns.0, "link", "add", "a0", "type", "veth", "peer", "name", "a1",
    ]);
    let root = PinRoot(unique_root());
    let enter = |name: &str| {
        let f = File::open(format!("/var/run/netns/{name}")).expect("netns file");
        // SAFETY: plain syscall on a valid fd; moves only this thread's network namespace.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
    };
    let (name, path) = (ns.0.clone(), root.0.clone());
    let ifindex = std::thread::scope(|s| {
        s.spawn(|| {
            enter(&name);
            let mut dp = Datapath::load_or_adopt(&path, MapSizes::default()).unwrap();
            dp.attach("t/pod", "a0").unwrap()
        })
        .join()
        .unwrap()
    });
    let (other_name, path2) = (other.0.clone(), root.0.clone());
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&other_name);
            let mut dp = Datapath::load_or_adopt(&path2, MapSizes::default()).unwrap();
            assert!(
                !dp.release_if_severed(ifindex).unwrap(),
                "a live link seen from another namespace must be kept"
            );
        })
        .join()
        .unwrap()
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&name);
            let mut dp = Datapath::load_or_adopt(&path, MapSizes::default()).unwrap();
            let a = dp.attachment(ifindex).unwrap();
            assert!(
                a.hooks.iter().all(|h| h.programs == vec![h.ours]),
                "still attached: {a:?}"
            );
            ip(&["-n", &name, "link", "del", "a0"]);
            assert!(
                dp.release_if_severed(ifindex).unwrap(),
                "severed links are released"
            );
            for hook in ["from_pod", "to_pod"] {
                assert!(!path
                    .join("links")
                    .join(format!("{ifindex}-{hook}"))
                    .exists());
            }
        })
        .join()
        .unwrap()
    });
    drop(root);
    drop(other);
    drop(ns);
}
