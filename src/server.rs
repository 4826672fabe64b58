//! The accept loop shared by the data path, the admin listener and the mock GoTo
//! server: HTTP/1.1 keep-alive on hyper, optional TLS (rustls), header size, count and
//! read-time limits, graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A slow client gets this long to send its request headers (and finish TLS).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many request headers.
pub const MAX_HEADERS: usize = 100;
/// At most this many bytes of request line and headers.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// What a handler knows of the client connection a request came on.
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The upstream connections this client connection holds (data path only).
    pub upstream: crate::upstream::Affinity,
}

/// Serves `handler(request, connection)` on `listener` until `shutdown`, then lets open
/// requests finish for up to `drain`. With `tls`, connections are TLS first.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    handler: F,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
    drain: Duration,
) where
    F: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_header_size(MAX_HEADER_BYTES)
        // Don't read ahead while a request is in flight: that read finds nothing (one
        // syscall wasted) and, as the request's headers still borrow the read buffer,
        // makes hyper allocate a new one for every request.
        .half_close(true)
        .keep_alive(true);
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
        let info = Arc::new(ConnInfo { peer, upstream: Default::default() });
        let svc = service_fn(move |req| {
            let fut = h(req, info.clone());
            async move { Ok::<_, Infallible>(fut.await) }
        });
        match &tls {
            None => {
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    };
                    if let Err(e) = watcher.watch(builder.serve_connection(TokioIo::new(tls), svc)).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(drain_secs = drain.as_secs(), "requests still open after the drain timeout; closing them");
    }
}
