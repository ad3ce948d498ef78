//! Results: samples per (configuration, N, metric), their summary, the JSON document and
//! the table for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::{paired_ratios, Interval, Verdict};

/// A configuration measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Config {
    /// No program, no rules.
    #[serde(rename = "none")]
    None,
    /// Palisade's eBPF datapath.
    #[serde(rename = "palisade")]
    Palisade,
    /// One iptables rule per entry, every packet walks them.
    #[serde(rename = "iptables-flat")]
    IptablesFlat,
    /// ESTABLISHED,RELATED first, then the same rules.
    #[serde(rename = "iptables-stateful")]
    IptablesStateful,
}

impl Config {
    /// Every configuration, in measuring order within a round.
    pub const ALL: [Config; 4] = [
        Config::None,
        Config::Palisade,
        Config::IptablesFlat,
        Config::IptablesStateful,
    ];

    /// The name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::Palisade => "palisade",
            Config::IptablesFlat => "iptables-flat",
            Config::IptablesStateful => "iptables-stateful",
        }
    }
}

/// A metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Metric {
    /// UDP 64-byte request/response, median round trip in µs (lower is better).
    #[serde(rename = "udp_rr_us")]
    UdpRrUs,
    /// TCP 64-byte request/response, median round trip in µs (lower is better).
    #[serde(rename = "tcp_rr_us")]
    TcpRrUs,
    /// TCP connect + 1 byte each way + close, per second (higher is better).
    #[serde(rename = "crr_per_s")]
    CrrPerS,
    /// Bulk TCP throughput in Gbit/s (higher is better).
    #[serde(rename = "tcp_gbps")]
    TcpGbps,
}

impl Metric {
    /// Every metric, in measuring order.
    pub const ALL: [Metric; 4] = [
        Metric::UdpRrUs,
        Metric::TcpRrUs,
        Metric::CrrPerS,
        Metric::TcpGbps,
    ];

    /// The name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::UdpRrUs => "udp_rr_us",
            Metric::TcpRrUs => "tcp_rr_us",
            Metric::CrrPerS => "crr_per_s",
            Metric::TcpGbps => "tcp_gbps",
        }
    }
}

/// Median, extremes and noise of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median (mean of the two middle samples for an even count).
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Coefficient of variation (standard deviation / mean), 0 for one sample.
    pub cv: f64,
    /// Number of samples.
    pub n: usize,
}

impl Summary {
    /// Summarizes `samples` (must be non-empty).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let median = crate::stats::median(samples)?;
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let cv = if mean != 0.0 { var.sqrt() / mean } else { 0.0 };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            cv,
            n,
        })
    }
}

/// Key of a sample series: configuration, N (0 for `none`), metric.
pub type SeriesKey = (Config, usize, Metric);

/// Everything a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Rounds run.
    pub rounds: usize,
    /// The N values measured.
    pub entries: Vec<usize>,
    /// Configurations measured.
    pub configs: Vec<Config>,
    /// One value per run.
    pub samples: BTreeMap<SeriesKey, Vec<f64>>,
    /// CPU seconds per GB of the bulk stream, per (configuration, N).
    pub cpu_s_per_gb: BTreeMap<(Config, usize), Vec<f64>>,
    /// Median connection duration (µs) of each connection-rate run, per (configuration, N).
    pub conn_us: BTreeMap<(Config, usize), Vec<f64>>,
    /// iptables rules in the policy chain, per N.
    pub iptables_rules: BTreeMap<usize, usize>,
    /// Palisade policy-map entries (port ranges expanded to prefixes), per N.
    pub palisade_entries: BTreeMap<usize, usize>,
    /// Facts a reader needs (configurations skipped and why, kernel limits).
    pub notes: Vec<String>,
    /// One value per round, index = round, for ratios within a round: unlike `samples`,
    /// `none` is keyed by the N whose group it was measured in.
    pub paired: BTreeMap<SeriesKey, Vec<f64>>,
    /// Kernel-measured ns per Palisade program run (`run_time_ns / run_cnt` over the
    /// four metrics' traffic), one value per round, per N.
    pub prog_ns_per_run: BTreeMap<usize, Vec<f64>>,
    /// Hardware instruction counters: `None` if available, else why not.
    pub hw_instructions_unavailable: Option<String>,
}

/// A goal on a ratio.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Goal {
    /// `at_most` or `at_least`.
    pub bound: &'static str,
    /// The bound.
    pub value: f64,
}

