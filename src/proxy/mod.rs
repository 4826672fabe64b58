//! The data path: route the request, inject the token, forward it on the pooled
//! upstream client, and retry once when the upstream rejects the token.
//!
//! Per request this does one `ArcSwap` load for the routes and one for the token; the
//! `Authorization` value is built once per token, never per request.
//!
//! A request's phases, named after pingora's (`request_filter`, `upstream_peer`,
//! `upstream_request_filter`, `upstream_response_filter`, `response_filter`,
//! `logging`), are listed in order by [`Proxy::serve`] and [`Proxy::forward`]:
//! * [`table`] — the compiled route table (what a reload swaps).
//! * [`admit`] — admission and routing: all that is decided before anything is awaited.
//! * [`forward`] — the routed request's way upstream: account, pace, body, token, send,
//!   and the one resend after a rejected token; [`credential`] — the account a request
//!   chooses and the token read once.
//! * [`rewrite`] — the head as the upstream must see it (pure).
//! * [`verdict`] — whether the upstream rejected the token, what a retry needs, what an
//!   upstream failure means.
//! * [`body`] — the answer streamed back; [`respond`] — the answer as the client gets
//!   it, and its access log line ([`access`]).
//! * [`pace`] — the route's `rate_limit`, the pause after an upstream 429, the budget
//!   replicas share; [`throttle`] — what a 429 answer does to its request (`retry_429`).

pub mod access;
mod admit;
mod body;
mod credential;
mod forward;
mod pace;
mod respond;
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

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::error::{ErrorCode, ProxyError};
use crate::limit::InFlight;
use crate::metrics::Metrics;
use crate::server::ConnInfo;
use crate::upstream::{Affinity, Connector};
use admit::{admit, Admitted};
use credential::with_valid_token;
use respond::{logging, Noted};

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
    /// answers). One request's walk, its phases named as pingora names them:
    /// admission and routing ([`admit::admit`]: `request_filter`, `upstream_peer`), the
    /// way upstream and back ([`Proxy::forward`]), the answer as the client gets it
    /// ([`Proxy::response_filter`]) and the access log line ([`respond::logging`]).
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
            let snap = self.snapshot.load_full();
            let mut noted = Noted::new(&snap.settings, &parts, body.as_ref());
            let (route, result) = match admit(&self.in_flight, &snap, &parts, &conn, &mut noted) {
                Admitted::Refused(route, e) => (route, Err(e)),
                Admitted::Answered(res) => (None, Ok(res.map(Either::Right))),
                Admitted::Routed { route, path, slot: _slot } => {
                    let forwarded = self.forward(&snap, route, path, &mut parts, &mut body, &conn.state);
                    (Some(route), forwarded.await)
                }
            };
            let mut res = self.response_filter(route, result, &mut noted);
            logging(noted, &snap, route.is_some(), conn.peer, &mut res);
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
