//! [`Coordinator`]: a credential's dealings with its store — the renewal lock, the
//! version order of records, and taking up what other processes stored.
//!
//! Replicas sharing a store (Redis) coordinate, so N of them make the token calls of
//! one: a renewal first adopts a newer stored token, then takes the store's lock; a
//! replica that finds the lock held waits (bounded) for the holder's token instead of
//! calling; the lock holder re-reads the store before calling. Between renewals each
//! replica follows the store (change notifications, and a poll as backstop). When the
//! store cannot be asked, a replica keeps serving the token it holds and renews alone
//! only once that token is about to expire ([`must_renew_alone`]); when the store is
//! back, a replica holding a renewal of the stored version that it could not save
//! writes it back (over that version only: whoever saved first wins). Which token is
//! newer is the store's version counter's to say, never a clock's.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use super::record::Recorder;
use super::schedule::refresh_delay;
use super::{RefreshError, Trigger};
use crate::token::store::{LockToken, Saved, StoreError, StoredToken, TokenStore};
use crate::token::{deadline_in, half, Token};

/// How long a replica's renewal lock lives in a shared store: longer than a token call
/// may take (the token client gives up after 30 s), short enough that a replica that
/// died holding it delays the others only briefly.
pub(crate) const LOCK_TTL: Duration = Duration::from_secs(30);

/// How long a replica waits for the lock holder's new token before giving up this round.
pub(crate) const PEER_WAIT: Duration = Duration::from_secs(5);

/// How often a waiting replica re-reads the store (notifications usually come first).
const PEER_POLL: Duration = Duration::from_millis(200);

/// How many times a save is tried again over the version the store reports (a sign-in,
/// or nothing readable stored) before it is given up as a store error.
const SAVE_ATTEMPTS: usize = 5;

/// What coordinating with the other replicas decided.
pub(super) enum Coordinated {
    /// A replica's newer token was adopted: no call needed.
    Adopted(Arc<Token>),
    /// This replica holds the lock: call, then release it.
    Locked(LockToken),
    /// Nobody to coordinate with (a store of this process's own), or the store cannot
    /// be asked and the token must be renewed now: call without the lock.
    Alone,
    /// Not now (the store is down but the token still good, or the holder was slow).
    Deferred(RefreshError),
}

/// What [`Coordinator::save`] made of a new token.
pub(super) enum Persisted {
    /// Stored (or the store failed): serve this token.
    Ours(Token),
    /// Another process stored a newer one first: serve that one.
    Theirs(Token),
}

/// A credential's store, and the rules for sharing it with other processes.
pub(super) struct Coordinator {
    store: Arc<dyn TokenStore>,
    /// The credential's `refresh_before`: whether a token is due.
    refresh_before: Duration,
}

impl Coordinator {
    /// Coordination through `store` for a credential renewed `refresh_before` ahead.
    pub(super) fn new(store: Arc<dyn TokenStore>, refresh_before: Duration) -> Coordinator {
        Coordinator { store, refresh_before }
    }

    /// The store itself (start-up load, `/tokens`' key id, the refresh loop's news).
    pub(super) fn store(&self) -> &Arc<dyn TokenStore> {
        &self.store
    }

    /// Whether `token`, newer than the one the trigger was about, serves its purpose: a
    /// valid token for a rejection or an operator, one not yet due for the timer.
    pub(super) fn good_enough(&self, trigger: Trigger, token: &Token, now: SystemTime) -> bool {
        match trigger {
            Trigger::Rejected(_) | Trigger::Manual => token.is_valid_at(now),
            Trigger::Scheduled(_) => {
                refresh_delay(now, Some(token.expires_at), self.refresh_before, 0, 0.0) > Duration::ZERO
            }
        }
    }

