//! A route's pace on the data path: its `rate_limit`, the pause an
//! upstream `429` imposes (`Retry-After`, in seconds or as an HTTP date; 1 s when absent;
//! at most [`MAX_PAUSE`]), and — with `store = "redis"` — the budget every replica
//! shares, so GoTo's quota is spent as one. When that budget cannot be reached the route
//! falls back to its local limiter at its full `rate_limit` (each replica alone stays
//! within it), logs it once, and counts each such request in
//! `goto_auth_proxy_rate_limit_local_total{route}`.
//!
//! With a shared budget, a route with a `rate_limit` takes every request's slot from it
//! (one Redis round trip per request); a route without one only learns of another
//! replica's pause, by asking at most every [`PAUSE_POLL`], so its requests never wait
//! on Redis.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;

use crate::error::{ErrorCode, ProxyError};
use crate::limit::{BudgetUnavailable, RateLimiter, Reservation, SharedBudget};

/// Longest pause a `Retry-After` may impose: a broken or hostile header must not stop a
/// route for an hour; after it, one request finds out whether the quota is back.
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(60);

/// The pause after a `429` without a usable `Retry-After`.
pub(crate) const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

/// Longest a request waits for the shared budget's answer before pacing locally.
const SHARED_TIMEOUT: Duration = Duration::from_millis(250);

/// How often a route without `rate_limit` asks the shared budget whether another
/// replica paused it.
pub const PAUSE_POLL: Duration = Duration::from_millis(200);

/// After the shared budget failed, how long routes pace locally before asking it again
/// (so a down Redis costs one timeout a second, not one per request).
const SHARED_RETRY: Duration = Duration::from_secs(1);

/// The budget replicas share, with what the data path needs to survive its outages.
pub(crate) struct Shared {
    budget: Arc<dyn SharedBudget>,
    base: Instant,
    /// Nanoseconds after `base` before which the budget is not asked (it just failed).
    down_until: AtomicU64,
    /// Whether routes pace locally now (for one log line per change).
    degraded: AtomicBool,
}

impl Shared {
    /// Shares every route's pace through `budget`.
    pub(crate) fn new(budget: Arc<dyn SharedBudget>) -> Shared {
        Shared { budget, base: Instant::now(), down_until: AtomicU64::new(0), degraded: AtomicBool::new(false) }
    }

    /// The budget, unless it failed less than [`SHARED_RETRY`] ago.
    fn usable(&self, now: Instant) -> Option<&dyn SharedBudget> {
        let now_n = now.saturating_duration_since(self.base).as_nanos() as u64;
        (self.down_until.load(Ordering::Relaxed) <= now_n).then_some(&*self.budget)
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Whether the route whose last poll is `polled` should ask for a pause again.
    fn poll_due(&self, polled: &AtomicU64, now: Instant) -> bool {
        polled.load(Ordering::Relaxed).saturating_add(PAUSE_POLL.as_nanos() as u64) <= self.nanos(now)
    }

    /// Claims the route's next poll: true for the one request that should ask.
    fn claim_poll(&self, polled: &AtomicU64, now: Instant) -> bool {
        let last = polled.load(Ordering::Relaxed);
        last.saturating_add(PAUSE_POLL.as_nanos() as u64) <= self.nanos(now)
            && polled.compare_exchange(last, self.nanos(now), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    fn failed(&self, route: &str, why: &str) {
        let until = Instant::now() + SHARED_RETRY;
        self.down_until.store(until.saturating_duration_since(self.base).as_nanos() as u64, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(route, error = why, "shared rate-limit budget unreachable: each replica paces its routes alone, at the full rate_limit, until it is back");
        }
    }

    fn answered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("shared rate-limit budget reachable again: replicas share GoTo's quota");
        }
    }

    /// `op` on the budget within [`SHARED_TIMEOUT`]; `None` (after noting the failure)
    /// when the budget is down, slow or resting.
    async fn ask<'a, T>(
        &'a self,
        route: &str,
        op: impl std::future::Future<Output = Result<T, BudgetUnavailable>> + 'a,
    ) -> Option<T> {
        match tokio::time::timeout(SHARED_TIMEOUT, op).await {
            Ok(Ok(v)) => {
                self.answered();
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(route, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(route, "no answer within 250 ms");
                None
            }
        }
    }
}

/// A route's pace and its metric handles, resolved at config load.
pub(super) struct RoutePace {
    pub(super) local: RateLimiter,
    /// Whether the route has a `rate_limit` (else only pauses hold it).
    pub(super) limited: bool,
    pub(super) retry_429: bool,
    pub(super) queue: prometheus::IntGauge,
    pub(super) wait: prometheus::Histogram,
    pub(super) throttled: prometheus::IntCounter,
    pub(super) local_fallback: prometheus::IntCounter,
    /// Without `rate_limit`: when the shared pause was last asked ([`Shared`]'s clock).
    pub(super) polled: AtomicU64,
}

/// Lowers the queue gauge however the wait ends (a client that gives up included).
struct Queued<'a>(&'a prometheus::IntGauge);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RoutePace {
    /// True when a request may go at once without asking anything: no `rate_limit`, no
    /// pause, no shared budget. One atomic load: the common case of the hot path.
    #[inline]
    pub(super) fn is_open(&self, shared: Option<&Shared>) -> bool {
        match shared {
            None => self.local.is_open(),
            Some(_) if self.limited => false,
            Some(s) => self.local.is_open() && !s.poll_due(&self.polled, Instant::now()),
        }
    }

