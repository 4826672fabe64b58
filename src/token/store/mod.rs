//! Where tokens outlive the process. A [`TokenStore`] holds one [`StoredToken`] per
//! credential, and one per account of an account credential (key
//! `"{credential}/{account}"`, each in a record of its own so a renewal's cost does not
//! grow with the number of accounts); [`FileStore`] is the embedded default (one JSON
//! file for credentials, a file per account beside it, mode 0600, written
//! atomically: temp file, fsync, rename, fsync the directory), safe to share between a
//! running proxy and a `login` in another process (an advisory lock serialises writers).
//!
//! The file store assumes nothing about its directory that it has not checked: a
//! directory other users can write to is refused, the temp file
//! is created exclusively under an unpredictable name and never through a symbolic link,
//! and `state.path` itself must not be a symbolic link. A damaged file costs only the
//! records that cannot be read: the others are used, and the damaged bytes are kept in a
//! numbered copy (`<path>.damaged.<N>`) before the file is rewritten.
//!
//! A store shared by replicas ([`super::redis_store::RedisStore`]) also coordinates
//! them: a renewal lock per credential, change notifications, and a poll as backstop.
//! Those hooks default to "alone": the lock is always granted and nothing changes
//! behind the process's back, so [`FileStore`] needs none of them.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

mod accounts;
mod file;
mod fs;
mod recover;
pub(crate) mod sealing;
#[cfg(test)]
mod tests;

pub use file::FileStore;

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem trouble, with the path.
    #[error("state file {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state directory can be written by other users, who could then plant or
    /// replace files in it (refused at start, naming it).
    #[error(
        "state directory {} is {reason} (mode {mode:04o}): other users could plant or replace files in it; \
         run `chmod go-w {}` (it must also belong to the user running the proxy, or root), \
         or set state.path to a file in a private directory",
        path.display(),
        path.display()
    )]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Who else can write to it.
        reason: String,
    },
    /// `state.path` is a symbolic link: refused, because the file is replaced by rename
    /// (which would silently turn the link into a plain file) and a link is exactly how
    /// another user would redirect the tokens elsewhere.
    #[error(
        "state file {} is a symbolic link: set state.path to the real file (the proxy replaces it by rename and never writes through a link)",
        path.display()
    )]
    SymlinkedState {
        /// The link.
        path: PathBuf,
    },
    /// `state.path` names something that is not a regular file (a directory, a FIFO…).
    #[error("state file {} is not a regular file: set state.path to a file (it is created on first write)", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Any other backend (Redis) failure.
    #[error("state store: {0}")]
    Backend(String),
    /// A record could not be encoded as JSON.
    #[error("state store: {0}")]
    Encode(#[from] serde_json::Error),
    /// The file store's blocking task failed (panicked, or the runtime is shutting down).
    #[error("state store: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Sealed token records exist and none of them opens with the configured
    /// `state.encryption_keys` (a wrong key), or no key is configured at all: the start
    /// is refused and nothing is written (`state.encryption_keys`: a wrong key stops the start).
    #[error("{}", keys_message(store, credentials, sealed_with, tried))]
    Keys {
        /// The store (`file …`, `redis …`).
        store: String,
        /// Credentials whose sealed record did not open.
        credentials: Vec<String>,
        /// The key ids those records name.
        sealed_with: Vec<String>,
        /// The key ids tried (empty: no key configured).
        tried: Vec<String>,
    },
}

fn keys_message(store: &str, credentials: &[String], sealed_with: &[String], tried: &[String]) -> String {
    let names = credentials.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", ");
    let sealed = if sealed_with.is_empty() { "unknown".to_string() } else { sealed_with.join(", ") };
    if tried.is_empty() {
        format!(
            "{store} holds encrypted token records (credentials {names}; key id {sealed}) but state.encryption_keys is empty: \
             keep a key configured to read them (`goto-auth-proxy token` reads them with the keys, to decrypt them back); nothing was changed"
        )
    } else {
        format!(
            "state.encryption_keys open none of the encrypted token records in {store}: credentials {names} \
             (sealed with key id {sealed}; key ids tried: {}): configure the key that sealed them (any position opens); nothing was changed",
            tried.join(", ")
        )
    }
}

