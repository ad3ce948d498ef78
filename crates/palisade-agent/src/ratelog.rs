//! Rate-limited logging: a failure that can repeat thousands of times a second (accept
//! at the fd limit, a full disk under the decision log) is logged at most once per
//! interval, with the number of repeats that were not logged, so logs cannot fill a
//! disk either.

use std::time::{Duration, Instant};

/// Decides when a repeated message may be logged again.
#[derive(Debug)]
pub struct RateLog {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLog {
    /// At most one message per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` if a message may be logged now (`n` = occurrences not logged since the
    /// last one); `None` if this occurrence is only counted.
    pub fn ready(&mut self) -> Option<u64> {
        self.ready_at(Instant::now())
    }

    fn ready_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_interval_with_the_count_of_the_others() {
        let mut r = RateLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.ready_at(t0), Some(0));
        for i in 1..=999 {
            assert_eq!(r.ready_at(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(r.ready_at(t0 + Duration::from_secs(10)), Some(999));
        assert_eq!(r.ready_at(t0 + Duration::from_secs(11)), None);
    }
}
