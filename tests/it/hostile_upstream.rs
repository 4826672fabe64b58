//! Upstreams that cannot be trusted, tried from the outside: the real binary between
//! clients and an upstream whose every byte (HTTP/1.1) or frame (HTTP/2 over TLS) the
//! test decides. Requests carry tags in their paths (`/m/echo/A-1`) and the upstream
//! answers `own:PATH`, so a client given another request's answer shows it.
//!
//! HTTP/1.1: an unsolicited answer after a real one, `Transfer-Encoding` with a stale
//! `Content-Length`, a large 401 before the token retry, a stalled or huge 403, the
//! keep-alive race, a `101` nobody asked for. HTTP/2: a connection a network silently
//! drops, GOAWAY (abrupt and graceful), REFUSED_STREAM, a stalled upload,
//! `MAX_CONCURRENT_STREAMS = 1`, and one connection for simultaneous first requests.
//! Both: `body_idle_timeout` each way, and an answer the upstream breaks off.

mod rig;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::support::{client, OneConnection};
use rig::*;

/// A sample of `name` whose labels include every one of `labels` (`reason="goaway"`).
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const RETRIES: &str = "goto_auth_proxy_upstream_retries_total";

/// `GET url`: status and body (a body that fails to arrive whole is a failure).
async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    let res = http.get(url).timeout(Duration::from_secs(10)).send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = res.status().as_u16();
    (status, res.text().await.unwrap_or_else(|e| panic!("{url}: body: {e}")))
}

// ===== HTTP/1.1 =====

/// After every real answer the upstream sends one more, unasked, once the client has its
/// answer (the connection is idle then). Neither the same client's next request nor the
/// next client on that upstream connection may ever get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsolicited_answer_on_an_idle_connection_reaches_no_client() {
    let (go_tx, go_rx) = mpsc::unbounded_channel::<()>();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let go_rx = Arc::new(tokio::sync::Mutex::new(go_rx));
    let up = H1::start(move |req, mut io| {
        let (go_rx, done_tx) = (go_rx.clone(), done_tx.clone());
        async move {
            answer(&mut io, 200, own(&req.path).as_bytes()).await;
            // A moment later (once the test says the client has its answer): another.
            go_rx.lock().await.recv().await;
            let stale = format!("stale-after:{}", req.path);
            write(&mut io, format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{stale}", stale.len()).as_bytes())
                .await;
            let _ = done_tx.send(());
            Some(io)
        }
    })
    .await;
    let rig = Rig::start(&up.url(), "request_timeout = \"3s\"", "").await;

    for round in 1..=3 {
        // Client A: two requests on one keep-alive connection.
        let a = client();
        for n in 1..=2 {
            let path = format!("/m/echo/A-{round}-{n}-own");
            let (status, body) = get(&a, &rig.url(&path)).await;
            assert_eq!((status, body.as_str()), (200, own(&path).as_str()), "round {round}: A's request {n}");
            go_tx.send(()).unwrap();
            done_rx.recv().await.unwrap();
        }
        // A leaves; client B comes on a new connection.
        drop(a);
        let b = client();
        let path = format!("/m/echo/B-{round}-own");
        let (status, body) = get(&b, &rig.url(&path)).await;
        assert_eq!((status, body.as_str()), (200, own(&path).as_str()), "round {round}: B");
        go_tx.send(()).unwrap();
        done_rx.recv().await.unwrap();
    }
}

