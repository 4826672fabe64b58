// Token answers, stored records and Retry-After headers come from outside: no time or
// counter arithmetic in this tree may panic on them (checked or saturating everywhere).
#![cfg_attr(not(test), warn(clippy::arithmetic_side_effects))]
//! Tokens: one [`Credential`] per configured credential holds the current [`Token`] in
//! an `ArcSwap`, so the data path reads it with one `load` and never waits on a refresh.
//!
//! * `handle` — [`TokenHandle`], all the data path holds: read, wait, report a rejection
//!   (the renewal itself runs on the credential's refresh loop).
//! * `slot` — the state a credential shares with its handles (current token, waiters).
//! * `grant` — what each grant sends to the token endpoint (pure).
//! * `key` — organizer/account keys and the principal checked where they come in.
//! * [`source`] — where tokens come from: the token endpoint (reqwest), or for `static`
//!   the configured token, which never expires.
//! * [`store`] — persistence (`FileStore`; the `TokenStore` trait for others).
//! * [`redis_store`] — the store replicas share: one token, one renewal at a time.
//! * [`seal`] — token records at rest: AES-256-GCM envelopes under `state.encryption_keys`.
//! * [`refresher`] — the per-credential refresh loop and single-flight renewals: the
//!   schedule, replica coordination, recorded outcomes.

pub(crate) mod accounts;
mod grant;
mod handle;
mod id_token;
mod key;
pub(crate) mod redis_budget;
mod redis_link;
pub(crate) mod redis_store;
pub(crate) mod refresher;
pub(crate) mod seal;
mod slot;
pub(crate) mod source;
pub(crate) mod store;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use crate::secret::Secret;
pub(crate) use handle::TokenHandle;
pub use key::valid_key;
pub use refresher::Credential;
pub(crate) use refresher::{CredentialState, Health, RefreshError, TokenInfo, Trigger};
use store::StoredToken;

/// A token treated as expired this long before its real expiry, so it is never sent
/// just as it dies.
pub(crate) const EXPIRY_MARGIN: Duration = Duration::from_millis(250);

/// Lifetime assumed when a token response carries no `expires_in`.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The longest lifetime believed (one year). A token endpoint answering more, or
/// a stored expiry further ahead, is clamped to it: a token answer is data, not trust,
/// and no later arithmetic on the expiry can overflow.
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// An access token with everything the data path needs, built once per token.
pub struct Token {
    /// The access token itself.
    pub access_token: Secret,
    /// `Bearer <token>`, marked sensitive, cloned into each request.
    bearer: HeaderValue,
    /// The newest refresh token held for this credential.
    pub refresh_token: Option<Secret>,
    /// When the access token stops working.
    pub expires_at: SystemTime,
    /// When it was obtained (this process's clock: data for expiry math, never an order).
    pub obtained_at: SystemTime,
    /// `{organizerKey}` substitution: a [`valid_key`] (checked where it came in), or none.
    pub organizer_key: Option<String>,
    /// `{accountKey}` substitution: a [`valid_key`], or none.
    pub account_key: Option<String>,
    /// Who signed in, when known (shown to operators; never used to decide anything);
    /// at most [`MAX_PRINCIPAL`] characters.
    pub principal: Option<String>,
    /// Process-local sequence number; a rejection names the generation it saw.
    pub generation: u64,
    /// The store's version of this token's record: the version it was stored as, or,
    /// until it is stored, the version it was renewed from (0: none). The store, not a
    /// clock, decides which token is newest.
    pub version: u64,
}

/// An access token that cannot be put in an HTTP header.
#[derive(Debug, thiserror::Error)]
#[error("the access token contains characters not allowed in an HTTP header")]
pub struct InvalidTokenChars;

impl Token {
    /// Builds a token; the header value is made here, once.
    pub fn new(
        access_token: Secret,
        refresh_token: Option<Secret>,
        expires_at: SystemTime,
        obtained_at: SystemTime,
    ) -> Result<Token, InvalidTokenChars> {
        let mut bearer =
            HeaderValue::try_from(format!("Bearer {}", access_token.expose())).map_err(|_| InvalidTokenChars)?;
        bearer.set_sensitive(true);
        Ok(Token {
            access_token,
            bearer,
            refresh_token,
            expires_at,
            obtained_at,
            organizer_key: None,
            account_key: None,
            principal: None,
            generation: 0,
            version: 0,
        })
    }

    /// A token from a token endpoint answer received at `now`; the lifetime is clamped
    /// to [`MAX_LIFETIME`] (see [`lifetime_of`]).
    pub fn from_response(r: source::TokenResponse, now: SystemTime) -> Result<Token, InvalidTokenChars> {
        let lifetime = lifetime_of(r.expires_in).0;
        let mut t = Token::new(r.access_token, r.refresh_token, later(now, lifetime), now)?;
        t.organizer_key = r.organizer_key;
        t.account_key = r.account_key;
        t.principal = r.principal;
        Ok(t)
    }

