//! [`FileStore`]: one JSON file, written atomically (temp file created exclusively under
//! an unpredictable name, fsync, rename, fsync the directory), never through a symbolic
//! link, in a directory no other user can write to. A damaged file is kept aside in a
//! numbered copy before it is rewritten with every record that could be read
//! ([`super::recover`]). A save is compared with the stored record's version under the
//! writers' lock, so a `login` in another process and the running proxy never undo each
//! other's tokens.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::accounts::{self, AccountFile};
use super::fs::{
    check_dir, create_private_dir, io_error, keep_damaged_copy, open_no_follow, read_state, remove_stale_temps,
    state_dir, suffixed, write_atomically,
};
use super::recover::{file_aad, parse_state_with, Contents, StateFile};
use super::sealing::{verdict, Codec, RecordState};
use super::{next_version, split_account_key, Saved, StoreError, StoredToken, TokenStore};
use crate::token::seal::Sealer;

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
        let bytes = serde_json::to_vec_pretty(&state)?;
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
        tokio::task::spawn_blocking(move || Self::load_blocking(&path, &credential, &reported, &codec)).await?
    }

    async fn save(&self, credential: &str, token: &StoredToken) -> Result<Saved, StoreError> {
        let path = self.path.clone();
        let credential = credential.to_string();
        let token = token.clone();
        let reported = self.reported.clone();
        let codec = self.codec.clone();
        tokio::task::spawn_blocking(move || Self::save_blocking(&path, &credential, &token, &reported, &codec)).await?
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn accounts(&self, credential: &str) -> Result<Vec<String>, StoreError> {
        let path = self.path.clone();
        let credential = credential.to_string();
        tokio::task::spawn_blocking(move || accounts::list(&path, &credential)).await?
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
        .await?
    }

    async fn prepare(&self, _credentials: &[String]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let reported = self.reported.clone();
        let codec = self.codec.clone();
        tokio::task::spawn_blocking(move || Self::prepare_blocking(&path, &reported, &codec)).await?
    }

    fn key_id(&self, credential: &str) -> Option<String> {
        self.codec.kid_of(credential)
    }
}
