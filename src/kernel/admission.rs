//! Admission of kernel runs: at most `per_minute` runs may start in any sliding minute.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::TelosError;

/// A sliding one-minute window of run starts.
#[derive(Debug)]
pub struct RateWindow {
    /// 0: no limit.
    per_minute: usize,
    recent: VecDeque<Instant>,
}

impl RateWindow {
    pub fn new(per_minute: usize) -> RateWindow {
        RateWindow {
            per_minute,
            recent: VecDeque::new(),
        }
    }

    /// Whether another run may start at `now`; if so it is counted.
    pub fn admit(&mut self, now: Instant) -> Result<(), TelosError> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.recent.pop_front();
        }
        if self.per_minute > 0 && self.recent.len() >= self.per_minute {
            return Err(TelosError::RateLimited(format!(
                "the kernel already started {} runs in the last minute (kernel_runs_per_minute); try again shortly",
                self.per_minute
            )));
        }
        self.recent.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_beyond_the_limit_wait_for_the_window_to_slide() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(2);
        assert!(w.admit(t0).is_ok());
        assert!(w.admit(t0 + Duration::from_secs(10)).is_ok());
        let e = w.admit(t0 + Duration::from_secs(59)).unwrap_err();
        assert!(matches!(e, TelosError::RateLimited(_)), "{e}");
        assert!(e.to_string().contains("kernel_runs_per_minute"));
        // A refusal is not counted: once the first start is a minute old, one more fits.
        assert!(w.admit(t0 + Duration::from_secs(60)).is_ok());
        assert!(w.admit(t0 + Duration::from_secs(61)).is_err());
    }

    #[test]
    fn zero_means_no_limit() {
        let t0 = Instant::now();
        let mut w = RateWindow::new(0);
        for _ in 0..1000 {
            assert!(w.admit(t0).is_ok());
        }
    }
}
