//! Tried as an attacker would: raw-socket requests with the exact headers browsers send
//! (DNS rebinding, cross-site fetches and forms), an upstream that rejects every token,
//! renewals forced from outside the loop, and clients that frame bodies badly. Each
//! test asserts what the user would notice: the answer, and whether a token moved or a
//! token endpoint was called.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;
use goto_mock::MockOptions;

fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    raw.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn api_calls(s: &Stack) -> u64 {
    let st = s.mock.stats();
    st.api_ok + st.api_rejected
}

/// Direct Login `g2a` on `/`, with `[inbound]` lines.
async fn g2a_stack(inbound: &str) -> Stack {
    let inbound = inbound.to_string();
    stack(MockOptions::default(), move |mock, dir| {
        config_text(dir, "", &format!("{inbound}\n{}\n{}", password_cred("g2a", mock), route("/", mock, Some("g2a"))))
    })
    .await
}

// ===== browsers =====

#[tokio::test]
async fn a_rebound_host_name_gets_403_and_no_token_moves() {
    let s = g2a_stack("").await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    let before = api_calls(&s);
    let port = s.proxy.proxy_addr.port();
    // What Chromium sends for `fetch("/admin/rest/v1/me")` from http://attacker.example:PORT/
    // once attacker.example resolves to 127.0.0.1: a same-origin request, by the browser's books.
    let req = format!(
        "GET /admin/rest/v1/me HTTP/1.1\r\nHost: attacker.example:{port}\r\nsec-fetch-site: same-origin\r\nsec-fetch-mode: cors\r\nsec-fetch-dest: empty\r\nuser-agent: Mozilla/5.0\r\naccept: */*\r\nConnection: close\r\n\r\n"
    );
    let out = raw(s.proxy.proxy_addr, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert_eq!(header(&out, "x-goto-auth-proxy-error"), Some("forbidden"));
    assert!(!out.contains("organizer") && !out.contains("mock-at-"), "{out}");
    assert_eq!(api_calls(&s), before, "the request never reached GoTo");
    // The admin listener too: rebinding must not read /tokens or press buttons.
    let port = s.proxy.admin_addr.port();
    let out = raw(
        s.proxy.admin_addr,
        format!("GET /tokens HTTP/1.1\r\nHost: attacker.example:{port}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}

#[tokio::test]
async fn cross_site_pages_and_forms_get_403_on_both_listeners() {
    let s = g2a_stack("").await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    let (before, calls) = (api_calls(&s), s.mock.stats().token_calls);
    let p = s.proxy.proxy_addr.port();
    // fetch() from https://evil.example: cross-site, with an Origin.
    let out = raw(
        s.proxy.proxy_addr,
        format!("GET /G2W/rest/v2/webinars HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\norigin: https://evil.example\r\nsec-fetch-site: cross-site\r\nsec-fetch-mode: cors\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert_eq!(header(&out, "access-control-allow-origin"), None);
    // An <img>/<script> from another site: no Origin on a GET, but Sec-Fetch-Site tells.
    let out = raw(
        s.proxy.proxy_addr,
        format!("GET /G2W/rest/v2/webinars HTTP/1.1\r\nHost: localhost:{p}\r\nsec-fetch-site: cross-site\r\nsec-fetch-mode: no-cors\r\nsec-fetch-dest: image\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    // An older browser: an Origin from another site, no Sec-Fetch-*.
    let body = "x=1";
    let out = raw(
        s.proxy.proxy_addr,
        format!("POST /G2W/rest/v2/webinars HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\norigin: http://127.0.0.1:1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "another port is another origin: {out}");
    assert_eq!(api_calls(&s), before, "nothing reached GoTo");

    // A plain HTML form on any site posting to the admin listener's refresh button.
    let a = s.proxy.admin_addr.port();
    let out = raw(
        s.proxy.admin_addr,
        format!("POST /refresh/g2a HTTP/1.1\r\nHost: 127.0.0.1:{a}\r\norigin: https://evil.example\r\nsec-fetch-site: cross-site\r\nsec-fetch-mode: navigate\r\nsec-fetch-dest: document\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert_eq!(s.mock.stats().token_calls, calls, "the form renewed nothing");
}

#[tokio::test]
async fn scripts_same_origin_pages_and_the_oauth_return_are_served() {
    let s = g2a_stack("").await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    // curl, newman and scripts send neither Origin nor Sec-Fetch-*.
    assert_eq!(s.get("/G2W/rest/v2/webinars").await.status(), 200);
    let p = s.proxy.proxy_addr.port();
    let out = raw(
        s.proxy.proxy_addr,
        format!("GET /G2W/rest/v2/webinars HTTP/1.1\r\nHost: localhost:{p}\r\nuser-agent: PostmanRuntime/7.43.0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // The status page's own form: a same-origin POST.
    let a = s.proxy.admin_addr.port();
    let calls = s.mock.stats().token_calls;
    let out = raw(
        s.proxy.admin_addr,
        format!("POST /refresh/g2a HTTP/1.1\r\nHost: 127.0.0.1:{a}\r\norigin: http://127.0.0.1:{a}\r\nsec-fetch-site: same-origin\r\nsec-fetch-mode: navigate\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(!out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(s.mock.stats().token_calls > calls, "the same-origin button renewed");
    // GoTo sending the browser back to /callback is a cross-site navigation by design:
    // it reaches the sign-in code (which refuses this unknown `state` itself).
    let out = raw(
        s.proxy.admin_addr,
        format!("GET /callback?code=c&state=unknown HTTP/1.1\r\nHost: 127.0.0.1:{a}\r\nsec-fetch-site: cross-site\r\nsec-fetch-mode: navigate\r\nsec-fetch-dest: document\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(!out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.to_lowercase().contains("state"), "{out}");
}

#[tokio::test]
async fn an_allowed_origin_gets_cors_answers_for_exactly_that_origin() {
    let s = g2a_stack("[inbound]\nallow_origins = [\"https://web.postman.co\"]\n").await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    let p = s.proxy.proxy_addr.port();
    let before = api_calls(&s);
    // Postman on the web, through its browser agent: a preflight, then the request.
    let out = raw(
        s.proxy.proxy_addr,
        format!("OPTIONS /G2W/rest/v2/webinars HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\norigin: https://web.postman.co\r\naccess-control-request-method: POST\r\naccess-control-request-headers: content-type\r\nsec-fetch-site: cross-site\r\nsec-fetch-mode: cors\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 204"), "{out}");
    assert_eq!(header(&out, "access-control-allow-origin"), Some("https://web.postman.co"));
    assert_eq!(header(&out, "access-control-allow-methods"), Some("POST"));
    assert_eq!(api_calls(&s), before, "the proxy answers the preflight itself");
    let out = raw(
        s.proxy.proxy_addr,
        format!("GET /G2W/rest/v2/webinars HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\norigin: https://web.postman.co\r\nsec-fetch-site: cross-site\r\nsec-fetch-mode: cors\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(header(&out, "access-control-allow-origin"), Some("https://web.postman.co"));
    // Any other origin is still refused, with no CORS answer.
    let out = raw(
        s.proxy.proxy_addr,
        format!("GET /G2W/rest/v2/webinars HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\norigin: https://web.postman.co.evil.example\r\nsec-fetch-site: cross-site\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert_eq!(header(&out, "access-control-allow-origin"), None);
}

// ===== rejected tokens =====

/// An upstream that answers every request `401` (a path the user may not call, or a
/// hostile upstream): keep-alive, bodies read and discarded.
async fn always_401() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                loop {
                    let n = match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    // GET requests from the proxy: one answer per complete head.
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: 27\r\n\r\n{\"error\":\"invalid_token\"}\r\n";
                        if tcp.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_that_rejects_every_token_costs_one_renewal_not_one_per_request() {
    let up = always_401().await;
    let s = stack(MockOptions::default(), move |mock, dir| {
        config_text(
            dir,
            "",
            &format!(
                "{}\n{}\n[[routes]]\nprefix = \"/denied/\"\nupstream = \"http://{up}\"\ncredential = \"g2a\"\n",
                password_cred("g2a", mock),
                route("/", mock, Some("g2a"))
            ),
        )
    })
    .await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    let logins = s.mock.stats().password_logins;
    for i in 0..50 {
        let r = s.get("/denied/G2A/rest/v1/sessions").await;
        assert_eq!(r.status(), 401, "request {i}: the upstream's answer passes through");
        assert!(r.headers().get("x-goto-auth-proxy-error").is_none());
    }
    // And 20 at once.
    let all = futures_util::future::join_all((0..20).map(|_| s.get("/denied/x"))).await;
    assert!(all.iter().all(|r| r.status() == 401));
    let extra = s.mock.stats().password_logins - logins;
    assert!(extra <= 1, "{extra} Direct Logins for one rejected token (each revokes every other token)");
    // The token still works where GoTo accepts it.
    assert_eq!(s.get("/G2A/rest/v1/sessions").await.status(), 200);
    let metrics = s.http.get(s.admin("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metric(&metrics, r#"goto_auth_proxy_token_refreshes_total{credential="g2a",outcome="rejection_passed"}"#)
            >= 1.0,
        "the metric says why no renewal happened:\n{metrics}"
    );
}

#[tokio::test]
async fn a_renewal_forced_from_outside_reschedules_the_loop() {
    // Long tokens first: the loop plans its renewal ~55 minutes out.
    let s = g2a_stack("").await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    // GoTo now issues 3-second tokens; an operator forces a renewal.
    s.mock.set_token_lifetime(Duration::from_secs(3));
    let r = s.http.post(s.admin("/refresh/g2a")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The next renewal is planned from the new token, not the old schedule.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let t: serde_json::Value = s.http.get(s.admin("/tokens")).send().await.unwrap().json().await.unwrap();
        let next = t["g2a"]["next_refresh"].as_str().map(|n| humantime::parse_rfc3339(n).unwrap());
        if next.is_some_and(|n| n < std::time::SystemTime::now() + Duration::from_secs(10)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "next_refresh still on the old schedule: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Well past the forced token's life, requests are still served: the loop renewed it.
    let logins = s.mock.stats().password_logins + s.mock.stats().refreshes;
    let until = tokio::time::Instant::now() + Duration::from_secs(7);
    while tokio::time::Instant::now() < until {
        assert_eq!(s.get("/G2A/rest/v1/sessions").await.status(), 200);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(s.mock.stats().password_logins + s.mock.stats().refreshes > logins, "the loop renewed by itself");
}

// ===== clients that frame badly =====

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused_not_dropped() {
    let s = g2a_stack("").await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    let before = api_calls(&s);
    let out = raw(
        s.proxy.proxy_addr,
        b"POST /G2W/rest/v2/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 501"), "{out}");
    assert_eq!(header(&out, "x-goto-auth-proxy-error"), Some("unsupported_transfer_coding"));
    assert_eq!(api_calls(&s), before);
    // Plain chunked still streams through.
    let out = raw(
        s.proxy.proxy_addr,
        b"POST /G2W/rest/v2/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("abcde"), "{out}");
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_400_not_an_upstream_502() {
    let s = g2a_stack("").await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    // A valid first chunk, then garbage where the next chunk size belongs; the mock
    // reads slowly enough that the proxy is still streaming when the garbage arrives.
    let mut tcp = tokio::net::TcpStream::connect(s.proxy.proxy_addr).await.unwrap();
    tcp.write_all(b"POST /G2W/rest/v2/_mock/slow/300 HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nabcde\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await; // let the head be forwarded first
    tcp.write_all(b"zz-not-a-size\r\n\r\n").await.unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut out)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(header(&out, "x-goto-auth-proxy-error"), Some("bad_request"));
    let metrics = s.http.get(s.admin("/metrics")).send().await.unwrap().text().await.unwrap();
    let against_upstream: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("goto_auth_proxy_upstream_errors_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(against_upstream.is_empty(), "nothing counted against GoTo: {against_upstream:?}");
    assert_eq!(metric(&metrics, r#"goto_auth_proxy_requests_total{method="POST",route="/",status="400"}"#), 1.0);
}

#[tokio::test]
async fn servlet_dot_segments_are_refused_not_routed() {
    let s = stack(MockOptions::default(), |mock, dir| {
        config_text(
            dir,
            "",
            &format!(
                "{}\n{}\n{}",
                password_cred("g2a", mock),
                route("/G2A/", mock, Some("g2a")),
                route("/", mock, None)
            ),
        )
    })
    .await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    let before = api_calls(&s);
    for spelling in ["/G2A/..;/admin/rest/v1/me", "/G2A/.;x/../admin", "/G2A/%2e%2e;/admin", "/G2A/..%3b/admin"] {
        let out = raw(
            s.proxy.proxy_addr,
            format!("GET {spelling} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400"), "{spelling}: {out}");
        assert_eq!(header(&out, "x-goto-auth-proxy-error"), Some("bad_request"), "{spelling}");
    }
    assert_eq!(api_calls(&s), before, "none reached an upstream with or without the G2A token");
}

#[tokio::test]
async fn invented_methods_share_one_metric_series() {
    let s = g2a_stack("").await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    for i in 0..200 {
        let out = raw(
            s.proxy.proxy_addr,
            format!("XMETHOD{i} /G2W/rest/v2/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 "), "{out}");
    }
    let metrics = s.http.get(s.admin("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("XMETHOD"), "a method name from the request became a label");
    let other: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("goto_auth_proxy_requests_total{") && l.contains(r#"method="OTHER""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(other, 200.0, "{metrics}");
}
