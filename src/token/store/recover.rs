//! Reading what can be read of a state file: a file cut or garbled anywhere still
//! yields every record complete before the damage, and names the records that are JSON
//! but not a stored token (each readable record is used).

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sealing::{Codec, RecordState};
use super::StoredToken;

/// The state file's format: `{"version": 1, "credentials": {name: record, …}}`; a record
/// is a [`StoredToken`] in plaintext or a sealed envelope (`R` = [`Value`]).
#[derive(Default, Serialize, Deserialize)]
pub(super) struct StateFile<R = StoredToken> {
    /// Always 1 so far.
    pub(super) version: u32,
    /// One record per credential.
    #[serde(default = "BTreeMap::new")]
    pub(super) credentials: BTreeMap<String, R>,
}

/// The associated data of a credential's record in the state file.
pub(super) fn file_aad(credential: &str) -> String {
    format!("file:{credential}")
}

/// What could be read of a state file.
#[derive(Debug, Default)]
pub(super) struct Contents {
    /// Every record that could be read.
    pub(super) records: BTreeMap<String, StoredToken>,
    /// What each complete record is (plaintext, sealed with which key, unopenable…).
    pub(super) states: BTreeMap<String, RecordState>,
    /// Credentials whose record is complete JSON but not a stored token, or sealed and
    /// not opened by any configured key.
    pub(super) malformed: BTreeSet<String>,
    /// Why reading stopped before the end of the file, when it did (the rest, records
    /// included, could not be read).
    pub(super) unreadable: Option<String>,
}

impl Contents {
    pub(super) fn is_damaged(&self) -> bool {
        !self.malformed.is_empty() || self.unreadable.is_some()
    }
}

impl Contents {
    /// Records one complete record (the last record of a name counts, as with a plain
    /// JSON object).
    fn add(&mut self, codec: &Codec, name: String, value: &Value) {
        let (decoded, state) = codec.decode(&file_aad(&name), value);
        self.records.remove(&name);
        self.malformed.remove(&name);
        match decoded {
            Some((token, _)) => {
                self.records.insert(name.clone(), token);
            }
            None => {
                self.malformed.insert(name.clone());
            }
        }
        self.states.insert(name, state);
    }
}

/// [`parse_state_with`] for plaintext records only (no keys).
#[cfg(test)]
pub(super) fn parse_state(bytes: &[u8]) -> Contents {
    parse_state_with(bytes, &Codec::default())
}

/// Reads a state file record by record: `{"version": …, "credentials": {name: record, …}}`,
/// each record opened by `codec`. A record that is JSON but not a [`StoredToken`] (or a
/// sealed one that does not open) is skipped (and named); a file cut or garbled anywhere
/// still yields every record complete before the damage.
pub(super) fn parse_state_with(bytes: &[u8], codec: &Codec) -> Contents {
    let mut contents = Contents::default();
    if bytes.iter().all(|b| is_json_space(*b)) {
        return contents;
    }
    if let Ok(state) = serde_json::from_slice::<StateFile<Value>>(bytes) {
        for (name, value) in state.credentials {
            contents.add(codec, name, &value);
        }
        return contents;
    }
    let mut walker = Walker { bytes, pos: 0, codec };
    if let Err(why) = walker.state_file(&mut contents) {
        contents.unreadable = Some(format!("{why} at byte {}", walker.pos));
    }
    contents
}

fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A cursor over a state file that reads one key or one value at a time.
struct Walker<'a> {
    bytes: &'a [u8],
    pos: usize,
    codec: &'a Codec,
}

/// Why the walk stopped (the position is the walker's).
type Step = Result<(), &'static str>;

impl Walker<'_> {
    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while self.bytes.get(self.pos).is_some_and(|b| is_json_space(*b)) {
            self.pos = self.pos.saturating_add(1);
        }
        self.bytes.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8, otherwise: &'static str) -> Step {
        if self.peek() != Some(byte) {
            return Err(otherwise);
        }
        self.pos = self.pos.saturating_add(1);
        Ok(())
    }

    /// One JSON value (after whitespace); the position moves past it only when it reads.
    fn value<T: DeserializeOwned>(&mut self, otherwise: &'static str) -> Result<T, &'static str> {
        self.peek();
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<T>();
        match values.next() {
            Some(Ok(v)) => {
                self.pos = self.pos.saturating_add(values.byte_offset());
                Ok(v)
            }
            _ => Err(otherwise),
        }
    }

    /// After a member: `,` (more follow: true) or `}` (the object ends: false).
    fn after_member(&mut self) -> Result<bool, &'static str> {
        let more = match self.peek() {
            Some(b',') => true,
            Some(b'}') => false,
            _ => return Err("`,` or `}` expected"),
        };
        self.pos = self.pos.saturating_add(1);
        Ok(more)
    }

    /// The whole file: an object whose `credentials` member is read record by record.
    fn state_file(&mut self, out: &mut Contents) -> Step {
        self.expect(b'{', "the file is not a JSON object")?;
        let mut more = self.peek() != Some(b'}');
        if !more {
            self.pos = self.pos.saturating_add(1);
        }
        while more {
            let key: String = self.value("a key could not be read")?;
            self.expect(b':', "`:` expected")?;
            if key == "credentials" {
                self.credentials(out)?;
            } else {
                self.value::<IgnoredAny>("a value could not be read")?;
            }
            more = self.after_member()?;
        }
        match self.peek() {
            None => Ok(()),
            Some(_) => Err("unexpected bytes after the end"),
        }
    }

    /// `{name: record, …}`: each record parsed on its own.
    fn credentials(&mut self, out: &mut Contents) -> Step {
        self.expect(b'{', "`credentials` is not an object")?;
        if self.peek() == Some(b'}') {
            self.pos = self.pos.saturating_add(1);
            return Ok(());
        }
        loop {
            let name: String = self.value("a credential name could not be read")?;
            self.expect(b':', "`:` expected")?;
            self.peek();
            let start = self.pos;
            self.value::<IgnoredAny>("a record could not be read")?;
            let record = self.bytes.get(start..self.pos).unwrap_or_default();
            match serde_json::from_slice::<Value>(record) {
                Ok(value) => out.add(self.codec, name, &value),
                // JSON, but not one serde_json keeps (a number out of range).
                Err(_) => out.add(self.codec, name, &Value::Null),
            }
            if !self.after_member()? {
                return Ok(());
            }
        }
    }
}
