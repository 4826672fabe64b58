//! The shared store against records nobody should trust for their timestamps: a record
//! from the far future, replicas whose clocks differ by minutes, a sign-in written by a
//! process with a slow clock, and a plaintext record planted while keys are configured.
//! Which token is newest is the store's version counter's to say, never a clock's; the
//! mock GoTo is the judge of which refresh token is live.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use tokio_util::sync::CancellationToken;

use crate::support::*;
use goto_auth_proxy::Running;
use goto_mock::{MockGoto, MockOptions};

/// A record written "in the year 5138": the obtained_at_ms the attack used.
const FAR_FUTURE_MS: u64 = 99_999_999_999_999_999;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The mock's verdict on `refresh_tokens`: (refresh chains with a live newest refresh
/// token, how many of those have their newest token among `refresh_tokens`).
async fn live_chains(mock: &MockGoto, refresh_tokens: &[&str]) -> (u64, u64) {
    let answer: serde_json::Value = client()
        .post(format!("{}/_mock/refresh_tokens/check", mock.url()))
        .json(&refresh_tokens)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (answer["chains"].as_u64().unwrap(), answer["held"].as_u64().unwrap())
}

/// Config for one replica with the one OAuth credential `goto` (no seed: it renews from
/// what the store holds, or from `seed`), state in Redis under `prefix`.
fn redis_goto(mock: &MockGoto, redis: &RedisServer, prefix: &str, seed: Option<&str>, extra_state: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntoken_wait = \"5s\"\n\n{}{extra_state}\n{}\n{}",
        redis.state(prefix),
        code_cred("goto", mock, seed),
        route("/", mock, Some("goto"))
    )
}

