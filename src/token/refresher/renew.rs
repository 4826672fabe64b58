//! One renewal, top-down: [`Credential::refresh`] runs its steps in order —
//! decide → coordinate → obtain → validate → store → publish → reschedule — each a
//! method below, in that order. A sign-in ([`Credential::install_response`]) joins at
//! validate with the token a person obtained.
//!
//! The order is what makes a crash harmless: a refresh token received is stored
//! (durably) before the access token that came with it is served.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::coordinate::{Coordinated, Persisted};
use super::schedule::MIN_RENEWAL_SPACING;
use super::{Credential, RefreshError, Trigger};
use crate::secret::Secret;
use crate::token::source::{SourceError, TokenResponse};
use crate::token::store::LockToken;
use crate::token::{lifetime_of, unix_secs, Token};

/// What [`Credential::decide`] found.
enum Decision {
    /// No call: answer with this (a token that will do, or why none is asked for).
    Answer(Result<Arc<Token>, RefreshError>),
    /// Renew.
    Renew,
}

/// What [`Credential::coordinate`] found.
enum Turn {
    /// No call: answer with this (a replica's token, or why not now).
    Answer(Result<Arc<Token>, RefreshError>),
    /// Call, holding the shared store's renewal lock when there is one.
    Call(Option<LockToken>),
}

impl Credential {
    /// Renews the token: serialised (one renewal of a credential at a time),
    /// single-flight for rejections, stored before published, and with a shared store one
    /// replica at a time. Every step is a method below, in this order.
    pub(crate) async fn refresh(&self, trigger: Trigger) -> Result<Arc<Token>, RefreshError> {
        let _guard = self.refresh_lock.lock().await;
        if let Decision::Answer(answer) = self.decide(trigger).await {
            return answer;
        }
        let lock = match self.coordinate(trigger).await {
            Turn::Answer(answer) => return answer,
            Turn::Call(lock) => lock,
        };
        let renewed = async {
            // Read after coordinating, which may have taken up a newer version of it.
            let current = self.record.current();
            let refresh_token = self.refresh_token_of(current.as_deref());
            let response = self.obtain(trigger, current.as_deref(), refresh_token.as_ref()).await?;
            let token = self.validate(response, current.as_deref(), refresh_token).await?;
            let token = self.store(token, false).await;
            let served = self.publish(token);
            self.reschedule(&served);
            tracing::info!(credential = %self.key(), ?trigger, expires_at = unix_secs(served.expires_at), "token renewed");
            Ok(served)
        }
        .await;
        self.release(lock).await;
        renewed
    }

    /// Stores and serves the answer of a code exchange (`login`, `/callback`): validate →
    /// store (over whatever is stored: a person's sign-in is the newest) → publish →
    /// reschedule.
    pub(crate) async fn install_response(&self, response: TokenResponse) -> Result<Arc<Token>, RefreshError> {
        let _guard = self.refresh_lock.lock().await;
        let token = self.validate(response, None, None).await?;
        let token = self.store(token, true).await;
        let served = self.publish(token);
        self.reschedule(&served);
        tracing::info!(credential = %self.key(), expires_at = unix_secs(served.expires_at), "signed in");
        Ok(served)
    }

    // ===== decide =====

