//! `store = "redis"`: replicas share one token per credential, make the token calls of
//! one, and keep serving through a Redis that is down, slow, or restarted empty. Each
//! test starts its own `redis-server` (skipped with a notice when it is not installed,
//! unless `CI` is set).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::support::*;
use goto_auth_proxy::testing::RedisStore;
use goto_auth_proxy::testing::Secret;
use goto_auth_proxy::testing::{Saved, StoredToken, TokenStore};
use goto_auth_proxy::Running;
use goto_mock::MockGoto;

/// Config for one replica: the usual two credentials, state in `redis` under `prefix`.
fn replica_config(mock: &MockGoto, redis: &RedisServer, prefix: &str, seed: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntoken_wait = \"5s\"\n\n{}\n{}\n{}\n{}\n{}",
        redis.state(prefix),
        password_cred("g2a", mock),
        code_cred("goto", mock, Some(seed)),
        route("/G2A/", mock, Some("g2a")),
        route("/", mock, Some("goto"))
    )
}

async fn replicas(n: usize, config: &str) -> Vec<Running> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(start_proxy(config).await);
    }
    out
}

/// Both credentials' paths on every replica.
fn urls(replicas: &[Running]) -> Vec<String> {
    replicas
        .iter()
        .flat_map(|r| {
            ["/G2A/rest/v1/sessions", "/G2W/rest/v2/organizers/{organizerKey}/webinars"]
                .into_iter()
                .map(move |p| format!("http://{}{p}", r.proxy_addr))
        })
        .collect()
}

/// Token calls one replica makes in `secs` seconds with tokens of `lifetime` seconds, per
/// credential: the first, then one each time half the life (minus ≤10 % jitter) is gone.
fn single_replica_calls(secs: f64, lifetime: f64) -> f64 {
    1.0 + secs / (lifetime / 2.0 * 0.9)
}

fn assert_spaced(times: &[Instant], at_least: Duration, what: &str) {
    for w in times.windows(2) {
        let gap = w[1].duration_since(w[0]);
        assert!(gap >= at_least, "two {what} {gap:?} apart (at least {at_least:?} expected)");
    }
}

async fn stored(redis: &RedisServer, key: &str) -> Option<StoredToken> {
    redis.get(key).await.map(|j| serde_json::from_str(&j).expect("stored token JSON"))
}

