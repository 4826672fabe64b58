//! When to renew: pure functions of the clock, the token's expiry, the failure count and
//! the token endpoint's `Retry-After`, unit-tested here.

use std::time::{Duration, SystemTime};

use crate::limit::Reservation;
use crate::token::{half, EXPIRY_MARGIN};

/// Two token endpoint calls of one credential are never closer than this, whatever the
/// answers say (a lifetime of 0, a storm of rejections or of operator clicks must
/// not hammer the endpoint; with Direct Login every call revokes the other tokens).
pub(crate) const MIN_RENEWAL_SPACING: Duration = Duration::from_secs(1);

/// Backoff after `failures` consecutive failures: 0.5 s doubling to 30 s, minus up to
/// 20 % jitter (`jitter` in 0..1) so replicas do not retry in step.
pub(crate) fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    base.min(Duration::from_secs(30)).mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
}

/// When to renew next. A valid token is renewed `refresh_before` ahead of expiry, but
/// never later than half its remaining life (short-lived tokens), minus up to 10 %
/// jitter; after failures, retries back off but still come before expiry. With no
/// valid token: now, or after the backoff when the last attempt failed.
pub(crate) fn refresh_delay(
    now: SystemTime,
    expires_at: Option<SystemTime>,
    refresh_before: Duration,
    failures: u32,
    jitter: f64,
) -> Duration {
    let remaining = expires_at.and_then(|e| e.duration_since(now).ok()).filter(|r| *r > EXPIRY_MARGIN);
    match (remaining, failures) {
        (None, 0) => Duration::ZERO,
        (None, f) => backoff(f, jitter),
        (Some(r), 0) => r.saturating_sub(refresh_before).max(half(r)).mul_f64(1.0 - 0.1 * jitter.clamp(0.0, 1.0)),
        (Some(r), f) => backoff(f, jitter).min(half(r)).max(Duration::from_millis(100)),
    }
}

/// The calls per second the gate lets through: `token_rate`, 2 % under, since the token
/// endpoint sees the calls with network and scheduling jitter and must never count more
/// than `token_rate` in any second.
fn gated(rate: f64) -> f64 {
    rate * 0.98
}

/// How many renewals the [`Calendar`] books in one second: 5 % under `token_rate`, so
/// what it books fits through the gate's spacing and its window (both 2 % under) with
/// room to spare; a calendar that books exactly what the gate lets through has renewals
/// queue at the gate, late, whenever CPU is short.
fn booked_per_second(rate: f64) -> u32 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = (rate * 0.95).floor() as u32;
    n.max(1)
}

/// The longest a token call waits for its turn in the replicas' shared budget; a longer
/// wait (a budget far behind) falls back to this replica's own gate.
const SHARED_TURN_WAIT: Duration = Duration::from_secs(60);

/// Spaces a credential's token calls at [`gated`] `token_rate`: with Redis, in the
/// budget every replica shares (so N replicas together stay under `token_rate`), else,
/// or while Redis cannot be asked, in this process alone.
pub(crate) struct TokenGate {
    local: crate::limit::RateLimiter,
    /// The shared budget and this credential's key in it.
    shared: Option<(std::sync::Arc<dyn crate::limit::SharedBudget>, String)>,
    interval: Duration,
    /// The hard bound behind the spacing: when this process's last `cap` calls left,
    /// none more within `span`. Spacing alone is a schedule, and timers that fire late
    /// (a starved CPU) let a backlog out at once; this counts the calls as they leave.
    window: std::sync::Mutex<std::collections::VecDeque<tokio::time::Instant>>,
    cap: usize,
    span: Duration,
}

impl TokenGate {
    /// A gate for `credential` at `rate` calls a second, shared through `budget` when
    /// there is one.
    pub(crate) fn new(
        credential: &str,
        rate: f64,
        budget: Option<std::sync::Arc<dyn crate::limit::SharedBudget>>,
    ) -> TokenGate {
        // `cap` calls per `span`: a whole second at rates of one or more (2 % longer, for
        // the jitter between leaving here and arriving there), longer below one.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let cap = (rate.floor() as usize).max(1);
        let span = Duration::from_secs_f64(1.02 / rate.clamp(1e-3, 1.0));
        TokenGate {
            local: crate::limit::RateLimiter::new(gated(rate)),
            // Route keys start with `/`: a credential's cannot meet one.
            shared: budget.map(|b| (b, format!("token_rate:{credential}"))),
            interval: Duration::from_secs_f64(1.0 / gated(rate)),
            window: std::sync::Mutex::default(),
            cap,
            span,
        }
    }

