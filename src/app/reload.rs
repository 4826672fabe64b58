//! Reloads: where the configuration is read again, what set a reload off, what a
//! reload may change without a restart, and the watch on the configuration's files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::net::Net;
use super::Core;
use crate::config::{Config, ConfigError};
use crate::outbound::OutboundError;
use crate::token::store::StoreError;

/// What set a reload off: the `trigger` label of `goto_auth_proxy_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// `SIGHUP`.
    Signal,
    /// A watched file changed (`proxy.watch_files`).
    File,
    /// `POST /reload` on the admin listener.
    Admin,
}

impl ReloadTrigger {
    /// The label value and the word in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadTrigger::Signal => "signal",
            ReloadTrigger::File => "file",
            ReloadTrigger::Admin => "admin",
        }
    }
}

/// Where `run` read its configuration, so a reload reads it again: the file, and the
/// command-line flags that override it.
#[derive(Debug, Clone)]
pub struct Source {
    /// `--config`.
    pub path: PathBuf,
    /// `--listen`, which overrides `proxy.listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin-listen`, which overrides `proxy.admin_listen`.
    pub admin_listen: Option<SocketAddr>,
}

impl Source {
    /// Reads and validates the file, with the flags' overrides applied.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(&self.path)?;
        self.override_listen(&mut config);
        Ok(config)
    }

    /// Puts the flags' listen addresses over `config`'s.
    pub fn override_listen(&self, config: &mut Config) {
        if let Some(l) = self.listen {
            config.proxy.listen = l;
        }
        if let Some(l) = self.admin_listen {
            config.proxy.admin_listen = l;
        }
    }

    /// The files a reload reads: this one and every file `config` names.
    fn files(&self, config: &Config) -> Vec<PathBuf> {
        std::iter::once(self.path.clone()).chain(config.files.iter().cloned()).collect()
    }
}

/// A reload that was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Started from no file (as `demo` and in-process tests are).
    #[error("this proxy was started without a configuration file: nothing to reload")]
    NoSource,
    /// The file does not validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Settings only a restart applies changed (their keys or sections).
    #[error("{} changed: these need a restart", .0.join(", "))]
    NeedsRestart(Vec<&'static str>),
    /// The new outbound settings (`[tls]`, the outbound proxy) are unusable.
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    /// The Redis store's connections could not be rebuilt for the new `[tls]`.
    #[error(transparent)]
    RedisStore(#[from] StoreError),
    /// The shared rate budget's connections could not be rebuilt for the new `[tls]`
    /// (the budget's own error, boxed: the wiring knows the budget only as a token part).
    #[error(transparent)]
    RedisBudget(Box<dyn std::error::Error + Send + Sync>),
}

impl Core {
    /// The one reload path of `SIGHUP`, a watched file's change and `POST /reload`: reads
    /// the configuration file again, validates it and applies it ([`Core::reload`]).
    /// Refused — the running configuration stays — when the file does not validate or
    /// when a change needs a restart; counted and logged either way. Answers what changed.
    pub async fn reload_from_source(&self, trigger: ReloadTrigger) -> Result<Vec<String>, ReloadError> {
        let Some(source) = &self.source else {
            return Err(ReloadError::NoSource);
        };
        // One at a time, from reading the file to the swap: two triggers at once apply
        // the newest file once each, in order.
        let _one_at_a_time = self.reload_lock.lock().await;
        let config = match source.load() {
            Ok(c) => c,
            Err(e) => return Err(self.refused(trigger, e.into())),
        };
        // A rotated secret file may have come with looser permissions than the old one.
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        self.apply_reload(config, trigger).await
    }

    /// Applies an already validated `config` as a reload set off by `trigger` (what
    /// [`Core::reload_from_source`] does after reading the file).
    pub async fn reload(&self, config: Config, trigger: ReloadTrigger) -> Result<Vec<String>, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        self.apply_reload(config, trigger).await
    }

    /// Refuses changes that need a restart, applies the rest atomically; credentials
    /// whose settings did not change keep their tokens. The caller holds `reload_lock`.
    async fn apply_reload(&self, config: Config, trigger: ReloadTrigger) -> Result<Vec<String>, ReloadError> {
        let current = self.config.load_full();
        let mut needs_restart = Vec::new();
        if config.proxy.listen != current.proxy.listen {
            needs_restart.push("proxy.listen");
        }
        if config.proxy.admin_listen != current.proxy.admin_listen {
            needs_restart.push("proxy.admin_listen");
        }
        if config.state != current.state || config.state_encryption_keys != current.state_encryption_keys {
            needs_restart.push("[state]");
        }
        if config.inbound.tls != current.inbound.tls {
            needs_restart.push("inbound TLS");
        }
        if config.proxy.max_concurrent_requests != current.proxy.max_concurrent_requests {
            needs_restart.push("proxy.max_concurrent_requests");
        }
        if config.proxy.workers != current.proxy.workers {
            needs_restart.push("proxy.workers");
        }
        // `[tls]`, the outbound proxy or `connect_timeout` changed: everything that
        // connects out is built again (credentials included: their token endpoint client
        // changes; routes compile their upstreams anyway; with `rediss://` the Redis
        // connections too).
        let outbound_changed = config.tls != current.tls
            || config.proxy.outbound_proxy != current.proxy.outbound_proxy
            || config.proxy.connect_timeout != current.proxy.connect_timeout;
        if !needs_restart.is_empty() {
            return Err(self.refused(trigger, ReloadError::NeedsRestart(needs_restart)));
        }
        let net = if outbound_changed {
            let built = Net::new(&config).map_err(ReloadError::from).and_then(|n| {
                match &self.redis {
                    Some(redis) if config.tls != current.tls => redis.retls(&n)?,
                    _ => {}
                }
                Ok(n)
            });
            match built {
                Ok(n) => Arc::new(n),
                Err(e) => return Err(self.refused(trigger, e)),
            }
        } else {
            self.net.load_full()
        };
        let changed = current.changes(&config);
        let file = config.source.clone();
        self.apply(config, net).await;
        self.metrics.reloads.with_label_values(&[trigger.as_str(), "applied"]).inc();
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
        tracing::info!(trigger = trigger.as_str(), config = %file, ?changed, "configuration reloaded");
        Ok(changed)
    }

    /// Counts and logs a refused reload; the running configuration stays.
    pub(super) fn refused(&self, trigger: ReloadTrigger, why: ReloadError) -> ReloadError {
        self.metrics.reloads.with_label_values(&[trigger.as_str(), "refused"]).inc();
        tracing::error!(trigger = trigger.as_str(), error = %why, "configuration reload refused; the running configuration stays");
        why
    }
}

