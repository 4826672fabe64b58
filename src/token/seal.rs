//! Token records at rest (`state.encryption_keys`): AES-256-GCM envelopes.
//!
//! A sealed record is a JSON object `{"v":1,"kid":"…","nonce":"<b64>","ct":"<b64>"}`
//! plus any *public* fields the store needs in clear (the Redis save script compares the
//! record's `version`). The associated data binds the record to where it is stored — the
//! caller's `aad` (e.g. `file:goto`, `redis:<prefix>:goto`) — and to its public fields:
//! `aad || "\n" || canonical JSON of the public fields sorted by name`, so a record moved
//! to another credential or with an edited public field fails authentication.
//!
//! The first configured key seals; every key opens (rotation). `kid` is
//! [`crate::secret::key_id`]: a short fingerprint, never the key. Nonces are 96 random
//! bits from the OS for every seal; keys from [`generate_key`] come from the OS too.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::secret::{self, Secret};

/// The envelope version this build writes and reads.
const VERSION: u64 = 1;

/// Envelope fields of the format itself; a public field cannot take one of these names.
const RESERVED: [&str; 4] = ["v", "kid", "nonce", "ct"];

/// Bytes of an AES-GCM nonce (96 bits).
const NONCE_LEN: usize = 12;

/// Why a record could not be sealed or opened. Never holds key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The value is not a sealed envelope (not an object, or `v`/`kid`/`nonce`/`ct`
    /// missing or of the wrong shape).
    #[error("not a sealed record")]
    NotSealed,
    /// A sealed envelope of a version this build does not know.
    #[error("sealed record of unknown version {version}")]
    UnknownVersion {
        /// The envelope's `v`, as written.
        version: String,
    },
    /// No configured key has the envelope's key id.
    #[error("sealed with key id {kid}, which is not among the configured state.encryption_keys")]
    UnknownKey {
        /// The envelope's key id.
        kid: String,
    },
    /// The key matched by id did not authenticate the record: a wrong key, a tampered
    /// record, or a record moved from another credential or store.
    #[error("sealed record (key id {kid}) failed authentication: tampered, or not written for this credential")]
    Authentication {
        /// The envelope's key id.
        kid: String,
    },
    /// A configured key is not standard base64 of 32 bytes.
    #[error("state.encryption_keys[{position}]: expected base64 of 32 bytes (goto-auth-proxy keygen makes one)")]
    BadKey {
        /// The key's position in `state.encryption_keys`, from 0.
        position: usize,
    },
}

/// The configured state encryption keys: the first seals, every key opens.
pub struct Sealer {
    /// `(kid, cipher)`, the sealing key first.
    keys: Vec<(String, Aes256Gcm)>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer").field("kids", &self.kids()).finish()
    }
}