/// The goals of docs/performance.md that are ratios: (config, metric, against, goal).
const GOALS: [(Config, Metric, Config, Goal); 3] = [
    (
        Config::Palisade,
        Metric::TcpRrUs,
        Config::None,
        Goal {
            bound: "at_most",
            value: 1.03,
        },
    ),
    (
        Config::Palisade,
        Metric::CrrPerS,
        Config::None,
        Goal {
            bound: "at_least",
            value: 0.95,
        },
    ),
    (
        Config::Palisade,
        Metric::TcpRrUs,
        Config::IptablesFlat,
        Goal {
            bound: "at_most",
            value: 0.26,
        },
    ),
];

/// A per-round ratio of one configuration's metric against another's, at one N.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Numerator configuration.
    pub config: &'static str,
    /// Denominator configuration (`none`, or `iptables-flat` for the 0.26× goal).
    pub against: &'static str,
    /// N.
    pub entries: usize,
    /// Metric.
    pub metric: &'static str,
    /// One ratio per round (both values from the same round).
    pub per_round: Vec<f64>,
    /// Median and interval of `per_round`.
    pub interval: Interval,
    /// True when the interval contains 1: no difference these rounds can show.
    pub within_noise_of_equal: bool,
    /// The goal, if docs/performance.md sets one for this ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal: Option<Goal>,
    /// Verdict against the goal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// One element of the JSON `results` array.
#[derive(Debug, Serialize)]
struct JsonResult {
    config: &'static str,
    entries: usize,
    metric: &'static str,
    median: f64,
    min: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
struct JsonReport {
    rounds: usize,
    results: Vec<JsonResult>,
    ratios: Vec<Ratio>,
    prog_ns_per_run: Vec<JsonProgNs>,
    hw_instructions: String,
}

#[derive(Debug, Serialize)]
struct JsonProgNs {
    entries: usize,
    per_round: Vec<f64>,
    interval: Interval,
}

impl Report {
    /// The summary of one series, if measured.
    pub fn summary(&self, config: Config, entries: usize, metric: Metric) -> Option<Summary> {
        let n = if config == Config::None { 0 } else { entries };
        self.samples
            .get(&(config, n, metric))
            .and_then(|s| Summary::of(s))
    }

    /// Every per-round ratio: each configuration against `none` at each N and metric,
    /// and palisade against iptables-flat on TCP RR; goals where docs/performance.md has one.
    pub fn ratios(&self) -> Vec<Ratio> {
        let mut out = Vec::new();
        for &n in &self.entries {
            let mut pairs: Vec<(Config, Config, Metric)> = Vec::new();
            for &c in self.configs.iter().filter(|c| **c != Config::None) {
                for m in Metric::ALL {
                    pairs.push((c, Config::None, m));
                }
            }
            if self.configs.contains(&Config::Palisade)
                && self.configs.contains(&Config::IptablesFlat)
            {
                pairs.push((Config::Palisade, Config::IptablesFlat, Metric::TcpRrUs));
            }
            for (c, against, m) in pairs {
                let (Some(a), Some(b)) = (
                    self.paired.get(&(c, n, m)),
                    self.paired.get(&(against, n, m)),
                ) else {
                    continue;
                };
                let per_round = paired_ratios(a, b);
                let Some(interval) = Interval::of(&per_round) else {
                    continue;
                };
                let goal = GOALS
                    .iter()
                    .find(|g| g.0 == c && g.1 == m && g.2 == against)
                    .map(|g| g.3);
                let verdict = goal.map(|g| match g.bound {
                    "at_least" => Verdict::at_least(&interval, g.value),
                    _ => Verdict::at_most(&interval, g.value),
                });
                out.push(Ratio {
                    config: c.as_str(),
                    against: against.as_str(),
                    entries: n,
                    metric: m.as_str(),
                    per_round: per_round.iter().map(|x| round4(*x)).collect(),
                    within_noise_of_equal: interval.lo <= 1.0 && 1.0 <= interval.hi,
                    interval,
                    goal,
                    verdict,
                });
            }
        }
        out
    }

    fn hw_instructions_text(&self) -> String {
        match &self.hw_instructions_unavailable {
            None => "available (not collected by this benchmark)".into(),
            Some(why) => format!("unavailable on this machine: {why}"),
        }
    }

    /// `{"rounds": R, "results": [{"config", "entries", "metric", "median", "min", "max"}],
    /// "ratios": [Ratio], "prog_ns_per_run": [{"entries", "per_round", "interval"}],
    /// "hw_instructions": "..."}`.
    pub fn to_json(&self) -> String {
        let results = self
            .samples
            .iter()
            .filter_map(|(&(config, entries, metric), s)| {
                Summary::of(s).map(|sum| JsonResult {
                    config: config.as_str(),
                    entries,
                    metric: metric.as_str(),
                    median: round3(sum.median),
                    min: round3(sum.min),
                    max: round3(sum.max),
                })
            })
            .collect();
        let prog_ns_per_run = self
            .prog_ns_per_run
            .iter()
            .filter_map(|(&entries, v)| {
                Some(JsonProgNs {
                    entries,
                    interval: Interval::of(v)?,
                    per_round: v.iter().map(|x| round3(*x)).collect(),
                })
            })
            .collect();
        serde_json::to_string_pretty(&JsonReport {
            rounds: self.rounds,
            results,
            ratios: self.ratios(),
            prog_ns_per_run,
            hw_instructions: self.hw_instructions_text(),
        })
        .expect("plain data serializes")
    }

