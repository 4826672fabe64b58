//! The store replicas share (`store = "redis"`): one token per credential, so N replicas
//! make as many token calls as one, and a Direct Login by one never revokes the token
//! the others serve.
//!
//! Keys, under `redis_prefix` (default `goto-auth-proxy`):
//!
//! * `{prefix}:token:{credential}` — the [`StoredToken`] JSON, or with
//!   `state.encryption_keys` its sealed envelope (associated data
//!   `redis:{prefix}:{credential}`, `version` in clear but authenticated), written by a
//!   script that compares versions: a save is stored only while the stored record is
//!   still the version it was renewed from, and gets the next one. Replicas' clocks play
//!   no part (a replica whose clock runs ahead cannot shut the others out).
//! * `{prefix}:lock:{credential}` — the renewal lock: `SET NX PX` with a random fencing
//!   value, released by compare-and-delete, so only its holder releases it.
//! * `{prefix}:token:{credential}/{account}`, `{prefix}:lock:{credential}/{account}` — the
//!   same for each account of an account credential (associated data
//!   `redis:{prefix}:{credential}/{account}`, so a value copied to another account does
//!   not open).
//! * `{prefix}:accounts:{credential}` — the set of an account credential's account
//!   names, kept by the same scripts that write and delete the records (a save adds the
//!   name, a removal deletes the record and the name in one step), so listing the
//!   accounts reads one set, never a `SCAN`.
//! * channel `{prefix}:changed` — the record's key is published on every save; a
//!   subscriber task (started on first use, reconnecting by itself, and again on the
//!   new master after a failover) turns it into [`TokenStore::changes`]. Replicas also
//!   poll, in case a message was lost.
//!
//! On a Redis Cluster (`redis_cluster`) the credential's name in each key is a hash
//! tag — `{prefix}:token:{{credential}}`, `{prefix}:token:{{credential}}/{account}`,
//! `{prefix}:lock:{{credential}}`, `{prefix}:accounts:{{credential}}` — so a credential's
//! keys share one slot and each script runs on one node; elsewhere the names stay as
//! they were (no stored token is orphaned by an upgrade).
//!
//! With Sentinel or Cluster a save counts once a replica has it ([`REPLICATION_WAIT`]):
//! a failover then promotes a replica that holds every refresh token this proxy used.
//!
//! Every operation is bounded by [`OP_TIMEOUT`]: a slow Redis is a down Redis, and the
//! caller keeps serving the token it holds. Failures are counted in
//! `goto_auth_proxy_store_errors_total{op}`. `rediss://` URLs use rustls (ring), with
//! the roots and client certificate of `[tls]` ([`RedisStore::connect_with_tls`]).

mod notices;
mod records;
mod scripts;

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::redis_link::{location_of, Link, Timeouts};
use super::seal::Sealer;
use super::store::sealing::{verdict, Codec, RecordState};
use super::store::{next_version, split_account_key, LockToken, Saved, StoreError, StoredToken, TokenStore};
use crate::config::RedisTarget;
use crate::secret::Secret;
use notices::subscribe_loop;
use scripts::{REMOVE, SAVE_IF_VERSION, UNLOCK};

/// Longest any one Redis operation may take before it counts as failed.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long a save waits for a Redis replica to confirm it has the record (`WAIT`)
/// before the new token is used anyway — availability over the last milliseconds of
/// durability, as the file store trades with fsync. Counted in
/// `goto_auth_proxy_store_replication_timeouts_total` when it runs out.
pub(crate) const REPLICATION_WAIT: Duration = Duration::from_millis(500);

/// How often replicas re-read the stored token (backstop for lost notifications).
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(1000);

/// What a removal's change notice starts with, before the removed record's key.
pub(crate) const REMOVED: char = '!';

/// How many account records one `MGET` reads at start-up.
const ACCOUNT_BATCH: usize = 500;

