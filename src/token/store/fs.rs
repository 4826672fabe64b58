//! The file system as the file stores use it: a private directory checked before use,
//! no symbolic link followed, writes that are atomic and durable (exclusive temp file,
//! fsync, rename, fsync the directory), damaged files kept aside.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::recover::Contents;
use super::StoreError;

/// How many numbered copies of damaged state files are looked through for a free name
/// before saving gives up (a directory with that many is itself a problem to look at).
const MAX_DAMAGED_COPIES: u32 = 1000;

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
pub(super) fn remove_stale_temps(dir: &Path, path: &Path) {
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
