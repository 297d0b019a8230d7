//! `--limit-rate`: a token bucket that holds the rate over any few seconds.
//!
//! The bucket starts empty when the first body byte is about to be sent and
//! holds at most one second's worth of credit, so neither the time spent
//! hashing a resumed prefix nor a stall can turn into a burst above the
//! limit (the old average-since-start pacing could).

use std::time::Duration;

use tokio::time::Instant;

/// Paces writes to at most `rate` bytes per second, bursting at most one
/// second's worth after a pause.
#[derive(Debug)]
pub struct Throttle {
    rate: Option<u64>,
    /// Credit in bytes, at most `rate`.
    credit: f64,
    /// When the credit was last brought up to date; `None` until the first byte.
    last: Option<Instant>,
}

impl Throttle {
    /// A throttle for `rate` bytes per second (`None` = unlimited).
    pub fn new(rate: Option<u64>) -> Self {
        Throttle {
            rate: rate.filter(|r| *r > 0),
            credit: 0.0,
            last: None,
        }
    }

    /// The largest slice to write at once, so pacing stays smooth (about a
    /// tenth of a second of data when limited).
    pub fn slice_len(&self, max: usize) -> usize {
        match self.rate {
            None => max,
            Some(r) => usize::try_from(r / 10).unwrap_or(max).clamp(1, max.max(1)),
        }
    }

    /// Waits until `n` more bytes may be sent, then spends their credit.
    pub async fn take(&mut self, n: usize) {
        let Some(rate) = self.rate else {
            return;
        };
        let rate_f = rate as f64;
        let now = Instant::now();
        let last = *self.last.get_or_insert(now);
        self.credit = (self.credit + now.duration_since(last).as_secs_f64() * rate_f).min(rate_f);
        self.last = Some(now);
        let need = n as f64;
        if self.credit < need {
            let wait = Duration::from_secs_f64((need - self.credit) / rate_f);
            tokio::time::sleep(wait).await;
            self.last = Some(now + wait);
            self.credit = 0.0;
        } else {
            self.credit -= need;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn slices_follow_the_rate() {
        assert_eq!(Throttle::new(None).slice_len(1000), 1000);
        assert_eq!(Throttle::new(Some(100)).slice_len(1000), 10);
        assert_eq!(Throttle::new(Some(5)).slice_len(1000), 1);
        assert_eq!(Throttle::new(Some(1 << 30)).slice_len(1000), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_holds_the_rate_from_the_first_byte() {
        let mut t = Throttle::new(Some(1000));
        // Time before the first byte is not credit.
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            t.take(100).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((0.95..1.05).contains(&took), "took {took}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_earns_at_most_one_second_of_burst() {
        let mut t = Throttle::new(Some(1000));
        t.take(100).await;
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let start = tokio::time::Instant::now();
        for _ in 0..30 {
            t.take(100).await;
        }
        // 3000 bytes at 1000/s with 1000 bytes of credit: 2 s, not 0.
        let took = start.elapsed().as_secs_f64();
        assert!((1.95..2.05).contains(&took), "took {took}");
    }
}