/// The Redis-backed [`TokenStore`].
pub struct RedisStore {
    link: std::sync::Arc<Link>,
    prefix: String,
    /// Keys carry the credential as a hash tag (a cluster).
    tagged: bool,
    /// Saves wait for a replica (Sentinel, Cluster).
    replicated: bool,
    /// `host:port/db` for logs; never the password.
    location: String,
    errors: Option<IntCounterVec>,
    /// Saves whose wait for a replica ran out.
    replication_timeouts: Option<IntCounter>,
    save_script: redis::Script,
    unlock_script: redis::Script,
    remove_script: redis::Script,
    /// Change notifications; the subscriber task starts on the first `changes()`.
    changes: OnceLock<broadcast::Sender<String>>,
    /// Stops the subscriber task when the store is dropped.
    stop: CancellationToken,
    /// Seals records when `state.encryption_keys` are configured.
    codec: Codec,
    /// Credentials whose record does not open, already logged as an error (the poll
    /// reads every second); cleared for a credential when a new token replaces it.
    reported: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl RedisStore {
    /// A store at `url` (`redis://` or `rediss://`) under `prefix`. Connects lazily: a
    /// proxy starts while Redis is down and serves once it can obtain a token.
    /// Must be called inside a tokio runtime.
    pub fn connect(url: &Secret, prefix: &str, errors: Option<IntCounterVec>) -> Result<RedisStore, StoreError> {
        RedisStore::connect_with_tls(&RedisTarget::Single(url.clone()), prefix, errors, None)
    }

    /// A store on `target` (one server, Sentinel's master, or a cluster), a `rediss://`
    /// connection trusting `tls`'s roots (and presenting its client certificate)
    /// instead of the client's bundled roots: the proxy's `[tls]`. Ignored for `redis://`.
    pub fn connect_with_tls(
        target: &RedisTarget,
        prefix: &str,
        errors: Option<IntCounterVec>,
        tls: Option<redis::TlsCertificates>,
    ) -> Result<RedisStore, StoreError> {
        let location = location_of(target);
        let timeouts = Timeouts { connect: OP_TIMEOUT, response: OP_TIMEOUT };
        // The URLs may hold a password: errors name the location only.
        let link = Link::new(target, tls, timeouts)
            .map_err(|e| StoreError::Backend(format!("[state] Redis ({location}) is not usable: {}", e.category())))?;
        Ok(RedisStore {
            link: std::sync::Arc::new(link),
            prefix: prefix.to_string(),
            tagged: matches!(target, RedisTarget::Cluster(_)),
            replicated: target.is_replicated(),
            location,
            errors,
            replication_timeouts: None,
            save_script: redis::Script::new(SAVE_IF_VERSION),
            unlock_script: redis::Script::new(UNLOCK),
            remove_script: redis::Script::new(REMOVE),
            changes: OnceLock::new(),
            stop: CancellationToken::new(),
            codec: Codec::default(),
            reported: std::sync::Mutex::default(),
        })
    }

    /// The same store, counting saves whose wait for a replica ran out in `counter`.
    pub fn with_replication_counter(mut self, counter: IntCounter) -> RedisStore {
        self.replication_timeouts = Some(counter);
        self
    }

    /// The same store, sealing every record it writes with `sealer`'s first key and
    /// opening records with any of its keys (`None`: plaintext records).
    pub fn with_sealer(mut self, sealer: Option<std::sync::Arc<Sealer>>) -> RedisStore {
        self.codec = Codec::new(sealer);
        self
    }

    /// A reload changed `[tls]`: operations from now on use a new connection that trusts
    /// `tls` (roots and client certificate); the change subscriber's next connection too.
    pub(crate) fn retls(&self, tls: Option<redis::TlsCertificates>) -> Result<(), StoreError> {
        self.link.retls(tls).map_err(|e| StoreError::Backend(format!("redis {}: {}", self.location, e.category())))
    }

    /// Asks Redis for `PONG` (start-up diagnostics).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let link = &self.link;
        self.run("ping", async move { redis::cmd("PING").query_async::<String>(&mut link.conn().await?).await })
            .await
            .map(|_| ())
    }

    fn token_key(&self, credential: &str) -> String {
        self.key("token", credential)
    }

    /// The set of `credential`'s account names.
    fn accounts_key(&self, credential: &str) -> String {
        self.key("accounts", credential)
    }

