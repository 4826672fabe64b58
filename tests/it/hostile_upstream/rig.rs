//! The equipment for hostile upstreams: the real binary in front of a route `/m/`, a raw
//! HTTP/1.1 server whose every byte a test decides, an HTTP/2 server over TLS (the `h2`
//! crate's server side, so GOAWAY, REFUSED_STREAM and flow control are sent exactly),
//! a TCP relay that can freeze like a NAT forgetting a flow, and a throw-away PKI.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use goto_mock::{MockGoto, MockOptions};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::*;

// ===== the proxy under test =====

/// The mock GoTo (the credential `g2a` logs in there), and the binary with one route
/// `/m/` to the hostile upstream, logging JSON.
pub struct Rig {
    pub mock: MockGoto,
    pub proc: Proc,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// Starts the binary with route `/m/` → `upstream`, `proxy_extra` in `[proxy]` and
    /// `extra` (a `[tls]` section) after the routes; waits until it is ready.
    pub async fn start(upstream: &str, proxy_extra: &str, extra: &str) -> Rig {
        let mock = MockGoto::start(MockOptions::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(
            dir.path(),
            proxy_extra,
            &format!(
                "{}\n[[routes]]\nprefix = \"/m/\"\nupstream = \"{upstream}\"\ncredential = \"g2a\"\n\n{extra}",
                password_cred("g2a", &mock)
            ),
        );
        let proc = Proc::spawn(&write_config(dir.path(), "hostile.toml", &text));
        let http = client();
        wait_ready(&http, &proc.admin("/readyz"), Duration::from_secs(10)).await;
        Rig { mock, proc, http, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        self.proc.url(path)
    }

    /// `/metrics`, as text.
    pub async fn metrics(&self) -> String {
        self.http.get(self.proc.admin("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// The access lines logged so far, parsed.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        let log = self.proc.log.lock().unwrap();
        log.iter()
            .filter(|l| l.contains("goto_auth_proxy::access"))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (at most `within`) for the access line of the request to `path`.
    pub async fn access_line(&self, path: &str, within: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(l) = self.access_lines().into_iter().find(|l| l["path"] == path) {
                return l;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no access line for {path} within {within:?}; log:\n{}",
                self.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ===== a raw HTTP/1.1 upstream =====

/// One upstream connection, buffered for reading; writes go to the socket itself.
pub type Io = BufReader<TcpStream>;

/// A request as the hostile upstream read it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which accepted connection (0, 1, …) it came on, and which request on it (1, 2, …).
    pub conn: usize,
    pub nth: usize,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The bearer token the proxy injected.
    pub fn token(&self) -> String {
        self.header("authorization").unwrap_or_default().trim_start_matches("Bearer ").to_string()
    }
}

/// A raw HTTP/1.1 server on loopback: `handler` gets each request with its connection
/// and gives the connection back to keep it (`Some`) or drops it (`None`: closed).
pub struct H1 {
    pub addr: SocketAddr,
}

impl H1 {
    pub async fn start<F, Fut>(handler: F) -> H1
    where
        F: Fn(Req, Io) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<Io>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            let mut count = 0;
            while let Ok((tcp, _)) = listener.accept().await {
                let conn = count;
                count += 1;
                let handler = handler.clone();
                tokio::spawn(async move {
                    let mut io = BufReader::new(tcp);
                    let mut nth = 0;
                    loop {
                        nth += 1;
                        let Some(mut req) = read_request(&mut io).await else { return };
                        (req.conn, req.nth) = (conn, nth);
                        match handler(req, io).await {
                            Some(back) => io = back,
                            None => return,
                        }
                    }
                });
            }
        });
        H1 { addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Reads one request (head, and a `Content-Length` or chunked body); `None` at EOF.
pub async fn read_request(io: &mut Io) -> Option<Req> {
    let mut line = String::new();
    if io.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let headers = read_headers(io).await?;
    let mut req = Req { method, path, headers, body: Vec::new(), conn: 0, nth: 0 };
    if req.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        req.body = read_chunked(io).await?;
    } else if let Some(n) = req.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        req.body = vec![0; n];
        io.read_exact(&mut req.body).await.ok()?;
    }
    Some(req)
}

async fn read_headers(io: &mut Io) -> Option<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Some(headers);
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
}

async fn read_chunked(io: &mut Io) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        io.read_line(&mut size).await.ok()?;
        let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        if n == 0 {
            read_headers(io).await?; // trailers and the final CRLF
            return Some(body);
        }
        let start = body.len();
        body.resize(start + n, 0);
        io.read_exact(&mut body[start..]).await.ok()?;
        let mut crlf = [0u8; 2];
        io.read_exact(&mut crlf).await.ok()?;
    }
}

/// Writes a complete `status` answer with `body` and a `Content-Length`.
pub async fn answer(io: &mut Io, status: u16, body: &[u8]) {
    let head =
        format!("HTTP/1.1 {status} Hostile\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n", body.len());
    let _ = io.get_mut().write_all(head.as_bytes()).await;
    let _ = io.get_mut().write_all(body).await;
}

/// Writes raw bytes.
pub async fn write(io: &mut Io, bytes: &[u8]) {
    let _ = io.get_mut().write_all(bytes).await;
    let _ = io.get_mut().flush().await;
}

/// What the echo answers for a request: its tag, so a mix-up shows.
pub fn own(path: &str) -> String {
    format!("own:{path}")
}

/// Holds a connection open, answering nothing, until the test ends.
pub async fn hold(io: Io) -> Option<Io> {
    std::future::pending::<()>().await;
    Some(io)
}

// ===== a throw-away PKI =====

/// A private CA and a server certificate it issued for `localhost` and `127.0.0.1`.
pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "goto-auth-proxy hostile upstream root");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let ca_file = dir.path().join("root.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki { _dir: dir, ca_file, cert: leaf.der().clone(), key: key.serialize_der() }
    }