    /// A token read back from the store, read at `now`: an expiry more than
    /// [`MAX_LIFETIME`] ahead is clamped to it, and one that is not a time at all counts
    /// as expired (its refresh token still renews it). Keys and a principal that are not
    /// valid (a record written before they were checked) are dropped with a warning.
    /// Never panics, whatever the file held.
    pub fn from_stored(credential: &str, s: &StoredToken, now: SystemTime) -> Result<Token, InvalidTokenChars> {
        let obtained = UNIX_EPOCH.checked_add(Duration::from_millis(s.obtained_at_ms)).unwrap_or(UNIX_EPOCH);
        let expires_at = s.expires_at_time().min(later(now, MAX_LIFETIME));
        let mut t = Token::new(
            Secret::new(s.access_token.as_str()),
            s.refresh_token.as_deref().map(Secret::new),
            expires_at,
            obtained.min(now),
        )?;
        let mut dropped = Vec::new();
        t.organizer_key = key::first_key([("organizer_key", s.organizer_key.clone())], &mut dropped);
        t.account_key = key::first_key([("account_key", s.account_key.clone())], &mut dropped);
        t.principal = key::first_principal([("principal", s.principal.clone())], &mut dropped);
        t.version = s.version;
        key::warn_dropped(credential, "stored token", &dropped);
        Ok(t)
    }

    /// The form persisted by stores.
    pub fn to_stored(&self) -> StoredToken {
        StoredToken {
            access_token: self.access_token.expose().to_string(),
            refresh_token: self.refresh_token.as_ref().map(|s| s.expose().to_string()),
            expires_at: unix_secs(self.expires_at),
            expires_at_ms: Some(unix_millis(self.expires_at)),
            obtained_at_ms: unix_millis(self.obtained_at),
            organizer_key: self.organizer_key.clone(),
            account_key: self.account_key.clone(),
            principal: self.principal.clone(),
            version: self.version,
        }
    }

    /// The ready-made `Authorization` value.
    pub fn bearer(&self) -> &HeaderValue {
        &self.bearer
    }

    /// True while the token may still be sent.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.expires_at > later(now, EXPIRY_MARGIN)
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expires_at", &unix_secs(self.expires_at))
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("generation", &self.generation)
            .finish()
    }
}

/// How long a token answer's `expires_in` says the token lives, and whether it had to
/// be clamped to [`MAX_LIFETIME`] (the caller warns). `None`: the answer gave no
/// lifetime, so GoTo's usual hour is assumed. Zero and negative values never get here:
/// [`source::TokenResponse::parse`] refuses them.
pub(crate) fn lifetime_of(expires_in: Option<u64>) -> (Duration, bool) {
    match expires_in {
        None => (DEFAULT_LIFETIME, false),
        Some(s) if s > MAX_LIFETIME.as_secs() => (MAX_LIFETIME, true),
        Some(s) => (Duration::from_secs(s), false),
    }
}

/// `t + d`, or the latest representable time when that overflows: time arithmetic on
/// values from outside never panics.
pub fn later(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d).unwrap_or_else(|| later(t, half(d)))
}

/// The tokio instant `d` from now (saturating, like [`later`]): for timers planned from
/// values that came from outside.
pub(crate) fn deadline_in(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d).or_else(|| now.checked_add(MAX_LIFETIME)).unwrap_or(now)
}

/// Half of `d`, rounded down.
pub(crate) fn half(d: Duration) -> Duration {
    d.checked_div(2).unwrap_or_default()
}

/// Milliseconds since the epoch (0 for times before it, `u64::MAX` beyond).
pub(crate) fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Seconds since the epoch (0 for times before it).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_sensitive_and_debug_redacts() {
        let now = SystemTime::now();
        let t =
            Token::new(Secret::new("tok123"), Some(Secret::new("ref456")), now + Duration::from_secs(60), now).unwrap();
        assert_eq!(t.bearer(), "Bearer tok123");
        assert!(t.bearer().is_sensitive());
        let d = format!("{t:?}");
        assert!(!d.contains("tok123") && !d.contains("ref456"));
        assert!(t.is_valid_at(now));
        assert!(!t.is_valid_at(now + Duration::from_secs(60)));
    }

    #[test]
    fn stored_round_trip() {
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut t = Token::new(Secret::new("a"), Some(Secret::new("r")), now + Duration::from_secs(10), now).unwrap();
        t.organizer_key = Some("8439885694023999999".into());
        let back = Token::from_stored("c", &t.to_stored(), now).unwrap();
        assert_eq!(back.to_stored(), t.to_stored());
    }

    #[test]
    fn absurd_stored_times_are_clamped_or_expired_never_a_panic() {
        let now = SystemTime::now();
        let mut s = Token::new(Secret::new("a"), None, now, now).unwrap().to_stored();
        s.expires_at_ms = Some(u64::MAX);
        s.obtained_at_ms = u64::MAX;
        let t = Token::from_stored("c", &s, now).unwrap();
        assert!(t.expires_at <= later(now, MAX_LIFETIME));
        assert!(t.obtained_at <= now);
        s.expires_at_ms = None;
        s.expires_at = u64::MAX;
        let t = Token::from_stored("c", &s, now).unwrap();
        assert!(t.expires_at <= later(now, MAX_LIFETIME));
        // A year and a day ahead: clamped to the year.
        s.expires_at_ms = Some(unix_millis(now) + MAX_LIFETIME.as_millis() as u64 + 86_400_000);
        assert_eq!(Token::from_stored("c", &s, now).unwrap().expires_at, later(now, MAX_LIFETIME));
    }

    #[test]
    fn lifetimes_over_a_year_are_clamped() {
        assert_eq!(lifetime_of(Some(u64::MAX)), (MAX_LIFETIME, true));
        assert_eq!(lifetime_of(Some(7)), (Duration::from_secs(7), false));
        assert_eq!(lifetime_of(None), (DEFAULT_LIFETIME, false));
        assert!(later(SystemTime::now(), Duration::MAX) > SystemTime::now());
    }

    #[test]
    fn header_breaking_token_refused() {
        assert!(Token::new(Secret::new("a\r\nb"), None, SystemTime::now(), SystemTime::now()).is_err());
    }
}