/// Follows `source`'s files while the proxy runs (`proxy.watch_files`): a change in
/// what they hold reloads with trigger `file`; the files watched are those of the
/// configuration in force, recomputed after every reload.
pub(super) async fn watch_files(core: Arc<Core>, source: Source) {
    let mut watch = match crate::watch::FileWatch::new() {
        Ok(w) => w,
        Err(e) => return tracing::warn!(error = %e, "files are not watched: reload with SIGHUP or POST /reload"),
    };
    let mut generation = core.generation.subscribe();
    // What the files held when the configuration in force was read.
    let mut seen = [0u8; 32];
    let follow = |watch: &mut crate::watch::FileWatch, seen: &mut [u8; 32]| {
        let config = core.config();
        let files = if config.proxy.watch_files { source.files(&config) } else { Vec::new() };
        *seen = crate::watch::fingerprint(&files);
        for e in watch.watch(&files) {
            tracing::warn!(error = %e, "a configuration file's directory is not watched");
        }
        tracing::debug!(dirs = ?watch.dirs(), "watching the configuration's files");
    };
    follow(&mut watch, &mut seen);
    loop {
        tokio::select! {
            _ = core.shutdown.cancelled() => return,
            // Any reload (a signal's, the admin's, the watch's own): watch what it names.
            changed = generation.changed() => {
                if changed.is_err() {
                    return;
                }
                follow(&mut watch, &mut seen);
            }
            settled = watch.settled() => {
                if settled.is_none() {
                    return;
                }
                let config = core.config();
                if !config.proxy.watch_files {
                    continue;
                }
                let now = crate::watch::fingerprint(&source.files(&config));
                if now == seen {
                    continue;
                }
                // Refused or applied, these contents have had their reload.
                seen = now;
                let _logged_and_counted = core.reload_from_source(ReloadTrigger::File).await;
            }
        }
    }
}
