//! Paired-round statistics: the median of per-round ratios, a distribution-free
//! interval for it, and a verdict against a goal.
//!
//! Why per round: slow drift (another tenant's build, thermal) moves every configuration
//! measured in the same round alike, so the ratio *within* a round cancels most of it,
//! while medians of absolute figures over rounds do not.
//!
//! The interval is the order-statistic confidence interval of the median: with `n`
//! independent ratios sorted, `[x(k), x(n+1-k)]` covers the true median with probability
//! `1 - 2·P(Binomial(n, ½) < k)`, whatever the distribution. `k` is the largest rank with
//! coverage ≥ 95%. Below 6 rounds no pair of order statistics reaches 95%, so the
//! interval is the full range and [`Interval::coverage`] says what it really covers
//! (e.g. 93.75% for 5 rounds). No resampling, so no seed and the same input always gives
//! the same interval.

use serde::Serialize;

/// Median of `v` (mean of the two middle values for an even count); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// A median with its distribution-free interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Median of the values.
    pub median: f64,
    /// Lower end (an order statistic).
    pub lo: f64,
    /// Upper end (an order statistic).
    pub hi: f64,
    /// Probability that `[lo, hi]` covers the true median (≥ 0.95 from 6 values on).
    pub coverage: f64,
    /// Number of values.
    pub n: usize,
}

impl Interval {
    /// The interval of the median of `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Interval> {
        let median = median(values)?;
        let mut s = values.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        // P(B <= j) for B ~ Binomial(n, 1/2), accumulated.
        let total = 2f64.powi(n as i32);
        let mut binom = 1.0f64; // C(n, 0)
        let mut cdf = Vec::with_capacity(n + 1);
        let mut acc = 0.0;
        for j in 0..=n {
            if j > 0 {
                binom = binom * (n - j + 1) as f64 / j as f64;
            }
            acc += binom;
            cdf.push(acc / total);
        }
        // Coverage of [x(k), x(n+1-k)] (1-based) is 1 - 2 P(B <= k-1).
        let coverage_of = |k: usize| 1.0 - 2.0 * cdf[k - 1];
        let mut k = 1;
        while k < n.div_ceil(2) && coverage_of(k + 1) >= 0.95 {
            k += 1;
        }
        Some(Interval {
            median,
            lo: s[k - 1],
            hi: s[n - k],
            coverage: coverage_of(k).max(0.0),
            n,
        })
    }

    /// Half the width relative to the median (0.03 is "±3%").
    pub fn half_width_rel(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.hi - self.lo) / 2.0 / self.median
        }
    }
}

/// Verdict of a ratio against an upper-bound goal ("ratio ≤ goal").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// The whole interval is at or below the goal.
    #[serde(rename = "met")]
    Met,
    /// The whole interval is above the goal.
    #[serde(rename = "missed")]
    Missed,
    /// The interval straddles the goal: these rounds cannot tell.
    #[serde(rename = "within noise")]
    WithinNoise,
}

impl Verdict {
    /// Classifies `i` against "ratio ≤ `goal`".
    pub fn at_most(i: &Interval, goal: f64) -> Verdict {
        if i.hi <= goal {
            Verdict::Met
        } else if i.lo > goal {
            Verdict::Missed
        } else {
            Verdict::WithinNoise
        }
    }

    /// Classifies `i` against "ratio ≥ `goal`".
    pub fn at_least(i: &Interval, goal: f64) -> Verdict {
        if i.lo >= goal {
            Verdict::Met
        } else if i.hi < goal {
            Verdict::Missed
        } else {
            Verdict::WithinNoise
        }
    }

    /// The name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "missed",
            Verdict::WithinNoise => "within noise",
        }
    }
}

/// Per-round ratios `a[r] / b[r]` (rounds where either is missing or `b` is 0 are skipped).
pub fn paired_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter(|(_, &d)| d > 0.0)
        .map(|(&x, &d)| x / d)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_values_take_the_full_range_and_say_their_coverage_is_below_95() {
        let i = Interval::of(&[1.3, 1.0, 1.2, 1.1, 1.4]).expect("non-empty");
        assert_eq!((i.median, i.lo, i.hi, i.n), (1.2, 1.0, 1.4, 5));
        assert!((i.coverage - 0.9375).abs() < 1e-12, "{}", i.coverage);
    }

    #[test]
    fn ten_values_use_the_second_order_statistics() {
        // n = 10: k = 2 gives 1 - 2·(1+10)/1024 = 0.9785; k = 3 gives 0.8906 < 0.95.
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        let i = Interval::of(&v).expect("non-empty");
        assert_eq!((i.median, i.lo, i.hi), (5.5, 2.0, 9.0));
        assert!((i.coverage - (1.0 - 22.0 / 1024.0)).abs() < 1e-12);
    }

    #[test]
    fn twenty_values_use_the_sixth_order_statistics() {
        // n = 20: P(B ≤ 5) = 0.0207 → k = 6, coverage 0.9586; k = 7 would be 0.8847.
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let i = Interval::of(&v).expect("non-empty");
        assert_eq!((i.lo, i.hi), (6.0, 15.0));
        assert!(i.coverage >= 0.95 && i.coverage < 0.96, "{}", i.coverage);
        assert!(i.lo <= i.median && i.median <= i.hi);
    }

    #[test]
    fn one_value_is_its_own_interval() {
        let i = Interval::of(&[2.0]).expect("non-empty");
        assert_eq!((i.median, i.lo, i.hi), (2.0, 2.0, 2.0));
        assert_eq!(i.half_width_rel(), 0.0);
        assert!(Interval::of(&[]).is_none());
    }

    #[test]
    fn verdicts_met_missed_and_within_noise() {
        let i = |lo, hi| Interval {
            median: (lo + hi) / 2.0,
            lo,
            hi,
            coverage: 0.95,
            n: 10,
        };
        assert_eq!(Verdict::at_most(&i(2.0, 2.9), 3.0), Verdict::Met);
        assert_eq!(Verdict::at_most(&i(2.0, 3.0), 3.0), Verdict::Met);
        assert_eq!(Verdict::at_most(&i(3.1, 3.5), 3.0), Verdict::Missed);
        assert_eq!(Verdict::at_most(&i(2.8, 3.2), 3.0), Verdict::WithinNoise);
        assert_eq!(Verdict::WithinNoise.as_str(), "within noise");
        assert_eq!(Verdict::at_least(&i(0.95, 1.0), 0.95), Verdict::Met);
        assert_eq!(Verdict::at_least(&i(0.8, 0.9), 0.95), Verdict::Missed);
        assert_eq!(Verdict::at_least(&i(0.9, 1.0), 0.95), Verdict::WithinNoise);
    }

    #[test]
    fn ratios_are_paired_by_round() {
        assert_eq!(
            paired_ratios(&[2.0, 3.0, 9.0], &[1.0, 0.0, 3.0]),
            vec![2.0, 3.0]
        );
        let i = Interval::of(&paired_ratios(&[2.0, 4.0], &[1.0, 2.0])).expect("two");
        assert_eq!((i.median, i.half_width_rel()), (2.0, 0.0));
    }
}
