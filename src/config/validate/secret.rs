//! Secrets: a literal, an environment variable or a secret file, resolved once at load.

use std::ops::Range;

use toml::Spanned;

use super::super::error::{ConfigError, Locator};
use super::super::raw::RawSecret;
use crate::secret::Secret;

/// A secret's value: the literal, the environment variable's value, or the secret
/// file's text without its final line break; never empty. One that cannot be read is
/// noted in the locator (every such secret is reported together) and stands in as a
/// placeholder meanwhile.
pub(super) fn resolve_secret(loc: &Locator<'_>, s: &Spanned<RawSecret>, key: &str) -> Result<Secret, ConfigError> {
    // The variable's name and the file's path say where the secret is; they are not it.
    let (value, source) = match s.get_ref() {
        RawSecret::Literal(v) => (v.clone(), String::new()),
        RawSecret::Env { env } => match std::env::var(env) {
            Ok(v) => (v, format!(" (environment variable {env})")),
            Err(e) => {
                let why = match e {
                    std::env::VarError::NotPresent => "is not set",
                    std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
                };
                return Ok(loc.missing(&s.span(), key, format!("environment variable {env} {why}")));
            }
        },
        RawSecret::File { file } => {
            loc.read_file(file);
            return match read_secret_file(file) {
                Ok(text) => {
                    warn_if_others_read(loc, &s.span(), key, file);
                    Ok(text)
                }
                Err(SecretFileError::Read(e)) => {
                    Ok(loc.missing(&s.span(), key, format!("cannot read secret file {}: {e}", file.display())))
                }
                Err(SecretFileError::Empty) => {
                    Err(loc.err(&s.span(), key, format!("is empty (secret file {})", file.display())))
                }
            };
        }
    };
    if value.is_empty() {
        return Err(loc.err(&s.span(), key, format!("is empty{source}")));
    }
    Ok(Secret::new(value))
}

/// Why a secret file gave no secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretFileError {
    /// It could not be read (or is not UTF-8).
    #[error("{0}")]
    Read(#[from] std::io::Error),
    /// It holds nothing but a line break.
    #[error("is empty")]
    Empty,
}

/// A secret file's text without its final line break (`\n` or `\r\n`); never empty.
/// The one reading of a `{ file = … }` secret, at load and when a refused token call
/// reads it again.
pub(crate) fn read_secret_file(file: &std::path::Path) -> Result<Secret, SecretFileError> {
    let text = std::fs::read_to_string(file)?;
    let value = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if value.is_empty() {
        return Err(SecretFileError::Empty);
    }
    Ok(Secret::new(value))
}

/// Warns (not refuses: container runtimes often mount secrets 0644) when the key or
/// secret file `path` is readable by its group or by everyone. The warning names the
/// file and its mode, never what it holds.
pub(super) fn warn_if_others_read(loc: &Locator<'_>, span: &Range<usize>, key: &str, path: &std::path::Path) {
    if let Some(mode) = readable_by_others(path) {
        let message = format!(
            "{} is readable by other users (mode {mode:04o}); only the proxy's own user should read it (chmod 600)",
            path.display()
        );
        loc.warn(span, key, message);
    }
}

/// The permission bits of `path` (the file a symbolic link points at) when its group or
/// everyone may read it.
#[cfg(unix)]
fn readable_by_others(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}

/// Elsewhere files carry no such bits.
#[cfg(not(unix))]
fn readable_by_others(_path: &std::path::Path) -> Option<u32> {
    None
}
