//! When to renew: pure functions of the clock, the token's expiry, the failure count and
//! the token endpoint's `Retry-After`, unit-tested here.

use std::time::{Duration, SystemTime};

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

/// A renewal never comes before the token endpoint's `Retry-After` has passed.
pub(crate) fn not_before_clamp(delay: Duration, now: SystemTime, not_before: Option<SystemTime>) -> Duration {
    match not_before.and_then(|t| t.duration_since(now).ok()) {
        Some(wait) => delay.max(wait),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
