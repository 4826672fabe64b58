//! [`FileStore`]: one JSON file, written atomically (temp file created exclusively under
//! an unpredictable name, fsync, rename, fsync the directory), never through a symbolic
//! link, in a directory no other user can write to. A damaged file is kept aside in a
//! numbered copy before it is rewritten with every record that could be read
//! ([`super::recover`]). A save is compared with the stored record's version under the
//! writers' lock, so a `login` in another process and the running proxy never undo each
//! other's tokens.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::accounts::{self, AccountFile};
use super::recover::{file_aad, parse_state_with, Contents, StateFile};
use super::sealing::{verdict, Codec, RecordState};
use super::{next_version, split_account_key, Saved, StoreError, StoredToken, TokenStore};
use crate::token::seal::Sealer;

/// How many numbered copies of damaged state files are looked through for a free name
/// before saving gives up (a directory with that many is itself a problem to look at).
const MAX_DAMAGED_COPIES: u32 = 1000;

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
    /// Seals records when `state.encryption_keys` are configured.
    codec: Arc<Codec>,
}

impl FileStore {
    /// A store at `path`, without the start-up checks of [`FileStore::open`] (every
    /// write still refuses an unsafe directory and never follows a link). The directory
    /// is created (0700) on first write.
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into(), reported: Arc::default(), codec: Arc::default() }
    }

    /// The same store, sealing every record it writes with `sealer`'s first key and
    /// opening records with any of its keys (`None`: plaintext records).
    pub fn with_sealer(mut self, sealer: Option<Arc<Sealer>>) -> FileStore {
        self.codec = Arc::new(Codec::new(sealer));
        self
    }

    /// A store at `path`, checked as `run` must before trusting it with tokens: refused
    /// when `path` is a symbolic link or not a regular file, or when its directory (or
    /// the account records' directory beside it) exists and other users can write to it
    /// (the error names the path and how to fix it).
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
        accounts::check_root(&path)?;
        Ok(FileStore::new(path))
    }

    /// `load` off the runtime: the record of `credential`, or `None` (logged as an
    /// error, once) when the file is damaged where that record was.
    pub(super) fn load_blocking(
        path: &Path,
        credential: &str,
        reported: &Mutex<BTreeSet<String>>,
        codec: &Codec,
    ) -> Result<Option<StoredToken>, StoreError> {
        if let Some((c, a)) = split_account_key(credential) {
            return AccountFile::new(path, c, a)?.load(path, reported, codec, &format!("file {}", path.display()));
        }
        let Some(bytes) = read_state(path)? else {
            codec.note(credential, None);
            return Ok(None);
        };
        let mut contents = parse_state_with(&bytes, codec);
        let kid = match contents.states.get(credential) {
            Some(RecordState::Sealed { kid }) => Some(kid.clone()),
            _ => None,
        };
        codec.note(credential, kid);
        if let Some(token) = contents.records.remove(credential) {
            if contents.states.get(credential).is_some_and(|s| codec.is_plaintext_under_keys(s)) {
                // Sealed at once (with any other plaintext record), warned about inside.
                Self::rewrite_blocking(path, reported, codec, Change::Reseal)?;
            }
            return Ok(Some(token));
        }
        if !contents.malformed.contains(credential) && contents.unreadable.is_none() {
            return Ok(None);
        }
        let first = reported.lock().map(|mut r| r.insert(credential.to_string())).unwrap_or(true);
        if !first {
            tracing::debug!(credential, path = %path.display(), "state file still damaged; no token stored for this credential");
        } else if let Some(RecordState::Unopenable { kid }) = contents.states.get(credential) {
            tracing::error!(
                credential,
                path = %path.display(),
                sealed_with = kid.as_deref().unwrap_or("unknown"),
                key_ids_tried = ?codec.kids(),
                "the stored record of this credential is encrypted and does not open with state.encryption_keys \
                 (damaged, or not written for this credential): it starts with no token; \
                 the file is copied aside (<path>.damaged.<N>) when it is next written"
            );
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

    /// Read-compare-merge-write of one credential under an exclusive lock on
    /// `<path>.lock` (see [`TokenStore::save`]).
    pub(super) fn save_blocking(
        path: &Path,
        credential: &str,
        token: &StoredToken,
        reported: &Mutex<BTreeSet<String>>,
        codec: &Codec,
    ) -> Result<Saved, StoreError> {
        if let Some((c, a)) = split_account_key(credential) {
            return AccountFile::new(path, c, a)?.save(path, token, reported, codec);
        }
        let outcome = Self::rewrite_blocking(path, reported, codec, Change::Save(credential, token))?;
        // With an update, the rewrite always answers one.
        Ok(outcome.saved.unwrap_or(Saved::Stale { current: None, version: 0 }))
    }

    /// The start-up check (see [`TokenStore::prepare`]): every record of the file and
    /// every account record, one verdict over them all (an account credential may have
    /// no record in the file at all).
    pub(super) fn prepare_blocking(
        path: &Path,
        reported: &Mutex<BTreeSet<String>>,
        codec: &Codec,
    ) -> Result<(), StoreError> {
        let contents = match read_state(path)? {
            Some(bytes) => parse_state_with(&bytes, codec),
            None => Contents::default(),
        };
        let survey = accounts::survey(path, codec)?;
        let mut states = survey.states.clone();
        states.extend(contents.states.iter().map(|(k, v)| (k.clone(), v.clone())));
        verdict(codec, &format!("state file {}", path.display()), &states)?;
        if contents.states.values().any(|s| codec.needs_reseal(s)) {
            // Under the writers' lock, from what the file holds then.
            if Self::rewrite_blocking(path, reported, codec, Change::Reseal)?.written {
                tracing::info!(path = %path.display(), key_id = codec.current_kid().as_deref().unwrap_or(""), "token records encrypted with the first of state.encryption_keys");
            }
        }
        accounts::tidy(path, codec, &survey, &format!("file {}", path.display()))
    }

    /// Read-merge-write under the writers' lock: every readable record written again
    /// (sealed when keys are configured, keeping its version), with a save replacing
    /// one when the stored record is still at the save's version (it gets the next), or
    /// a removal leaving one out. With [`Change::Reseal`], the file is left alone when no
    /// record needs sealing again.
    fn rewrite_blocking(
        path: &Path,
        reported: &Mutex<BTreeSet<String>>,
        codec: &Codec,
        change: Change<'_>,
    ) -> Result<Rewritten, StoreError> {
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
        let (mut contents, old) = match read_state(path)? {
            Some(bytes) => (parse_state_with(&bytes, codec), Some(bytes)),
            None => (Contents::default(), None),
        };
        let (update, removed) = match change {
            Change::Reseal => (None, None),
            Change::Save(credential, token) => (Some((credential, token)), None),
            Change::Remove(credential) => (None, Some(credential)),
        };
        if update.is_none() && !contents.states.values().any(|s| codec.needs_reseal(s)) {
            match removed {
                Some(c) if contents.states.contains_key(c) => {}
                _ => return Ok(Rewritten { written: false, saved: None }),
            }
        }
        if let Some(c) = removed {
            contents.records.remove(c);
            contents.states.remove(c);
            contents.malformed.remove(c);
            codec.note(c, None);
        }
        let mut saved = None;
        if let Some((credential, token)) = update {
            let stored = contents.records.get(credential).map_or(0, |t| t.version);
            if token.version != stored {
                let current = contents.records.remove(credential);
                return Ok(Rewritten { written: false, saved: Some(Saved::Stale { current, version: stored }) });
            }
            let version = next_version(stored);
            contents.records.insert(credential.to_string(), StoredToken { version, ..token.clone() });
            saved = Some(Saved::Stored(version));
        }
        if let Some(bytes) = &old {
            if contents.is_damaged() {
                keep_damaged_copy(path, &dir, bytes, &contents)?;
            }
        }
        let plaintext: Vec<&String> = contents
            .states
            .iter()
            .filter(|(name, state)| {
                codec.is_plaintext_under_keys(state)
                    && contents.records.contains_key(*name)
                    && update.is_none_or(|(c, _)| c != name.as_str())
            })
            .map(|(name, _)| name)
            .collect();
        let mut credentials = std::collections::BTreeMap::new();
        for (name, token) in &contents.records {
            credentials.insert(name.clone(), codec.encode(&file_aad(name), token)?);
        }
        let state: StateFile<Value> = StateFile { version: 1, credentials };
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Backend(e.to_string()))?;
        write_atomically(path, &dir, &bytes)?;
        for name in contents.records.keys() {
            codec.note(name, codec.current_kid());
        }
        let store = format!("file {}", path.display());
        for name in plaintext {
            codec.warn_plaintext(name, &store);
        }
        // The file is clean now: damage found later is new, and is reported again
        // (account records are files of their own: their reports stay).
        if let Ok(mut r) = reported.lock() {
            r.retain(|key| split_account_key(key).is_some());
        }
        Ok(Rewritten { written: true, saved })
    }
}

