//! Where tokens outlive the process. A [`TokenStore`] holds one [`StoredToken`] per
//! credential; [`FileStore`] is the embedded default (one JSON file, mode 0600, written
//! atomically: temp file, fsync, rename, fsync the directory), safe to share between a
//! running proxy and a `login` in another process (an advisory lock serialises writers).
//!
//! The file store assumes nothing about its directory that it has not checked (SPEC
//! "Token lifecycle"): a directory other users can write to is refused, the temp file
//! is created exclusively under an unpredictable name and never through a symbolic link,
//! and `state.path` itself must not be a symbolic link. A damaged file costs only the
//! records that cannot be read: the others are used, and the damaged bytes are kept in a
//! numbered copy (`<path>.damaged.<N>`) before the file is rewritten.
//!
//! A store shared by replicas ([`super::redis_store::RedisStore`]) also coordinates
//! them: a renewal lock per credential, change notifications, and a poll as backstop.
//! Those hooks default to "alone": the lock is always granted and nothing changes
//! behind the process's back, so [`FileStore`] needs none of them.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// How many numbered copies of damaged state files are looked through for a free name
/// before saving gives up (a directory with that many is itself a problem to look at).
const MAX_DAMAGED_COPIES: u32 = 1000;

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
    /// replace files in it (SPEC: refused at start, naming it).
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
///
/// `state.path` must name the file itself, never a symbolic link to it: [`FileStore::open`]
/// refuses a link (the file is replaced by rename, which would replace the link rather
/// than its target, and a link is how another user would redirect the tokens). Its
/// directory must not be writable by other users; a missing one is created mode 0700.
pub struct FileStore {
    path: PathBuf,
    /// Credentials whose damaged record has been reported: an error once, not at every
    /// read (the refresher reads before each renewal attempt). Cleared when a write
    /// leaves the file clean, so new damage is reported again.
    reported: Arc<Mutex<BTreeSet<String>>>,
}

