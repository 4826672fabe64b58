//! Wiring: store, credentials and their refreshers, the data-path and admin listeners,
//! reloads and an orderly stop. [`start`] returns the bound addresses, so tests (and
//! `demo`) run whole proxies in-process on `127.0.0.1:0`.

mod apply;
mod listen;
mod net;
mod reload;
mod store;
mod supervise;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{Admin, Credentials};
use crate::config::{Config, StateSettings};
use crate::login::LoginFlows;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::outbound::OutboundError;
use crate::proxy::{Proxy, Snapshot};
use crate::server::{ConnInfo, Serve};
use crate::token::accounts::AccountSet;
use crate::token::redis_budget::RedisBudget;
use crate::token::seal::SealError;
use crate::token::store::{StoreError, TokenStore};
use crate::token::Credential;
use crate::upstream::Connector;
use listen::{bind, bind_hint, config_workers, data_path_listeners, spawn_data_path_thread};
use net::{Net, RedisLinks};
use reload::watch_files;
use store::open_checked;

pub use reload::{ReloadError, ReloadTrigger, Source};
pub use store::{credentials, open_checked_store, open_store};

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
    /// The configured state store is not available (its error is shown in this one's
    /// line, not again as a source).
    #[error("state store: {0}")]
    Store(StoreError),
    /// `state.encryption_keys` open none of the sealed token records (a wrong key), or
    /// sealed records exist and no key is configured: nothing was written (exit 64, a
    /// configuration error).
    #[error("state.encryption_keys: {0}")]
    Keys(StoreError),
    /// A key of `state.encryption_keys` is not one (exit 64, a configuration error).
    #[error("state.encryption_keys: {0}")]
    BadKey(SealError),
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
