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

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_utils::atomic::AtomicCell;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use rustls::pki_types::ServerName;
use smallvec::SmallVec;

use crate::outbound::ProxyEndpoint;

mod connect;
mod h2conn;
mod io;

pub(crate) use connect::Connector;
use h2conn::H2Conn;
use io::Watch;

/// What is sent upstream: a buffered (retryable) body or the client's stream, limited
/// to `max_request_body`. Defined here, beside the connections that send it, so the
/// upstream side imports nothing of the data path.
pub(crate) type UpstreamBody =
    http_body_util::Either<http_body_util::Full<bytes::Bytes>, IdleBody<http_body_util::Limited<Incoming>>>;

/// The client's body as it streams upstream, broken off when it moves no byte for
/// `body_idle_timeout` (a client that stops sending must not hold an upstream
/// connection forever). The timer is armed only once the body has to wait.
pub struct IdleBody<B> {
    inner: B,
    after: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> IdleBody<B> {
    /// `inner`, broken off after `after` without a byte.
    pub fn new(inner: B, after: Duration) -> IdleBody<B> {
        IdleBody { inner, after, timer: None }
    }
}

/// A body that moved no byte for `body_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body moved no byte for {} (body_idle_timeout)", humantime::format_duration(*.0))]
pub(crate) struct BodyIdle(pub(crate) Duration);

impl<B> hyper::body::Body for IdleBody<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(tokio::time::Instant::now() + this.after);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let after = this.after;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
                match timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(after))))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// An idle upstream connection older than this is closed rather than reused.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
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
pub struct Target {
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
    pub fn new(
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
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// `host[:port]` as the `Host` header carries it.
    pub fn authority(&self) -> &http::uri::Authority {
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

/// A request that can be sent again as it was first sent (its body held), for a resend
/// after its connection failed it (see [`Resent`]). Made only when a resend may happen.
pub trait Replay: Sync {
    /// The request again, exactly as first sent.
    fn replay(&self) -> Request<UpstreamBody>;
}

/// In an answer's extensions: its request was sent a second time, on a new connection,
/// because the first connection failed it before any byte of an answer arrived; the
/// reason as `goto_auth_proxy_upstream_retries_total` names it (`keepalive_race`: a
/// kept-alive HTTP/1.1 connection closed as the request came; `refused_stream`;
/// `goaway`: above an HTTP/2 `GOAWAY`'s last stream; `closed`: a connection that closed
/// before the request went out). At most once per request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resent(pub(crate) &'static str);

/// What one client connection keeps between its requests: its HTTP/1.1 upstream
/// connections and one timer for every request's deadline.
///
/// Requests on one HTTP/1.1 client connection are sequential, so a request holds it
/// alone (see [`Affinity::hold`]).
#[derive(Default)]
pub struct Held {
    conns: Conns,
    timer: Timer,
}

/// The answer to a request sent on a connection that was ready.
type Answer = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpstreamBody>>>;

impl Held {
    /// Sends `req` (origin-form URI: path and query) to `target`; the future yields the
    /// answer's head, or `None` when `deadline` came first.
    ///
    /// The common case costs no wait and no lookup: this client connection's own
    /// HTTP/1.1 connection is ready, so the request goes to it right now and the future
    /// only awaits the answer. Anything else (first request, HTTP/2, a connection not
    /// ready or closed) takes [`Connector::send`], boxed.
    pub fn send<'a>(
        &'a mut self,
        connector: &'a Connector,
        target: &'a Arc<Target>,
        deadline: Instant,
        mut req: Request<UpstreamBody>,
        replay: Option<&'a dyn Replay>,
    ) -> Sending<'a, impl Future<Output = Answer> + Send + 'a> {
        if target.forwarded {
            target.forward_form(&mut req);
        }
        let stage = match self.conns.ready(target) {
            // Sent in place: taking it out and back would clone the shared `Arc<Target>`.
            Some(conn) => Stage::Sent { read: conn.watch.read(), fut: conn.sender.try_send_request(req) },
            None => Stage::Slow {
                since: Instant::now(),
                fut: Box::pin(connector.send(target, self.conns.take(target), req, replay, None)),
            },
        };
        Sending { stage, conns: &mut self.conns, connector, target, replay, timer: self.timer.arm(deadline) }
    }
}

impl Held {
    /// Lets go of this client connection's connection to `target` (it still carries an
    /// answer nobody will read): the next request takes another.
    pub fn let_go(&mut self, target: &Arc<Target>) {
        drop(self.conns.take(target));
    }
}

/// [`Connector::send`], boxed.
type SlowSend<'a> = Pin<Box<dyn Future<Output = Result<(Response<Incoming>, Option<H1>), UpstreamError>> + Send + 'a>>;

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage<'a, F> {
        /// On this client connection's own connection, which had read `read` bytes.
        Sent { read: u64, #[pin] fut: F },
        /// Anything else, since then.
        Slow { since: Instant, fut: SlowSend<'a> },
    }
}

pin_project_lite::pin_project! {
    /// A request on its way upstream (see [`Held::send`]). Small on purpose: hyper moves
    /// the request's future, and this is part of it.
    pub struct Sending<'a, F> {
        #[pin]
        stage: Stage<'a, F>,
        conns: &'a mut Conns,
        connector: &'a Connector,
        target: &'a Arc<Target>,
        replay: Option<&'a dyn Replay>,
        timer: Pin<&'a mut tokio::time::Sleep>,
    }
}

impl<'a, F: Future<Output = Answer>> Future for Sending<'a, F> {
    type Output = Option<Result<Response<Incoming>, UpstreamError>>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.stage.as_mut().project() {
                StageProj::Sent { read, fut } => match fut.poll(cx) {
                    Poll::Ready(Ok(res)) => {
                        let answer = this.target.answer(res);
                        if answer.is_err() {
                            drop(this.conns.take(this.target)); // its framing is not to be trusted
                        }
                        return Poll::Ready(Some(answer));
                    }
                    Poll::Ready(Err(mut e)) => {
                        let (read, replay) = (*read, *this.replay);
                        let (connector, target) = (*this.connector, *this.target);
                        let failed = this.conns.take(target);
                        let (req, resent) = match e.take_message() {
                            // The connection had closed (or bytes arrived on it) while idle
                            // and never took it.
                            Some(req) => (req, None),
                            None => {
                                let error = e.into_error();
                                let again = failed
                                    .as_ref()
                                    .and_then(|h1| connect::keepalive_race(true, read, h1, &error, replay, None));
                                match again {
                                    Some(req) => (req, Some("keepalive_race")),
                                    None => return Poll::Ready(Some(Err(UpstreamError::Http(error)))),
                                }
                            }
                        };
                        drop(failed);
                        let fut = Box::pin(connector.send(target, None, req, replay, resent));
                        this.stage.set(Stage::Slow { since: Instant::now(), fut });
                    }
                    Poll::Pending => break,
                },
                StageProj::Slow { fut, .. } => match fut.as_mut().poll(cx) {
                    Poll::Ready(Ok((res, conn))) => {
                        if let Some(conn) = conn {
                            this.conns.put(this.target, conn);
                        }
                        return Poll::Ready(Some(Ok(res)));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Pending => break,
                },
            }
        }
        let timed_out = this.timer.as_mut().poll(cx).is_ready();
        if !timed_out {
            return Poll::Pending;
        }
        if let StageProj::Slow { since, .. } = this.stage.project() {
            if this.target.speaks_h2() {
                this.target.h2_timed_out(*since);
            }
        }
        Poll::Ready(None)
    }
}

