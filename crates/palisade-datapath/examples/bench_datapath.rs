//! `cargo run -p palisade-datapath --example bench_datapath [repeat] [rounds]`: prints
//! the benchmark JSON (root needed). The kernel times the programs, so a debug
//! build measures the same thing as a release build.

fn main() {
    let mut o = palisade_datapath::BenchOptions::default();
    let mut args = std::env::args().skip(1);
    if let Some(r) = args.next() {
        o.repeat = r.parse().expect("repeat");
    }
    if let Some(r) = args.next() {
        o.rounds = r.parse().expect("rounds");
    }
    let report = palisade_datapath::bench_datapath(&o).expect("bench");
    println!("{}", serde_json::to_string(&report).expect("json"));
}