/// Polls until every replica serves the token stored in Redis, for both credentials.
async fn wait_converged(reps: &[Running], redis: &RedisServer, prefix: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut same = true;
        for cred in ["g2a", "goto"] {
            let shared = stored(redis, &format!("{prefix}:token:{cred}")).await.map(|s| s.access_token);
            for r in reps {
                let held = r.credentials()[cred].load().as_ref().map(|t| t.access_token.expose().to_string());
                same &= shared.is_some() && held == shared;
            }
        }
        if same {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "replicas did not converge on the stored tokens");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop_all(replicas: Vec<Running>) {
    for r in replicas {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_under_load_make_the_token_calls_of_one() {
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_test_writer().try_init();
    let Some(redis) = RedisServer::start().await else { return };
    let mock = MockGoto::start(short_tokens(3)).await.unwrap();
    let seed = mock.mint_refresh_token();
    let config = replica_config(&mock, &redis, "three", &seed);
    let reps = replicas(3, &config).await;

    let stop = CancellationToken::new();
    let started = Instant::now();
    let load = tokio::spawn(load(urls(&reps), 4, Duration::from_millis(5), stop.clone()));
    tokio::time::sleep(Duration::from_secs(15)).await;
    stop.cancel();
    let report = load.await.unwrap();
    let secs = started.elapsed().as_secs_f64();

    report.assert_no_failures();
    assert!(report.requests > 500, "too little load to mean anything: {}", report.requests);
    let stats = mock.stats();
    let one = 2.0 * single_replica_calls(secs, 3.0); // two credentials
    assert!(
        stats.token_calls as f64 <= 1.5 * one,
        "{} token calls in {secs:.1}s; one replica makes about {one:.0}: {stats:?}",
        stats.token_calls
    );
    assert!(stats.token_calls >= 8, "the tokens were renewed all along: {stats:?}");
    // Direct Login revokes every other token: two within a second means two replicas
    // knocked each other out.
    assert_spaced(&mock.password_login_times(), Duration::from_secs(1), "password logins");
    let direct: Vec<Instant> = mock.issued().iter().filter(|i| i.direct_login).map(|i| i.at).collect();
    assert_spaced(&direct, Duration::from_secs(1), "Direct Login tokens");

    // The shared token is the one the replicas serve, stored as StoredToken JSON.
    let shared = stored(&redis, "three:token:g2a").await.expect("g2a token in redis");
    assert!(mock.is_valid(&shared.access_token), "the stored token is the live one");
    assert!(shared.refresh_token.is_some());
    for r in &reps {
        let m = metrics_of(r).await;
        assert_eq!(
            metric(&m, "goto_auth_proxy_token_refreshes_total{credential=\"g2a\",outcome=\"uncoordinated\"}"),
            0.0
        );
        assert!(!m.contains(&shared.access_token), "a token leaked into /metrics");
    }
    stop_all(reps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_replica_uses_the_shared_token_without_a_token_call() {
    let Some(redis) = RedisServer::start().await else { return };
    let mock = MockGoto::start(short_tokens(3600)).await.unwrap();
    let seed = mock.mint_refresh_token();
    let config = replica_config(&mock, &redis, "start", &seed);
    let first = start_proxy(&config).await;
    let http = client();
    wait_ready(&http, &format!("http://{}/readyz", first.admin_addr), Duration::from_secs(10)).await;
    let before = mock.stats();
    assert_eq!(before.password_logins, 1);

    let second = start_proxy(&config).await;
    for path in ["/G2A/rest/v1/x", "/G2W/rest/v2/x"] {
        for r in [&first, &second] {
            let res = http.get(format!("http://{}{path}", r.proxy_addr)).send().await.unwrap();
            assert_eq!(res.status(), 200, "{path}");
        }
    }
    let after = mock.stats();
    assert_eq!(after.token_calls, before.token_calls, "the second replica made a token call: {after:?}");
    assert_eq!(after.api_rejected, 0, "the first replica's token was revoked");
    stop_all(vec![first, second]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_run_fails_no_request() {
    let Some(mut redis) = RedisServer::start().await else { return };
    // Tokens that outlive the outage by far: the outage must not overlap a renewal.
    // (Killed between a renewal and its save, the others would hold a token the renewal
    // revoked: an inherent window, see docs/replicas.md.)
    let lifetime = 20.0;
    let mock = MockGoto::start(short_tokens(20)).await.unwrap();
    let seed = mock.mint_refresh_token();
    let config = replica_config(&mock, &redis, "restart", &seed);
    let reps = replicas(3, &config).await;

    let stop = CancellationToken::new();
    let started = Instant::now();
    let load = tokio::spawn(load(urls(&reps), 3, Duration::from_millis(5), stop.clone()));
    // Kill Redis once every replica holds the first tokens (a password login and a
    // refresh of the seed), well before their renewal is due.
    wait_converged(&reps, &redis, "restart").await;
    let first = mock.issued().len();
    redis.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.restart().await;

    // Redis came back empty: a replica writes the token it holds back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while stored(&redis, "restart:token:g2a").await.is_none() || stored(&redis, "restart:token:goto").await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "tokens not written back after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Through the next renewal of both credentials, coordinated again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while mock.issued().len() < first + 2 {
        assert!(tokio::time::Instant::now() < deadline, "no renewal after the restart: {:?}", mock.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_converged(&reps, &redis, "restart").await;
    stop.cancel();
    let report = load.await.unwrap();
    let secs = started.elapsed().as_secs_f64();

    report.assert_no_failures();
    let stats = mock.stats();
    let one = 2.0 * single_replica_calls(secs, lifetime);
    if stats.token_calls as f64 > 1.5 * one {
        let mut outcomes = String::new();
        for r in &reps {
            let m = metrics_of(r).await;
            for line in m.lines().filter(|l| l.starts_with("goto_auth_proxy_token_refreshes_total")) {
                outcomes.push_str(line);
                outcomes.push('\n');
            }
            outcomes.push_str("--\n");
        }
        panic!("{} token calls in {secs:.1} s; one replica: {one:.0}; {stats:?}\n{outcomes}", stats.token_calls);
    }
    assert_spaced(&mock.password_login_times(), Duration::from_secs(1), "password logins");
    let mut errors = 0.0;
    for r in &reps {
        let m = metrics_of(r).await;
        for op in ["load", "save", "lock", "unlock", "subscribe"] {
            errors += metric(&m, &format!("goto_auth_proxy_store_errors_total{{op=\"{op}\"}}"));
        }
        for cred in ["g2a", "goto"] {
            let alone =
                format!("goto_auth_proxy_token_refreshes_total{{credential=\"{cred}\",outcome=\"uncoordinated\"}}");
            assert_eq!(metric(&m, &alone), 0.0, "a replica renewed alone while its token was good");
        }
    }
    assert!(errors > 0.0, "the outage was not counted in goto_auth_proxy_store_errors_total");
    let shared = stored(&redis, "restart:token:g2a").await.expect("g2a token");
    assert!(mock.is_valid(&shared.access_token));
    stop_all(reps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_survived_like_a_down_one() {
    let Some(redis) = RedisServer::start().await else { return };
    let mock = MockGoto::start(short_tokens(8)).await.unwrap();
    let seed = mock.mint_refresh_token();
    let config = replica_config(&mock, &redis, "slow", &seed);
    let reps = replicas(2, &config).await;
    let http = client();
    for r in &reps {
        wait_ready(&http, &format!("http://{}/readyz", r.admin_addr), Duration::from_secs(10)).await;
    }

    let stop = CancellationToken::new();
    let load = tokio::spawn(load(urls(&reps), 2, Duration::from_millis(5), stop.clone()));
    redis.pause(); // accepts connections, answers nothing
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.resume();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    let report = load.await.unwrap();
    report.assert_no_failures();
    let mut errors = 0.0;
    for r in &reps {
        let m = metrics_of(r).await;
        errors += metric(&m, "goto_auth_proxy_store_errors_total{op=\"load\"}")
            + metric(&m, "goto_auth_proxy_store_errors_total{op=\"lock\"}");
        let ready = http.get(format!("http://{}/readyz", r.admin_addr)).send().await.unwrap();
        assert_eq!(ready.status(), 200);
    }
    if errors == 0.0 {
        let mut all = String::new();
        for r in &reps {
            let m = metrics_of(r).await;
            for line in m.lines().filter(|l| {
                l.starts_with("goto_auth_proxy_store_errors_total")
                    || l.starts_with("goto_auth_proxy_token_refreshes_total")
            }) {
                all.push_str(line);
                all.push('\n');
            }
        }
        panic!("the slow Redis was not counted:\n{all}");
    }
    stop_all(reps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_replica_renews_by_itself_when_redis_is_down_and_writes_back() {
    let Some(mut redis) = RedisServer::start().await else { return };
    let mock = MockGoto::start(short_tokens(3)).await.unwrap();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntoken_wait = \"3s\"\n\n{}\n{}\n{}",
        redis.state("lone"),
        password_cred("g2a", &mock),
        route("/", &mock, Some("g2a"))
    );
    let proxy = start_proxy(&text).await;
    let http = client();
    wait_ready(&http, &format!("http://{}/readyz", proxy.admin_addr), Duration::from_secs(10)).await;
    redis.kill();

    // The 3-second token is renewed without Redis, and requests never notice.
    let stop = CancellationToken::new();
    let load = tokio::spawn(load(
        vec![format!("http://{}/G2A/x", proxy.proxy_addr)],
        2,
        Duration::from_millis(10),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    let report = load.await.unwrap();
    report.assert_no_failures();
    let m = metrics_of(&proxy).await;
    let alone = metric(&m, "goto_auth_proxy_token_refreshes_total{credential=\"g2a\",outcome=\"uncoordinated\"}");
    assert!(alone >= 1.0, "no renewal without Redis: {m}");
    assert!(metric(&m, "goto_auth_proxy_store_errors_total{op=\"lock\"}") >= 1.0, "{m}");

    // Redis is back, empty: the replica writes its (newest) token back.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let shared = loop {
        if let Some(s) = stored(&redis, "lone:token:g2a").await {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "token not written back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(mock.is_valid(&shared.access_token), "the written-back token is the live one");
    proxy.stop().await;
}

#[tokio::test]
async fn store_lock_is_exclusive_and_released_only_by_its_holder_and_saves_compare_versions() {
    let Some(redis) = RedisServer::start().await else { return };
    let url = Secret::new(redis.url());
    let a = RedisStore::connect(&url, "unit", None).unwrap();
    let b = RedisStore::connect(&url, "unit", None).unwrap();
    let ttl = Duration::from_secs(10);

    let held = a.lock("c", ttl).await.unwrap().expect("free lock is granted");
    assert!(b.lock("c", ttl).await.unwrap().is_none(), "a held lock is not granted twice");
    let other = b.lock("other", ttl).await.unwrap().expect("locks are per credential");
    b.unlock("c", other.clone()).await.unwrap(); // not the holder of "c": no effect
    assert!(b.lock("c", ttl).await.unwrap().is_none(), "released by someone who did not hold it");
    a.unlock("c", held).await.unwrap();
    let again = b.lock("c", ttl).await.unwrap().expect("granted after release");
    b.unlock("c", again).await.unwrap();
    b.unlock("other", other).await.unwrap();

    let short = a.lock("ttl", Duration::from_millis(200)).await.unwrap().expect("granted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while b.lock("ttl", ttl).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "an expired lock was never granted again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(short);

    let mut changes = b.changes().expect("a shared store notifies");
    // The subscriber announces itself with "" once subscribed.
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.unwrap().unwrap(), "");
    let token = record;
    assert_eq!(a.save("c", &token(20, 0)).await.unwrap(), Saved::Stored(1));
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.unwrap().unwrap(), "c");
    assert_eq!(b.load("c").await.unwrap(), Some(token(20, 1)));
    // Renewed from version 0 again (another replica, late): refused, told what is stored.
    assert_eq!(a.save("c", &token(30, 0)).await.unwrap(), Saved::Stale { current: Some(token(20, 1)), version: 1 });
    assert_eq!(b.load("c").await.unwrap(), Some(token(20, 1)));
    // Renewed from the stored version: accepted, whatever its timestamp says.
    assert_eq!(b.save("c", &token(10, 1)).await.unwrap(), Saved::Stored(2));
    assert_eq!(a.load("c").await.unwrap(), Some(token(10, 2)));
    assert!(b.is_shared() && b.describe().contains("unit"));
}

#[tokio::test]
async fn unreachable_redis_fails_operations_quickly_and_counts_them() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let errors = prometheus::IntCounterVec::new(prometheus::Opts::new("e", "e"), &["op"]).unwrap();
    let store =
        RedisStore::connect(&Secret::new(format!("redis://:hunter2@{closed}/0")), "x", Some(errors.clone())).unwrap();
    let started = Instant::now();
    let e = store.lock("c", Duration::from_secs(1)).await.expect_err("no Redis");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    assert!(store.load("c").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(errors.with_label_values(&["lock"]).get(), 1);
    assert_eq!(errors.with_label_values(&["load"]).get(), 1);
    assert!(!store.describe().contains("hunter2"));
}

/// A record for the store tests: `n` names its tokens, `version` is what it renewed from.
pub(crate) fn record(n: u64, version: u64) -> StoredToken {
    StoredToken {
        access_token: format!("at{n}"),
        refresh_token: Some(format!("rt{n}")),
        expires_at: 2_000_000_000,
        expires_at_ms: Some(2_000_000_000_000),
        obtained_at_ms: n,
        organizer_key: None,
        account_key: None,
        principal: None,
        version,
    }
}

fn sealer_of(byte: u8) -> Option<std::sync::Arc<goto_auth_proxy::testing::Sealer>> {
    use base64::Engine;
    let key = Secret::new(base64::engine::general_purpose::STANDARD.encode([byte; 32]));
    Some(std::sync::Arc::new(goto_auth_proxy::testing::Sealer::new(&[key]).unwrap()))
}

#[tokio::test]
async fn account_records_are_keys_of_their_own_listed_from_a_set_kept_by_the_scripts() {
    let Some(redis) = RedisServer::start().await else { return };
    let url = Secret::new(redis.url());
    let proxy = RedisStore::connect(&url, "acc", None).unwrap().with_sealer(sealer_of(1));
    let login = RedisStore::connect(&url, "acc", None).unwrap().with_sealer(sealer_of(1));
    let mut changes = proxy.changes().unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.unwrap().unwrap(), "");
    assert_eq!(proxy.accounts("goto").await.unwrap(), Vec::<String>::new());

    assert_eq!(proxy.save("goto/bob", &record(1, 0)).await.unwrap(), Saved::Stored(1));
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.unwrap().unwrap(), "goto/bob");
    assert_eq!(proxy.save("goto/alice", &record(2, 0)).await.unwrap(), Saved::Stored(1));
    assert_eq!(proxy.save("goto", &record(3, 0)).await.unwrap(), Saved::Stored(1));
    assert_eq!(proxy.save("other/carol", &record(4, 0)).await.unwrap(), Saved::Stored(1));
    assert_eq!(login.accounts("goto").await.unwrap(), ["alice", "bob"]);
    assert_eq!(login.accounts("other").await.unwrap(), ["carol"]);
    assert_eq!(login.load("goto/bob").await.unwrap(), Some(record(1, 1)));

    // Versions are per account: a login over bob's version 1 wins, the proxy's late
    // renewal of bob is refused, alice's is not.
    assert_eq!(login.save("goto/bob", &record(5, 1)).await.unwrap(), Saved::Stored(2));
    assert_eq!(
        proxy.save("goto/bob", &record(6, 1)).await.unwrap(),
        Saved::Stale { current: Some(record(5, 2)), version: 2 }
    );
    assert_eq!(proxy.save("goto/alice", &record(7, 1)).await.unwrap(), Saved::Stored(2));

    let mut c = redis.conn().await;
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("acc:*").query_async(&mut c).await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "acc:accounts:goto",
            "acc:accounts:other",
            "acc:token:goto",
            "acc:token:goto/alice",
            "acc:token:goto/bob",
            "acc:token:other/carol"
        ]
    );
    // Sealed with the key as associated data: bob's value under alice's key does not open.
    let bob: String = redis::cmd("GET").arg("acc:token:goto/bob").query_async(&mut c).await.unwrap();
    assert!(!bob.contains("\"at5\"") && !bob.contains("access_token"), "{bob}");
    let _: () = redis::cmd("SET").arg("acc:token:goto/alice").arg(&bob).query_async(&mut c).await.unwrap();
    assert_eq!(login.load("goto/alice").await.unwrap(), None, "a value moved to another account does not open");
    assert_eq!(login.load("goto/bob").await.unwrap(), Some(record(5, 2)));

    // The renewal lock is per account.
    let ttl = Duration::from_secs(10);
    let held = proxy.lock("goto/bob", ttl).await.unwrap().expect("granted");
    assert!(login.lock("goto/bob", ttl).await.unwrap().is_none());
    let other = login.lock("goto/alice", ttl).await.unwrap().expect("another account's lock is free");
    proxy.unlock("goto/bob", held).await.unwrap();
    login.unlock("goto/alice", other).await.unwrap();

    // Removed: record and name gone in one step, the others told (as a removal, `!key`,
    // not a save); removing again is Ok.
    while changes.try_recv().is_ok() {}
    login.remove("goto/bob").await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), changes.recv()).await.unwrap().unwrap(), "!goto/bob");
    login.remove("goto/bob").await.unwrap();
    login.remove("goto/nobody").await.unwrap();
    assert_eq!(proxy.accounts("goto").await.unwrap(), ["alice"]);
    assert_eq!(proxy.load("goto/bob").await.unwrap(), None);
    assert_eq!(proxy.save("goto/bob", &record(8, 0)).await.unwrap(), Saved::Stored(1), "starts over");
    login.remove("goto").await.unwrap();
    assert_eq!(proxy.load("goto").await.unwrap(), None);
    assert_eq!(proxy.accounts("goto").await.unwrap(), ["alice", "bob"]);
}

#[tokio::test]
async fn prepare_checks_account_records_a_wrong_key_is_refused_and_plaintext_is_sealed() {
    let Some(redis) = RedisServer::start().await else { return };
    let url = Secret::new(redis.url());
    let plain = RedisStore::connect(&url, "prep", None).unwrap();
    for n in 0..1200u64 {
        assert_eq!(plain.save(&format!("goto/a{n}"), &record(n, 0)).await.unwrap(), Saved::Stored(1));
    }
    let sealed = RedisStore::connect(&url, "prep", None).unwrap().with_sealer(sealer_of(1));
    sealed.prepare(&["goto".to_string()]).await.unwrap();
    let mut c = redis.conn().await;
    for n in [0u64, 777, 1199] {
        let v: String = redis::cmd("GET").arg(format!("prep:token:goto/a{n}")).query_async(&mut c).await.unwrap();
        assert!(!v.contains("access_token"), "a{n} not sealed at prepare: {v}");
    }
    assert!(sealed.key_id("goto/a5").is_some());
    assert_eq!(sealed.load("goto/a5").await.unwrap(), Some(record(5, 1)), "same version: no token changed");

    let wrong = RedisStore::connect(&url, "prep", None).unwrap().with_sealer(sealer_of(9));
    let e = wrong.prepare(&["goto".to_string()]).await.unwrap_err();
    assert!(e.to_string().contains("goto/a0"), "{e}");
    let e = plain.prepare(&["goto".to_string()]).await.unwrap_err();
    assert!(e.to_string().contains("keep a key configured"), "{e}");
}
