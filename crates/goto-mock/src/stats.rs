//! What the mock counts, and the tokens it issued: what tests assert on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What the mock counts; [`MockGoto::stats`] takes a [`Stats`] snapshot of it.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Every call to a token endpoint, whatever its outcome.
    pub(crate) token_calls: AtomicU64,
    /// Direct Login password logins that issued a token.
    pub(crate) password_logins: AtomicU64,
    /// Successful refresh-token grants (both endpoints).
    pub(crate) refreshes: AtomicU64,
    /// Successful code exchanges.
    pub(crate) code_exchanges: AtomicU64,
    /// API calls with a valid token.
    pub(crate) api_ok: AtomicU64,
    /// API calls whose token was rejected.
    pub(crate) api_rejected: AtomicU64,
    /// API calls answered `429` (the quota, or [`MockGoto::throttle_once`]).
    pub(crate) api_throttled: AtomicU64,
}

/// A snapshot of the mock's counters. Public: tests assert on it ([`MockGoto::stats`]),
/// and `GET /_mock/stats` answers it as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Every call to a token endpoint.
    pub token_calls: u64,
    /// Password logins that issued a token.
    pub password_logins: u64,
    /// Successful refreshes.
    pub refreshes: u64,
    /// Successful code exchanges.
    pub code_exchanges: u64,
    /// API calls with a valid token.
    pub api_ok: u64,
    /// API calls whose token was rejected.
    pub api_rejected: u64,
    /// API calls answered `429`.
    pub api_throttled: u64,
}

/// One token the mock issued. Public: tests check how token calls are spaced in time
/// ([`MockGoto::issued`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    /// When it was issued.
    pub at: Instant,
    /// Issued by Direct Login (which revokes every other token of the application).
    pub direct_login: bool,
    /// Issued for a password (a Direct Login "login", not a refresh).
    pub password: bool,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            token_calls: g(&self.token_calls),
            password_logins: g(&self.password_logins),
            refreshes: g(&self.refreshes),
            code_exchanges: g(&self.code_exchanges),
            api_ok: g(&self.api_ok),
            api_rejected: g(&self.api_rejected),
            api_throttled: g(&self.api_throttled),
        }
    }
}
