//! Recording renewal outcomes (metrics, logs, the status the backoff and `/tokens`
//! read) and what `/tokens` shows of a credential.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::Credential;

/// A credential's condition in one word, as the status page and `/tokens` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CredentialState {
    /// A valid token is served and the last renewal (if any) succeeded.
    Valid,
    /// A renewal is in progress right now.
    Renewing,
    /// Only a person can make a token again (sign in, fix the password).
    NeedsLogin,
    /// Renewals fail; the current token (if still valid) is served meanwhile.
    Failing,
    /// No valid token and no failure recorded yet (starting, or expired awaiting renewal).
    NoToken,
}

impl CredentialState {
    /// The word the status page and `/tokens` show: `valid`, `renewing`, `needs_login`,
    /// `failing`, `no_token`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CredentialState::Valid => "valid",
            CredentialState::Renewing => "renewing",
            CredentialState::NeedsLogin => "needs_login",
            CredentialState::Failing => "failing",
            CredentialState::NoToken => "no_token",
        }
    }
}

/// What a credential's renewals say about it, published after every outcome so that
/// notifications follow changes of state without the token module knowing who listens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Health {
    /// Only a person can make a token again.
    pub needs_login: bool,
    /// Failed renewals since the last success.
    pub consecutive_failures: u32,
    /// Whether a valid token is served right now.
    pub token_served: bool,
    /// The last failure in words (never a secret), when failing.
    pub last_error: Option<String>,
}

/// What `/tokens` shows of a credential: metadata, never a token.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TokenInfo {
    /// The grant.
    pub grant: &'static str,
    /// The credential's condition in one word.
    pub state: CredentialState,
    /// Who signed in, when known (`null` otherwise).
    pub principal: Option<String>,
    /// Whether a valid token is held now.
    pub valid: bool,
    /// Expiry of the current token (RFC 3339); `null` when no live token was ever held.
    pub expires_at: Option<String>,
    /// `{organizerKey}` value.
    pub organizer_key: Option<String>,
    /// `{accountKey}` value.
    pub account_key: Option<String>,
    /// Last successful renewal (RFC 3339).
    pub last_refresh: Option<String>,
    /// Next scheduled renewal (RFC 3339).
    pub next_refresh: Option<String>,
    /// Failed renewals since the last success.
    pub consecutive_failures: u32,
    /// The last failure, when failing.
    pub last_error: Option<String>,
    /// True when a person must run `login`.
    pub needs_login: bool,
    /// The key id (of `state.encryption_keys`) the stored record is sealed with; `None`
    /// for a plaintext record or none. Never the key.
    pub state_key_id: Option<String>,
}

impl Credential {
    /// The status page's word for the credential now, without the rest of
    /// [`Credential::info`] (counting 10,000 accounts by state formats nothing).
    pub(crate) fn state(&self) -> CredentialState {
        let failures = self.slot.status.lock().map_or(0, |s| s.consecutive_failures);
        let valid = self.slot.current.load().as_ref().is_some_and(|t| t.is_valid_at(SystemTime::now()));
        self.state_of(self.slot.needs_login.load(Ordering::Relaxed), failures, valid)
    }

    fn state_of(&self, needs_login: bool, failures: u32, valid: bool) -> CredentialState {
        if needs_login {
            CredentialState::NeedsLogin
        } else if self.refresh_lock.try_lock().is_err() {
            CredentialState::Renewing
        } else if failures > 0 {
            CredentialState::Failing
        } else if valid {
            CredentialState::Valid
        } else {
            CredentialState::NoToken
        }
    }

    /// Metadata for `/tokens` and `/readyz`.
    pub(crate) fn info(&self) -> TokenInfo {
        let now = SystemTime::now();
        let cur = self.slot.current.load_full();
        let status = self.slot.status.lock().map(|s| s.clone()).unwrap_or_default();
        let rfc = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        let valid = cur.as_ref().is_some_and(|t| t.is_valid_at(now));
        let needs_login = self.slot.needs_login.load(Ordering::Relaxed);
        let state = self.state_of(needs_login, status.consecutive_failures, valid);
        TokenInfo {
            grant: self.cfg.grant.as_str(),
            state,
            principal: cur.as_ref().and_then(|t| t.principal.clone()),
            valid,
            // A retired token (rejected, expiry set to the epoch) has no expiry worth showing.
            expires_at: cur.as_ref().map(|t| t.expires_at).filter(|t| *t > UNIX_EPOCH).map(rfc),
            organizer_key: cur.as_ref().and_then(|t| t.organizer_key.clone()),
            account_key: cur.as_ref().and_then(|t| t.account_key.clone()),
            last_refresh: status.last_refresh.map(rfc),
            // Only the refresh schedule plans one: never set for a token that does not expire.
            next_refresh: status.next_refresh.map(rfc),
            consecutive_failures: status.consecutive_failures,
            last_error: status.last_error,
            needs_login,
            state_key_id: self.peers.store().key_id(self.key()),
        }
    }
}
