//! Token records at rest (`state.encryption_keys`): what the state file and Redis hold
//! after real logins, migration from plaintext, rotation, a wrong or missing key (exit
//! 64, nothing written), a damaged or moved record, and crash safety with keys on.

use std::path::Path;
use std::time::Duration;

use base64::Engine;

use crate::support::*;
use goto_mock::{MockGoto, MockOptions};

/// A new random key, as `goto-auth-proxy keygen` prints one.
fn new_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// `encryption_keys = [...]` (a line of `[state]`); empty: no line.
fn keys_line(keys: &[&str]) -> String {
    if keys.is_empty() {
        return String::new();
    }
    let list: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    format!("encryption_keys = [{}]\n", list.join(", "))
}

/// The usual two credentials (`g2a` Direct Login, `goto` OAuth seeded with `seed`) with
/// the file state in `dir` sealed with `keys`.
fn file_config(mock: &MockGoto, dir: &Path, seed: &str, keys: &[&str]) -> String {
    config_text(dir, "", &format!("{}{}", keys_line(keys), creds(mock, seed)))
}

fn creds(mock: &MockGoto, seed: &str) -> String {
    format!(
        "{}\n{}\n{}\n{}",
        password_cred("g2a", mock),
        code_cred("goto", mock, Some(seed)),
        route("/G2A/", mock, Some("g2a")),
        route("/", mock, Some("goto"))
    )
}

fn redis_config(mock: &MockGoto, redis: &RedisServer, prefix: &str, seed: &str, keys: &[&str]) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntoken_wait = \"3s\"\n\n{}{}\n{}",
        redis.state(prefix),
        keys_line(keys),
        creds(mock, seed)
    )
}

/// Every secret that must never be at rest in clear: tokens (by their mock prefixes),
/// the client secret, the password and the seeded refresh token.
fn assert_no_secret(bytes: &[u8], mock: &MockGoto, seed: &str, what: &str) {
    let text = String::from_utf8_lossy(bytes);
    let o = mock.options();
    for s in ["mock-at-", "mock-rt-", "access_token", "refresh_token", &o.client_secret, &o.password, seed] {
        assert!(!text.contains(s), "{what} holds {s:?} in clear: {text}");
    }
}

/// Key ids of the records in a state file (`None` for plaintext records).
fn file_kids(path: &Path) -> Vec<(String, Option<String>)> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["credentials"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, r)| (k.clone(), r.get("kid").and_then(|k| k.as_str()).map(str::to_owned)))
        .collect()
}

