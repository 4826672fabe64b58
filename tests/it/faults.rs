//! Faults, injected at the mock: the token endpoint down, slow, failing, rate limiting,
//! answering garbage or no lifetime; the upstream API down, slow, or breaking off a
//! body. For each: what the client gets (SPEC codes), `/readyz`, the metric that counts
//! it, and recovery by itself once the fault ends.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use goto_mock::{MockGoto, MockOptions, TokenFault};

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn expect_error(r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status(), status, "expected {code}");
    assert_eq!(r.headers()["x-goto-auth-proxy-error"], code);
    let v: serde_json::Value = r.json().await.expect("JSON error body");
    assert_eq!(v["error"], code);
    v["message"].as_str().unwrap_or_default().to_string()
}

/// `/readyz`: status and body.
async fn readyz(s: &Stack) -> (u16, String) {
    let r = s.http.get(s.admin("/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn metrics(s: &Stack) -> String {
    s.http.get(s.admin("/metrics")).send().await.unwrap().text().await.unwrap()
}

fn refreshes(m: &str, outcome: &str) -> f64 {
    metric(m, &format!("goto_auth_proxy_token_refreshes_total{{credential=\"g2a\",outcome=\"{outcome}\"}}"))
}

/// A Direct Login credential `g2a` on `/` against the mock, token_wait as given.
async fn g2a_stack(opts: MockOptions, token_wait: &str, fault: Option<TokenFault>) -> Stack {
    stack(opts, |mock, dir| {
        mock.set_fault(fault);
        config_text(
            dir,
            &format!("token_wait = \"{token_wait}\"\nrequest_timeout = \"500ms\"\nconnect_timeout = \"1s\""),
            &format!("{}\n{}", password_cred("g2a", mock), route("/", mock, Some("g2a"))),
        )
    })
    .await
}

// ===== the token endpoint =====

#[tokio::test]
async fn token_endpoint_down_then_back() {
    let port = closed_port();
    let opts = MockOptions::default();
    let dir = tempfile::tempdir().unwrap();
    // The whole "GoTo" lives at a port where nothing listens yet.
    let text = config_text(
        dir.path(),
        "token_wait = \"300ms\"",
        &format!(
            "[credentials.g2a]\ngrant = \"password\"\nclient_id = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\ntoken_url = \"http://{port}/oauth/access_token\"\n\n[[routes]]\nprefix = \"/\"\nupstream = \"http://{port}\"\ncredential = \"g2a\"\n",
            opts.consumer_key, opts.user_id, opts.password
        ),
    );
    let proxy = start_proxy(&text).await;
    let http = client();
    let url = format!("http://{}/G2A/x", proxy.proxy_addr);
    let msg = expect_error(http.get(&url).send().await.unwrap(), 503, "token_unavailable").await;
    assert!(msg.contains("unreachable"), "{msg}");
    let ready = http.get(format!("http://{}/readyz", proxy.admin_addr)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("unreachable"));
    let m = metrics_of(&proxy).await;
    assert!(refreshes(&m, "unreachable") >= 1.0, "{m}");

    // GoTo comes back: the proxy recovers by itself.
    let mock = MockGoto::start_on(port, opts).await.expect("the port is still free");
    wait_ready(&http, &format!("http://{}/readyz", proxy.admin_addr), Duration::from_secs(10)).await;
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(mock.stats().password_logins, 1);
    proxy.stop().await;
}

#[tokio::test]
async fn slow_token_endpoint_answers_within_token_wait_then_recovers() {
    let s = g2a_stack(MockOptions::default(), "1s", Some(TokenFault::Delay(Duration::from_secs(5)))).await;
    let started = Instant::now();
    let msg = expect_error(s.get("/G2A/x").await, 503, "token_unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}, token_wait is 1s", started.elapsed());
    assert!(msg.contains("first token is still being obtained"), "{msg}");
    let (status, body) = readyz(&s).await;
    assert_eq!(status, 503, "{body}");
    let m = metrics(&s).await;
    assert_eq!(metric(&m, "goto_auth_proxy_requests_total{method=\"GET\",route=\"/\",status=\"503\"}"), 1.0, "{m}");

    // The slow answer arrives (the fault is gone for later calls): ready, by itself.
    s.mock.set_fault(None);
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(10)).await;
    assert_eq!(s.get("/G2A/x").await.status(), 200);
    assert_eq!(s.mock.stats().token_calls, 1, "the slow call was waited for, not repeated");
}

#[tokio::test]
async fn token_endpoint_500_then_recovers() {
    let s = g2a_stack(MockOptions::default(), "300ms", Some(TokenFault::Status(500))).await;
    let msg = expect_error(s.get("/G2A/x").await, 503, "token_unavailable").await;
    assert!(msg.contains("HTTP 500"), "{msg}");
    let (status, body) = readyz(&s).await;
    assert_eq!(status, 503);
    assert!(body.contains("HTTP 500"), "{body}");
    assert!(refreshes(&metrics(&s).await, "refused") >= 1.0);
    s.mock.set_fault(None);
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(10)).await;
    assert_eq!(s.get("/G2A/x").await.status(), 200);
}

