//! Wiring: store, credentials and their refreshers, the data-path and admin listeners,
//! reloads and an orderly stop. [`start`] returns the bound addresses, so tests (and
//! `demo`) run whole proxies in-process on `127.0.0.1:0`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{Admin, Credentials};
use crate::config::{Config, ConfigError, StateSettings};
use crate::login::LoginFlows;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::outbound::{Outbound, OutboundError};
use crate::proxy::{Proxy, RouteCredential, Snapshot};
use crate::server::{ConnInfo, Serve};
use crate::token::accounts::AccountSet;
use crate::token::redis_budget::RedisBudget;
use crate::token::redis_store::RedisStore;
use crate::token::seal::Sealer;
use crate::token::store::{FileStore, StoreError, TokenStore};
use crate::token::Credential;
use crate::upstream::{Affinity, Connector};

/// How long in-flight requests may take to finish after a stop is asked for.
pub const DRAIN_TIMEOUT: Duration = crate::server::DRAIN_TIMEOUT;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound (the OS error follows as its source, once).
    #[error("cannot listen on {addr} ({what}){}", bind_hint(what, source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `listen` or `admin_listen`.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A non-loopback listener without the `[inbound]` opt-in (`allow_remote` and keys or CIDRs).
    #[error("refusing to listen on {addr} ({what}): it is not a loopback address, and anyone who can reach it could call GoTo with your token; set [inbound] allow_remote = true with keys and/or allow_cidrs")]
    NotLoopback {
        /// The address.
        addr: SocketAddr,
        /// `listen` or `admin_listen`.
        what: &'static str,
    },
    /// Inbound TLS files unusable.
    #[error(transparent)]
    Tls(#[from] crate::inbound::TlsError),
    /// The outbound settings (`[tls]`, the outbound proxy and its environment variables)
    /// are unusable: a configuration error (exit 64).
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    /// The configured state store is not available.
    #[error("state store: {0}")]
    Store(String),
    /// `state.encryption_keys` open none of the sealed token records (a wrong key), or
    /// sealed records exist and no key is configured: nothing was written (exit 64, a
    /// configuration error).
    #[error("state.encryption_keys: {0}")]
    Keys(String),
    /// Metrics could not be registered (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What a reload swaps and the admin listener reads: the live configuration.
pub struct Core {
    config: ArcSwap<Config>,
    credentials: ArcSwap<Credentials>,
    /// The accounts of each account credential (`accounts = true`).
    accounts: ArcSwap<BTreeMap<String, Arc<AccountSet>>>,
    used: ArcSwap<Vec<String>>,
    /// Running refresh loops: the credential they renew and how to stop them.
    refreshers: Mutex<HashMap<String, (Arc<Credential>, CancellationToken)>>,
    /// The data-path service.
    pub proxy: Arc<Proxy>,
    /// The metrics.
    pub metrics: Metrics,
    store: Arc<dyn TokenStore>,
    /// The Redis connections (`store = "redis"`), rebuilt when a reload changes `[tls]`.
    redis: Option<RedisLinks>,
    /// The outbound settings and the token endpoints' client built on them.
    net: ArcSwap<Net>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    reload_lock: tokio::sync::Mutex<()>,
    /// Where reloads read the configuration from (`None`: started from no file, as
    /// `demo` and in-process tests are).
    source: Option<Source>,
    /// Counts applied reloads: the file watch follows it to watch what the new
    /// configuration names.
    generation: tokio::sync::watch::Sender<u64>,
    /// `[[notify]]`: follows each renewing credential's health.
    notifier: Arc<Notifier>,
}

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

/// The shared store and the routes' shared rate budget, when the state lives in Redis.
struct RedisLinks {
    store: Arc<RedisStore>,
    budget: Option<Arc<RedisBudget>>,
}

impl RedisLinks {
    /// New connections trust `net`'s `[tls]` (a reload changed it; only `rediss://` cares).
    fn retls(&self, net: &Net) -> Result<(), String> {
        let tls = net.outbound.redis_tls();
        self.store.retls(tls.clone()).map_err(|e| e.to_string())?;
        if let Some(budget) = &self.budget {
            budget.retls(tls).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// What outbound connections use, built once per configuration load: the TLS roots and
/// proxy rules, and the HTTP client for token and keys endpoints built on them.
struct Net {
    outbound: Outbound,
    http: reqwest::Client,
    /// Posts `[[notify]]` webhooks: the same trust and proxy, one attempt's timeout.
    webhooks: reqwest::Client,
}

impl Net {
    fn new(config: &Config) -> Result<Net, OutboundError> {
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

/// A reload that was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReloadError(pub String);

impl Core {
    /// Every credential, by name.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials.load_full()
    }

    /// Names of the credentials routes use.
    pub fn used(&self) -> Arc<Vec<String>> {
        self.used.load_full()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Applies `config` with the outbound settings `net`: credentials whose settings did
    /// not change (nor the outbound ones) keep their tokens and refreshers; new or changed
    /// ones load from the store and start renewing; routes and limits swap atomically
    /// (requests in flight finish on the old ones).
    async fn apply(&self, config: Config, net: Arc<Net>) {
        let old = self.credentials.load_full();
        let same_net = Arc::ptr_eq(&self.net.load(), &net);
        let mut fresh: Vec<Arc<Credential>> = Vec::new();
        let mut next = Credentials::new();
        for (name, cfg) in &config.credentials {
            let cred = match old.get(name) {
                Some(c) if same_net && **c.config() == **cfg => c.clone(),
                _ => {
                    let c = Arc::new(Credential::new(
                        cfg.clone(),
                        net.http.clone(),
                        self.store.clone(),
                        self.metrics.clone(),
                    ));
                    fresh.push(c.clone());
                    c
                }
            };
            next.insert(name.clone(), cred);
        }
        let used = config.used_credentials();
        // An account credential's token lives in its accounts: the credential itself
        // (kept for sign-ins and the admin) neither loads nor renews one.
        let renews =
            |name: &str| used.iter().any(|u| u == name) && !config.credentials.get(name).is_some_and(|c| c.accounts);
        for c in &fresh {
            if renews(c.name()) {
                c.init().await;
            }
        }
        let sets = self.account_sets(&config, &net, same_net).await;
        {
            let mut running = self.refreshers.lock().unwrap_or_else(|p| p.into_inner());
            running.retain(|name, (c, stop)| {
                let keep = renews(name) && next.get(name).is_some_and(|n| Arc::ptr_eq(n, c));
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for name in used.iter().filter(|n| renews(n)) {
                if let (false, Some(c)) = (running.contains_key(name), next.get(name)) {
                    let stop = self.shutdown.child_token();
                    let restarts = self.metrics.refresher_restarts.with_label_values(&[name.as_str()]);
                    let cred = c.clone();
                    let loop_stop = stop.clone();
                    self.tasks.spawn(supervise(name.clone(), stop.clone(), restarts, move || {
                        cred.clone().run(loop_stop.clone())
                    }));
                    self.tasks.spawn(self.notifier.clone().watch(c.clone(), stop.clone()));
                    running.insert(name.clone(), (c.clone(), stop));
                }
            }
        }
        self.notifier.set_targets(config.notify.clone(), net.webhooks.clone());
        let by_name: HashMap<String, RouteCredential> = next
            .iter()
            .map(|(k, v)| match sets.get(k) {
                Some(set) => (k.clone(), RouteCredential::Accounts(set.clone())),
                None => (k.clone(), RouteCredential::One(v.handle())),
            })
            .collect();
        self.proxy.swap(Snapshot::compile(&config, &by_name, &self.metrics, &net.outbound));
        self.net.store(net);
        self.credentials.store(Arc::new(next));
        self.accounts.store(Arc::new(sets));
        self.used.store(Arc::new(used));
        self.config.store(Arc::new(config));
    }

    /// The account sets of `config`'s account credentials: kept when the credential (and
    /// the outbound settings) did not change, else built and loaded from the store; the
    /// accounts of sets no longer used stop renewing.
    async fn account_sets(&self, config: &Config, net: &Arc<Net>, same_net: bool) -> BTreeMap<String, Arc<AccountSet>> {
        let old = self.accounts.load_full();
        let mut sets = BTreeMap::new();
        for (name, cfg) in config.credentials.iter().filter(|(_, c)| c.accounts) {
            let set = match old.get(name) {
                Some(s) if same_net && **s.config() == **cfg => s.clone(),
                _ => {
                    // Cancelled when the set is replaced or removed (`AccountSet::stop`).
                    let stop = self.shutdown.child_token();
                    let set = Arc::new(AccountSet::new(
                        cfg.clone(),
                        net.http.clone(),
                        self.store.clone(),
                        self.metrics.clone(),
                        Arc::new(crate::notify::Accounts::new(self.notifier.clone())),
                        self.shared_budget(),
                        stop.clone(),
                    ));
                    set.load().await;
                    // One task renews all the set's accounts, supervised like a credential's loop.
                    let restarts = self.metrics.refresher_restarts.with_label_values(&[name.as_str()]);
                    let s = set.clone();
                    self.tasks.spawn(supervise(name.clone(), stop, restarts, move || s.clone().run()));
                    set
                }
            };
            sets.insert(name.clone(), set);
        }
        for (name, s) in old.iter() {
            if !sets.get(name).is_some_and(|n| Arc::ptr_eq(n, s)) {
                s.stop();
            }
        }
        sets
    }

    /// The replicas' shared rate budget, when the state lives in Redis.
    fn shared_budget(&self) -> Option<Arc<RedisBudget>> {
        self.redis.as_ref()?.budget.clone()
    }

    /// The account credentials' account sets, by name.
    pub fn account_sets_now(&self) -> Arc<BTreeMap<String, Arc<AccountSet>>> {
        self.accounts.load_full()
    }

    /// The one reload path of `SIGHUP`, a watched file's change and `POST /reload`: reads
    /// the configuration file again, validates it and applies it ([`Core::reload`]).
    /// Refused — the running configuration stays — when the file does not validate or
    /// when a change needs a restart; counted and logged either way. Answers what changed.
    pub async fn reload_from_source(&self, trigger: ReloadTrigger) -> Result<Vec<String>, ReloadError> {
        let Some(source) = &self.source else {
            return Err(ReloadError("this proxy was started without a configuration file: nothing to reload".into()));
        };
        // One at a time, from reading the file to the swap: two triggers at once apply
        // the newest file once each, in order.
        let _one_at_a_time = self.reload_lock.lock().await;
        let config = match source.load() {
            Ok(c) => c,
            Err(e) => return Err(self.refused(trigger, e.to_string())),
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
            let why = format!("{} changed: these need a restart", needs_restart.join(", "));
            return Err(self.refused(trigger, why));
        }
        let net = if outbound_changed {
            let built = Net::new(&config).map_err(|e| e.to_string()).and_then(|n| {
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
    fn refused(&self, trigger: ReloadTrigger, why: String) -> ReloadError {
        self.metrics.reloads.with_label_values(&[trigger.as_str(), "refused"]).inc();
        tracing::error!(trigger = trigger.as_str(), error = %why, "configuration reload refused; the running configuration stays");
        ReloadError(why)
    }
}

/// Follows `source`'s files while the proxy runs (`proxy.watch_files`): a change in
/// what they hold reloads with trigger `file`; the files watched are those of the
/// configuration in force, recomputed after every reload.
async fn watch_files(core: Arc<Core>, source: Source) {
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

/// How long a supervisor waits before starting a refresh loop that ended again.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Keeps a credential's refresh loop (`start()`) running until `stop`: a loop that ends
/// before that (a panic, or a return) is started again after [`RESTART_DELAY`] and
/// counted in `restarts`, so a credential is never left without a renewing task.
async fn supervise<F, Fut>(name: String, stop: CancellationToken, restarts: prometheus::IntCounter, start: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let ended = tokio::spawn(start()).await;
        if stop.is_cancelled() {
            return;
        }
        match ended {
            Err(e) if e.is_panic() => {
                tracing::error!(credential = %name, "the refresh loop panicked; starting it again")
            }
            _ => tracing::error!(credential = %name, "the refresh loop ended; starting it again"),
        }
        restarts.inc();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RESTART_DELAY) => {}
        }
    }
}

impl crate::admin::View for Core {
    fn config(&self) -> Arc<Config> {
        Core::config(self)
    }

    fn credentials(&self) -> Arc<Credentials> {
        Core::credentials(self)
    }

    fn used(&self) -> Arc<Vec<String>> {
        Core::used(self)
    }

    fn metrics_text(&self) -> String {
        for (name, set) in self.accounts.load().iter() {
            let counts = set.state_counts();
            for (state, n) in counts {
                self.metrics.accounts.with_label_values(&[name.as_str(), state]).set(n as i64);
            }
        }
        self.metrics.render()
    }

    fn accounts(&self) -> Arc<BTreeMap<String, Arc<AccountSet>>> {
        self.accounts.load_full()
    }

    fn requests_by_route(&self) -> std::collections::BTreeMap<String, u64> {
        self.metrics.requests_by_route()
    }

    fn reload(&self) -> futures_util::future::BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move { self.reload_from_source(ReloadTrigger::Admin).await.map_err(|e| e.0) })
    }
}

/// A running proxy.
pub struct Running {
    /// Where the data path listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin listener listens.
    pub admin_addr: SocketAddr,
    /// The live state (reload, credentials, metrics).
    pub core: Arc<Core>,
}

impl Running {
    /// Asks everything to stop; [`Running::wait`] returns once it has.
    pub fn shutdown(&self) {
        self.core.shutdown.cancel();
    }

    /// A handle that stops this proxy when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.core.shutdown.clone()
    }

    /// Every credential, by name.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.core.credentials()
    }

    /// Waits until the listeners have drained and the refreshers have stopped.
    pub async fn wait(self) {
        self.core.tasks.close();
        self.core.tasks.wait().await;
    }

    /// Stops and waits.
    pub async fn stop(self) {
        self.shutdown();
        self.wait().await;
    }
}

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
    let sealer = if keys.is_empty() {
        None
    } else {
        Some(Arc::new(Sealer::new(keys).map_err(|e| StartError::Keys(e.to_string()))?))
    };
    match &config.state {
        // Checked before any token is trusted to it: an unsafe directory or a symlinked
        // state file stops the start, naming it: a wrong key, not a damaged record.
        StateSettings::File { path, .. } => Ok((
            Arc::new(FileStore::open(path.clone()).map_err(|e| StartError::Store(e.to_string()))?.with_sealer(sealer)),
            None,
        )),
        StateSettings::Redis { target, prefix } => {
            // `rediss://` trusts what every other outbound connection trusts (`[tls]`).
            let tls = match (config.state.is_rediss(), outbound) {
                (false, _) => None,
                (true, Some(outbound)) => outbound.redis_tls(),
                (true, None) => Outbound::from_config(config)?.redis_tls(),
            };
            let store = RedisStore::connect_with_tls(target, prefix, Some(metrics.store_errors.clone()), tls)
                .map_err(|e| StartError::Store(e.to_string()))?
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
async fn open_checked(config: &Config, metrics: &Metrics, outbound: Option<&Outbound>) -> Result<Opened, StartError> {
    let (store, redis) = open(config, metrics, outbound).await?;
    let names: Vec<String> = config.credentials.keys().cloned().collect();
    store.prepare(&names).await.map_err(|e| match e {
        StoreError::Keys { .. } => StartError::Keys(e.to_string()),
        other => StartError::Store(other.to_string()),
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

async fn bind(addr: SocketAddr, what: &'static str, config: &Config) -> Result<TcpListener, StartError> {
    // `--listen` overrides come after validation: check the rule again here.
    if !addr.ip().is_loopback() && !config.inbound.allow_remote {
        return Err(StartError::NotLoopback { addr, what });
    }
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, what, source })
}

/// What to do about a listener that cannot be bound: for an address in use, the flag or
/// key that picks another.
fn bind_hint(what: &str, source: &std::io::Error) -> String {
    if source.kind() != std::io::ErrorKind::AddrInUse {
        return String::new();
    }
    let flag = what.replace('_', "-");
    format!(": the address is in use (another proxy running?); choose another with --{flag} ADDR or proxy.{what}")
}

/// Data-path threads: `proxy.workers`, or one per core.
fn config_workers(config: &Config) -> usize {
    config.proxy.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// One listening socket shared by `n` data-path threads (each accepts on its own
/// handle; the kernel hands each connection to one of them). Bound once, normally, so
/// a busy port still fails the start.
fn data_path_listeners(
    listener: TcpListener,
    n: usize,
    addr: SocketAddr,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    let err = |source| StartError::Bind { addr, what: "listen", source };
    let std_listener = listener.into_std().map_err(err)?;
    let mut out = Vec::with_capacity(n);
    for _ in 1..n {
        out.push(std_listener.try_clone().map_err(err)?);
    }
    out.push(std_listener);
    Ok(out)
}

/// A data-path thread: its own single-threaded runtime serves the connections it
/// accepts, so a request, its upstream connection and their wake-ups stay on one
/// thread (no cross-thread hand-offs). The receiver resolves when the thread is done.
fn spawn_data_path_thread(
    i: usize,
    listener: std::net::TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, ended) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(format!("goto-auth-proxy-io-{i}")).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return tracing::error!(error = %e, "cannot start a data-path runtime"),
        };
        runtime.block_on(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return tracing::error!(error = %e, "cannot use the data-path listener"),
            };
            // Each connection keeps its upstream connections (`Affinity`) in its state.
            Serve::new(shutdown)
                .tls(tls)
                .run_with(
                    listener,
                    // No async block around it: that would hold a second copy of the request.
                    move |req, conn: Arc<ConnInfo<Affinity>>| proxy.clone().serve(req, conn),
                )
                .await;
        });
        let _ = done.send(());
    })?;
    Ok(ended)
}

/// Starts a proxy for `config`: binds both listeners first (a busy port fails fast),
/// loads stored tokens, then starts the refreshers and serves. It has no file to reload
/// from; `run` uses [`start_from`].
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_from(config, None).await
}

/// [`start`] for a configuration read from `source`: `SIGHUP` and `POST /reload` read
/// that file again, and (`proxy.watch_files`, the default) so does a change to it or to
/// a file it names.
pub async fn start_from(config: Config, source: Option<Source>) -> Result<Running, StartError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let proxy_listener = bind(config.proxy.listen, "listen", &config).await?;
    let admin_listener = bind(config.proxy.admin_listen, "admin_listen", &config).await?;
    let local = |l: &TcpListener, addr, what| l.local_addr().map_err(|source| StartError::Bind { addr, what, source });
    let proxy_addr = local(&proxy_listener, config.proxy.listen, "listen")?;
    let admin_addr = local(&admin_listener, config.proxy.admin_listen, "admin_listen")?;
    let tls = config.inbound.tls.as_ref().map(crate::inbound::tls_acceptor).transpose()?;

    let net = Arc::new(Net::new(&config)?);
    let metrics = Metrics::new(prometheus::Registry::new())?;
    let (store, redis_store) = open_checked(&config, &metrics, Some(&net.outbound)).await?;
    let empty = Snapshot::compile(&config, &HashMap::new(), &metrics, &net.outbound);
    let mut proxy = Proxy::new(empty, Connector, metrics.clone());
    let mut shared_budget = None;
    if let StateSettings::Redis { target, prefix } = &config.state {
        // GoTo's quota is one budget: routes' pace lives next to the shared tokens.
        let tls = net.outbound.redis_tls();
        match RedisBudget::connect(target, prefix, tls) {
            Ok(budget) => {
                let budget = Arc::new(budget);
                shared_budget = Some(budget.clone());
                proxy = proxy.with_shared_budget(budget);
            }
            Err(e) => tracing::warn!(error = %e, "no shared rate-limit budget: each replica paces its routes alone"),
        }
    }
    let proxy = Arc::new(proxy);
    let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let notifier = Arc::new(Notifier::new(
        config.notify.clone(),
        net.webhooks.clone(),
        admin_addr,
        metrics.clone(),
        tasks.clone(),
        shutdown.clone(),
    ));
    let core = Arc::new(Core {
        config: ArcSwap::from_pointee(config.clone()),
        credentials: ArcSwap::from_pointee(Credentials::new()),
        accounts: ArcSwap::from_pointee(BTreeMap::new()),
        used: ArcSwap::from_pointee(Vec::new()),
        refreshers: Mutex::new(HashMap::new()),
        proxy: proxy.clone(),
        metrics: metrics.clone(),
        store: store.clone(),
        redis: redis_store.map(|store| RedisLinks { store, budget: shared_budget }),
        net: ArcSwap::new(net.clone()),
        tasks,
        shutdown,
        reload_lock: tokio::sync::Mutex::new(()),
        source: source.clone(),
        generation: tokio::sync::watch::Sender::new(0),
        notifier,
    });
    core.apply(config, net).await;
    if let Some(source) = source {
        core.tasks.spawn(watch_files(core.clone(), source));
    }

    let login = Arc::new(LoginFlows::new(format!("http://{admin_addr}/callback")));
    let admin = Arc::new(Admin::new(core.clone(), login));
    let workers = config_workers(&core.config());
    for (i, listener) in data_path_listeners(proxy_listener, workers, proxy_addr)?.into_iter().enumerate() {
        let done = spawn_data_path_thread(i, listener, proxy.clone(), tls.clone(), core.shutdown.clone())
            .map_err(|source| StartError::Bind { addr: proxy_addr, what: "listen", source })?;
        core.tasks.spawn(async move {
            let _thread_ended = done.await;
        });
    }
    core.tasks.spawn(Serve::new(core.shutdown.clone()).run(admin_listener, move |req, conn: Arc<ConnInfo>| {
        let a = admin.clone();
        async move { a.serve(req, conn.peer, conn.local).await }
    }));
    tracing::info!(%proxy_addr, %admin_addr, store = %store.describe(), credentials = ?core.used(), "goto-auth-proxy serving");
    Ok(Running { proxy_addr, admin_addr, core })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_refresh_loop_that_ends_or_panics_is_started_again_and_counted() {
        let restarts = prometheus::IntCounter::new("r", "r").unwrap();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let (r, s) = (runs.clone(), stop.clone());
        let supervisor = tokio::spawn(supervise("c".into(), stop.clone(), restarts.clone(), move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            async move {
                match n {
                    0 => panic!("first run panics"),
                    1 => {} // second run returns at once
                    _ => s.cancelled().await,
                }
            }
        }));
        while runs.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(restarts.get(), 2);
        stop.cancel();
        supervisor.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "a stopped loop is not restarted");
    }
}