async fn serve_both(http: &reqwest::Client, proxy: std::net::SocketAddr) {
    for path in ["/G2A/rest/v1/x", "/G2W/rest/v2/x"] {
        let r = http.get(format!("http://{proxy}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

async fn tokens_json(http: &reqwest::Client, admin: std::net::SocketAddr) -> serde_json::Value {
    http.get(format!("http://{admin}/tokens")).send().await.unwrap().json().await.unwrap()
}

/// Every value in the Redis server (all keys, whatever their type: strings read).
async fn all_redis_values(redis: &RedisServer) -> Vec<(String, String)> {
    let mut c = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut c).await.unwrap();
    let mut out = Vec::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(&mut c).await.unwrap();
        assert_eq!(kind, "string", "{k}: only strings are stored");
        let v: String = redis::cmd("GET").arg(&k).query_async(&mut c).await.unwrap();
        out.push((k, v));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_plaintext_is_sealed_at_start_and_rotation_reseals_with_the_first_key() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let seed = mock.mint_refresh_token();
    let http = client();

    // Life 1, no keys: plaintext (as before keys existed).
    let p = start_proxy(&file_config(&mock, dir.path(), &seed, &[])).await;
    serve_both(&http, p.proxy_addr).await;
    p.stop().await;
    assert!(String::from_utf8_lossy(&std::fs::read(&state).unwrap()).contains("mock-rt-"));
    assert!(file_kids(&state).iter().all(|(_, k)| k.is_none()));
    let logins = mock.stats().password_logins;

    // Life 2, one key: sealed at start, before any request; the stored tokens serve.
    let old = new_key();
    let p = start_proxy(&file_config(&mock, dir.path(), &seed, &[&old])).await;
    let bytes = std::fs::read(&state).unwrap();
    assert_no_secret(&bytes, &mock, &seed, "the state file after a start with a key");
    let kids = file_kids(&state);
    assert_eq!(kids.len(), 2, "{kids:?}");
    let old_kid = kids[0].1.clone().expect("sealed");
    assert!(kids.iter().all(|(_, k)| k.as_deref() == Some(old_kid.as_str())), "{kids:?}");
    assert!(!old_kid.contains(&old) && !old.contains(&old_kid), "a key id is not the key");
    serve_both(&http, p.proxy_addr).await;
    // A renewal writes sealed too.
    assert_eq!(http.post(format!("http://{}/refresh/goto", p.admin_addr)).send().await.unwrap().status(), 200);
    assert_no_secret(&std::fs::read(&state).unwrap(), &mock, &seed, "the state file after a renewal");
    let tokens = tokens_json(&http, p.admin_addr).await;
    assert_eq!(tokens["goto"]["state_key_id"], old_kid.as_str(), "{tokens}");
    assert_eq!(tokens["g2a"]["state_key_id"], old_kid.as_str(), "{tokens}");
    assert!(!tokens.to_string().contains(&old), "the key itself never shows");
    p.stop().await;

    // Life 3, rotation: [new, old] → re-sealed with new at start; /tokens says so.
    let new = new_key();
    let p = start_proxy(&file_config(&mock, dir.path(), &seed, &[&new, &old])).await;
    let kids = file_kids(&state);
    let new_kid = kids[0].1.clone().expect("sealed");
    assert_ne!(new_kid, old_kid);
    assert!(kids.iter().all(|(_, k)| k.as_deref() == Some(new_kid.as_str())), "{kids:?}");
    assert_no_secret(&std::fs::read(&state).unwrap(), &mock, &seed, "the state file after rotation");
    let tokens = tokens_json(&http, p.admin_addr).await;
    assert_eq!(tokens["goto"]["state_key_id"], new_kid.as_str(), "{tokens}");
    assert_eq!(tokens["g2a"]["state_key_id"], new_kid.as_str(), "{tokens}");
    serve_both(&http, p.proxy_addr).await;
    p.stop().await;
    assert_eq!(mock.stats().password_logins, logins, "no new login across migration and rotation");
    assert_eq!(mock.stats().code_exchanges, 0);

    // `check` says which key seals each credential's record, never a key.
    let config = write_config(dir.path(), "check.toml", &file_config(&mock, dir.path(), &seed, &[&new, &old]));
    let out = std::process::Command::new(BIN).args(["check", "--config"]).arg(&config).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    for name in ["goto", "g2a"] {
        assert!(shown.contains(&format!("  {name}: sealed with key {new_kid}")), "{shown}");
    }
    assert!(shown.contains(&format!("key ids: {new_kid} (seals), {old_kid}")), "{shown}");
    assert!(!shown.contains(&new) && !shown.contains(&old), "a key shows in check: {shown}");

    // `token` opens the sealed record with the configured keys and prints a live token.
    let out = std::process::Command::new(BIN)
        .args(["token", "--credential", "g2a", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(mock.is_valid(&token), "`token` printed {token:?}, not the stored access token");
}

/// Runs the binary on `config` and expects it to refuse to start: exit 64 and its stderr.
fn refused_start(config: &Path) -> String {
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_key_exits_64_naming_credentials_and_kids_and_writes_nothing() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let seed = mock.mint_refresh_token();
    let http = client();
    let right = new_key();
    let p = start_proxy(&file_config(&mock, dir.path(), &seed, &[&right])).await;
    serve_both(&http, p.proxy_addr).await;
    p.stop().await;
    let right_kid = file_kids(&state)[0].1.clone().unwrap();
    let before = std::fs::read(&state).unwrap();

    let wrong = new_key();
    let path = write_config(dir.path(), "wrong.toml", &file_config(&mock, dir.path(), &seed, &[&wrong]));
    let stderr = refused_start(&path);
    assert!(stderr.contains("g2a") && stderr.contains("goto"), "names the credentials: {stderr}");
    assert!(stderr.contains(&right_kid), "names the key id that sealed them: {stderr}");
    assert!(!stderr.contains(&wrong) && !stderr.contains(&right), "never a key: {stderr}");
    assert_eq!(std::fs::read(&state).unwrap(), before, "the state file is byte for byte as it was");

    // No key at all, sealed records present: refused the same way, with the way back.
    let path = write_config(dir.path(), "none.toml", &file_config(&mock, dir.path(), &seed, &[]));
    let stderr = refused_start(&path);
    assert!(stderr.contains("g2a") && stderr.contains("goto") && stderr.contains("token"), "{stderr}");
    assert_eq!(std::fs::read(&state).unwrap(), before, "the state file is byte for byte as it was");
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains("damaged")), "no damaged copy: {names:?}");
    assert_eq!(mock.stats().password_logins, 1);
}

/// Starts the binary on a state file whose sealed records `edit` changed, and checks
/// that `g2a` (untouched) serves its stored token without a new login while `goto`
/// (whose record no longer opens) logs an error naming it and starts without it.
async fn one_bad_record(edit: impl FnOnce(&mut serde_json::Value)) {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let seed = mock.mint_refresh_token();
    let http = client();
    let key = new_key();
    let text = file_config(&mock, dir.path(), &seed, &[&key]);
    let p = start_proxy(&text).await;
    serve_both(&http, p.proxy_addr).await;
    p.stop().await;
    let logins = mock.stats().password_logins;

    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&state, serde_json::to_vec_pretty(&v).unwrap()).unwrap();

    let p = Proc::spawn(&write_config(dir.path(), "proxy.toml", &text));
    let r = http.get(p.url("/G2A/rest/v1/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mock.stats().password_logins, logins, "g2a serves its stored token: no new login");
    let log = p.log_text();
    let error = log
        .lines()
        .find(|l| l.contains("\"ERROR\"") && l.contains("goto") && l.contains("does not open"))
        .unwrap_or_else(|| panic!("no error naming goto: {log}"));
    assert!(!error.contains(&key));
    let tokens = tokens_json(&http, p.admin_addr).await;
    assert!(tokens["g2a"]["state_key_id"].is_string(), "{tokens}");
    assert!(tokens["goto"]["state_key_id"].is_null(), "{tokens}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flipped_byte_costs_only_that_credential() {
    one_bad_record(|v| {
        let ct = v["credentials"]["goto"]["ct"].as_str().unwrap().to_string();
        let mut b = ct.into_bytes();
        let i = b.len() / 2;
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        v["credentials"]["goto"]["ct"] = String::from_utf8(b).unwrap().into();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_copied_to_another_credential_is_refused() {
    one_bad_record(|v| {
        v["credentials"]["goto"] = v["credentials"]["g2a"].clone();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_values_are_sealed_migrated_and_a_wrong_key_changes_nothing() {
    let Some(redis) = RedisServer::start().await else { return };
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let seed = mock.mint_refresh_token();
    let http = client();
    let dir = tempfile::tempdir().unwrap();

    // Plaintext first (no keys), then a start with a key seals every value at start.
    let p = start_proxy(&redis_config(&mock, &redis, "enc", &seed, &[])).await;
    serve_both(&http, p.proxy_addr).await;
    p.stop().await;
    assert!(all_redis_values(&redis).await.iter().any(|(_, v)| v.contains("mock-rt-")), "plaintext before keys");

    let key = new_key();
    let p = start_proxy(&redis_config(&mock, &redis, "enc", &seed, &[&key])).await;
    for (k, v) in all_redis_values(&redis).await {
        assert_no_secret(v.as_bytes(), &mock, &seed, &format!("redis key {k} after a start with a key"));
    }
    serve_both(&http, p.proxy_addr).await;
    // A renewal goes through the newest-wins script with a sealed value.
    assert_eq!(http.post(format!("http://{}/refresh/goto", p.admin_addr)).send().await.unwrap().status(), 200);
    assert_eq!(http.post(format!("http://{}/refresh/g2a", p.admin_addr)).send().await.unwrap().status(), 200);
    let values = all_redis_values(&redis).await;
    for (k, v) in &values {
        assert_no_secret(v.as_bytes(), &mock, &seed, &format!("redis key {k}"));
    }
    let tokens = tokens_json(&http, p.admin_addr).await;
    let kid = tokens["goto"]["state_key_id"].as_str().expect("sealed").to_string();
    assert_eq!(tokens["g2a"]["state_key_id"], kid.as_str());
    serve_both(&http, p.proxy_addr).await;
    p.stop().await;

    // A wrong key: exit 64, naming the credentials and the key id, every value unchanged.
    let before = all_redis_values(&redis).await;
    let path = write_config(dir.path(), "wrong.toml", &redis_config(&mock, &redis, "enc", &seed, &[&new_key()]));
    let stderr = refused_start(&path);
    assert!(stderr.contains("g2a") && stderr.contains("goto") && stderr.contains(&kid), "{stderr}");
    assert_eq!(all_redis_values(&redis).await, before, "Redis values unchanged");

    // A damaged value: that credential starts fresh, the other serves; the new token
    // replaces the damaged value, sealed.
    let token_key = "enc:token:goto".to_string();
    let mut v: serde_json::Value = serde_json::from_str(&redis.get(&token_key).await.unwrap()).unwrap();
    let mut ct = v["ct"].as_str().unwrap().to_string().into_bytes();
    let i = ct.len() / 2;
    ct[i] = if ct[i] == b'A' { b'B' } else { b'A' };
    v["ct"] = String::from_utf8(ct).unwrap().into();
    let mut c = redis.conn().await;
    let _: () = redis::cmd("SET").arg(&token_key).arg(v.to_string()).query_async(&mut c).await.unwrap();
    let logins = mock.stats().password_logins;
    let p = start_proxy(&redis_config(&mock, &redis, "enc", &seed, &[&key])).await;
    let r = http.get(format!("http://{}/G2A/rest/v1/x", p.proxy_addr)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mock.stats().password_logins, logins, "g2a serves its stored token");
    p.stop().await;
}

/// The SIGKILL-during-refresh test with encryption on (file store): no refresh token is
/// lost, and none is ever at rest in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_refreshes_with_encryption_never_loses_the_refresh_token() {
    let key = new_key();
    let dir = crate::tokens::sigkill_during_refreshes(
        4,
        |dir| format!("[state]\npath = {:?}\n{}", dir.join("state.json").display().to_string(), keys_line(&[&key])),
        || async {},
    )
    .await;
    let bytes = std::fs::read(dir.path().join("state.json")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("mock-rt-") && !text.contains("mock-at-"), "{text}");
}

/// The same with Redis as the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_refreshes_with_encryption_on_redis() {
    let Some(redis) = RedisServer::start().await else { return };
    let key = new_key();
    // A process killed while it held the renewal lock leaves the lock to expire by itself
    // (LOCK_TTL, 30 s): until then no replica may renew. The restart waits for that (the
    // crash-safety property tested here is that no refresh token is lost, not how fast a
    // lone replica gets past its dead predecessor's lock).
    let lock_gone = || async {
        let mut c = redis.conn().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        loop {
            let held: bool = redis::cmd("EXISTS").arg("kill:lock:goto").query_async(&mut c).await.unwrap();
            if !held {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the dead process's lock never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _dir = crate::tokens::sigkill_during_refreshes(
        4,
        |_| format!("{}{}", redis.state("kill"), keys_line(&[&key])),
        lock_gone,
    )
    .await;
    for (k, v) in all_redis_values(&redis).await {
        assert!(!v.contains("mock-rt-") && !v.contains("mock-at-"), "{k}: {v}");
    }
}