    fn lock_key(&self, credential: &str) -> String {
        self.key("lock", credential)
    }

    /// `{prefix}:{kind}:{credential}`; on a cluster with the credential (not the
    /// account) as the hash tag, so all of one credential's keys share a slot.
    fn key(&self, kind: &str, credential: &str) -> String {
        let prefix = &self.prefix;
        match (self.tagged, split_account_key(credential)) {
            (false, _) => format!("{prefix}:{kind}:{credential}"),
            (true, Some((c, account))) => format!("{prefix}:{kind}:{{{c}}}/{account}"),
            (true, None) => format!("{prefix}:{kind}:{{{credential}}}"),
        }
    }

    fn channel(&self) -> String {
        format!("{}:changed", self.prefix)
    }

    /// Runs one operation under [`OP_TIMEOUT`], counting and describing failures.
    async fn run<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let err = match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => describe(&e),
            Err(_) => format!("no answer within {}ms", OP_TIMEOUT.as_millis()),
        };
        if let Some(c) = &self.errors {
            c.with_label_values(&[op]).inc();
        }
        // The master may have moved (Sentinel): the next operation goes where it is.
        self.link.suspect().await;
        Err(StoreError::Backend(format!("redis {} {op}: {err}", self.location)))
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait::async_trait]
impl TokenStore for RedisStore {
    async fn load(&self, credential: &str) -> Result<Option<StoredToken>, StoreError> {
        match self.read(credential).await? {
            None => {
                self.codec.note(credential, None);
                Ok(None)
            }
            Some((Some((token, kid)), state)) => {
                self.codec.note(credential, kid);
                if self.codec.is_plaintext_under_keys(&state) {
                    // Served, but sealed at once; a failure is retried at the next read.
                    if let Err(e) = self.reseal(credential, &token, true).await {
                        tracing::warn!(credential, error = %e, "could not seal a plaintext record; tried again at the next read");
                    }
                }
                Ok(Some(token))
            }
            Some((None, RecordState::Unopenable { kid })) => {
                self.codec.note(credential, None);
                let first = self.reported.lock().map(|mut r| r.insert(credential.to_string())).unwrap_or(true);
                if first {
                    tracing::error!(
                        credential,
                        key = %self.token_key(credential),
                        sealed_with = kid.as_deref().unwrap_or("unknown"),
                        key_ids_tried = ?self.codec.kids(),
                        "the stored record of this credential is encrypted and does not open with state.encryption_keys \
                         (damaged, or not written for this credential): it starts with no token; \
                         the value is kept until a new token replaces it"
                    );
                }
                Ok(None)
            }
            Some((None, _)) => Err(StoreError::Backend(format!(
                "redis {} key {}: not a stored token",
                self.location,
                self.token_key(credential)
            ))),
        }
    }

    async fn save(&self, credential: &str, token: &StoredToken) -> Result<Saved, StoreError> {
        let version = next_version(token.version);
        let record = StoredToken { version, ..token.clone() };
        match self.write_if(credential, &record, token.version).await? {
            None => {
                self.saved(credential);
                Ok(Saved::Stored(version))
            }
            Some(stale) => {
                tracing::info!(credential, "the shared store holds a newer token (another replica renewed first)");
                Ok(stale)
            }
        }
    }