    /// Whether this renewal is needed at all, and allowed now.
    async fn decide(&self, trigger: Trigger) -> Decision {
        let now = SystemTime::now();
        let current = self.record.current();
        // Someone renewed (or adopted a replica's token) while this caller waited for the
        // lock: that token will do. Without this, a timer that fired for the old token
        // would renew again right after a renewal forced by a rejection.
        if let (Trigger::Rejected(seen) | Trigger::Scheduled(seen), Some(cur)) = (trigger, &current) {
            if cur.generation != seen && self.peers.good_enough(trigger, cur, now) {
                return Decision::Answer(Ok(cur.clone()));
            }
        }
        // A token renews on rejection once; later rejections of it pass through.
        if let Trigger::Rejected(seen) = trigger {
            if self.slot.renewed_on_rejection.fetch_max(seen, Ordering::AcqRel) >= seen {
                return Decision::Answer(Err(self.slot.rejection_passed(seen)));
            }
        }
        // Another process (a `login`, a replica) may have stored a newer token.
        if let Some(adopted) = self.peers.adopt_if_good_enough(&self.record, trigger).await {
            return Decision::Answer(Ok(adopted));
        }
        // A dead grant is not asked again on a timer or a rejection: only a person helps.
        if trigger != Trigger::Manual && self.record.awaits_a_person() {
            return Decision::Answer(Err(self.left_for_a_person(trigger, current.as_deref())));
        }
        // The token endpoint asked for a pause (429 + Retry-After): honour it.
        if let Some(until) = self.slot.status.lock().ok().and_then(|s| s.not_before).filter(|t| *t > now) {
            let wait = until.duration_since(now).unwrap_or_default();
            let last = self.slot.status.lock().ok().and_then(|s| s.last_error.clone()).unwrap_or_default();
            return Decision::Answer(Err(RefreshError {
                message: format!("{last}; the token endpoint asked to wait {}s more", wait.as_secs_f64().ceil()),
                needs_login: false,
            }));
        }
        Decision::Renew
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

    // ===== coordinate =====

    /// With a shared store, one replica renews at a time ([`super::coordinate`]).
    async fn coordinate(&self, trigger: Trigger) -> Turn {
        match self.peers.coordinate(&self.record, trigger).await {
            Coordinated::Adopted(t) => Turn::Answer(Ok(t)),
            Coordinated::Deferred(e) => Turn::Answer(Err(e)),
            Coordinated::Alone => Turn::Call(None),
            Coordinated::Locked(lock) => Turn::Call(Some(lock)),
        }
    }

    /// Gives the shared store's renewal lock back, once the token is stored.
    async fn release(&self, lock: Option<LockToken>) {
        if let Some(lock) = lock {
            self.peers.unlock(&self.record, lock).await;
        }
    }

    // ===== obtain =====

    /// A new token from the credential's source: a token endpoint call, in its turn, or
    /// the configured token. On failure a token the upstream rejected is no longer sent.
    async fn obtain(
        &self,
        trigger: Trigger,
        current: Option<&Token>,
        refresh_token: Option<&Secret>,
    ) -> Result<TokenResponse, RefreshError> {
        match self.source.obtain(refresh_token, self.space_calls()).await {
            Ok(response) => Ok(response),
            Err(e) => {
                if let (Trigger::Rejected(_), Some(cur)) = (trigger, current) {
                    // The upstream said this token is dead and no new one came: stop sending it, so
                    // requests wait for (or are told about) the renewal instead.
                    self.retire(cur);
                }
                Err(self.record.failure(e))
            }
        }
    }

    /// The newest refresh token held: the current token's, else the config's seed.
    fn refresh_token_of(&self, current: Option<&Token>) -> Option<Secret> {
        current.and_then(|t| t.refresh_token.clone()).or_else(|| self.cfg.refresh_token.clone())
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

    // ===== validate =====

    /// Turns a token endpoint's answer into the token to store: refuses one that cannot
    /// be sent, carries over the refresh token and keys the answer lacks, looks keys up
    /// when still missing. Stored as renewed from `previous`'s version (none: the one
    /// held now).
    async fn validate(
        &self,
        response: TokenResponse,
        previous: Option<&Token>,
        previous_refresh: Option<Secret>,
    ) -> Result<Token, RefreshError> {
        if lifetime_of(response.expires_in).1 {
            tracing::warn!(credential = %self.key(), expires_in = response.expires_in, "the token endpoint says the token lives more than a year: treated as living one year");
        }
        let mut token = match Token::from_response(response, SystemTime::now()) {
            Ok(t) => t,
            Err(e) => return Err(self.record.failure(SourceError::from(e))),
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
        self.record.count("success");
        Ok(token)
    }

    // ===== store =====

    /// Stores `token` ([`super::coordinate::Coordinator::save`]): the token to serve is
    /// ours, or a newer one another process stored first.
    async fn store(&self, token: Token, sign_in: bool) -> Token {
        match self.peers.save(&self.record, token, sign_in).await {
            Persisted::Ours(token) => token,
            Persisted::Theirs(stored) => {
                tracing::info!(credential = %self.key(), "another process stored a newer token first: took it up instead of this renewal's");
                self.record.count("adopted");
                stored
            }
        }
    }

    // ===== publish =====

    /// Serves `token` as the next generation and records the success.
    fn publish(&self, token: Token) -> Arc<Token> {
        let served = self.record.serve(token);
        self.record.success(SystemTime::now());
        served
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
        self.record.publish(copy);
    }

    // ===== reschedule =====

    /// Wakes the requests waiting for a token and whoever plans the next renewal (the
    /// refresh loop, or the account's set), which plans it from `served`.
    fn reschedule(&self, served: &Token) {
        self.record.reschedule(served);
    }
}