    /// The table for people: medians with their noise, and ratios against `none`.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Palisade network benchmark: {} round(s), configurations interleaved per round.",
            self.rounds
        );
        let _ = writeln!(
            out,
            "Each cell: median over rounds, then ±CV (coefficient of variation) across rounds.\n\
             crr_conn_us: median duration of one connection (connect, 1 byte each way, close);\n\
             cpu_s/GB: machine-wide busy CPU per GB streamed (other tenants included).\n"
        );
        let header = format!(
            "{:<18} {:>7} {:>16} {:>16} {:>16} {:>16} {:>14} {:>10} {:>9} {:>9} {:>9}",
            "config",
            "N",
            "udp_rr_us",
            "tcp_rr_us",
            "crr_per_s",
            "crr_conn_us",
            "tcp_gbps",
            "cpu_s/GB",
            "rr/none",
            "crr/none",
            "rules"
        );
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "{}", "-".repeat(header.len()));
        let cell = |s: Option<Summary>, prec: usize| match s {
            Some(s) => format!("{:.*} ±{:>2.0}%", prec, s.median, s.cv * 100.0),
            None => "-".to_string(),
        };
        let none_rr = self
            .summary(Config::None, 0, Metric::TcpRrUs)
            .map(|s| s.median);
        let none_crr = self
            .summary(Config::None, 0, Metric::CrrPerS)
            .map(|s| s.median);
        let mut rows: Vec<(Config, usize)> = Vec::new();
        if self.configs.contains(&Config::None) {
            rows.push((Config::None, 0));
        }
        for &n in &self.entries {
            for &c in self.configs.iter().filter(|c| **c != Config::None) {
                rows.push((c, n));
            }
        }
        for (c, n) in rows {
            let s = |m| self.summary(c, n, m);
            let ratio = |v: Option<Summary>, base: Option<f64>| match (v, base) {
                (Some(v), Some(b)) if b > 0.0 => format!("{:.3}", v.median / b),
                _ => "-".into(),
            };
            let cpu = self
                .cpu_s_per_gb
                .get(&(c, n))
                .and_then(|v| Summary::of(v))
                .map(|s| format!("{:.3}", s.median))
                .unwrap_or_else(|| "-".into());
            let rules = match c {
                Config::IptablesFlat | Config::IptablesStateful => self
                    .iptables_rules
                    .get(&n)
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
                Config::Palisade => self
                    .palisade_entries
                    .get(&n)
                    .map(|r| format!("{r}*"))
                    .unwrap_or_default(),
                Config::None => String::new(),
            };
            let _ = writeln!(
                out,
                "{:<18} {:>7} {:>16} {:>16} {:>16} {:>16} {:>14} {:>10} {:>9} {:>9} {:>9}",
                c.as_str(),
                n,
                cell(s(Metric::UdpRrUs), 1),
                cell(s(Metric::TcpRrUs), 1),
                cell(s(Metric::CrrPerS), 0),
                cell(self.conn_us.get(&(c, n)).and_then(|v| Summary::of(v)), 1),
                cell(s(Metric::TcpGbps), 2),
                cpu,
                ratio(s(Metric::TcpRrUs), none_rr),
                ratio(s(Metric::CrrPerS), none_crr),
                rules,
            );
        }
        // Ratios against iptables-flat, for the goal "Palisade ≤ 0.26× iptables-flat".
        if self.configs.contains(&Config::Palisade) && self.configs.contains(&Config::IptablesFlat)
        {
            let _ = writeln!(out, "\ntcp_rr_us palisade / iptables-flat:");
            for &n in &self.entries {
                if let (Some(p), Some(f)) = (
                    self.summary(Config::Palisade, n, Metric::TcpRrUs),
                    self.summary(Config::IptablesFlat, n, Metric::TcpRrUs),
                ) {
                    let _ = writeln!(out, "  N={n:<6} {:.3}", p.median / f.median);
                }
            }
        }
        let ratios = self.ratios();
        if !ratios.is_empty() {
            let _ = writeln!(
                out,
                "\nPaired ratios: per round, then the median and a distribution-free interval \
                 of the median (order statistics; coverage shown). \"~1\": interval contains 1."
            );
            for x in &ratios {
                let goal = match (x.goal, x.verdict) {
                    (Some(g), Some(v)) => format!(
                        "  goal {} {}: {}",
                        if g.bound == "at_least" { "≥" } else { "≤" },
                        g.value,
                        v.as_str()
                    ),
                    _ => String::new(),
                };
                let _ = writeln!(
                    out,
                    "  {:<18} / {:<13} N={:<6} {:<10} {:.3} [{:.3}, {:.3}] ({:.1}%, ±{:.1}%){}{}",
                    x.config,
                    x.against,
                    x.entries,
                    x.metric,
                    x.interval.median,
                    x.interval.lo,
                    x.interval.hi,
                    x.interval.coverage * 100.0,
                    x.interval.half_width_rel() * 100.0,
                    if x.within_noise_of_equal { " ~1" } else { "" },
                    goal
                );
            }
        }
        if !self.prog_ns_per_run.is_empty() {
            let _ = writeln!(
                out,
                "\nKernel time per Palisade program run on this traffic (run_time_ns / run_cnt, \
                 kernel.bpf_stats_enabled=1 during the run):"
            );
            for (n, v) in &self.prog_ns_per_run {
                if let Some(i) = Interval::of(v) {
                    let _ = writeln!(
                        out,
                        "  N={n:<6} {:.1} ns [{:.1}, {:.1}]",
                        i.median, i.lo, i.hi
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "\nHardware instruction counters: {}",
            self.hw_instructions_text()
        );
        if self.configs.contains(&Config::Palisade) {
            let _ = writeln!(
                out,
                "\nrules: iptables rules in the policy chain; * palisade policy-map (LPM) entries, \
                 port ranges expanded to prefixes."
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nnotes:");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

/// Ratios near 1 need a fourth decimal to show a 0.1% difference.
fn round4(x: f64) -> f64 {
    (x * 10000.0).round() / 10000.0
}

/// Three decimals are more than the noise warrants and keep the JSON readable.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_even_count_takes_the_mean_of_the_middle_two() {
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).expect("non-empty");
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 4.0, 4));
    }

    #[test]
    fn json_has_exactly_rounds_and_results_with_six_fields() {
        let mut r = Report {
            rounds: 1,
            ..Default::default()
        };
        r.samples
            .insert((Config::None, 0, Metric::TcpRrUs), vec![10.0]);
        r.samples
            .insert((Config::IptablesFlat, 10, Metric::CrrPerS), vec![5.0, 7.0]);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).expect("json");
        let obj = v.as_object().expect("object");
        assert_eq!(
            obj.keys().collect::<Vec<_>>(),
            [
                "hw_instructions",
                "prog_ns_per_run",
                "ratios",
                "results",
                "rounds"
            ]
        );
        let results = v["results"].as_array().expect("array");
        assert_eq!(results.len(), 2);
        for e in results {
            assert_eq!(e.as_object().expect("object").len(), 6);
        }
        assert_eq!(results[1]["config"], "iptables-flat");
        assert_eq!(results[1]["median"], 6.0);
    }

    #[test]
    fn ratios_pair_rounds_and_judge_the_goals() {
        let mut r = Report {
            rounds: 3,
            entries: vec![10],
            configs: vec![Config::None, Config::Palisade, Config::IptablesFlat],
            ..Default::default()
        };
        // Round 3 is slow for everyone: the per-round ratio does not see it.
        r.paired
            .insert((Config::None, 10, Metric::TcpRrUs), vec![8.0, 8.0, 16.0]);
        r.paired.insert(
            (Config::Palisade, 10, Metric::TcpRrUs),
            vec![8.125, 8.0625, 16.25],
        );
        r.paired.insert(
            (Config::IptablesFlat, 10, Metric::TcpRrUs),
            vec![80.0, 80.0, 160.0],
        );
        let x = r.ratios();
        let rr = x
            .iter()
            .find(|x| x.config == "palisade" && x.against == "none")
            .expect("palisade/none");
        assert_eq!(rr.per_round, [1.0156, 1.0078, 1.0156]);
        assert_eq!((rr.interval.median, rr.interval.lo), (1.015625, 1.0078125));
        assert!(!rr.within_noise_of_equal);
        assert_eq!(rr.verdict, Some(Verdict::Met));
        let flat = x
            .iter()
            .find(|x| x.against == "iptables-flat")
            .expect("palisade/iptables-flat");
        assert_eq!(flat.verdict, Some(Verdict::Met));
        let ipt = x
            .iter()
            .find(|x| x.config == "iptables-flat")
            .expect("iptables-flat/none");
        assert_eq!((ipt.interval.median, ipt.goal), (10.0, None));
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).expect("json");
        assert_eq!(v["ratios"].as_array().expect("array").len(), 3);
        assert_eq!(v["ratios"][0]["verdict"], "met");
    }
}
