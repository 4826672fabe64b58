//! The accept loop shared by the data path, the admin listener and the mock GoTo
//! server: HTTP/1.1 keep-alive on hyper, optional TLS (rustls), header size and count
//! limits, an idle watchdog per connection, graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt as _;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpListener;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A client connection with no request in flight is closed when it starts none for this
/// long, checked once per period (so after 30 to 60 s): idle keep-alive connections and
/// request heads sent too slowly. Also the TLS handshake's limit.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many request headers.
pub const MAX_HEADERS: usize = 100;
/// At most this many bytes of request line and headers.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long open requests may take to finish after a listener is asked to stop.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// What a handler knows of the client connection a request came on, with the state its
/// user keeps per connection (`S`: the data path keeps its upstream connections there;
/// the admin listener and the mock keep nothing).
pub struct ConnInfo<S = ()> {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to: the listener's own address, which the
    /// `Host` and `Origin` checks accept.
    pub local: SocketAddr,
    /// Per-connection state of the listener's user.
    pub state: S,
    /// Requests started on the connection: the watchdog's sign of progress.
    started: AtomicU64,
}

impl<S: Default> ConnInfo<S> {
    fn new(peer: SocketAddr, local: SocketAddr) -> ConnInfo<S> {
        ConnInfo { peer, local, state: S::default(), started: AtomicU64::new(0) }
    }
}

/// How a listener is served: optional TLS, how long open requests may finish after the
/// stop (`drain`), how long a connection may sit idle (`idle`). One value instead of the
/// same four arguments at every call site.
#[derive(Clone)]
pub struct Serve {
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
    drain: Duration,
    idle: Duration,
}

impl Serve {
    /// Plain HTTP until `shutdown`, [`DRAIN_TIMEOUT`] to drain, [`HEADER_READ_TIMEOUT`] idle.
    pub fn new(shutdown: CancellationToken) -> Serve {
        Serve { tls: None, shutdown, drain: DRAIN_TIMEOUT, idle: HEADER_READ_TIMEOUT }
    }

    /// TLS first on every connection (when `Some`).
    pub fn tls(mut self, tls: Option<tokio_rustls::TlsAcceptor>) -> Serve {
        self.tls = tls;
        self
    }

    /// How long open requests may finish after the stop.
    pub fn drain(mut self, drain: Duration) -> Serve {
        self.drain = drain;
        self
    }

    /// How long a connection may start no request before it is closed.
    pub fn idle(mut self, idle: Duration) -> Serve {
        self.idle = idle;
        self
    }

    /// Serves `handler(request, connection)` on `listener` until the stop, then drains.
    pub async fn run<F, Fut, B>(self, listener: TcpListener, handler: F)
    where
        F: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.run_with::<(), F, Fut, B>(listener, handler).await
    }

    /// [`Serve::run`] with per-connection state `S` (created with `S::default()` for each
    /// connection) in the [`ConnInfo`] the handler gets.
    pub async fn run_with<S, F, Fut, B>(self, listener: TcpListener, handler: F)
    where
        S: Default + Send + Sync + 'static,
        F: Fn(Request<Incoming>, Arc<ConnInfo<S>>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Serve { tls, shutdown, drain, idle } = self;
        let closing = Arc::new(Closing::default());
        // A listener bound to one address is that address for every connection; one bound
        // to 0.0.0.0/:: asks each connection (one getsockname per connection).
        let bound = listener.local_addr().ok().filter(|a| !a.ip().is_unspecified());
        let connections = TaskTracker::new();
        let builder = http1_builder();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "set_nodelay failed");
            }
            let h = handler.clone();
            let local = match bound {
                Some(a) => a,
                None => stream.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            };
            let info = Arc::new(ConnInfo::<S>::new(peer, local));
            let watched = info.clone();
            let svc = service_fn(move |req| {
                info.started.fetch_add(1, Ordering::Relaxed);
                // The response body keeps the connection's info: while it streams, the
                // connection is busy, not idle.
                let conn = info.clone();
                // A map, not an async block: that would hold the handler's future twice.
                h(req, info.clone()).map(move |res| Ok::<_, Infallible>(res.map(|body| Busy { body, _conn: conn })))
            });
            match &tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    connections.spawn(serve_watched(conn, watched, idle, closing.clone()));
                }
                Some(acceptor) => {
                    let (acceptor, builder, closing) = (acceptor.clone(), builder.clone(), closing.clone());
                    connections.spawn(async move {
                        let tls = match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                        };
                        serve_watched(builder.serve_connection(TokioIo::new(tls), svc), watched, idle, closing).await;
                    });
                }
            }
        }
        drop(listener);
        closing.start();
        connections.close();
        if tokio::time::timeout(drain, connections.wait()).await.is_err() {
            tracing::warn!(drain_secs = drain.as_secs(), "requests still open after the drain timeout; closing them");
        }
    }
}

