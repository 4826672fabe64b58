//! The access log (`proxy.access_log`, on by default): one line per request, on target
//! [`TARGET`], when its answer has been sent — so `bytes_out` and `duration_ms` are
//! the whole answer's. Never a header value, never the query string.
//!
//! Cheap by construction: what a line needs is kept by value or by reference count
//! (the request's `Uri` shares hyper's buffer; the route is found again in the same
//! snapshot when the line is written), the line is written with tracing's structured
//! fields (no `format!`), and the writer behind it (see `cli`) is non-blocking.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Response};

use super::table::Snapshot;

/// The tracing target of access log lines, for filters (`RUST_LOG`) and log routers.
pub(crate) const TARGET: &str = "goto_auth_proxy::access";

/// Whether (and why) the request was sent upstream a second time. Put into a
/// response's extensions by whoever retried ([`mark_retried`]); no mark is `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retried {
    /// The upstream rejected the token; sent again with a renewed one.
    Token,
    /// The upstream answered `429`; sent again after its pause (`retry_429`).
    TooManyRequests,
    /// The upstream connection failed it before any byte of an answer; sent again on a
    /// new connection.
    Connection,
}

impl Retried {
    /// The `retried` field's word.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Retried::Token => "token",
            Retried::TooManyRequests => "429",
            Retried::Connection => "connection",
        }
    }
}

/// Marks `res` as the answer to a request sent upstream again, for `why`.
pub(crate) fn mark_retried<B>(res: &mut Response<B>, why: Retried) {
    res.extensions_mut().insert(why);
}

/// What one request's line needs until its answer has been sent.
pub(crate) struct AccessLine {
    pub(super) start: Instant,
    pub(super) method: Method,
    /// The request's target as received; only its path is logged.
    pub(super) uri: http::Uri,
    /// The normalised path, when normalising changed it (what the route matched).
    pub(super) normalized: Option<String>,
    /// The snapshot the request was routed in (to name its route and credential).
    pub(super) snap: Arc<Snapshot>,
    pub(super) routed: bool,
    pub(super) client: SocketAddr,
    pub(super) status: u16,
    /// Until the upstream's answer head was there; `None` when the proxy answered.
    pub(super) upstream_ms: Option<f64>,
    pub(super) bytes_in: Option<u64>,
    pub(super) retried: &'static str,
    /// The proxy's error code, when it answered itself.
    pub(super) error: Option<&'static str>,
}

impl AccessLine {
    /// Writes the line, now that `bytes_out` bytes of the answer's body were sent.
    pub(super) fn emit(self, bytes_out: u64) {
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        let path = self.normalized.as_deref().unwrap_or(self.uri.path());
        let route = if self.routed { self.snap.router.find(path) } else { None };
        // As forwarded: without the prefix where the route strips it (computed here, when
        // a line is written, not on the request's path). Key placeholders are logged as
        // the client wrote them.
        let forwarded = match route {
            Some(r) if r.strip_prefix => crate::route::strip_prefix(&r.prefix, path),
            _ => std::borrow::Cow::Borrowed(path),
        };
        tracing::info!(
            target: TARGET,
            method = %self.method,
            path = %forwarded,
            route = route.map(|r| r.prefix.as_str()),
            credential = route.and_then(|r| r.credential.as_ref()).map(|c| c.name()),
            status = self.status,
            duration_ms = millis(self.start.elapsed().as_secs_f64()),
            upstream_ms = self.upstream_ms,
            bytes_in = self.bytes_in,
            bytes_out,
            retried = %self.retried,
            error = self.error,
            client = %self.client,
        );
    }
}

/// Seconds as milliseconds with three decimals (a microsecond).
pub(super) fn millis(secs: f64) -> f64 {
    (secs * 1_000_000.0).round() / 1000.0
}
