//! One [`Credential`] per configured credential: the current token (ArcSwap), the
//! background refresh loop, and renewals that are serialised and single-flight.
//!
//! Order of a renewal, which is what makes a crash harmless: obtain → store (durable) →
//! publish. A refresh token received is on disk before the access token is used.
//!
//! With a shared store (Redis) the replicas coordinate, so N of them make the token calls
//! of one: a renewal first adopts a newer stored token, then takes the store's lock; a
//! replica that finds the lock held waits (bounded) for the holder's token instead of
//! calling; the lock holder re-reads the store before calling. Between renewals each
//! replica follows the store (change notifications, and a poll as backstop). When the
//! store cannot be asked, a replica keeps serving the token it holds and renews alone
//! only once that token is about to expire; when the store is back, the newest token
//! (by `obtained_at_ms`) wins and a replica holding a newer one writes it back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::source::{SourceError, TokenResponse, TokenSource};
use super::store::{LockToken, StoredToken, TokenStore};
use super::{deadline_in, half, later, lifetime_of, unix_secs, Token, MAX_LIFETIME};
use crate::config::{CredentialConfig, GrantKind};
use crate::metrics::Metrics;
use crate::secret::Secret;

/// How long a replica's renewal lock lives in a shared store: longer than a token call
/// may take (the token client gives up after 30 s), short enough that a replica that
/// died holding it delays the others only briefly.
pub const LOCK_TTL: Duration = Duration::from_secs(30);

/// How long a replica waits for the lock holder's new token before giving up this round.
pub const PEER_WAIT: Duration = Duration::from_secs(5);

/// How often a waiting replica re-reads the store (notifications usually come first).
const PEER_POLL: Duration = Duration::from_millis(200);

/// Two token endpoint calls of one credential are never closer than this, whatever the
/// answers say (SPEC: a lifetime of 0, a storm of rejections or of operator clicks must
/// not hammer the endpoint; with Direct Login every call revokes the other tokens).
pub const MIN_RENEWAL_SPACING: Duration = Duration::from_secs(1);

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

/// A failed renewal, in words safe to show (no secrets).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RefreshError {
    /// What went wrong and what to do.
    pub message: String,
    /// True when only a person can fix it (`login`).
    pub needs_login: bool,
}

#[derive(Debug, Default, Clone)]
struct Status {
    last_refresh: Option<SystemTime>,
    next_refresh: Option<SystemTime>,
    consecutive_failures: u32,
    last_error: Option<String>,
    /// The token endpoint's `Retry-After`: no call before this.
    not_before: Option<SystemTime>,
    /// When the token endpoint was last called ([`MIN_RENEWAL_SPACING`]).
    last_call: Option<tokio::time::Instant>,
}

/// What coordinating with the other replicas decided.
enum Coordinated {
    /// A replica's newer token was adopted: no call needed.
    Adopted(Arc<Token>),
    /// This replica holds the lock: call, then release it.
    Locked(LockToken),
    /// The store cannot be asked and the token must be renewed now: call alone.
    Alone,
    /// Not now (the store is down but the token still good, or the holder was slow).
    Deferred(RefreshError),
}

/// What `/tokens` shows of a credential: metadata, never a token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// The grant.
    pub grant: &'static str,
    /// Whether a valid token is held now.
    pub valid: bool,
    /// Expiry of the current token (RFC 3339).
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
}

/// A credential at run time.
pub struct Credential {
    cfg: Arc<CredentialConfig>,
    current: ArcSwapOption<Token>,
    /// Bumped on every publish and failed renewal; waiting requests watch it.
    changed: watch::Sender<u64>,
    /// Serialises renewals: at most one token call per credential at a time.
    refresh_lock: tokio::sync::Mutex<()>,
    status: Mutex<Status>,
    needs_login: AtomicBool,
    generation: AtomicU64,
    /// The newest token generation whose rejection was already answered with a renewal
    /// (or that was rejected right after such a renewal): its later rejections pass
    /// through instead of renewing again (SPEC: a rejected token renews at most once).
    renewed_on_rejection: AtomicU64,
    source: TokenSource,
    store: Arc<dyn TokenStore>,
    metrics: Metrics,
}