    /// Waits for this call's turn.
    pub(crate) async fn turn(&self) {
        self.spaced().await;
        self.within_window().await;
    }

    /// Waits for this call's place in the spacing: the replicas' shared one, else ours.
    async fn spaced(&self) {
        if let Some((budget, key)) = &self.shared {
            match budget.reserve(key, self.interval, SHARED_TURN_WAIT).await {
                Ok(Reservation::After(wait)) => return tokio::time::sleep(wait).await,
                Ok(Reservation::TooFar(wait)) => {
                    tracing::warn!(
                        wait_secs = wait.as_secs(),
                        "the shared token_rate budget is far behind; spacing this replica's token calls alone"
                    )
                }
                Err(e) => tracing::debug!(error = %e, "spacing this replica's token calls alone"),
            }
        }
        if let Reservation::After(wait) = self.local.reserve(std::time::Instant::now(), Duration::MAX) {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// Waits until fewer than `cap` calls left within the last `span`, and counts this
    /// one as leaving now.
    async fn within_window(&self) {
        loop {
            let wait = {
                let Ok(mut left) = self.window.lock() else { return };
                let now = tokio::time::Instant::now();
                while left.front().is_some_and(|t| now.duration_since(*t) >= self.span) {
                    left.pop_front();
                }
                match left.front() {
                    Some(oldest) if left.len() >= self.cap => self.span.saturating_sub(now.duration_since(*oldest)),
                    _ => {
                        left.push_back(now);
                        return;
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// The renewals the accounts of one credential have planned, per second: each account
/// books the latest second before its wanted renewal that still has room under
/// `token_rate`, so renewals that would bunch up (many people signed in within a minute
/// all come due within a minute) spread back over the tokens' life (to a tenth of it)
/// instead of queueing at the token endpoint past their expiry. It books at the gate's
/// rate, so what it books the gate lets through on time.
pub(crate) struct Calendar {
    per_second: u32,
    /// Unix second → renewals booked in it (seconds gone by are dropped).
    booked: std::sync::Mutex<std::collections::BTreeMap<u64, u32>>,
}

impl Calendar {
    /// A calendar for `token_rate` renewals per second (what the gate lets through; at
    /// least one).
    pub(crate) fn new(token_rate: f64) -> Calendar {
        let per_second = booked_per_second(token_rate);
        Calendar { per_second, booked: std::sync::Mutex::default() }
    }

    /// Books a renewal wanted `wanted` after `now`, not before `earliest` after it: the
    /// latest second in between with room, else the first with room after `wanted`.
    /// Answers the delay and the second booked (to [`Calendar::release`] when the plan
    /// is dropped).
    pub(crate) fn book(&self, now: SystemTime, wanted: Duration, earliest: Duration) -> (Duration, u64) {
        let now_s = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (from, to) = (now_s.saturating_add(earliest.as_secs()), now_s.saturating_add(wanted.as_secs()));
        let Ok(mut booked) = self.booked.lock() else { return (wanted, to) };
        *booked = booked.split_off(&now_s);
        let free = |s: &u64| booked.get(s).is_none_or(|n| *n < self.per_second);
        let second = (from..=to).rev().find(free).or_else(|| (to.saturating_add(1)..).find(free)).unwrap_or(to);
        let count = booked.entry(second).or_insert(0);
        *count = count.saturating_add(1);
        let delay = if second == to { wanted } else { Duration::from_secs(second.saturating_sub(now_s)) };
        (delay, second)
    }

    /// Gives back a second booked for a plan that was replaced.
    pub(crate) fn release(&self, second: u64) {
        if let Ok(mut booked) = self.booked.lock() {
            if let Some(n) = booked.get_mut(&second) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// A renewal never comes before the token endpoint's `Retry-After` has passed.
pub(crate) fn not_before_clamp(delay: Duration, now: SystemTime, not_before: Option<SystemTime>) -> Duration {
    match not_before.and_then(|t| t.duration_since(now).ok()) {
        Some(wait) => delay.max(wait),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    /// What the calendar books a second fits through the gate's window with room: at
    /// every rate from 2 on (below, one a second is the least it can book).
    #[test]
    fn the_calendar_books_less_than_the_gate_lets_through() {
        for rate in [2.0, 5.0, 10.0, 50.0, 100.0, 333.0] {
            let gate = super::TokenGate::new("c", rate, None);
            let window_rate = gate.cap as f64 / gate.span.as_secs_f64();
            let booked = f64::from(super::booked_per_second(rate));
            assert!(
                booked < window_rate && booked < super::gated(rate),
                "rate {rate}: books {booked}, lets {window_rate}"
            );
        }
    }

    /// However late the spacing's timers fire, no second holds more than `token_rate`
    /// calls: 40 callers whose slots all came due at once (a stalled runtime) leave ten a
    /// second.
    #[tokio::test(start_paused = true)]
    async fn the_gate_never_lets_more_than_token_rate_leave_in_a_second() {
        let gate = std::sync::Arc::new(super::TokenGate::new("c", 10.0, None));
        let mut calls = Vec::new();
        for _ in 0..40 {
            let g = gate.clone();
            calls.push(tokio::spawn(async move {
                g.within_window().await;
                tokio::time::Instant::now()
            }));
        }
        let mut at = Vec::new();
        for c in calls {
            at.push(c.await.unwrap());
        }
        at.sort();
        for (i, t) in at.iter().enumerate() {
            let in_second = at[i..].iter().take_while(|u| u.duration_since(*t) < super::Duration::from_secs(1)).count();
            assert!(in_second <= 10, "{in_second} calls within one second at token_rate 10");
        }
        assert!(
            at[39].duration_since(at[0]) < super::Duration::from_secs(5),
            "the gate held calls far longer than needed"
        );
    }

    use super::*;

    #[test]
    fn a_calendar_spreads_renewals_that_come_due_together_back_over_the_half_life() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cal = Calendar::new(3.0); // 2.85 booked: two a second
        let wanted = Duration::from_secs(100);
        let seconds: Vec<u64> = (0..7).map(|_| cal.book(now, wanted, Duration::from_secs(98)).1).collect();
        // Two per second, latest first, then after `wanted` once the window is full.
        assert_eq!(seconds, [1_000_100, 1_000_100, 1_000_099, 1_000_099, 1_000_098, 1_000_098, 1_000_101]);
        assert_eq!(cal.book(now, wanted, Duration::from_secs(50)).0, Duration::from_secs(97));
        cal.release(1_000_100);
        assert_eq!(cal.book(now, wanted, Duration::from_secs(50)).0, wanted);
    }

    const HOUR: Duration = Duration::from_secs(3600);
    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn long_token_renews_refresh_before_ahead() {
        let now = SystemTime::now();
        let d = refresh_delay(now, Some(now + HOUR), FIVE_MIN, 0, 0.0);
        assert_eq!(d.as_secs(), 3300);
        let d = refresh_delay(now, Some(now + HOUR), FIVE_MIN, 0, 1.0);
        assert_eq!(d.as_secs(), 2970); // 10 % jitter, earlier never later
    }

    #[test]
    fn short_token_renews_at_half_life() {
        let now = SystemTime::now();
        let d = refresh_delay(now, Some(now + Duration::from_secs(2)), FIVE_MIN, 0, 0.0);
        assert_eq!(d, Duration::from_secs(1));
    }

    #[test]
    fn no_token_renews_now_then_backs_off() {
        let now = SystemTime::now();
        assert_eq!(refresh_delay(now, None, FIVE_MIN, 0, 0.5), Duration::ZERO);
        assert_eq!(refresh_delay(now, Some(now - HOUR), FIVE_MIN, 0, 0.5), Duration::ZERO);
        assert_eq!(refresh_delay(now, None, FIVE_MIN, 1, 0.0), Duration::from_millis(500));
        assert_eq!(refresh_delay(now, None, FIVE_MIN, 3, 0.0), Duration::from_secs(2));
        assert_eq!(refresh_delay(now, None, FIVE_MIN, 40, 0.0), Duration::from_secs(30));
    }

    #[test]
    fn retry_after_is_a_minimum() {
        let now = SystemTime::now();
        let d = not_before_clamp(Duration::from_millis(500), now, Some(now + Duration::from_secs(3)));
        assert_eq!(d, Duration::from_secs(3));
        let d = not_before_clamp(Duration::from_secs(9), now, Some(now + Duration::from_secs(3)));
        assert_eq!(d, Duration::from_secs(9));
        assert_eq!(not_before_clamp(Duration::from_secs(1), now, Some(now - HOUR)), Duration::from_secs(1));
        assert_eq!(not_before_clamp(Duration::from_secs(1), now, None), Duration::from_secs(1));
    }

    #[test]
    fn failures_retry_before_expiry() {
        let now = SystemTime::now();
        let d = refresh_delay(now, Some(now + Duration::from_secs(10)), FIVE_MIN, 10, 0.0);
        assert_eq!(d, Duration::from_secs(5));
        let d = refresh_delay(now, Some(now + HOUR), FIVE_MIN, 2, 0.0);
        assert_eq!(d, Duration::from_secs(1));
    }
}