impl Sealer {
    /// From the configured secrets (base64 of 32 bytes each, standard alphabet with
    /// padding; also accepted without); `Err` names the position. An empty list is
    /// refused as `BadKey { position: 0 }`: with no key there is nothing to seal with.
    pub fn new(keys: &[Secret]) -> Result<Sealer, SealError> {
        if keys.is_empty() {
            return Err(SealError::BadKey { position: 0 });
        }
        let keys = keys
            .iter()
            .enumerate()
            .map(|(position, key)| {
                let bytes = secret::decode_state_key(key.expose()).ok_or(SealError::BadKey { position })?;
                let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| SealError::BadKey { position })?;
                Ok((secret::key_id(&bytes), cipher))
            })
            .collect::<Result<Vec<_>, SealError>>()?;
        Ok(Sealer { keys })
    }

    /// The key ids, first (sealing) key first: a short fingerprint, never the key.
    pub(crate) fn kids(&self) -> Vec<String> {
        self.keys.iter().map(|(kid, _)| kid.clone()).collect()
    }

    /// Seals `plaintext` for `aad` (e.g. `file:goto`, `redis:<prefix>:goto`) with a fresh
    /// random 96-bit nonce under the first key. The envelope is the bytes of a JSON
    /// object `{"v":1,"kid":"…","nonce":"<b64>","ct":"<b64>"}` plus the `public` fields
    /// in clear, which are authenticated too. A public field named `v`, `kid`, `nonce`
    /// or `ct` is ignored.
    pub fn seal(&self, aad: &str, plaintext: &[u8], public: &[(&str, Value)]) -> Vec<u8> {
        let public: BTreeMap<String, Value> = public
            .iter()
            .filter(|(name, _)| !RESERVED.contains(name))
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        let Some((kid, cipher)) = self.keys.first() else {
            // `new` refuses an empty key list, so a Sealer always has a first key.
            return Vec::new();
        };
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let associated = associated_data(aad, &public);
        // AES-GCM encryption fails only for a message over 64 GiB; a token record is
        // under a kilobyte. Should it ever fail, an empty `ct` fails to open: no plaintext
        // is ever written in its place.
        let ct = cipher.encrypt(&nonce, Payload { msg: plaintext, aad: &associated }).unwrap_or_default();
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut envelope = Map::new();
        envelope.insert("v".to_owned(), Value::from(VERSION));
        envelope.insert("kid".to_owned(), Value::from(kid.as_str()));
        envelope.insert("nonce".to_owned(), Value::from(b64.encode(nonce)));
        envelope.insert("ct".to_owned(), Value::from(b64.encode(ct)));
        envelope.extend(public);
        serde_json::to_vec(&Value::Object(envelope)).unwrap_or_default()
    }

    /// Opens an envelope given as the bytes of its JSON object; returns the plaintext
    /// and the kid that opened it.
    pub fn open(&self, aad: &str, envelope: &[u8]) -> Result<(Vec<u8>, String), SealError> {
        let value: Value = serde_json::from_slice(envelope).map_err(|_| SealError::NotSealed)?;
        self.open_value(aad, &value)
    }

    /// Opens an envelope already parsed; returns the plaintext and the kid that opened it.
    pub fn open_value(&self, aad: &str, envelope: &Value) -> Result<(Vec<u8>, String), SealError> {
        let Value::Object(fields) = envelope else { return Err(SealError::NotSealed) };
        let version = fields.get("v").ok_or(SealError::NotSealed)?;
        if version.as_u64() != Some(VERSION) {
            return Err(SealError::UnknownVersion { version: version.to_string() });
        }
        let kid = fields.get("kid").and_then(Value::as_str).ok_or(SealError::NotSealed)?;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let nonce = fields
            .get("nonce")
            .and_then(Value::as_str)
            .and_then(|n| b64.decode(n).ok())
            .filter(|n| n.len() == NONCE_LEN)
            .ok_or(SealError::NotSealed)?;
        let ct =
            fields.get("ct").and_then(Value::as_str).and_then(|c| b64.decode(c).ok()).ok_or(SealError::NotSealed)?;
        let (kid, cipher) =
            self.keys.iter().find(|(k, _)| k == kid).ok_or_else(|| SealError::UnknownKey { kid: kid.to_owned() })?;
        let public: BTreeMap<String, Value> = fields
            .iter()
            .filter(|(name, _)| !RESERVED.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let associated = associated_data(aad, &public);
        let plaintext = cipher
            .decrypt(Nonce::from_slice(&nonce), Payload { msg: &ct, aad: &associated })
            .map_err(|_| SealError::Authentication { kid: kid.clone() })?;
        Ok((plaintext, kid.clone()))
    }
}

/// The AEAD associated data: `aad`, a newline, then the public fields as canonical JSON
/// (an object with its names sorted; `{}` when there are none).
fn associated_data(aad: &str, public: &BTreeMap<String, Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(aad.len().saturating_add(64));
    out.extend_from_slice(aad.as_bytes());
    out.push(b'\n');
    // A BTreeMap serializes in name order whatever serde_json's own map ordering is.
    out.extend(serde_json::to_vec(public).unwrap_or_default());
    out
}

/// True when a stored record (JSON value) is a sealed envelope (has `v` and `ct`),
/// false for a plaintext record.
pub(crate) fn is_sealed(record: &Value) -> bool {
    record.get("v").is_some() && record.get("ct").is_some()
}

