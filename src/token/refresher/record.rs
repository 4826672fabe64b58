//! [`Recorder`]: what a renewal's outcome changes for everyone else — the token served,
//! the counters and gauges, the status the backoff and `/tokens` read, and the
//! [`Health`] that notifications follow.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::{Health, RefreshError};
use crate::config::{CredentialConfig, GrantKind};
use crate::metrics::Metrics;
use crate::token::slot::TokenSlot;
use crate::token::source::SourceError;
use crate::token::store::StoredToken;
use crate::token::{later, unix_secs, Token};

/// Where a credential's renewal outcomes go.
pub(super) enum Outcomes {
    /// A credential's [`Health`], followed by its notifier.
    Health(tokio::sync::watch::Sender<Health>),
    /// An account's name, sent to the one task of its set, which plans the account's next
    /// renewal and notifies from it (10,000 accounts keep no task or channel each).
    Set(tokio::sync::mpsc::UnboundedSender<Arc<str>>),
}

/// Writes down every outcome of a credential's renewals where others read it: the
/// served token in the [`TokenSlot`], `goto_auth_proxy_token_refreshes_total` and the
/// gauges, the status (last error, failures, `Retry-After`), the [`Health`].
pub(super) struct Recorder {
    cfg: Arc<CredentialConfig>,
    /// The account of an account credential (`None`: the credential itself).
    account: Option<String>,
    /// The store key and the name in logs: `credential` or `credential/account`.
    key: String,
    /// The current token and the status; shared with every handle.
    slot: Arc<TokenSlot>,
    metrics: Metrics,
    /// Who hears of every outcome: the credential's notifier, or an account's set.
    outcomes: Outcomes,
}

impl Recorder {
    /// A recorder for the credential `cfg` (or its `account`), with an empty slot.
    pub(super) fn new(
        cfg: Arc<CredentialConfig>,
        account: Option<String>,
        metrics: Metrics,
        outcomes: Outcomes,
    ) -> Recorder {
        let key = match &account {
            Some(a) => format!("{}/{a}", cfg.name),
            None => cfg.name.clone(),
        };
        let slot = Arc::new(TokenSlot::new(key.clone(), metrics.token_refreshes.clone()));
        Recorder { cfg, account, key, slot, metrics, outcomes }
    }

    /// The slot it writes, for the credential to share with its handles.
    pub(super) fn slot(&self) -> &Arc<TokenSlot> {
        &self.slot
    }

    /// The credential's name (an account's credential's: metrics never name accounts).
    pub(super) fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The account, for an account of an account credential.
    pub(super) fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// The store key and the name in logs.
    pub(super) fn key(&self) -> &str {
        &self.key
    }

    /// The `login` command that signs this in again.
    pub(super) fn login_command(&self) -> String {
        self.cfg.login_command(self.account())
    }

    /// Counts one renewal outcome (`goto_auth_proxy_token_refreshes_total`).
    pub(super) fn count(&self, outcome: &str) {
        self.metrics.token_refreshes.with_label_values(&[self.name(), outcome]).inc();
    }

    /// Serves `token` as the next generation.
    pub(super) fn serve(&self, mut token: Token) -> Arc<Token> {
        token.generation = self.slot.next_generation();
        let token = Arc::new(token);
        self.slot.current.store(Some(token.clone()));
        if self.account.is_none() {
            // Accounts are counted by state instead (`goto_auth_proxy_accounts`).
            self.metrics.token_expiry.with_label_values(&[self.name()]).set(unix_secs(token.expires_at) as f64);
        }
        token
    }

    /// Wakes whoever waits for a token, and the refresh loop (or the account's set),
    /// which plans the next renewal from the token served now.
    pub(super) fn reschedule(&self, served: &Token) {
        self.slot.changed.send_modify(|g| *g = served.generation);
        self.tell_set();
    }

    /// [`Recorder::serve`] then [`Recorder::reschedule`]: a token that did not come from
    /// this credential's own renewal (loaded, adopted, retired).
    pub(super) fn publish(&self, token: Token) -> Arc<Token> {
        let served = self.serve(token);
        self.reschedule(&served);
        served
    }

    /// Follows [`Health`] changes: each renewal outcome publishes one. `None` for an
    /// account: its set's task hears of its outcomes instead ([`Recorder::health_now`]).
    pub(super) fn health(&self) -> Option<tokio::sync::watch::Receiver<Health>> {
        match &self.outcomes {
            Outcomes::Health(h) => Some(h.subscribe()),
            Outcomes::Set(_) => None,
        }
    }

    /// The credential's [`Health`] as the slot records it now.
    pub(super) fn health_now(&self) -> Health {
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
    fn tell_set(&self) {
        if let (Outcomes::Set(tx), Some(account)) = (&self.outcomes, &self.account) {
            // The set's task is gone only when the set is: nobody to tell.
            let _ = tx.send(Arc::from(account.as_str()));
        }
    }
    pub(super) fn set_needs_login(&self, needs_login: bool) {
        self.slot.needs_login.store(needs_login, Ordering::Relaxed);
        if self.account.is_none() {
            self.metrics.credential_needs_login.with_label_values(&[self.name()]).set(i64::from(needs_login));
        }
    }

    /// A renewal (or an adopted token) succeeded at `at`: the failures, the last error and
    /// the `Retry-After` are forgotten.
    pub(super) fn success(&self, at: SystemTime) {
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
    pub(super) fn failure(&self, e: SourceError) -> RefreshError {
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
            SourceError::Unreachable(_) | SourceError::ClientCredentials(_) | SourceError::NoEndpoint(_) => {
                ("unreachable", false, e.to_string())
            }
            SourceError::Malformed(_) | SourceError::InvalidToken(_) => ("malformed", false, e.to_string()),
        };
        self.count(outcome);
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

    /// Whether only a person can make a token again ([`Recorder::set_needs_login`]):
    /// then nothing calls the token endpoint on its own — neither the schedule nor a
    /// rejected token — until a sign-in, a token adopted from the store, a reload that
    /// changes the credential, or `POST /refresh/{credential}`.
    pub(super) fn awaits_a_person(&self) -> bool {
        self.slot.needs_login.load(Ordering::Relaxed)
    }

    /// A renewal not attempted this round (shared store down, lock holder slow): counts
    /// as a failure for the backoff, not for `needs_login`.
    pub(super) fn deferred(&self, outcome: &'static str, message: String) -> RefreshError {
        self.count(outcome);
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

    /// The token served now (valid or not).
    pub(super) fn current(&self) -> Option<Arc<Token>> {
        self.slot.current.load_full()
    }

    /// Whether `stored` carries the refresh token of the token held now, the one a
    /// renewal under way was made from.
    pub(super) fn renewed_from(&self, stored: &StoredToken) -> bool {
        let held = self.slot.current.load();
        let held = held.as_ref().and_then(|t| t.refresh_token.as_ref()).map(|r| r.expose());
        held.is_some() && held == stored.refresh_token.as_deref()
    }
}