/// `Transfer-Encoding: chunked` and `Content-Length: 3` together: the chunked body is the
/// answer (RFC 9112 §6.3), the client gets it whole, and no stale length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_transfer_encoding_loses_its_content_length_and_arrives_whole() {
    let up = H1::start(|req, mut io| async move {
        if req.path.contains("/te/") {
            let body = format!("{} and more than three bytes", own(&req.path));
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
            write(&mut io, format!("{head}{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes()).await;
        } else {
            answer(&mut io, 200, own(&req.path).as_bytes()).await;
        }
        Some(io)
    })
    .await;
    let rig = Rig::start(&up.url(), "request_timeout = \"3s\"", "").await;
    let http = client();
    let path = "/m/te/A-own";
    let res = http.get(rig.url(path)).timeout(Duration::from_secs(10)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let length = res.headers().get("content-length").map(|v| v.to_str().unwrap().to_string());
    let body = res.text().await.expect("the body arrives whole");
    let want = format!("{} and more than three bytes", own(path));
    assert_eq!(body, want);
    assert!(length.is_none() || length == Some(want.len().to_string()), "a stale Content-Length: {length:?}");
    // The same client connection goes on: nothing of that answer is left over.
    let (status, body) = get(&http, &rig.url("/m/echo/A-next-own")).await;
    assert_eq!((status, body), (200, own("/m/echo/A-next-own")));
}

/// A 401 with a large body (64 KiB): the rejected answer is dropped, the token renewed,
/// and the retry goes out at once — the client gets 200 well within `request_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_401_never_holds_up_the_token_retry() {
    let first = Arc::new(Mutex::new(None::<String>));
    let up = H1::start(move |req, mut io| {
        let first = first.clone();
        async move {
            let token = req.token();
            let rejected = {
                let mut first = first.lock().unwrap();
                first.get_or_insert_with(|| token.clone()) == &token
            };
            if rejected {
                let body = vec![b'x'; 64 * 1024];
                let head = format!(
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer error=\"invalid_token\"\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                write(&mut io, head.as_bytes()).await;
                write(&mut io, &body).await;
            } else {
                answer(&mut io, 200, own(&req.path).as_bytes()).await;
            }
            Some(io)
        }
    })
    .await;
    let rig = Rig::start(&up.url(), "request_timeout = \"6s\"", "").await;
    let calls = rig.mock.stats().token_calls;
    let started = Instant::now();
    let (status, body) = get(&rig.http, &rig.url("/m/echo/A-own")).await;
    let took = started.elapsed();
    assert_eq!((status, body.as_str()), (200, own("/m/echo/A-own").as_str()));
    assert!(took < Duration::from_secs(2), "the retry waited {took:?} (request_timeout is 6s)");
    assert!(rig.mock.stats().token_calls > calls, "the token was renewed");
}

/// A 403 whose body stalls after a few bytes: the client gets the 403 itself within
/// `request_timeout` (the inspection gives up), not a 502 much later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_whose_body_stalls_passes_through_within_request_timeout() {
    let up = H1::start(|_req, mut io| async move {
        write(
            &mut io,
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"int_err_code\":",
        )
        .await;
        hold(io).await
    })
    .await;
    let rig = Rig::start(&up.url(), "request_timeout = \"2s\"", "").await;
    let started = Instant::now();
    let res = rig.http.get(rig.url("/m/stall/A-own")).timeout(Duration::from_secs(6)).send().await;
    let took = started.elapsed();
    let res = res.unwrap_or_else(|e| panic!("no answer after {took:?}: {e}"));
    assert_eq!(res.status(), 403, "after {took:?}: {:?}", res.headers());
    assert!(took < Duration::from_millis(3500), "the 403 came after {took:?} (request_timeout is 2s)");
}

/// A 403 larger than the proxy reads to look for `InvalidToken` passes through as the
/// 403 it is, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_over_one_mebibyte_passes_through_whole() {
    let size = 1024 * 1024 + 512 * 1024;
    let up = H1::start(move |_req, mut io| async move {
        let mut body = b"{\"message\":\"".to_vec();
        body.resize(size - 2, b'n');
        body.extend_from_slice(b"\"}");
        answer(&mut io, 403, &body).await;
        Some(io)
    })
    .await;
    let rig = Rig::start(&up.url(), "request_timeout = \"5s\"", "").await;
    let res = rig.http.get(rig.url("/m/big403/A-own")).timeout(Duration::from_secs(15)).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let body = res.bytes().await.expect("the whole body");
    assert_eq!(body.len(), size);
    assert!(body.ends_with(b"nn\"}"));
}

