//! Opening the state store the configuration names, and the credentials over it.

use std::sync::Arc;

use super::StartError;
use crate::admin::Credentials;
use crate::config::{Config, StateSettings};
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::token::redis_store::RedisStore;
use crate::token::seal::Sealer;
use crate::token::store::{FileStore, StoreError, TokenStore};
use crate::token::Credential;

/// Opens the store the config names. Redis is connected lazily: an unreachable Redis is
/// logged (and counted in `metrics`) but does not stop the start, since replicas must
/// come up and serve through a Redis outage.
/// With `state.encryption_keys`, the store seals every record it writes with the first
/// key and opens records with any of them.
pub async fn open_store(config: &Config, metrics: &Metrics) -> Result<Arc<dyn TokenStore>, StartError> {
    Ok(open(config, metrics, None).await?.0)
}

/// A store as the rest of the process uses it, and the Redis store as itself (a reload
/// may rebuild its connection).
type Opened = (Arc<dyn TokenStore>, Option<Arc<RedisStore>>);

/// [`open_store`], and the Redis store as itself ([`Opened`]);
/// `outbound`: the config's outbound settings when the caller has them already (the
/// operating system's roots are read once).
async fn open(config: &Config, metrics: &Metrics, outbound: Option<&Outbound>) -> Result<Opened, StartError> {
    // `state.encryption_keys`: the first seals, every one opens.
    let keys = &config.state_encryption_keys;
    let sealer = if keys.is_empty() { None } else { Some(Arc::new(Sealer::new(keys).map_err(StartError::BadKey)?)) };
    match &config.state {
        // Checked before any token is trusted to it: an unsafe directory or a symlinked
        // state file stops the start, naming it: a wrong key, not a damaged record.
        StateSettings::File { path, .. } => {
            Ok((Arc::new(FileStore::open(path.clone()).map_err(StartError::Store)?.with_sealer(sealer)), None))
        }
        StateSettings::Redis { target, prefix } => {
            // `rediss://` trusts what every other outbound connection trusts (`[tls]`).
            let tls = match (config.state.is_rediss(), outbound) {
                (false, _) => None,
                (true, Some(outbound)) => outbound.redis_tls(),
                (true, None) => Outbound::from_config(config)?.redis_tls(),
            };
            let store = RedisStore::connect_with_tls(target, prefix, Some(metrics.store_errors.clone()), tls)
                .map_err(StartError::Store)?
                .with_replication_counter(metrics.store_replication_timeouts.clone())
                .with_sealer(sealer);
            if let Err(e) = store.ping().await {
                tracing::warn!(error = %e, "shared store unreachable at start; serving what can be served and retrying");
            }
            let store = Arc::new(store);
            Ok((store.clone(), Some(store)))
        }
    }
}

/// [`open_store`], then the store's start-up check ([`TokenStore::prepare`]) over the
/// configured credentials: a wrong or missing `state.encryption_keys` stops here
/// ([`StartError::Keys`]) with nothing written; plaintext records and records sealed
/// with an older key are sealed again with the first key.
pub async fn open_checked_store(config: &Config, metrics: &Metrics) -> Result<Arc<dyn TokenStore>, StartError> {
    Ok(open_checked(config, metrics, None).await?.0)
}

/// [`open_checked_store`], and the Redis store as itself ([`open`]).
pub(super) async fn open_checked(
    config: &Config,
    metrics: &Metrics,
    outbound: Option<&Outbound>,
) -> Result<Opened, StartError> {
    let (store, redis) = open(config, metrics, outbound).await?;
    let names: Vec<String> = config.credentials.keys().cloned().collect();
    store.prepare(&names).await.map_err(|e| match e {
        StoreError::Keys { .. } => StartError::Keys(e),
        other => StartError::Store(other),
    })?;
    Ok((store, redis))
}

/// Builds every credential over `store` (no refresher started): for `login` and `token`.
/// Their token endpoint client uses the outbound settings (`[tls]`, the outbound proxy).
pub fn credentials(config: &Config, store: &Arc<dyn TokenStore>, metrics: &Metrics) -> Result<Credentials, StartError> {
    let http = Outbound::from_config(config)?.token_client(config.proxy.connect_timeout)?;
    Ok(config
        .credentials
        .iter()
        .map(|(name, cfg)| {
            (name.clone(), Arc::new(Credential::new(cfg.clone(), http.clone(), store.clone(), metrics.clone())))
        })
        .collect())
}
