//! Upstream connections that misbehave: raw HTTP/1.1 upstreams written byte by byte
//! (unsolicited answers, bad framing, connections closed as a request arrives) and
//! HTTP/2 upstreams over TLS that refuse streams, go away or stop acknowledging. Each
//! test asserts what a client of the proxy would notice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

// ===== helpers =====

/// A proxy whose one route `/` (no credential) goes to `upstream`, `[proxy]` lines extra.
async fn proxy_to(upstream: &str, proxy_extra: &str) -> (goto_auth_proxy::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let text =
        config_text(dir.path(), proxy_extra, &format!("[[routes]]\nprefix = \"/\"\nupstream = \"{upstream}\"\n"));
    (start_proxy(&text).await, dir)
}

/// A raw HTTP/1.1 upstream: `serve(n, tcp)` runs for the n-th connection (from 0).
async fn raw_upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            // Each write leaves at once (no Nagle delay behind an unacknowledged one).
            tcp.set_nodelay(true).unwrap();
            let n = counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(n, tcp));
        }
    });
    (addr, count)
}

/// Reads one request head (and no body) from `tcp`, leaving extra bytes in `seen`; the
/// request line, or `None` at the end of the connection.
async fn read_head(tcp: &mut TcpStream, seen: &mut Vec<u8>) -> Option<String> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = seen.drain(..end + 4).collect();
            let head = String::from_utf8_lossy(&head).into_owned();
            return Some(head.lines().next().unwrap_or_default().to_string());
        }
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// The path of a request line (`GET /x HTTP/1.1`).
fn path_of(line: &str) -> &str {
    line.split(' ').nth(1).unwrap_or_default()
}

