//! Token records at rest: sealed with the first of `state.encryption_keys` when keys are
//! configured ([`crate::token::seal`]), read back with any of them; a plaintext record
//! (written before keys were configured) is still read, and sealed at its next write.
//! The associated data binds a record to its place (`file:<credential>`,
//! `redis:<prefix>:<credential>`), so a record copied to another credential does not open.
//!
//! A plaintext record read while keys are configured (written before them, or planted)
//! is logged as a warning naming its credential and written back sealed at once, by the
//! store that read it ([`Codec::warn_plaintext`]).
//!
//! Both stores use the same [`Codec`]; the start-up check ([`verdict`]) is the same too:
//! sealed records that no key opens are a wrong (or missing) key when none of the sealed
//! records opens — `run` stops and nothing is written — and a damaged record otherwise.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::{version_in, StoreError, StoredToken};
use crate::token::seal::{self, Sealer};

/// What a stored record turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordState {
    /// A plaintext record (written without keys).
    Plain,
    /// A sealed record that opened, with the key id that opened it.
    Sealed {
        /// The key id.
        kid: String,
    },
    /// A sealed record that no configured key opens (or no key is configured).
    Unopenable {
        /// The key id the envelope names, if any.
        kid: Option<String>,
    },
    /// Neither a stored token nor an envelope.
    Malformed,
}

/// A record read: the token, and the key id of its envelope (`None`: plaintext).
pub(crate) type Decoded = (StoredToken, Option<String>);

/// Seals and opens records, and remembers which key id each credential's record uses
/// (for `/tokens`).
#[derive(Default)]
pub(crate) struct Codec {
    sealer: Option<Arc<Sealer>>,
    kids: Mutex<HashMap<String, Option<String>>>,
}

impl Codec {
    /// A codec sealing with `sealer`'s first key; `None`: records are written in plaintext.
    pub(crate) fn new(sealer: Option<Arc<Sealer>>) -> Codec {
        Codec { sealer, kids: Mutex::default() }
    }

    /// The key id new records are sealed with.
    pub(crate) fn current_kid(&self) -> Option<String> {
        self.sealer.as_ref().and_then(|s| s.kids().into_iter().next())
    }

    /// Every configured key id, the sealing one first.
    pub(crate) fn kids(&self) -> Vec<String> {
        self.sealer.as_ref().map(|s| s.kids()).unwrap_or_default()
    }

    /// Reads one record stored at `aad`.
    pub(crate) fn decode(&self, aad: &str, value: &Value) -> (Option<Decoded>, RecordState) {
        if seal::is_sealed(value) {
            let named = seal::kid_of(value).map(str::to_owned);
            let Some(sealer) = &self.sealer else { return (None, RecordState::Unopenable { kid: named }) };
            return match sealer.open_value(aad, value) {
                Ok((plain, kid)) => match serde_json::from_slice::<StoredToken>(&plain) {
                    Ok(mut token) => {
                        // The envelope's (authenticated) version is the one the Redis
                        // save script compares.
                        token.version = version_in(value.get("version"));
                        (Some((token, Some(kid.clone()))), RecordState::Sealed { kid })
                    }
                    Err(_) => (None, RecordState::Malformed),
                },
                Err(_) => (None, RecordState::Unopenable { kid: named }),
            };
        }
        match serde_json::from_value::<StoredToken>(value.clone()) {
            Ok(token) => (Some((token, None)), RecordState::Plain),
            Err(_) => (None, RecordState::Malformed),
        }
    }

    /// The record to store for `token` at `aad`: sealed when keys are configured, with
    /// `version` in clear so the Redis save script can compare it, and authenticated
    /// (edited, the record no longer opens: a tamperer can only damage it).
    pub(crate) fn encode(&self, aad: &str, token: &StoredToken) -> Result<Value, StoreError> {
        let Some(sealer) = &self.sealer else {
            return Ok(serde_json::to_value(token)?);
        };
        let plain = serde_json::to_vec(token)?;
        let envelope = sealer.seal(aad, &plain, &[("version", Value::from(token.version))]);
        Ok(serde_json::from_slice(&envelope)?)
    }

    /// True when a record in `state` should be written again (sealed with the first key).
    pub(crate) fn needs_reseal(&self, state: &RecordState) -> bool {
        let Some(current) = self.current_kid() else { return false };
        match state {
            RecordState::Plain => true,
            RecordState::Sealed { kid } => *kid != current,
            RecordState::Unopenable { .. } | RecordState::Malformed => false,
        }
    }

    /// True when keys are configured and `state` is a plaintext record: it is warned
    /// about and sealed at once.
    pub(crate) fn is_plaintext_under_keys(&self, state: &RecordState) -> bool {
        self.sealer.is_some() && *state == RecordState::Plain
    }

    /// The warning for a plaintext record found while keys are configured.
    pub(crate) fn warn_plaintext(&self, credential: &str, store: &str) {
        tracing::warn!(
            credential,
            store,
            key_id = self.current_kid().as_deref().unwrap_or(""),
            "plaintext record of this credential (written before state.encryption_keys, or planted) re-sealed with the first key"
        );
    }

    /// Remembers the key id of `credential`'s stored record.
    pub(crate) fn note(&self, credential: &str, kid: Option<String>) {
        if let Ok(mut k) = self.kids.lock() {
            k.insert(credential.to_string(), kid);
        }
    }

    /// The key id of `credential`'s stored record, as last read or written.
    pub(crate) fn kid_of(&self, credential: &str) -> Option<String> {
        self.kids.lock().ok().and_then(|k| k.get(credential).cloned().flatten())
    }
}

/// The start-up verdict over every record read (`credential → state`): refused, naming
/// the credentials and the key ids tried, when sealed records exist and none opens (a
/// wrong key), or when sealed records exist and no key is configured. Nothing is written
/// before this passes.
pub(crate) fn verdict(codec: &Codec, store: &str, states: &BTreeMap<String, RecordState>) -> Result<(), StoreError> {
    let unopenable: Vec<(&String, Option<&String>)> = states
        .iter()
        .filter_map(|(name, s)| match s {
            RecordState::Unopenable { kid } => Some((name, kid.as_ref())),
            _ => None,
        })
        .collect();
    let opened = states.values().any(|s| matches!(s, RecordState::Sealed { .. }));
    if unopenable.is_empty() || opened {
        return Ok(());
    }
    let credentials: Vec<String> = unopenable.iter().map(|(n, _)| (*n).clone()).collect();
    let mut sealed_with: Vec<String> = unopenable.iter().filter_map(|(_, k)| k.cloned()).collect();
    sealed_with.sort();
    sealed_with.dedup();
    Err(StoreError::Keys { store: store.to_string(), credentials, sealed_with, tried: codec.kids() })
}