    /// Takes the shared store's renewal lock, or waits for the replica that holds it.
    pub(super) async fn coordinate(&self, record: &Recorder, trigger: Trigger) -> Coordinated {
        if !self.store.is_shared() {
            return Coordinated::Alone;
        }
        // Subscribe before asking for the lock, so the holder's notice cannot slip by.
        let mut changes = self.store.changes();
        let deadline = deadline_in(PEER_WAIT);
        loop {
            match self.store.lock(record.key(), LOCK_TTL).await {
                Ok(Some(lock)) => {
                    // The previous holder may have stored its token just now.
                    if let Some(t) = self.adopt_if_good_enough(record, trigger).await {
                        self.unlock(record, lock).await;
                        return Coordinated::Adopted(t);
                    }
                    return Coordinated::Locked(lock);
                }
                Ok(None) => {}
                Err(e) => return self.store_unavailable(record, trigger, &e),
            }
            tokio::select! {
                _ = next_change(&mut changes, record.key()) => {}
                _ = tokio::time::sleep(PEER_POLL) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Coordinated::Deferred(record.deferred(
                        "peer_timeout",
                        format!("another replica holds the renewal lock and stored no new token within {}s", PEER_WAIT.as_secs()),
                    ));
                }
            }
            if let Some(t) = self.adopt_if_good_enough(record, trigger).await {
                return Coordinated::Adopted(t);
            }
        }
    }

    /// Releases the renewal lock taken by [`Coordinator::coordinate`].
    pub(super) async fn unlock(&self, record: &Recorder, lock: LockToken) {
        if let Err(e) = self.store.unlock(record.key(), lock).await {
            // It expires by itself after LOCK_TTL.
            tracing::warn!(credential = %record.key(), error = %e, "cannot release the renewal lock");
        }
    }

    /// The store cannot be asked: renew alone only when waiting is worse.
    fn store_unavailable(&self, record: &Recorder, trigger: Trigger, error: &StoreError) -> Coordinated {
        let current = record.current();
        if must_renew_alone(trigger, current.as_deref(), self.refresh_before, SystemTime::now()) {
            tracing::warn!(credential = %record.key(), ?trigger, %error, "shared store unavailable and the token is due: renewing without coordination");
            record.count("uncoordinated");
            Coordinated::Alone
        } else {
            Coordinated::Deferred(record.deferred(
                "store_unavailable",
                format!("shared store unavailable ({error}); serving the current token meanwhile"),
            ))
        }
    }

    /// Adopts a newer stored token when it serves `trigger`'s purpose.
    pub(super) async fn adopt_if_good_enough(&self, record: &Recorder, trigger: Trigger) -> Option<Arc<Token>> {
        let current = record.current();
        let adopted = self.adopt_stored(record, current.as_deref()).await?;
        let now = SystemTime::now();
        if self.good_enough(trigger, &adopted, now) {
            record.success(now);
            Some(adopted)
        } else {
            None
        }
    }

    /// Follows the shared store between renewals: adopts a newer stored token, writes
    /// back a newer held one (Redis came back empty, or this replica renewed alone).
    pub(super) async fn sync(&self, record: &Recorder) {
        let stored = match self.store.load(record.key()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(credential = %record.key(), error = %e, "cannot read the shared store");
                return;
            }
        };
        let current = record.current();
        let now = SystemTime::now();
        let held = current.as_ref().filter(|t| t.is_valid_at(now)).map(|t| t.to_stored());
        match (stored, held) {
            // Held: a renewal of the stored version that was never saved (the store was
            // down). Written over that version only.
            (Some(s), Some(h)) if h.version == s.version && h.access_token != s.access_token => {
                self.write_back(record, &h).await
            }
            (None, Some(h)) => self.write_back(record, &h).await,
            (Some(_), _) => {
                if let Some(t) = self.adopt_stored(record, current.as_deref()).await {
                    if t.is_valid_at(now) {
                        record.success(now);
                    }
                }
            }
            (None, None) => {}
        }
    }

    /// Saves the held token (see [`Coordinator::sync`]); when the store holds nothing
    /// readable, over the version it reports. A store that moved on wins: its token is
    /// taken up at the next sync.
    async fn write_back(&self, record: &Recorder, held: &StoredToken) {
        let mut held = held.clone();
        for _ in 0..2 {
            match self.store.save(record.key(), &held).await {
                Ok(Saved::Stored(version)) => {
                    tracing::info!(credential = %record.key(), "the shared store held the token this one renewed (or none): wrote ours back");
                    record.count("written_back");
                    // Served again as the stored version, so the store and this replica agree.
                    if let Ok(mut t) = Token::from_stored(record.key(), &held, SystemTime::now()) {
                        t.version = version;
                        record.publish(t);
                    }
                    return;
                }
                Ok(Saved::Stale { current: None, version }) => held.version = version,
                Ok(Saved::Stale { current: Some(_), .. }) => return,
                Err(e) => {
                    tracing::debug!(credential = %record.key(), error = %e, "cannot write the token back");
                    return;
                }
            }
        }
    }

    /// Serves the stored token when it is newer than `current` (another process stored it).
    async fn adopt_stored(&self, record: &Recorder, current: Option<&Token>) -> Option<Arc<Token>> {
        let stored = match self.store.load(record.key()).await {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(credential = %record.key(), error = %e, "cannot read stored token");
                return None;
            }
        };
        // The store decides: another version is another process's newer record (a
        // held token at the stored version but different is a renewal not yet saved,
        // which `sync` writes back).
        let (newer, same_token) = match current {
            None => (true, false),
            Some(c) => (
                stored.version != c.version,
                stored.access_token == c.access_token.expose()
                    && stored.refresh_token.as_deref() == c.refresh_token.as_ref().map(|r| r.expose()),
            ),
        };
        if !newer {
            return None;
        }
        let token = Token::from_stored(record.key(), &stored, SystemTime::now()).ok()?;
        if same_token {
            // Only the version moved (another replica wrote the token back): the held
            // token is served on at that version; nothing new was adopted.
            tracing::debug!(credential = %record.key(), version = stored.version, "the stored record of the held token has a new version");
            record.publish(token);
            return None;
        }
        tracing::info!(credential = %record.key(), "picked up a newer stored token");
        record.count("adopted");
        Some(record.publish(token))
    }

    /// Stores `token`, renewed from the stored version `token.version`. When the store
    /// has moved on (another replica, or a `login`, saved first), a renewal takes the
    /// stored token up instead: it is the newer one, and this renewal's is dropped
    /// unused. A sign-in is a person's decision, newer than anything stored, so it is
    /// saved again over the version the store reports until it is stored (bounded); so
    /// is a renewal when nothing readable is stored.
    pub(super) async fn save(&self, record: &Recorder, mut token: Token, sign_in: bool) -> Persisted {
        for _ in 0..SAVE_ATTEMPTS {
            match self.store.save(record.key(), &token.to_stored()).await {
                Ok(Saved::Stored(version)) => {
                    token.version = version;
                    return Persisted::Ours(token);
                }
                // The store holds what this renewal was made from (its refresh token: a
                // replica wrote its copy back after the store lost its data): this renewal
                // is the newer one, and the refresh token stored may be dead already.
                Ok(Saved::Stale { current: Some(stored), version }) if !sign_in && record.renewed_from(&stored) => {
                    token.version = version
                }
                Ok(Saved::Stale { current: Some(stored), version }) if !sign_in => {
                    match Token::from_stored(record.key(), &stored, SystemTime::now()) {
                        Ok(theirs) => return Persisted::Theirs(theirs),
                        // Unusable (not a header value): ours replaces it.
                        Err(_) => token.version = version,
                    }
                }
                Ok(Saved::Stale { version, .. }) => token.version = version,
                Err(e) => {
                    // Serving the new token still beats failing requests; say loudly that
                    // a crash now would lose the refresh token.
                    tracing::error!(credential = %record.key(), error = %e, "could not persist the new token");
                    record.count("store_error");
                    return Persisted::Ours(token);
                }
            }
        }
        tracing::error!(credential = %record.key(), attempts = SAVE_ATTEMPTS, "could not persist the new token: the stored record kept changing");
        record.count("store_error");
        Persisted::Ours(token)
    }
}

/// Whether a replica that cannot reach the shared store should call the token endpoint
/// anyway: when it has no valid token, when the upstream rejected it, when an operator
/// asked, or when less than a quarter of its life (at most `refresh_before / 2`) is left.
/// Otherwise it keeps serving and waits for the store to come back.
pub(crate) fn must_renew_alone(
    trigger: Trigger,
    current: Option<&Token>,
    refresh_before: Duration,
    now: SystemTime,
) -> bool {
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
pub(super) async fn next_change(changes: &mut Option<broadcast::Receiver<String>>, name: &str) {
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
    use crate::secret::Secret;

    const HOUR: Duration = Duration::from_secs(3600);
    const FIVE_MIN: Duration = Duration::from_secs(300);

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
}
