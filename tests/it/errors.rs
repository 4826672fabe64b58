//! Every error the proxy makes itself: SPEC's status, code header and JSON body.

use std::time::Duration;

use crate::support::*;
use goto_mock::{MockOptions, TokenFault};

async fn assert_error(r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status(), status, "expected {code}");
    assert_eq!(r.headers()["x-goto-auth-proxy-error"], code);
    let v: serde_json::Value = r.json().await.expect("JSON error body");
    assert_eq!(v["error"], code);
    v["message"].as_str().expect("message").to_string()
}

#[tokio::test]
async fn no_route_and_method_not_allowed() {
    let s = stack(MockOptions::default(), |mock, dir| {
        let routes = format!("{}methods = [\"GET\", \"head\"]\n", route("/G2A/", mock, Some("g2a")));
        config_text(dir, "", &format!("{}\n{routes}", password_cred("g2a", mock)))
    })
    .await;
    let msg = assert_error(s.get("/admin/rest/v1/me").await, 404, "no_route").await;
    assert!(msg.contains("/admin/rest/v1/me"));
    // A climb out of the prefix is normalised first: it does not match /G2A/.
    assert_error(s.get("/G2A/%2e%2e/admin/rest/v1/me").await, 404, "no_route").await;
    let r = s.http.post(s.url("/G2A/rest/v1/sessions")).body("{}").send().await.unwrap();
    let msg = assert_error(r, 405, "method_not_allowed").await;
    assert!(msg.contains("GET"), "{msg}");
    assert_eq!(s.get("/G2A/rest/v1/sessions").await.status(), 200);
}

#[tokio::test]
async fn absolute_form_and_connect_are_bad_requests() {
    let s = standard(MockOptions::default()).await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    let before = s.mock.stats();
    let out = raw(
        s.proxy.proxy_addr,
        b"GET http://evil.example/admin/rest/v1/me HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("x-goto-auth-proxy-error: bad_request"), "{out}");
    let out = raw(s.proxy.proxy_addr, b"CONNECT evil.example:443 HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("bad_request"), "{out}");
    assert_eq!(s.mock.stats(), before, "nothing reached the upstream");
}

#[tokio::test]
async fn body_too_large_known_length_and_streamed() {
    let s = stack(MockOptions::default(), |mock, dir| {
        config_text(
            dir,
            "max_request_body = \"100KiB\"",
            &format!("{}\n{}", password_cred("g2a", mock), route("/", mock, Some("g2a"))),
        )
    })
    .await;
    let r = s.http.post(s.url("/G2W/rest/v2/x")).body(vec![b'a'; 200 * 1024]).send().await.unwrap();
    assert_error(r, 413, "body_too_large").await;
    // Chunked (no Content-Length): refused while streaming.
    let mut req =
        b"POST /G2W/rest/v2/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..40 {
        req.extend_from_slice(b"2000\r\n");
        req.extend_from_slice(&[b'b'; 0x2000]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let out = raw(s.proxy.proxy_addr, &req).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{}", &out[..out.len().min(300)]);
    assert!(out.contains("body_too_large"));
    // Under the limit is fine.
    let r = s.http.post(s.url("/G2W/rest/v2/x")).body(vec![b'a'; 90 * 1024]).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn token_unavailable_when_the_token_endpoint_fails() {
    let mock_opts = MockOptions::default();
    let s = stack(mock_opts, |mock, dir| {
        mock.set_fault(Some(TokenFault::Status(500)));
        config_text(
            dir,
            "token_wait = \"300ms\"",
            &format!("{}\n{}", password_cred("g2a", mock), route("/", mock, Some("g2a"))),
        )
    })
    .await;
    let msg = assert_error(s.get("/G2A/x").await, 503, "token_unavailable").await;
    assert!(msg.contains("g2a"), "{msg}");
    let ready = s.http.get(s.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("g2a"));
    // The endpoint recovers: so does the proxy, by itself.
    s.mock.set_fault(None);
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(10)).await;
    assert_eq!(s.get("/G2A/x").await.status(), 200);
}

#[tokio::test]
async fn token_unavailable_says_login_is_needed_when_never_signed_in() {
    let s = stack(MockOptions::default(), |mock, dir| {
        config_text(
            dir,
            "token_wait = \"10s\"",
            &format!("{}\n{}", code_cred("goto", mock, None), route("/", mock, Some("goto"))),
        )
    })
    .await;
    let started = std::time::Instant::now();
    let msg = assert_error(s.get("/admin/rest/v1/me").await, 503, "token_unavailable").await;
    // The command as the user would type it, with the config file the proxy was given.
    assert!(msg.contains("goto-auth-proxy login --config test.toml --credential goto"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(5), "no point waiting token_wait when only a person can help");
    let ready = s.http.get(s.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("login"));
}

#[tokio::test]
async fn upstream_unreachable_and_timeout() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = stack(MockOptions::default(), |mock, dir| {
        config_text(
            dir,
            "request_timeout = \"300ms\"\nconnect_timeout = \"1s\"",
            &format!(
                "{}\n{}\n[[routes]]\nprefix = \"/down/\"\nupstream = \"http://{closed}\"\ncredential = \"g2a\"\n",
                password_cred("g2a", mock),
                route("/", mock, Some("g2a"))
            ),
        )
    })
    .await;
    let msg = assert_error(s.get("/down/x").await, 502, "upstream_unreachable").await;
    assert!(msg.contains(&closed.to_string()), "{msg}");
    assert_error(s.get("/G2W/_mock/slow/3000").await, 504, "upstream_timeout").await;
    let m = s.http.get(s.admin("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&m, "goto_auth_proxy_upstream_errors_total{kind=\"connect\",route=\"/down/\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "goto_auth_proxy_upstream_errors_total{kind=\"timeout\",route=\"/\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "goto_auth_proxy_requests_total{method=\"GET\",route=\"/\",status=\"504\"}"), 1.0, "{m}");
}

/// An upstream whose certificate is not trusted is a TLS failure: 502, never a
/// plaintext fallback.
#[tokio::test]
async fn untrusted_upstream_certificate_is_upstream_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let files = goto_auth_proxy::testing::TlsFiles { cert: dir.path().join("c.pem"), key: dir.path().join("k.pem") };
    std::fs::write(&files.cert, cert.cert.pem()).unwrap();
    std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
    let acceptor = goto_auth_proxy::testing::tls_acceptor(&files).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let serve = goto_auth_proxy::testing::Serve::new(stop.clone()).tls(Some(acceptor)).drain(Duration::from_secs(1));
    tokio::spawn(serve.run(listener, |_req, _peer| async {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"should not be reached")))
    }));
    let s = stack(MockOptions::default(), |mock, dir| {
        let routes = format!(
            "[[routes]]\nprefix = \"/\"\nupstream = \"https://localhost:{}\"\ncredential = \"g2a\"\n",
            tls_addr.port()
        );
        config_text(dir, "", &format!("{}\n{routes}", password_cred("g2a", mock)))
    })
    .await;
    let msg = assert_error(s.get("/G2A/x").await, 502, "upstream_unreachable").await;
    assert!(msg.contains("localhost"), "{msg}");
    stop.cancel();
}
