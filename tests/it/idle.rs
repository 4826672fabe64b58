//! The accept loop's idle watchdog (`server::Serve`): a client connection that starts no
//! request for an idle period is closed, one with a request in flight or a body still
//! streaming is not. A short period here; the product's is `HEADER_READ_TIMEOUT`. And
//! its graceful drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IDLE: Duration = Duration::from_millis(200);

type Chunks = StreamBody<std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;

/// A running `serve` with its idle period `IDLE`.
async fn start() -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let s = start_with(IDLE, Duration::from_secs(1)).await;
    (s.addr, s.stop)
}

struct Started {
    addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    /// Ends when `serve` returns.
    served: tokio::task::JoinHandle<()>,
    /// One message each time a `/slow` request reaches the handler.
    slow_started: tokio::sync::mpsc::UnboundedReceiver<()>,
}

/// `/slow` answers after `3 × IDLE`; `/stream` sends four chunks over `3 × IDLE`;
/// anything else answers at once.
async fn start_with(idle: Duration, drain: Duration) -> Started {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let (slow_tx, slow_started) = tokio::sync::mpsc::unbounded_channel();
    let serve = goto_auth_proxy::testing::Serve::new(stop.clone()).drain(drain).idle(idle);
    let served = tokio::spawn(serve.run(listener, move |req: http::Request<hyper::body::Incoming>, _conn| {
        let slow_tx = slow_tx.clone();
        async move {
            let chunks: Chunks = match req.uri().path() {
                "/slow" => {
                    let _ = slow_tx.send(());
                    tokio::time::sleep(IDLE * 3).await;
                    StreamBody::new(Box::pin(futures_util::stream::iter([Ok(Frame::data(Bytes::from("slow")))])))
                }
                "/stream" => StreamBody::new(Box::pin(futures_util::stream::unfold(0u8, |i| async move {
                    if i == 4 {
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(IDLE).await;
                    }
                    Some((Ok(Frame::data(Bytes::from(format!("chunk{i};")))), i + 1))
                }))),
                _ => StreamBody::new(Box::pin(futures_util::stream::iter([Ok(Frame::data(Bytes::from("ok")))]))),
            };
            http::Response::new(chunks)
        }
    }));
    Started { addr, stop, served, slow_started }
}

/// Reads until the server closes the connection; how long that took.
async fn wait_for_close(tcp: &mut tokio::net::TcpStream) -> Duration {
    let started = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink))
        .await
        .expect("the server closed the connection")
        .expect("read");
    started.elapsed()
}

#[tokio::test]
async fn a_request_head_that_never_completes_is_cut_off() {
    let (addr, _stop) = start().await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n").await.unwrap(); // the head never ends
    let waited = wait_for_close(&mut tcp).await;
    assert!(waited >= IDLE, "closed after {waited:?}, before one idle period");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_answer() {
    let (addr, _stop) = start().await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 12];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    wait_for_close(&mut tcp).await;
}

#[tokio::test]
async fn a_slow_answer_and_a_long_download_are_not_idleness() {
    let (addr, _stop) = start().await;
    // One keep-alive connection for both requests (a client pool with one idle slot).
    let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    let slow = http.get(format!("http://{addr}/slow")).send().await.unwrap();
    assert_eq!(slow.text().await.unwrap(), "slow");
    let streamed = http.get(format!("http://{addr}/stream")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(streamed, "chunk0;chunk1;chunk2;chunk3;");
}

#[tokio::test]
async fn the_data_path_answers_many_requests_on_one_connection_past_the_period() {
    // Requests keep coming: progress, so the connection stays open across periods.
    let (addr, _stop) = start().await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let until = Instant::now() + IDLE * 4;
    let mut answered = 0;
    while Instant::now() < until {
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {answered} answers although requests kept coming");
        answered += 1;
        // A client that pauses between requests, for less than a period.
        tokio::time::sleep(IDLE / 4).await;
    }
    assert!(answered > 4);
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once_and_lets_requests_in_flight_finish() {
    // Periods far longer than the test: only the shutdown can close anything.
    let mut s = start_with(Duration::from_secs(60), Duration::from_secs(60)).await;
    let mut idle = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let slow = tokio::spawn(async move { reqwest::get(format!("http://{}/slow", s.addr)).await?.text().await });
    s.slow_started.recv().await.expect("the slow request reached the handler");

    s.stop.cancel();
    wait_for_close(&mut idle).await;
    assert_eq!(slow.await.unwrap().expect("the request in flight was answered"), "slow");
    // Every connection closed: `serve` returns long before its drain limit.
    tokio::time::timeout(Duration::from_secs(10), s.served).await.expect("serve returned").unwrap();
}
