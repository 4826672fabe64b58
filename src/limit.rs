//! Limits on the data path, both lock-free: per-route pacing (GCRA: requests are spaced
//! `1/rate_limit` apart, and none leave while an upstream 429's pause lasts; a request
//! that would have to wait longer than it may is refused instead of queued — GoTo allows
//! about 10 requests per second per API and answers 429 beyond, so queueing here keeps
//! scripts from burning their quota), and the cap on requests in flight.
//!
//! With `store = "redis"` the pace of a route lives in a [`SharedBudget`] instead, so
//! replicas spend GoTo's quota as one budget; the local limiter is the fallback.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// The delay a server's `Retry-After` asks for (RFC 9110 §10.2.3): delay-seconds or an
/// HTTP-date (one gone by: zero); `None` when absent or unreadable. One reader for the
/// token endpoint's and the upstream API's answers; each caller caps it.
pub(crate) fn retry_after(value: Option<&http::HeaderValue>, now: SystemTime) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    text.parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .or_else(|| httpdate::parse_http_date(text).ok().map(|at| at.duration_since(now).unwrap_or(Duration::ZERO)))
}

/// How far apart requests that queued behind a pause leave a route without a
/// `rate_limit`: in the order they came, not as one burst.
pub(crate) const QUEUE_STEP: Duration = Duration::from_millis(1);

/// The pace of one route: its `rate_limit` spacing (none: interval zero) and the pause
/// an upstream 429 imposes.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    interval_nanos: u64,
    /// Nanoseconds after `base` at which the next request may go.
    next: AtomicU64,
    /// Nanoseconds after `base` until which an upstream 429 pauses the route.
    paused_until: AtomicU64,
    base: Instant,
}

impl RateLimiter {
    /// A limiter for `per_second` requests per second.
    pub(crate) fn new(per_second: f64) -> RateLimiter {
        let interval = (1e9 / per_second).max(1.0) as u64;
        RateLimiter::with_interval(interval)
    }

    /// No spacing: requests wait only for a pause.
    pub(crate) fn unlimited() -> RateLimiter {
        RateLimiter::with_interval(0)
    }

    fn with_interval(interval_nanos: u64) -> RateLimiter {
        RateLimiter { interval_nanos, next: AtomicU64::new(0), paused_until: AtomicU64::new(0), base: Instant::now() }
    }

    /// The spacing between two requests (zero without a rate limit).
    pub(crate) fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_nanos)
    }

    /// True when a request may go at once with nothing to reserve: no rate limit, and
    /// nothing paused or queued (one atomic load; the clock is read only after a pause).
    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        if self.interval_nanos != 0 {
            return false;
        }
        let next = self.next.load(Ordering::Relaxed);
        next == 0 || next <= self.nanos(Instant::now())
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Reserves a slot: how long to wait before sending, unless that exceeds `max_wait`.
    pub(crate) fn reserve(&self, now: Instant, max_wait: Duration) -> Reservation {
        let now_n = self.nanos(now);
        let max_n = max_wait.as_nanos() as u64;
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let slot = cur.max(now_n);
            let wait = slot - now_n;
            if wait > max_n {
                return Reservation::TooFar(Duration::from_nanos(wait));
            }
            // Behind a pause, a route without spacing still lets its queue out in order.
            let step =
                if wait > 0 { self.interval_nanos.max(QUEUE_STEP.as_nanos() as u64) } else { self.interval_nanos };
            match self.next.compare_exchange_weak(cur, slot + step, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Reservation::After(Duration::from_nanos(wait)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Stops the route until `now + pause` (an upstream 429): no slot is given before.
    pub(crate) fn pause(&self, now: Instant, pause: Duration) {
        let until = self.nanos(now) + pause.as_nanos() as u64;
        self.paused_until.fetch_max(until, Ordering::AcqRel);
        self.next.fetch_max(until, Ordering::AcqRel);
    }

    /// How much longer the route's pause lasts (zero when it is not paused).
    pub(crate) fn paused_for(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.paused_until.load(Ordering::Acquire).saturating_sub(self.nanos(now)))
    }
}

/// What asking a budget for the next slot gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// A slot is reserved: send after this wait.
    After(Duration),
    /// The next slot is this far away, beyond what the caller would wait: nothing is
    /// reserved.
    TooFar(Duration),
}