#[tokio::test]
async fn token_endpoint_429_retry_after_is_a_minimum_backoff() {
    let s = g2a_stack(MockOptions::default(), "300ms", Some(TokenFault::TooManyRequests(3))).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while s.mock.stats().token_calls == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no token call");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused_at = Instant::now();
    // The endpoint will answer next time; the proxy must still wait its Retry-After.
    s.mock.set_fault(None);
    let msg = expect_error(s.get("/G2A/x").await, 503, "token_unavailable").await;
    assert!(msg.contains("429"), "{msg}");
    let (status, body) = readyz(&s).await;
    assert_eq!(status, 503, "{body}");
    // Nor does an operator's renewal call the endpoint inside the window.
    let r = s.http.post(s.admin("/refresh/g2a")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("asked to wait"));
    assert_eq!(s.mock.stats().token_calls, 1, "called again inside Retry-After");
    assert_eq!(refreshes(&metrics(&s).await, "rate_limited"), 1.0);

    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(10)).await;
    let waited = refused_at.elapsed();
    assert!(waited >= Duration::from_millis(2500), "renewed {waited:?} after a 429 with Retry-After: 3");
    assert_eq!(s.mock.stats().token_calls, 2);
    assert_eq!(s.get("/G2A/x").await.status(), 200);
}

#[tokio::test]
async fn token_endpoint_garbage_then_recovers() {
    let s = g2a_stack(MockOptions::default(), "300ms", Some(TokenFault::Garbage)).await;
    let msg = expect_error(s.get("/G2A/x").await, 503, "token_unavailable").await;
    assert!(msg.contains("not a token"), "{msg}");
    let (status, body) = readyz(&s).await;
    assert_eq!(status, 503);
    assert!(body.contains("not a token"), "{body}");
    assert!(refreshes(&metrics(&s).await, "malformed") >= 1.0);
    s.mock.set_fault(None);
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(10)).await;
    assert_eq!(s.get("/G2A/x").await.status(), 200);
}

#[tokio::test]
async fn token_without_expires_in_lives_the_default_hour() {
    let s = g2a_stack(MockOptions::default(), "3s", Some(TokenFault::NoExpiresIn)).await;
    assert_eq!(s.get("/G2A/x").await.status(), 200);
    let tokens: serde_json::Value = s.http.get(s.admin("/tokens")).send().await.unwrap().json().await.unwrap();
    let expires = humantime::parse_rfc3339(tokens["g2a"]["expires_at"].as_str().expect("expires_at")).unwrap();
    let left = expires.duration_since(SystemTime::now()).expect("in the future");
    assert!(left > Duration::from_secs(3540) && left <= Duration::from_secs(3600), "{left:?}");
    assert_eq!(readyz(&s).await.0, 200);
    assert_eq!(refreshes(&metrics(&s).await, "success"), 1.0);
}