    async fn prepare(&self, credentials: &[String]) -> Result<(), StoreError> {
        let mut states = std::collections::BTreeMap::new();
        let mut tokens = Vec::new();
        for credential in credentials {
            match self.read(credential).await {
                Ok(None) => {}
                Ok(Some((decoded, state))) => {
                    if let Some((token, _)) = decoded {
                        if self.codec.needs_reseal(&state) {
                            tokens.push((credential.clone(), token, state == RecordState::Plain));
                        }
                    }
                    states.insert(credential.clone(), state);
                }
                Err(e) => {
                    // Unreachable now: checked when it is read (each credential on its own).
                    tracing::warn!(credential = %credential, error = %e, "cannot check the stored record at start");
                    return Ok(());
                }
            }
            match self.read_accounts(credential).await {
                Ok(records) => {
                    for (key, decoded, state) in records {
                        if let Some((token, kid)) = decoded {
                            self.codec.note(&key, kid);
                            if self.codec.needs_reseal(&state) {
                                tokens.push((key.clone(), token, state == RecordState::Plain));
                            }
                        }
                        states.insert(key, state);
                    }
                }
                Err(e) => {
                    tracing::warn!(credential = %credential, error = %e, "cannot check the stored account records at start");
                    return Ok(());
                }
            }
        }
        verdict(&self.codec, &format!("redis {} prefix {}", self.location, self.prefix), &states)?;
        for (credential, token, was_plain) in tokens {
            match self.reseal(&credential, &token, was_plain).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(credential = %credential, error = %e, "could not encrypt the stored record again at start; it is at the next write")
                }
            }
        }
        Ok(())
    }

    fn key_id(&self, credential: &str) -> Option<String> {
        self.codec.kid_of(credential)
    }

    fn describe(&self) -> String {
        format!("redis {} prefix {}", self.location, self.prefix)
    }

    async fn accounts(&self, credential: &str) -> Result<Vec<String>, StoreError> {
        let (link, key) = (&self.link, self.accounts_key(credential));
        let mut names: Vec<String> = self
            .run("accounts", async move { redis::cmd("SMEMBERS").arg(&key).query_async(&mut link.conn().await?).await })
            .await?;
        names.sort();
        Ok(names)
    }

    async fn remove(&self, key: &str) -> Result<(), StoreError> {
        let mut call = self.remove_script.key(self.token_key(key));
        // `!key`: a removal, told apart from a save (`!` is in no name).
        call.arg(format!("{REMOVED}{key}")).arg(self.channel());
        if let Some((c, account)) = split_account_key(key) {
            call.key(self.accounts_key(c)).arg(account);
        }
        let link = &self.link;
        let _deleted: i64 = self.run("remove", async move { call.invoke_async(&mut link.conn().await?).await }).await?;
        self.codec.note(key, None);
        if let Ok(mut r) = self.reported.lock() {
            r.remove(key);
        }
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn lock(&self, credential: &str, ttl: Duration) -> Result<Option<LockToken>, StoreError> {
        let lock = LockToken::random();
        let (link, key) = (&self.link, self.lock_key(credential));
        let value = lock.as_str().to_string();
        let ms = ttl.as_millis().max(1) as u64;
        let set: Result<Option<String>, StoreError> = self
            .run("lock", async move {
                let mut conn = link.conn().await?;
                redis::cmd("SET").arg(&key).arg(&value).arg("NX").arg("PX").arg(ms).query_async(&mut conn).await
            })
            .await;
        match set {
            Ok(set) => Ok(set.map(|_| lock)),
            Err(e) => {
                // A slow Redis may still apply the SET after we stopped waiting: undo it
                // (best effort), or every replica would wait out the TTL for no one.
                if let Err(undo) = self.unlock(credential, lock).await {
                    tracing::debug!(credential, error = %undo, "could not undo a timed-out lock attempt");
                }
                Err(e)
            }
        }
    }

    async fn unlock(&self, credential: &str, lock: LockToken) -> Result<(), StoreError> {
        let mut call = self.unlock_script.key(self.lock_key(credential));
        call.arg(lock.as_str());
        let link = &self.link;
        let _deleted: i64 = self.run("unlock", async move { call.invoke_async(&mut link.conn().await?).await }).await?;
        Ok(())
    }

    fn changes(&self) -> Option<broadcast::Receiver<String>> {
        let tx = self.changes.get_or_init(|| {
            let (tx, _) = broadcast::channel(64);
            tokio::spawn(subscribe_loop(
                self.link.clone(),
                self.channel(),
                self.location.clone(),
                tx.clone(),
                self.stop.clone(),
                self.errors.clone(),
            ));
            tx
        });
        Some(tx.subscribe())
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(POLL_INTERVAL)
    }
}

/// A Redis error in words (I/O and server errors never carry the URL).
pub(super) fn describe(e: &redis::RedisError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_url_error_has_no_password() {
        let e = RedisStore::connect(&Secret::new("http://:hunter2@h:1/0"), "p", None).err().expect("refused");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
