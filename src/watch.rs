//! Watching the configuration's files (`proxy.watch_files`): a change to the config file
//! or to a file it names (a rotated secret, a new CA) is noticed without a signal, and
//! `app` reloads as `SIGHUP` does.
//!
//! Directories are watched, not files: Kubernetes updates a mounted Secret or ConfigMap by
//! swapping the `..data` symlink to a new directory, and editors write a temporary file
//! and rename it over the old one; neither writes to the file a watch on it would follow.
//! For a file reached through symbolic links, the directory it really lives in is
//! watched too, so an edit at the end of the links is seen.
//!
//! notify (inotify on Linux, FSEvents on macOS, ReadDirectoryChangesW on Windows) reports
//! a directory's events — writes, creations, renames, removals; not reads, so the proxy
//! reading its own files wakes nothing — and notify-debouncer-full hands each on once it
//! is [`DEBOUNCE`] old, a batch per tick (a quarter of that) while writes go on.
//! [`FileWatch::settled`] then waits until no batch has come for [`SETTLE`], so a burst
//! of writes — an editor's temporary files, a script writing a hundred times — makes one
//! reload once it stops. A change is applied about half a second after the last write
//! (0.5–0.6 s measured by the integration tests; a change must apply within 2 s).
//!
//! Only events about the watched files count ([`Interest::covers`]): other files in a
//! watched directory (`/etc` holds many; a state file may sit beside the config) wake
//! nothing, so they can neither start a reload in the middle of a burst nor cost one.
//! Whether anything changed is then decided by content, not by the events:
//! [`fingerprint`] of every watched file, so a `touch` or the same bytes written again
//! reload nothing.
//!
//! Of the crate, this module uses nothing: `app` gives it paths and acts on its wake-ups.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use sha2::Digest as _;

/// How old an event is when the debouncer hands it on (its timeout); while writes go on,
/// a batch comes every quarter of this.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(200);

/// How long no batch may come before a reload: six of the debouncer's ticks, so a burst
/// of writes (to one file, or to temporary files renamed into place) makes one reload.
pub(crate) const SETTLE: Duration = Duration::from_millis(300);

/// Symbolic links followed, at most, from a watched file to the directory it lives in.
const MAX_LINKS: usize = 16;

/// Why a directory could not be watched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WatchError {
    /// The operating system's watch could not be set up at all.
    #[error("cannot watch files: {0}")]
    Start(notify_debouncer_full::notify::Error),
    /// One directory could not be watched (gone, not readable, inotify's limit reached).
    #[error("cannot watch {}: {why}", dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What the operating system said.
        why: notify_debouncer_full::notify::Error,
    },
}

/// A watch on the directories of a set of files; wakes [`FileWatch::settled`] when any
/// of them changes.
pub(crate) struct FileWatch {
    debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    /// What is watched now; the debouncer's thread reads it to pass on only events about
    /// these files (a state file or a log beside the config wakes nothing).
    interest: Arc<ArcSwap<Interest>>,
    /// One wake-up per debounced batch (capacity 1: a pending wake-up covers the next).
    wakes: tokio::sync::mpsc::Receiver<()>,
}

impl FileWatch {
    /// A watch on nothing yet; [`FileWatch::watch`] says what to watch.
    pub(crate) fn new() -> Result<FileWatch, WatchError> {
        let (tx, wakes) = tokio::sync::mpsc::channel(1);
        let interest = Arc::new(ArcSwap::from_pointee(Interest::default()));
        let seen_by = interest.clone();
        let debouncer = new_debouncer(DEBOUNCE, None, move |batch: DebounceEventResult| match batch {
            Ok(events) => {
                let interest = seen_by.load();
                if events.iter().flat_map(|e| e.paths.iter()).any(|p| interest.covers(p)) {
                    // Full: a wake-up is pending already, and it covers this batch.
                    let _ = tx.try_send(());
                }
            }
            Err(errors) => errors.iter().for_each(|e| tracing::warn!(error = %e, "file watch error")),
        })
        .map_err(WatchError::Start)?;
        Ok(FileWatch { debouncer, interest, wakes })
    }

    /// Watches `files` — their directories ([`Interest::of`]) — and no longer the files
    /// watched before; returns the directories that could not be watched.
    pub(crate) fn watch(&mut self, files: &[PathBuf]) -> Vec<WatchError> {
        let mut wanted = Interest::of(files);
        let before = self.interest.load_full();
        for gone in before.dirs.difference(&wanted.dirs) {
            // A directory that vanished (an old `..2026_…`) is unwatched already.
            let _ = self.debouncer.unwatch(gone);
        }
        let mut failed = Vec::new();
        wanted.dirs.retain(|dir| {
            if before.dirs.contains(dir) {
                return true;
            }
            match self.debouncer.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => true,
                Err(e) => {
                    failed.push(WatchError::Dir { dir: dir.clone(), why: e });
                    false
                }
            }
        });
        self.interest.store(Arc::new(wanted));
        failed
    }

    /// The directories watched now.
    pub(crate) fn dirs(&self) -> BTreeSet<PathBuf> {
        self.interest.load().dirs.clone()
    }

    /// Waits for a change to a watched file, then until no further change has come for
    /// [`SETTLE`]. `None` when the watch has stopped.
    pub(crate) async fn settled(&mut self) -> Option<()> {
        self.wakes.recv().await?;
        loop {
            match tokio::time::timeout(SETTLE, self.wakes.recv()).await {
                Err(_quiet) => return Some(()),
                Ok(Some(())) => continue,
                Ok(None) => return None,
            }
        }
    }
}

