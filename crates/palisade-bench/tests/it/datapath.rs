//! `palisade bench datapath`'s paired ratios on a tiny real run (BPF_PROG_TEST_RUN).

use palisade_bench::datapath::ratios;
use palisade_datapath::{bench_datapath, BenchOptions};

use palisade_testkit::{require, Need};

#[test]
fn tiny_datapath_run_gives_per_round_ratios_with_intervals_and_verdicts() {
    if !require(&[Need::Root, Need::Bpffs]) {
        return;
    }
    let o = BenchOptions {
        pin_root: format!("/sys/fs/bpf/palisade-bench-it-{}", std::process::id()).into(),
        entries: vec![100, 1000],
        repeat: 2000,
        rounds: 6,
    };
    let r = bench_datapath(&o).expect("bench");
    assert!(!o.pin_root.exists(), "scratch pins removed");
    let x = ratios(&r);
    // new/noop and established/noop per size, then growth.
    assert_eq!(x.len(), 5, "{x:?}");
    for x in &x {
        assert_eq!(x.per_round.len(), 6, "{x:?}");
        assert!(x.per_round.iter().all(|r| *r > 0.0), "{x:?}");
        let i = x.interval;
        assert!(0.0 < i.lo && i.lo <= i.median && i.median <= i.hi, "{x:?}");
        // Six rounds is the smallest count with a 95% interval ([x(1), x(6)]).
        assert!(i.coverage >= 0.95, "{x:?}");
    }
    assert_eq!(
        (x[4].name, x[4].from, x[4].entries),
        ("growth", Some(100), 1000)
    );
    let v = serde_json::to_value(&x).expect("json");
    for e in v.as_array().expect("array") {
        assert!(
            ["met", "missed", "within noise"].contains(&e["verdict"].as_str().expect("verdict")),
            "{e}"
        );
    }
}
