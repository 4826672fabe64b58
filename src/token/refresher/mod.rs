//! One [`Credential`] per configured credential: the current token (in a
//! [`TokenSlot`](super::slot::TokenSlot) shared with the data path's
//! [`TokenHandle`]s), the background refresh loop, and renewals that are serialised and
//! single-flight.
//!
//! Order of a renewal, which is what makes a crash harmless: obtain → store (durable) →
//! publish. A refresh token received is on disk before the access token is used.
//!
//! * [`schedule`] — when to renew (pure).
//! * [`coordinate`] — replicas sharing a store: one renewal at a time, the newest token wins.
//! * [`state`] — recording outcomes, and what `/tokens` shows.
//! * `run` — the refresh loop: the schedule, the store's news, the data path's rejections.
//!
//! A `static` credential is its own kind of source ([`Renewal::Static`]): its token is
//! read again from the config at every renewal, never stored, never scheduled.

mod coordinate;
mod record;
mod renew;
mod run;
mod schedule;
mod state;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::handle::{Inbox, TokenHandle};
use super::slot::TokenSlot;
use super::source::{Renewal, TokenSource};
use super::store::TokenStore;
use super::{later, unix_secs, Token, MAX_LIFETIME};
use crate::config::CredentialConfig;
use crate::metrics::Metrics;

pub(crate) use run::{Plan, SIGN_IN_CHECK};
pub(crate) use schedule::{Calendar, TokenGate};
pub use state::{CredentialState, Health, TokenInfo};

pub use super::slot::RefreshError;

/// How many times a save is tried again over the version the store reports (a sign-in,
/// or nothing readable stored) before it is given up as a store error.
const SAVE_ATTEMPTS: usize = 5;

/// What [`Credential::persist`] made of a new token.
enum Persisted {
    /// Stored (or the store failed): serve this token.
    Ours(Token),
    /// Another process stored a newer one first: serve that one.
    Theirs(Token),
}

/// Why a renewal is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The refresh loop's timer, planned for the token of this generation (0: none).
    /// A renewal that had to wait and finds a newer token by then has nothing to do.
    Scheduled(u64),
    /// The upstream rejected the token of this generation.
    Rejected(u64),
    /// An operator asked (`POST /refresh/{credential}`).
    Manual,
}

/// Where a credential's renewal outcomes go.
enum Outcomes {
    /// A credential's [`Health`], followed by its notifier.
    Health(tokio::sync::watch::Sender<Health>),
    /// An account's name, sent to the one task of its set, which plans the account's next
    /// renewal and notifies from it (10,000 accounts keep no task or channel each).
    Set(tokio::sync::mpsc::UnboundedSender<Arc<str>>),
}

/// What the accounts of one account credential share: its `token_rate` gate and
/// calendar, its rejection inbox, and the queue its task learns of outcomes from.
pub(in crate::token) struct AccountParts {
    /// `token_rate`: spaces the token endpoint calls of all the accounts.
    pub(in crate::token) gate: Arc<TokenGate>,
    /// Where the accounts book their renewals.
    pub(in crate::token) calendar: Arc<Calendar>,
    /// The accounts' rejection reports, answered by the set's task.
    pub(in crate::token) inbox: Arc<Inbox>,
    /// Account names, one per renewal outcome, for the set's task.
    pub(in crate::token) outcomes: tokio::sync::mpsc::UnboundedSender<Arc<str>>,
    /// The token endpoint client.
    pub(in crate::token) source: TokenSource,
}

/// A credential at run time: its token slot, how it renews, where it stores.
pub struct Credential {
    cfg: Arc<CredentialConfig>,
    /// The account of an account credential this renews (`None`: the credential itself).
    account: Option<String>,
    /// Its record's key in the store and its name in logs: the credential's name, or
    /// `credential/account` for an account.
    key: String,
    /// The current token and what waits on it; shared with every [`TokenHandle`].
    slot: Arc<TokenSlot>,
    /// Rejections reported through handles, answered by the refresh loop (an account's
    /// by its set's one task, through the set's inbox).
    inbox: Arc<Inbox>,
    /// Serialises renewals: at most one token call per credential at a time.
    refresh_lock: tokio::sync::Mutex<()>,
    /// What renews the token: the config (`static`) or the token endpoint.
    renewal: Renewal,
    /// The token endpoint client (renewals, `login`'s code exchange, key lookups).
    source: TokenSource,
    store: Arc<dyn TokenStore>,
    metrics: Metrics,
    /// Who hears of every renewal outcome: the credential's notifier, or an account's set.
    outcomes: Outcomes,
    /// `token_rate`: spaces the token endpoint calls of the credential (all its accounts).
    gate: Arc<TokenGate>,
    /// An account's: where the credential's accounts book their renewals.
    calendar: Option<Arc<Calendar>>,
}