fn ok(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// The proxy-made error code of an answer, or "".
fn error_code(r: &reqwest::Response) -> String {
    r.headers().get("x-goto-auth-proxy-error").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

// ===== HTTP/1.1: framing never leaks between clients =====

/// An upstream that follows its very first answer with an unsolicited one a moment
/// later. The request written while that was on its way gets it (nothing can tell it
/// from an answer); but the real answer that follows is bytes on a connection with no
/// request in flight: the connection closes, and no later request, of the same client or
/// the next, gets an answer meant for another.
#[tokio::test]
async fn an_unsolicited_answer_never_shifts_later_answers() {
    let once = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (up, _) = raw_upstream(move |_, mut tcp| {
        let once = once.clone();
        async move {
            let mut seen = Vec::new();
            while let Some(line) = read_head(&mut tcp, &mut seen).await {
                if tcp.write_all(&ok(&format!("answer to {}", path_of(&line)))).await.is_err() {
                    return;
                }
                if once.swap(false, Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if tcp.write_all(&ok("unsolicited")).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let (p, _dir) = proxy_to(&format!("http://{up}"), "").await;
    let mut wrong = Vec::new();
    for c in 0..3 {
        let http = client();
        for r in 0..4 {
            let path = format!("/c{c}r{r}");
            let body = http.get(format!("http://{}{path}", p.proxy_addr)).send().await.unwrap().text().await.unwrap();
            // c0r1 races the unsolicited answer on the wire.
            if body != format!("answer to {path}") && !(path == "/c0r1" && body == "unsolicited") {
                wrong.push(format!("{path} got {body:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// `Transfer-Encoding: chunked` beside a stale `Content-Length: 3`: the client gets the
/// chunked body whole, and the next request on its connection its own answer.
#[tokio::test]
async fn a_chunked_answer_with_a_stale_content_length_arrives_whole() {
    let (up, _) = raw_upstream(|_, mut tcp| async move {
        let mut seen = Vec::new();
        while let Some(line) = read_head(&mut tcp, &mut seen).await {
            let body = format!("answer to {}", path_of(&line));
            let answer = format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            );
            if tcp.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let (p, _dir) = proxy_to(&format!("http://{up}"), "").await;
    let http = client();
    for path in ["/te", "/next"] {
        let r = http.get(format!("http://{}{path}", p.proxy_addr)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), format!("answer to {path}"));
    }
}

/// A `101` to a plain GET is the proxy's `502`, not passed on.
#[tokio::test]
async fn a_101_to_a_plain_get_is_a_502() {
    let (up, _) = raw_upstream(|_, mut tcp| async move {
        let mut seen = Vec::new();
        if read_head(&mut tcp, &mut seen).await.is_some() {
            let _ =
                tcp.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n").await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await;
    let (p, _dir) = proxy_to(&format!("http://{up}"), "request_timeout = \"3s\"").await;
    let r = client().get(format!("http://{}/up", p.proxy_addr)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(&r), "upstream_unreachable");
}

/// The keep-alive race: the upstream closes its kept-alive connection as the second
/// request arrives. The GET is sent again on a new connection and answered, counted.
#[tokio::test]
async fn a_get_caught_by_the_keep_alive_race_is_resent_once() {
    let (up, conns) = raw_upstream(|_, mut tcp| async move {
        let mut seen = Vec::new();
        let mut n = 0;
        while let Some(line) = read_head(&mut tcp, &mut seen).await {
            n += 1;
            if n == 2 {
                return; // closed as the request arrived: no byte of an answer
            }
            if tcp.write_all(&ok(&format!("answer to {}", path_of(&line)))).await.is_err() {
                return;
            }
        }
    })
    .await;
    let (p, _dir) = proxy_to(&format!("http://{up}"), "request_timeout = \"3s\"").await;
    let mut conn = OneConnection::open(&format!("http://{}/", p.proxy_addr)).await;
    for i in 0..4 {
        let path = format!("/race-{i}");
        let (status, body) = conn.send("GET", &path, "").await;
        assert_eq!((status, body), (200, format!("answer to {path}")));
    }
    assert!(conns.load(Ordering::SeqCst) >= 2);
    let m = metrics_of(&p).await;
    assert!(metric(&m, r#"goto_auth_proxy_upstream_retries_total{reason="keepalive_race",route="/"}"#) >= 1.0, "{m}");
}

/// A POST caught by the keep-alive race is never sent twice: `502`, and the upstream
/// saw it once, on the kept-alive connection.
#[tokio::test]
async fn a_post_caught_by_the_keep_alive_race_is_not_resent() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(usize, usize, String)>::new()));
    let log = seen.clone();
    let (up, _) = raw_upstream(move |conn, mut tcp| {
        let log = log.clone();
        async move {
            let mut buf = Vec::new();
            let mut n = 0;
            while let Some(line) = read_head(&mut tcp, &mut buf).await {
                n += 1;
                log.lock().unwrap().push((conn, n, line.clone()));
                if n == 2 {
                    return;
                }
                if tcp.write_all(&ok(&format!("answer to {}", path_of(&line)))).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let (p, _dir) = proxy_to(&format!("http://{up}"), "request_timeout = \"3s\"").await;
    // Both requests on one client connection, so the POST takes its kept-alive upstream one.
    let mut conn = OneConnection::open(&format!("http://{}/", p.proxy_addr)).await;
    assert_eq!(conn.send("GET", "/warm", "").await.1, "answer to /warm");
    let (status, _) = conn.send("POST", "/post", "{\"once\":1}").await;
    let posts: Vec<_> = seen.lock().unwrap().iter().filter(|(_, _, l)| l.starts_with("POST")).cloned().collect();
    assert_eq!(posts.len(), 1, "{:?}", seen.lock().unwrap());
    assert_eq!(posts[0].1, 2, "on the kept-alive connection: {:?}", seen.lock().unwrap());
    assert_eq!(status, 502);
}

// ===== rejected answers, stalled bodies =====

/// A proxy whose route `/` (credential `g2a`, Direct Login at a mock GoTo) goes to
/// `upstream`; ready (a token is there) when it returns.
async fn credential_stack(upstream: SocketAddr, proxy_extra: &str) -> Stack {
    let extra = proxy_extra.to_string();
    let s = stack(goto_mock::MockOptions::default(), move |mock, dir| {
        config_text(
            dir,
            &extra,
            &format!(
                "{}\n[[routes]]\nprefix = \"/\"\nupstream = \"http://{upstream}\"\ncredential = \"g2a\"\n",
                password_cred("g2a", mock)
            ),
        )
    })
    .await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(5)).await;
    s
}

/// The first request gets a `401` with a 256 KiB body (more than any buffer holds); the
/// retry with a renewed token must not wait behind that unread body.
#[tokio::test]
async fn a_large_401_is_dropped_before_the_token_retry() {
    let (up, _) = raw_upstream(|_, mut tcp| async move {
        static FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
        let mut seen = Vec::new();
        while let Some(line) = read_head(&mut tcp, &mut seen).await {
            if FIRST.swap(false, Ordering::SeqCst) {
                let body = vec![b'x'; 256 * 1024];
                let head = format!("HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(&body).await;
                continue;
            }
            if tcp.write_all(&ok(&format!("answer to {}", path_of(&line)))).await.is_err() {
                return;
            }
        }
    })
    .await;
    let s = credential_stack(up, "request_timeout = \"5s\"").await;
    let started = std::time::Instant::now();
    let r = s.get("/x").await;
    assert_eq!(r.status(), 200, "{}", error_code(&r));
    assert_eq!(r.text().await.unwrap(), "answer to /x");
    assert!(started.elapsed() < Duration::from_secs(2), "the retry waited {:?}", started.elapsed());
}

/// A `403` whose body stalls is passed on as the `403` it is within `request_timeout`,
/// not held until the upstream gives up and then answered `502`.
#[tokio::test]
async fn a_403_whose_body_stalls_passes_through_in_time() {
    let (up, _) = raw_upstream(|_, mut tcp| async move {
        let mut seen = Vec::new();
        if read_head(&mut tcp, &mut seen).await.is_some() {
            let _ = tcp.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\n{\"int_err_code\":").await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    })
    .await;
    let s = credential_stack(up, "request_timeout = \"1s\"").await;
    let started = std::time::Instant::now();
    let r = s.get("/forbidden").await;
    assert_eq!(r.status(), 403);
    assert!(started.elapsed() < Duration::from_secs(3), "the 403 came after {:?}", started.elapsed());
}

/// An answer body that stalls after its head is broken off after `body_idle_timeout`
/// (the client sees it broken, not a hang) and counted.
#[tokio::test]
async fn an_answer_body_that_stalls_is_broken_off() {
    let (up, _) = raw_upstream(|_, mut tcp| async move {
        let mut seen = Vec::new();
        if read_head(&mut tcp, &mut seen).await.is_some() {
            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    })
    .await;
    let (p, _dir) = proxy_to(&format!("http://{up}"), "body_idle_timeout = \"500ms\"").await;
    let r = client().get(format!("http://{}/stall", p.proxy_addr)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let started = std::time::Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(5), r.bytes()).await.expect("not broken off");
    assert!(body.is_err(), "a broken-off body is no clean end");
    assert!(started.elapsed() < Duration::from_secs(2), "after {:?}", started.elapsed());
    let m = metrics_of(&p).await;
    assert_eq!(metric(&m, r#"goto_auth_proxy_upstream_errors_total{kind="body_idle",route="/"}"#), 1.0, "{m}");
}
