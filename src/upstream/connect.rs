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

use super::h2conn::{self, H2Conn, MAX_H2, PING_EVERY, PING_TIMEOUT};
use super::io::{Io, Stream, Watch};
use super::{Replay, Resent, Target, UpstreamBody, UpstreamError, H1};
use crate::outbound::ProxyEndpoint;
use hyper::body::Body as _;

/// Opens upstream connections: TCP (nodelay), through the outbound proxy's `CONNECT`
/// tunnel when the target has one, rustls with the target's TLS configuration and ALPN
/// offering HTTP/2 and HTTP/1.1, all within the target's `connect_timeout` (a target is
/// compiled with each config load, so a reload's new timeout applies to new connections).
#[derive(Default)]
pub(crate) struct Connector;

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
                (None, _) => Ok::<_, UpstreamError>((Stream::Plain(tcp), false)),
                (Some(name), None) => {
                    let tls = target.tls.connect(name.clone(), tcp).await.map_err(|e| fail(format!("TLS: {e}")))?;
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    Ok((Stream::Tls(Box::new(tls)), h2))
                }
                (Some(name), Some(proxy)) => {
                    let tunnel = TokioIo::new(tunnel(tcp, target, proxy).await?);
                    let tls = target.tls.connect(name.clone(), tunnel).await.map_err(|e| fail(format!("TLS: {e}")))?;
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    Ok((Stream::Tunnel(Box::new(tls)), h2))
                }
            }
        })
        .await;
        let (stream, h2) = match opened {
            Ok(r) => r?,
            Err(_) => {
                return Err(fail(format!("timed out after {}", humantime::format_duration(target.connect_timeout))))
            }
        };
        let watch = Arc::new(Watch::default());
        let io = TokioIo::new(Io::new(stream, watch.clone(), h2));
        if h2 {
            // PINGs while in use and while idle: a connection a network silently dropped
            // is closed (and replaced) within PING_EVERY + PING_TIMEOUT, not used forever.
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(PING_EVERY)
                .keep_alive_timeout(PING_TIMEOUT)
                .keep_alive_while_idle(true)
                .handshake(io)
                .await
                .map_err(|e| fail(format!("HTTP/2 handshake: {e}")))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            return Ok(Conn::H2(Arc::new(H2Conn::new(sender, watch))));
        }
        let (sender, conn) = http1::handshake(io).await.map_err(|e| fail(format!("HTTP/1.1 handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(Conn::H1(H1 { sender, watch }))
    }

    /// The slow path of [`Held::send`]: the shared HTTP/2 connections, or `own` (this
    /// client connection's HTTP/1.1 connection, once it is ready), an idle one, or a new
    /// one (opened one at a time per upstream). A request a connection never took (it had
    /// closed while idle) goes to another. A request a connection
    /// failed before any byte of an answer arrived is sent once more on a new connection
    /// when that is safe (see [`Resent`]). Returns the HTTP/1.1 connection used, for the
    /// client connection to keep.
    pub(super) async fn send(
        &self,
        target: &Arc<Target>,
        mut own: Option<H1>,
        mut req: Request<UpstreamBody>,
        replay: Option<&dyn Replay>,
        mut resent: Option<&'static str>,
    ) -> Result<(Response<Incoming>, Option<H1>), UpstreamError> {
        // After a failure on a kept-alive connection: a new one, never another idle one.
        let mut fresh_only = resent.is_some();
        // Connections tried; a request no connection takes is given up after a few.
        for _ in 0..6 {
            if target.speaks_h2() {
                let conn = match self.h2_conn(target, &req).await? {
                    Conn::H2(c) => c,
                    Conn::H1(h1) => {
                        own = Some(h1);
                        fresh_only = false;
                        continue;
                    }
                };
                match conn.send(target, req).await {
                    Ok(res) => return target.answer(res).map(|res| (marked(res, resent), None)),
                    Err(mut e) => {
                        conn.retire();
                        let back = e.take_message();
                        let error = e.into_error();
                        let (reason, again) = match back {
                            Some(back) => ("closed", Some(back)),
                            None => match h2conn::resend_reason(&error) {
                                Some(reason) => (reason, replay.map(Replay::replay)),
                                None => return Err(UpstreamError::Http(error)),
                            },
                        };
                        match again {
                            Some(again) if resent.is_none() => {
                                resent = Some(reason);
                                req = again;
                                continue;
                            }
                            _ => return Err(UpstreamError::Http(error)),
                        }
                    }
                }
            }
            let (mut h1, reused) = match own.take().or_else(|| if fresh_only { None } else { target.take_idle() }) {
                Some(c) => (c, true),
                None => match self.open(target).await? {
                    Conn::H1(c) => (c, false),
                    Conn::H2(_) => continue, // shared now: sent on it as HTTP/2
                },
            };
            if h1.sender.ready().await.is_err() {
                continue; // closed while idle: take another
            }
            let before = h1.watch.read();
            match h1.sender.try_send_request(req).await {
                Ok(res) => {
                    return match target.answer(res) {
                        Ok(res) => Ok((marked(res, resent), Some(h1))),
                        Err(e) => Err(e),
                    }
                }
                Err(mut e) => match e.take_message() {
                    // Never sent (the connection closed while idle).
                    Some(back) => req = back,
                    None => {
                        let error = e.into_error();
                        match keepalive_race(reused, before, &h1, &error, replay, resent) {
                            Some(again) => {
                                resent = Some("keepalive_race");
                                fresh_only = true;
                                req = again;
                            }
                            None => return Err(UpstreamError::Http(error)),
                        }
                    }
                },
            }
        }
        Err(UpstreamError::Connect {
            target: target.label.clone(),
            message: "every connection closed before taking the request".to_string(),
        })
    }

    /// A new connection to `target`, opened while no other is being opened to it (a
    /// burst of first requests opens one connection, which HTTP/2 then shares).
    async fn open(&self, target: &Arc<Target>) -> Result<Conn, UpstreamError> {
        let _one = target.opening.lock().await;
        if target.speaks_h2() {
            if let Some(c) = target.pick_h2(false) {
                return Ok(Conn::H2(c)); // opened while this one waited
            }
        }
        // Boxed: the handshake futures are large and rarely needed.
        let conn = Box::pin(self.connect(target)).await?;
        if let Conn::H2(c) = &conn {
            target.add_h2(c.clone()); // before the next in line looks
        }
        Ok(conn)
    }

    /// An HTTP/2 connection for `req`: one with a free stream (and, for a request with a
    /// body, no upload in flight that may have taken the send window), else a new one
    /// while there are fewer than [`MAX_H2`], else the least busy.
    async fn h2_conn(&self, target: &Arc<Target>, req: &Request<UpstreamBody>) -> Result<Conn, UpstreamError> {
        let with_body = !req.body().is_end_stream();
        if let Some(c) = target.pick_h2(with_body) {
            return Ok(Conn::H2(c));
        }
        if target.h2_count() >= MAX_H2 {
            if let Some(c) = target.least_busy_h2() {
                return Ok(Conn::H2(c));
            }
        }
        let _one = target.opening.lock().await;
        if let Some(c) = target.pick_h2(with_body) {
            return Ok(Conn::H2(c));
        }
        match Box::pin(self.connect(target)).await? {
            Conn::H2(c) => {
                target.add_h2(c.clone());
                Ok(Conn::H2(c))
            }
            h1 => {
                target.h2_offered(false);
                Ok(h1)
            }
        }
    }
}

/// The request again, when its kept-alive HTTP/1.1 connection failed it before any byte
/// of an answer arrived (the upstream closed the connection as the request came: the
/// keep-alive race) and sending it twice is harmless: `GET`, `HEAD`, `OPTIONS`, or a
/// `PUT`/`DELETE` whose body is held. Never a second time, never on a new connection
/// (whose failure is the upstream's answer), never for a fault of the request's own body.
pub(super) fn keepalive_race(
    reused: bool,
    before: u64,
    h1: &H1,
    error: &hyper::Error,
    replay: Option<&dyn Replay>,
    resent: Option<&'static str>,
) -> Option<Request<UpstreamBody>> {
    if !reused || before == 0 || h1.watch.read() != before || error.is_user() || resent.is_some() {
        return None;
    }
    let again = replay?.replay();
    matches!(
        *again.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::PUT | http::Method::DELETE
    )
    .then_some(again)
}

/// `res`, marked as the answer to a request sent a second time, for `reason`.
pub(super) fn marked(mut res: Response<Incoming>, resent: Option<&'static str>) -> Response<Incoming> {
    if let Some(reason) = resent {
        res.extensions_mut().insert(Resent(reason));
    }
    res
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
    H1(H1),
    H2(Arc<H2Conn>),
}
