//! `--limit-rate`: paces body writes so the average rate stays at the limit,
//! like curl's option (a real throttle, not a sleep per chunk).

use std::time::Duration;

use tokio::time::Instant;

/// Paces writes to at most `rate` bytes per second since its creation.
#[derive(Debug)]
pub struct Throttle {
    rate: Option<u64>,
    start: Instant,
    sent: u64,
}

impl Throttle {
    /// A throttle for `rate` bytes per second (`None` = unlimited).
    pub fn new(rate: Option<u64>) -> Self {
        Throttle {
            rate: rate.filter(|r| *r > 0),
            start: Instant::now(),
            sent: 0,
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

    /// Waits until `n` more bytes may be sent, then counts them.
    pub async fn take(&mut self, n: usize) {
        self.sent += n as u64;
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.sent as f64 / rate as f64);
            let at = self.start + due;
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
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
    async fn pacing_holds_the_average_rate() {
        let mut t = Throttle::new(Some(1000));
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            t.take(100).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((0.9..1.2).contains(&took), "took {took}");
    }
}
