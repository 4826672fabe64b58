//! The data path as a client sees it: injection, pass-through, streaming.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use goto_mock::MockOptions;

#[tokio::test]
async fn injects_token_and_replaces_client_authorization() {
    let s = standard(MockOptions::default()).await;
    let r = s.get("/admin/rest/v1/me").await;
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("\"accountKey\":\"9999982253621659654\""), "{body}");

    // A client's own (wrong) Authorization is replaced, not forwarded.
    let r = s.http.get(s.url("/G2M/rest/upcomingMeetings")).bearer_auth("not-a-real-token").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Direct Login credential on its own route.
    assert_eq!(s.get("/G2A/rest/v1/sessions").await.status(), 200);
    assert_eq!(s.mock.stats().api_rejected, 0);
}

#[tokio::test]
async fn forwards_host_query_and_body_unchanged_and_strips_hop_by_hop() {
    let s = standard(MockOptions::default()).await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = s
        .http
        .post(s.url("/G2W/rest/v2/webinars?fromTime=2026-01-01T00%3A00%3A00Z&size=50&a=b+c"))
        .header("Connection", "x-private-hop")
        .header("x-private-hop", "1")
        .header("Content-Type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["x-mock-host"], s.mock.addr().to_string().as_str());
    assert_eq!(h["x-mock-query"], "fromTime=2026-01-01T00%3A00%3A00Z&size=50&a=b+c");
    assert_eq!(h["x-mock-path"], "/G2W/rest/v2/webinars");
    assert_eq!(h["x-mock-hop-by-hop"], "");
    let echoed = r.bytes().await.unwrap();
    assert_eq!(echoed.as_ref(), body.as_slice());
}

#[tokio::test]
async fn big_integers_in_json_pass_byte_for_byte() {
    let s = standard(MockOptions::default()).await;
    let body = s.get("/G2W/rest/v2/organizers/8439885694023999999/webinars").await.text().await.unwrap();
    assert!(body.contains("\"webinarKey\":8439885694023999999"), "{body}");
}

#[tokio::test]
async fn organizer_key_placeholder_is_filled_in() {
    let s = standard(MockOptions::default()).await;
    for path in [
        "/G2W/rest/v2/organizers/%7BorganizerKey%7D/webinars",
        "/G2W/rest/v2/organizers/%7borganizerKey%7d/webinars",
        "/G2W/rest/v2/accounts/%7BaccountKey%7D/webinars",
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        let p = r.headers()["x-mock-path"].to_str().unwrap().to_string();
        assert!(!p.contains("Key"), "{path} forwarded as {p}");
    }
    // Raw braces, as a script might send them.
    let mut tcp = tokio::net::TcpStream::connect(s.proxy.proxy_addr).await.unwrap();
    tcp.write_all(
        b"GET /G2A/rest/v2/organizers/{organizerKey}/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-mock-path: /G2A/rest/v2/organizers/8439885694023999999/x"), "{out}");
}

#[tokio::test]
async fn large_download_streams_through() {
    let s = standard(MockOptions::default()).await;
    let n: u64 = 64 * 1024 * 1024;
    let mut r = s.get(&format!("/G2M/_mock/bytes/{n}")).await;
    assert_eq!(r.status(), 200);
    let mut got = 0u64;
    while let Some(chunk) = r.chunk().await.unwrap() {
        got += chunk.len() as u64;
    }
    assert_eq!(got, n);
}

#[tokio::test]
async fn plain_403_passes_through_without_retry() {
    let s = standard(MockOptions::default()).await;
    assert_eq!(s.get("/admin/rest/v1/me").await.status(), 200);
    let before = s.mock.stats().token_calls;
    let r = s.get("/G2W/rest/v2/forbidden").await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("x-goto-auth-proxy-error").is_none());
    assert!(r.text().await.unwrap().contains("NoPermission"));
    assert_eq!(s.mock.stats().token_calls, before, "a permission 403 must not trigger a renewal");
}

