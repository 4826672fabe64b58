//! Upstream connections, built for the data path's common case: a client connection
//! sends its requests one after another, all to one upstream. So each client
//! connection keeps its own HTTP/1.1 upstream connection ([`Affinity`]) and sends on it
//! directly (`hyper::client::conn::http1`): no pool lookup, no lock shared between
//! connections, no task spawned per request. When the client connection closes, its
//! upstream connection goes to the route's idle list for the next client (a script
//! that opens a connection per `curl` must not pay a TLS handshake each time). An
//! upstream that offers HTTP/2 (ALPN) gets shared, multiplexed connections instead
//! ([`h2conn`]).
//!
//! An upstream's framing never leaks between clients: an HTTP/1.1 connection is reused
//! only after a complete answer with nothing after it (hyper closes it on bytes that
//! arrive while it is idle, see [`io`]), an answer with `Transfer-Encoding` loses its
//! `Content-Length`, a `101` nobody asked for is an error, and a request a connection
//! failed before any byte of an answer arrived is sent once more on a new connection
//! when that is safe ([`Resent`]).
//!
//! Behind an outbound proxy ([`Target::new`] is told which), an `https://` upstream is
//! reached through a `CONNECT` tunnel (TLS and ALPN inside it, as directly), and an
//! `http://` upstream by absolute-form requests to the proxy; either way the connections
//! are kept and reused exactly like direct ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use rustls::pki_types::ServerName;

use crate::outbound::ProxyEndpoint;

mod connect;
mod h2conn;
mod held;
mod idle_body;
mod io;

pub(crate) use connect::Connector;
use h2conn::H2Conn;
pub(crate) use held::Resent;
pub(crate) use held::{Affinity, Held, Replay};
pub(crate) use idle_body::BodyIdle;
pub(crate) use idle_body::IdleBody;
use io::Watch;

/// What is sent upstream: a buffered (retryable) body or the client's stream, limited
/// to `max_request_body`. Defined here, beside the connections that send it, so the
/// upstream side imports nothing of the data path.
pub(crate) type UpstreamBody =
    http_body_util::Either<http_body_util::Full<bytes::Bytes>, IdleBody<http_body_util::Limited<Incoming>>>;

/// An idle upstream connection older than this is closed rather than reused.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per route.
const MAX_IDLE: usize = 256;

/// Why a request could not be sent upstream or got no response headers.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
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
    /// The upstream answered in a way no request of ours allows (a `101` to a request
    /// that asked for no upgrade).
    #[error("{target} {message}")]
    Protocol {
        /// `scheme://host:port`.
        target: String,
        /// What it did.
        message: String,
    },
    /// The outbound proxy could not be reached, or refused the tunnel (or, for an
    /// `http://` upstream, the request) with its own answer.
    #[error("outbound proxy {proxy} {message}")]
    Proxy {
        /// The proxy as it may be shown (`http://***@host:port`: never its credentials).
        proxy: String,
        /// What happened, with the proxy's status when it answered.
        message: String,
    },
}

/// One route's upstream: where to connect, its idle connections, its HTTP/2 connection.
pub(crate) struct Target {
    /// `scheme://host:port`, for messages.
    pub label: String,
    pub(super) scheme: http::uri::Scheme,
    pub(super) authority: http::uri::Authority,
    pub(super) host: String,
    pub(super) port: u16,
    /// TLS server name; `None` for plain HTTP.
    pub(super) server_name: Option<ServerName<'static>>,
    /// The outbound TLS configuration (`[tls]`, ALPN h2 and http/1.1).
    pub(super) tls: tokio_rustls::TlsConnector,
    /// The outbound proxy this upstream is reached through, if any.
    pub(super) via: Option<Arc<ProxyEndpoint>>,
    /// `host:port` as a `CONNECT` request names it.
    pub(super) tunnel_authority: String,
    /// For TCP, the outbound proxy's tunnel and TLS together (`proxy.connect_timeout`).
    pub(super) connect_timeout: Duration,
    /// Plain HTTP through [`Target::via`]: requests go in absolute form to the proxy.
    forwarded: bool,
    pub(super) idle: Mutex<Vec<(H1, Instant)>>,
    /// The shared HTTP/2 connections (see [`h2conn`]): read with one atomic load per
    /// request, replaced whole when a connection opens.
    pub(super) h2: ArcSwap<Vec<Arc<H2Conn>>>,
    /// ALPN chose HTTP/2 on the last connection opened.
    h2_offered: AtomicBool,
    /// Held while a connection is being opened: one at a time per upstream.
    opening: tokio::sync::Mutex<()>,
    /// Set once no route uses it (a reload compiled new targets): client connections that
    /// outlive the reload let go of their connections to it instead of holding them.
    retired: AtomicBool,
}

