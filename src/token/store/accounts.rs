//! The file store's account records: one file per account, so renewing one account
//! writes one small file whether the credential holds 10 accounts or 10,000.
//!
//! Layout, beside the state file (`state.path` = `<dir>/state.json`):
//!
//! * `<dir>/state.json.accounts/` — 0700, refused (like the state directory) when other
//!   users can write to it or when it is a symbolic link;
//! * `…/<credential>/` — one directory per account credential, 0700, same checks;
//! * `…/<credential>/<account>.json` — the account's record: the same JSON as a record of
//!   the state file (a [`super::StoredToken`], or with `state.encryption_keys` its sealed
//!   envelope with the associated data `file:<credential>/<account>`, so a file moved to
//!   another account's name does not open). Written like the state file: temp file
//!   `.<account>.json.tmp.<random>` created exclusively (0600, never through a link),
//!   fsync, rename, fsync the directory;
//! * `…/<credential>/.lock` — the writers' lock of that credential's accounts: a save
//!   compares versions and writes under it, so a `login` in another process and the
//!   running proxy never undo each other's tokens;
//! * `…/<credential>/<account>.json.damaged.<N>` — a damaged record, kept aside before it
//!   is replaced (never overwritten).
//!
//! Names follow the name rule (letters, digits, `_`, `-`, `.`), so a record file always
//! ends in `.json` and nothing else does: listing needs no record to be opened.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::fs::{
    check_dir, create_private_dir, io_error, keep_damaged_copy, open_no_follow, read_state, state_dir, suffixed,
    sync_dir, write_atomically,
};
use super::recover::{file_aad, Contents};
use super::sealing::{Codec, Decoded, RecordState};
use super::{next_version, Saved, StoreError, StoredToken};
use crate::config::is_valid_name;

/// What every record file's name ends with.
const RECORD_SUFFIX: &str = ".json";

/// A record file as read: its bytes, the token they hold (`None`: damaged) and what
/// they are.
type OnDisk = (Vec<u8>, Option<Decoded>, RecordState);

/// One account record's place in the file store.
pub(super) struct AccountFile {
    /// `"{credential}/{account}"`: the record's key (and associated data).
    key: String,
    /// The credential's name, for logs.
    credential: String,
    /// The account's name, for logs.
    account: String,
    /// The credential's directory.
    dir: PathBuf,
    /// `<dir>/<account>.json`.
    path: PathBuf,
}

/// `<state path>.accounts`: where account records live.
fn root(state: &Path) -> PathBuf {
    suffixed(state, ".accounts")
}

/// The directory of `credential`'s accounts; `None` when the name breaks the rule (it
/// could name another place).
fn credential_dir(state: &Path, credential: &str) -> Option<PathBuf> {
    is_valid_name(credential).then(|| root(state).join(credential))
}

impl AccountFile {
    /// The place of the record at `key` (`"{credential}/{account}"`); refused when either
    /// name breaks the rule.
    pub(super) fn new(state: &Path, credential: &str, account: &str) -> Result<AccountFile, StoreError> {
        let dir = credential_dir(state, credential).filter(|_| is_valid_name(account)).ok_or_else(|| {
            StoreError::Backend(format!(
                "{credential:?}/{account:?} is not an account record's key: {}",
                crate::config::NAME_RULE
            ))
        })?;
        let path = dir.join(format!("{account}{RECORD_SUFFIX}"));
        Ok(AccountFile {
            key: super::account_key(credential, account),
            credential: credential.to_string(),
            account: account.to_string(),
            dir,
            path,
        })
    }

