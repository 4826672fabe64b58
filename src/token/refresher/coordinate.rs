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

use super::{Credential, RefreshError, Trigger};
use crate::token::store::{LockToken, Saved, StoredToken};
use crate::token::{deadline_in, half, Token};

/// How long a replica's renewal lock lives in a shared store: longer than a token call
/// may take (the token client gives up after 30 s), short enough that a replica that
/// died holding it delays the others only briefly.
pub(crate) const LOCK_TTL: Duration = Duration::from_secs(30);

/// How long a replica waits for the lock holder's new token before giving up this round.
pub(crate) const PEER_WAIT: Duration = Duration::from_secs(5);

/// How often a waiting replica re-reads the store (notifications usually come first).
const PEER_POLL: Duration = Duration::from_millis(200);

/// What coordinating with the other replicas decided.
pub(super) enum Coordinated {
    /// A replica's newer token was adopted: no call needed.
    Adopted(Arc<Token>),
    /// This replica holds the lock: call, then release it.
    Locked(LockToken),
    /// The store cannot be asked and the token must be renewed now: call alone.
    Alone,
    /// Not now (the store is down but the token still good, or the holder was slow).
    Deferred(RefreshError),
}

impl Credential {
    /// Takes the shared store's renewal lock, or waits for the replica that holds it.
    pub(super) async fn coordinate(&self, trigger: Trigger) -> Coordinated {
        // Subscribe before asking for the lock, so the holder's notice cannot slip by.
        let mut changes = self.store.changes();
        let deadline = deadline_in(PEER_WAIT);
        loop {
            match self.store.lock(self.key(), LOCK_TTL).await {
                Ok(Some(lock)) => {
                    // The previous holder may have stored its token just now.
                    if let Some(t) = self.adopt_if_good_enough(trigger).await {
                        if let Err(e) = self.store.unlock(self.key(), lock).await {
                            tracing::warn!(credential = %self.key(), error = %e, "cannot release the renewal lock");
                        }
                        return Coordinated::Adopted(t);
                    }
                    return Coordinated::Locked(lock);
                }
                Ok(None) => {}
                Err(e) => return self.store_unavailable(trigger, &e.to_string()),
            }
            tokio::select! {
                _ = next_change(&mut changes, self.key()) => {}
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
        let current = self.slot.current.load_full();
        if must_renew_alone(trigger, current.as_deref(), self.cfg.refresh_before, SystemTime::now()) {
            tracing::warn!(credential = %self.key(), ?trigger, %error, "shared store unavailable and the token is due: renewing without coordination");
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
    pub(super) async fn adopt_if_good_enough(&self, trigger: Trigger) -> Option<Arc<Token>> {
        let current = self.slot.current.load_full();
        let adopted = self.adopt_stored(current.as_deref()).await?;
        let now = SystemTime::now();
        if self.good_enough(trigger, &adopted, now) {
            self.record_success(now);
            Some(adopted)
        } else {
            None
        }
    }

    /// Follows the shared store between renewals: adopts a newer stored token, writes
    /// back a newer held one (Redis came back empty, or this replica renewed alone).
    pub(crate) async fn sync_with_store(&self) {
        // A renewal under way reads the store itself.
        let Ok(_guard) = self.refresh_lock.try_lock() else { return };
        let stored = match self.store.load(self.key()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(credential = %self.key(), error = %e, "cannot read the shared store");
                return;
            }
        };
        let current = self.slot.current.load_full();
        let now = SystemTime::now();
        let held = current.as_ref().filter(|t| t.is_valid_at(now)).map(|t| t.to_stored());
        match (stored, held) {
            // Held: a renewal of the stored version that was never saved (the store was
            // down). Written over that version only.
            (Some(s), Some(h)) if h.version == s.version && h.access_token != s.access_token => {
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

    /// Saves the held token (see [`Credential::sync_with_store`]); when the store holds
    /// nothing readable, over the version it reports. A store that moved on wins: its
    /// token is taken up at the next sync.
    async fn write_back(&self, held: &StoredToken) {
        let mut held = held.clone();
        for _ in 0..2 {
            match self.store.save(self.key(), &held).await {
                Ok(Saved::Stored(version)) => {
                    tracing::info!(credential = %self.key(), "the shared store held the token this one renewed (or none): wrote ours back");
                    self.metrics.token_refreshes.with_label_values(&[self.name(), "written_back"]).inc();
                    // Served again as the stored version, so the store and this replica agree.
                    if let Ok(mut t) = Token::from_stored(self.key(), &held, SystemTime::now()) {
                        t.version = version;
                        self.publish(t);
                    }
                    return;
                }
                Ok(Saved::Stale { current: None, version }) => held.version = version,
                Ok(Saved::Stale { current: Some(_), .. }) => return,
                Err(e) => {
                    tracing::debug!(credential = %self.key(), error = %e, "cannot write the token back");
                    return;
                }
            }
        }
    }

    /// Serves the stored token when it is newer than `current` (another process stored it).
    async fn adopt_stored(&self, current: Option<&Token>) -> Option<Arc<Token>> {
        let stored = match self.store.load(self.key()).await {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(credential = %self.key(), error = %e, "cannot read stored token");
                return None;
            }
        };
        // The store decides: another version is another process's newer record (a
        // held token at the stored version but different is a renewal not yet saved,
        // which `sync_with_store` writes back).
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
        let token = Token::from_stored(self.key(), &stored, SystemTime::now()).ok()?;
        if same_token {
            // Only the version moved (another replica wrote the token back): the held
            // token is served on at that version; nothing new was adopted.
            tracing::debug!(credential = %self.key(), version = stored.version, "the stored record of the held token has a new version");
            self.publish(token);
            return None;
        }
        tracing::info!(credential = %self.key(), "picked up a newer stored token");
        self.metrics.token_refreshes.with_label_values(&[self.name(), "adopted"]).inc();
        Some(self.publish(token))
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
