//! Results: samples per (configuration, N, metric), their summary, the JSON document and
//! the table for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

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
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
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
}

impl Report {
    /// The summary of one series, if measured.
    pub fn summary(&self, config: Config, entries: usize, metric: Metric) -> Option<Summary> {
        let n = if config == Config::None { 0 } else { entries };
        self.samples
            .get(&(config, n, metric))
            .and_then(|s| Summary::of(s))
    }

    /// `{"rounds": R, "results": [{"config", "entries", "metric", "median", "min", "max"}]}`.
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
        serde_json::to_string_pretty(&JsonReport {
            rounds: self.rounds,
            results,
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
        assert_eq!(obj.len(), 2);
        let results = v["results"].as_array().expect("array");
        assert_eq!(results.len(), 2);
        for e in results {
            assert_eq!(e.as_object().expect("object").len(), 6);
        }
        assert_eq!(results[1]["config"], "iptables-flat");
        assert_eq!(results[1]["median"], 6.0);
    }
}
