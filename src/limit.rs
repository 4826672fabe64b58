//! Limits on the data path, both lock-free: per-route rate limiting (GCRA: requests are
//! spaced `1/rate` apart; a request that would have to wait longer than it may is
//! refused instead of queued — GoTo allows about 10 requests per second per API and
//! answers 429 beyond, so queueing here keeps scripts from burning their quota), and the
//! cap on requests in flight.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A rate limiter for one route.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    interval_nanos: u64,
    /// Nanoseconds after `base` at which the next request may go.
    next: AtomicU64,
    base: Instant,
}

impl RateLimiter {
    /// A limiter for `per_second` requests per second.
    pub(crate) fn new(per_second: f64) -> RateLimiter {
        let interval = (1e9 / per_second).max(1.0) as u64;
        RateLimiter { interval_nanos: interval, next: AtomicU64::new(0), base: Instant::now() }
    }

    /// Reserves a slot: how long to wait before sending, or `None` when that would
    /// exceed `max_wait` (nothing is reserved then).
    pub(crate) fn reserve(&self, now: Instant, max_wait: Duration) -> Option<Duration> {
        let now_n = now.saturating_duration_since(self.base).as_nanos() as u64;
        let max_n = max_wait.as_nanos() as u64;
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let slot = cur.max(now_n);
            let wait = slot - now_n;
            if wait > max_n {
                return None;
            }
            match self.next.compare_exchange_weak(cur, slot + self.interval_nanos, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(Duration::from_nanos(wait)),
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Caps requests in flight (`max_concurrent_requests`): one counter raised and lowered
/// per request. (tokio's `Semaphore` takes its waiters' lock on every release.)
#[derive(Debug)]
pub(crate) struct InFlight {
    max: usize,
    now: AtomicUsize,
}

impl InFlight {
    /// At most `max` at once.
    pub(crate) fn new(max: usize) -> InFlight {
        InFlight { max, now: AtomicUsize::new(0) }
    }

    /// A slot until the guard is dropped, or `None` when `max` requests are in flight.
    pub(crate) fn enter(&self) -> Option<InFlightGuard<'_>> {
        if self.now.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.now.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(InFlightGuard(self))
    }
}

/// One request's slot in an [`InFlight`].
#[derive(Debug)]
pub(crate) struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_requests_and_refuses_beyond_max_wait() {
        let l = RateLimiter::new(10.0);
        let t = l.base + Duration::from_secs(1);
        let max = Duration::from_millis(250);
        assert_eq!(l.reserve(t, max), Some(Duration::ZERO));
        assert_eq!(l.reserve(t, max), Some(Duration::from_millis(100)));
        assert_eq!(l.reserve(t, max), Some(Duration::from_millis(200)));
        assert_eq!(l.reserve(t, max), None, "300 ms > 250 ms");
        // Time passes: slots free up again.
        assert_eq!(l.reserve(t + Duration::from_secs(1), max), Some(Duration::ZERO));
    }

    #[test]
    fn concurrent_reservations_get_distinct_slots() {
        let l = std::sync::Arc::new(RateLimiter::new(1000.0));
        let t = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..100).map(|_| l.reserve(t, Duration::from_secs(10)).unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 400);
    }

    #[test]
    fn in_flight_refuses_past_max_and_frees_on_drop() {
        let cap = InFlight::new(2);
        let a = cap.enter().expect("first");
        let b = cap.enter().expect("second");
        assert!(cap.enter().is_none(), "a third while two are in flight");
        drop(a);
        let c = cap.enter().expect("a slot freed by the first");
        assert!(cap.enter().is_none());
        drop((b, c));
        assert!(cap.enter().is_some());
    }
}