/// The upstream closes a kept-alive connection just as a request arrives (it reads the
/// second request on every connection, then closes without answering): every GET is
/// sent again on a new connection and answered, as its own; the resend is counted and
/// logged as `retried=connection`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_alive_race_resends_idempotent_requests() {
    let seen = Arc::new(Mutex::new(Vec::<Req>::new()));
    let log = seen.clone();
    let up = H1::start(move |req, mut io| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(req.clone());
            if req.nth == 2 {
                return None; // closed as the request arrived: no byte of an answer
            }
            answer(&mut io, 200, own(&req.path).as_bytes()).await;
            Some(io)
        }
    })
    .await;
    let rig = Rig::start(&up.url(), "request_timeout = \"3s\"", "").await;
    // One client connection, so each request takes the upstream connection the one
    // before it left kept alive.
    let mut conn = OneConnection::open(&rig.url("/")).await;
    let mut failed = Vec::new();
    for i in 0..10 {
        let path = format!("/m/echo/race-{i}-own");
        let (status, body) = conn.send("GET", &path, "").await;
        if (status, body.as_str()) != (200, own(&path).as_str()) {
            failed.push(format!("{path}: {status} {body}"));
        }
    }
    let hit = seen.lock().unwrap().iter().filter(|r| r.nth == 2).count();
    assert!(hit >= 4, "the race happened only {hit} times: {:?}", seen.lock().unwrap());
    assert!(failed.is_empty(), "{} of 10 failed: {failed:#?}", failed.len());

    let m = rig.metrics().await;
    let counted = sample(&m, RETRIES, &["reason=\"keepalive_race\"", "route=\"/m/\""]);
    assert_eq!(counted, hit as f64, "{RETRIES}{{reason=\"keepalive_race\"}}:\n{m}");
    let line = rig.access_line("/m/echo/race-1-own", Duration::from_secs(5)).await;
    assert_eq!(line["retried"], "connection", "{line}");
    assert_eq!(line["status"], 200, "{line}");
}

/// A POST is never sent twice: caught by the keep-alive race it is answered 502, and the
/// upstream saw it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_alive_race_never_resends_a_post() {
    let seen = Arc::new(Mutex::new(Vec::<Req>::new()));
    let log = seen.clone();
    let up = H1::start(move |req, mut io| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(req.clone());
            if req.nth == 2 {
                return None;
            }
            answer(&mut io, 200, own(&req.path).as_bytes()).await;
            Some(io)
        }
    })
    .await;
    let rig = Rig::start(&up.url(), "request_timeout = \"3s\"", "").await;
    // Both requests on one client connection, so the POST takes its kept-alive upstream one.
    let mut conn = OneConnection::open(&rig.url("/")).await;
    assert_eq!(conn.send("GET", "/m/echo/warm-own", "").await.0, 200);
    let (status, text) = conn.send("POST", "/m/echo/post-own", "{\"create\":\"once\"}").await;
    let posts: Vec<Req> = seen.lock().unwrap().iter().filter(|r| r.method == "POST").cloned().collect();
    assert_eq!(posts.len(), 1, "the POST reached the upstream {} times: {posts:?}", posts.len());
    assert_eq!(posts[0].nth, 2, "the POST went out on the kept-alive connection");
    assert_eq!(status, 502, "{text}");
}

/// `101 Switching Protocols` to a plain GET (no upgrade asked for) is a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_nobody_asked_for_is_a_502() {
    let up = H1::start(|_req, mut io| async move {
        write(&mut io, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: hostile\r\n\r\nraw bytes")
            .await;
        hold(io).await
    })
    .await;
    let rig = Rig::start(&up.url(), "request_timeout = \"3s\"", "").await;
    let res = rig.http.get(rig.url("/m/upgrade/A-own")).timeout(Duration::from_secs(10)).send().await.unwrap();
    assert_eq!(res.status(), 502, "{:?}", res.headers());
}

// ===== body_idle_timeout, and answers broken off =====

