//! `[state]`: where tokens are kept (a file or Redis) and the keys that seal them.

use std::path::PathBuf;

use toml::Spanned;

use super::super::error::{ConfigError, Locator};
use super::super::raw::{RawSecret, RawState};
use super::super::{RedisTarget, StateSettings};
use super::resolve_secret;
use crate::secret::Secret;

/// `[state]`: a file (the default) or Redis.
pub(super) fn validate_state(loc: &Locator<'_>, raw: RawState) -> Result<StateSettings, ConfigError> {
    let kind = raw.store.as_ref().map(|s| s.get_ref().as_str()).unwrap_or("file");
    match kind {
        "file" => {
            Ok(StateSettings::File { path: raw.path.unwrap_or_else(|| PathBuf::from("state/goto-auth-proxy.json")) })
        }
        "redis" => {
            let target = validate_redis_target(loc, &raw)?;
            Ok(StateSettings::Redis {
                target,
                prefix: raw.redis_prefix.unwrap_or_else(|| "goto-auth-proxy".to_string()),
            })
        }
        _ => {
            let span = raw.store.as_ref().map(|s| s.span()).unwrap_or(0..0);
            Err(loc.err(&span, "state.store", "is not a store: expected \"file\" or \"redis\""))
        }
    }
}

/// Which Redis `[state]` names: `redis_url` (default: a local server), or
/// `redis_sentinels` with `redis_master`, or `redis_cluster` — one of the three.
fn validate_redis_target(loc: &Locator<'_>, raw: &RawState) -> Result<RedisTarget, ConfigError> {
    let urls = |list: &Spanned<Vec<Spanned<RawSecret>>>, key: &str| -> Result<Vec<Secret>, ConfigError> {
        if list.get_ref().is_empty() {
            return Err(loc.err(&list.span(), format!("state.{key}"), "is empty: list at least one redis:// URL"));
        }
        list.get_ref()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let k = format!("state.{key}[{i}]");
                let url = resolve_secret(loc, s, &k)?;
                // The URL may hold a password: the message never quotes it.
                if !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://")) {
                    return Err(loc.err(&s.span(), k, "must be a redis:// or rediss:// URL"));
                }
                Ok(url)
            })
            .collect()
    };
    let single = raw.redis_url.as_ref().map(|s| s.span());
    match (&raw.redis_sentinels, &raw.redis_master, &raw.redis_cluster) {
        (Some(_), _, Some(c)) => {
            Err(loc.err(&c.span(), "state.redis_cluster", "cannot be set together with state.redis_sentinels"))
        }
        (Some(s), _, None) | (None, None, Some(s)) if single.is_some() => Err(loc.err(
            &s.span(),
            if raw.redis_cluster.is_some() { "state.redis_cluster" } else { "state.redis_sentinels" },
            "cannot be set together with state.redis_url: name one Redis",
        )),
        (Some(s), None, None) => Err(loc.err(
            &s.span(),
            "state.redis_sentinels",
            "needs state.redis_master, the name the sentinels monitor the master under",
        )),
        (None, Some(m), _) => Err(loc.err(&m.span(), "state.redis_master", "needs state.redis_sentinels")),
        (Some(s), Some(m), None) => {
            let master = m.get_ref().trim();
            if master.is_empty() {
                return Err(loc.err(&m.span(), "state.redis_master", "is empty"));
            }
            Ok(RedisTarget::Sentinel { sentinels: urls(s, "redis_sentinels")?, master: master.to_string() })
        }
        (None, None, Some(c)) => {
            let seeds = urls(c, "redis_cluster")?;
            let tls = seeds[0].expose().starts_with("rediss://");
            if let Some(i) = seeds.iter().position(|u| u.expose().starts_with("rediss://") != tls) {
                let span = c.get_ref()[i].span();
                return Err(loc.err(&span, format!("state.redis_cluster[{i}]"), "mixes redis:// and rediss://"));
            }
            Ok(RedisTarget::Cluster(seeds))
        }
        (None, None, None) => Ok(RedisTarget::Single(match &raw.redis_url {
            Some(s) => resolve_secret(loc, s, "state.redis_url")?,
            None => Secret::new("redis://127.0.0.1:6379/0"),
        })),
    }
}

/// `state.encryption_keys`: each a secret that decodes to a 32-byte key. The error names
/// the key's position and line, never the value.
pub(super) fn validate_state_keys(loc: &Locator<'_>, raw: &[Spanned<RawSecret>]) -> Result<Vec<Secret>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, s)| {
            let key = format!("state.encryption_keys[{i}]");
            let secret = resolve_secret(loc, s, &key)?;
            if crate::secret::decode_state_key(secret.expose()).is_none() {
                return Err(loc.err(&s.span(), key, "expected base64 of 32 bytes (goto-auth-proxy keygen makes one)"));
            }
            Ok(secret)
        })
        .collect()
}
