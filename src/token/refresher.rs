//! One [`Credential`] per configured credential: the current token (ArcSwap), the
//! background refresh loop, and renewals that are serialised and single-flight.
//!
//! Order of a renewal, which is what makes a crash harmless: obtain → store (durable) →
//! publish. A refresh token received is on disk before the access token is used.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::source::{SourceError, TokenResponse, TokenSource};
use super::store::{StoredToken, TokenStore};
use super::{unix_secs, Token};
use crate::config::{CredentialConfig, GrantKind};
use crate::metrics::Metrics;
use crate::secret::Secret;

/// Why a renewal is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The refresh loop's timer.
    Scheduled,
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
    kick: Notify,
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
            kick: Notify::new(),
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
            Ok(Some(stored)) => match Token::from_stored(&stored) {
                Ok(t) => {
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
        let deadline = tokio::time::Instant::now() + timeout;
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

    /// Asks the refresh loop to renew now (without waiting for it).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Renews the token: serialised, single-flight for rejections, store before publish.
    pub async fn refresh(&self, trigger: Trigger) -> Result<Arc<Token>, RefreshError> {
        let _guard = self.refresh_lock.lock().await;
        let now = SystemTime::now();
        let current = self.current.load_full();

        // Someone renewed while this caller waited for the lock: that token will do.
        if let (Trigger::Rejected(seen), Some(cur)) = (trigger, &current) {
            if cur.generation != seen && cur.is_valid_at(now) {
                return Ok(cur.clone());
            }
        }

        // Another process (a `login`, a replica) may have stored a newer token.
        if self.cfg.grant != GrantKind::Static {
            if let Some(adopted) = self.adopt_stored(current.as_deref()).await {
                let good_enough = match trigger {
                    Trigger::Rejected(_) | Trigger::Manual => adopted.is_valid_at(now),
                    Trigger::Scheduled => {
                        refresh_delay(now, Some(adopted.expires_at), self.cfg.refresh_before, 0, 0.0) > Duration::ZERO
                    }
                };
                if good_enough {
                    self.record_success(now);
                    return Ok(adopted);
                }
            }
        }
        let current = self.current.load_full();

        let refresh_token: Option<Secret> =
            current.as_ref().and_then(|t| t.refresh_token.clone()).or_else(|| self.cfg.refresh_token.clone());
        let result = self.source.obtain(refresh_token.as_ref()).await;
        let response = match result {
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
        let token = Token::from_stored(&stored).ok()?;
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
        token.generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
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
            SourceError::Refused { .. } => ("refused", false, e.to_string()),
            _ => ("error", false, e.to_string()),
        };
        self.metrics.token_refreshes.with_label_values(&[self.name(), outcome]).inc();
        self.needs_login.store(needs_login, Ordering::Relaxed);
        let failures = match self.status.lock() {
            Ok(mut s) => {
                s.consecutive_failures += 1;
                s.last_error = Some(message.clone());
                s.consecutive_failures
            }
            Err(_) => 0,
        };
        tracing::warn!(credential = %self.name(), failures, error = %message, "token renewal failed");
        self.changed.send_modify(|_| {}); // wake waiters so they see the failure
        RefreshError { message, needs_login }
    }

    /// The refresh loop: sleeps until the next renewal (or a kick), renews, repeats.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.cfg.grant == GrantKind::Static {
            return;
        }
        loop {
            let failures = self.status.lock().map(|s| s.consecutive_failures).unwrap_or(0);
            let expires_at = self.current.load().as_ref().map(|t| t.expires_at);
            let now = SystemTime::now();
            let delay = refresh_delay(now, expires_at, self.cfg.refresh_before, failures, rand::random::<f64>());
            if let Ok(mut s) = self.status.lock() {
                s.next_refresh = Some(now + delay);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = self.kick.notified() => {}
            }
            // Failures are recorded and logged inside; the loop's backoff handles them.
            let _outcome = self.refresh(Trigger::Scheduled).await;
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
        (Some(r), 0) => r.saturating_sub(refresh_before).max(r / 2).mul_f64(1.0 - 0.1 * jitter.clamp(0.0, 1.0)),
        (Some(r), f) => backoff(f, jitter).min(r / 2).max(Duration::from_millis(100)),
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
    fn failures_retry_before_expiry() {
        let now = SystemTime::now();
        let d = refresh_delay(now, Some(now + Duration::from_secs(10)), FIVE_MIN, 10, 0.0);
        assert_eq!(d, Duration::from_secs(5));
        let d = refresh_delay(now, Some(now + HOUR), FIVE_MIN, 2, 0.0);
        assert_eq!(d, Duration::from_secs(1));
    }
}