/// What a rewrite of the state file is for.
#[derive(Clone, Copy)]
enum Change<'a> {
    /// Seal again what needs it (nothing else changes).
    Reseal,
    /// Save this record of this credential (compared with the stored version).
    Save(&'a str, &'a StoredToken),
    /// Leave this credential's record out.
    Remove(&'a str),
}

/// What a rewrite did.
struct Rewritten {
    /// Whether the file was written.
    written: bool,
    /// The answer to the update, when there was one.
    saved: Option<Saved>,
}

#[async_trait::async_trait]
impl TokenStore for FileStore {
    async fn load(&self, credential: &str) -> Result<Option<StoredToken>, StoreError> {
        let path = self.path.clone();
        let credential = credential.to_string();
        let reported = self.reported.clone();
        let codec = self.codec.clone();
        tokio::task::spawn_blocking(move || Self::load_blocking(&path, &credential, &reported, &codec))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn save(&self, credential: &str, token: &StoredToken) -> Result<Saved, StoreError> {
        let path = self.path.clone();
        let credential = credential.to_string();
        let token = token.clone();
        let reported = self.reported.clone();
        let codec = self.codec.clone();
        tokio::task::spawn_blocking(move || Self::save_blocking(&path, &credential, &token, &reported, &codec))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn accounts(&self, credential: &str) -> Result<Vec<String>, StoreError> {
        let path = self.path.clone();
        let credential = credential.to_string();
        tokio::task::spawn_blocking(move || accounts::list(&path, &credential))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn remove(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path.clone();
        let key = key.to_string();
        let reported = self.reported.clone();
        let codec = self.codec.clone();
        tokio::task::spawn_blocking(move || match split_account_key(&key) {
            Some((c, a)) => AccountFile::new(&path, c, a)?.remove(&path, &codec, &reported),
            None => Self::rewrite_blocking(&path, &reported, &codec, Change::Remove(&key)).map(|_| ()),
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    async fn prepare(&self, _credentials: &[String]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let reported = self.reported.clone();
        let codec = self.codec.clone();
        tokio::task::spawn_blocking(move || Self::prepare_blocking(&path, &reported, &codec))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
    }

    fn key_id(&self, credential: &str) -> Option<String> {
        self.codec.kid_of(credential)
    }
}

// ===== files =====

pub(super) fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io { path: path.to_path_buf(), source }
}

/// The directory holding the state file (`.` for a bare file name).
pub(super) fn state_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path` with `suffix` appended to its file name (`state.json` → `state.json.lock`).
pub(super) fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates the state directory (and missing parents) readable by its owner only.
pub(super) fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
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
pub(super) fn check_dir(dir: &Path) -> Result<(), StoreError> {
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
pub(super) fn check_dir(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Opens with `options`, mode 0600 when created, never through a symbolic link at
/// `path` itself (`O_NOFOLLOW`: a link there fails the open).
pub(super) fn open_no_follow(path: &Path, options: &mut OpenOptions) -> std::io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// The state file's bytes; `None` when there is none. Never through a symbolic link, and
/// never blocked by a FIFO planted at the path.
pub(super) fn read_state(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
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
pub(super) fn temp_prefix(path: &Path) -> Option<OsString> {
    let mut prefix = OsString::from(".");
    prefix.push(path.file_name()?);
    prefix.push(".tmp.");
    Some(prefix)
}

/// A fresh temp file name: hidden, and unpredictable (64 random bits), so nobody can
/// plant anything at it in advance.
pub(super) fn temp_name(prefix: &OsString) -> OsString {
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

pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))
}

/// Temp file (exclusive, unpredictable name, 0600), fsync, rename over `path`, fsync the
/// directory. The temp file is removed on any failure.
pub(super) fn write_atomically(path: &Path, dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
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
pub(super) fn keep_damaged_copy(
    path: &Path,
    dir: &Path,
    bytes: &[u8],
    contents: &Contents,
) -> Result<PathBuf, StoreError> {
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
