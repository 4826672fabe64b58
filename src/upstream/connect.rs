//! Opening upstream connections (TCP, an outbound proxy's `CONNECT` tunnel, rustls
//! with ALPN, the HTTP/1.1 or HTTP/2 handshake) and the slow path of a send: no ready
//! connection, so take an idle one or open one. The common case, a ready connection,
//! never comes here (see [`super::Held`]).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{Sender, Target, UpstreamBody, UpstreamError};
use crate::outbound::ProxyEndpoint;

/// Opens upstream connections: TCP (nodelay), through the outbound proxy's `CONNECT`
/// tunnel when the target has one, rustls with the target's TLS configuration and ALPN
/// offering HTTP/2 and HTTP/1.1, all within the target's `connect_timeout` (a target is
/// compiled with each config load, so a reload's new timeout applies to new connections).
#[derive(Default)]
pub struct Connector;

impl Connector {
    pub(super) async fn connect(&self, target: &Target) -> Result<Conn, UpstreamError> {
        let fail = |message: String| UpstreamError::Connect { target: target.label.clone(), message };
        let opened = tokio::time::timeout(target.connect_timeout, async {
            let tcp = match &target.via {
                None => tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                    .await
                    .map_err(|e| fail(format!("tcp connect: {e}")))?,
                Some(proxy) => {
                    tokio::net::TcpStream::connect((proxy.host.as_str(), proxy.port)).await.map_err(|e| {
                        UpstreamError::Proxy { proxy: proxy.shown.clone(), message: format!("cannot be reached: {e}") }
                    })?
                }
            };
            let _ = tcp.set_nodelay(true);
            match (&target.server_name, &target.via) {
                (None, _) => Ok::<_, UpstreamError>((Io::Plain(tcp), false)),
                (Some(name), None) => {
                    let tls = target.tls.connect(name.clone(), tcp).await.map_err(|e| fail(format!("TLS: {e}")))?;
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    Ok((Io::Tls(Box::new(tls)), h2))
                }
                (Some(name), Some(proxy)) => {
                    let tunnel = TokioIo::new(tunnel(tcp, target, proxy).await?);
                    let tls = target.tls.connect(name.clone(), tunnel).await.map_err(|e| fail(format!("TLS: {e}")))?;
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    Ok((Io::Tunnel(Box::new(tls)), h2))
                }
            }
        })
        .await;
        let (io, h2) = match opened {
            Ok(r) => r?,
            Err(_) => {
                return Err(fail(format!("timed out after {}", humantime::format_duration(target.connect_timeout))))
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

    /// The slow path of [`Held::send`]: the shared HTTP/2 connection, or `own` (this
    /// client connection's HTTP/1.1 connection, once it is ready), an idle one, or a new
    /// one. A request a connection never took (it had closed while idle) is sent again
    /// on another. Returns the HTTP/1.1 connection used, for the client connection to keep.
    pub(super) async fn send(
        &self,
        target: &Arc<Target>,
        mut own: Option<Sender>,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Option<Sender>), UpstreamError> {
        for attempt in 0..2 {
            if let Some(mut h2) = target.h2.load_full().filter(|s| !s.is_closed()).map(|s| (*s).clone()) {
                target.h2_form(&mut req);
                return h2.send_request(req).await.map(|res| (res, None)).map_err(UpstreamError::Http);
            }
            let mut sender = match own.take().or_else(|| target.take_idle()) {
                Some(s) => s,
                // Boxed: the handshake futures are large and rarely needed.
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
                Ok(res) => return Ok((res, Some(sender))),
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
                target.h2_form(&mut req);
                return s.send_request(req).await.map(|res| (res, None)).map_err(UpstreamError::Http);
            }
        };
        let res = sender.send_request(req).await.map_err(UpstreamError::Http)?;
        Ok((res, Some(sender)))
    }
}

/// Asks `proxy` (over `tcp`) for a `CONNECT` tunnel to `target`, with the proxy's
/// credentials when it has some. A refusal names the proxy (never its credentials) and
/// its answer: `407 Proxy Authentication Required`, `403 Forbidden`, `502 …`.
async fn tunnel(
    tcp: tokio::net::TcpStream,
    target: &Target,
    proxy: &ProxyEndpoint,
) -> Result<hyper::upgrade::Upgraded, UpstreamError> {
    let refused = |message: String| UpstreamError::Proxy { proxy: proxy.shown.clone(), message };
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .map_err(|e| refused(format!("failed the HTTP handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "outbound proxy connection ended before the tunnel");
        }
    });
    let mut req = Request::builder()
        .method(http::Method::CONNECT)
        .uri(target.tunnel_authority.as_str())
        .header(http::header::HOST, target.tunnel_authority.as_str());
    if let Some(auth) = &proxy.authorization {
        req = req.header(http::header::PROXY_AUTHORIZATION, auth.clone());
    }
    let req =
        req.body(Empty::new()).map_err(|e| refused(format!("cannot ask for a tunnel to {}: {e}", target.label)))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| refused(format!("broke off the tunnel to {}: {e}", target.label)))?;
    let status = res.status();
    if !status.is_success() {
        // The proxy's own reason phrase when it sent one (hyper keeps it only when it
        // differs from the standard one); bounded, since it comes from outside.
        let reason = res
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .and_then(|r| std::str::from_utf8(r.as_bytes()).ok())
            .or(status.canonical_reason())
            .unwrap_or("");
        let reason: String = reason.chars().filter(|c| !c.is_control()).take(100).collect();
        return Err(refused(format!("refused the tunnel to {}: {} {reason}", target.label, status.as_u16())));
    }
    hyper::upgrade::on(res).await.map_err(|e| refused(format!("broke off the tunnel to {}: {e}", target.label)))
}

pub(super) enum Conn {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

/// Plain TCP, TLS, or TLS inside an outbound proxy's tunnel, so all fit one connection type.
pub(super) enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    Tunnel(Box<tokio_rustls::client::TlsStream<TokioIo<hyper::upgrade::Upgraded>>>),
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
            Io::Tunnel(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Io::Tunnel(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
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
            Io::Tunnel(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Tunnel(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
            Io::Tunnel(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Tunnel(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