/// An answer body that stops moving after its head is broken off after
/// `body_idle_timeout`, and the access line records an `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_body_that_stalls_is_broken_off_and_logged() {
    let up = H1::start(|_req, mut io| async move {
        write(&mut io, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
        hold(io).await
    })
    .await;
    let rig = Rig::start(&up.url(), "request_timeout = \"10s\"\nbody_idle_timeout = \"1s\"", "").await;
    let path = "/m/stall-body/A-own";
    let res = rig.http.get(rig.url(path)).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(8), res.bytes()).await;
    let took = started.elapsed();
    assert!(body.is_ok(), "the stalled body was still open after {took:?} (body_idle_timeout is 1s)");
    assert!(body.unwrap().is_err(), "a body broken off is not a clean end");
    assert!(took < Duration::from_secs(4), "broken off after {took:?}");
    let line = rig.access_line(path, Duration::from_secs(5)).await;
    assert!(line.get("error").is_some_and(|e| !e.is_null()), "no error in {line}");
}

/// A request body the client stops sending is broken off after `body_idle_timeout`
/// (a small one the proxy holds for a retry, and a large one it streams), logged with
/// an `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_broken_off_and_logged() {
    let up = H1::start(|req, mut io| async move {
        answer(&mut io, 200, own(&req.path).as_bytes()).await;
        Some(io)
    })
    .await;
    let rig = Rig::start(&up.url(), "request_timeout = \"10s\"\nbody_idle_timeout = \"1s\"", "").await;
    let addr = rig.proc.proxy_addr;
    let mut tasks = Vec::new();
    for (name, length, sent) in [("small", 100usize, 10usize), ("large", 400_000, 200_000)] {
        tasks.push(tokio::spawn(async move {
            let path = format!("/m/upload-{name}/A-own");
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {length}\r\n\r\n");
            tcp.write_all(head.as_bytes()).await.unwrap();
            tcp.write_all(&vec![b'u'; sent]).await.unwrap();
            // Then nothing more: the proxy must answer or close on its own.
            let started = Instant::now();
            let mut out = vec![0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(8), tcp.read(&mut out)).await;
            (path, started.elapsed(), read.is_ok())
        }));
    }
    for t in tasks {
        let (path, took, ended) = t.await.unwrap();
        assert!(ended && took < Duration::from_secs(4), "{path}: still open after {took:?} (body_idle_timeout 1s)");
        let line = rig.access_line(&path, Duration::from_secs(5)).await;
        assert!(line.get("error").is_some_and(|e| !e.is_null()), "no error in {line}");
    }
}

/// An answer the upstream breaks off mid-body (closes after 10 of 100 bytes) reaches
/// the client as broken, and its access line has an `error`: never a clean 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_upstream_breaks_off_is_logged_with_an_error() {
    let up = H1::start(|_req, mut io| async move {
        write(&mut io, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
        None
    })
    .await;
    let rig = Rig::start(&up.url(), "request_timeout = \"3s\"", "").await;
    let path = "/m/broken/A-own";
    let res = rig.http.get(rig.url(path)).timeout(Duration::from_secs(10)).send().await.unwrap();
    assert!(res.bytes().await.is_err(), "the client sees the answer broken off");
    let line = rig.access_line(path, Duration::from_secs(5)).await;
    assert!(line.get("error").is_some_and(|e| !e.is_null()), "logged as a clean answer: {line}");
}

// ===== HTTP/2 over TLS =====

/// `[proxy]` settings for the HTTP/2 tests.
const H2_PROXY: &str = "request_timeout = \"3s\"\nconnect_timeout = \"2s\"";

async fn h2_rig(pki: &Pki, port: u16, proxy_extra: &str) -> Rig {
    Rig::start(&format!("https://127.0.0.1:{port}"), proxy_extra, &pki.tls_toml()).await
}

