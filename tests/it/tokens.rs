//! Token lifecycle: restart reuse, crash safety, dead refresh tokens, admin endpoints.

use std::time::Duration;

use crate::support::*;
use goto_mock::{MockGoto, MockOptions};

#[tokio::test]
async fn restart_reuses_a_valid_stored_token_without_logging_in() {
    let s = standard(MockOptions::default()).await;
    assert_eq!(s.get("/G2A/rest/v1/x").await.status(), 200);
    assert_eq!(s.get("/G2W/rest/v2/x").await.status(), 200);
    let before = s.mock.stats();
    assert_eq!(before.password_logins, 1);

    // Same config, same state file: a second proxy life.
    let text = std::fs::read_to_string(s.dir.path().join("state.json")).unwrap();
    assert!(text.contains("access_token"));
    let seed = s.mock.mint_refresh_token();
    let config = config_text(
        s.dir.path(),
        "",
        &format!(
            "{}\n{}\n{}\n{}",
            password_cred("g2a", &s.mock),
            code_cred("goto", &s.mock, Some(&seed)),
            route("/G2A/", &s.mock, Some("g2a")),
            route("/", &s.mock, Some("goto"))
        ),
    );
    s.proxy.stop().await;
    let again = start_proxy(&config).await;
    let http = client();
    for path in ["/G2A/rest/v1/x", "/G2W/rest/v2/x"] {
        let r = http.get(format!("http://{}{path}", again.proxy_addr)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let after = s.mock.stats();
    assert_eq!(after.token_calls, before.token_calls, "no token call on restart: {after:?}");
    assert_eq!(after.api_rejected, 0, "the reused tokens are the live ones");
    again.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn state_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let s = standard(MockOptions::default()).await;
    assert_eq!(s.get("/G2A/rest/v1/x").await.status(), 200);
    let mode = std::fs::metadata(s.dir.path().join("state.json")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn dead_refresh_token_means_login_for_oauth_and_relogin_for_password() {
    let s = standard(short_tokens(2)).await;
    assert_eq!(s.get("/G2W/rest/v2/x").await.status(), 200);
    assert_eq!(s.get("/G2A/rest/v2/x").await.status(), 200);
    let logins = s.mock.stats().password_logins;
    s.mock.revoke_refresh_tokens();
    s.mock.revoke_access_tokens();

    // Direct Login: refresh refused → logs in with the password again.
    assert_eq!(s.get("/G2A/rest/v2/x").await.status(), 200);
    assert!(s.mock.stats().password_logins > logins);

    // OAuth: only a person can help; requests and /readyz say so.
    let r = s.get("/G2W/rest/v2/x").await;
    // The rejected request passes GoTo's answer through (the renewal failed).
    assert_eq!(r.status(), 403);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.get("/G2W/rest/v2/x").await;
        if r.status() == 503 {
            assert_eq!(r.headers()["x-goto-auth-proxy-error"], "token_unavailable");
            assert!(r.text().await.unwrap().contains("login"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never became token_unavailable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = s.http.get(s.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("goto") && body.contains("login"), "{body}");

    // The operator's view says a person must act, for exactly that credential.
    let tokens: serde_json::Value = s.http.get(s.admin("/tokens")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tokens["goto"]["state"], "needs_login", "{tokens}");
    // The Direct Login credential logged in again by itself (its 2-second token may be
    // renewing right now): only the OAuth one waits for a person.
    assert!(matches!(tokens["g2a"]["state"].as_str(), Some("valid" | "renewing")), "{tokens}");
    assert!(tokens["goto"]["last_error"].as_str().is_some_and(|e| e.contains("login")), "{tokens}");
    assert!(
        !tokens["goto"]["expires_at"].as_str().is_some_and(|t| t.starts_with("1970")),
        "a retired token shows no epoch expiry: {tokens}"
    );
    let m = s.http.get(s.admin("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&m, "goto_auth_proxy_credential_needs_login{credential=\"goto\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "goto_auth_proxy_credential_needs_login{credential=\"g2a\"}"), 0.0, "{m}");
}

#[tokio::test]
async fn admin_endpoints() {
    let s = standard(MockOptions::default()).await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    assert_eq!(s.http.get(s.admin("/healthz")).send().await.unwrap().status(), 200);

    let tokens: serde_json::Value = s.http.get(s.admin("/tokens")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tokens["g2a"]["grant"], "password");
    assert_eq!(tokens["g2a"]["organizer_key"], "8439885694023999999");
    // OAuth answers carry no keys: they were looked up at keys_url.
    assert_eq!(tokens["goto"]["organizer_key"], "8439885694023999999");
    assert_eq!(tokens["goto"]["account_key"], "9999982253621659654");
    assert_eq!(tokens["goto"]["valid"], true);
    assert_eq!(tokens["goto"]["state"], "valid");
    assert!(tokens["goto"].get("principal").is_some(), "principal is always present (null when unknown): {tokens}");
    let text = tokens.to_string();
    assert!(!text.contains("mock-at-") && !text.contains("mock-rt-"), "a token leaked into /tokens: {text}");

    let before = s.mock.stats().token_calls;
    let r = s.http.post(s.admin("/refresh/goto")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.mock.stats().token_calls, before + 1);
    assert_eq!(s.http.post(s.admin("/refresh/nope")).send().await.unwrap().status(), 404);

    assert_eq!(s.get("/G2W/rest/v2/x").await.status(), 200);
    let m = s.http.get(s.admin("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "goto_auth_proxy_requests_total",
        "goto_auth_proxy_request_duration_seconds",
        "goto_auth_proxy_token_refreshes_total",
        "goto_auth_proxy_token_expiry_timestamp_seconds",
        "goto_auth_proxy_credential_needs_login",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    assert!(metric(&m, "goto_auth_proxy_requests_total{method=\"GET\",route=\"/\",status=\"200\"}") >= 1.0, "{m}");
    assert!(metric(&m, "goto_auth_proxy_token_refreshes_total{credential=\"goto\",outcome=\"success\"}") >= 2.0, "{m}");
    assert!(!m.contains("mock-at-") && !m.contains("mock-rt-"));
}

/// SIGKILL at random moments while the proxy renews every second under load; each
/// restart must serve on the stored refresh token with no new sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_refreshes_never_loses_the_refresh_token() {
    sigkill_during_refreshes(
        10,
        |dir| format!("[state]\npath = {:?}\n", dir.join("state.json").display().to_string()),
        || async {},
    )
    .await;
}

/// The SIGKILL test over any `[state]` section (`state(dir)`), `rounds` lives;
/// `after_kill` runs after each kill, before the restart (a shared store waits there for
/// the dead process's renewal lock to expire, as an operator's restart would). Returns
/// the state directory (still there) for a look at what was stored.
pub async fn sigkill_during_refreshes<F, Fut>(
    rounds: u32,
    state: impl FnOnce(&std::path::Path) -> String,
    mut after_kill: F,
) -> tempfile::TempDir
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mock = goto_mock::MockGoto::start(short_tokens(2)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seed = mock.mint_refresh_token();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntoken_wait = \"3s\"\n\n{}\n{}\n{}",
        state(dir.path()),
        code_cred("goto", &mock, Some(&seed)),
        route("/", &mock, Some("goto"))
    );
    let path = write_config(dir.path(), "proxy.toml", &text);
    let http = client();
    for round in 0..rounds {
        let p = Proc::spawn(&path);
        wait_ready(&http, &p.admin("/readyz"), Duration::from_secs(10)).await;
        let stop = tokio::time::Instant::now() + Duration::from_millis(300 + rand::random::<u64>() % 1500);
        while tokio::time::Instant::now() < stop {
            let r = http.get(p.url("/G2W/rest/v2/x")).send().await.unwrap();
            assert_eq!(r.status(), 200, "round {round}: {}", r.text().await.unwrap_or_default());
        }
        p.signal(9);
        drop(p);
        after_kill().await;
    }
    let stats = mock.stats();
    assert_eq!(stats.code_exchanges, 0);
    assert!(stats.refreshes >= u64::from(rounds) / 2, "{stats:?}");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let mock = goto_mock::MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text =
        config_text(dir.path(), "", &format!("{}\n{}", password_cred("g2a", &mock), route("/", &mock, Some("g2a"))));
    let mut p = Proc::spawn(&write_config(dir.path(), "proxy.toml", &text));
    let http = client();
    wait_ready(&http, &p.admin("/readyz"), Duration::from_secs(10)).await;
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), p.url("/G2W/_mock/slow/1000"));
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    // The request is in flight once the mock has counted it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while mock.stats().api_ok == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.signal(15);
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
    assert!(status.success(), "{status:?}");
    let log = p.log_text();
    assert!(log.contains("stopped"), "{log}");
    assert!(
        !log.contains("mock-at-") && !log.contains("mock-rt-") && !log.contains("demo-password"),
        "secret in log: {log}"
    );
}

/// `/tokens` of the stack.
async fn tokens_of(s: &Stack) -> serde_json::Value {
    s.http.get(s.admin("/tokens")).send().await.unwrap().json().await.unwrap()
}

/// SPEC: `invalid_grant` makes a credential `needs_login`, and then nothing calls the
/// token endpoint — not the schedule's retries, not rejected requests — until a person
/// acts (`POST /refresh`, a sign-in). A password credential that is refused likewise.
#[tokio::test]
async fn a_dead_grant_makes_no_token_calls_until_a_person_acts() {
    let s = stack(short_tokens(2), |mock, dir| {
        let wrong_password = password_cred("g2a", mock)
            .replace(&format!("password = \"{}\"", mock.options().password), "password = \"not-the-password\"");
        let rest = format!(
            "{wrong_password}\n{}\n{}\n{}",
            code_cred("goto", mock, Some(&mock.mint_refresh_token())),
            route("/G2A/", mock, Some("g2a")),
            route("/", mock, Some("goto"))
        );
        config_text(dir, "token_wait = \"200ms\"", &rest)
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.get("/G2W/rest/v2/x").await.status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the seeded credential never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.mock.revoke_refresh_tokens();

    // The 2-second token comes due; its refresh is refused; the password never worked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let t = tokens_of(&s).await;
        if t["goto"]["state"] == "needs_login" && t["g2a"]["state"] == "needs_login" {
            assert!(t["goto"]["next_refresh"].is_null(), "no renewal is planned: {t}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never needs_login: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = s.mock.stats().token_calls;

    // Over several backoff periods (0.5 s, 1 s, 2 s…), with requests whose tokens the
    // upstream rejects: not one token call.
    s.mock.revoke_access_tokens();
    for _ in 0..10 {
        for path in ["/G2W/rest/v2/x", "/G2A/rest/v1/x"] {
            let status = s.get(path).await.status();
            assert!(status == 503 || status == 403, "{path}: {status}");
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(s.mock.stats().token_calls, calls, "token calls while waiting for a person");
    let t = tokens_of(&s).await;
    assert_eq!(t["goto"]["consecutive_failures"], 1, "{t}");
    assert_eq!(t["g2a"]["consecutive_failures"], 1, "{t}");
    assert!(t["g2a"]["last_error"].as_str().is_some_and(|e| e.contains("password")), "{t}");

    // An operator's `POST /refresh` asks once more (still refused: still waiting).
    for name in ["goto", "g2a"] {
        let r = s.http.post(s.admin(&format!("/refresh/{name}"))).send().await.unwrap();
        assert!(!r.status().is_success(), "{name}: {}", r.status());
    }
    assert_eq!(s.mock.stats().token_calls, calls + 2);
    assert_eq!(tokens_of(&s).await["goto"]["state"], "needs_login");

    // A sign-in ends it: served again, renewed on schedule again.
    let login = s.http.get(s.admin("/login/goto")).send().await.unwrap();
    let authorize = login.headers()["location"].to_str().unwrap().to_string();
    let back = s.http.get(&authorize).send().await.unwrap();
    let callback = back.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(s.http.get(&callback).send().await.unwrap().status(), 200);
    assert_eq!(s.get("/G2W/rest/v2/x").await.status(), 200);
    let t = tokens_of(&s).await;
    assert_eq!(t["goto"]["state"], "valid", "{t}");
    let signed_in = s.mock.stats().token_calls;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.mock.stats().refreshes == 0 || s.mock.stats().token_calls == signed_in {
        assert!(tokio::time::Instant::now() < deadline, "the schedule never renewed after the sign-in");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.get("/G2W/rest/v2/x").await.status(), 200);
}

/// A refused client secret is like a refused password: `needs_login` (a person must fix
/// the config; identity providers lock out clients that keep trying), no token calls
/// while requests come and go, and a reload with the right secret serves again.
#[tokio::test]
async fn a_refused_client_secret_waits_for_a_person_and_a_reload_ends_it() {
    let config = |mock: &MockGoto, dir: &std::path::Path, secret: &str| {
        let cred = client_credentials_cred("svc", mock).replace(
            &format!("client_secret = \"{}\"", mock.options().client_secret),
            &format!("client_secret = \"{secret}\""),
        );
        config_text(dir, "token_wait = \"200ms\"", &format!("{cred}\n{}", route("/", mock, Some("svc"))))
    };
    let s = stack(MockOptions::default(), |mock, dir| config(mock, dir, "not-the-secret")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let t = loop {
        let t = tokens_of(&s).await;
        if t["svc"]["state"] == "needs_login" {
            break t;
        }
        assert!(tokio::time::Instant::now() < deadline, "never needs_login: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(t["svc"]["last_error"].as_str().is_some_and(|e| e.contains("client_secret")), "{t}");
    let calls = s.mock.stats().token_calls;
    for _ in 0..6 {
        assert_eq!(s.get("/admin/rest/v1/me").await.status(), 503);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(s.mock.stats().token_calls, calls, "token calls while waiting for a person");

    let right = config(&s.mock, s.dir.path(), &s.mock.options().client_secret);
    s.proxy
        .core
        .reload(goto_auth_proxy::Config::parse("reload.toml", &right).unwrap(), goto_auth_proxy::ReloadTrigger::Signal)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.get("/admin/rest/v1/me").await.status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never served after the reload: {}", tokens_of(&s).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tokens_of(&s).await["svc"]["state"], "valid");
}
