//! Reading, classifying, writing (compare-and-set on the version) and re-sealing the
//! token records.

use super::{RedisStore, ACCOUNT_BATCH, REPLICATION_WAIT};
use crate::token::redis_link::Replication;
use crate::token::store::sealing::{Decoded, RecordState};
use crate::token::store::{account_key, split_account_key, version_in, Saved, StoreError, StoredToken, TokenStore};

impl RedisStore {
    pub(super) fn aad(&self, credential: &str) -> String {
        format!("redis:{}:{credential}", self.prefix)
    }

    /// The raw value of `credential`'s record, read and classified.
    pub(super) async fn read(&self, credential: &str) -> Result<Option<(Option<Decoded>, RecordState)>, StoreError> {
        let (link, key) = (&self.link, self.token_key(credential));
        let raw: Option<String> = self
            .run("load", async move { redis::cmd("GET").arg(&key).query_async(&mut link.conn().await?).await })
            .await?;
        let Some(json) = raw else { return Ok(None) };
        self.classify(credential, &json).map(Some)
    }

    /// A stored value of `credential`, opened and classified.
    pub(super) fn classify(&self, credential: &str, json: &str) -> Result<(Option<Decoded>, RecordState), StoreError> {
        // The value holds tokens: the message names the key only.
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            StoreError::Backend(format!(
                "redis {} key {}: not a stored token (line {}, column {})",
                self.location,
                self.token_key(credential),
                e.line(),
                e.column()
            ))
        })?;
        Ok(self.codec.decode(&self.aad(credential), &value))
    }

    /// The account records of `credential`, read a batch of keys per round trip:
    /// `(key, what it is)` for each that exists.
    pub(super) async fn read_accounts(
        &self,
        credential: &str,
    ) -> Result<Vec<(String, Option<Decoded>, RecordState)>, StoreError> {
        let keys: Vec<String> = self.accounts(credential).await?.iter().map(|a| account_key(credential, a)).collect();
        let mut out = Vec::with_capacity(keys.len());
        for batch in keys.chunks(ACCOUNT_BATCH) {
            let link = &self.link;
            let names: Vec<String> = batch.iter().map(|k| self.token_key(k)).collect();
            let values: Vec<Option<String>> = self
                .run("load", async move { redis::cmd("MGET").arg(&names).query_async(&mut link.conn().await?).await })
                .await?;
            for (key, value) in batch.iter().zip(values) {
                let Some(json) = value else { continue };
                match self.classify(key, &json) {
                    Ok((decoded, state)) => out.push((key.clone(), decoded, state)),
                    Err(_) => out.push((key.clone(), None, RecordState::Malformed)),
                }
            }
        }
        Ok(out)
    }

    /// Stores `record` (its version already set) if the stored record is at `expected`;
    /// `Some(Saved::Stale)` with what is stored otherwise.
    pub(super) async fn write_if(
        &self,
        credential: &str,
        record: &StoredToken,
        expected: u64,
    ) -> Result<Option<Saved>, StoreError> {
        let sealed = self.codec.encode(&self.aad(credential), record)?;
        let json = serde_json::to_string(&sealed)?;
        let key = self.token_key(credential);
        let mut call = self.save_script.key(&key);
        call.arg(json).arg(expected).arg(credential).arg(self.channel());
        if let Some((c, account)) = split_account_key(credential) {
            call.key(self.accounts_key(c)).arg(account);
        }
        let link = &self.link;
        let (written, current, conn) = self
            .run("save", async move {
                let mut conn = link.conn().await?;
                let (written, current): (i64, Option<String>) = call.invoke_async(&mut conn).await?;
                Ok((written, current, conn))
            })
            .await?;
        if written == 1 {
            if self.replicated {
                self.confirm(credential, key, conn).await?;
            }
            return Ok(None);
        }
        let value = current.and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok());
        let version = version_in(value.as_ref().and_then(|v| v.get("version")));
        let current = value.and_then(|v| self.codec.decode(&self.aad(credential), &v).0).map(|(t, _)| t);
        Ok(Some(Saved::Stale { current, version }))
    }

    /// Waits until a replica has the record just saved on `conn` (see
    /// [`REPLICATION_WAIT`]). A wait that runs out is logged and counted, and the save
    /// stands; a failure (the master went away right after the save) is an error: the
    /// caller keeps the token and writes it back to whichever master comes next.
    async fn confirm(
        &self,
        credential: &str,
        key: String,
        mut conn: crate::token::redis_link::Conn,
    ) -> Result<(), StoreError> {
        let held = conn.clone();
        match self.run("wait", async move { conn.replicated(&key, REPLICATION_WAIT).await }).await {
            Ok(Replication::Confirmed) => Ok(()),
            Ok(Replication::NoReplica) if self.link.still_master(&held).await => Ok(()),
            Ok(Replication::NoReplica) => Err(StoreError::Backend(format!(
                "redis {} wait: the master had no replica and the sentinels no longer name it \
                 (the token was saved there; no replica confirmed it)",
                self.location
            ))),
            Ok(Replication::TimedOut) => {
                if let Some(c) = &self.replication_timeouts {
                    c.inc();
                }
                tracing::warn!(
                    credential,
                    wait_ms = REPLICATION_WAIT.as_millis() as u64,
                    "no Redis replica confirmed the saved token in time; using it anyway (a failover now could lose it)"
                );
                Ok(())
            }
            Err(StoreError::Backend(why)) => {
                Err(StoreError::Backend(format!("{why} (the token was saved on the master; no replica confirmed it)")))
            }
            Err(e) => Err(e),
        }
    }

    /// A new record of `credential` is stored, sealed with the first key.
    pub(super) fn saved(&self, credential: &str) {
        self.codec.note(credential, self.codec.current_kid());
        if let Ok(mut r) = self.reported.lock() {
            r.remove(credential);
        }
    }

    /// Writes a record back sealed with the first key, at the same version (same
    /// token), if it is still the stored one. A plaintext one is warned about, naming
    /// its credential; one sealed with an older key is noted.
    pub(super) async fn reseal(
        &self,
        credential: &str,
        token: &StoredToken,
        was_plain: bool,
    ) -> Result<(), StoreError> {
        if self.write_if(credential, token, token.version).await?.is_none() {
            self.saved(credential);
            if was_plain {
                self.codec.warn_plaintext(credential, &self.describe());
            } else {
                tracing::info!(
                    credential,
                    key_id = self.codec.current_kid().as_deref().unwrap_or(""),
                    "stored token record encrypted with the first of state.encryption_keys"
                );
            }
        }
        Ok(())
    }
}
