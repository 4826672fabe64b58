//! The data path: route the request, inject the token, forward it on the pooled
//! upstream client, and retry once when the upstream rejects the token.
//!
//! Per request this does one `ArcSwap` load for the routes and one for the token; the
//! `Authorization` value is built once per token, never per request.
//!
//! The phases of a request, one file each (after pingora's request phases):
//! * [`table`] — the compiled route table (what a reload swaps).
//! * this file — admission, routing, the request's future: body, token, send, retry.
//! * [`rewrite`] — the head as the upstream must see it (pure).
//! * [`verdict`] — whether the upstream rejected the token, what a retry needs, what an
//!   upstream failure means.
//! * [`body`] — the answer streamed back.
//! * [`pace`] — the route's `rate_limit`, the pause after an upstream 429, the budget
//!   replicas share; [`throttle`] — what a 429 answer does to its request (`retry_429`).
//! * [`access`] — the access log line, written when the answer has been sent.

pub mod access;
mod admit;
mod body;
mod credential;
mod forward;
mod pace;
mod rewrite;
mod table;
mod throttle;
mod verdict;

pub use body::UpstreamStream;
pub use pace::{Shared, DEFAULT_PAUSE, MAX_PAUSE, PAUSE_POLL};
pub use rewrite::strip_hop_by_hop;
pub use table::{Route, RouteCredential, Snapshot};

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Incoming};

use crate::error::{ErrorCode, ProxyError};
use crate::inbound;
use crate::limit::InFlight;
use crate::metrics::Metrics;
use crate::server::ConnInfo;
use crate::upstream::{Affinity, Connector};
use admit::{admit_caller, overloaded, route_request};
use credential::with_valid_token;

/// Bodies up to this size are buffered so the request can be retried after a rejection.
pub const RETRY_BODY_LIMIT: u64 = 64 * 1024;

/// What the proxy answers with: the upstream's streamed body, or bytes it made.
pub type Body = Either<UpstreamStream, Full<Bytes>>;

// ===== the service =====

/// The data-path service shared by every connection.
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    connector: Connector,
    metrics: Metrics,
    /// Caps requests in flight (`max_concurrent_requests`, fixed at start).
    in_flight: InFlight,
    /// With `store = "redis"`: where routes' pace lives, shared by replicas.
    shared: Option<Shared>,
}

impl Proxy {
    /// A proxy serving `snapshot`, connecting upstream with `connector`.
    pub fn new(snapshot: Snapshot, connector: Connector, metrics: Metrics) -> Proxy {
        let in_flight = InFlight::new(snapshot.settings.max_concurrent_requests);
        Proxy { snapshot: ArcSwap::from_pointee(snapshot), connector, metrics, in_flight, shared: None }
    }

    /// Keeps every route's pace (`rate_limit`, 429 pauses) in `budget`, shared by the
    /// replicas (`store = "redis"`).
    pub fn with_shared_budget(mut self, budget: Arc<dyn crate::limit::SharedBudget>) -> Proxy {
        self.shared = Some(Shared::new(budget));
        self
    }

    /// Swaps in new routes and settings; requests in flight finish on the old ones.
    pub fn swap(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The current routes and settings.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Answers one request that came on `conn`; never fails (errors become the proxy's JSON
    /// answers).
    ///
    /// hyper moves this future for every request, so it is kept small: the request's
    /// parts are held once (an `async fn` would hold its parameters twice), everything
    /// that can be decided without waiting is done in plain functions, and the rare waits
    /// (rate limit, a token wait, a 403 body, a renewal) are boxed.
    pub fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnInfo<Affinity>>,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        let (mut parts, body) = req.into_parts();
        let mut body = Some(body);
        async move {
            let start = Instant::now();
            let snap = self.snapshot.load_full();
            let method = parts.method.clone();
            // The access log's view of the request as received (a shared `Uri`, no copy).
            let logged = snap
                .settings
                .access_log
                .then(|| (parts.uri.clone(), body.as_ref().and_then(|b| b.size_hint().exact())));
            let mut normalized = None;
            // Set for a browser page of an allowed origin: its answers carry CORS headers.
            let mut cors = None;
            let (route, result) = match self.in_flight.enter() {
                None => (None, Err(overloaded(&snap.settings))),
                Some(_slot) => match admit_caller(&snap, &parts, &conn) {
                    Err(e) => (None, Err(e)),
                    Ok(caller) => match inbound::preflight::<Full<Bytes>>(&caller, &parts.method, &parts.headers) {
                        Some(answer) => (None, Ok(answer.map(Either::Right))),
                        None => {
                            if let inbound::Caller::Cors(origin) = caller {
                                cors = Some(origin);
                            }
                            match route_request(&snap, &parts) {
                                Err((route, e)) => (route, Err(e)),
                                Ok((route, path)) => {
                                    if logged.is_some() {
                                        normalized.clone_from(&path); // allocates only for a path normalising changed
                                    }
                                    let forwarded =
                                        self.forward(&snap, route, path, &mut parts, &mut body, &conn.state);
                                    (Some(route), forwarded.await)
                                }
                            }
                        }
                    },
                },
            };
            let head_ms = (route.is_some() && result.is_ok()).then(|| access::millis(start.elapsed().as_secs_f64()));
            let error = result.as_ref().err().map(|e| e.code.as_str());
            let mut res = match result {
                Ok(res) => res,
                Err(e) => {
                    tracing::debug!(code = e.code.as_str(), message = %e.message, "proxy error");
                    error_response(e)
                }
            };
            if let Some(origin) = &cors {
                inbound::add_cors(res.headers_mut(), origin);
            }
            match route {
                Some(r) => {
                    r.requests.inc(&method, res.status());
                    r.duration.observe(start.elapsed().as_secs_f64());
                }
                None => self
                    .metrics
                    .requests_total
                    .with_label_values(&["none", crate::metrics::method_label(&method), res.status().as_str()])
                    .inc(),
            }
            if let Some((uri, bytes_in)) = logged {
                let line = access::AccessLine {
                    start,
                    method,
                    uri,
                    normalized,
                    snap: snap.clone(),
                    routed: route.is_some(),
                    client: conn.peer,
                    status: res.status().as_u16(),
                    upstream_ms: head_ms,
                    bytes_in,
                    retried: res.extensions().get::<access::Retried>().map_or("none", |r| r.as_str()),
                    error,
                };
                match res.body_mut() {
                    Either::Left(stream) => stream.log_at_end(line),
                    Either::Right(made) => line.emit(made.size_hint().exact().unwrap_or(0)),
                }
            }
            res
        }
    }
}

pub(super) fn bad_request(message: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorCode::BadRequest, message)
}

pub(super) fn too_large(max: u64) -> ProxyError {
    ProxyError::new(
        ErrorCode::BodyTooLarge,
        format!("the request body is larger than max_request_body ({})", bytesize::ByteSize(max).to_string_as(true)),
    )
}

/// A proxy-made error as a response of the data path's body type.
pub fn error_response(e: ProxyError) -> Response<Body> {
    e.into_response::<Full<Bytes>>().map(Either::Right)
}