impl Target {
    /// The upstream of `url` (scheme, host, port), verified with `tls` (whose ALPN offers
    /// HTTP/2 and HTTP/1.1), reached through `via` when an outbound proxy applies, a new
    /// connection given up after `connect_timeout`.
    pub(crate) fn new(
        url: &url::Url,
        tls: Arc<rustls::ClientConfig>,
        via: Option<Arc<ProxyEndpoint>>,
        connect_timeout: Duration,
    ) -> Target {
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
            forwarded: via.is_some() && server_name.is_none(),
            server_name,
            tls: tokio_rustls::TlsConnector::from(tls),
            via,
            tunnel_authority: format!("{}:{port}", url.host_str().unwrap_or_default()),
            connect_timeout,
            idle: Mutex::new(Vec::new()),
            h2: ArcSwap::from_pointee(Vec::new()),
            h2_offered: AtomicBool::new(false),
            opening: tokio::sync::Mutex::new(()),
            retired: AtomicBool::new(false),
        }
    }

    /// A request to a plain-HTTP upstream behind the outbound proxy: absolute form, and
    /// the proxy's credentials.
    fn forward_form(&self, req: &mut Request<UpstreamBody>) {
        self.absolute(req);
        if let Some(auth) = self.via.as_ref().and_then(|p| p.authorization.clone()) {
            req.headers_mut().insert(http::header::PROXY_AUTHORIZATION, auth);
        }
    }

    /// The answer as the data path sees it: a `407` to a forwarded request is the
    /// outbound proxy's refusal, not the upstream's answer; a `101` (the data path asks
    /// for no upgrade) is an error; beside `Transfer-Encoding`, a `Content-Length` is
    /// dropped (RFC 9112 §6.3: the coding frames the body, the length is stale).
    fn answer(&self, mut res: Response<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        if res.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(UpstreamError::Protocol {
                target: self.label.clone(),
                message: "answered 101 Switching Protocols to a request that asked for no upgrade".to_string(),
            });
        }
        if res.headers().contains_key(http::header::TRANSFER_ENCODING) {
            res.headers_mut().remove(http::header::CONTENT_LENGTH);
        }
        if self.forwarded && res.status() == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            return Err(UpstreamError::Proxy {
                proxy: self.via.as_ref().map(|p| p.shown.clone()).unwrap_or_default(),
                message: format!("refused the request to {}: 407 Proxy Authentication Required", self.label),
            });
        }
        Ok(res)
    }

    /// Marks it as used by no route any more (its route table was replaced).
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// `host[:port]` as the `Host` header carries it.
    pub(crate) fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// HTTP/2 needs the absolute URI (`:scheme`, `:authority`), and so does a forward
    /// proxy; HTTP/1.1 to the upstream itself the path.
    fn absolute(&self, req: &mut Request<UpstreamBody>) {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = req.uri().path_and_query().cloned();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }

    /// A request for the shared HTTP/2 connection: the absolute URI, and no `Host`
    /// header, since `:authority` carries it (RFC 9113 §8.3.1; nginx answers a request
    /// with both `400 Bad Request`, "duplicate host header").
    fn h2_form(&self, req: &mut Request<UpstreamBody>) {
        self.absolute(req);
        req.headers_mut().remove(http::header::HOST);
    }

    fn take_idle(&self) -> Option<H1> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((c, since)) = idle.pop() {
            if !c.sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, conn: H1) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(c, since)| !c.sender.is_closed() && since.elapsed() < IDLE_TIMEOUT);
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }
}

/// The sending half of an HTTP/1.1 upstream connection.
pub(super) type Sender = http1::SendRequest<UpstreamBody>;

/// An HTTP/1.1 upstream connection: its sending half and what its I/O saw.
pub(super) struct H1 {
    sender: Sender,
    watch: Arc<Watch>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_utils::atomic::AtomicCell;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    #[test]
    fn the_connection_slot_is_lock_free() {
        assert!(AtomicCell::<Option<Box<Held>>>::is_lock_free());
    }

