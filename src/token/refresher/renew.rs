//! One renewal, in the order it runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::coordinate::Coordinated;
use super::schedule::{refresh_delay, MIN_RENEWAL_SPACING};
use super::{Credential, Persisted, RefreshError, Trigger, SAVE_ATTEMPTS};
use crate::secret::Secret;
use crate::token::source::{Renewal, SourceError, TokenResponse};
use crate::token::store::Saved;
use crate::token::{later, lifetime_of, unix_secs, Token, STATIC_LIFETIME};

impl Credential {
    /// Renews the token: serialised, single-flight for rejections, store before publish;
    /// with a shared store, one replica at a time (see [`coordinate`]).
    pub async fn refresh(&self, trigger: Trigger) -> Result<Arc<Token>, RefreshError> {
        let _guard = self.refresh_lock.lock().await;
        let now = SystemTime::now();
        let current = self.slot.current.load_full();

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
            if self.slot.renewed_on_rejection.fetch_max(seen, Ordering::AcqRel) >= seen {
                return Err(self.slot.rejection_passed(seen));
            }
        }
        if let Renewal::Static(configured) = &self.renewal {
            return self.reread_static(configured, trigger);
        }

        // Another process (a `login`, a replica) may have stored a newer token.
        if let Some(adopted) = self.adopt_if_good_enough(trigger).await {
            return Ok(adopted);
        }

        // A dead grant is not asked again on a timer or a rejection: only a person helps.
        if trigger != Trigger::Manual && self.awaits_a_person() {
            return Err(self.left_for_a_person(trigger, current.as_deref()));
        }

