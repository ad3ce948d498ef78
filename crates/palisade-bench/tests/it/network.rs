use std::time::Duration;

use palisade_bench::{run_network, verify_configs, Config, NetworkOptions};

use palisade_testkit::{require, Need, IP};

/// What the benchmark needs: namespaces, pins, and the iptables-legacy baseline.
/// Missing, it fails as root or in CI (`palisade_testkit::require`).
const BENCH: &[Need] = &[
    Need::Root,
    IP,
    Need::Bpffs,
    Need::Program {
        name: "iptables-legacy-restore",
        package: "iptables",
    },
];

#[test]
fn iptables_flat_allows_the_measured_flow_and_blocks_the_denied_ones() {
    if !require(BENCH) {
        return;
    }
    let verified = verify_configs(
        10,
        &[Config::None, Config::IptablesFlat, Config::IptablesStateful],
    )
    .expect("every iptables configuration enforces the policy");
    assert_eq!(
        verified,
        vec![Config::None, Config::IptablesFlat, Config::IptablesStateful]
    );
}

#[test]
fn tiny_run_produces_the_documented_json() {
    if !require(BENCH) {
        return;
    }
    let opts = NetworkOptions {
        rounds: 2,
        entries: vec![10],
        duration: Duration::from_millis(100),
        ..NetworkOptions::default()
    };
    let stats_before =
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").expect("sysctl");
    let report = run_network(&opts, |_| {}).expect("tiny run");
    let v: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid json");
    let obj = v.as_object().expect("top level is an object");
    assert_eq!(
        obj.keys().collect::<Vec<_>>(),
        vec![
            "hw_instructions",
            "prog_ns_per_run",
            "ratios",
            "results",
            "rounds"
        ]
    );
    assert_eq!(v["rounds"], 2);
    // Paired ratios: 3 configurations × 4 metrics against none, plus palisade/iptables-flat.
    let ratios = v["ratios"].as_array().expect("ratios is an array");
    assert_eq!(ratios.len(), 13, "{ratios:?}");
    for x in ratios {
        let per_round = x["per_round"].as_array().expect("per_round");
        assert_eq!(per_round.len(), 2, "{x}");
        assert!(
            per_round.iter().all(|r| r.as_f64().expect("f64") > 0.0),
            "{x}"
        );
        let i = &x["interval"];
        let (lo, med, hi) = (
            i["lo"].as_f64().expect("lo"),
            i["median"].as_f64().expect("median"),
            i["hi"].as_f64().expect("hi"),
        );
        assert!(0.0 < lo && lo <= med && med <= hi, "{x}");
    }
    let goals: Vec<&str> = ratios
        .iter()
        .filter_map(|x| x["verdict"].as_str())
        .collect();
    assert_eq!(goals.len(), 3, "three ratio goals: {ratios:?}");
    assert!(
        goals
            .iter()
            .all(|g| ["met", "missed", "within noise"].contains(g)),
        "{goals:?}"
    );
    // Kernel time per program run on the palisade slots: one value per round, positive.
    let prog = v["prog_ns_per_run"].as_array().expect("prog_ns_per_run");
    assert_eq!(prog.len(), 1, "{prog:?}");
    assert_eq!(prog[0]["entries"], 10);
    let ns = prog[0]["per_round"].as_array().expect("per_round");
    assert_eq!(ns.len(), 2);
    assert!(
        ns.iter().all(|x| x.as_f64().expect("f64") > 0.0),
        "{prog:?}"
    );
    assert!(v["hw_instructions"]
        .as_str()
        .expect("text")
        .contains("available"));
    let results = v["results"].as_array().expect("results is an array");
    let configs = ["none", "palisade", "iptables-flat", "iptables-stateful"];
    let metrics = ["udp_rr_us", "tcp_rr_us", "crr_per_s", "tcp_gbps"];
    for r in results {
        let o = r.as_object().expect("result is an object");
        assert_eq!(o.len(), 6, "{r}");
        assert!(
            configs.contains(&r["config"].as_str().expect("config")),
            "{r}"
        );
        assert!(
            metrics.contains(&r["metric"].as_str().expect("metric")),
            "{r}"
        );
        let entries = r["entries"].as_u64().expect("entries");
        assert_eq!(entries, if r["config"] == "none" { 0 } else { 10 }, "{r}");
        let (med, min, max) = (
            r["median"].as_f64().expect("median"),
            r["min"].as_f64().expect("min"),
            r["max"].as_f64().expect("max"),
        );
        assert!(min <= med && med <= max && min > 0.0, "{r}");
    }
    // none and both iptables configurations, four metrics each (palisade when loadable).
    for c in ["none", "iptables-flat", "iptables-stateful"] {
        assert_eq!(
            results.iter().filter(|r| r["config"] == c).count(),
            4,
            "{c}"
        );
    }
    let stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").expect("sysctl");
    assert_eq!(stats, stats_before, "kernel.bpf_stats_enabled restored");
}
