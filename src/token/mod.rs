//! Tokens: one [`Credential`] per configured credential holds the current [`Token`] in
//! an `ArcSwap`, so the data path reads it with one `load` and never waits on a refresh.
//!
//! * [`grant`] — what each grant sends to the token endpoint (pure).
//! * [`source`] — the token endpoint calls and response parsing (reqwest).
//! * [`store`] — persistence (`FileStore`; the `TokenStore` trait for others).
//! * [`redis_store`] — the store replicas share: one token, one renewal at a time.
//! * [`refresher`] — the per-credential state, refresh loop and single-flight renewals.

pub mod grant;
pub mod redis_store;
pub mod refresher;
pub mod source;
pub mod store;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use crate::secret::Secret;
pub use refresher::{Credential, TokenInfo, Trigger};
use store::StoredToken;

/// A token treated as expired this long before its real expiry, so it is never sent
/// just as it dies.
pub const EXPIRY_MARGIN: Duration = Duration::from_millis(250);

/// Lifetime assumed when a token response carries no `expires_in`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Lifetime of a `static` token: it never expires on its own.
const STATIC_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

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
    /// When it was obtained (orders tokens written by several processes).
    pub obtained_at: SystemTime,
    /// `{organizerKey}` substitution.
    pub organizer_key: Option<String>,
    /// `{accountKey}` substitution.
    pub account_key: Option<String>,
    /// Process-local sequence number; a rejection names the generation it saw.
    pub generation: u64,
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
            generation: 0,
        })
    }

    /// A token from a token endpoint answer received at `now`.
    pub fn from_response(
        r: source::TokenResponse,
        now: SystemTime,
        is_static: bool,
    ) -> Result<Token, InvalidTokenChars> {
        let lifetime = match (is_static, r.expires_in) {
            (true, _) => STATIC_LIFETIME,
            (false, Some(s)) => Duration::from_secs(s),
            (false, None) => DEFAULT_LIFETIME,
        };
        let mut t = Token::new(r.access_token, r.refresh_token, now + lifetime, now)?;
        t.organizer_key = r.organizer_key;
        t.account_key = r.account_key;
        Ok(t)
    }

    /// A token read back from the store.
    pub fn from_stored(s: &StoredToken) -> Result<Token, InvalidTokenChars> {
        let obtained = UNIX_EPOCH + Duration::from_millis(s.obtained_at_ms);
        let mut t = Token::new(
            Secret::new(s.access_token.as_str()),
            s.refresh_token.as_deref().map(Secret::new),
            s.expires_at_time(),
            obtained,
        )?;
        t.organizer_key = s.organizer_key.clone();
        t.account_key = s.account_key.clone();
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
        }
    }

    /// The ready-made `Authorization` value.
    pub fn bearer(&self) -> &HeaderValue {
        &self.bearer
    }

    /// True while the token may still be sent.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.expires_at > now + EXPIRY_MARGIN
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

/// Milliseconds since the epoch (0 for times before it).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Seconds since the epoch (0 for times before it).
pub fn unix_secs(t: SystemTime) -> u64 {
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
        let back = Token::from_stored(&t.to_stored()).unwrap();
        assert_eq!(back.to_stored(), t.to_stored());
    }

    #[test]
    fn header_breaking_token_refused() {
        assert!(Token::new(Secret::new("a\r\nb"), None, SystemTime::now(), SystemTime::now()).is_err());
    }
}