/// The kid of a sealed envelope, if it is one.
pub(crate) fn kid_of(record: &Value) -> Option<&str> {
    if is_sealed(record) {
        record.get("kid").and_then(Value::as_str)
    } else {
        None
    }
}

/// A new random key as `keygen` prints it: standard base64 with padding of 32 bytes
/// from the OS RNG.
pub fn generate_key() -> String {
    let key = Aes256Gcm::generate_key(&mut OsRng);
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(byte: u8) -> Secret {
        Secret::new(base64::engine::general_purpose::STANDARD.encode([byte; 32]))
    }

    fn sealer(bytes: &[u8]) -> Sealer {
        Sealer::new(&bytes.iter().map(|b| key(*b)).collect::<Vec<_>>()).unwrap()
    }

    const RECORD: &[u8] = br#"{"access_token":"at-secret","refresh_token":"rt-secret"}"#;

    fn envelope(s: &Sealer) -> Value {
        serde_json::from_slice(&s.seal("file:goto", RECORD, &[("obtained_at_ms", json!(1_700_000_000_000u64))]))
            .unwrap()
    }

    #[test]
    fn round_trip_with_public_fields_in_clear() {
        let s = sealer(&[1]);
        let bytes = s.seal("file:goto", RECORD, &[("obtained_at_ms", json!(42))]);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("secret"), "{text}");
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["v"], 1);
        assert_eq!(value["kid"], s.kids()[0].as_str());
        assert_eq!(value["obtained_at_ms"], 42);
        assert!(is_sealed(&value));
        assert_eq!(kid_of(&value), Some(s.kids()[0].as_str()));
        let (plain, kid) = s.open("file:goto", &bytes).unwrap();
        assert_eq!(plain, RECORD);
        assert_eq!(kid, s.kids()[0]);
        assert_eq!(s.open_value("file:goto", &value).unwrap().0, RECORD);
    }

    #[test]
    fn round_trip_without_public_fields() {
        let s = sealer(&[1]);
        let bytes = s.seal("redis:gap:goto", b"", &[]);
        assert_eq!(s.open("redis:gap:goto", &bytes).unwrap().0, b"");
    }

    #[test]
    fn every_seal_has_a_fresh_nonce() {
        let s = sealer(&[1]);
        let (a, b) = (envelope(&s), envelope(&s));
        assert_ne!(a["nonce"], b["nonce"]);
        assert_ne!(a["ct"], b["ct"]);
    }

    #[test]
    fn a_record_moved_to_another_credential_is_refused() {
        let s = sealer(&[1]);
        let value = envelope(&s);
        assert!(matches!(s.open_value("file:other", &value), Err(SealError::Authentication { .. })));
        assert!(matches!(s.open_value("redis:gap:goto", &value), Err(SealError::Authentication { .. })));
    }

    fn flip_b64(field: &str) -> String {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut bytes = b64.decode(field).unwrap();
        bytes[0] ^= 1;
        b64.encode(bytes)
    }

    #[test]
    fn one_flipped_byte_is_refused() {
        let s = sealer(&[1]);
        let value = envelope(&s);
        for field in ["ct", "nonce"] {
            let mut tampered = value.clone();
            tampered[field] = json!(flip_b64(value[field].as_str().unwrap()));
            assert!(matches!(s.open_value("file:goto", &tampered), Err(SealError::Authentication { .. })), "{field}");
        }
        let mut tampered = value.clone();
        tampered["obtained_at_ms"] = json!(1_700_000_000_001u64);
        assert!(matches!(s.open_value("file:goto", &tampered), Err(SealError::Authentication { .. })));
        let mut added = value.clone();
        added["extra"] = json!(true);
        assert!(matches!(s.open_value("file:goto", &added), Err(SealError::Authentication { .. })));
        let mut removed = value.clone();
        removed.as_object_mut().unwrap().remove("obtained_at_ms");
        assert!(matches!(s.open_value("file:goto", &removed), Err(SealError::Authentication { .. })));
    }

    #[test]
    fn the_first_key_seals_and_an_old_key_still_opens() {
        let old = sealer(&[1]);
        let rotated = sealer(&[2, 1]);
        assert_eq!(rotated.kids(), vec![secret::key_id(&[2; 32]), secret::key_id(&[1; 32])]);
        let (plain, kid) = rotated.open_value("file:goto", &envelope(&old)).unwrap();
        assert_eq!(plain, RECORD);
        assert_eq!(kid, old.kids()[0]);
        let fresh = envelope(&rotated);
        assert_eq!(kid_of(&fresh), Some(rotated.kids()[0].as_str()));
        assert!(
            matches!(old.open_value("file:goto", &fresh), Err(SealError::UnknownKey { kid }) if kid == rotated.kids()[0])
        );
    }

    #[test]
    fn a_wrong_key_with_a_forged_kid_fails_authentication() {
        let s = sealer(&[1]);
        let mut value = envelope(&sealer(&[2]));
        value["kid"] = json!(s.kids()[0]);
        assert!(matches!(s.open_value("file:goto", &value), Err(SealError::Authentication { .. })));
    }

    #[test]
    fn plaintext_records_and_unknown_versions_are_told_apart() {
        let s = sealer(&[1]);
        let plain = json!({"access_token": "x", "obtained_at_ms": 1});
        assert!(!is_sealed(&plain));
        assert_eq!(kid_of(&plain), None);
        assert!(matches!(s.open_value("file:goto", &plain), Err(SealError::NotSealed)));
        assert!(matches!(s.open("file:goto", b"not json"), Err(SealError::NotSealed)));
        let mut v2 = envelope(&s);
        v2["v"] = json!(2);
        assert!(matches!(s.open_value("file:goto", &v2), Err(SealError::UnknownVersion { version }) if version == "2"));
        let mut short = envelope(&s);
        short["nonce"] = json!("AAAA");
        assert!(matches!(s.open_value("file:goto", &short), Err(SealError::NotSealed)));
    }

    #[test]
    fn public_fields_cannot_override_the_envelope() {
        let s = sealer(&[1]);
        let bytes = s.seal("file:goto", RECORD, &[("kid", json!("forged")), ("v", json!(9))]);
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["kid"], s.kids()[0].as_str());
        assert_eq!(s.open("file:goto", &bytes).unwrap().0, RECORD);
    }

    #[test]
    fn bad_keys_are_refused_naming_their_position() {
        let b64 = &base64::engine::general_purpose::STANDARD;
        for bad in [Secret::new("not base64!"), Secret::new(b64.encode([0u8; 31])), Secret::new(b64.encode([0u8; 33]))]
        {
            let err = Sealer::new(&[key(1), bad]).unwrap_err();
            assert!(matches!(err, SealError::BadKey { position: 1 }), "{err:?}");
            assert!(err.to_string().starts_with("state.encryption_keys[1]: expected base64 of 32 bytes"), "{err}");
        }
        assert!(matches!(Sealer::new(&[]), Err(SealError::BadKey { position: 0 })));
        let unpadded = Secret::new(b64.encode([1u8; 32]).trim_end_matches('=').to_owned());
        assert_eq!(Sealer::new(&[unpadded]).unwrap().kids(), sealer(&[1]).kids());
    }

    #[test]
    fn debug_shows_key_ids_never_keys() {
        let s = sealer(&[1, 2]);
        let shown = format!("{s:?}");
        assert!(shown.contains(&s.kids()[0]) && shown.contains(&s.kids()[1]), "{shown}");
        assert!(!shown.contains(key(1).expose()) && !shown.contains("1, 1, 1"), "{shown}");
    }

    #[test]
    fn generated_keys_are_fresh_and_usable() {
        let (a, b) = (generate_key(), generate_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 44);
        assert!(a.ends_with('='));
        let s = Sealer::new(&[Secret::new(a)]).unwrap();
        assert_eq!(s.open("file:goto", &s.seal("file:goto", RECORD, &[])).unwrap().0, RECORD);
    }
}