    /// The record as it is on disk: its bytes, what they hold and what they are.
    fn read(&self, codec: &Codec) -> Result<Option<OnDisk>, StoreError> {
        let bytes = match read_state(&self.path) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            // A link where a record belongs is never followed: that record is damaged.
            Err(StoreError::SymlinkedState { .. } | StoreError::NotAFile { .. }) => {
                return Ok(Some((Vec::new(), None, RecordState::Malformed)))
            }
            Err(e) => return Err(e),
        };
        let (decoded, state) = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(value) => codec.decode(&file_aad(&self.key), &value),
            Err(_) => (None, RecordState::Malformed),
        };
        Ok(Some((bytes, decoded, state)))
    }

    /// Runs `f` under the credential's writers' lock, its directories created private
    /// and checked first (every time: someone may have changed them since the start).
    fn locked<T>(&self, state: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let _lock = lock_dir(state, &self.dir)?;
        f()
    }

    /// `load` of an account record: `None` (an error logged once) when it is damaged.
    pub(super) fn load(
        &self,
        state: &Path,
        reported: &Mutex<BTreeSet<String>>,
        codec: &Codec,
        store: &str,
    ) -> Result<Option<StoredToken>, StoreError> {
        match self.read(codec)? {
            None => {
                codec.note(&self.key, None);
                Ok(None)
            }
            Some((_, Some((token, kid)), record_state)) => {
                codec.note(&self.key, kid);
                if codec.is_plaintext_under_keys(&record_state) {
                    self.reseal(state, codec, &token, store)?;
                }
                Ok(Some(token))
            }
            Some((_, None, record_state)) => {
                codec.note(&self.key, None);
                let first = reported.lock().map(|mut r| r.insert(self.key.clone())).unwrap_or(true);
                if !first {
                    tracing::debug!(credential = %self.credential, account = %self.account, path = %self.path.display(), "account record still damaged; no token stored for this account");
                } else if let RecordState::Unopenable { kid } = record_state {
                    tracing::error!(
                        credential = %self.credential, account = %self.account,
                        path = %self.path.display(),
                        sealed_with = kid.as_deref().unwrap_or("unknown"),
                        key_ids_tried = ?codec.kids(),
                        "the stored record of this account is encrypted and does not open with state.encryption_keys \
                         (damaged, or not written for this account): it starts with no token; \
                         the file is copied aside (<path>.damaged.<N>) when it is next written"
                    );
                } else {
                    tracing::error!(
                        credential = %self.credential, account = %self.account,
                        path = %self.path.display(),
                        "the stored record of this account is damaged: it starts with no token; \
                         the file is copied aside (<path>.damaged.<N>) when it is next written"
                    );
                }
                Ok(None)
            }
        }
    }

    /// Compare-and-write of the record under the credential's lock (see
    /// [`super::TokenStore::save`]): one file written, whatever the number of accounts.
    pub(super) fn save(
        &self,
        state: &Path,
        token: &StoredToken,
        reported: &Mutex<BTreeSet<String>>,
        codec: &Codec,
    ) -> Result<Saved, StoreError> {
        self.locked(state, || {
            let found = self.read(codec)?;
            let (stored, current) = match &found {
                Some((_, Some((t, _)), _)) => (t.version, Some(t.clone())),
                _ => (0, None),
            };
            if token.version != stored {
                return Ok(Saved::Stale { current, version: stored });
            }
            if let Some((bytes, None, _)) = &found {
                let contents = Contents { malformed: [self.key.clone()].into(), ..Contents::default() };
                keep_damaged_copy(&self.path, &self.dir, bytes, &contents)?;
            }
            let version = next_version(stored);
            self.write(codec, &StoredToken { version, ..token.clone() })?;
            if let Ok(mut r) = reported.lock() {
                r.remove(&self.key);
            }
            Ok(Saved::Stored(version))
        })
    }

    /// Writes `token` (its version set) sealed with the first key; the lock is held.
    fn write(&self, codec: &Codec, token: &StoredToken) -> Result<(), StoreError> {
        let value = codec.encode(&file_aad(&self.key), token)?;
        let bytes = serde_json::to_vec(&value)?;
        write_atomically(&self.path, &self.dir, &bytes)?;
        codec.note(&self.key, codec.current_kid());
        Ok(())
    }

    /// Writes the record back sealed with the first key, at the same version, if it is
    /// still `token` and needs it (plaintext, or sealed with an older key).
    fn reseal(&self, state: &Path, codec: &Codec, token: &StoredToken, store: &str) -> Result<(), StoreError> {
        self.locked(state, || {
            let Some((_, Some((now, _)), record_state)) = self.read(codec)? else { return Ok(()) };
            if now.version != token.version || !codec.needs_reseal(&record_state) {
                return Ok(());
            }
            self.write(codec, &now)?;
            if record_state == RecordState::Plain {
                codec.warn_plaintext(&self.key, store);
            }
            Ok(())
        })
    }

    /// Deletes the record under the credential's lock; durable when it returns.
    pub(super) fn remove(
        &self,
        state: &Path,
        codec: &Codec,
        reported: &Mutex<BTreeSet<String>>,
    ) -> Result<(), StoreError> {
        if !self.dir.exists() {
            return Ok(());
        }
        self.locked(state, || {
            match std::fs::remove_file(&self.path) {
                Ok(()) => sync_dir(&self.dir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&self.path, e)),
            }
            codec.note(&self.key, None);
            if let Ok(mut r) = reported.lock() {
                r.remove(&self.key);
            }
            Ok(())
        })
    }
}

/// Refuses the account records' directory when it exists and is a link, not a
/// directory, or writable by other users (checked at start, and again at every write).
pub(super) fn check_root(state: &Path) -> Result<(), StoreError> {
    let root = root(state);
    match std::fs::symlink_metadata(&root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(&root, e)),
        Ok(_) => real_private_dir(&root),
    }
}