/// What is persisted for one credential. The field names are the file format and the
/// Redis value format alike: keep them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    /// The access token.
    pub access_token: String,
    /// The newest refresh token received, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Expiry, unix seconds.
    pub expires_at: u64,
    /// Expiry, unix milliseconds: short-lived tokens shared by replicas need better than
    /// whole seconds. Absent in files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// When it was obtained, unix milliseconds, by the writer's clock: data for expiry
    /// math only. Which record is newest is [`StoredToken::version`]'s to say.
    pub obtained_at_ms: u64,
    /// GoTo organizer key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizer_key: Option<String>,
    /// GoTo account key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_key: Option<String>,
    /// Who signed in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The version the store gave this record (a counter, 0 for records written before
    /// versions existed). In a save: the version the token was renewed from — the store
    /// accepts the save only while that is still the stored version ([`TokenStore::save`]).
    #[serde(default, deserialize_with = "lenient_version")]
    pub version: u64,
}

/// The largest version a record may carry: 2^53 - 1, the largest integer that Redis's
/// Lua (whose numbers are doubles) and this process read alike.
pub(crate) const MAX_VERSION: u64 = (1 << 53) - 1;

/// The version after `v`: a record at [`MAX_VERSION`] (only ever planted) is followed
/// by 1, so no stored value can stop the counting.
pub(crate) fn next_version(v: u64) -> u64 {
    if v >= MAX_VERSION {
        1
    } else {
        v.saturating_add(1)
    }
}

/// A record's `version` field, read the way the Redis save script reads it: an integer
/// from 0 to [`MAX_VERSION`]; anything else (absent, a string, negative, fractional,
/// huge) is 0. Both sides must agree, or a compare could never succeed.
pub(crate) fn version_in(value: Option<&serde_json::Value>) -> u64 {
    let Some(serde_json::Value::Number(n)) = value else { return 0 };
    if let Some(v) = n.as_u64() {
        return if v <= MAX_VERSION { v } else { 0 };
    }
    match n.as_f64() {
        // Exact: an integral value in range converts without loss.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(f) if f.fract() == 0.0 && (0.0..=MAX_VERSION as f64).contains(&f) => f as u64,
        _ => 0,
    }
}

fn lenient_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(version_in(Some(&value)))
}

/// What became of a [`TokenStore::save`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// Stored, as this version.
    Stored(u64),
    /// Refused: the store no longer holds the version the token was renewed from —
    /// another process saved first. `current` is what it holds now (`None`: nothing
    /// readable), at `version`: a renewal takes `current` up; with nothing readable it
    /// may save again from `version`.
    Stale {
        /// The stored record, when it can be read.
        current: Option<StoredToken>,
        /// Its version (0: no record).
        version: u64,
    },
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .field("expires_at", &self.expires_at)
            .field("obtained_at_ms", &self.obtained_at_ms)
            .field("version", &self.version)
            .finish()
    }
}

impl StoredToken {
    /// Expiry as a `SystemTime` (milliseconds when known). The values come from a file
    /// or a shared store, so they are data, not trust: an expiry that is not a
    /// representable time is the epoch, i.e. long expired (the refresh token still
    /// renews it), never a panic.
    pub fn expires_at_time(&self) -> SystemTime {
        let since_epoch = match self.expires_at_ms {
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs(self.expires_at),
        };
        UNIX_EPOCH.checked_add(since_epoch).unwrap_or(UNIX_EPOCH)
    }
}

/// Proof that this process holds a store's renewal lock; only its holder can release it.
#[derive(Clone, PartialEq, Eq)]
pub struct LockToken(String);