/// HTTP/1.1 upstream connections by route target; usually one.
#[derive(Default)]
struct Conns(SmallVec<[(Arc<Target>, H1); 1]>);

impl Conns {
    /// The connection to `target`, when it is ready for a request now.
    fn ready(&mut self, target: &Arc<Target>) -> Option<&mut H1> {
        self.0.iter_mut().find(|(t, _)| Arc::ptr_eq(t, target)).map(|(_, c)| c).filter(|c| c.sender.is_ready())
    }

    fn take(&mut self, target: &Arc<Target>) -> Option<H1> {
        let i = self.0.iter().position(|(t, _)| Arc::ptr_eq(t, target))?;
        Some(self.0.swap_remove(i).1)
    }

    /// Keeps `sender` for `target`, letting go of connections that closed or whose target
    /// a reload retired (a long-lived client connection would otherwise hold one per
    /// route per reload, open, for its whole life).
    fn put(&mut self, target: &Arc<Target>, conn: H1) {
        self.0.retain(|(t, c)| !t.is_retired() && !c.sender.is_closed());
        self.0.push((target.clone(), conn));
    }
}

impl Drop for Conns {
    fn drop(&mut self) {
        for (target, conn) in self.0.drain(..) {
            if !target.is_retired() {
                target.put_idle(conn);
            }
        }
    }
}

/// One timer re-armed for each request. Moving a registered timer's deadline later is
/// one atomic store; a new timer per request is a timer-wheel insert and remove under
/// the runtime's timer lock (and sometimes a wake-up write to the I/O driver).
#[derive(Default)]
struct Timer(Option<Pin<Box<tokio::time::Sleep>>>);

impl Timer {
    fn arm(&mut self, deadline: Instant) -> Pin<&mut tokio::time::Sleep> {
        let fresh = self.0.is_none();
        let timer = self.0.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        if !fresh {
            timer.as_mut().reset(deadline.into());
        }
        timer.as_mut()
    }
}

/// The client connection's slot for its [`Held`] state: one atomic pointer, no lock.
/// When the client connection closes, its upstream connections go to their routes'
/// idle lists.
#[derive(Default)]
pub struct Affinity {
    slot: AtomicCell<Option<Box<Held>>>,
}

impl Affinity {
    /// The connection's state for one request (a fresh one for its first); it goes
    /// back when the guard is dropped.
    pub fn hold(&self) -> Holding<'_> {
        Holding { affinity: self, held: Some(self.slot.take().unwrap_or_default()) }
    }
}

/// A request's hold on its client connection's [`Held`] state.
pub struct Holding<'a> {
    affinity: &'a Affinity,
    /// `None` only while being dropped.
    held: Option<Box<Held>>,
}

impl std::ops::Deref for Holding<'_> {
    type Target = Held;

    fn deref(&self) -> &Held {
        self.held.as_deref().unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl std::ops::DerefMut for Holding<'_> {
    fn deref_mut(&mut self) -> &mut Held {
        self.held.as_deref_mut().unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        // Another request's state in the slot (never with HTTP/1.1) is let go.
        drop(self.affinity.slot.swap(self.held.take()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
