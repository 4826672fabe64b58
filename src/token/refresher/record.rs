//! Recording renewal outcomes: metrics, logs, the status the backoff and `/tokens`
//! read, and the [`Health`] that notifications follow.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Credential, Health, Outcomes, RefreshError};
use crate::config::GrantKind;
use crate::token::later;
use crate::token::source::SourceError;

impl Credential {
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