impl LockToken {
    /// A fencing value: random, so a lock that expired and was taken by another
    /// process is never released by the one that lost it.
    pub fn random() -> LockToken {
        LockToken(crate::random::token(24))
    }

    /// The value stored with the lock.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockToken(..)")
    }
}

/// The key of an account's record: `"{credential}/{account}"`. Names follow the name
/// rule (no `/`), so a key with a `/` is always an account's, and splits back in one way
/// ([`split_account_key`]).
pub fn account_key(credential: &str, account: &str) -> String {
    format!("{credential}/{account}")
}

/// `(credential, account)` of an account record's key; `None` for a credential's own.
pub fn split_account_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
}

/// Persistence for tokens, one entry per credential, and one per account of an account
/// credential (keyed `"{credential}/{account}"`: every method taking a `credential`
/// takes such a key alike, and [`TokenStore::changes`] carries it).
#[async_trait::async_trait]
pub trait TokenStore: Send + Sync {
    /// The stored token of `credential`, if any.
    async fn load(&self, credential: &str) -> Result<Option<StoredToken>, StoreError>;
    /// Stores `token` for `credential` if the stored record is still at `token.version`
    /// (the version it was renewed from; 0: none stored), as the next version
    /// ([`Saved::Stored`]); durable when it returns. Otherwise nothing is written
    /// ([`Saved::Stale`]). The compare and the write are one step (the file under its
    /// lock, Redis in its script): no clock and no timestamp takes part.
    async fn save(&self, credential: &str, token: &StoredToken) -> Result<Saved, StoreError>;
    /// A short description for logs (`file state/x.json`), never a password.
    fn describe(&self) -> String;

    /// The accounts stored under the account credential `credential`, sorted: each has
    /// a record of its own at the key `"{credential}/{account}"` ([`account_key`]).
    /// What start-up loads and the `accounts` command lists; no record is opened.
    async fn accounts(&self, credential: &str) -> Result<Vec<String>, StoreError>;

    /// Deletes the record at `key` (a credential's, or an account's that an operator
    /// removed); durable when it returns. A record that is not there is not an error.
    async fn remove(&self, key: &str) -> Result<(), StoreError>;

    /// True when other processes renew the same tokens through this store, so renewals
    /// must be coordinated; false for a store this process has to itself.
    fn is_shared(&self) -> bool {
        false
    }

    /// Takes the renewal lock of `credential` for at most `ttl`: `Ok(None)` when another
    /// process holds it, `Err` when the store cannot be asked (the two differ: only the
    /// first means someone else is renewing).
    async fn lock(&self, _credential: &str, _ttl: Duration) -> Result<Option<LockToken>, StoreError> {
        Ok(Some(LockToken(String::new())))
    }

    /// Releases a lock taken by [`TokenStore::lock`], only if it is still this holder's.
    async fn unlock(&self, _credential: &str, _lock: LockToken) -> Result<(), StoreError> {
        Ok(())
    }

    /// Keys of records another process changed (an empty one: "any may have changed",
    /// after a reconnect; `!key`: that record was removed). `None`: nothing changes
    /// behind our back.
    fn changes(&self) -> Option<broadcast::Receiver<String>> {
        None
    }

    /// How often to re-read the stored token in case a change notification was lost.
    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    /// The start-up check, before any token is served: reads the records of
    /// `credentials` (a file store: every record of its file), refuses a wrong or missing
    /// `state.encryption_keys` ([`StoreError::Keys`], nothing written), and writes again,
    /// sealed with the first key, every plaintext record and every record sealed with an
    /// older key. A store that cannot be reached now is not an error (it is retried).
    async fn prepare(&self, _credentials: &[String]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The key id the stored record of `credential` is sealed with, as last read or
    /// written (`None`: plaintext, or no record). Never the key.
    fn key_id(&self, _credential: &str) -> Option<String> {
        None
    }
}