impl Credential {
    /// A credential with no token yet; call [`Credential::init`] before serving.
    pub fn new(
        cfg: Arc<CredentialConfig>,
        http: reqwest::Client,
        store: Arc<dyn TokenStore>,
        metrics: Metrics,
    ) -> Credential {
        let source = TokenSource::new(http, cfg.clone());
        Credential {
            cfg,
            current: ArcSwapOption::empty(),
            changed: watch::channel(0).0,
            refresh_lock: tokio::sync::Mutex::new(()),
            status: Mutex::new(Status::default()),
            needs_login: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            renewed_on_rejection: AtomicU64::new(0),
            source,
            store,
            metrics,
        }
    }

    /// The credential's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Its configuration.
    pub fn config(&self) -> &Arc<CredentialConfig> {
        &self.cfg
    }

    /// Its token source (login uses it for the code exchange).
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// The hot path's read: one `ArcSwap::load`, no lock.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Option<Arc<Token>>> {
        self.current.load()
    }

    /// The current token if it may still be sent.
    pub fn valid_token(&self) -> Option<Arc<Token>> {
        self.current.load_full().filter(|t| t.is_valid_at(SystemTime::now()))
    }

    /// Loads the stored token (even an expired one: its refresh token still counts).
    pub async fn init(&self) {
        if self.cfg.grant == GrantKind::Static {
            if let Err(e) = self.refresh(Trigger::Manual).await {
                tracing::error!(credential = %self.name(), error = %e, "static token unusable");
            }
            return;
        }
        match self.store.load(self.name()).await {
            Ok(Some(stored)) => match Token::from_stored(&stored, SystemTime::now()) {
                Ok(t) => {
                    if stored.expires_at_time() > later(SystemTime::now(), MAX_LIFETIME) {
                        tracing::warn!(credential = %self.name(), "the stored token claims to live more than a year (or its expiry is not a time): treated as living one year at most");
                    }
                    let valid = t.is_valid_at(SystemTime::now());
                    tracing::info!(credential = %self.name(), valid, expires_at = unix_secs(t.expires_at), "loaded stored token");
                    self.publish(t);
                }
                Err(e) => tracing::warn!(credential = %self.name(), error = %e, "stored token unusable; ignoring it"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(credential = %self.name(), error = %e, "cannot read stored token"),
        }
    }

    /// Waits up to `timeout` for a valid token; the error says why there is none.
    pub async fn wait_valid(&self, timeout: Duration) -> Result<Arc<Token>, String> {
        let mut rx = self.changed.subscribe();
        let deadline = deadline_in(timeout);
        loop {
            if let Some(t) = self.valid_token() {
                return Ok(t);
            }
            if self.needs_login.load(Ordering::Relaxed) {
                return Err(self.why_unavailable());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(self.why_unavailable()),
            }
        }
    }

    /// Why no valid token is held, for 503 bodies and `/readyz`.
    pub fn why_unavailable(&self) -> String {
        let status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        match (self.current.load().is_some(), status.last_error) {
            (_, Some(e)) => format!("credential {:?} has no valid token: {e}", self.name()),
            (true, None) => format!("credential {:?}: the token expired and its renewal is under way", self.name()),
            (false, None) => format!("credential {:?}: the first token is still being obtained", self.name()),
        }
    }

    /// Renews the token: serialised, single-flight for rejections, store before publish;
    /// with a shared store, one replica at a time (see the module docs).
    pub async fn refresh(&self, trigger: Trigger) -> Result<Arc<Token>, RefreshError> {
        let _guard = self.refresh_lock.lock().await;
        let now = SystemTime::now();
        let current = self.current.load_full();

        // Someone renewed (or adopted a replica's token) while this caller waited for the
        // lock: that token will do. Without this, a timer that fired for the old token
        // would renew again right after a renewal forced by a rejection.
        if let (Trigger::Rejected(seen) | Trigger::Scheduled(seen), Some(cur)) = (trigger, &current) {
            if cur.generation != seen && self.good_enough(trigger, cur, now) {
                return Ok(cur.clone());
            }
        }
        // A token renews on rejection once; later rejections of it pass through.
        if let Trigger::Rejected(seen) = trigger {
            if self.renewed_on_rejection.fetch_max(seen, Ordering::AcqRel) >= seen {
                return Err(self.rejection_passed(seen));
            }
        }
        if self.cfg.grant == GrantKind::Static {
            return self.renew(trigger).await;
        }

        // Another process (a `login`, a replica) may have stored a newer token.
        if let Some(adopted) = self.adopt_if_good_enough(trigger).await {
            return Ok(adopted);
        }

        // The token endpoint asked for a pause (429 + Retry-After): honour it.
        if let Some(until) = self.status.lock().ok().and_then(|s| s.not_before).filter(|t| *t > now) {
            let wait = until.duration_since(now).unwrap_or_default();
            let last = self.status.lock().ok().and_then(|s| s.last_error.clone()).unwrap_or_default();
            return Err(RefreshError {
                message: format!("{last}; the token endpoint asked to wait {}s more", wait.as_secs_f64().ceil()),
                needs_login: false,
            });
        }

        if !self.store.is_shared() {
            return self.renew(trigger).await;
        }
        match self.coordinate(trigger).await {
            Coordinated::Adopted(t) => Ok(t),
            Coordinated::Deferred(e) => Err(e),
            Coordinated::Alone => self.renew(trigger).await,
            Coordinated::Locked(lock) => {
                let result = self.renew(trigger).await;
                if let Err(e) = self.store.unlock(self.name(), lock).await {
                    // It expires by itself after LOCK_TTL.
                    tracing::warn!(credential = %self.name(), error = %e, "cannot release the renewal lock");
                }
                result
            }
        }
    }

    /// A rejection that renews nothing: the token was already renewed once for one.
    fn rejection_passed(&self, generation: u64) -> RefreshError {
        self.metrics.token_refreshes.with_label_values(&[self.name(), "rejection_passed"]).inc();
        tracing::info!(credential = %self.name(), generation, "the upstream rejected a token that was already renewed once for a rejection (or was rejected as soon as it was issued): passing the answer through, not renewing again");
        RefreshError {
            message: "the token was already renewed once for a rejection; the upstream's answer is passed through"
                .into(),
            needs_login: false,
        }
    }

    /// Reports that a token issued for a rejection was itself rejected at once (the
    /// request's retry): the path, not the token, is refused, so its later rejections
    /// pass through instead of renewing again.
    pub fn rejected_again(&self, generation: u64) {
        if self.renewed_on_rejection.fetch_max(generation, Ordering::AcqRel) < generation {
            self.metrics.token_refreshes.with_label_values(&[self.name(), "rejection_passed"]).inc();
            tracing::info!(credential = %self.name(), generation, "a token renewed for a rejection was rejected too: the request is refused for another reason; not renewing again for it");
        }
    }

    /// Waits until [`MIN_RENEWAL_SPACING`] has passed since the last token endpoint call,
    /// and notes this one.
    async fn space_calls(&self) {
        let last = self.status.lock().ok().and_then(|s| s.last_call);
        if let Some(last) = last {
            tokio::time::sleep_until(last.checked_add(MIN_RENEWAL_SPACING).unwrap_or(last)).await;
        }
        if let Ok(mut s) = self.status.lock() {
            s.last_call = Some(tokio::time::Instant::now());
        }
    }

    /// One token endpoint call with what this credential renews with, then store and publish.
    async fn renew(&self, trigger: Trigger) -> Result<Arc<Token>, RefreshError> {
        if self.cfg.grant != GrantKind::Static {
            self.space_calls().await;
        }
        let current = self.current.load_full();
        let refresh_token: Option<Secret> =
            current.as_ref().and_then(|t| t.refresh_token.clone()).or_else(|| self.cfg.refresh_token.clone());
        let response = match self.source.obtain(refresh_token.as_ref()).await {
            Ok(r) => r,
            Err(e) => {
                if let (Trigger::Rejected(_), Some(cur)) = (trigger, &current) {
                    // GoTo said this token is dead and no new one came: stop sending it, so
                    // requests wait for (or are told about) the renewal instead.
                    self.retire(cur);
                }
                return Err(self.record_failure(e));
            }
        };
        let published = self.complete(response, current.as_deref(), refresh_token).await?;
        tracing::info!(credential = %self.name(), ?trigger, expires_at = unix_secs(published.expires_at), "token renewed");
        Ok(published)
    }

    /// Takes the shared store's renewal lock, or waits for the replica that holds it.
    async fn coordinate(&self, trigger: Trigger) -> Coordinated {
        // Subscribe before asking for the lock, so the holder's notice cannot slip by.
        let mut changes = self.store.changes();
        let deadline = deadline_in(PEER_WAIT);
        loop {
            match self.store.lock(self.name(), LOCK_TTL).await {
                Ok(Some(lock)) => {
                    // The previous holder may have stored its token just now.
                    if let Some(t) = self.adopt_if_good_enough(trigger).await {
                        if let Err(e) = self.store.unlock(self.name(), lock).await {
                            tracing::warn!(credential = %self.name(), error = %e, "cannot release the renewal lock");
                        }
                        return Coordinated::Adopted(t);
                    }
                    return Coordinated::Locked(lock);
                }
                Ok(None) => {}
                Err(e) => return self.store_unavailable(trigger, &e.to_string()),
            }
            tokio::select! {
                _ = next_change(&mut changes, self.name()) => {}
                _ = tokio::time::sleep(PEER_POLL) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Coordinated::Deferred(self.record_deferred(
                        "peer_timeout",
                        format!("another replica holds the renewal lock and stored no new token within {}s", PEER_WAIT.as_secs()),
                    ));
                }
            }
            if let Some(t) = self.adopt_if_good_enough(trigger).await {
                return Coordinated::Adopted(t);
            }
        }
    }

    /// The store cannot be asked: renew alone only when waiting is worse.
    fn store_unavailable(&self, trigger: Trigger, error: &str) -> Coordinated {
        let current = self.current.load_full();
        if must_renew_alone(trigger, current.as_deref(), self.cfg.refresh_before, SystemTime::now()) {
            tracing::warn!(credential = %self.name(), ?trigger, %error, "shared store unavailable and the token is due: renewing without coordination");
            self.metrics.token_refreshes.with_label_values(&[self.name(), "uncoordinated"]).inc();
            Coordinated::Alone
        } else {
            Coordinated::Deferred(self.record_deferred(
                "store_unavailable",
                format!("shared store unavailable ({error}); serving the current token meanwhile"),
            ))
        }
    }

    /// Adopts a newer stored token when it serves `trigger`'s purpose.
    async fn adopt_if_good_enough(&self, trigger: Trigger) -> Option<Arc<Token>> {
        let current = self.current.load_full();
        let adopted = self.adopt_stored(current.as_deref()).await?;
        let now = SystemTime::now();
        if self.good_enough(trigger, &adopted, now) {
            self.record_success(now);
            Some(adopted)
        } else {
            None
        }
    }

    /// Whether `token`, newer than the one the trigger was about, serves its purpose: a
    /// valid token for a rejection or an operator, one not yet due for the timer.
    fn good_enough(&self, trigger: Trigger, token: &Token, now: SystemTime) -> bool {
        match trigger {
            Trigger::Rejected(_) | Trigger::Manual => token.is_valid_at(now),
            Trigger::Scheduled(_) => {
                refresh_delay(now, Some(token.expires_at), self.cfg.refresh_before, 0, 0.0) > Duration::ZERO
            }
        }
    }

    /// Follows the shared store between renewals: adopts a newer stored token, writes
    /// back a newer held one (Redis came back empty, or this replica renewed alone).
    async fn sync_with_store(&self) {
        // A renewal under way reads the store itself.
        let Ok(_guard) = self.refresh_lock.try_lock() else { return };
        let stored = match self.store.load(self.name()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(credential = %self.name(), error = %e, "cannot read the shared store");
                return;
            }
        };
        let current = self.current.load_full();
        let now = SystemTime::now();
        let held = current.as_ref().filter(|t| t.is_valid_at(now)).map(|t| t.to_stored());
        match (stored, held) {
            (Some(s), Some(h)) if h.obtained_at_ms > s.obtained_at_ms && h.access_token != s.access_token => {
                self.write_back(&h).await
            }
            (None, Some(h)) => self.write_back(&h).await,
            (Some(_), _) => {
                if let Some(t) = self.adopt_stored(current.as_deref()).await {
                    if t.is_valid_at(now) {
                        self.record_success(now);
                    }
                }
            }
            (None, None) => {}
        }
    }

    async fn write_back(&self, held: &StoredToken) {
        match self.store.save(self.name(), held).await {
            Ok(()) => {
                tracing::info!(credential = %self.name(), "the shared store held an older token (or none): wrote ours back");
                self.metrics.token_refreshes.with_label_values(&[self.name(), "written_back"]).inc();
            }
            Err(e) => tracing::debug!(credential = %self.name(), error = %e, "cannot write the token back"),
        }
    }

    /// Stores and serves the answer of a code exchange (`login`, `/callback`).
    pub async fn install_response(&self, response: TokenResponse) -> Result<Arc<Token>, RefreshError> {
        let _guard = self.refresh_lock.lock().await;
        let token = self.complete(response, None, None).await?;
        tracing::info!(credential = %self.name(), expires_at = unix_secs(token.expires_at), "signed in");
        Ok(token)
    }

    /// Turns a token answer into the served token: carries over the refresh token and
    /// keys the answer lacks, looks keys up when still missing, stores, then publishes.
    async fn complete(
        &self,
        response: TokenResponse,
        previous: Option<&Token>,
        previous_refresh: Option<Secret>,
    ) -> Result<Arc<Token>, RefreshError> {
        let is_static = self.cfg.grant == GrantKind::Static;
        if !is_static && lifetime_of(response.expires_in).1 {
            tracing::warn!(credential = %self.name(), expires_in = response.expires_in, "the token endpoint says the token lives more than a year: treated as living one year");
        }
        let mut token = match Token::from_response(response, SystemTime::now(), is_static) {
            Ok(t) => t,
            Err(e) => return Err(self.record_failure(SourceError::Malformed(e.to_string()))),
        };
        if token.refresh_token.is_none() {
            token.refresh_token = previous_refresh; // a response without one keeps the old
        }
        if let Some(old) = previous {
            if token.organizer_key.is_none() && token.account_key.is_none() {
                token.organizer_key = old.organizer_key.clone();
                token.account_key = old.account_key.clone();
            }
        }
        if !is_static && token.organizer_key.is_none() && token.account_key.is_none() {
            if let Some(keys) = self.source.fetch_keys(&token.access_token).await {
                token.organizer_key = keys.organizer_key;
                token.account_key = keys.account_key;
            }
        }
        self.metrics.token_refreshes.with_label_values(&[self.name(), "success"]).inc();
        if !is_static {
            self.persist(&token.to_stored()).await;
        }
        let published = self.publish(token);
        self.record_success(SystemTime::now());
        Ok(published)
    }

    async fn persist(&self, stored: &StoredToken) {
        if let Err(e) = self.store.save(self.name(), stored).await {
            // Serving the new token still beats failing requests; say loudly that a
            // crash now would lose the refresh token.
            tracing::error!(credential = %self.name(), error = %e, "could not persist the new token");
            self.metrics.token_refreshes.with_label_values(&[self.name(), "store_error"]).inc();
        }
    }

    async fn adopt_stored(&self, current: Option<&Token>) -> Option<Arc<Token>> {
        let stored = match self.store.load(self.name()).await {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(credential = %self.name(), error = %e, "cannot read stored token");
                return None;
            }
        };
        let newer = match current {
            None => true,
            Some(c) => {
                let cs = c.to_stored();
                stored.obtained_at_ms > cs.obtained_at_ms && stored.access_token != cs.access_token
            }
        };
        if !newer {
            return None;
        }
        let token = Token::from_stored(&stored, SystemTime::now()).ok()?;
        tracing::info!(credential = %self.name(), "picked up a newer stored token");
        self.metrics.token_refreshes.with_label_values(&[self.name(), "adopted"]).inc();
        Some(self.publish(token))
    }

    /// Replaces `dead` by a copy that is already expired but keeps its refresh token.
    fn retire(&self, dead: &Token) {
        let Ok(mut copy) =
            Token::new(dead.access_token.clone(), dead.refresh_token.clone(), SystemTime::UNIX_EPOCH, dead.obtained_at)
        else {
            return;
        };
        copy.organizer_key = dead.organizer_key.clone();
        copy.account_key = dead.account_key.clone();
        self.publish(copy);
    }

    fn publish(&self, mut token: Token) -> Arc<Token> {
        token.generation = self.generation.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let token = Arc::new(token);
        self.current.store(Some(token.clone()));
        self.metrics.token_expiry.with_label_values(&[self.name()]).set(unix_secs(token.expires_at) as f64);
        self.changed.send_modify(|g| *g = token.generation);
        token
    }

    fn record_success(&self, at: SystemTime) {
        self.needs_login.store(false, Ordering::Relaxed);
        if let Ok(mut s) = self.status.lock() {
            s.last_refresh = Some(at);
            s.consecutive_failures = 0;
            s.last_error = None;
            s.not_before = None;
        }
    }

    fn record_failure(&self, e: SourceError) -> RefreshError {
        let (outcome, needs_login, message) = match &e {
            SourceError::NeedsLogin(m) => ("needs_login", true, m.clone()),
            SourceError::Refused { .. } if e.is_grant_refused() && self.cfg.grant == GrantKind::AuthorizationCode => (
                "refused",
                true,
                format!("{e}; the refresh token is dead: run `goto-auth-proxy login --credential {}`", self.name()),
            ),
            SourceError::Refused { status: 429, .. } => ("rate_limited", false, e.to_string()),
            SourceError::Refused { .. } => ("refused", false, e.to_string()),
            SourceError::Unreachable(_) => ("unreachable", false, e.to_string()),
            SourceError::Malformed(_) => ("malformed", false, e.to_string()),
        };
        self.metrics.token_refreshes.with_label_values(&[self.name(), outcome]).inc();
        self.needs_login.store(needs_login, Ordering::Relaxed);
        let not_before = e.retry_after().map(|d| later(SystemTime::now(), d));
        let failures = match self.status.lock() {
            Ok(mut s) => {
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                s.last_error = Some(message.clone());
                s.not_before = not_before;
                s.consecutive_failures
            }
            Err(_) => 0,
        };
        tracing::warn!(credential = %self.name(), failures, error = %message, retry_after_secs = e.retry_after().map(|d| d.as_secs()), "token renewal failed");
        self.changed.send_modify(|_| {}); // wake waiters so they see the failure
        RefreshError { message, needs_login }
    }

    /// A renewal not attempted this round (shared store down, lock holder slow): counts
    /// as a failure for the backoff, not for `needs_login`.
    fn record_deferred(&self, outcome: &'static str, message: String) -> RefreshError {
        self.metrics.token_refreshes.with_label_values(&[self.name(), outcome]).inc();
        let failures = match self.status.lock() {
            Ok(mut s) => {
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
                s.last_error = Some(message.clone());
                s.consecutive_failures
            }
            Err(_) => 0,
        };
        tracing::warn!(credential = %self.name(), failures, error = %message, "token renewal deferred");
        self.changed.send_modify(|_| {});
        RefreshError { message, needs_login: false }
    }

    /// The refresh loop: sleeps until the next renewal, renews, repeats; follows the
    /// shared store's notifications in between.
    /// With a shared store it also follows the store between renewals.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.cfg.grant == GrantKind::Static {
            // Nothing to renew; the task lives on so a supervisor never sees it end.
            return shutdown.cancelled().await;
        }
        // Every publish (whoever renewed: this loop, `POST /refresh`, a rejection, a
        // `login`, a replica) and every failure wakes the loop to plan again.
        let mut published = self.changed.subscribe();
        let mut changes = self.store.changes();
        let mut poll = self.store.poll_interval().map(|every| {
            let mut i = tokio::time::interval_at(deadline_in(every), every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        // The planned renewal stays put while the token and the failure count do: store
        // polls wake the loop often, and re-planning each time would keep pushing a
        // half-life renewal later.
        let mut plan: Option<(u64, u32, tokio::time::Instant)> = None;
        loop {
            let (failures, not_before) =
                self.status.lock().map(|s| (s.consecutive_failures, s.not_before)).unwrap_or_default();
            let current = self.current.load_full();
            let generation = current.as_ref().map_or(0, |t| t.generation);
            let when = match plan {
                Some((g, f, when)) if g == generation && f == failures => when,
                _ => {
                    let now = SystemTime::now();
                    let expires_at = current.as_ref().map(|t| t.expires_at);
                    let delay =
                        refresh_delay(now, expires_at, self.cfg.refresh_before, failures, rand::random::<f64>());
                    let delay = not_before_clamp(delay, now, not_before);
                    if let Ok(mut s) = self.status.lock() {
                        s.next_refresh = Some(later(now, delay));
                    }
                    let when = deadline_in(delay);
                    plan = Some((generation, failures, when));
                    when
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(when) => {}
                _ = published.changed() => continue,
                _ = next_change(&mut changes, self.name()) => {
                    self.sync_with_store().await;
                    continue;
                }
                _ = async {
                    match poll.as_mut() {
                        Some(p) => { p.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    self.sync_with_store().await;
                    continue;
                }
            }
            plan = None;
            // Failures are recorded and logged inside; the loop's backoff handles them.
            let _outcome = self.refresh(Trigger::Scheduled(generation)).await;
        }
    }

    /// Metadata for `/tokens` and `/readyz`.
    pub fn info(&self) -> TokenInfo {
        let now = SystemTime::now();
        let cur = self.current.load_full();
        let status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        let rfc = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
        TokenInfo {
            grant: self.cfg.grant.as_str(),
            valid: cur.as_ref().is_some_and(|t| t.is_valid_at(now)),
            expires_at: cur.as_ref().map(|t| rfc(t.expires_at)),
            organizer_key: cur.as_ref().and_then(|t| t.organizer_key.clone()),
            account_key: cur.as_ref().and_then(|t| t.account_key.clone()),
            last_refresh: status.last_refresh.map(rfc),
            next_refresh: if self.cfg.grant == GrantKind::Static { None } else { status.next_refresh.map(rfc) },
            consecutive_failures: status.consecutive_failures,
            last_error: status.last_error,
            needs_login: self.needs_login.load(Ordering::Relaxed),
        }
    }
}

/// Backoff after `failures` consecutive failures: 0.5 s doubling to 30 s, minus up to
/// 20 % jitter (`jitter` in 0..1) so replicas do not retry in step.
pub fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    base.min(Duration::from_secs(30)).mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
}

/// When to renew next. A valid token is renewed `refresh_before` ahead of expiry, but
/// never later than half its remaining life (short-lived tokens), minus up to 10 %
/// jitter; after failures, retries back off but still come before expiry. With no
/// valid token: now, or after the backoff when the last attempt failed.
pub fn refresh_delay(
    now: SystemTime,
    expires_at: Option<SystemTime>,
    refresh_before: Duration,
    failures: u32,
    jitter: f64,
) -> Duration {
    let remaining = expires_at.and_then(|e| e.duration_since(now).ok()).filter(|r| *r > super::EXPIRY_MARGIN);
    match (remaining, failures) {
        (None, 0) => Duration::ZERO,
        (None, f) => backoff(f, jitter),
        (Some(r), 0) => r.saturating_sub(refresh_before).max(half(r)).mul_f64(1.0 - 0.1 * jitter.clamp(0.0, 1.0)),
        (Some(r), f) => backoff(f, jitter).min(half(r)).max(Duration::from_millis(100)),
    }
}

/// A renewal never comes before the token endpoint's `Retry-After` has passed.
pub fn not_before_clamp(delay: Duration, now: SystemTime, not_before: Option<SystemTime>) -> Duration {
    match not_before.and_then(|t| t.duration_since(now).ok()) {
        Some(wait) => delay.max(wait),
        None => delay,
    }
}

/// Whether a replica that cannot reach the shared store should call the token endpoint
/// anyway: when it has no valid token, when the upstream rejected it, when an operator
/// asked, or when less than a quarter of its life (at most `refresh_before / 2`) is left.
/// Otherwise it keeps serving and waits for the store to come back.
pub fn must_renew_alone(trigger: Trigger, current: Option<&Token>, refresh_before: Duration, now: SystemTime) -> bool {
    let Some(t) = current else { return true };
    if !matches!(trigger, Trigger::Scheduled(_)) || !t.is_valid_at(now) {
        return true;
    }
    let lifetime = t.expires_at.duration_since(t.obtained_at).unwrap_or_default();
    let remaining = t.expires_at.duration_since(now).unwrap_or_default();
    remaining < half(half(lifetime)).min(half(refresh_before))
}

/// Waits for a change notification about `name` (or about every credential); never
/// returns when there are no notifications.
async fn next_change(changes: &mut Option<broadcast::Receiver<String>>, name: &str) {
    let Some(rx) = changes.as_mut() else { return std::future::pending().await };
    loop {
        match rx.recv().await {
            Ok(n) if n.is_empty() || n == name => return,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => {
                *changes = None;
                return std::future::pending().await;
            }
        }
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
    fn alone_only_when_waiting_is_worse() {
        let now = SystemTime::now();
        let tok = |left: Duration, life: Duration| {
            Token::new(Secret::new("a"), None, now + left, now + left - life).expect("token")
        };
        // No token, a rejected one, an operator's ask: renew alone.
        assert!(must_renew_alone(Trigger::Scheduled(1), None, FIVE_MIN, now));
        assert!(must_renew_alone(Trigger::Rejected(1), Some(&tok(HOUR, HOUR)), FIVE_MIN, now));
        assert!(must_renew_alone(Trigger::Manual, Some(&tok(HOUR, HOUR)), FIVE_MIN, now));
        // An hour token: keep serving until 2.5 min are left.
        assert!(!must_renew_alone(Trigger::Scheduled(1), Some(&tok(FIVE_MIN, HOUR)), FIVE_MIN, now));
        assert!(must_renew_alone(Trigger::Scheduled(1), Some(&tok(Duration::from_secs(149), HOUR)), FIVE_MIN, now));
        // A 4-second token: until 1 s is left.
        let four = Duration::from_secs(4);
        assert!(!must_renew_alone(Trigger::Scheduled(1), Some(&tok(Duration::from_secs(2), four)), FIVE_MIN, now));
        assert!(must_renew_alone(Trigger::Scheduled(1), Some(&tok(Duration::from_millis(900), four)), FIVE_MIN, now));
        // Expired: renew.
        assert!(must_renew_alone(Trigger::Scheduled(1), Some(&tok(Duration::ZERO, four)), FIVE_MIN, now));
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
