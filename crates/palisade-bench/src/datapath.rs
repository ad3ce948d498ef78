//! Paired ratios of `palisade bench datapath` (`BPF_PROG_TEST_RUN`) against its goals:
//! new flow ≤ 3× the no-op program, established ≤ 2.5× the no-op program, and the new
//! flow's growth from the smallest to the largest size ≤ 1.1×. Each ratio is taken per
//! round (both figures come from the same round), then summarized with
//! [`Interval`](crate::stats::Interval) and judged with [`Verdict`].

use palisade_datapath::BenchReport;
use serde::Serialize;

use crate::stats::{Interval, Verdict};

/// Goal: new flow / no-op.
pub const GOAL_NEW: f64 = 3.0;
/// Goal: established / no-op.
pub const GOAL_ESTABLISHED: f64 = 2.5;
/// Goal: new flow at the largest size / at the smallest size.
pub const GOAL_GROWTH: f64 = 1.1;

/// One ratio with its per-round values, interval and verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    /// `new/noop`, `established/noop` or `growth`.
    pub name: &'static str,
    /// Size (for growth: the largest size; `from` is the smallest).
    pub entries: usize,
    /// Smallest size, for growth only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<usize>,
    /// One ratio per round.
    pub per_round: Vec<f64>,
    /// Median and interval of `per_round`.
    pub interval: Interval,
    /// Upper-bound goal.
    pub goal: f64,
    /// Verdict of the interval against the goal.
    pub verdict: Verdict,
}

fn ratio(
    name: &'static str,
    entries: usize,
    from: Option<usize>,
    per_round: Vec<f64>,
    goal: f64,
) -> Option<Ratio> {
    let interval = Interval::of(&per_round)?;
    Some(Ratio {
        name,
        entries,
        from,
        verdict: Verdict::at_most(&interval, goal),
        per_round,
        interval,
        goal,
    })
}

/// Every ratio of `r`: per size new/noop and established/noop, then growth.
pub fn ratios(r: &BenchReport) -> Vec<Ratio> {
    let sizes = r.points.len();
    let col = |i: usize, f: &dyn Fn(&palisade_datapath::RoundFigures) -> f64| -> Vec<f64> {
        r.rounds
            .iter()
            .filter_map(|round| round.get(i).map(f))
            .collect()
    };
    let mut out = Vec::new();
    for (i, p) in r.points.iter().enumerate() {
        out.extend(ratio(
            "new/noop",
            p.entries,
            None,
            col(i, &|f| f.new_ns / f.noop_ns),
            GOAL_NEW,
        ));
        out.extend(ratio(
            "established/noop",
            p.entries,
            None,
            col(i, &|f| f.established_ns / f.noop_ns),
            GOAL_ESTABLISHED,
        ));
    }
    if sizes >= 2 {
        let growth = r
            .rounds
            .iter()
            .filter_map(|round| Some(round.get(sizes - 1)?.new_ns / round.first()?.new_ns))
            .collect();
        out.extend(ratio(
            "growth",
            r.points[sizes - 1].entries,
            Some(r.points[0].entries),
            growth,
            GOAL_GROWTH,
        ));
    }
    out
}

/// The table for people: one line per ratio.
pub fn table(r: &BenchReport, ratios: &[Ratio]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{} round(s), sizes interleaved (order rotated per round); ratio per round, then the \
         median and a distribution-free interval of the median (order statistics).\n",
        r.rounds.len()
    );
    let _ = writeln!(
        out,
        "{:<18} {:>8} {:>8} {:>17} {:>9} {:>6}  verdict",
        "ratio", "entries", "median", "interval", "coverage", "goal"
    );
    for x in ratios {
        let entries = match x.from {
            Some(f) => format!("{f}→{}", x.entries),
            None => x.entries.to_string(),
        };
        let _ = writeln!(
            out,
            "{:<18} {:>8} {:>8.3} {:>17} {:>8.1}% {:>6}  {}",
            x.name,
            entries,
            x.interval.median,
            format!("[{:.3}, {:.3}]", x.interval.lo, x.interval.hi),
            x.interval.coverage * 100.0,
            format!("≤{}", x.goal),
            x.verdict.as_str()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_datapath::{BenchPoint, RoundFigures};

    fn fig(entries: usize, noop: f64, new: f64, est: f64) -> RoundFigures {
        RoundFigures {
            entries,
            noop_ns: noop,
            new_ns: new,
            established_ns: est,
        }
    }

    #[test]
    fn ratios_are_per_round_and_judged_against_the_goals() {
        let point = |entries| BenchPoint {
            entries,
            ns_per_packet: 0.0,
            established_ns: 0.0,
        };
        // Round 2 is twice as slow overall: its per-round ratios are unchanged.
        let r = BenchReport {
            noop_ns: 20.0,
            points: vec![point(100), point(100_000)],
            rounds: vec![
                vec![fig(100, 20.0, 50.0, 60.0), fig(100_000, 20.0, 55.0, 40.0)],
                vec![
                    fig(100, 40.0, 100.0, 120.0),
                    fig(100_000, 40.0, 110.0, 80.0),
                ],
            ],
        };
        let x = ratios(&r);
        let names: Vec<_> = x.iter().map(|x| (x.name, x.entries)).collect();
        assert_eq!(
            names,
            [
                ("new/noop", 100),
                ("established/noop", 100),
                ("new/noop", 100_000),
                ("established/noop", 100_000),
                ("growth", 100_000)
            ]
        );
        assert_eq!(x[0].per_round, [2.5, 2.5]);
        assert_eq!(x[0].verdict, Verdict::Met);
        // 60/20 = 3 > 2.5 in both rounds.
        assert_eq!(x[1].verdict, Verdict::Missed);
        assert_eq!(x[4].from, Some(100));
        assert_eq!(x[4].per_round, [1.1, 1.1]);
        let v = serde_json::to_value(&x[4]).expect("json");
        assert_eq!(v["verdict"], "met");
        assert_eq!(v["interval"]["median"], 1.1);
    }
}