/// A network that silently drops the shared connection (a relay stops forwarding both
/// ways, closing nothing): requests succeed again, on a new connection, within 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dropped_http2_connection_is_replaced_within_20_seconds() {
    let pki = Pki::new();
    let up = H2::start(&pki, |_| {}).await;
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), up.addr).await.unwrap();
    let accepted = up.echo_all();
    let rig = h2_rig(&pki, relay.addr.port(), H2_PROXY).await;
    assert_eq!(get(&rig.http, &rig.url("/m/h2/warm-own")).await, (200, own("/m/h2/warm-own")));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    relay.freeze();
    let frozen = Instant::now();
    let mut tries = Vec::new();
    loop {
        let path = format!("/m/h2/after-{}-own", tries.len());
        let res = rig.http.get(rig.url(&path)).timeout(Duration::from_secs(5)).send().await;
        let status = match res {
            Ok(r) => {
                let s = r.status().as_u16();
                if s == 200 && r.text().await.ok() == Some(own(&path)) {
                    break;
                }
                s.to_string()
            }
            Err(e) => e.to_string(),
        };
        tries.push(format!("{:?}: {status}", frozen.elapsed()));
        assert!(frozen.elapsed() < Duration::from_secs(20), "no success within 20 s of the drop: {tries:#?}");
        // A client trying again a little later (pacing, not synchronisation).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(relay.accepted() >= 2, "a new connection was opened");
}

/// An abrupt GOAWAY whose last stream id is below streams in flight (three GETs and a
/// POST the upstream never processed): every one is sent again on a new connection and
/// answered as its own, and logged `retried=connection`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_above_an_abrupt_goaway_are_resent_and_answered() {
    let pki = Pki::new();
    let mut up = H2::start(&pki, |_| {}).await;
    let rig = Arc::new(h2_rig(&pki, up.addr.port(), H2_PROXY).await);
    let send = |method: reqwest::Method, path: &str| {
        let (rig, path) = (rig.clone(), path.to_string());
        tokio::spawn(async move {
            let res = rig
                .http
                .request(method, rig.url(&path))
                .body("payload")
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .unwrap();
            (path, res.status().as_u16(), res.text().await.unwrap_or_default())
        })
    };
    let mut calls = vec![send(reqwest::Method::GET, "/m/h2/first-own")];
    let first = up.next(Duration::from_secs(5)).await;
    for i in 0..3 {
        calls.push(send(reqwest::Method::GET, &format!("/m/h2/get-{i}-own")));
    }
    calls.push(send(reqwest::Method::POST, "/m/h2/post-own"));
    // All four reached the upstream on the same connection, and stay unanswered.
    let mut held = Vec::new();
    for _ in 0..4 {
        let r = up.next(Duration::from_secs(5)).await;
        assert_eq!(r.conn, first.conn, "{} came on another connection", r.path());
        held.push(r);
    }
    // "Only stream `first` was processed": then `first` is answered, the rest never.
    first.ctl.goaway(first.respond.stream_id().as_u32());
    first.echo();
    let _held = held;
    let _accepted = up.echo_from(1);
    for call in calls {
        let (path, status, body) = call.await.unwrap();
        assert_eq!((status, body.as_str()), (200, own(&path).as_str()), "{path}");
    }
    for path in ["/m/h2/get-0-own", "/m/h2/get-1-own", "/m/h2/get-2-own", "/m/h2/post-own"] {
        let line = rig.access_line(path, Duration::from_secs(5)).await;
        assert_eq!(line["retried"], "connection", "{line}");
    }
    let m = rig.metrics().await;
    assert_eq!(sample(&m, RETRIES, &["reason=\"goaway\""]), 4.0, "{m}");
}

/// A graceful GOAWAY (the upstream draining before a restart: NO_ERROR, the last stream
/// id that of a slow request still being answered, the connection left open for it):
/// the next request goes out on a new connection and is answered, not 502; the slow
/// one finishes on the old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_graceful_goaway_the_next_request_is_answered() {
    let pki = Pki::new();
    let mut up = H2::start(&pki, |_| {}).await;
    let rig = Arc::new(h2_rig(&pki, up.addr.port(), H2_PROXY).await);
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let r = rig.clone();
    let slow = tokio::spawn(async move {
        let res = r.http.get(r.url("/m/h2/slow-A-own")).timeout(Duration::from_secs(10)).send().await.unwrap();
        let _ = head_tx.send(());
        (res.status().as_u16(), res.text().await.unwrap_or_default())
    });
    let mut a = up.next(Duration::from_secs(5)).await;
    let ctl = a.ctl.clone();
    ctl.goaway(a.respond.stream_id().as_u32());
    // A's head goes out after the GOAWAY: once the client has it, so has the proxy both.
    let mut body = a.respond.send_response(http::Response::builder().status(200).body(()).unwrap(), false).unwrap();
    head_rx.await.unwrap();
    let accepted = up.echo_from(1);
    assert_eq!(get(&rig.http, &rig.url("/m/h2/next-own")).await, (200, own("/m/h2/next-own")));
    body.send_data(Bytes::from(own("/m/h2/slow-A-own")), true).unwrap();
    assert_eq!(slow.await.unwrap(), (200, own("/m/h2/slow-A-own")));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(a);
}