/// A route's pace kept where every replica sees it (`store = "redis"`): the same rules
/// as [`RateLimiter`], so N replicas together send what one would. Implemented by the
/// token store's backend; the data path knows only this trait.
#[async_trait::async_trait]
pub(crate) trait SharedBudget: Send + Sync {
    /// Reserves `route`'s next slot, `interval` after the previous one and not before
    /// its pause ends, unless it is more than `max_wait` away.
    async fn reserve(
        &self,
        route: &str,
        interval: Duration,
        max_wait: Duration,
    ) -> Result<Reservation, BudgetUnavailable>;

    /// Pauses `route` for `pause` (an upstream 429) for every replica.
    async fn pause(&self, route: &str, pause: Duration) -> Result<(), BudgetUnavailable>;

    /// How much longer `route`'s pause lasts.
    async fn paused_for(&self, route: &str) -> Result<Duration, BudgetUnavailable>;
}

/// The shared budget could not be asked (Redis down or slow): the route falls back to
/// its local limiter.
#[derive(Debug, thiserror::Error)]
#[error("the shared rate-limit budget is unreachable: {0}")]
pub struct BudgetUnavailable(pub String);

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
        assert_eq!(l.reserve(t, max), Reservation::After(Duration::ZERO));
        assert_eq!(l.reserve(t, max), Reservation::After(Duration::from_millis(100)));
        assert_eq!(l.reserve(t, max), Reservation::After(Duration::from_millis(200)));
        assert_eq!(l.reserve(t, max), Reservation::TooFar(Duration::from_millis(300)), "300 ms > 250 ms");
        // Time passes: slots free up again.
        assert_eq!(l.reserve(t + Duration::from_secs(1), max), Reservation::After(Duration::ZERO));
    }

    #[test]
    fn a_pause_holds_every_slot_and_the_queue_leaves_in_order() {
        let l = RateLimiter::unlimited();
        let t = l.base + Duration::from_secs(1);
        let max = Duration::from_secs(10);
        assert!(l.is_open());
        assert_eq!(l.reserve(t, max), Reservation::After(Duration::ZERO));
        assert_eq!(l.reserve(t, max), Reservation::After(Duration::ZERO), "no spacing without a rate limit");
        l.pause(t, Duration::from_secs(2));
        assert!(!l.is_open());
        assert_eq!(l.paused_for(t), Duration::from_secs(2));
        assert_eq!(l.reserve(t, max), Reservation::After(Duration::from_secs(2)));
        assert_eq!(
            l.reserve(t, max),
            Reservation::After(Duration::from_secs(2) + QUEUE_STEP),
            "queued in arrival order"
        );
        assert_eq!(l.reserve(t, Duration::from_secs(1)), Reservation::TooFar(Duration::from_secs(2) + QUEUE_STEP * 2));
        // A shorter pause never shortens a longer one.
        l.pause(t, Duration::from_millis(10));
        assert_eq!(l.paused_for(t), Duration::from_secs(2));
        assert_eq!(l.paused_for(t + Duration::from_secs(3)), Duration::ZERO);
        assert_eq!(l.reserve(t + Duration::from_secs(3), max), Reservation::After(Duration::ZERO));

        let l = RateLimiter::new(10.0);
        assert!(!l.is_open(), "a rate limit always reserves");
        l.pause(t, Duration::from_secs(1));
        assert_eq!(l.reserve(t, max), Reservation::After(Duration::from_secs(1)));
        assert_eq!(l.reserve(t, max), Reservation::After(Duration::from_millis(1100)), "spaced after the pause");
    }

    #[test]
    fn concurrent_reservations_get_distinct_slots() {
        let l = std::sync::Arc::new(RateLimiter::new(1000.0));
        let t = Instant::now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .map(|_| match l.reserve(t, Duration::from_secs(10)) {
                            Reservation::After(wait) => wait,
                            Reservation::TooFar(wait) => panic!("no slot within 10 s: {wait:?}"),
                        })
                        .collect::<Vec<_>>()
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
