//! Token lifecycle: restart reuse, crash safety, dead refresh tokens, admin endpoints.

use std::time::Duration;

use crate::support::*;
use goto_auth_proxy::demo::mock::MockOptions;

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
    // g2a's 2-second tokens renew every second, so it may be caught mid-renewal.
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
    let mock = goto_auth_proxy::demo::mock::MockGoto::start(short_tokens(2)).await.unwrap();
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
    let mock = goto_auth_proxy::demo::mock::MockGoto::start(MockOptions::default()).await.unwrap();
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
