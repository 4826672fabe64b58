//! How the shared state reaches Redis: one server (`redis_url`), the master a set of
//! Sentinels names (`redis_sentinels` + `redis_master`), or a Redis Cluster
//! (`redis_cluster`) — through the `redis` crate's own Sentinel and cluster clients, no
//! protocol of our own.
//!
//! A [`Link`] hands each operation a [`Conn`]. With Sentinel it follows a failover: an
//! operation that fails (the master died, or answers `READONLY` after being demoted)
//! makes it ask the sentinels again ([`Link::suspect`]), so does a sentinel's
//! `+switch-master` announcement ([`watch_switches`]), and once they name another
//! master every new operation — saves, locks, the change subscription — goes there.
//! A read-only replica is never written to: the sentinels' answer is checked by the
//! client (the node must say it is a master). On a cluster the client itself follows
//! `MOVED`/`ASK` and a failover of a node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, TlsCertificates, TlsMode, Value};

use crate::config::RedisTarget;
use crate::secret::Secret;

/// How long a burst of failures waits before the sentinels are asked again.
const ASK_AGAIN: Duration = Duration::from_millis(200);

/// Timeouts of one link's connections.
#[derive(Clone, Copy)]
pub(crate) struct Timeouts {
    /// To open a connection.
    pub connect: Duration,
    /// For one answer.
    pub response: Duration,
}

/// One operation's connection: a handle on the (current master's) multiplexed
/// connection, or on the cluster connection, which sends each command to its slot's node.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server.
    Single(ConnectionManager),
    /// The master Sentinel named, at this address.
    Master(ConnectionManager, Arc<str>),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) | Conn::Master(c, _) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) | Conn::Master(c, _) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) | Conn::Master(c, _) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What `WAIT` said of the writes made so far on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replication {
    /// A replica has them.
    Confirmed,
    /// The master has no replica: its own copy is all there is.
    NoReplica,
    /// The master has replicas, and none confirmed in time.
    TimedOut,
}

impl Conn {
    /// Waits up to `timeout` until a replica of the master holding `key` has every write
    /// made so far on this connection (`WAIT 1`). A master with no replica (`ROLE`
    /// lists none) answers at once; where `ROLE` is refused (a managed Redis's rules),
    /// `WAIT` alone decides.
    pub(crate) async fn replicated(&mut self, key: &str, timeout: Duration) -> RedisResult<Replication> {
        let replicas = match self.on_node_of(key, &redis::cmd("ROLE")).await {
            // A master answers ["master", offset, [[ip, port, offset], …]].
            Ok(Value::Array(parts)) => match parts.get(2) {
                Some(Value::Array(r)) => Some(r.len()),
                _ => Some(0),
            },
            Ok(_) => Some(0),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => return Err(e),
            Err(_) => None,
        };
        if replicas == Some(0) {
            return Ok(Replication::NoReplica);
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let acked: Value = self.on_node_of(key, &wait).await?;
        let acked: i64 = redis::from_redis_value(acked)?;
        Ok(if acked >= 1 { Replication::Confirmed } else { Replication::TimedOut })
    }

    /// Sends `cmd` to the master that holds `key` (on a cluster: that slot's master;
    /// the cluster client would otherwise send `WAIT` to every master).
    async fn on_node_of(&mut self, key: &str, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) | Conn::Master(c, _) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                c.route_command(cmd.clone(), RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route))).await
            }
        }
    }
}

/// The master Sentinel named last, and the connection to it.
struct Master {
    address: Arc<str>,
    client: redis::Client,
    conn: ConnectionManager,
}

/// The clients in force (replaced whole when a reload changes `[tls]`).
enum Wired {
    Single {
        client: redis::Client,
        conn: ConnectionManager,
    },
    Sentinel {
        /// One client per sentinel, asked all at once: a sentinel that does not answer
        /// (its host gone) cannot hold up the others' answer.
        sentinels: Vec<tokio::sync::Mutex<SentinelClient>>,
        master: ArcSwapOption<Master>,
    },
    Cluster {
        client: Box<ClusterClient>,
        /// Opened at the first operation (a proxy starts while the cluster is down).
        conn: tokio::sync::OnceCell<ClusterConnection>,
        /// For the change subscriber's own client (RESP3, with a push channel).
        seeds: Vec<Secret>,
        tls: Option<TlsCertificates>,
    },
}

