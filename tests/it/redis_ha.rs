//! The shared store on a highly available Redis: a master, its replica and three
//! Sentinels (`redis_sentinels` + `redis_master`), or a 3-master, 3-replica Redis
//! Cluster (`redis_cluster`), each node its own `redis-server`/`redis-sentinel`
//! process on loopback. The master is killed with SIGKILL under load: no request fails,
//! no refresh token is lost, no second password login. Skipped with a notice when the
//! programs are not installed (unless `CI` is set).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio_util::sync::CancellationToken;

use crate::support::*;
use goto_auth_proxy::testing::StoredToken;
use goto_auth_proxy::Running;
use goto_mock::MockGoto;

/// The name the sentinels monitor the master under.
const MASTER: &str = "gapmaster";

/// One Redis process (server or sentinel) on a loopback port; SIGKILLed on drop.
struct Node {
    child: Option<Child>,
    port: u16,
    /// What clients authenticate with (`requirepass`), if anything.
    password: Option<String>,
}

impl Node {
    fn spawn(program: &str, args: &[String]) -> Node {
        let port = args.iter().position(|a| a == "--port").map(|i| args[i + 1].parse().expect("port")).unwrap_or(0);
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Node { child: Some(child), port, password: None }
    }

    fn url(&self) -> String {
        let auth = self.password.as_ref().map(|p| format!(":{p}@")).unwrap_or_default();
        format!("redis://{auth}127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("url");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Ok(c)) =
                tokio::time::timeout(Duration::from_millis(500), client.get_multiplexed_async_connection()).await
            {
                return c;
            }
            assert!(tokio::time::Instant::now() < deadline, "port {} does not answer", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The answer to `INFO replication` (or another section).
    async fn info(&self, section: &str) -> String {
        redis::cmd("INFO").arg(section).query_async(&mut self.conn().await).await.expect("INFO")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
    }
}

/// `redis-server` on `port`, no persistence, files in `dir`.
fn server_args(port: u16, dir: &Path, extra: &[&str]) -> Vec<String> {
    // A replica syncs at once (the default waits 5 s for more replicas to join).
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync-delay",
        "0",
        "--dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(dir.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn installed(programs: &[&str]) -> bool {
    for p in programs {
        if Command::new(p).arg("--version").output().is_err() {
            if std::env::var_os("CI").is_some() {
                panic!("{p} is not installed (scripts/install-test-deps.sh installs it)");
            }
            eprintln!("NOTICE: {p} not found; skipping this Redis test (apt-get install redis-server redis-sentinel)");
            return false;
        }
    }
    true
}

/// A TCP relay on a loopback port to `to`, whose direction from `to` can be cut: the
/// replica behind it stays connected to its master but hears nothing more from it
/// (what a slow link does to the last writes before a crash).
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else { continue };
                // As Redis's own replication link: no Nagle delay on small writes.
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                let (mut ir, mut iw) = inbound.into_split();
                let (mut or, mut ow) = outbound.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut ir, &mut ow).await });
                let flag = flag.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match or.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if !flag.load(Ordering::SeqCst) && iw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Relay { port, cut, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A master, one replica, three sentinels watching them as [`MASTER`].
struct Sentinels {
    master: Node,
    replica: Node,
    sentinels: Vec<Node>,
    /// Between the replica and its master, when asked for.
    relay: Option<Relay>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    async fn start() -> Option<Sentinels> {
        Sentinels::start_with(false, None).await
    }

    /// `relayed`: the replica replicates through a [`Relay`]. (Sentinel would point it
    /// at the master directly after `failover-timeout`, 60 s here: longer than a test.)
    /// `password`: every server and sentinel requires it.
    async fn start_with(relayed: bool, password: Option<&str>) -> Option<Sentinels> {
        if !installed(&["redis-server", "redis-sentinel"]) {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = |name: &str| -> PathBuf {
            let p = dir.path().join(name);
            std::fs::create_dir_all(&p).expect("mkdir");
            p
        };
        let auth: Vec<&str> = match password {
            Some(p) => vec!["--requirepass", p, "--masterauth", p],
            None => vec![],
        };
        let mport = free_port();
        let mut master = Node::spawn("redis-server", &server_args(mport, &sub("master"), &auth));
        master.password = password.map(str::to_string);
        master.conn().await;
        let relay = if relayed { Some(Relay::start(mport).await) } else { None };
        let upstream = relay.as_ref().map_or(mport, |r| r.port).to_string();
        let rport = free_port();
        let replica_args = [&auth[..], &["--replicaof", "127.0.0.1", &upstream]].concat();
        let mut replica = Node::spawn("redis-server", &server_args(rport, &sub("replica"), &replica_args));
        replica.password = password.map(str::to_string);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !replica.info("replication").await.contains("master_link_status:up") {
            assert!(tokio::time::Instant::now() < deadline, "the replica did not sync");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            // Sentinel rewrites its configuration file: one each, writable.
            let conf = sub(&format!("sentinel{i}")).join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER} 127.0.0.1 {mport} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} {}\n",
                    conf.parent().unwrap().display(),
                    if relayed { 60_000 } else { 5_000 }
                ) + &password
                    .map(|p| format!("requirepass {p}\nsentinel auth-pass {MASTER} {p}\n"))
                    .unwrap_or_default(),
            )
            .expect("sentinel.conf");
            let mut node = Node::spawn("redis-sentinel", &[conf.display().to_string()]);
            node.port = port;
            node.password = password.map(str::to_string);
            sentinels.push(node);
        }
        let set = Sentinels { master, replica, sentinels, relay, _dir: dir };
        // A failover needs each sentinel to know the replica and the two others.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut ready = true;
            for s in &set.sentinels {
                let mut c = s.conn().await;
                let replicas: Vec<redis::Value> =
                    redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER).query_async(&mut c).await.unwrap_or_default();
                let peers: Vec<redis::Value> =
                    redis::cmd("SENTINEL").arg("SENTINELS").arg(MASTER).query_async(&mut c).await.unwrap_or_default();
                ready &= replicas.len() == 1 && peers.len() == 2;
            }
            if ready {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the sentinels did not find each other and the replica");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(set)
    }

    /// `[state]` for proxies on these sentinels under `prefix`.
    fn state(&self, prefix: &str) -> String {
        let urls: Vec<String> = self.sentinels.iter().map(|s| format!("\"{}\"", s.url())).collect();
        format!(
            "[state]\nstore = \"redis\"\nredis_sentinels = [{}]\nredis_master = \"{MASTER}\"\nredis_prefix = \"{prefix}\"\n",
            urls.join(", ")
        )
    }

    /// The master's port, as the first sentinel names it.
    async fn master_port(&self) -> u16 {
        let mut c = self.sentinels[0].conn().await;
        let (_, port): (String, String) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER)
            .query_async(&mut c)
            .await
            .expect("master address");
        port.parse().expect("port")
    }

    /// Waits until the sentinels name the replica as master, and it says it is one.
    async fn wait_promoted(&self, within: Duration) -> Instant {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.master_port().await == self.replica.port
                && self.replica.info("replication").await.contains("role:master")
            {
                return Instant::now();
            }
            assert!(tokio::time::Instant::now() < deadline, "no failover within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The record under `key` on `node`.
async fn stored_on(node: &Node, key: &str) -> Option<StoredToken> {
    let raw: Option<String> = redis::cmd("GET").arg(key).query_async(&mut node.conn().await).await.expect("GET");
    raw.map(|j| serde_json::from_str(&j).expect("stored token JSON"))
}

/// A replica serving `g2a` (Direct Login: a second login would revoke the others'
/// tokens) under `state`.
fn g2a_config(mock: &MockGoto, state: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntoken_wait = \"5s\"\n\n{state}\n{}\n{}",
        password_cred("g2a", mock),
        route("/", mock, Some("g2a"))
    )
}

fn urls(reps: &[&Running]) -> Vec<String> {
    reps.iter().map(|r| format!("http://{}/G2A/rest/v1/sessions", r.proxy_addr)).collect()
}

/// Waits until every replica serves the token `node` holds under `key`.
async fn wait_serving_stored(reps: &[&Running], node: &Node, key: &str, within: Duration) -> StoredToken {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(s) = stored_on(node, key).await {
            let all = reps.iter().all(|r| {
                r.credentials()["g2a"].load().as_ref().map(|t| t.access_token.expose().to_string())
                    == Some(s.access_token.clone())
            });
            if all {
                return s;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "replicas do not serve the token stored under {key}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two proxies serving `g2a` (Direct Login: a second login revokes the others' tokens)
/// with tokens of `lifetime` seconds, under load.
struct LoadedPair {
    mock: MockGoto,
    config: String,
    a: Running,
    b: Running,
    lifetime: f64,
    stop: CancellationToken,
    load: tokio::task::JoinHandle<LoadReport>,
    started: Instant,
}

impl LoadedPair {
    async fn start(state: &str, lifetime: u64) -> LoadedPair {
        let mock = MockGoto::start(short_tokens(lifetime)).await.unwrap();
        let config = g2a_config(&mock, state);
        let (a, b) = (start_proxy(&config).await, start_proxy(&config).await);
        let http = client();
        for r in [&a, &b] {
            wait_ready(&http, &format!("http://{}/readyz", r.admin_addr), Duration::from_secs(10)).await;
        }
        let stop = CancellationToken::new();
        let load = tokio::spawn(load(urls(&[&a, &b]), 4, Duration::from_millis(5), stop.clone()));
        let pair = LoadedPair { mock, config, a, b, lifetime: lifetime as f64, stop, load, started: Instant::now() };
        // Through one renewal, so the stored record is one the proxies renewed.
        pair.wait_renewal(Duration::from_secs(10), "no renewal before the kill").await;
        pair
    }

    /// Waits for the next token the mock issues.
    async fn wait_renewal(&self, within: Duration, what: &str) {
        let before = self.mock.issued().len();
        let deadline = tokio::time::Instant::now() + within;
        while self.mock.issued().len() <= before {
            assert!(tokio::time::Instant::now() < deadline, "{what}: {:?}", self.mock.stats());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the load and checks what a user would notice: no failed request, one
    /// password login, the token calls of one replica (×1.5); then a third replica
    /// started now takes the stored token up without a login.
    async fn finish(self, measured: &str) {
        self.stop.cancel();
        let report = self.load.await.unwrap();
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!(
            "MEASURED {measured}; {} requests, {} failed; latency p50 {:.1} ms, p99 {:.1} ms, slowest {:.1} ms",
            report.requests,
            report.failures.len(),
            report.latency(0.5).as_secs_f64() * 1000.0,
            report.latency(0.99).as_secs_f64() * 1000.0,
            report.latency(1.0).as_secs_f64() * 1000.0
        );
        report.assert_no_failures();
        let stats = self.mock.stats();
        assert_eq!(stats.password_logins, 1, "a second password login: {stats:?}");
        let one = 1.0 + secs / (self.lifetime / 2.0 * 0.9);
        assert!(
            stats.token_calls as f64 <= 1.5 * one,
            "{} token calls in {secs:.1} s; one replica makes about {one:.0}: {stats:?}",
            stats.token_calls
        );

        let c = start_proxy(&self.config).await;
        let res = client().get(format!("http://{}/G2A/rest/v1/sessions", c.proxy_addr)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let after = self.mock.stats();
        assert_eq!(after.password_logins, 1, "the third replica logged in: {after:?}");
        assert!(
            after.token_calls <= stats.token_calls + 1,
            "the third replica made a token call of its own: {after:?}"
        );
        for r in [self.a, self.b, c] {
            r.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load_loses_no_token_and_costs_no_login() {
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_test_writer().try_init();
    let Some(mut set) = Sentinels::start().await else { return };
    measure_wait(&set, 200).await;
    let key = "ha:token:g2a";
    let pair = LoadedPair::start(&set.state("ha"), 4).await;
    wait_serving_stored(&[&pair.a, &pair.b], &set.master, key, Duration::from_secs(5)).await;

    let killed = Instant::now();
    set.master.kill();
    let promoted = set.wait_promoted(Duration::from_secs(15)).await;
    // The next renewal is stored on the new master, and both proxies serve it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let issued = pair.mock.issued().len();
    let on_new = loop {
        if let Some(s) = stored_on(&set.replica, key).await {
            if pair.mock.issued().len() > issued && pair.mock.is_valid(&s.access_token) {
                break Instant::now();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no renewal stored on the new master: {:?}", pair.mock.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // And one more: the chain of refresh tokens goes on.
    pair.wait_renewal(Duration::from_secs(10), "renewals stopped after the failover").await;
    let shared = wait_serving_stored(&[&pair.a, &pair.b], &set.replica, key, Duration::from_secs(5)).await;
    assert!(pair.mock.is_valid(&shared.access_token));
    pair.finish(&format!(
        "sentinel failover: promotion {:.2} s after the kill; first renewal stored on the new master {:.2} s \
         after the kill ({:.2} s after the promotion)",
        promoted.duration_since(killed).as_secs_f64(),
        on_new.duration_since(killed).as_secs_f64(),
        on_new.saturating_duration_since(promoted).as_secs_f64(),
    ))
    .await;
}
/// What `WAIT` costs a save: `n` saves through the sentinels (each waits for the
/// replica) against `n` straight to the master (none waits), on loopback.
async fn measure_wait(set: &Sentinels, n: u64) {
    use goto_auth_proxy::testing::RedisStore;
    use goto_auth_proxy::testing::RedisTarget;
    use goto_auth_proxy::testing::Secret;
    use goto_auth_proxy::testing::TokenStore;
    let sentinels = RedisTarget::Sentinel {
        sentinels: set.sentinels.iter().map(|s| Secret::new(s.url())).collect(),
        master: MASTER.to_string(),
    };
    let waits = RedisStore::connect_with_tls(&sentinels, "cost", None, None).unwrap();
    let plain = RedisStore::connect(&Secret::new(set.master.url()), "cost", None).unwrap();
    let mut per_save = Vec::new();
    for (store, key) in [(&waits, "waits"), (&plain, "plain")] {
        store.save(key, &crate::redis::record(0, 0)).await.unwrap(); // connected
        let started = Instant::now();
        for v in 1..=n {
            store.save(key, &crate::redis::record(v, v)).await.unwrap();
        }
        per_save.push(started.elapsed().as_secs_f64() * 1000.0 / n as f64);
    }
    eprintln!(
        "MEASURED WAIT cost: a save takes {:.3} ms with WAIT for the replica, {:.3} ms without ({} saves each, loopback)",
        per_save[0], per_save[1], n
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_raced_against_the_master_kill_is_not_lost() {
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_test_writer().try_init();
    let Some(mut set) = Sentinels::start_with(true, None).await else { return };
    let mock = MockGoto::start(short_tokens(3600)).await.unwrap();
    let config = g2a_config(&mock, &set.state("race"));
    let proxy = start_proxy(&config).await;
    let http = client();
    wait_ready(&http, &format!("http://{}/readyz", proxy.admin_addr), Duration::from_secs(10)).await;
    let first = wait_serving_stored(&[&proxy], &set.master, "race:token:g2a", Duration::from_secs(5)).await;
    // The replica has it (and the renewal lock's release), then hears nothing more from
    // its master: the next save reaches the master only.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let version = stored_on(&set.replica, "race:token:g2a").await.map(|s| s.version);
        let locked: bool =
            redis::cmd("EXISTS").arg("race:lock:g2a").query_async(&mut set.replica.conn().await).await.unwrap();
        if version == Some(first.version) && !locked {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the replica did not get the first token");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    set.relay.as_ref().expect("relayed").cut.store(true, Ordering::SeqCst);

    // A save no replica confirms in time stands, and is logged and counted.
    {
        use goto_auth_proxy::testing::RedisStore;
        use goto_auth_proxy::testing::RedisTarget;
        use goto_auth_proxy::testing::Secret;
        use goto_auth_proxy::testing::{Saved, TokenStore};
        let counter = prometheus::IntCounter::new("replication_timeouts", "test").unwrap();
        let target = RedisTarget::Sentinel {
            sentinels: set.sentinels.iter().map(|s| Secret::new(s.url())).collect(),
            master: MASTER.to_string(),
        };
        let store = RedisStore::connect_with_tls(&target, "slow", None, None)
            .unwrap()
            .with_replication_counter(counter.clone());
        let started = Instant::now();
        assert_eq!(store.save("c", &crate::redis::record(1, 0)).await.unwrap(), Saved::Stored(1));
        assert!(started.elapsed() >= Duration::from_millis(450), "the save did not wait for a replica");
        assert_eq!(counter.get(), 1, "the timed-out wait is counted");
    }

    // A renewal; the master is killed the moment it holds the new record.
    let refresh = {
        let http = http.clone();
        let url = format!("http://{}/refresh/g2a", proxy.admin_addr);
        tokio::spawn(async move { http.post(url).send().await.map(|r| r.status()) })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let renewed = loop {
        if let Some(s) = stored_on(&set.master, "race:token:g2a").await.filter(|s| s.version > first.version) {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "the renewal was never saved");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    set.master.kill();
    let _ = refresh.await;
    set.wait_promoted(Duration::from_secs(15)).await;

    // The promoted replica never got that record; the proxy, told the save was not
    // confirmed, writes the token it holds back there — the refresh token lives on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = stored_on(&set.replica, "race:token:g2a").await;
        if now.as_ref().and_then(|s| s.refresh_token.clone()) == renewed.refresh_token {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed refresh token was lost in the failover (new master holds version {:?})",
            now.map(|s| s.version)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it works: the next renewal refreshes, no password login.
    let res = http.post(format!("http://{}/refresh/g2a", proxy.admin_addr)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let stats = mock.stats();
    assert_eq!(stats.password_logins, 1, "the lost refresh token cost a password login: {stats:?}");
    let res = http.get(format!("http://{}/G2A/rest/v1/sessions", proxy.proxy_addr)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    proxy.stop().await;
}

/// A Redis Cluster of three masters with a replica each (`redis-cli --cluster create`).
struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Option<Cluster> {
        if !installed(&["redis-server", "redis-cli"]) {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for i in 0..6 {
            let d = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&d).expect("mkdir");
            // The bus port of its own (port + 10000 may be taken, or past 65535).
            let bus = free_port().to_string();
            let args = server_args(
                free_port(),
                &d,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-config-file",
                    "nodes.conf",
                    // 2 s: a node starved of CPU for a second on a loaded runner is not failed over.
                    "--cluster-node-timeout",
                    "2000",
                ],
            );
            nodes.push(Node::spawn("redis-server", &args));
        }
        for n in &nodes {
            n.conn().await;
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = Cluster { nodes, _dir: dir };
        // Generous: on a loaded 2-core runner six nodes gossip and sync slowly.
        cluster.wait_ok(Duration::from_secs(60)).await;
        Some(cluster)
    }

    /// Waits until every node says `cluster_state:ok` and every replica has synced (a
    /// replica that never synced does not take over).
    async fn wait_ok(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // What each node that is not ready yet says, for the failure message.
            let mut waiting = Vec::new();
            for n in &self.nodes {
                let info: String =
                    redis::cmd("CLUSTER").arg("INFO").query_async(&mut n.conn().await).await.unwrap_or_default();
                let repl = n.info("replication").await;
                let clustered = info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6");
                let synced = repl.contains("role:master") || repl.contains("master_link_status:up");
                if !(clustered && synced) {
                    let line = |text: &str, key: &str| {
                        text.lines().find(|l| l.starts_with(key)).unwrap_or(key).trim().to_string()
                    };
                    waiting.push(format!(
                        "{}: {} {} {} {}",
                        n.port,
                        line(&info, "cluster_state"),
                        line(&info, "cluster_known_nodes"),
                        line(&repl, "role"),
                        line(&repl, "master_link_status"),
                    ));
                }
            }
            if waiting.is_empty() {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the cluster did not come up: {waiting:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `[state]` for proxies on this cluster (every node a seed) under `prefix`.
    fn state(&self, prefix: &str) -> String {
        let urls: Vec<String> = self.nodes.iter().map(|n| format!("\"redis://127.0.0.1:{}\"", n.port)).collect();
        format!("[state]\nstore = \"redis\"\nredis_cluster = [{}]\nredis_prefix = \"{prefix}\"\n", urls.join(", "))
    }

    /// The index of the node that is master of `key`'s slot now (none while the
    /// cluster fails over).
    async fn master_of(&self, key: &str) -> Option<usize> {
        let live = self.nodes.iter().find(|n| n.child.is_some()).expect("a live node");
        let mut c = live.conn().await;
        let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut c).await.expect("KEYSLOT");
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await.expect("NODES");
        for line in nodes.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let covers = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse::<u16>().unwrap_or(u16::MAX)..=b.parse().unwrap_or(0)).contains(&slot),
                None => r.parse::<u16>().ok() == Some(slot),
            });
            if covers {
                let port: u16 = f[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).expect("port");
                return self.nodes.iter().position(|n| n.port == port);
            }
        }
        None
    }

    /// The record under `key`, read from its slot's master.
    async fn stored(&self, key: &str) -> Option<StoredToken> {
        stored_on(&self.nodes[self.master_of(key).await?], key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_of_the_credentials_master_under_load_loses_nothing() {
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_test_writer().try_init();
    let Some(mut cluster) = Cluster::start().await else { return };
    let key = "hac:token:{g2a}";
    let pair = LoadedPair::start(&cluster.state("hac"), 6).await;
    let holder = cluster.master_of(key).await.expect("a master");
    wait_serving_stored(&[&pair.a, &pair.b], &cluster.nodes[holder], key, Duration::from_secs(5)).await;

    let killed = Instant::now();
    cluster.nodes[holder].kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let promoted = loop {
        if cluster.master_of(key).await.is_some_and(|m| m != holder) {
            break Instant::now();
        }
        assert!(tokio::time::Instant::now() < deadline, "no cluster failover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let issued = pair.mock.issued().len();
    let on_new = loop {
        if let Some(s) = cluster.stored(key).await {
            if pair.mock.issued().len() > issued && pair.mock.is_valid(&s.access_token) {
                break Instant::now();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no renewal stored on the new master: {:?}", pair.mock.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let holder = cluster.master_of(key).await.expect("a master");
    let shared = wait_serving_stored(&[&pair.a, &pair.b], &cluster.nodes[holder], key, Duration::from_secs(5)).await;
    assert!(pair.mock.is_valid(&shared.access_token));
    pair.finish(&format!(
        "cluster failover: promotion {:.2} s after the kill; first renewal stored on the new master {:.2} s after the kill",
        promoted.duration_since(killed).as_secs_f64(),
        on_new.duration_since(killed).as_secs_f64(),
    ))
    .await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_each_credentials_keys_share_a_slot_and_changes_are_announced() {
    use goto_auth_proxy::testing::RedisStore;
    use goto_auth_proxy::testing::RedisTarget;
    use goto_auth_proxy::testing::Secret;
    use goto_auth_proxy::testing::{Saved, TokenStore};
    let record = crate::redis::record;
    let Some(cluster) = Cluster::start().await else { return };
    let seeds = RedisTarget::Cluster(vec![Secret::new(cluster.nodes[0].url())]);
    let a = RedisStore::connect_with_tls(&seeds, "unit", None, None).unwrap();
    let b = RedisStore::connect_with_tls(&seeds, "unit", None, None).unwrap();
    let mut changes = b.changes().expect("a shared store notifies");
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.unwrap().unwrap(), "");

    // Account records: the script writes the record and the credential's account set
    // together — on a cluster only when both are in one slot (else CROSSSLOT).
    for (i, name) in ["goto/alice", "goto/bob", "g2a", "other/carol"].into_iter().enumerate() {
        assert_eq!(a.save(name, &record(i as u64, 0)).await.unwrap(), Saved::Stored(1), "{name}");
        // ("" says anything may have changed: sent again when a node's subscription is.)
        let notice = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match changes.recv().await.unwrap() {
                    n if n.is_empty() => continue,
                    n => return n,
                }
            }
        })
        .await
        .expect("a change notice within 5 s");
        assert_eq!(notice, name, "the change notice crosses the cluster");
    }
    assert_eq!(b.accounts("goto").await.unwrap(), ["alice", "bob"]);
    assert_eq!(b.load("goto/bob").await.unwrap(), Some(record(1, 1)));
    assert_eq!(
        a.save("goto/bob", &record(9, 0)).await.unwrap(),
        Saved::Stale { current: Some(record(1, 1)), version: 1 }
    );
    let lock = b.lock("goto/bob", Duration::from_secs(10)).await.unwrap().expect("free lock");
    assert!(a.lock("goto/bob", Duration::from_secs(10)).await.unwrap().is_none(), "a held lock is not granted twice");
    b.unlock("goto/bob", lock).await.unwrap();
    b.remove("goto/alice").await.unwrap();
    assert_eq!(a.accounts("goto").await.unwrap(), ["bob"]);

    // The keys of one credential live in one slot; the credentials spread over the cluster.
    let slot = |key: &'static str| {
        let node = &cluster.nodes[0];
        async move {
            let s: u16 =
                redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut node.conn().await).await.unwrap();
            s
        }
    };
    let goto = slot("unit:token:{goto}/bob").await;
    for key in ["unit:accounts:{goto}", "unit:lock:{goto}/bob", "unit:token:{goto}"] {
        assert_eq!(slot(key).await, goto, "{key}");
    }
    assert!(cluster.stored("unit:token:{goto}/bob").await.is_some(), "the record is under its hash-tagged name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_master_behind_a_password_are_followed_past_a_silent_sentinel() {
    use goto_auth_proxy::testing::RedisStore;
    use goto_auth_proxy::testing::RedisTarget;
    use goto_auth_proxy::testing::Secret;
    use goto_auth_proxy::testing::{Saved, TokenStore};
    let record = crate::redis::record;
    let Some(mut set) = Sentinels::start_with(false, Some("hunter2-sentinel")).await else { return };
    let target = |urls: Vec<String>| RedisTarget::Sentinel {
        sentinels: urls.into_iter().map(Secret::new).collect(),
        master: MASTER.to_string(),
    };
    // The first sentinel listed accepts connections and never answers (its host gone
    // silent): the others' answer is taken all the same.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("redis://:hunter2-sentinel@{}/0", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let urls = std::iter::once(silent_url).chain(set.sentinels.iter().map(Node::url)).collect();
    let store = RedisStore::connect_with_tls(&target(urls), "pw", None, None).unwrap();
    assert_eq!(store.save("c", &record(1, 0)).await.unwrap(), Saved::Stored(1));
    assert!(!store.describe().contains("hunter2"), "{}", store.describe());

    // A wrong password is refused, and the error does not quote it.
    let wrong = set.sentinels.iter().map(|s| s.url().replace("hunter2-sentinel", "wrong-hunter2")).collect();
    let e = RedisStore::connect_with_tls(&target(wrong), "pw", None, None).unwrap().load("c").await.unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");

    // Through a failover, with the password on the new master too.
    set.master.kill();
    set.wait_promoted(Duration::from_secs(15)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.save("c", &record(2, 1)).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "not on the new master within 5 s of the promotion");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_on(&set.replica, "pw:token:c").await, Some(record(2, 2)));
    held.abort();
}
