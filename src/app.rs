//! Wiring: store, credentials and their refreshers, the data-path and admin listeners,
//! and an orderly stop. [`start`] returns the bound addresses, so tests (and `demo`)
//! run whole proxies in-process on `127.0.0.1:0`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::config::{Config, StateSettings};
use crate::login::LoginFlows;
use crate::metrics::Metrics;
use crate::proxy::{upstream_client, Proxy, Snapshot};
use crate::token::redis_store::RedisStore;
use crate::token::source::TokenSource;
use crate::token::store::{FileStore, TokenStore};
use crate::token::Credential;

/// How long in-flight requests may take to finish after a stop is asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `listen` or `admin_listen`.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A non-loopback listener without the opt-in SPEC requires.
    #[error("refusing to listen on {addr} ({what}): it is not a loopback address, and anyone who can reach it could call GoTo with your token")]
    NotLoopback {
        /// The address.
        addr: SocketAddr,
        /// `listen` or `admin_listen`.
        what: &'static str,
    },
    /// The configured state store is not available.
    #[error("state store: {0}")]
    Store(String),
    /// Metrics could not be registered (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A running proxy.
pub struct Running {
    /// Where the data path listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin listener listens.
    pub admin_addr: SocketAddr,
    /// Every credential, by name.
    pub credentials: BTreeMap<String, Arc<Credential>>,
    /// The data-path service (reload swaps its routes).
    pub proxy: Arc<Proxy>,
    /// The metrics.
    pub metrics: Metrics,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Running {
    /// Asks everything to stop; [`Running::wait`] returns once it has.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A handle that stops this proxy when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the listeners have drained and the refreshers have stopped.
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
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
pub async fn open_store(config: &Config, metrics: &Metrics) -> Result<Arc<dyn TokenStore>, StartError> {
    match &config.state {
        StateSettings::File { path } => Ok(Arc::new(FileStore::new(path.clone()))),
        StateSettings::Redis { url, prefix } => {
            let store = RedisStore::connect(url, prefix, Some(metrics.store_errors.clone()))
                .map_err(|e| StartError::Store(e.to_string()))?;
            if let Err(e) = store.ping().await {
                tracing::warn!(error = %e, "shared store unreachable at start; serving what can be served and retrying");
            }
            Ok(Arc::new(store))
        }
    }
}

/// Builds every credential over `store` (no refresher started).
pub fn credentials(
    config: &Config,
    store: &Arc<dyn TokenStore>,
    metrics: &Metrics,
) -> BTreeMap<String, Arc<Credential>> {
    let http = TokenSource::http_client(config.proxy.connect_timeout);
    config
        .credentials
        .iter()
        .map(|(name, cfg)| {
            (name.clone(), Arc::new(Credential::new(cfg.clone(), http.clone(), store.clone(), metrics.clone())))
        })
        .collect()
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    if !addr.ip().is_loopback() {
        return Err(StartError::NotLoopback { addr, what });
    }
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, what, source })
}

/// Starts a proxy for `config`: binds both listeners first (a busy port fails fast),
/// loads stored tokens, then starts the refreshers and serves.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let proxy_listener = bind(config.proxy.listen, "listen").await?;
    let admin_listener = bind(config.proxy.admin_listen, "admin_listen").await?;
    let proxy_addr = proxy_listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.proxy.listen,
        what: "listen",
        source,
    })?;
    let admin_addr = admin_listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.proxy.admin_listen,
        what: "admin_listen",
        source,
    })?;

    let metrics = Metrics::new(prometheus::Registry::new())?;
    let store = open_store(&config, &metrics).await?;
    let credentials = credentials(&config, &store, &metrics);
    let used = config.used_credentials();
    for name in &used {
        if let Some(c) = credentials.get(name) {
            c.init().await;
        }
    }

    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    for name in &used {
        if let Some(c) = credentials.get(name) {
            tasks.spawn(c.clone().run(shutdown.clone()));
        }
    }

    let by_name: HashMap<String, Arc<Credential>> = credentials.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let snapshot = Snapshot::compile(&config, &by_name, &metrics);
    let proxy = Arc::new(Proxy::new(snapshot, upstream_client(&config.proxy), metrics.clone()));
    let login = Arc::new(LoginFlows::new(format!("http://{admin_addr}/callback")));
    let admin = Arc::new(Admin::new(credentials.clone(), used.clone(), metrics.clone(), login));

    let p = proxy.clone();
    tasks.spawn(crate::server::serve(
        proxy_listener,
        move |req| {
            let p = p.clone();
            async move { p.serve(req).await }
        },
        shutdown.clone(),
        DRAIN_TIMEOUT,
    ));
    tasks.spawn(crate::server::serve(
        admin_listener,
        move |req| {
            let a = admin.clone();
            async move { a.serve(req).await }
        },
        shutdown.clone(),
        DRAIN_TIMEOUT,
    ));
    tracing::info!(%proxy_addr, %admin_addr, store = %store.describe(), credentials = ?used, "goto-auth-proxy serving");
    Ok(Running { proxy_addr, admin_addr, credentials, proxy, metrics, shutdown, tasks })
}
