//! Unguessable values: OAuth `state`, PKCE verifiers and challenges, lock fencing tokens,
//! the mock's tokens. A leaf (it imports nothing of ours), so `login`, `token` and the
//! mock share it without importing each other.

use base64::Engine as _;
use sha2::Digest as _;

/// An unguessable URL-safe token of `bytes` random bytes (base64url, no padding).
pub(crate) fn token(bytes: usize) -> String {
    let buf: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// `BASE64URL(SHA256(verifier))` without padding (RFC 7636): the PKCE S256 challenge.
pub(crate) fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn tokens_differ_and_have_the_asked_length() {
        assert_ne!(token(24), token(24));
        assert_eq!(token(24).len(), 32);
    }
}
