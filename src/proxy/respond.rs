//! The answer as the client gets it (`response_filter`: the proxy's own errors as JSON,
//! CORS headers, the request counted) and its access log line (`logging`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Response, Uri};
use http_body_util::Either;
use hyper::body::{Body as _, Incoming};

use super::table::{Route, Snapshot};
use super::{access, error_response, Body, Proxy};
use crate::config::ProxySettings;
use crate::error::ProxyError;
use crate::inbound;

/// What the answer and the access log keep of one request, noted as it walks.
pub(super) struct Noted {
    start: Instant,
    method: Method,
    /// The access log's view of the request as received (a shared `Uri`, no copy) and
    /// its announced body length; `None` when the access log is off.
    logged: Option<(Uri, Option<u64>)>,
    /// The path, when normalising changed it (kept for the access log only).
    normalized: Option<String>,
    /// Set for a browser page of an allowed origin: its answers carry CORS headers.
    pub(super) cors: Option<HeaderValue>,
    /// Until the upstream's answer head was there; `None` when the proxy answered.
    upstream_ms: Option<f64>,
    /// The proxy's error code, when it answered itself.
    error: Option<&'static str>,
}

impl Noted {
    /// A request as it arrived.
    pub(super) fn new(settings: &ProxySettings, parts: &http::request::Parts, body: Option<&Incoming>) -> Noted {
        Noted {
            start: Instant::now(),
            method: parts.method.clone(),
            logged: settings.access_log.then(|| (parts.uri.clone(), body.and_then(|b| b.size_hint().exact()))),
            normalized: None,
            cors: None,
            upstream_ms: None,
            error: None,
        }
    }

    /// The path routing matched, when normalising changed it.
    pub(super) fn normalized(&mut self, path: &Option<String>) {
        if self.logged.is_some() {
            self.normalized.clone_from(path); // allocates only for a path normalising changed
        }
    }
}

impl Proxy {
    /// The answer as the client gets it: the proxy's own error as its JSON answer, CORS
    /// headers for an allowed page, the request counted (by its route, else as `none`).
    pub(super) fn response_filter(
        &self,
        route: Option<&Route>,
        result: Result<Response<Body>, ProxyError>,
        noted: &mut Noted,
    ) -> Response<Body> {
        let start = noted.start;
        noted.upstream_ms = (route.is_some() && result.is_ok()).then(|| access::millis(start.elapsed().as_secs_f64()));
        noted.error = result.as_ref().err().map(|e| e.code.as_str());
        let mut res = result.unwrap_or_else(|e| {
            tracing::debug!(code = e.code.as_str(), message = %e.message, "proxy error");
            error_response(e)
        });
        if let Some(origin) = &noted.cors {
            inbound::add_cors(res.headers_mut(), origin);
        }
        match route {
            Some(r) => {
                r.requests.inc(&noted.method, res.status());
                r.duration.observe(start.elapsed().as_secs_f64());
            }
            None => self
                .metrics
                .requests_total
                .with_label_values(&["none", crate::metrics::method_label(&noted.method), res.status().as_str()])
                .inc(),
        }
        res
    }
}

/// The access log line (`access_log`), written once the answer's body has been sent
/// (at once for an answer the proxy made).
pub(super) fn logging(noted: Noted, snap: &Arc<Snapshot>, routed: bool, client: SocketAddr, res: &mut Response<Body>) {
    let Some((uri, bytes_in)) = noted.logged else { return };
    let line = access::AccessLine {
        start: noted.start,
        method: noted.method,
        uri,
        normalized: noted.normalized,
        snap: snap.clone(),
        routed,
        client,
        status: res.status().as_u16(),
        upstream_ms: noted.upstream_ms,
        bytes_in,
        retried: res.extensions().get::<access::Retried>().map_or("none", |r| r.as_str()),
        error: noted.error,
    };
    match res.body_mut() {
        Either::Left(stream) => stream.log_at_end(line),
        Either::Right(made) => line.emit(made.size_hint().exact().unwrap_or(0)),
    }
}