/// `dir` is a directory (not a link to one) that no other user can write to.
fn real_private_dir(dir: &Path) -> Result<(), StoreError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| io_error(dir, e))?;
    if !meta.is_dir() {
        return Err(io_error(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a directory (a symbolic link or a file where the proxy keeps account records): move it away",
            ),
        ));
    }
    check_dir(dir)
}

/// Takes the writers' lock of the account directory `dir` (created 0700 with its parent
/// when missing; refused when it, its parent or the state directory is unsafe). Held
/// until the file is dropped.
fn lock_dir(state: &Path, dir: &Path) -> Result<File, StoreError> {
    check_dir(&state_dir(state))?;
    // One level at a time, each checked before anything is created inside it.
    for d in [root(state).as_path(), dir] {
        create_private_dir(d)?;
        real_private_dir(d)?;
    }
    let lock_path = dir.join(".lock");
    let lock = open_no_follow(&lock_path, OpenOptions::new().create(true).truncate(false).write(true))
        .map_err(|e| io_error(&lock_path, e))?;
    lock.lock().map_err(|e| io_error(&lock_path, e))?;
    Ok(lock)
}

/// The accounts stored under `credential`, sorted (names of record files; none opened).
pub(super) fn list(state: &Path, credential: &str) -> Result<Vec<String>, StoreError> {
    let Some(dir) = credential_dir(state, credential) else { return Ok(Vec::new()) };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(&dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(&dir, e))?;
        let name = entry.file_name();
        if let Some(account) = name.to_str().and_then(|n| n.strip_suffix(RECORD_SUFFIX)) {
            if is_valid_name(account) {
                names.push(account.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Every credential with an account directory, sorted.
fn credentials(state: &Path) -> Result<Vec<String>, StoreError> {
    let root = root(state);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(&root, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(&root, e))?;
        if let Some(name) = entry.file_name().to_str() {
            if is_valid_name(name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// The start-up read of every account record: what each is (for the key verdict), and
/// the records to write again sealed with the first key.
pub(super) struct Survey {
    /// Key → what its record is.
    pub(super) states: BTreeMap<String, RecordState>,
    /// Records that need sealing again, per credential.
    reseal: BTreeMap<String, Vec<(String, StoredToken)>>,
}

/// Reads every account record of the store (no lock: a record is replaced by rename, so
/// a read sees a whole one). Nothing is written.
pub(super) fn survey(state: &Path, codec: &Codec) -> Result<Survey, StoreError> {
    let mut out = Survey { states: BTreeMap::new(), reseal: BTreeMap::new() };
    for credential in credentials(state)? {
        for account in list(state, &credential)? {
            let file = AccountFile::new(state, &credential, &account)?;
            let Some((_, decoded, record_state)) = file.read(codec)? else { continue };
            if let Some((token, kid)) = decoded {
                codec.note(&file.key, kid);
                if codec.needs_reseal(&record_state) {
                    out.reseal.entry(credential.clone()).or_default().push((account, token));
                }
            }
            out.states.insert(file.key, record_state);
        }
    }
    Ok(out)
}

/// After the key verdict passed: per account directory, under its lock, removes temp
/// files a killed writer left behind, and seals again what the survey found needing it.
pub(super) fn tidy(state: &Path, codec: &Codec, survey: &Survey, store: &str) -> Result<(), StoreError> {
    for credential in credentials(state)? {
        let Some(dir) = credential_dir(state, &credential) else { continue };
        let lock = lock_dir(state, &dir)?;
        remove_stale_temps(&dir);
        drop(lock);
    }
    let mut sealed = 0usize;
    for (credential, records) in &survey.reseal {
        for (account, token) in records {
            AccountFile::new(state, credential, account)?.reseal(state, codec, token, store)?;
            sealed = sealed.saturating_add(1);
        }
    }
    if sealed > 0 {
        tracing::info!(
            store,
            records = sealed,
            key_id = codec.current_kid().as_deref().unwrap_or(""),
            "account records encrypted with the first of state.encryption_keys"
        );
    }
    Ok(())
}

/// Removes every temp file of a record in `dir` (`.<account>.json.tmp.<hex>`); called
/// under the directory's lock, so each belongs to a writer that died. Best effort.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // `.<account>.json.tmp.<16 hex>`: no record (`….json`) nor damaged copy ends so.
        let is_temp = name.starts_with('.')
            && name
                .rsplit_once(".json.tmp.")
                .is_some_and(|(_, hex)| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if is_temp && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed a temp file left by an interrupted write");
        }
    }
}
