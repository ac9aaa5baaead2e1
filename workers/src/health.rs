//! Store health shared by every task of one runtime: how long the store has
//! been failing without a single successful call in between. Supervision
//! gives up (and `Runtime::run` returns `Err`) once that exceeds the limit.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

#[derive(Debug)]
struct Failing {
    since: Instant,
    last_error: String,
    last_warned: Instant,
}

#[derive(Debug)]
pub(crate) struct Health {
    limit: Duration,
    failing: Mutex<Option<Failing>>,
}

impl Health {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            limit,
            failing: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Failing>> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A store call succeeded.
    pub(crate) fn ok(&self) {
        let mut f = self.lock();
        if let Some(failing) = f.take() {
            tracing::info!(
                down_ms = failing.since.elapsed().as_millis() as u64,
                "job store reachable again after {:.1}s",
                failing.since.elapsed().as_secs_f64()
            );
        }
    }

    /// A store call failed. Logs the first failure of an outage at warn level
    /// and then at most every 30 s, so an outage does not flood the log.
    pub(crate) fn fail(&self, what: &str, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        let mut f = self.lock();
        match f.as_mut() {
            None => {
                tracing::warn!(op = what, error = %error, "job store call failed; retrying with backoff");
                *f = Some(Failing {
                    since: now,
                    last_error: error.to_string(),
                    last_warned: now,
                });
            }
            Some(failing) => {
                failing.last_error = error.to_string();
                if now.duration_since(failing.last_warned) >= Duration::from_secs(30) {
                    failing.last_warned = now;
                    tracing::warn!(
                        op = what,
                        error = %error,
                        down_s = failing.since.elapsed().as_secs(),
                        "job store still unreachable"
                    );
                } else {
                    tracing::debug!(op = what, error = %error, "job store call failed");
                }
            }
        }
    }

    /// `Some(message)` once the store has been failing for longer than the
    /// limit.
    pub(crate) fn exceeded(&self) -> Option<String> {
        let f = self.lock();
        let failing = f.as_ref()?;
        let down = failing.since.elapsed();
        (down >= self.limit).then(|| {
            format!(
                "job store unreachable for {:.0}s (limit {:.0}s), giving up; last error: {}",
                down.as_secs_f64(),
                self.limit.as_secs_f64(),
                failing.last_error
            )
        })
    }
}

/// Exponential backoff for store retries: 50 ms doubling to `cap`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(cap: Duration) -> Self {
        Self {
            next: Duration::from_millis(50),
            cap,
        }
    }
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }
    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(50);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceeded_only_after_limit_and_reset_by_ok() {
        let h = Health::new(Duration::from_millis(30));
        assert!(h.exceeded().is_none());
        h.fail("fetch", &"boom");
        assert!(h.exceeded().is_none());
        std::thread::sleep(Duration::from_millis(40));
        let msg = h.exceeded().expect("limit passed");
        assert!(msg.contains("boom"), "{msg}");
        h.ok();
        assert!(h.exceeded().is_none());
    }

    #[test]
    fn backoff_doubles_to_cap() {
        let mut b = Backoff::new(Duration::from_millis(300));
        let ds: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(ds, vec![50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(50));
    }
}