/// A way to Redis, shared by the store and the rate budget: each operation takes the
/// connection in force; a replaced one closes once its last operation is done.
pub(crate) struct Link {
    target: RedisTarget,
    timeouts: Timeouts,
    wired: ArcSwap<Wired>,
    /// Bumped whenever operations move to another server (a failover, a `[tls]`
    /// reload): the change subscriber subscribes again there.
    moved: tokio::sync::watch::Sender<u64>,
    /// When the sentinels were last asked, so that a burst of failures asks once.
    asked: std::sync::Mutex<Option<Instant>>,
    /// Set when a sentinel announces `+switch-master`: the next operation asks the
    /// sentinels first ([`watch_switches`]).
    switched: Arc<AtomicBool>,
    /// Stops the `+switch-master` watch when the link goes.
    stop: CancellationToken,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Link {
    /// Connects lazily (inside a tokio runtime): a proxy starts while Redis is down.
    pub(crate) fn new(target: &RedisTarget, tls: Option<TlsCertificates>, timeouts: Timeouts) -> RedisResult<Link> {
        let wired = Link::wire(target, tls.clone(), timeouts)?;
        let (switched, stop) = (Arc::new(AtomicBool::new(false)), CancellationToken::new());
        if let RedisTarget::Sentinel { sentinels, .. } = target {
            for url in sentinels {
                tokio::spawn(watch_switches(url.clone(), tls.clone(), switched.clone(), stop.clone()));
            }
        }
        Ok(Link {
            target: target.clone(),
            timeouts,
            wired: ArcSwap::from_pointee(wired),
            moved: tokio::sync::watch::channel(0).0,
            asked: std::sync::Mutex::new(None),
            switched,
            stop,
        })
    }

    /// Whether `conn` (the connection a save went through) is still on the master the
    /// sentinels name, asking them now: a master that has lost its replica may be one
    /// they have just replaced, whose writes the failover discards. `true` off Sentinel.
    pub(crate) async fn still_master(&self, conn: &Conn) -> bool {
        let Conn::Master(_, address) = conn else { return true };
        let wired = self.wired.load_full();
        match self.ask(&wired).await {
            Ok(m) => m.address == *address,
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask the sentinels whether the master is still the master");
                false
            }
        }
    }

