//! The mock's accept loop: HTTP/1.1 on a listener, TLS when given an acceptor, until
//! told to stop. Connections then finish their answer and close (within a second).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a connection may take to finish once the mock stops.
const DRAIN: Duration = Duration::from_secs(1);

/// Serves `listener` with `handler` (given each request and its client's address) until
/// `shutdown` is cancelled.
pub(super) async fn run<F, Fut, B>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (h, tls, shutdown) = (handler.clone(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let res = h(req, peer);
                async move { Ok::<_, std::convert::Infallible>(res.await) }
            });
            match tls {
                None => serve_one(stream, svc, shutdown).await,
                Some(acceptor) => {
                    if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                    {
                        serve_one(stream, svc, shutdown).await;
                    }
                }
            }
        });
    }
}

/// One connection, closed gracefully when `shutdown` fires.
async fn serve_one<IO, S, B>(io: IO, svc: S, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Send,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}