    /// Without `rate_limit`: takes over another replica's pause into the local limiter
    /// (at most every [`PAUSE_POLL`], by one request).
    async fn follow_shared_pause(&self, prefix: &str, shared: Option<&Shared>) {
        let now = Instant::now();
        let Some((s, b)) = shared.and_then(|s| s.usable(now).map(|b| (s, b))) else { return };
        if !s.claim_poll(&self.polled, now) {
            return;
        }
        if let Some(left) = s.ask(prefix, b.paused_for(prefix)).await {
            if !left.is_zero() {
                self.local.pause(now, left);
            }
        }
    }

    /// Waits for the route's turn: its slot in the `rate_limit` spacing, after any pause.
    /// `rate_limited` (with a `Retry-After`) when that would be past `deadline`.
    pub(super) async fn wait_turn(
        &self,
        prefix: &str,
        shared: Option<&Shared>,
        deadline: Instant,
    ) -> Result<(), ProxyError> {
        let start = Instant::now();
        loop {
            let now = Instant::now();
            let max = deadline.saturating_duration_since(now);
            let reserved = if self.limited {
                let interval = self.local.interval();
                let asked = match shared.and_then(|s| s.usable(now).map(|b| (s, b))) {
                    Some((s, b)) => s.ask(prefix, b.reserve(prefix, interval, max)).await,
                    None => None,
                };
                match asked {
                    Some(r) => r,
                    None => {
                        if shared.is_some() {
                            self.local_fallback.inc();
                        }
                        self.local.reserve(now, max)
                    }
                }
            } else {
                self.follow_shared_pause(prefix, shared).await;
                self.local.reserve(Instant::now(), deadline.saturating_duration_since(Instant::now()))
            };
            let wait = match reserved {
                Reservation::After(wait) => wait,
                Reservation::TooFar(would_wait) => return Err(self.refused(prefix, would_wait)),
            };
            if wait.is_zero() {
                break;
            }
            self.queue.inc();
            let _queued = Queued(&self.queue);
            tokio::time::sleep(wait).await;
            // A pause that began while this request waited (another request's 429) holds
            // it too: it takes a new slot after that pause.
            let now = Instant::now();
            let paused = match shared.and_then(|s| s.usable(now).map(|b| (s, b))) {
                Some((s, b)) if self.limited => {
                    s.ask(prefix, b.paused_for(prefix)).await.unwrap_or_else(|| self.local.paused_for(now))
                }
                _ => {
                    self.follow_shared_pause(prefix, shared).await;
                    self.local.paused_for(Instant::now())
                }
            };
            if paused.is_zero() {
                break;
            }
        }
        self.wait.observe(start.elapsed().as_secs_f64());
        Ok(())
    }

    fn refused(&self, prefix: &str, would_wait: Duration) -> ProxyError {
        let why = if self.local.paused_for(Instant::now()).is_zero() && self.limited {
            "its rate_limit queue is full"
        } else {
            "GoTo answered 429 and the route is paused"
        };
        ProxyError::new(
            ErrorCode::RateLimited,
            format!("{prefix}: {why} (a turn is {} ms away, past token_wait); retry later", would_wait.as_millis()),
        )
        .retry_after(would_wait)
    }

    /// An upstream `429`: counts it and pauses the route (for every replica when the
    /// budget is shared) for its `Retry-After`. The pause.
    pub(super) async fn throttled(
        &self,
        prefix: &str,
        shared: Option<&Shared>,
        retry_after: Option<&HeaderValue>,
    ) -> Duration {
        self.throttled.inc();
        let pause = pause_of(retry_after, SystemTime::now());
        tracing::info!(route = prefix, pause_ms = pause.as_millis() as u64, "upstream answered 429: route paused");
        self.local.pause(Instant::now(), pause);
        if let Some((s, b)) = shared.and_then(|s| s.usable(Instant::now()).map(|b| (s, b))) {
            s.ask(prefix, b.pause(prefix, pause)).await;
        }
        pause
    }
}

/// The pause a `Retry-After` asks for: delay-seconds or an HTTP date (a past date: none);
/// [`DEFAULT_PAUSE`] when absent or unreadable; at most [`MAX_PAUSE`].
pub(super) fn pause_of(value: Option<&HeaderValue>, now: SystemTime) -> Duration {
    crate::limit::retry_after(value, now).unwrap_or(DEFAULT_PAUSE).min(MAX_PAUSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date_with_a_default_and_a_cap() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // Wed, 21 Oct 2015 07:27:50 GMT
        assert_eq!(pause_of(Some(&h("3")), now), Duration::from_secs(3));
        assert_eq!(pause_of(Some(&h(" 0 ")), now), Duration::ZERO);
        assert_eq!(pause_of(Some(&h("Wed, 21 Oct 2015 07:28:00 GMT")), now), Duration::from_secs(10));
        assert_eq!(pause_of(Some(&h("Wed, 21 Oct 2015 07:27:00 GMT")), now), Duration::ZERO, "a date gone by");
        assert_eq!(pause_of(None, now), DEFAULT_PAUSE);
        assert_eq!(pause_of(Some(&h("soon")), now), DEFAULT_PAUSE);
        assert_eq!(pause_of(Some(&h("-1")), now), DEFAULT_PAUSE);
        assert_eq!(pause_of(Some(&h("86400")), now), MAX_PAUSE);
    }
}