    fn wire(target: &RedisTarget, tls: Option<TlsCertificates>, t: Timeouts) -> RedisResult<Wired> {
        Ok(match target {
            RedisTarget::Single(url) => {
                let client = client_for(url, tls)?;
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config(t))?;
                Wired::Single { client, conn }
            }
            RedisTarget::Sentinel { sentinels, master } => Wired::Sentinel {
                sentinels: sentinels
                    .iter()
                    .map(|s| Ok(tokio::sync::Mutex::new(sentinel_client(s, &sentinels[0], master, tls.clone())?)))
                    .collect::<RedisResult<_>>()?,
                master: ArcSwapOption::empty(),
            },
            RedisTarget::Cluster(seeds) => Wired::Cluster {
                client: Box::new(cluster_builder(seeds, tls.clone(), t).build()?),
                conn: tokio::sync::OnceCell::new(),
                seeds: seeds.clone(),
                tls,
            },
        })
    }

    /// The connection in force (a cheap handle); with Sentinel, asks for the master
    /// first when none is known yet.
    pub(crate) async fn conn(&self) -> RedisResult<Conn> {
        let wired = self.wired.load_full();
        match &*wired {
            Wired::Single { conn, .. } => Ok(Conn::Single(conn.clone())),
            Wired::Sentinel { master, .. } => {
                let m = match master.load_full() {
                    // A sentinel announced a failover: ask which master won first (and
                    // again at the next operation while they cannot say).
                    Some(m) if !self.switched.swap(false, Ordering::SeqCst) => m,
                    known => self.ask(&wired).await.inspect_err(|_| {
                        if known.is_some() {
                            self.switched.store(true, Ordering::SeqCst);
                        }
                    })?,
                };
                Ok(Conn::Master(m.conn.clone(), m.address.clone()))
            }
            Wired::Cluster { client, conn, .. } => {
                let c = conn.get_or_try_init(|| client.get_async_connection()).await?;
                Ok(Conn::Cluster(c.clone()))
            }
        }
    }

    /// A client for a pub/sub connection of its own to the server in force (one
    /// server, or Sentinel's master); `None` on a cluster ([`Link::cluster_subscriber`]).
    pub(crate) async fn pubsub_client(&self) -> RedisResult<Option<redis::Client>> {
        let wired = self.wired.load_full();
        match &*wired {
            Wired::Single { client, .. } => Ok(Some(client.clone())),
            Wired::Sentinel { master, .. } => match master.load_full() {
                Some(m) => Ok(Some(m.client.clone())),
                None => Ok(Some(self.ask(&wired).await?.client.clone())),
            },
            Wired::Cluster { .. } => Ok(None),
        }
    }

    /// On a cluster, a connection of its own that delivers what it subscribes to
    /// through `push` (RESP3), subscribing again by itself after a node fails.
    pub(crate) async fn cluster_subscriber(
        &self,
        push: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> RedisResult<Option<ClusterConnection>> {
        let wired = self.wired.load_full();
        let Wired::Cluster { seeds, tls, .. } = &*wired else { return Ok(None) };
        let client = cluster_builder(seeds, tls.clone(), self.timeouts)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            .build()?;
        Ok(Some(client.get_async_connection().await?))
    }

    /// Changes whenever operations move to another server.
    pub(crate) fn moves(&self) -> tokio::sync::watch::Receiver<u64> {
        self.moved.subscribe()
    }

    /// An operation failed: with Sentinel, ask the sentinels whether the master moved
    /// (at most every [`ASK_AGAIN`]). Nothing to do otherwise: one server is retried as
    /// it is, and the cluster client follows its cluster by itself.
    pub(crate) async fn suspect(&self) {
        let wired = self.wired.load_full();
        if !matches!(&*wired, Wired::Sentinel { .. }) {
            return;
        }
        {
            let Ok(mut asked) = self.asked.lock() else { return };
            if asked.is_some_and(|at| at.elapsed() < ASK_AGAIN) {
                return;
            }
            *asked = Some(Instant::now());
        }
        if let Err(e) = self.ask(&wired).await {
            tracing::debug!(error = %e, "cannot learn the master from the sentinels yet");
        }
    }

    /// Asks every sentinel for the master at once, within twice the response timeout;
    /// the first answer whose node says it is a master counts (the client checks). When
    /// it names another than the one in use, operations move there.
    async fn ask(&self, wired: &Wired) -> RedisResult<Arc<Master>> {
        let Wired::Sentinel { sentinels, master } = wired else {
            return Err(redis::RedisError::from((redis::ErrorKind::Client, "not a Sentinel link")));
        };
        let asks = sentinels.iter().map(|s| Box::pin(async move { s.lock().await.async_get_client().await }));
        let answer =
            tokio::time::timeout(self.timeouts.response.saturating_mul(2), futures_util::future::select_ok(asks));
        let (client, _) = answer.await.unwrap_or_else(|_| {
            Err(redis::RedisError::from((redis::ErrorKind::Io, "the sentinels gave no answer in time")))
        })?;
        let address: Arc<str> = client.get_connection_info().addr().to_string().into();
        if let Some(m) = master.load_full().filter(|m| m.address == address) {
            return Ok(m);
        }
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config(self.timeouts))?;
        let new = Arc::new(Master { address: address.clone(), client, conn });
        let old = master.swap(Some(new.clone()));
        match old {
            Some(old) => tracing::warn!(from = %old.address, to = %address, "the Redis master moved: following it"),
            None => tracing::info!(master = %address, "the sentinels name the Redis master"),
        }
        self.moved.send_modify(|n| *n = n.wrapping_add(1));
        Ok(new)
    }

    /// New connections trust `tls` (a reload changed `[tls]` under `rediss://`).
    pub(crate) fn retls(&self, tls: Option<TlsCertificates>) -> RedisResult<()> {
        let wired = Link::wire(&self.target, tls, self.timeouts)?;
        self.wired.store(Arc::new(wired));
        self.moved.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}

/// Subscribes to `+switch-master` on the sentinel at `url` (reconnecting with a capped
/// backoff) and sets `switched` at each announcement, so a failover is followed at the
/// next operation even when the old master still answers (a false alarm, a partition):
/// writes there would be discarded when it rejoins as a replica.
async fn watch_switches(url: Secret, tls: Option<TlsCertificates>, switched: Arc<AtomicBool>, stop: CancellationToken) {
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut pubsub = client_for(&url, tls.clone())?.get_async_pubsub().await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let subscribed = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(2), attempt) => r,
        };
        if let Ok(Ok(pubsub)) = subscribed {
            pause = Duration::from_millis(100);
            // Announcements missed while not subscribed: ask once now.
            switched.store(true, Ordering::SeqCst);
            let mut messages = pubsub.into_on_message();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    m = messages.next() => match m {
                        Some(_) => switched.store(true, Ordering::SeqCst),
                        None => break,
                    },
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = pause.saturating_mul(2).min(Duration::from_secs(5));
    }
}

