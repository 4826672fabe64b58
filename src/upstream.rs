//! Upstream connections, built for the data path's common case: a client connection
//! sends its requests one after another, all to one upstream. So each client
//! connection keeps its own HTTP/1.1 upstream connection ([`Affinity`]) and sends on it
//! directly (`hyper::client::conn::http1`): no pool lookup, no lock shared between
//! connections, no task spawned per request. When the client connection closes, its
//! upstream connection goes to the route's idle list for the next client (a script
//! that opens a connection per `curl` must not pay a TLS handshake each time). An
//! upstream that offers HTTP/2 (ALPN) gets one shared, multiplexed connection instead.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use smallvec::SmallVec;

use crate::proxy::UpstreamBody;

/// An idle upstream connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per route.
const MAX_IDLE: usize = 256;

/// Why a request could not be sent upstream or got no response headers.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect, TLS or HTTP handshake failed or took too long.
    #[error("cannot connect to {target}: {message}")]
    Connect {
        /// `scheme://host:port`.
        target: String,
        /// What failed.
        message: String,
    },
    /// The connection failed while the request was under way.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Opens upstream connections: TCP (nodelay), rustls with ring and the webpki roots,
/// ALPN offering HTTP/2 and HTTP/1.1.
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl Connector {
    /// A connector with `connect_timeout` for TCP and TLS together.
    pub fn new(connect_timeout: Duration) -> Connector {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let mut config = match config {
            Ok(c) => c,
            Err(e) => unreachable!("ring supports the default TLS versions: {e}"),
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Connector { tls: tokio_rustls::TlsConnector::from(Arc::new(config)), connect_timeout }
    }

    async fn connect(&self, target: &Target) -> Result<Conn, UpstreamError> {
        let fail = |message: String| UpstreamError::Connect { target: target.label.clone(), message };
        let opened = tokio::time::timeout(self.connect_timeout, async {
            let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| fail(format!("tcp connect: {e}")))?;
            let _ = tcp.set_nodelay(true);
            match &target.server_name {
                None => Ok::<_, UpstreamError>((Io::Plain(tcp), false)),
                Some(name) => {
                    let tls = self.tls.connect(name.clone(), tcp).await.map_err(|e| fail(format!("TLS: {e}")))?;
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    Ok((Io::Tls(Box::new(tls)), h2))
                }
            }
        })
        .await;
        let (io, h2) = match opened {
            Ok(r) => r?,
            Err(_) => {
                return Err(fail(format!("timed out after {}", humantime::format_duration(self.connect_timeout))))
            }
        };
        if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| fail(format!("HTTP/2 handshake: {e}")))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            return Ok(Conn::H2(sender));
        }
        let (sender, conn) =
            http1::handshake(TokioIo::new(io)).await.map_err(|e| fail(format!("HTTP/1.1 handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(Conn::H1(sender))
    }

    /// Sends `req` (origin-form URI: path and query) to `target` on the client connection's own upstream connection (or
    /// the shared HTTP/2 one), opening one when needed. A request the connection never
    /// took (it had closed while idle) is sent again on a new connection.
    pub async fn send(
        &self,
        target: &Arc<Target>,
        affinity: &Affinity,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        for attempt in 0..2 {
            if let Some(mut h2) = target.h2.load_full().filter(|s| !s.is_closed()).map(|s| (*s).clone()) {
                target.absolute(&mut req);
                return h2.send_request(req).await.map_err(UpstreamError::Http);
            }
            let mut sender = match affinity.take(target).or_else(|| target.take_idle()) {
                Some(s) => s,
                // Boxed: the handshake futures are large and rarely needed, and every
                // request's future would otherwise carry their size.
                None => match Box::pin(self.connect(target)).await? {
                    Conn::H1(s) => s,
                    Conn::H2(s) => {
                        target.h2.store(Some(Arc::new(s)));
                        continue;
                    }
                },
            };
            if sender.ready().await.is_err() {
                continue; // closed while idle: take another
            }
            match sender.try_send_request(req).await {
                Ok(res) => {
                    affinity.put(target, sender);
                    return Ok(res);
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if attempt == 0 => req = back,
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        // Two connections in a row refused the request before sending it.
        let mut sender = match Box::pin(self.connect(target)).await? {
            Conn::H1(s) => s,
            Conn::H2(mut s) => {
                target.absolute(&mut req);
                return s.send_request(req).await.map_err(UpstreamError::Http);
            }
        };
        let res = sender.send_request(req).await.map_err(UpstreamError::Http)?;
        affinity.put(target, sender);
        Ok(res)
    }
}

enum Conn {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

/// Plain TCP or TLS, so both fit one connection type.
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One route's upstream: where to connect, its idle connections, its HTTP/2 connection.
pub struct Target {
    /// `scheme://host:port`, for messages.
    pub label: String,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    host: String,
    port: u16,
    /// TLS server name; `None` for plain HTTP.
    server_name: Option<ServerName<'static>>,
    idle: Mutex<Vec<(http1::SendRequest<UpstreamBody>, Instant)>>,
    h2: ArcSwapOption<http2::SendRequest<UpstreamBody>>,
}

impl Target {
    /// The upstream of `url` (scheme, host, port).
    pub fn new(url: &url::Url) -> Target {
        let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let server_name =
            (url.scheme() == "https").then(|| ServerName::try_from(host.clone()).ok()).flatten().map(|n| n.to_owned());
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        Target {
            label: format!("{}://{}:{port}", url.scheme(), url.host_str().unwrap_or_default()),
            scheme: if url.scheme() == "https" { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP },
            authority: http::uri::Authority::try_from(authority.as_str())
                .unwrap_or_else(|_| http::uri::Authority::from_static("invalid")),
            host,
            port,
            server_name,
            idle: Mutex::new(Vec::new()),
            h2: ArcSwapOption::empty(),
        }
    }

    /// `host[:port]` as the `Host` header carries it.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// HTTP/2 needs the absolute URI (`:scheme`, `:authority`); HTTP/1.1 the path.
    fn absolute(&self, req: &mut Request<UpstreamBody>) {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }

    fn take_idle(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((s, since)) = idle.pop() {
            if !s.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, sender: http1::SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_TIMEOUT);
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }
}

/// An HTTP/1.1 upstream connection held for a target.
type Held = (Arc<Target>, Sender);

/// The sending half of an HTTP/1.1 upstream connection.
type Sender = http1::SendRequest<UpstreamBody>;

/// The upstream connections one client connection holds, by route target. Requests on
/// one HTTP/1.1 client connection are sequential, so this slot is never contended; it
/// is a mutex only to be shareable with the request futures.
#[derive(Default)]
pub struct Affinity {
    held: Mutex<SmallVec<[Held; 1]>>,
}

impl Affinity {
    fn take(&self, target: &Arc<Target>) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let i = held.iter().position(|(t, _)| Arc::ptr_eq(t, target))?;
        Some(held.swap_remove(i).1)
    }

    fn put(&self, target: &Arc<Target>, sender: http1::SendRequest<UpstreamBody>) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.push((target.clone(), sender));
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        let held = std::mem::take(self.held.get_mut().unwrap_or_else(|p| p.into_inner()));
        for (target, sender) in held {
            target.put_idle(sender);
        }
    }
}
