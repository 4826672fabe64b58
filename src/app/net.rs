//! What connects out, built once per configuration load.

use std::sync::Arc;

use super::ReloadError;
use crate::config::Config;
use crate::outbound::{Outbound, OutboundError};
use crate::token::redis_budget::RedisBudget;
use crate::token::redis_store::RedisStore;

/// The shared store and the routes' shared rate budget, when the state lives in Redis.
pub(super) struct RedisLinks {
    pub(super) store: Arc<RedisStore>,
    pub(super) budget: Option<Arc<RedisBudget>>,
}

impl RedisLinks {
    /// New connections trust `net`'s `[tls]` (a reload changed it; only `rediss://` cares).
    pub(super) fn retls(&self, net: &Net) -> Result<(), ReloadError> {
        let tls = net.outbound.redis_tls();
        self.store.retls(tls.clone())?;
        if let Some(budget) = &self.budget {
            budget.retls(tls).map_err(|e| ReloadError::RedisBudget(e.into()))?;
        }
        Ok(())
    }
}

/// What outbound connections use, built once per configuration load: the TLS roots and
/// proxy rules, and the HTTP client for token and keys endpoints built on them.
pub(super) struct Net {
    pub(super) outbound: Outbound,
    pub(super) http: reqwest::Client,
    /// Posts `[[notify]]` webhooks: the same trust and proxy, one attempt's timeout.
    pub(super) webhooks: reqwest::Client,
}

impl Net {
    pub(super) fn new(config: &Config) -> Result<Net, OutboundError> {
        let outbound = Outbound::from_config(config)?;
        let http = outbound.token_client(config.proxy.connect_timeout)?;
        let webhooks = outbound
            .client_builder(config.proxy.connect_timeout)
            .timeout(crate::notify::ATTEMPT_TIMEOUT)
            .build()
            .map_err(|e| OutboundError::Client(e.to_string()))?;
        Ok(Net { outbound, http, webhooks })
    }
}
