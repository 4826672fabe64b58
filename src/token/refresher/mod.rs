//! One [`Credential`] per configured credential: the current token (in a
//! [`TokenSlot`](super::slot::TokenSlot) shared with the data path's
//! [`TokenHandle`]s), the background refresh loop, and renewals that are serialised and
//! single-flight.
//!
//! * [`renew`] — one renewal, top-down: decide → coordinate → obtain → validate → store
//!   → publish → reschedule.
//! * [`coordinate`] — [`Coordinator`](coordinate::Coordinator): the store's lock, the
//!   version order of records, taking up what other processes stored.
//! * [`record`] — [`Recorder`](record::Recorder): outcomes (counters, last error,
//!   health) and the token served.
//! * [`schedule`] — when to renew (pure), and the `token_rate` gate.
//! * `run` — the refresh loop: the schedule, the store's news, the data path's rejections.
//! * [`state`] — what `/tokens` shows.
//!
//! Where tokens come from is the credential's [`Source`]: its token endpoint, or for
//! `static` the configured token, which is its own store and never expires.

mod coordinate;
mod record;
mod renew;
mod run;
mod schedule;
mod state;

use std::sync::Arc;
use std::time::SystemTime;

use super::handle::{Inbox, TokenHandle};
use super::slot::TokenSlot;
use super::source::{Source, TokenSource};
use super::store::TokenStore;
use super::{later, unix_secs, Token, MAX_LIFETIME};
use crate::config::CredentialConfig;
use crate::metrics::Metrics;

use coordinate::Coordinator;
use record::{Outcomes, Recorder};
pub(crate) use run::{Plan, SIGN_IN_CHECK};
pub(crate) use schedule::{Calendar, TokenGate};
pub(crate) use state::{CredentialState, Health, TokenInfo};

pub(crate) use super::slot::RefreshError;

/// Why a renewal is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// The refresh loop's timer, planned for the token of this generation (0: none).
    /// A renewal that had to wait and finds a newer token by then has nothing to do.
    Scheduled(u64),
    /// The upstream rejected the token of this generation.
    Rejected(u64),
    /// An operator asked (`POST /refresh/{credential}`).
    Manual,
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

/// A credential at run time: its token slot, where its tokens come from, its store.
pub struct Credential {
    cfg: Arc<CredentialConfig>,
    /// The current token and what waits on it; shared with every [`TokenHandle`].
    slot: Arc<TokenSlot>,
    /// Rejections reported through handles, answered by the refresh loop (an account's
    /// by its set's one task, through the set's inbox).
    inbox: Arc<Inbox>,
    /// Serialises renewals: at most one token call per credential at a time.
    refresh_lock: tokio::sync::Mutex<()>,
    /// Where tokens come from: the token endpoint, or the configuration (`static`).
    source: Source,
    /// The token endpoint client (`login`'s code exchange).
    client: TokenSource,
    /// The store, and the rules for sharing it with other processes.
    peers: Coordinator,
    /// Where outcomes are written down: the token served, counters, status, health.
    record: Recorder,
    /// `token_rate`: spaces the token endpoint calls of the credential (all its accounts).
    gate: Arc<TokenGate>,
    /// An account's: where the credential's accounts book their renewals.
    calendar: Option<Arc<Calendar>>,
}