/// hyper's HTTP/1.1 server settings for every listener.
fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        // hyper's header-read timer is a new timer per request (an allocation and a
        // timer-wheel insert and remove); the per-connection Watchdog does the job.
        .header_read_timeout(None)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEADER_BYTES)
        // Don't read ahead while a request is in flight: that read finds nothing (one
        // syscall wasted) and, as the request's headers still borrow the read buffer,
        // makes hyper allocate a new one for every request.
        .half_close(true)
        .keep_alive(true);
    builder
}

// ===== graceful drain and idle watchdog =====

/// Tells a listener's connections to finish: each closes after its current response.
/// A flag every connection reads when it wakes, and one wake-up registration per
/// connection: a wake-up costs one atomic load, cheaper than a watch channel polled on
/// every wake-up.
#[derive(Default)]
struct Closing {
    flag: AtomicBool,
    notify: Arc<Notify>,
}

impl Closing {
    fn start(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Serves one connection under its [`Watchdog`] and logs how it ended.
async fn serve_watched<C, S>(conn: C, info: Arc<ConnInfo<S>>, idle: Duration, closing: Arc<Closing>)
where
    C: GracefulConnection<Error = hyper::Error>,
{
    let peer = info.peer;
    match Watchdog::new(conn, info, idle, closing).await {
        Some(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        None => tracing::debug!(%peer, "closed a connection that started no request"),
        Some(Ok(())) => {}
    }
}

pin_project_lite::pin_project! {
    /// Closes a client connection on which no request is in flight (handler running or
    /// response body streaming) and none started for a whole period: one timer per
    /// connection, re-armed once per period, instead of hyper's new header-read timer
    /// for every request. `None`: closed for idleness. Also starts the connection's
    /// graceful shutdown when the listener is [`Closing`].
    struct Watchdog<C, S> {
        #[pin]
        conn: C,
        #[pin]
        closing_signal: OwnedNotified,
        closing: Arc<Closing>,
        drain: Drain,
        info: Arc<ConnInfo<S>>,
        timer: Pin<Box<tokio::time::Sleep>>,
        seen: u64,
        was_busy: bool,
        idle: Duration,
        armed: bool,
    }
}

impl<C, S> Watchdog<C, S> {
    fn new(conn: C, info: Arc<ConnInfo<S>>, idle: Duration, closing: Arc<Closing>) -> Watchdog<C, S> {
        let timer = Box::pin(tokio::time::sleep(idle));
        // Created before the flag is first read: a `start` in between still completes it.
        let closing_signal = closing.notify.clone().notified_owned();
        Watchdog {
            conn,
            closing_signal,
            closing,
            drain: Drain::Unregistered,
            info,
            timer,
            seen: 0,
            was_busy: false,
            idle,
            armed: false,
        }
    }
}

/// Holders of a connection's `ConnInfo` while nothing is in flight: the service and
/// the watchdog. Every request future and response body holds one more.
const IDLE_HOLDERS: usize = 2;

/// Where a connection is with the listener's [`Closing`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Not yet polled for the closing signal.
    Unregistered,
    /// This task's waker waits for the closing signal.
    Registered,
    /// hyper's graceful shutdown has started.
    ShuttingDown,
}

impl<C: GracefulConnection, S> Future for Watchdog<C, S> {
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Like the timer below, the closing signal is polled only to register this
        // task's waker (a task's waker stays the same), not on every wake-up.
        if *this.drain != Drain::ShuttingDown {
            let closing = this.closing.flag.load(Ordering::Acquire)
                || (*this.drain == Drain::Unregistered && this.closing_signal.poll(cx).is_ready());
            if closing {
                *this.drain = Drain::ShuttingDown;
                this.conn.as_mut().graceful_shutdown();
            } else {
                *this.drain = Drain::Registered;
            }
        }
        if let Poll::Ready(out) = this.conn.poll(cx) {
            return Poll::Ready(Some(out));
        }
        // The timer is polled only to register this task's waker (once per period),
        // not on every wake-up of the connection.
        loop {
            if *this.armed && !this.timer.is_elapsed() {
                return Poll::Pending;
            }
            if *this.armed {
                // Idle for a whole period: nothing in flight at its start or end, and
                // no request started in between.
                let started = this.info.started.load(Ordering::Relaxed);
                let busy = Arc::strong_count(this.info) > IDLE_HOLDERS;
                if started == *this.seen && !busy && !*this.was_busy {
                    return Poll::Ready(None);
                }
                *this.seen = started;
                *this.was_busy = busy;
                let next = tokio::time::Instant::now() + *this.idle;
                this.timer.as_mut().reset(next);
            }
            *this.armed = true;
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its connection's [`ConnInfo`] until it is dropped, so
    /// the watchdog sees a long download as activity.
    struct Busy<B, S> {
        #[pin]
        body: B,
        _conn: Arc<ConnInfo<S>>,
    }
}

impl<B: Body, S> Body for Busy<B, S> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