/// A stream the upstream refused (`REFUSED_STREAM`) is sent again, GET and POST alike
/// (a refused stream was never processed), and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_resent() {
    let pki = Pki::new();
    let mut up = H2::start(&pki, |_| {}).await;
    let rig = Arc::new(h2_rig(&pki, up.addr.port(), H2_PROXY).await);
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        let path = format!("/m/h2/refused-{method}-own");
        let (r, p, m) = (rig.clone(), path.clone(), method.clone());
        let call = tokio::spawn(async move {
            let res = r.http.request(m, r.url(&p)).body("payload").timeout(Duration::from_secs(10)).send().await;
            let res = res.unwrap();
            (res.status().as_u16(), res.text().await.unwrap_or_default())
        });
        let mut refused = up.next(Duration::from_secs(5)).await;
        assert_eq!(refused.path(), path);
        refused.respond.send_reset(h2::Reason::REFUSED_STREAM);
        let again = tokio::time::timeout(Duration::from_secs(5), up.requests.recv()).await;
        let Ok(Some(again)) = again else {
            panic!("{method} was not sent again; the client got {:?}", call.await.unwrap())
        };
        assert_eq!(again.path(), path);
        let mut again = again;
        read_body(again.req.body_mut()).await;
        again.echo();
        assert_eq!(call.await.unwrap(), (200, own(&path)), "{method}");
    }
    let m = rig.metrics().await;
    assert_eq!(sample(&m, RETRIES, &["reason=\"refused_stream\""]), 2.0, "{m}");
}

/// An upload the upstream never grants window for (its stream takes the whole
/// connection window) must not hold up another client's request with a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_does_not_starve_other_requests_with_bodies() {
    let pki = Pki::new();
    let mut up = H2::start(&pki, |_| {}).await;
    let rig = Arc::new(h2_rig(&pki, up.addr.port(), "request_timeout = \"5s\"\nconnect_timeout = \"2s\"").await);
    let r = rig.clone();
    let _upload = tokio::spawn(async move {
        // Large enough to be streamed, not held for a retry.
        let body = vec![b'u'; 1024 * 1024];
        r.http.post(r.url("/m/h2/upload-own")).body(body).timeout(Duration::from_secs(30)).send().await
    });
    let mut stalled = up.next(Duration::from_secs(5)).await;
    assert_eq!(stalled.path(), "/m/h2/upload-own");
    // Read what fits in the connection window, and never give any of it back.
    let mut got = 0usize;
    while got < 65_535 {
        match tokio::time::timeout(Duration::from_secs(5), stalled.req.body_mut().data()).await {
            Ok(Some(Ok(chunk))) => got += chunk.len(),
            other => panic!("upload stopped at {got} bytes: {other:?}"),
        }
    }
    let _stalled = stalled;
    let accepted = up.echo_from(0);
    let started = Instant::now();
    let res = rig
        .http
        .post(rig.url("/m/h2/small-B-own"))
        .body("{\"small\":true}")
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(res.status(), 200, "after {took:?}: {}", res.text().await.unwrap_or_default());
    assert_eq!(res.text().await.unwrap(), own("/m/h2/small-B-own"));
    assert!(took < Duration::from_secs(3), "the small POST waited {took:?} behind the stalled upload");
    assert!(accepted.load(Ordering::SeqCst) >= 2);
}