#[tokio::test]
async fn rejected_token_is_renewed_once_and_request_retried() {
    let s = standard(MockOptions::default()).await;
    assert_eq!(s.get("/G2W/rest/v2/x").await.status(), 200);
    // Each of GoTo's three ways of saying "token rejected".
    for path in ["/G2W/rest/v2/webinars", "/admin/rest/v1/me", "/identity/v1/Users/me"] {
        s.mock.revoke_access_tokens();
        let before = s.mock.stats();
        let r = s.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        let after = s.mock.stats();
        assert_eq!(after.token_calls - before.token_calls, 1, "{path}");
        assert_eq!(after.api_rejected - before.api_rejected, 1, "{path}");
    }
    let m = s.http.get(s.admin("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&m, "goto_auth_proxy_retries_total{route=\"/\"}"), 3.0, "{m}");
}

#[tokio::test]
async fn revoke_all_then_50_concurrent_requests_make_at_most_two_token_calls() {
    let s = standard(MockOptions::default()).await;
    assert_eq!(s.get("/G2A/rest/v1/x").await.status(), 200);
    assert_eq!(s.get("/G2W/rest/v2/x").await.status(), 200);
    s.mock.revoke_access_tokens();
    let before = s.mock.stats().token_calls;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let http = s.http.clone();
        let url = if i % 2 == 0 { s.url("/G2A/rest/v1/sessions") } else { s.url("/G2W/rest/v2/webinars") };
        tasks.push(tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    // One renewal per credential (two credentials here), however many saw the rejection.
    let calls = s.mock.stats().token_calls - before;
    assert!(calls <= 2, "{calls} token calls");
}

#[tokio::test]
async fn continuous_load_across_two_second_tokens_loses_no_request() {
    let s = standard(short_tokens(2)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut workers = Vec::new();
    for w in 0..8 {
        let http = s.http.clone();
        let url = if w % 2 == 0 { s.url("/G2A/rest/v1/sessions") } else { s.url("/G2W/rest/v2/webinars") };
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while tokio::time::Instant::now() < deadline {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    let stats = s.mock.stats();
    assert!(total > 100, "only {total} requests");
    // 6 s of 2 s tokens: both credentials renewed several times in the background.
    assert!(stats.refreshes + stats.password_logins >= 6, "{stats:?}");
}

/// A download far larger than any buffer streams through the real binary in bounded
/// memory (SPEC: "a 1 GB download goes through in bounded memory").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_download_streams_in_bounded_memory() {
    let mock = goto_mock::MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text =
        config_text(dir.path(), "", &format!("{}\n{}", password_cred("g2a", &mock), route("/", &mock, Some("g2a"))));
    let p = Proc::spawn(&write_config(dir.path(), "big.toml", &text));
    let n: u64 = 1024 * 1024 * 1024;
    let mut r = client().get(p.url(&format!("/G2M/_mock/bytes/{n}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut got = 0u64;
    while let Some(chunk) = r.chunk().await.unwrap() {
        got += chunk.len() as u64;
    }
    assert_eq!(got, n);
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(peak_kib < 64 * 1024, "proxy peak RSS {peak_kib} KiB while streaming 1 GiB");
}

/// A client connection keeps one upstream connection; a client that opens a new
/// connection per request (a `curl` loop) reuses idle upstream connections instead of
/// connecting (and, for GoTo, TLS-handshaking) each time; an upstream that closes a
/// connection costs the client nothing.
#[tokio::test]
async fn upstream_connections_are_reused_and_replaced_when_closed() {
    let s = standard(MockOptions::default()).await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    let base = s.mock.api_connections(); // the key lookup's own connection
    for _ in 0..20 {
        assert_eq!(s.get("/G2W/rest/v2/x").await.status(), 200);
    }
    assert_eq!(s.mock.api_connections() - base, 1, "one client connection, one upstream connection");
    for _ in 0..20 {
        let fresh = client(); // a new client connection each time
        let r = fresh.get(s.url("/G2W/rest/v2/x")).header("Connection", "close").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // A client's connection goes back to the idle list when its task ends, which can be
    // just after the next client arrives: a few extra connections, never one per client.
    assert!(
        s.mock.api_connections() - base <= 6,
        "{} upstream connections for 20 short-lived clients",
        s.mock.api_connections() - base
    );
    // The upstream closes the connection after each answer: every request still succeeds.
    for _ in 0..10 {
        assert_eq!(s.get("/G2W/_mock/close").await.status(), 200);
        assert_eq!(s.get("/G2W/rest/v2/x").await.status(), 200);
    }
}