// ===== the upstream API =====

/// Answers every request on `addr` with `200 ok` (a stand-in upstream coming back).
async fn plain_upstream(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("the port is still free");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            });
        }
    })
}

#[tokio::test]
async fn upstream_down_then_back() {
    let port = closed_port();
    let s = stack(MockOptions::default(), |mock, dir| {
        config_text(
            dir,
            "connect_timeout = \"1s\"",
            &format!(
                "{}\n{}\n[[routes]]\nprefix = \"/down/\"\nupstream = \"http://{port}\"\ncredential = \"g2a\"\n",
                password_cred("g2a", mock),
                route("/", mock, Some("g2a"))
            ),
        )
    })
    .await;
    let msg = expect_error(s.get("/down/x").await, 502, "upstream_unreachable").await;
    assert!(msg.contains(&port.to_string()), "{msg}");
    assert_eq!(readyz(&s).await.0, 200, "an upstream fault is not a token fault");
    let m = metrics(&s).await;
    assert_eq!(metric(&m, "goto_auth_proxy_upstream_errors_total{kind=\"connect\",route=\"/down/\"}"), 1.0, "{m}");
    assert_eq!(s.get("/G2W/x").await.status(), 200, "other routes are unaffected");

    let server = plain_upstream(port).await;
    let r = s.get("/down/x").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    server.abort();
}

/// `connect_timeout` is the config's in force: a reload that changes it applies to the
/// next new upstream connection. The upstream accepts TCP and never answers TLS.
#[tokio::test]
async fn a_reload_changes_the_connect_timeout_of_new_upstream_connections() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            open.push(tcp);
        }
    });
    let routes = |mock: &MockGoto| {
        format!(
            "{}\n[[routes]]\nprefix = \"/silent/\"\nupstream = \"https://127.0.0.1:{port}\"\ncredential = \"g2a\"\n",
            password_cred("g2a", mock)
        )
    };
    let s =
        stack(MockOptions::default(), |mock, dir| config_text(dir, "connect_timeout = \"300ms\"", &routes(mock))).await;
    let started = Instant::now();
    let msg = expect_error(s.get("/silent/x").await, 502, "upstream_unreachable").await;
    assert!(msg.contains("timed out after 300ms"), "{msg}");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());

    let text = config_text(s.dir.path(), "connect_timeout = \"2s\"", &routes(&s.mock));
    s.proxy
        .core
        .reload(goto_auth_proxy::Config::parse("reload.toml", &text).unwrap(), goto_auth_proxy::ReloadTrigger::Signal)
        .await
        .unwrap();
    let started = Instant::now();
    let msg = expect_error(s.get("/silent/x").await, 502, "upstream_unreachable").await;
    assert!(msg.contains("timed out after 2s"), "the reloaded timeout applies: {msg}");
    assert!(started.elapsed() >= Duration::from_millis(1900), "{:?}", started.elapsed());
    held.abort();
}

#[tokio::test]
async fn upstream_slower_than_request_timeout_then_fast() {
    let s = g2a_stack(MockOptions::default(), "3s", None).await;
    let started = Instant::now();
    expect_error(s.get("/G2W/_mock/slow/3000").await, 504, "upstream_timeout").await;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(readyz(&s).await.0, 200);
    let m = metrics(&s).await;
    assert_eq!(metric(&m, "goto_auth_proxy_upstream_errors_total{kind=\"timeout\",route=\"/\"}"), 1.0, "{m}");
    assert_eq!(s.get("/G2W/_mock/slow/10").await.status(), 200);
}