    /// `[tls]` trusting the CA.
    pub fn tls_toml(&self) -> String {
        format!("[tls]\nca_file = {:?}\n", self.ca_file.display().to_string())
    }

    /// An acceptor offering only `h2` (ALPN).
    pub fn h2_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], PrivateKeyDer::Pkcs8(self.key.clone().into()))
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

// ===== an HTTP/2 upstream over TLS =====

/// A request that reached the HTTP/2 upstream; the test answers it (or not).
pub struct H2Req {
    /// Which accepted connection (0, 1, …).
    pub conn: usize,
    pub req: http::Request<h2::RecvStream>,
    pub respond: h2::server::SendResponse<Bytes>,
    /// Its connection's controls.
    pub ctl: ConnCtl,
}

impl H2Req {
    pub fn path(&self) -> String {
        self.req.uri().path().to_string()
    }

    /// Answers `200 own:PATH`.
    pub fn echo(self) {
        let body = own(&self.path());
        respond(self.respond, 200, body.into_bytes());
    }
}

/// Sends a complete answer.
pub fn respond(mut respond: h2::server::SendResponse<Bytes>, status: u16, body: Vec<u8>) {
    let res = http::Response::builder().status(status).body(()).unwrap();
    if let Ok(mut send) = respond.send_response(res, false) {
        let _ = send.send_data(Bytes::from(body), true);
    }
}

/// Reads a request body whole, giving the flow-control capacity back.
pub async fn read_body(body: &mut h2::RecvStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { break };
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    out
}

/// A connection's controls: raw frames written between `h2`'s own (an exact GOAWAY).
#[derive(Clone)]
pub struct ConnCtl {
    inject: Arc<Mutex<Vec<u8>>>,
}

impl ConnCtl {
    /// Queues a `GOAWAY` frame saying `last_stream_id` was the last stream processed, with
    /// error NO_ERROR; it is written before the next bytes `h2` writes (answer a stream
    /// to send it).
    pub fn goaway(&self, last_stream_id: u32) {
        let mut frame = vec![0, 0, 8, 0x7, 0, 0, 0, 0, 0];
        frame.extend_from_slice(&last_stream_id.to_be_bytes());
        frame.extend_from_slice(&0u32.to_be_bytes());
        self.inject.lock().unwrap().extend_from_slice(&frame);
    }
}

/// An HTTP/2 server over TLS; requests arrive on [`H2::requests`].
pub struct H2 {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub requests: mpsc::UnboundedReceiver<H2Req>,
}

impl H2 {
    /// Listens on loopback; `settings` shapes each connection's `h2` server builder.
    pub async fn start(pki: &Pki, settings: impl Fn(&mut h2::server::Builder) + Send + Sync + 'static) -> H2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, requests) = mpsc::unbounded_channel();
        let acceptor = pki.h2_acceptor();
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let conn = count.fetch_add(1, Ordering::SeqCst);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                let mut builder = h2::server::Builder::new();
                settings(&mut builder);
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let inject = Arc::new(Mutex::new(Vec::new()));
                    let io = Inject { inner: tls, pending: inject.clone() };
                    let Ok(mut h2c) = builder.handshake::<_, Bytes>(io).await else { return };
                    let ctl = ConnCtl { inject };
                    while let Some(Ok((req, respond))) = h2c.accept().await {
                        let _ = tx.send(H2Req { conn, req, respond, ctl: ctl.clone() });
                    }
                });
            }
        });
        H2 { addr, accepted, requests }
    }

    /// The next request that arrives, within `within`.
    pub async fn next(&mut self, within: Duration) -> H2Req {
        tokio::time::timeout(within, self.requests.recv()).await.expect("a request reached the upstream").unwrap()
    }

    /// Answers every request from now on with its tag (the test's hands off); returns
    /// the count of connections accepted.
    pub fn echo_all(self) -> Arc<AtomicUsize> {
        self.echo_from(0)
    }

    /// Like [`H2::echo_all`], but requests on connections below `min_conn` are held,
    /// never answered (an upstream that said it would not process them).
    pub fn echo_from(mut self, min_conn: usize) -> Arc<AtomicUsize> {
        let accepted = self.accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(r) = self.requests.recv().await {
                if r.conn < min_conn {
                    held.push(r);
                    continue;
                }
                tokio::spawn(async move {
                    let H2Req { req, respond, .. } = r;
                    let path = req.uri().path().to_string();
                    let mut body = req.into_body();
                    read_body(&mut body).await;
                    respond_echo(respond, &path);
                });
            }
        });
        accepted
    }
}

fn respond_echo(to: h2::server::SendResponse<Bytes>, path: &str) {
    respond(to, 200, own(path).into_bytes());
}

/// A TLS stream that writes queued raw bytes (whole frames) before `h2`'s next write.
struct Inject<S> {
    inner: S,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Inject<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inject<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let pending = std::mem::take(&mut *self.pending.lock().unwrap());
            if pending.is_empty() {
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &pending) {
                Poll::Ready(Ok(n)) => {
                    let mut rest = self.pending.lock().unwrap();
                    let tail = std::mem::take(&mut *rest);
                    *rest = pending[n..].to_vec();
                    rest.extend_from_slice(&tail);
                }
                other => {
                    let mut rest = self.pending.lock().unwrap();
                    let tail = std::mem::take(&mut *rest);
                    *rest = pending;
                    rest.extend_from_slice(&tail);
                    return other.map(|r| r.map(|_| 0));
                }
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ===== a relay that can black-hole its connections =====

#[path = "../../../crates/bench-tools/src/relay.rs"]
mod relay;
pub use relay::Relay;
