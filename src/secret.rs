//! A string that must never be printed: client secrets, passwords, PATs, tokens, keys.
//!
//! `Debug` and `Display` both print `[redacted]`, so a secret that slips into a
//! `tracing` field, an error message or `check` output leaks nothing. The only way to
//! the value is [`Secret::expose`], which is easy to grep for.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use sha2::Digest as _;

/// A redacting wrapper around a secret string; cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a value that must not be shown.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for the one place that has to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

/// Length in bytes of a state encryption key (`state.encryption_keys`, AES-256).
pub(crate) const STATE_KEY_LEN: usize = 32;

/// Decodes a state encryption key: standard base64 of exactly [`STATE_KEY_LEN`] bytes,
/// with or without padding (surrounding whitespace ignored). `None` when it is not one;
/// the value is never echoed. Shared by `config` (validation) and `token::seal`.
pub(crate) fn decode_state_key(encoded: &str) -> Option<[u8; STATE_KEY_LEN]> {
    let encoded = encoded.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
        .ok()?;
    <[u8; STATE_KEY_LEN]>::try_from(bytes.as_slice()).ok()
}

/// The key id of a state encryption key: the first 8 hex digits of
/// `SHA-256("goto-auth-proxy state key v1" || key)`. A short, domain-separated
/// fingerprint safe to show (`check`, `/tokens`, the envelope's `kid`), never the key.
pub(crate) fn key_id(key_bytes: &[u8]) -> String {
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"goto-auth-proxy state key v1");
    hasher.update(key_bytes);
    let digest = hasher.finalize();
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn state_keys_decode_only_at_32_bytes() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(decode_state_key(&key), Some([7u8; 32]));
        assert_eq!(decode_state_key(key.trim_end_matches('=')), Some([7u8; 32]));
        assert_eq!(decode_state_key(&format!(" {key}\n")), Some([7u8; 32]));
        assert_eq!(decode_state_key(&base64::engine::general_purpose::STANDARD.encode([7u8; 31])), None);
        assert_eq!(decode_state_key(&base64::engine::general_purpose::STANDARD.encode([7u8; 33])), None);
        assert_eq!(decode_state_key("not base64!"), None);
    }

    #[test]
    fn key_ids_are_short_stable_and_distinct() {
        let a = key_id(&[1u8; 32]);
        assert_eq!(a.len(), 8);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, key_id(&[1u8; 32]));
        assert_ne!(a, key_id(&[2u8; 32]));
    }
}
