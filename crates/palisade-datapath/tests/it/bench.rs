//! The benchmark runs end to end and serialises to the agreed JSON shape.

use palisade_datapath::{bench_datapath, BenchOptions};

use crate::common::unique_root;

#[test]
fn bench_datapath_reports_every_size_in_the_agreed_json_shape() {
    let o = BenchOptions {
        pin_root: unique_root(),
        entries: vec![100, 1000],
        repeat: 2000,
        rounds: 3,
    };
    let r = bench_datapath(&o).expect("bench");
    assert!(!o.pin_root.exists(), "scratch pins removed");
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["noop_ns", "points", "rounds"]);
    let text = serde_json::to_string(&r).unwrap();
    assert!(
        text.starts_with("{\"noop_ns\":") && text.contains("[{\"entries\":100,\"ns_per_packet\":"),
        "{text}"
    );
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    for p in points {
        let keys: Vec<&String> = p.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["entries", "established_ns", "ns_per_packet"]);
        assert!(p["ns_per_packet"].as_f64().unwrap() > 0.0);
    }
    let rounds = v["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    for r in rounds {
        let sizes: Vec<u64> = r
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["entries"].as_u64().unwrap())
            .collect();
        assert_eq!(sizes, [100, 1000], "sizes in points order in every round");
        for f in r.as_array().unwrap() {
            for k in ["noop_ns", "new_ns", "established_ns"] {
                assert!(f[k].as_f64().unwrap() > 0.0, "{f}");
            }
        }
    }
    println!("{v}");
}