/// What a watch on some files looks at: directories, and the paths in them whose events
/// matter.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Interest {
    /// Watched: each file's directory as written (where a rename or a `..data` swap
    /// happens) and, for a file reached through symbolic links, the directory of each
    /// link's target and of the file it ends at (where an edit at the end happens).
    pub(crate) dirs: BTreeSet<PathBuf>,
    /// The files as written, each link on the way and the file they end at.
    pub(crate) paths: BTreeSet<PathBuf>,
}

impl Interest {
    /// The interest of `files`; relative paths are taken from the current directory.
    pub(crate) fn of(files: &[PathBuf]) -> Interest {
        let mut out = Interest::default();
        for file in files {
            let Ok(mut at) = std::path::absolute(file) else { continue };
            for _ in 0..MAX_LINKS {
                out.note(&at);
                let Ok(target) = std::fs::read_link(&at) else { break };
                at = match at.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                };
            }
            if let Ok(real) = std::fs::canonicalize(file) {
                out.note(&real);
            }
        }
        out
    }

    fn note(&mut self, path: &Path) {
        self.paths.insert(path.to_path_buf());
        if let Some(dir) = path.parent() {
            self.dirs.insert(dir.to_path_buf());
        }
    }

    /// Whether an event about `path` may change a watched file: one of [`Interest::paths`]
    /// (written, created, removed, renamed to or from), or, in a watched directory, a
    /// name beginning with `..` — Kubernetes' atomic writer (`..data`, `..data_tmp`,
    /// `..2026_…`), which swaps every file of a volume at once.
    pub(crate) fn covers(&self, path: &Path) -> bool {
        let kubelet = path.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b".."))
            && path.parent().is_some_and(|d| self.dirs.contains(d));
        kubelet || self.paths.contains(path)
    }
}

/// A digest of what `files` hold now (a file that cannot be read counts as its error's
/// kind): equal digests, nothing to reload. The contents never leave this function.
pub(crate) fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut hasher = sha2::Sha256::new();
    for file in files {
        hasher.update(file.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        match std::fs::read(file) {
            Ok(bytes) => {
                hasher.update(b"ok");
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
            Err(e) => hasher.update(format!("error {:?}", e.kind()).as_bytes()),
        }
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_kubernetes_secret_volume_watches_the_volume_and_the_current_data_directory() {
        let vol = tempfile::tempdir().unwrap();
        let v = vol.path();
        std::fs::create_dir(v.join("..2026_01_01_00_00_00.1")).unwrap();
        std::fs::write(v.join("..2026_01_01_00_00_00.1/client_secret"), "one\n").unwrap();
        std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", v.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/client_secret", v.join("client_secret")).unwrap();
        let interest = Interest::of(&[v.join("client_secret")]);
        let real = std::fs::canonicalize(v).unwrap();
        let dirs = &interest.dirs;
        assert!(dirs.contains(v), "the volume itself, where ..data is swapped: {dirs:?}");
        assert!(dirs.contains(&real.join("..2026_01_01_00_00_00.1")), "{dirs:?}");
        // The kubelet's swap: a new directory, `..data_tmp`, renamed over `..data`.
        for name in ["..data", "..data_tmp", "..2026_01_01_00_00_00.2", "client_secret"] {
            assert!(interest.covers(&v.join(name)), "{name}");
        }
        assert!(!interest.covers(&v.join("other_key")), "another key of the volume is not ours");
        assert!(!interest.covers(Path::new("/elsewhere/..data")), "only in a watched directory");
    }

    #[test]
    fn a_plain_file_watches_its_directory_for_itself_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.toml"), "x").unwrap();
        let interest = Interest::of(&[d.path().join("a.toml")]);
        let real = std::fs::canonicalize(d.path()).unwrap();
        let expected: BTreeSet<PathBuf> = [d.path().to_path_buf(), real].into_iter().collect();
        assert_eq!(interest.dirs, expected);
        assert!(interest.covers(&d.path().join("a.toml")));
        assert!(!interest.covers(&d.path().join("state.json")), "a state file beside the config wakes nothing");
        assert!(!interest.covers(&d.path().join("a.toml.tmp~")), "an editor's temporary file: its rename is");
    }

    #[test]
    fn the_fingerprint_follows_content_not_time() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("s");
        std::fs::write(&f, "one").unwrap();
        let files = [f.clone()];
        let a = fingerprint(&files);
        std::fs::write(&f, "one").unwrap();
        assert_eq!(a, fingerprint(&files), "the same bytes written again change nothing");
        std::fs::write(&f, "two").unwrap();
        assert_ne!(a, fingerprint(&files));
        std::fs::remove_file(&f).unwrap();
        assert_ne!(a, fingerprint(&files), "a file gone is a change");
    }
}
