//! Rejections reported through handles: renewed once, on the refresher's runtime, and
//! answered with an error (never a hang, never a renewal on the caller's thread) when no
//! refresh loop runs.
#![allow(clippy::arithmetic_side_effects)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::token::store::FileStore;
use crate::token::{Credential, Token, TokenHandle};

/// A token endpoint that answers each call `delay` late with a new one-hour token
/// (`at-1`, `at-2`, …), counting the calls.
async fn slow_token_endpoint(delay: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                read_request(&mut tcp).await;
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(delay).await;
                let body = format!(r#"{{"access_token":"at-{n}","expires_in":3600}}"#);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}/token"), calls)
}

/// Reads one request (head, then `content-length` bytes of body).
async fn read_request(tcp: &mut tokio::net::TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if seen.len() >= end + 4 + length {
                return;
            }
        }
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

fn credential(dir: &Path, credential: &str) -> Arc<Credential> {
    let text = format!("[state]\npath = {:?}\n\n[credentials.c]\n{credential}\n", dir.join("state.json"));
    let config = Config::parse("t.toml", &text).unwrap();
    let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
    let store = Arc::new(FileStore::open(dir.join("state.json")).unwrap());
    Arc::new(Credential::new(config.credentials["c"].clone(), reqwest::Client::new(), store, metrics))
}

/// `n` reports of `generation` at once from a data-path-like thread: a current-thread
/// runtime with neither I/O nor timers, which could not drive a token call (reqwest
/// and the renewal spacing would panic there): the renewal must run elsewhere.
fn report_from_a_bare_runtime(handle: &TokenHandle, generation: u64, n: usize) -> Vec<Result<Arc<Token>, String>> {
    let handle = handle.clone();
    let thread = std::thread::Builder::new()
        .name("data-path".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async move {
                let reports = (0..n).map(|_| handle.rejected(generation));
                let answers = futures_util::future::join_all(reports).await;
                answers.into_iter().map(|a| a.map_err(|e| e.message)).collect()
            })
        })
        .unwrap();
    thread.join().expect("the reporting thread ran no renewal itself")
}

/// Waits until a refresh loop answers `handle`'s reports.
async fn loop_running(handle: &TokenHandle) {
    let mut renewer = handle.renewer.clone();
    renewer.wait_for(|open| *open).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_reported_through_handles_renew_once_on_the_refresh_loop() {
    let (url, calls) = slow_token_endpoint(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let cred = credential(
        dir.path(),
        &format!("grant = \"client_credentials\"\nclient_id = \"id\"\nclient_secret = \"s\"\ntoken_url = \"{url}\""),
    );
    let handle = cred.handle();
    assert_eq!(handle.name(), "c");

    let stop = CancellationToken::new();
    let refresher = tokio::spawn(cred.clone().run(stop.clone()));
    let first = handle.wait_valid(Duration::from_secs(10)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(handle.load().as_ref().is_some_and(|t| t.generation == first.generation));

    // 20 requests rejected with one token, reported while the slow renewal is under
    // way: one token call, every one of them gets the new token.
    let (h, g1) = (handle.clone(), first.generation);
    let answers = tokio::task::spawn_blocking(move || report_from_a_bare_runtime(&h, g1, 20)).await.unwrap();
    assert_eq!(answers.len(), 20);
    let renewed = answers[0].clone().unwrap();
    for a in &answers {
        let t = a.as_ref().unwrap();
        assert_eq!(t.generation, renewed.generation);
        assert_eq!(t.access_token.expose(), "at-2");
    }
    assert!(renewed.generation > first.generation);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one token call for 20 reports");
    assert_eq!(handle.load().as_ref().map(|t| t.generation), Some(renewed.generation));

    // No refresh loop: a report fails at once, and nothing renews.
    stop.cancel();
    refresher.await.unwrap();
    let e = handle.rejected(renewed.generation).await.unwrap_err();
    assert!(e.message.contains("not running") && !e.needs_login, "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A loop started again (as the supervisor does after a panic) answers the same handles.
    let stop = CancellationToken::new();
    let refresher = tokio::spawn(cred.clone().run(stop.clone()));
    loop_running(&handle).await;
    let (h, g2) = (handle.clone(), renewed.generation);
    let answers = tokio::task::spawn_blocking(move || report_from_a_bare_runtime(&h, g2, 3)).await.unwrap();
    let third = answers[0].clone().unwrap();
    assert_eq!(third.access_token.expose(), "at-3");
    assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|t| t.generation == third.generation)));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // The renewed token rejected at once too: later rejections of it pass through.
    handle.rejected_again(third.generation);
    let e = handle.rejected(third.generation).await.unwrap_err();
    assert!(e.message.contains("already renewed once"), "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    stop.cancel();
    refresher.await.unwrap();
}

#[tokio::test]
async fn a_static_credential_answers_a_rejection_by_reading_its_token_again() {
    let dir = tempfile::tempdir().unwrap();
    let cred = credential(dir.path(), "grant = \"static\"\ntoken = \"tok\"");
    cred.init().await;
    let first = cred.valid_token().unwrap();
    assert_eq!(first.bearer(), "Bearer tok");
    assert!(first.expires_at >= crate::token::later(first.obtained_at, crate::token::MAX_LIFETIME));

    let stop = CancellationToken::new();
    let refresher = tokio::spawn(cred.clone().run(stop.clone()));
    let handle = cred.handle();
    loop_running(&handle).await;
    let again = handle.rejected(first.generation).await.unwrap();
    assert_eq!(again.bearer(), "Bearer tok");
    assert!(again.generation > first.generation);
    let info = cred.info();
    assert!(info.valid && info.next_refresh.is_none() && info.last_refresh.is_some(), "{info:?}");
    assert!(!dir.path().join("state.json").exists(), "a static token is never stored");
    stop.cancel();
    refresher.await.unwrap();
}