        // The token endpoint asked for a pause (429 + Retry-After): honour it.
        if let Some(until) = self.slot.status.lock().ok().and_then(|s| s.not_before).filter(|t| *t > now) {
            let wait = until.duration_since(now).unwrap_or_default();
            let last = self.slot.status.lock().ok().and_then(|s| s.last_error.clone()).unwrap_or_default();
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
                if let Err(e) = self.store.unlock(self.key(), lock).await {
                    // It expires by itself after LOCK_TTL.
                    tracing::warn!(credential = %self.key(), error = %e, "cannot release the renewal lock");
                }
                result
            }
        }
    }

    /// The answer to a renewal not attempted because only a person can help: a rejected
    /// token is no longer sent (requests are told why instead), and no call is made.
    fn left_for_a_person(&self, trigger: Trigger, current: Option<&Token>) -> RefreshError {
        if let (Trigger::Rejected(seen), Some(cur)) = (trigger, current) {
            if cur.generation == seen && cur.is_valid_at(SystemTime::now()) {
                self.retire(cur);
            }
        }
        let message = self.slot.status.lock().ok().and_then(|s| s.last_error.clone());
        RefreshError { message: message.unwrap_or_else(|| self.why_unavailable()), needs_login: true }
    }

    /// Reports that a token issued for a rejection was itself rejected at once (the
    /// request's retry): the path, not the token, is refused, so its later rejections
    /// pass through instead of renewing again.
    pub fn rejected_again(&self, generation: u64) {
        self.slot.rejected_again(generation);
    }

    /// Whether `token`, newer than the one the trigger was about, serves its purpose: a
    /// valid token for a rejection or an operator, one not yet due for the timer.
    pub(super) fn good_enough(&self, trigger: Trigger, token: &Token, now: SystemTime) -> bool {
        match trigger {
            Trigger::Rejected(_) | Trigger::Manual => token.is_valid_at(now),
            Trigger::Scheduled(_) => {
                refresh_delay(now, Some(token.expires_at), self.cfg.refresh_before, 0, 0.0) > Duration::ZERO
            }
        }
    }

    /// Waits until [`MIN_RENEWAL_SPACING`] has passed since the last token endpoint call,
    /// and for the credential's `token_rate` turn, and notes this call.
    async fn space_calls(&self) {
        let last = self.slot.status.lock().ok().and_then(|s| s.last_call);
        if let Some(last) = last {
            tokio::time::sleep_until(last.checked_add(MIN_RENEWAL_SPACING).unwrap_or(last)).await;
        }
        self.gate.turn().await;
        if let Ok(mut s) = self.slot.status.lock() {
            s.last_call = Some(tokio::time::Instant::now());
        }
    }

    /// One token endpoint call with what this credential renews with, then store and publish.
    async fn renew(&self, trigger: Trigger) -> Result<Arc<Token>, RefreshError> {
        self.space_calls().await;
        let current = self.slot.current.load_full();
        let refresh_token = self.refresh_token_of(current.as_deref());
        let response = match self.source.obtain(refresh_token.as_ref()).await {
            Ok(r) => r,
            Err(e) => {
                if let (Trigger::Rejected(_), Some(cur)) = (trigger, &current) {
                    // The upstream said this token is dead and no new one came: stop sending it, so
                    // requests wait for (or are told about) the renewal instead.
                    self.retire(cur);
                }
                return Err(self.record_failure(e));
            }
        };
        let published = self.complete(response, current.as_deref(), refresh_token, false).await?;
        tracing::info!(credential = %self.key(), ?trigger, expires_at = unix_secs(published.expires_at), "token renewed");
        Ok(published)
    }

    /// The newest refresh token held: the current token's, else the config's seed.
    fn refresh_token_of(&self, current: Option<&Token>) -> Option<Secret> {
        current.and_then(|t| t.refresh_token.clone()).or_else(|| self.cfg.refresh_token.clone())
    }

    /// A `static` credential's renewal: its configured token, served again as a new
    /// generation that lives [`STATIC_LIFETIME`]. No call, no store, no key lookup.
    fn reread_static(&self, configured: &Secret, trigger: Trigger) -> Result<Arc<Token>, RefreshError> {
        let now = SystemTime::now();
        let current = self.slot.current.load_full();
        let refresh_token = self.refresh_token_of(current.as_deref());
        let token = match Token::new(configured.clone(), refresh_token, later(now, STATIC_LIFETIME), now) {
            Ok(t) => t,
            Err(e) => return Err(self.record_failure(SourceError::Malformed(e.to_string()))),
        };
        self.metrics.token_refreshes.with_label_values(&[self.name(), "success"]).inc();
        let published = self.publish(token);
        self.record_success(SystemTime::now());
        tracing::info!(credential = %self.key(), ?trigger, expires_at = unix_secs(published.expires_at), "token renewed");
        Ok(published)
    }

    /// Stores and serves the answer of a code exchange (`login`, `/callback`).
    pub async fn install_response(&self, response: TokenResponse) -> Result<Arc<Token>, RefreshError> {
        let _guard = self.refresh_lock.lock().await;
        let token = self.complete(response, None, None, true).await?;
        tracing::info!(credential = %self.key(), expires_at = unix_secs(token.expires_at), "signed in");
        Ok(token)
    }

    /// Turns a token endpoint's answer into the served token: carries over the refresh
    /// token and keys the answer lacks, looks keys up when still missing, stores, then
    /// publishes. A renewal is stored as renewed from `previous`'s version; a `sign_in`
    /// (a person's new sign-in) over whatever is stored ([`Credential::persist`]).
    async fn complete(
        &self,
        response: TokenResponse,
        previous: Option<&Token>,
        previous_refresh: Option<Secret>,
        sign_in: bool,
    ) -> Result<Arc<Token>, RefreshError> {
        if lifetime_of(response.expires_in).1 {
            tracing::warn!(credential = %self.key(), expires_in = response.expires_in, "the token endpoint says the token lives more than a year: treated as living one year");
        }
        let mut token = match Token::from_response(response, SystemTime::now(), false) {
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
            if token.principal.is_none() {
                token.principal = old.principal.clone();
            }
        }
        if token.organizer_key.is_none() && token.account_key.is_none() {
            if let Some(keys) = self.source.fetch_keys(&token.access_token).await {
                token.organizer_key = keys.organizer_key;
                token.account_key = keys.account_key;
                token.principal = token.principal.or(keys.principal);
            }
        }
        token.version = match previous {
            Some(p) => p.version,
            None => self.slot.current.load().as_ref().map_or(0, |t| t.version),
        };
        self.metrics.token_refreshes.with_label_values(&[self.name(), "success"]).inc();
        let published = match self.persist(token, sign_in).await {
            Persisted::Ours(token) => self.publish(token),
            Persisted::Theirs(stored) => {
                tracing::info!(credential = %self.key(), "another process stored a newer token first: took it up instead of this renewal's");
                self.metrics.token_refreshes.with_label_values(&[self.name(), "adopted"]).inc();
                self.publish(stored)
            }
        };
        self.record_success(SystemTime::now());
        Ok(published)
    }

    /// Stores `token`, renewed from the stored version `token.version`. When the store
    /// has moved on (another replica, or a `login`, saved first), a renewal takes the
    /// stored token up instead: it is the newer one, and this renewal's is dropped
    /// unused. A sign-in is a person's decision, newer than anything stored, so it is
    /// saved again over the version the store reports until it is stored (bounded); so
    /// is a renewal when nothing readable is stored.
    async fn persist(&self, mut token: Token, sign_in: bool) -> Persisted {
        for _ in 0..SAVE_ATTEMPTS {
            match self.store.save(self.key(), &token.to_stored()).await {
                Ok(Saved::Stored(version)) => {
                    token.version = version;
                    return Persisted::Ours(token);
                }
                // The store holds what this renewal was made from (its refresh token: a
                // replica wrote its copy back after the store lost its data): this renewal
                // is the newer one, and the refresh token stored may be dead already.
                Ok(Saved::Stale { current: Some(stored), version }) if !sign_in && self.renewed_from(&stored) => {
                    token.version = version
                }
                Ok(Saved::Stale { current: Some(stored), version }) if !sign_in => {
                    match Token::from_stored(self.key(), &stored, SystemTime::now()) {
                        Ok(theirs) => return Persisted::Theirs(theirs),
                        // Unusable (not a header value): ours replaces it.
                        Err(_) => token.version = version,
                    }
                }
                Ok(Saved::Stale { version, .. }) => token.version = version,
                Err(e) => {
                    // Serving the new token still beats failing requests; say loudly that
                    // a crash now would lose the refresh token.
                    tracing::error!(credential = %self.key(), error = %e, "could not persist the new token");
                    self.metrics.token_refreshes.with_label_values(&[self.name(), "store_error"]).inc();
                    return Persisted::Ours(token);
                }
            }
        }
        tracing::error!(credential = %self.key(), attempts = SAVE_ATTEMPTS, "could not persist the new token: the stored record kept changing");
        self.metrics.token_refreshes.with_label_values(&[self.name(), "store_error"]).inc();
        Persisted::Ours(token)
    }

    /// Whether `stored` carries the refresh token of the token held now, the one a
    /// renewal under way was made from.
    fn renewed_from(&self, stored: &crate::token::StoredToken) -> bool {
        let held = self.slot.current.load();
        let held = held.as_ref().and_then(|t| t.refresh_token.as_ref()).map(|r| r.expose());
        held.is_some() && held == stored.refresh_token.as_deref()
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
        copy.principal = dead.principal.clone();
        copy.version = dead.version;
        self.publish(copy);
    }

    /// Serves `token` as the next generation and wakes whoever waits for one.
    pub(super) fn publish(&self, mut token: Token) -> Arc<Token> {
        token.generation = self.slot.next_generation();
        let token = Arc::new(token);
        self.slot.current.store(Some(token.clone()));
        if self.account.is_none() {
            // Accounts are counted by state instead (`goto_auth_proxy_accounts`).
            self.metrics.token_expiry.with_label_values(&[self.name()]).set(unix_secs(token.expires_at) as f64);
        }
        self.slot.changed.send_modify(|g| *g = token.generation);
        self.tell_set();
        token
    }
}
