//! Where tokens outlive the process. A [`TokenStore`] holds one [`StoredToken`] per
//! credential; [`FileStore`] is the embedded default (one JSON file, mode 0600, written
//! atomically: temp file, fsync, rename, fsync the directory), safe to share between a
//! running proxy and a `login` in another process (an advisory lock serialises writers).
//!
//! A store shared by replicas ([`super::redis_store::RedisStore`]) also coordinates
//! them: a renewal lock per credential, change notifications, and a poll as backstop.
//! Those hooks default to "alone": the lock is always granted and nothing changes
//! behind the process's back, so [`FileStore`] needs none of them.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

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
    /// The file exists but is not a state file.
    #[error("state file {path} is not valid JSON state: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// Any other backend (Redis) failure.
    #[error("state store: {0}")]
    Backend(String),
}

/// What is persisted for one credential.
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
    /// When it was obtained, unix milliseconds (orders tokens from several writers).
    pub obtained_at_ms: u64,
    /// GoTo organizer key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizer_key: Option<String>,
    /// GoTo account key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_key: Option<String>,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[redacted]"))
            .field("expires_at", &self.expires_at)
            .field("obtained_at_ms", &self.obtained_at_ms)
            .finish()
    }
}

impl StoredToken {
    /// Expiry as a `SystemTime` (milliseconds when known).
    pub fn expires_at_time(&self) -> SystemTime {
        match self.expires_at_ms {
            Some(ms) => UNIX_EPOCH + Duration::from_millis(ms),
            None => UNIX_EPOCH + Duration::from_secs(self.expires_at),
        }
    }
}

/// Proof that this process holds a store's renewal lock; only its holder can release it.
#[derive(Clone, PartialEq, Eq)]
pub struct LockToken(String);

impl LockToken {
    /// A fencing value: random, so a lock that expired and was taken by another
    /// process is never released by the one that lost it.
    pub fn random() -> LockToken {
        LockToken(crate::login::random_token(24))
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

/// Persistence for tokens, one entry per credential.
#[async_trait::async_trait]
pub trait TokenStore: Send + Sync {
    /// The stored token of `credential`, if any.
    async fn load(&self, credential: &str) -> Result<Option<StoredToken>, StoreError>;
    /// Replaces the stored token of `credential`; durable when it returns `Ok`. A shared
    /// store keeps the newest token by `obtained_at_ms` when writers race.
    async fn save(&self, credential: &str, token: &StoredToken) -> Result<(), StoreError>;
    /// A short description for logs (`file state/x.json`), never a password.
    fn describe(&self) -> String;

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

    /// Names of credentials whose stored token another process changed (an empty name:
    /// "any may have changed", after a reconnect). `None`: nothing changes behind our back.
    fn changes(&self) -> Option<broadcast::Receiver<String>> {
        None
    }

    /// How often to re-read the stored token in case a change notification was lost.
    fn poll_interval(&self) -> Option<Duration> {
        None
    }
}

#[derive(Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    #[serde(default)]
    credentials: BTreeMap<String, StoredToken>,
}

/// The embedded store: one JSON file.
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `path`; the directory is created on first write.
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    fn read(path: &Path) -> Result<StateFile, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) if bytes.is_empty() => Ok(StateFile::default()),
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt { path: path.to_path_buf(), message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(source) => Err(StoreError::Io { path: path.to_path_buf(), source }),
        }
    }

    /// Read-merge-write of one credential under an exclusive lock on `<path>.lock`.
    fn save_blocking(path: &Path, credential: &str, token: &StoredToken) -> Result<(), StoreError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io { path: p, source }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = path.with_extension("lock");
        let lock = open_private(&lock_path, false).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;

        let mut state = match Self::read(path) {
            Err(StoreError::Corrupt { message, .. }) => {
                // Keep the unreadable file for a human; never let it block saving new tokens.
                let aside = path.with_extension("corrupt");
                tracing::error!(path = %path.display(), aside = %aside.display(), %message, "state file unreadable; moved aside");
                std::fs::rename(path, &aside).map_err(io(path))?;
                StateFile::default()
            }
            other => other?,
        };
        state.version = 1;
        state.credentials.insert(credential.to_string(), token.clone());
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Backend(e.to_string()))?;

        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f = open_private(&tmp, true).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io(path))?;
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))?;
        Ok(())
    }
}

/// Opens a file readable by its owner only (0600), truncating when `truncate`.
fn open_private(path: &Path, truncate: bool) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).write(true).truncate(truncate);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

#[async_trait::async_trait]
impl TokenStore for FileStore {
    async fn load(&self, credential: &str) -> Result<Option<StoredToken>, StoreError> {
        let path = self.path.clone();
        let credential = credential.to_string();
        tokio::task::spawn_blocking(move || Ok(Self::read(&path)?.credentials.remove(&credential)))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn save(&self, credential: &str, token: &StoredToken) -> Result<(), StoreError> {
        let path = self.path.clone();
        let credential = credential.to_string();
        let token = token.clone();
        tokio::task::spawn_blocking(move || Self::save_blocking(&path, &credential, &token))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u64) -> StoredToken {
        StoredToken {
            access_token: format!("at{n}"),
            refresh_token: Some(format!("rt{n}")),
            expires_at: 1_000 + n,
            expires_at_ms: None,
            obtained_at_ms: n,
            organizer_key: None,
            account_key: None,
        }
    }

    #[tokio::test]
    async fn round_trip_merges_credentials_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let store = FileStore::new(&path);
        assert_eq!(store.load("a").await.unwrap(), None);
        store.save("a", &token(1)).await.unwrap();
        store.save("b", &token(2)).await.unwrap();
        store.save("a", &token(3)).await.unwrap();
        assert_eq!(store.load("a").await.unwrap(), Some(token(3)));
        assert_eq!(store.load("b").await.unwrap(), Some(token(2)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[tokio::test]
    async fn corrupt_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(FileStore::new(&path).load("a").await, Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn debug_redacts() {
        let s = format!("{:?}", token(7));
        assert!(!s.contains("at7") && !s.contains("rt7"));
    }
}