impl Credential {
    /// A credential with no token yet; call [`Credential::init`] before serving.
    pub fn new(
        cfg: Arc<CredentialConfig>,
        http: reqwest::Client,
        store: Arc<dyn TokenStore>,
        metrics: Metrics,
    ) -> Credential {
        // The series exists from the start, so an alert on it needs no `absent()`.
        metrics.credential_needs_login.with_label_values(&[cfg.name.as_str()]).set(0);
        let gate = Arc::new(TokenGate::new(&cfg.name, cfg.token_rate, None));
        let source = TokenSource::new(http, cfg.clone());
        let outcomes = Outcomes::Health(tokio::sync::watch::Sender::new(Health::default()));
        Credential::build(cfg, None, source, store, metrics, (gate, None, Arc::new(Inbox::new()), outcomes))
    }

    /// One account of an account credential (`accounts = true`): its own token, record
    /// (`credential/account`), renewals and health; metrics count it under the credential.
    pub(in crate::token) fn for_account(
        cfg: Arc<CredentialConfig>,
        account: &str,
        store: Arc<dyn TokenStore>,
        metrics: Metrics,
        parts: &AccountParts,
    ) -> Credential {
        let shared = (
            parts.gate.clone(),
            Some(parts.calendar.clone()),
            parts.inbox.clone(),
            Outcomes::Set(parts.outcomes.clone()),
        );
        Credential::build(cfg, Some(account.to_string()), parts.source.clone(), store, metrics, shared)
    }

    fn build(
        cfg: Arc<CredentialConfig>,
        account: Option<String>,
        source: TokenSource,
        store: Arc<dyn TokenStore>,
        metrics: Metrics,
        (gate, calendar, inbox, outcomes): (Arc<TokenGate>, Option<Arc<Calendar>>, Arc<Inbox>, Outcomes),
    ) -> Credential {
        let key = match &account {
            Some(a) => format!("{}/{a}", cfg.name),
            None => cfg.name.clone(),
        };
        let slot = Arc::new(TokenSlot::new(key.clone(), metrics.token_refreshes.clone()));
        Credential {
            account,
            key,
            renewal: Renewal::of(&cfg),
            source,
            cfg,
            slot,
            inbox,
            refresh_lock: tokio::sync::Mutex::new(()),
            store,
            metrics,
            outcomes,
            gate,
            calendar,
        }
    }

    /// The credential's name (an account's credential's: metrics never name accounts).
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The account this renews, for an account of an account credential.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// The store key and the name in logs: `credential` or `credential/account`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The `login` command that signs this in again.
    pub fn login_command(&self) -> String {
        self.cfg.login_command(self.account())
    }

    /// Its configuration.
    pub fn config(&self) -> &Arc<CredentialConfig> {
        &self.cfg
    }

    /// Its token source (login uses it for the code exchange).
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// The narrow handle the data path holds: read, wait, report a rejection. Reported
    /// rejections are renewed by this credential's refresh loop ([`Credential::run`]).
    pub fn handle(&self) -> TokenHandle {
        self.inbox.handle(&self.slot)
    }

    /// The hot path's read: one `ArcSwap::load`, no lock.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Option<Arc<Token>>> {
        self.slot.load()
    }

    /// The current token if it may still be sent.
    pub fn valid_token(&self) -> Option<Arc<Token>> {
        self.slot.valid_token()
    }

    /// Loads the stored token (even an expired one: its refresh token still counts); a
    /// `static` credential reads its token from the config instead.
    pub async fn init(&self) {
        if let Renewal::Static(_) = self.renewal {
            if let Err(e) = self.refresh(Trigger::Manual).await {
                tracing::error!(credential = %self.key(), error = %e, "static token unusable");
            }
            return;
        }
        match self.store.load(self.key()).await {
            Ok(Some(stored)) => match Token::from_stored(self.key(), &stored, SystemTime::now()) {
                Ok(t) => {
                    if stored.expires_at_time() > later(SystemTime::now(), MAX_LIFETIME) {
                        tracing::warn!(credential = %self.key(), "the stored token claims to live more than a year (or its expiry is not a time): treated as living one year at most");
                    }
                    let valid = t.is_valid_at(SystemTime::now());
                    tracing::info!(credential = %self.key(), valid, expires_at = unix_secs(t.expires_at), "loaded stored token");
                    self.publish(t);
                }
                Err(e) => tracing::warn!(credential = %self.key(), error = %e, "stored token unusable; ignoring it"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(credential = %self.key(), error = %e, "cannot read stored token"),
        }
    }

    /// Waits up to `timeout` for a valid token; the error says why there is none.
    pub async fn wait_valid(&self, timeout: Duration) -> Result<Arc<Token>, String> {
        self.slot.wait_valid(timeout).await
    }

    /// Why no valid token is held, for 503 bodies and `/readyz`.
    pub fn why_unavailable(&self) -> String {
        self.slot.why_unavailable()
    }
}