impl FileStore {
    /// A store at `path`, without the start-up checks of [`FileStore::open`] (every
    /// write still refuses an unsafe directory and never follows a link). The directory
    /// is created (0700) on first write.
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into(), reported: Arc::default() }
    }

    /// A store at `path`, checked as `run` must before trusting it with tokens: refused
    /// when `path` is a symbolic link or not a regular file, or when its directory exists
    /// and other users can write to it (the error names the path and how to fix it).
    pub fn open(path: impl Into<PathBuf>) -> Result<FileStore, StoreError> {
        let path = path.into();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => return Err(StoreError::SymlinkedState { path }),
            Ok(m) if !m.is_file() => return Err(StoreError::NotAFile { path }),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Io { path, source }),
        }
        check_dir(&state_dir(&path))?;
        Ok(FileStore::new(path))
    }

    /// `load` off the runtime: the record of `credential`, or `None` (logged as an
    /// error, once) when the file is damaged where that record was.
    fn load_blocking(
        path: &Path,
        credential: &str,
        reported: &Mutex<BTreeSet<String>>,
    ) -> Result<Option<StoredToken>, StoreError> {
        let Some(bytes) = read_state(path)? else { return Ok(None) };
        let mut contents = parse_state(&bytes);
        if let Some(token) = contents.records.remove(credential) {
            return Ok(Some(token));
        }
        if !contents.malformed.contains(credential) && contents.unreadable.is_none() {
            return Ok(None);
        }
        let first = reported.lock().map(|mut r| r.insert(credential.to_string())).unwrap_or(true);
        if !first {
            tracing::debug!(credential, path = %path.display(), "state file still damaged; no token stored for this credential");
        } else if contents.malformed.contains(credential) {
            tracing::error!(
                credential,
                path = %path.display(),
                "the stored record of this credential is damaged: it starts with no token; \
                 the file is copied aside (<path>.damaged.<N>) when it is next written"
            );
        } else if let Some(why) = &contents.unreadable {
            tracing::error!(
                credential,
                path = %path.display(),
                reason = %why,
                "the state file is damaged and holds no readable record of this credential: it starts with no token; \
                 the file is copied aside (<path>.damaged.<N>) when it is next written"
            );
        }
        Ok(None)
    }

    /// Read-merge-write of one credential under an exclusive lock on `<path>.lock`.
    fn save_blocking(
        path: &Path,
        credential: &str,
        token: &StoredToken,
        reported: &Mutex<BTreeSet<String>>,
    ) -> Result<(), StoreError> {
        let dir = state_dir(path);
        create_private_dir(&dir)?;
        // Again at every write: the directory may have been created (or changed) by
        // someone else since the start.
        check_dir(&dir)?;
        let lock_path = suffixed(path, ".lock");
        let lock = open_no_follow(&lock_path, OpenOptions::new().create(true).truncate(false).write(true))
            .map_err(|e| io_error(&lock_path, e))?;
        lock.lock().map_err(|e| io_error(&lock_path, e))?;

        remove_stale_temps(&dir, path);
        let mut contents = match read_state(path)? {
            Some(bytes) => {
                let contents = parse_state(&bytes);
                if contents.is_damaged() {
                    keep_damaged_copy(path, &dir, &bytes, &contents)?;
                }
                contents
            }
            None => Contents::default(),
        };
        contents.records.insert(credential.to_string(), token.clone());
        let state = StateFile { version: 1, credentials: contents.records };
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Backend(e.to_string()))?;
        write_atomically(path, &dir, &bytes)?;
        // The file is clean now: damage found later is new, and is reported again.
        if let Ok(mut r) = reported.lock() {
            r.clear();
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl TokenStore for FileStore {
    async fn load(&self, credential: &str) -> Result<Option<StoredToken>, StoreError> {
        let path = self.path.clone();
        let credential = credential.to_string();
        let reported = self.reported.clone();
        tokio::task::spawn_blocking(move || Self::load_blocking(&path, &credential, &reported))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn save(&self, credential: &str, token: &StoredToken) -> Result<(), StoreError> {
        let path = self.path.clone();
        let credential = credential.to_string();
        let token = token.clone();
        let reported = self.reported.clone();
        tokio::task::spawn_blocking(move || Self::save_blocking(&path, &credential, &token, &reported))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

// ===== files =====

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io { path: path.to_path_buf(), source }
}

/// The directory holding the state file (`.` for a bare file name).
fn state_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path` with `suffix` appended to its file name (`state.json` → `state.json.lock`).
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates the state directory (and missing parents) readable by its owner only.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| io_error(dir, e))
}

/// Refuses a directory other users can write to: writable by group or world (sticky or
/// not: either way others can create names in it), or owned by another user than this
/// process's (or root). A missing directory is fine: it is created 0700.
#[cfg(unix)]
fn check_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(dir, e)),
    };
    let mode = meta.mode() & 0o7777;
    let me = rustix::process::geteuid().as_raw();
    let reason = if mode & 0o002 != 0 {
        "writable by every user".to_string()
    } else if mode & 0o020 != 0 {
        "writable by its group".to_string()
    } else if meta.uid() != me && meta.uid() != 0 {
        format!("owned by another user (uid {})", meta.uid())
    } else {
        return Ok(());
    };
    Err(StoreError::UnsafeDir { path: dir.to_path_buf(), mode, reason })
}

#[cfg(not(unix))]
fn check_dir(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Opens with `options`, mode 0600 when created, never through a symbolic link at
/// `path` itself (`O_NOFOLLOW`: a link there fails the open).
fn open_no_follow(path: &Path, options: &mut OpenOptions) -> std::io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// The state file's bytes; `None` when there is none. Never through a symbolic link, and
/// never blocked by a FIFO planted at the path.
fn read_state(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let mut file = match open_no_follow(path, &mut options) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StoreError::SymlinkedState { path: path.to_path_buf() })
        }
        Err(e) => return Err(io_error(path, e)),
    };
    if !file.metadata().map_err(|e| io_error(path, e))?.is_file() {
        return Err(StoreError::NotAFile { path: path.to_path_buf() });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| io_error(path, e))?;
    Ok(Some(bytes))
}

/// `.<file name>.tmp.` — what every temp file of this state file starts with.
fn temp_prefix(path: &Path) -> Option<OsString> {
    let mut prefix = OsString::from(".");
    prefix.push(path.file_name()?);
    prefix.push(".tmp.");
    Some(prefix)
}

/// A fresh temp file name: hidden, and unpredictable (64 random bits), so nobody can
/// plant anything at it in advance.
fn temp_name(prefix: &OsString) -> OsString {
    let mut name = prefix.clone();
    name.push(format!("{:016x}", rand::random::<u64>()));
    name
}

/// Removes temp files an interrupted write left behind. Called under the writers' lock,
/// so any temp file of this state file belongs to a writer that died (it may hold
/// tokens: best not to keep it). Best effort.
fn remove_stale_temps(dir: &Path, path: &Path) {
    let (Some(prefix), Ok(entries)) = (temp_prefix(path), std::fs::read_dir(dir)) else { return };
    let Some(prefix) = prefix.to_str().map(str::to_owned) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
            // remove_file removes a link itself, never what it points to.
            if std::fs::remove_file(entry.path()).is_ok() {
                tracing::info!(file = %entry.path().display(), "removed a temp file left by an interrupted write");
            }
        }
    }
}

/// Removes a file this process created when the operation that created it fails.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    /// The file is where it belongs now: keep it.
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Creates a new file exclusively (`O_EXCL`: never an existing file, never a link), 0600.
fn create_exclusive(path: &Path) -> std::io::Result<File> {
    open_no_follow(path, OpenOptions::new().write(true).create_new(true))
}

/// Writes `bytes` to a new file at `path`, fsynced, removed again if any step fails.
fn write_new_file(path: &Path, file: File, bytes: &[u8]) -> Result<RemoveOnDrop, StoreError> {
    let guard = RemoveOnDrop(Some(path.to_path_buf()));
    let mut file = file;
    file.write_all(bytes).map_err(|e| io_error(path, e))?;
    file.sync_all().map_err(|e| io_error(path, e))?;
    Ok(guard)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))
}

/// Temp file (exclusive, unpredictable name, 0600), fsync, rename over `path`, fsync the
/// directory. The temp file is removed on any failure.
fn write_atomically(path: &Path, dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let prefix = temp_prefix(path).ok_or_else(|| {
        io_error(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "state.path names no file"))
    })?;
    // A clash with 64 random bits means something is wrong; a few attempts are plenty.
    let mut attempt = 0u8;
    let (tmp, file) = loop {
        let tmp = dir.join(temp_name(&prefix));
        match create_exclusive(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 3 => {
                attempt = attempt.saturating_add(1)
            }
            Err(e) => return Err(io_error(&tmp, e)),
        }
    };
    let mut guard = write_new_file(&tmp, file, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
    guard.keep();
    sync_dir(dir)
}

/// Copies a damaged file's bytes to the first free `<path>.damaged.<N>` (created
/// exclusively: a copy is never overwritten) and says so, before the file is rewritten.
fn keep_damaged_copy(path: &Path, dir: &Path, bytes: &[u8], contents: &Contents) -> Result<PathBuf, StoreError> {
    for n in 1..=MAX_DAMAGED_COPIES {
        let copy = suffixed(path, &format!(".damaged.{n}"));
        let file = match create_exclusive(&copy) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(&copy, e)),
        };
        let mut guard = write_new_file(&copy, file, bytes)?;
        sync_dir(dir)?;
        guard.keep();
        tracing::error!(
            path = %path.display(),
            copy = %copy.display(),
            damaged_records = ?contents.malformed,
            unreadable = ?contents.unreadable,
            "the state file was damaged: its bytes are kept in the copy; rewriting it with every record that could be read"
        );
        return Ok(copy);
    }
    Err(io_error(
        &suffixed(path, ".damaged.*"),
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{MAX_DAMAGED_COPIES} numbered copies of damaged state exist: move them away"),
        ),
    ))
}

// ===== reading what can be read =====

/// What could be read of a state file.
#[derive(Debug, Default)]
struct Contents {
    /// Every record that could be read.
    records: BTreeMap<String, StoredToken>,
    /// Credentials whose record is complete JSON but not a stored token.
    malformed: BTreeSet<String>,
    /// Why reading stopped before the end of the file, when it did (the rest, records
    /// included, could not be read).
    unreadable: Option<String>,
}

impl Contents {
    fn is_damaged(&self) -> bool {
        !self.malformed.is_empty() || self.unreadable.is_some()
    }
}

/// Reads a state file record by record: `{"version": …, "credentials": {name: record, …}}`.
/// A record that is JSON but not a [`StoredToken`] is skipped (and named); a file cut or
/// garbled anywhere still yields every record complete before the damage.
fn parse_state(bytes: &[u8]) -> Contents {
    if bytes.iter().all(|b| is_json_space(*b)) {
        return Contents::default();
    }
    if let Ok(state) = serde_json::from_slice::<StateFile>(bytes) {
        return Contents { records: state.credentials, ..Contents::default() };
    }
    let mut contents = Contents::default();
    let mut walker = Walker { bytes, pos: 0 };
    if let Err(why) = walker.state_file(&mut contents) {
        contents.unreadable = Some(format!("{why} at byte {}", walker.pos));
    }
    contents
}

fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A cursor over a state file that reads one key or one value at a time.
struct Walker<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Why the walk stopped (the position is the walker's).
type Step = Result<(), &'static str>;

impl Walker<'_> {
    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while self.bytes.get(self.pos).is_some_and(|b| is_json_space(*b)) {
            self.pos = self.pos.saturating_add(1);
        }
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8, otherwise: &'static str) -> Step {
        if self.peek() != Some(byte) {
            return Err(otherwise);
        }
        self.pos = self.pos.saturating_add(1);
        Ok(())
    }

    /// One JSON value (after whitespace); the position moves past it only when it reads.
    fn value<T: DeserializeOwned>(&mut self, otherwise: &'static str) -> Result<T, &'static str> {
        self.peek();
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<T>();
        match values.next() {
            Some(Ok(v)) => {
                self.pos = self.pos.saturating_add(values.byte_offset());
                Ok(v)
            }
            _ => Err(otherwise),
        }
    }

    /// After a member: `,` (more follow: true) or `}` (the object ends: false).
    fn after_member(&mut self) -> Result<bool, &'static str> {
        let more = match self.peek() {
            Some(b',') => true,
            Some(b'}') => false,
            _ => return Err("`,` or `}` expected"),
        };
        self.pos = self.pos.saturating_add(1);
        Ok(more)
    }

    /// The whole file: an object whose `credentials` member is read record by record.
    fn state_file(&mut self, out: &mut Contents) -> Step {
        self.expect(b'{', "the file is not a JSON object")?;
        let mut more = self.peek() != Some(b'}');
        if !more {
            self.pos = self.pos.saturating_add(1);
        }
        while more {
            let key: String = self.value("a key could not be read")?;
            self.expect(b':', "`:` expected")?;
            if key == "credentials" {
                self.credentials(out)?;
            } else {
                self.value::<IgnoredAny>("a value could not be read")?;
            }
            more = self.after_member()?;
        }
        match self.peek() {
            None => Ok(()),
            Some(_) => Err("unexpected bytes after the end"),
        }
    }

    /// `{name: record, …}`: each record parsed on its own.
    fn credentials(&mut self, out: &mut Contents) -> Step {
        self.expect(b'{', "`credentials` is not an object")?;
        if self.peek() == Some(b'}') {
            self.pos = self.pos.saturating_add(1);
            return Ok(());
        }
        loop {
            let name: String = self.value("a credential name could not be read")?;
            self.expect(b':', "`:` expected")?;
            self.peek();
            let start = self.pos;
            self.value::<IgnoredAny>("a record could not be read")?;
            let record = self.bytes.get(start..self.pos).unwrap_or_default();
            // The last record of a name counts, as with a plain JSON object.
            match serde_json::from_slice::<StoredToken>(record) {
                Ok(token) => {
                    out.malformed.remove(&name);
                    out.records.insert(name, token);
                }
                Err(_) => {
                    out.records.remove(&name);
                    out.malformed.insert(name);
                }
            }
            if !self.after_member()? {
                return Ok(());
            }
        }
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

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

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A victim file outside the state directory, 0644, that no write may touch.
    fn victim() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("victim");
        std::fs::write(&p, "victim").unwrap();
        chmod(&p, 0o644);
        (dir, p)
    }

    fn assert_untouched(victim: &Path) {
        assert_eq!(std::fs::read_to_string(victim).unwrap(), "victim");
        assert_eq!(mode(victim), 0o644);
    }

    #[tokio::test]
    async fn round_trip_merges_credentials_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/deeper/state.json");
        let store = FileStore::open(&path).unwrap();
        assert_eq!(store.load("a").await.unwrap(), None);
        store.save("a", &token(1)).await.unwrap();
        store.save("b", &token(2)).await.unwrap();
        store.save("a", &token(3)).await.unwrap();
        assert_eq!(store.load("a").await.unwrap(), Some(token(3)));
        assert_eq!(store.load("b").await.unwrap(), Some(token(2)));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("sub")), 0o700, "created directories are private");
        assert_eq!(mode(&dir.path().join("sub/deeper")), 0o700);
        assert_eq!(names_in(path.parent().unwrap()), ["state.json", "state.json.lock"], "no temp file left");
        assert_eq!(mode(&path.parent().unwrap().join("state.json.lock")), 0o600);
    }

    #[test]
    fn temp_names_are_hidden_and_unpredictable() {
        let prefix = temp_prefix(Path::new("/x/state.json")).unwrap();
        assert_eq!(prefix, ".state.json.tmp.");
        let names: BTreeSet<OsString> = (0..100).map(|_| temp_name(&prefix)).collect();
        assert_eq!(names.len(), 100);
        for n in &names {
            let n = n.to_str().unwrap();
            let hex = n.strip_prefix(".state.json.tmp.").unwrap();
            assert!(hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{n}");
        }
    }

    #[tokio::test]
    async fn planted_symlinks_are_never_followed() {
        let (_v, victim) = victim();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        // The old predictable temp names, a would-be temp name and a would-be copy.
        for name in [
            format!("state.tmp.{}", std::process::id()),
            format!("state.json.tmp.{}", std::process::id()),
            ".state.json.tmp.0000000000000000".to_string(),
        ] {
            symlink(&victim, dir.path().join(name)).unwrap();
        }
        let store = FileStore::open(&path).unwrap();
        store.save("a", &token(1)).await.unwrap();
        store.save("a", &token(2)).await.unwrap();
        assert_untouched(&victim);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(store.load("a").await.unwrap(), Some(token(2)));
        // The would-be temp name was cleaned up as a leftover (the link, not its target).
        assert!(!names_in(dir.path()).iter().any(|n| n.starts_with(".state.json.tmp.")));
    }

    #[tokio::test]
    async fn a_symlink_at_the_lock_or_the_state_path_fails_the_write() {
        let (_v, victim) = victim();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        symlink(&victim, dir.path().join("state.json.lock")).unwrap();
        let store = FileStore::new(&path);
        let e = store.save("a", &token(1)).await.unwrap_err();
        assert!(e.to_string().contains("state.json.lock"), "{e}");
        assert_untouched(&victim);
        std::fs::remove_file(dir.path().join("state.json.lock")).unwrap();

        symlink(&victim, &path).unwrap();
        assert!(matches!(store.save("a", &token(1)).await, Err(StoreError::SymlinkedState { .. })));
        assert!(matches!(store.load("a").await, Err(StoreError::SymlinkedState { .. })));
        assert_untouched(&victim);
        assert!(!names_in(dir.path()).iter().any(|n| n.contains("tmp")));
    }

    #[test]
    fn open_refuses_a_symlinked_state_file_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        std::fs::write(&real, "{}").unwrap();
        let link = dir.path().join("state.json");
        symlink(&real, &link).unwrap();
        let e = FileStore::open(&link).err().unwrap();
        assert!(matches!(e, StoreError::SymlinkedState { .. }));
        let msg = e.to_string();
        assert!(msg.contains(&link.display().to_string()) && msg.contains("real file"), "{msg}");
        // A dangling link too: it would be written through, or replaced, either way wrong.
        std::fs::remove_file(&real).unwrap();
        assert!(matches!(FileStore::open(&link), Err(StoreError::SymlinkedState { .. })));
        // And a directory where the file should be.
        assert!(matches!(FileStore::open(dir.path()), Err(StoreError::NotAFile { .. })));
    }

    #[tokio::test]
    async fn a_directory_others_can_write_to_is_refused_naming_it() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("shared");
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("state.json");
        for bad in [0o777, 0o1777, 0o770, 0o703, 0o1733] {
            chmod(&dir, bad);
            let e = FileStore::open(&path).err().unwrap_or_else(|| panic!("mode {bad:o} accepted"));
            assert!(matches!(e, StoreError::UnsafeDir { .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.contains(&dir.display().to_string()) && msg.contains("chmod go-w"), "{msg}");
            // Writes refuse it too, whoever made the store.
            assert!(matches!(FileStore::new(&path).save("a", &token(1)).await, Err(StoreError::UnsafeDir { .. })));
            assert!(!path.exists());
        }
        for good in [0o700, 0o755, 0o750, 0o705] {
            chmod(&dir, good);
            FileStore::open(&path).unwrap_or_else(|e| panic!("mode {good:o} refused: {e}"));
        }
        // A directory that does not exist yet is created private.
        let fresh = base.path().join("new/state.json");
        FileStore::open(&fresh).unwrap().save("a", &token(1)).await.unwrap();
        assert_eq!(mode(&base.path().join("new")), 0o700);
    }

    /// A real two-record file, with strings that look like structure.
    fn two_records() -> (Vec<u8>, StoredToken, StoredToken) {
        let mut a = token(1);
        a.access_token = "a}\"{,:\\u0041 ".into();
        a.organizer_key = Some("}}".into());
        let mut b = token(2);
        b.account_key = Some("{\"x\":1}".into());
        b.expires_at_ms = Some(u64::MAX);
        let state = StateFile { version: 1, credentials: [("a".into(), a.clone()), ("b".into(), b.clone())].into() };
        (serde_json::to_vec_pretty(&state).unwrap(), a, b)
    }

    #[test]
    fn a_file_cut_anywhere_keeps_every_record_complete_before_the_cut() {
        let (bytes, a, b) = two_records();
        let text = std::str::from_utf8(&bytes).unwrap();
        let b_key = text.find("\"b\":").unwrap();
        let a_end = text[..b_key].rfind('}').unwrap() + 1;
        for cut in 0..=bytes.len() {
            let c = parse_state(&bytes[..cut]);
            if let Some(got) = c.records.get("a") {
                assert_eq!(got, &a, "cut at {cut}");
            }
            if let Some(got) = c.records.get("b") {
                assert_eq!(got, &b, "cut at {cut}");
            }
            assert!(c.records.len() <= 2 && c.malformed.is_empty(), "cut at {cut}: {c:?}");
            if cut >= a_end {
                assert!(c.records.contains_key("a"), "cut at {cut}: record a is complete");
            }
            if cut == 0 || cut == bytes.len() {
                assert!(!c.is_damaged(), "cut at {cut}");
            } else {
                assert!(c.is_damaged(), "cut at {cut}: a cut file is damaged");
            }
        }
        assert_eq!(parse_state(&bytes).records.len(), 2);
    }

    #[test]
    fn garbage_anywhere_never_panics_nor_costs_the_records_before_it() {
        let (bytes, a, _) = two_records();
        let text = std::str::from_utf8(&bytes).unwrap();
        let a_end = text[..text.find("\"b\":").unwrap()].rfind('}').unwrap() + 1;
        for at in 0..bytes.len() {
            for junk in [b'\0', b'"', b'}', b'{', b',', b':', b'x', b'9', 0xff] {
                let mut v = bytes.clone();
                v[at] = junk;
                let c = parse_state(&v);
                if at >= a_end {
                    assert_eq!(c.records.get("a"), Some(&a), "{junk} at {at}: {c:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_malformed_record_is_skipped_and_kept_aside_in_numbered_copies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let store = FileStore::open(&path).unwrap();
        store.save("a", &token(1)).await.unwrap();
        store.save("b", &token(2)).await.unwrap();
        let damage = |p: &Path| {
            let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            v["credentials"]["b"] = serde_json::json!({"access_token": 5, "expires_at": 1e20});
            let bytes = serde_json::to_vec_pretty(&v).unwrap();
            std::fs::write(p, &bytes).unwrap();
            bytes
        };
        let first = damage(&path);
        assert_eq!(store.load("a").await.unwrap(), Some(token(1)), "another record's damage costs nothing");
        assert_eq!(store.load("b").await.unwrap(), None, "the damaged credential starts with no token");
        assert!(!dir.path().join("state.json.damaged.1").exists(), "reading never writes");

        store.save("c", &token(3)).await.unwrap();
        let copy1 = dir.path().join("state.json.damaged.1");
        assert_eq!(std::fs::read(&copy1).unwrap(), first);
        assert_eq!(mode(&copy1), 0o600);
        assert_eq!(store.load("a").await.unwrap(), Some(token(1)));
        assert_eq!(store.load("b").await.unwrap(), None);
        assert_eq!(store.load("c").await.unwrap(), Some(token(3)));
        let c = parse_state(&std::fs::read(&path).unwrap());
        assert!(!c.is_damaged(), "the rewritten file is clean");

        // No copy while the file is clean; the next damage goes to .2, .1 stays.
        store.save("c", &token(4)).await.unwrap();
        assert!(!dir.path().join("state.json.damaged.2").exists());
        store.save("b", &token(5)).await.unwrap();
        let second = damage(&path);
        // A link planted at the next free name is skipped, not followed.
        let (_v, victim) = victim();
        symlink(&victim, dir.path().join("state.json.damaged.2")).unwrap();
        store.save("a", &token(6)).await.unwrap();
        assert_untouched(&victim);
        assert_eq!(std::fs::read(&copy1).unwrap(), first, ".1 is never overwritten");
        assert_eq!(std::fs::read(dir.path().join("state.json.damaged.3")).unwrap(), second);
        assert_eq!(store.load("a").await.unwrap(), Some(token(6)));
        assert_eq!(store.load("c").await.unwrap(), Some(token(4)));
    }

    #[tokio::test]
    async fn an_unreadable_file_is_no_token_then_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        let store = FileStore::open(&path).unwrap();
        assert_eq!(store.load("a").await.unwrap(), None);
        store.save("a", &token(1)).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("state.json.damaged.1")).unwrap(), b"{not json");
        assert_eq!(store.load("a").await.unwrap(), Some(token(1)));

        // An empty file is no state at all, not damage.
        std::fs::write(&path, "").unwrap();
        assert_eq!(store.load("a").await.unwrap(), None);
        store.save("a", &token(2)).await.unwrap();
        assert!(!dir.path().join("state.json.damaged.2").exists());
    }

    #[tokio::test]
    async fn leftover_temp_files_are_removed_at_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let left = dir.path().join(".state.json.tmp.0123456789abcdef");
        std::fs::write(&left, "tokens of a crashed write").unwrap();
        let other = dir.path().join(".other.json.tmp.0123456789abcdef");
        std::fs::write(&other, "not ours").unwrap();
        FileStore::open(&path).unwrap().save("a", &token(1)).await.unwrap();
        assert!(!left.exists());
        assert!(other.exists());
    }

    /// Log lines written while `f` runs on this thread.
    fn captured_log(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = sink.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn damage_is_an_error_once_per_credential_until_a_clean_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let reported = Mutex::new(BTreeSet::new());
        let damaged =
            r#"{"version":1,"credentials":{"a":{"access_token":"x","expires_at":1,"obtained_at_ms":0},"b":[]}}"#;
        std::fs::write(&path, damaged).unwrap();
        let log = captured_log(|| {
            for _ in 0..3 {
                assert_eq!(FileStore::load_blocking(&path, "b", &reported).unwrap(), None);
                assert!(FileStore::load_blocking(&path, "a", &reported).unwrap().is_some());
            }
        });
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{log}");
        assert!(errors[0].contains("credential=\"b\"") && errors[0].contains("state.json"), "{log}");

        let log = captured_log(|| FileStore::save_blocking(&path, "c", &token(3), &reported).unwrap());
        assert!(log.contains("ERROR") && log.contains("state.json.damaged.1"), "the copy is named: {log}");
        std::fs::write(&path, damaged).unwrap();
        let log = captured_log(|| assert_eq!(FileStore::load_blocking(&path, "b", &reported).unwrap(), None));
        assert_eq!(log.lines().filter(|l| l.contains("ERROR")).count(), 1, "new damage, new error: {log}");
    }

    #[test]
    fn extreme_numbers_parse_and_never_panic() {
        let max = u64::MAX;
        let text = format!(
            r#"{{"version":1,"credentials":{{
                "ms":{{"access_token":"x","expires_at":{max},"expires_at_ms":{max},"obtained_at_ms":{max}}},
                "s":{{"access_token":"y","expires_at":{max},"obtained_at_ms":0}},
                "big":{{"access_token":"z","expires_at":1e400,"obtained_at_ms":0}},
                "neg":{{"access_token":"z","expires_at":-1,"obtained_at_ms":0}},
                "ok":{{"access_token":"w","expires_at":5,"obtained_at_ms":0}}}}}}"#
        );
        let c = parse_state(text.as_bytes());
        assert_eq!(c.records.keys().collect::<Vec<_>>(), ["ms", "ok", "s"]);
        assert_eq!(c.malformed.iter().collect::<Vec<_>>(), ["big", "neg"]);
        assert!(c.unreadable.is_none());
        assert_eq!(c.records["s"].expires_at_time(), UNIX_EPOCH, "not a time: expired");
        let _ = c.records["ms"].expires_at_time();
        assert_eq!(c.records["ok"].expires_at_time(), UNIX_EPOCH + Duration::from_secs(5));
    }

    #[test]
    fn stored_token_keeps_its_field_names() {
        let mut t = token(1);
        t.expires_at_ms = Some(7);
        t.organizer_key = Some("o".into());
        t.account_key = Some("k".into());
        let v = serde_json::to_value(&t).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "access_token",
                "account_key",
                "expires_at",
                "expires_at_ms",
                "obtained_at_ms",
                "organizer_key",
                "refresh_token"
            ]
        );
    }

    #[test]
    fn debug_redacts() {
        let s = format!("{:?}", token(7));
        assert!(!s.contains("at7") && !s.contains("rt7"));
    }
}
