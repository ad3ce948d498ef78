//! `cargo run -p palisade-datapath --example profile_datapath [repeat] [runs]`:
//! per-stage cost breakdown of the programs (root needed). Each line is a packet
//! that leaves the program at a different stage, so the differences between
//! lines are the cost of the stages in between (see the module doc of
//! `palisade_datapath::bench` for the recorded figures).

use palisade_datapath::abi::{Config, CFG_F_NO_CT_CREATE};
use palisade_datapath::bench::{bench_peer, bench_policy, bench_sizes, BENCH_POD};
use palisade_datapath::packet::{arp_frame, Packet};
use palisade_datapath::{unpin_all_at, Datapath, Hook};

/// Removes the example's pins when dropped, also when a run panics.
struct Pins(std::path::PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = unpin_all_at(&self.0);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let repeat: u32 = args.next().map_or(200_000, |r| r.parse().expect("repeat"));
    let runs: usize = args.next().map_or(5, |r| r.parse().expect("runs"));
    let root =
        std::path::PathBuf::from(format!("/sys/fs/bpf/palisade-prof-{}", std::process::id()));
    let _pins = Pins(root.clone());
    for n in [100usize, 100_000] {
        let _ = unpin_all_at(&root);
        let mut dp = Datapath::load_or_adopt(&root, bench_sizes(n)).expect("load");
        dp.sync(&bench_policy(n)).expect("sync");
        dp.bind("bench/pod", 1).expect("bind");
        let pod = BENCH_POD.to_string();
        let peer = bench_peer(n).to_string();
        let m = |dp: &mut Datapath, hook: Hook, frame: &[u8]| {
            let mut xs: Vec<f64> = (0..runs)
                .map(|_| dp.test_run(hook, frame, repeat).expect("run").1.as_nanos() as f64)
                .collect();
            xs.sort_by(|a, b| a.total_cmp(b));
            xs[xs.len() / 2]
        };
        let noop = m(&mut dp, Hook::Noop, &arp_frame());
        let arp = m(&mut dp, Hook::FromPod, &arp_frame());
        let spoof = m(
            &mut dp,
            Hook::FromPod,
            &Packet::tcp("10.9.9.9", &peer, 40000, 80, 0x02).frame(),
        );
        dp.set_config(Config {
            flags: CFG_F_NO_CT_CREATE,
            ..Config::default()
        })
        .expect("config");
        let syn = Packet::tcp(&pod, &peer, 40000, 80, 0x02).frame();
        let new_own = m(&mut dp, Hook::FromPod, &syn);
        let new_any_fallback = m(
            &mut dp,
            Hook::FromPod,
            &Packet::udp(&pod, &peer, 40000, 80).frame(),
        );
        let new_cidr = m(
            &mut dp,
            Hook::FromPod,
            &Packet::tcp(&pod, "12.0.0.1", 40000, 80, 0x02).frame(),
        );
        dp.set_config(Config::default()).expect("config");
        dp.test_run(Hook::FromPod, &syn, 1).expect("syn");
        let est = m(
            &mut dp,
            Hook::FromPod,
            &Packet::tcp(&pod, &peer, 40000, 80, 0x10).frame(),
        );
        println!(
            "entries={n} noop={noop} arp(endpoint+counters)={arp} spoof(+parse)={spoof} \
             established(+ct hit)={est} new_own_entries={new_own} \
             new_udp_any_fallback={new_any_fallback} new_cidr_0/0={new_cidr}"
        );
        dp.unpin_all().expect("unpin");
    }
}