async fn get_ok(http: &reqwest::Client, proxy: &Running) {
    let r = http.get(format!("http://{}/G2W/rest/v2/x", proxy.proxy_addr)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

async fn stored_json(redis: &RedisServer, key: &str) -> serde_json::Value {
    serde_json::from_str(&redis.get(key).await.expect("a stored record")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_the_far_future_neither_keeps_a_dead_refresh_token_nor_blocks_saves() {
    let Some(redis) = RedisServer::start().await else { return };
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let live = mock.mint_refresh_token();
    // Planted (or written by a replica whose clock is far ahead): an expired access
    // token, the live refresh token, and a timestamp thousands of years ahead.
    let planted = serde_json::json!({
        "access_token": "planted-expired",
        "refresh_token": live,
        "expires_at": 1,
        "obtained_at_ms": FAR_FUTURE_MS,
    });
    let mut conn = redis.conn().await;
    let _: () =
        redis::cmd("SET").arg("future:token:goto").arg(planted.to_string()).query_async(&mut conn).await.unwrap();

    let config = redis_goto(&mock, &redis, "future", None, "");
    let http = client();
    let first = start_proxy(&config).await;
    wait_ready(&http, &format!("http://{}/readyz", first.admin_addr), Duration::from_secs(10)).await;
    get_ok(&http, &first).await; // the new tokens are used: the rotated refresh token dies
    let forced = http.post(format!("http://{}/refresh/goto", first.admin_addr)).send().await.unwrap();
    assert_eq!(forced.status(), 200, "{}", forced.text().await.unwrap_or_default());
    get_ok(&http, &first).await;
    first.stop().await;

    let stored = stored_json(&redis, "future:token:goto").await;
    let rt = stored["refresh_token"].as_str().expect("a refresh token stored");
    assert_ne!(rt, live, "the store still holds the refresh token the renewals rotated away");
    assert_eq!(live_chains(&mock, &[rt]).await, (1, 1), "the store holds the live refresh token");
    assert!(mock.is_valid(stored["access_token"].as_str().unwrap()), "the store holds the live access token");
    // The record from before versions existed got one at its first save.
    assert!(stored["version"].as_u64().is_some_and(|v| v >= 2), "not upgraded: {stored}");

    // A restart reads the store: valid at once, no person needed.
    let second = start_proxy(&config).await;
    wait_ready(&http, &format!("http://{}/readyz", second.admin_addr), Duration::from_secs(10)).await;
    get_ok(&http, &second).await;
    let forced = http.post(format!("http://{}/refresh/goto", second.admin_addr)).send().await.unwrap();
    assert_eq!(forced.status(), 200, "a renewal after the restart: {}", forced.text().await.unwrap_or_default());
    get_ok(&http, &second).await;
    second.stop().await;
    let stored = stored_json(&redis, "future:token:goto").await;
    assert_eq!(live_chains(&mock, &[stored["refresh_token"].as_str().unwrap()]).await, (1, 1));
}

/// Rewrites the stored record's `obtained_at_ms` as a replica whose clock is `skew_ms`
/// off would have written it (same tokens, same version), only if the record is still
/// the one read (compare-and-set in a script: a save in between is never undone). True
/// when it rewrote one.
async fn skew_record(port: u16, key: &str, skew_ms: i64) -> bool {
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let raw: Option<String> = redis::cmd("GET").arg(key).query_async(&mut conn).await.unwrap();
    let Some(raw) = raw else { return false };
    let mut v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let obtained = v["obtained_at_ms"].as_u64().unwrap() as i64;
    if (obtained - now_ms() as i64).abs() > 60_000 {
        return false; // skewed already
    }
    v["obtained_at_ms"] = serde_json::json!(obtained + skew_ms);
    let set: i64 = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0",
    )
    .key(key)
    .arg(raw)
    .arg(v.to_string())
    .invoke_async(&mut conn)
    .await
    .unwrap();
    set == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_whose_clocks_differ_by_minutes_lose_no_refresh_token() {
    let Some(redis) = RedisServer::start().await else { return };
    let mock = MockGoto::start(short_tokens(3)).await.unwrap();
    let seed = mock.mint_refresh_token();
    let config = redis_goto(&mock, &redis, "skew", Some(&seed), "");
    let reps = vec![start_proxy(&config).await, start_proxy(&config).await];
    let http = client();
    for r in &reps {
        wait_ready(&http, &format!("http://{}/readyz", r.admin_addr), Duration::from_secs(10)).await;
    }

    // Every record the replicas write looks written by a clock 5 minutes fast, then by
    // one 5 minutes slow, in turn.
    let stop = CancellationToken::new();
    let skewer = {
        let (stop, port) = (stop.clone(), redis.port);
        tokio::spawn(async move {
            let mut skewed = 0u32;
            let mut fast = true;
            while !stop.is_cancelled() {
                let skew = if fast { 5 * 60_000 } else { -5 * 60_000 };
                if skew_record(port, "skew:token:goto", skew).await {
                    skewed += 1;
                    fast = !fast;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            skewed
        })
    };
    let started = Instant::now();
    let urls: Vec<String> = reps.iter().map(|r| format!("http://{}/G2W/rest/v2/x", r.proxy_addr)).collect();
    let load = tokio::spawn(load(urls, 2, Duration::from_millis(10), stop.clone()));
    tokio::time::sleep(Duration::from_secs(12)).await;
    stop.cancel();
    let report = load.await.unwrap();
    let skewed = skewer.await.unwrap();
    let secs = started.elapsed().as_secs_f64();

    report.assert_no_failures();
    assert!(skewed >= 4, "too few renewals skewed to mean anything: {skewed}");
    let stored = stored_json(&redis, "skew:token:goto").await;
    let rt = stored["refresh_token"].as_str().unwrap();
    assert_eq!(live_chains(&mock, &[rt]).await, (1, 1), "the store lost the live refresh token");
    let stats = mock.stats();
    let one = 1.0 + secs / (3.0 / 2.0 * 0.9) + 1.0; // one replica, plus the start
    assert!(
        stats.token_calls as f64 <= 1.5 * one,
        "{} token calls in {secs:.1}s; one replica makes about {one:.0}",
        stats.token_calls
    );
    for r in reps {
        r.stop().await;
    }
}

/// The state file's record of `name`.
fn file_record(dir: &std::path::Path, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    v["credentials"][name].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_stored_by_a_process_with_a_slow_clock_is_taken_up_not_overwritten() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seed = mock.mint_refresh_token();
    let config = config_text(
        dir.path(),
        "",
        &format!("{}\n{}", code_cred("goto", &mock, Some(&seed)), route("/", &mock, Some("goto"))),
    );
    let http = client();
    let proxy = start_proxy(&config).await;
    wait_ready(&http, &format!("http://{}/readyz", proxy.admin_addr), Duration::from_secs(10)).await;
    get_ok(&http, &proxy).await;

    // A person signs in again through another process (`login`) whose clock is ten
    // minutes slow: a new refresh chain, stored as the next version.
    let before = file_record(dir.path(), "goto");
    let signed_in = mock.mint_refresh_token();
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    v["credentials"]["goto"] = serde_json::json!({
        "access_token": "signed-in-elsewhere-expired",
        "refresh_token": signed_in,
        "expires_at": 1,
        "obtained_at_ms": before["obtained_at_ms"].as_u64().unwrap() - 600_000,
        "version": before["version"].as_u64().unwrap_or(0) + 1,
    });
    std::fs::write(dir.path().join("state.json"), serde_json::to_vec_pretty(&v).unwrap()).unwrap();

    let forced = http.post(format!("http://{}/refresh/goto", proxy.admin_addr)).send().await.unwrap();
    assert_eq!(forced.status(), 200, "{}", forced.text().await.unwrap_or_default());
    get_ok(&http, &proxy).await;
    proxy.stop().await;

    // The sign-in's refresh token was the one renewed (so it is rotated away), and the
    // store holds its successor: the person's sign-in was not lost.
    let stored = file_record(dir.path(), "goto");
    let rt = stored["refresh_token"].as_str().unwrap();
    assert_eq!(live_chains(&mock, &[&signed_in]).await.1, 0, "the sign-in's refresh token was left unused");
    assert_eq!(
        live_chains(&mock, &[rt, &signed_in]).await.1,
        1,
        "the store holds the sign-in chain's live refresh token"
    );
    let proxy = start_proxy(&config).await;
    wait_ready(&http, &format!("http://{}/readyz", proxy.admin_addr), Duration::from_secs(10)).await;
    get_ok(&http, &proxy).await;
    proxy.stop().await;
}

/// A new random key, as `goto-auth-proxy keygen` prints one.
fn new_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// Waits until `log` (the binary's JSON lines) holds a warning naming `credential` that
/// says its plaintext record was re-sealed.
fn wait_for_reseal_warning(proc: &Proc, credential: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = proc.log_text();
        if let Some(line) = log.lines().find(|l| {
            l.contains("\"level\":\"WARN\"")
                && l.contains(&format!("\"credential\":\"{credential}\""))
                && l.contains("plaintext record")
                && l.contains("re-sealed")
        }) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no warning naming {credential}'s plaintext record:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_record_planted_under_keys_is_warned_about_and_sealed_in_redis() {
    let Some(redis) = RedisServer::start().await else { return };
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = new_key();
    let keys = format!("encryption_keys = [{key:?}]\n");
    let config = write_config(
        dir.path(),
        "proxy.toml",
        &redis_goto(&mock, &redis, "plant", Some(&mock.mint_refresh_token()), &keys),
    );
    let proc = Proc::spawn(&config);
    let http = client();
    wait_ready(&http, &proc.admin("/readyz"), Duration::from_secs(10)).await;
    let sealed = stored_json(&redis, "plant:token:goto").await;
    assert!(sealed.get("ct").is_some(), "sealed from the start: {sealed}");

    // Planted while it runs: plaintext, as the next version, with a live token.
    let planted_rt = mock.mint_refresh_token();
    let planted = serde_json::json!({
        "access_token": "planted-access-token",
        "refresh_token": planted_rt,
        "expires_at": 1,
        "obtained_at_ms": now_ms(),
        "version": sealed["version"].as_u64().unwrap_or(0) + 1,
    });
    let mut conn = redis.conn().await;
    let _: () =
        redis::cmd("SET").arg("plant:token:goto").arg(planted.to_string()).query_async(&mut conn).await.unwrap();

    let line = tokio::task::block_in_place(|| wait_for_reseal_warning(&proc, "goto"));
    assert!(!line.contains("planted-access-token") && !line.contains(&planted_rt), "a token in the log: {line}");
    let back = stored_json(&redis, "plant:token:goto").await;
    assert!(back.get("ct").is_some() && back.get("kid").is_some(), "not sealed again: {back}");
    let text = back.to_string();
    assert!(!text.contains("planted-access-token") && !text.contains(&planted_rt), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_record_planted_under_keys_is_warned_about_and_sealed_in_the_file() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = new_key();
    let keys = format!("encryption_keys = [{key:?}]\n");
    let rest = format!("{keys}\n{}\n{}", code_cred("goto", &mock, None), route("/", &mock, Some("goto")));
    // Planted before the start: plaintext, with a live refresh token.
    let planted_rt = mock.mint_refresh_token();
    let planted = serde_json::json!({"version": 1, "credentials": {"goto": {
        "access_token": "planted-access-token",
        "refresh_token": planted_rt,
        "expires_at": 1,
        "obtained_at_ms": now_ms(),
    }}});
    std::fs::write(dir.path().join("state.json"), planted.to_string()).unwrap();
    let config = write_config(dir.path(), "proxy.toml", &config_text(dir.path(), "", &rest));
    let proc = Proc::spawn(&config);
    let http = client();
    wait_ready(&http, &proc.admin("/readyz"), Duration::from_secs(10)).await;

    let line = tokio::task::block_in_place(|| wait_for_reseal_warning(&proc, "goto"));
    assert!(!line.contains("planted-access-token") && !line.contains(&planted_rt), "a token in the log: {line}");
    let record = file_record(dir.path(), "goto");
    assert!(record.get("ct").is_some() && record.get("kid").is_some(), "not sealed: {record}");
}