#[tokio::test]
async fn upstream_breaking_off_a_body_aborts_the_client_answer_without_a_hang() {
    let s = g2a_stack(MockOptions::default(), "3s", None).await;
    let r = s.get("/G2W/_mock/reset/100000").await;
    assert_eq!(r.status(), 200, "headers were already on their way");
    let body = tokio::time::timeout(Duration::from_secs(5), r.bytes()).await.expect("the body must not hang");
    assert!(body.is_err(), "a truncated body must not look complete: got {} bytes", body.map(|b| b.len()).unwrap_or(0));
    let m = metrics(&s).await;
    assert_eq!(metric(&m, "goto_auth_proxy_upstream_errors_total{kind=\"aborted\",route=\"/\"}"), 1.0, "{m}");
    assert_eq!(readyz(&s).await.0, 200);
    // The next request is fine: nothing was left broken.
    let r = s.get("/G2W/_mock/bytes/100000").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 100000);
    let m = metrics(&s).await;
    assert_eq!(metric(&m, "goto_auth_proxy_upstream_errors_total{kind=\"aborted\",route=\"/\"}"), 1.0, "{m}");
}

/// The remote control the chaos soak (`benches/soak.sh`) drives its mocks with, from
/// another process: a fault set over HTTP is the one in force and lifts the same way,
/// each token call is listed with the query of its URL (how the soak tells replicas
/// apart), and the refresh-token check counts a chain as held only with its newest
/// refresh token, so a store holding a rotated-away one is a lost refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mocks_remote_control_sets_faults_lists_calls_and_finds_lost_refresh_tokens() {
    let mock = MockGoto::start(short_tokens(60)).await.unwrap();
    let http = client();
    let o = mock.options();
    let post = |path: &str| http.post(format!("{}{path}", mock.url()));
    let minted: serde_json::Value = post("/_mock/refresh_tokens/mint").send().await.unwrap().json().await.unwrap();
    let first = minted["refresh_token"].as_str().unwrap().to_string();
    let check = |held: Vec<String>| {
        let req = post("/_mock/refresh_tokens/check").json(&held);
        async move {
            let v: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
            (v["chains"].as_u64().unwrap(), v["held"].as_u64().unwrap())
        }
    };
    assert_eq!(check(vec![first.clone()]).await, (1, 1));
    assert_eq!(check(vec![]).await, (1, 0), "nothing stored: the newest refresh token is lost");

    let refresh = |rt: String| {
        post("/oauth/token?replica=x")
            .basic_auth(&o.client_id, Some(&o.client_secret))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", rt.as_str())])
            .send()
    };
    let answer: serde_json::Value = refresh(first.clone()).await.unwrap().json().await.unwrap();
    let second = answer["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second, first, "rotating refresh tokens");
    assert_eq!(check(vec![first.clone()]).await, (1, 0), "a rotated-away refresh token is not the newest");
    assert_eq!(check(vec![second.clone(), first]).await, (1, 1));

    let set = post("/_mock/fault?status=503").send().await.unwrap();
    assert_eq!(set.status(), 200);
    assert_eq!(refresh(second.clone()).await.unwrap().status(), 503);
    assert_eq!(post("/_mock/fault?retry_after=3").send().await.unwrap().status(), 200);
    let limited = refresh(second.clone()).await.unwrap();
    assert_eq!((limited.status().as_u16(), limited.headers()["retry-after"].to_str().unwrap()), (429, "3"));
    assert_eq!(post("/_mock/fault?bogus=1").send().await.unwrap().status(), 400);
    post("/_mock/fault").send().await.unwrap();
    assert_eq!(refresh(second).await.unwrap().status(), 200, "the fault is lifted");

    let calls: serde_json::Value =
        http.get(format!("{}/_mock/token_calls", mock.url())).send().await.unwrap().json().await.unwrap();
    let calls = calls["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|c| c["query"] == "replica=x" && c["endpoint"] == "oauth/token"), "{calls:?}");
}
