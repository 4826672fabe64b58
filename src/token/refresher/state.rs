//! Recording renewal outcomes (metrics, logs, the status the backoff and `/tokens`
//! read) and what `/tokens` shows of a credential.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Credential, Outcomes, RefreshError};
use crate::config::GrantKind;
use crate::token::later;
use crate::token::source::SourceError;

/// A credential's condition in one word, as the status page and `/tokens` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialState {
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
    pub fn as_str(self) -> &'static str {
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
pub struct Health {
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
pub struct TokenInfo {
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
    pub fn state(&self) -> CredentialState {
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
    pub fn info(&self) -> TokenInfo {
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
            // Only the refresh schedule plans one: never set for a `static` credential.
            next_refresh: status.next_refresh.map(rfc),
            consecutive_failures: status.consecutive_failures,
            last_error: status.last_error,
            needs_login,
            state_key_id: self.store.key_id(self.key()),
        }
    }

    /// Follows [`Health`] changes: each renewal outcome publishes one. `None` for an
    /// account: its set's task hears of its outcomes instead ([`Credential::health_now`]).
    pub fn health(&self) -> Option<tokio::sync::watch::Receiver<Health>> {
        match &self.outcomes {
            Outcomes::Health(h) => Some(h.subscribe()),
            Outcomes::Set(_) => None,
        }
    }

    /// The credential's [`Health`] as the slot records it now.
    pub fn health_now(&self) -> Health {
        let status = self.slot.status.lock().map(|s| s.clone()).unwrap_or_default();
        Health {
            needs_login: self.slot.needs_login.load(Ordering::Relaxed),
            consecutive_failures: status.consecutive_failures,
            token_served: self.slot.current.load().as_ref().is_some_and(|t| t.is_valid_at(SystemTime::now())),
            last_error: status.last_error,
        }
    }

    /// Publishes the credential's [`Health`] (an account's set is told instead).
    fn publish_health(&self) {
        match &self.outcomes {
            Outcomes::Health(sender) => {
                let health = self.health_now();
                sender.send_if_modified(|h| {
                    let changed = *h != health;
                    *h = health;
                    changed
                });
            }
            Outcomes::Set(_) => self.tell_set(),
        }
    }

    /// Tells an account's set that the account has news (a token, a failure): its task
    /// plans the next renewal and notifies. Nothing for a credential.
    pub(super) fn tell_set(&self) {
        if let (Outcomes::Set(tx), Some(account)) = (&self.outcomes, &self.account) {
            // The set's task is gone only when the set is: nobody to tell.
            let _ = tx.send(Arc::from(account.as_str()));
        }
    }

    /// Says whether only a person can renew now: `/tokens`, waiting requests and the
    /// `goto_auth_proxy_credential_needs_login` gauge all read it from here.
    pub(super) fn set_needs_login(&self, needs_login: bool) {
        self.slot.needs_login.store(needs_login, Ordering::Relaxed);
        if self.account.is_none() {
            self.metrics.credential_needs_login.with_label_values(&[self.name()]).set(i64::from(needs_login));
        }
    }

    pub(super) fn record_success(&self, at: SystemTime) {
        self.set_needs_login(false);
        if let Ok(mut s) = self.slot.status.lock() {
            s.last_refresh = Some(at);
            s.consecutive_failures = 0;
            s.last_error = None;
            s.not_before = None;
        }
        self.publish_health();
    }

    /// Counts, logs and remembers a failed token call; waiting requests see it.
    pub(super) fn record_failure(&self, e: SourceError) -> RefreshError {
        let (outcome, needs_login, message) = match &e {
            SourceError::NeedsLogin(m) => ("needs_login", true, m.clone()),
            SourceError::Refused { .. } if e.is_grant_refused() && self.cfg.grant == GrantKind::AuthorizationCode => {
                ("refused", true, format!("{e}; the refresh token is dead: run `{}`", self.login_command()))
            }
            // A refused client secret, like a refused password: asking again cannot succeed,
            // and identity providers lock out clients that keep trying.
            SourceError::Refused { .. }
                if e.is_invalid_grant()
                    && matches!(
                        self.cfg.grant,
                        GrantKind::PersonalAccessToken | GrantKind::Password | GrantKind::ClientCredentials
                    ) =>
            {
                let what = match self.cfg.grant {
                    GrantKind::Password => "password",
                    GrantKind::ClientCredentials => "client (client_id, client_secret)",
                    _ => "personal access token",
                };
                (
                    "refused",
                    true,
                    format!(
                        "{e}; the {what} is refused: fix it in the config and reload, then `POST {}`",
                        crate::config::refresh_path(self.name())
                    ),
                )
            }
            SourceError::Refused { status: 429, .. } => ("rate_limited", false, e.to_string()),
            SourceError::Refused { .. } => ("refused", false, e.to_string()),
            SourceError::Unreachable(_) => ("unreachable", false, e.to_string()),
            SourceError::Malformed(_) => ("malformed", false, e.to_string()),
        };
        self.metrics.token_refreshes.with_label_values(&[self.name(), outcome]).inc();
        self.set_needs_login(needs_login);
        let not_before = e.retry_after().map(|d| later(SystemTime::now(), d));
        let failures = match self.slot.status.lock() {
            Ok(mut s) => {
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                s.last_error = Some(message.clone());
                s.not_before = not_before;
                s.consecutive_failures
            }
            Err(_) => 0,
        };
        tracing::warn!(credential = %self.key(), failures, error = %message, retry_after_secs = e.retry_after().map(|d| d.as_secs()), "token renewal failed");
        self.publish_health();
        self.slot.wake(); // waiters see the failure
        RefreshError { message, needs_login }
    }

    /// Whether only a person can make a token again ([`Credential::set_needs_login`]):
    /// then nothing calls the token endpoint on its own — neither the schedule nor a
    /// rejected token — until a sign-in, a token adopted from the store, a reload that
    /// changes the credential, or `POST /refresh/{credential}`.
    pub(crate) fn awaits_a_person(&self) -> bool {
        self.slot.needs_login.load(Ordering::Relaxed)
    }

    /// A renewal not attempted this round (shared store down, lock holder slow): counts
    /// as a failure for the backoff, not for `needs_login`.
    pub(super) fn record_deferred(&self, outcome: &'static str, message: String) -> RefreshError {
        self.metrics.token_refreshes.with_label_values(&[self.name(), outcome]).inc();
        let failures = match self.slot.status.lock() {
            Ok(mut s) => {
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                s.last_error = Some(message.clone());
                s.consecutive_failures
            }
            Err(_) => 0,
        };
        tracing::warn!(credential = %self.key(), failures, error = %message, "token renewal deferred");
        self.publish_health();
        self.slot.wake();
        RefreshError { message, needs_login: false }
    }
}