/// `MAX_CONCURRENT_STREAMS = 1` and one slow request on it: another client's request
/// is not queued behind it; a second connection opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_connection_opens_another_instead_of_queueing() {
    let pki = Pki::new();
    let mut up = H2::start(&pki, |b| {
        b.max_concurrent_streams(1);
    })
    .await;
    let rig = Arc::new(h2_rig(&pki, up.addr.port(), "request_timeout = \"5s\"\nconnect_timeout = \"2s\"").await);
    let r = rig.clone();
    let slow = tokio::spawn(async move { get(&r.http, &r.url("/m/h2/slow-A-own")).await });
    let held = up.next(Duration::from_secs(5)).await;
    let accepted = up.accepted.clone();
    let r = rig.clone();
    let quick = tokio::spawn(async move {
        let started = Instant::now();
        let got = get(&r.http, &r.url("/m/h2/quick-B-own")).await;
        (got, started.elapsed())
    });
    let b = tokio::time::timeout(Duration::from_secs(5), up.requests.recv()).await;
    let Ok(Some(b)) = b else {
        panic!("B never reached the upstream while A held the only stream; B got {:?}", quick.await.unwrap())
    };
    assert_eq!(b.path(), "/m/h2/quick-B-own");
    assert_ne!(b.conn, held.conn, "B came on the full connection");
    b.echo();
    let (got, took) = quick.await.unwrap();
    assert_eq!(got, (200, own("/m/h2/quick-B-own")));
    assert!(took < Duration::from_secs(3), "B waited {took:?}");
    held.echo();
    assert_eq!(slow.await.unwrap(), (200, own("/m/h2/slow-A-own")));
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// Four simultaneous first requests open one connection, not four (connections to an
/// upstream are opened one at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_first_requests_open_one_connection() {
    let pki = Pki::new();
    let up = H2::start(&pki, |_| {}).await;
    let port = up.addr.port();
    let accepted = up.echo_all();
    let rig = Arc::new(h2_rig(&pki, port, H2_PROXY).await);
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let r = rig.clone();
            tokio::spawn(async move {
                let path = format!("/m/h2/first-{i}-own");
                let got = get(&client(), &r.url(&path)).await;
                (path, got)
            })
        })
        .collect();
    for call in calls {
        let (path, got) = call.await.unwrap();
        assert_eq!(got, (200, own(&path)));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "TCP connections accepted by the upstream");
}

/// `body_idle_timeout` on HTTP/2: an answer body that stalls after its head is broken
/// off and logged with an `error`, and the shared connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_answer_body_that_stalls_is_broken_off_and_logged() {
    let pki = Pki::new();
    let mut up = H2::start(&pki, |_| {}).await;
    let rig = Arc::new(h2_rig(&pki, up.addr.port(), "request_timeout = \"10s\"\nbody_idle_timeout = \"1s\"").await);
    let path = "/m/h2/stall-body-own";
    let r = rig.clone();
    let call = tokio::spawn(async move {
        let res = r.http.get(r.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let started = Instant::now();
        let body = tokio::time::timeout(Duration::from_secs(8), res.bytes()).await;
        (started.elapsed(), body.map(|b| b.is_err()))
    });
    let mut stalled = up.next(Duration::from_secs(5)).await;
    let mut send =
        stalled.respond.send_response(http::Response::builder().status(200).body(()).unwrap(), false).unwrap();
    send.send_data(Bytes::from_static(b"0123456789"), false).unwrap();
    let _keep = (stalled, send);
    let (took, broken) = call.await.unwrap();
    assert_eq!(broken, Ok(true), "after {took:?}: the stalled body was not broken off (body_idle_timeout 1s)");
    assert!(took < Duration::from_secs(4), "broken off after {took:?}");
    let line = rig.access_line(path, Duration::from_secs(5)).await;
    assert!(line.get("error").is_some_and(|e| !e.is_null()), "no error in {line}");
    let _accepted = up.echo_from(0);
    assert_eq!(get(&rig.http, &rig.url("/m/h2/after-own")).await, (200, own("/m/h2/after-own")));
}