    /// An upstream that offers HTTP/2 by ALPN: requests, several at once among them,
    /// share one multiplexed connection.
    #[tokio::test]
    async fn an_upstream_offering_http2_gets_every_request_on_one_connection() {
        use http_body_util::{BodyExt, Either, Full};
        use std::sync::atomic::{AtomicUsize, Ordering};

        let (acceptor, tls) = h2_tls();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        tokio::spawn({
            let connections = connections.clone();
            async move {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    connections.fetch_add(1, Ordering::SeqCst);
                    let tls = acceptor.accept(tcp).await.unwrap();
                    let echo = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let host =
                            if req.headers().contains_key(http::header::HOST) { " with a Host header" } else { "" };
                        let said = format!("{:?} {}{host}", req.version(), req.uri().path());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from(said))))
                    });
                    tokio::spawn(
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), echo),
                    );
                }
            }
        });

        let connector = Connector;
        let url = url::Url::parse(&format!("https://localhost:{port}/")).unwrap();
        let target = Arc::new(Target::new(&url, tls, None, Duration::from_secs(5)));
        let get = |path: String| {
            // As the data path sends it: origin form, and the Host header.
            let req = Request::builder()
                .uri(path)
                .header(http::header::HOST, format!("localhost:{port}"))
                .body(Either::Left(Full::new(bytes::Bytes::new())))
                .unwrap();
            let (connector, target) = (&connector, &target);
            async move {
                let (res, kept) = connector.send(target, None, req, None, None).await.unwrap();
                assert!(kept.is_none(), "an HTTP/2 connection is shared, not kept by one client connection");
                String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
            }
        };
        assert_eq!(get("/first".to_string()).await, "HTTP/2.0 /first");
        let answers = futures_util::future::join_all((0..8).map(|i| get(format!("/at-once/{i}")))).await;
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(answer, &format!("HTTP/2.0 /at-once/{i}"));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection for all nine requests");
    }

    /// A self-signed `localhost` certificate: the server's TLS acceptor (ALPN h2 only)
    /// and a client configuration trusting it.
    fn h2_tls() -> (tokio_rustls::TlsAcceptor, Arc<rustls::ClientConfig>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        (tokio_rustls::TlsAcceptor::from(Arc::new(server)), Arc::new(tls))
    }

    /// A GET as the data path sends it, replayable.
    struct Get(String);

    impl Replay for Get {
        fn replay(&self) -> Request<UpstreamBody> {
            Request::builder()
                .uri(self.0.as_str())
                .body(http_body_util::Either::Left(http_body_util::Full::new(bytes::Bytes::new())))
                .unwrap()
        }
    }

    /// An HTTP/2 upstream (the `h2` crate's server) that refuses the first stream with
    /// `REFUSED_STREAM` and answers the rest: the refused request is sent once more, on
    /// a new connection, and its answer is marked as resent for that reason.
    #[tokio::test]
    async fn a_refused_stream_is_sent_again_on_a_new_connection() {
        use std::sync::atomic::AtomicUsize;

        let (acceptor, tls) = h2_tls();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, streams) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, n) = (connections.clone(), streams.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let (acceptor, n) = (acceptor.clone(), n.clone());
                tokio::spawn(async move {
                    let tls = acceptor.accept(tcp).await.unwrap();
                    let mut conn = h2::server::handshake(tls).await.unwrap();
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        if n.fetch_add(1, Ordering::SeqCst) == 0 {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let body = bytes::Bytes::from(format!("answer to {}", req.uri().path()));
                        let mut send = respond.send_response(Response::new(()), false).unwrap();
                        send.send_data(body, true).unwrap();
                    }
                });
            }
        });

        let url = url::Url::parse(&format!("https://localhost:{port}/")).unwrap();
        let target = Arc::new(Target::new(&url, tls, None, Duration::from_secs(5)));
        let get = Get("/refused".to_string());
        let (res, kept) = Connector.send(&target, None, get.replay(), Some(&get), None).await.unwrap();
        assert!(kept.is_none());
        assert!(matches!(res.extensions().get::<Resent>(), Some(Resent("refused_stream"))));
        let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
        assert_eq!(body, "answer to /refused");
        assert_eq!(streams.load(Ordering::SeqCst), 2, "sent twice, not more");
        assert_eq!(connections.load(Ordering::SeqCst), 2, "the second time on a new connection");
    }
}