impl Credential {
    /// A credential with no token yet; call [`Credential::init`] before serving.
    pub(crate) fn new(
        cfg: Arc<CredentialConfig>,
        http: reqwest::Client,
        store: Arc<dyn TokenStore>,
        metrics: Metrics,
    ) -> Credential {
        // The series exists from the start, so an alert on it needs no `absent()`.
        metrics.credential_needs_login.with_label_values(&[cfg.name.as_str()]).set(0);
        let gate = Arc::new(TokenGate::new(&cfg.name, cfg.token_rate, None));
        let client = TokenSource::new(http, cfg.clone());
        let outcomes = Outcomes::Health(tokio::sync::watch::Sender::new(Health::default()));
        Credential::build(cfg, None, client, store, metrics, (gate, None, Arc::new(Inbox::new()), outcomes))
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
        client: TokenSource,
        store: Arc<dyn TokenStore>,
        metrics: Metrics,
        (gate, calendar, inbox, outcomes): (Arc<TokenGate>, Option<Arc<Calendar>>, Arc<Inbox>, Outcomes),
    ) -> Credential {
        let record = Recorder::new(cfg.clone(), account, metrics, outcomes);
        let slot = record.slot().clone();
        let source = Source::of(&cfg, client.clone());
        let peers = Coordinator::new(source.store(store), cfg.refresh_before);
        Credential {
            source,
            client,
            cfg,
            slot,
            inbox,
            refresh_lock: tokio::sync::Mutex::new(()),
            peers,
            record,
            gate,
            calendar,
        }
    }

    /// The credential's name (an account's credential's: metrics never name accounts).
    pub(crate) fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The account this renews, for an account of an account credential.
    pub(crate) fn account(&self) -> Option<&str> {
        self.record.account()
    }

    /// The store key and the name in logs: `credential` or `credential/account`.
    pub(crate) fn key(&self) -> &str {
        self.record.key()
    }

    /// The `login` command that signs this in again.
    pub(crate) fn login_command(&self) -> String {
        self.record.login_command()
    }

    /// Its configuration.
    pub(crate) fn config(&self) -> &Arc<CredentialConfig> {
        &self.cfg
    }

    /// Its token endpoint client (login uses it for the code exchange).
    pub(crate) fn source(&self) -> &TokenSource {
        &self.client
    }

    /// The narrow handle the data path holds: read, wait, report a rejection. Reported
    /// rejections are renewed by this credential's refresh loop ([`Credential::run`]).
    pub(crate) fn handle(&self) -> TokenHandle {
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

    /// Loads the stored token (even an expired one: its refresh token still counts). A
    /// `static` credential's store is its configuration: its token is served from here.
    pub async fn init(&self) {
        match self.peers.store().load(self.key()).await {
            Ok(Some(stored)) => match Token::from_stored(self.key(), &stored, SystemTime::now()) {
                Ok(t) => {
                    if stored.expires_at_time() > later(SystemTime::now(), MAX_LIFETIME) {
                        tracing::warn!(credential = %self.key(), "the stored token claims to live more than a year (or its expiry is not a time): treated as living one year at most");
                    }
                    let valid = t.is_valid_at(SystemTime::now());
                    tracing::info!(credential = %self.key(), valid, expires_at = unix_secs(t.expires_at), "loaded stored token");
                    self.record.publish(t);
                }
                Err(e) => tracing::warn!(credential = %self.key(), error = %e, "stored token unusable; ignoring it"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(credential = %self.key(), error = %e, "cannot read stored token"),
        }
    }

    /// Why no valid token is held, for 503 bodies and `/readyz`.
    pub(crate) fn why_unavailable(&self) -> String {
        self.slot.why_unavailable()
    }

    /// Follows [`Health`] changes: each renewal outcome publishes one. `None` for an
    /// account: its set's task hears of its outcomes instead ([`Credential::health_now`]).
    pub(crate) fn health(&self) -> Option<tokio::sync::watch::Receiver<Health>> {
        self.record.health()
    }

    /// The credential's [`Health`] as the slot records it now.
    pub(crate) fn health_now(&self) -> Health {
        self.record.health_now()
    }

    /// Whether only a person can make a token again: then nothing calls the token
    /// endpoint on its own until a sign-in, a token adopted from the store, a reload that
    /// changes the credential, or `POST /refresh/{credential}`.
    pub(crate) fn awaits_a_person(&self) -> bool {
        self.record.awaits_a_person()
    }

    /// Follows the shared store between renewals ([`Coordinator::sync`]); skipped while a
    /// renewal is under way (it reads the store itself).
    pub(crate) async fn sync_with_store(&self) {
        let Ok(_guard) = self.refresh_lock.try_lock() else { return };
        self.peers.sync(&self.record).await;
    }
}