/// The reconnecting connection's settings: each attempt bounded, one retry.
fn manager_config(t: Timeouts) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(t.connect))
        .set_response_timeout(Some(t.response))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200))
}

/// The Redis client for `url`: a `rediss://` URL with `tls` trusts `[tls]`'s roots and
/// presents its client certificate.
fn client_for(url: &Secret, tls: Option<TlsCertificates>) -> RedisResult<redis::Client> {
    match tls {
        Some(certs) if url.expose().starts_with("rediss://") => redis::Client::build_with_tls(url.expose(), certs),
        _ => redis::Client::open(url.expose()),
    }
}

/// A client that asks the sentinel at `sentinel` for `master`'s address. Sentinels and
/// master are reached with the user and password of `first` (the first sentinel URL),
/// the master with its database too; over TLS (trusting `tls`) when that URL is
/// `rediss://`.
fn sentinel_client(
    sentinel: &Secret,
    first: &Secret,
    master: &str,
    tls: Option<TlsCertificates>,
) -> RedisResult<SentinelClient> {
    let addr = sentinel.expose().into_connection_info()?.addr().clone();
    let settings = first.expose().into_connection_info()?.redis_settings().clone();
    let secure = first.expose().starts_with("rediss://");
    let mut b =
        SentinelClientBuilder::new([addr], master, SentinelServerType::Master)?.set_client_to_redis_db(settings.db());
    if let Some(user) = settings.username() {
        b = b.set_client_to_redis_username(user).set_client_to_sentinel_username(user);
    }
    if let Some(password) = settings.password() {
        b = b.set_client_to_redis_password(password).set_client_to_sentinel_password(password);
    }
    if secure {
        b = b.set_client_to_redis_tls_mode(TlsMode::Secure).set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(certs) = tls {
            b = b.set_client_to_redis_certificates(certs.clone()).set_client_to_sentinel_certificates(certs);
        }
    }
    b.build()
}

/// A cluster client over `seeds`, trusting `tls` under `rediss://`.
fn cluster_builder(seeds: &[Secret], tls: Option<TlsCertificates>, t: Timeouts) -> ClusterClientBuilder {
    let mut b = ClusterClientBuilder::new(seeds.iter().map(|s| s.expose().to_string()).collect::<Vec<_>>())
        .connection_timeout(t.connect)
        .response_timeout(t.response)
        .retries(2);
    if let Some(certs) = tls.filter(|_| seeds.iter().any(|s| s.expose().starts_with("rediss://"))) {
        b = b.certs(certs);
    }
    b
}

/// Where `target` is, for logs and errors: `host:port/db` of each URL, never a password.
pub(crate) fn location_of(target: &RedisTarget) -> String {
    let places: Vec<String> = target.urls().iter().map(|u| url_location(u.expose())).collect();
    match target {
        RedisTarget::Single(_) => places.join(","),
        RedisTarget::Sentinel { master, .. } => format!("sentinel {master} via {}", places.join(",")),
        RedisTarget::Cluster(_) => format!("cluster {}", places.join(",")),
    }
}

/// `host:port/db` of a Redis URL, without user or password.
pub(crate) fn url_location(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}{}", u.scheme(), u.path())
        }
        Err(_) => "(unparsable URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_hides_the_password() {
        let l = url_location("redis://user:hunter2@cache.internal:6380/2");
        assert_eq!(l, "redis://cache.internal:6380/2");
        assert!(!url_location("rediss://:hunter2@h/0").contains("hunter2"));
        assert_eq!(url_location("not a url"), "(unparsable URL)");
        let s = RedisTarget::Sentinel {
            sentinels: vec![Secret::new("redis://:pw1@a:26379"), Secret::new("redis://:pw1@b:26379")],
            master: "mymaster".into(),
        };
        assert_eq!(location_of(&s), "sentinel mymaster via redis://a:26379,redis://b:26379");
    }
}
