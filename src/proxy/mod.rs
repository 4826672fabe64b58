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
mod body;
mod pace;
mod rewrite;
mod table;
mod throttle;
mod verdict;

pub use body::UpstreamStream;
pub use pace::{Shared, DEFAULT_PAUSE, MAX_PAUSE, PAUSE_POLL};
pub use rewrite::strip_hop_by_hop;
pub use table::{Route, RouteCredential, Snapshot};

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body as _, Incoming};

use crate::config::ProxySettings;
use crate::error::{ErrorCode, ProxyError};
use crate::inbound;
use crate::limit::InFlight;
use crate::metrics::Metrics;
use crate::route;
use crate::server::ConnInfo;
use crate::token::accounts::{Account, AccountSet, NoAccount};
use crate::token::{Token, TokenHandle};
use crate::upstream::{Affinity, Connector, Held, IdleBody, Replay, Resent, UpstreamBody};
use body::passthrough;
use rewrite::{has_foreign_coding, rewrite_request, take_parts, upstream_body};
use verdict::{classify_upstream_error, inspect_forbidden, quick_verdict, RetryCopy, Suspect};

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

    /// Forwards a routed request: rate limit, body, token, rewrite, send, and one retry
    /// when the upstream rejects the token. Takes the request's parts by reference (it
    /// moves them out only to send them), so this future holds no second copy.
    async fn forward(
        &self,
        snap: &Snapshot,
        route: &Route,
        path: Option<String>,
        parts: &mut http::request::Parts,
        body: &mut Option<Incoming>,
        affinity: &Affinity,
    ) -> Result<Response<Body>, ProxyError> {
        let settings = &snap.settings;
        // An account credential's route: the request chooses the account first.
        let chosen = match &route.credential {
            Some(RouteCredential::Accounts(set)) => Some(choose_account(set, &snap.inbound, parts)?),
            _ => None,
        };
        // The route's `rate_limit` and any 429 pause: no wait (one atomic load) usually.
        let shared = self.shared.as_ref();
        if !route.pace.is_open(shared) {
            let deadline = Instant::now() + settings.token_wait;
            Box::pin(route.pace.wait_turn(&route.prefix, shared, deadline)).await?;
        }
        let mut held = affinity.hold();

        // Body: refuse what is known to be too large; buffer what is small enough to retry.
        let max = settings.max_request_body;
        let Some(body) = body.take() else {
            unreachable!("a request's body is taken once");
        };
        let hint = body.size_hint();
        if hint.lower() > max {
            return Err(too_large(max));
        }
        // Only a body of unknown length can have a transfer coding: no lookup otherwise.
        if hint.exact().is_none() && has_foreign_coding(&parts.headers) {
            return Err(ProxyError::new(
                ErrorCode::UnsupportedTransferCoding,
                "only the chunked transfer coding is supported; send the body as it is (Content-Encoding is forwarded untouched)",
            ));
        }
        let (buffered, stream): (Option<Bytes>, Option<Limited<Incoming>>) = match hint.exact() {
            Some(0) => (Some(Bytes::new()), None),
            Some(n) if n <= RETRY_BODY_LIMIT => (Some(collect_small(body, settings.body_idle_timeout).await?), None),
            _ => (None, Some(Limited::new(body, max as usize))),
        };

        // Token: the head is rewritten under one `ArcSwap` load (no reference count taken:
        // the data-path threads would all write the token's); wait (bounded) only when no
        // valid token exists.
        let cred = match (&route.credential, &chosen) {
            (Some(RouteCredential::One(handle)), _) => Some(handle),
            (Some(RouteCredential::Accounts(_)), Some(account)) => Some(&account.handle),
            _ => None,
        };
        let Some(cred) = cred else {
            rewrite_request(route, parts, path.as_deref(), None)?;
            let retry = throttle::retry_copy(parts, buffered.as_ref());
            let req = Request::from_parts(take_parts(parts), watched(upstream_body(buffered, stream), settings));
            let replay = retry.as_ref().map(|r| r as &dyn Replay);
            let res = self.send(settings, route, &mut held, req, replay).await?;
            if res.status() == StatusCode::TOO_MANY_REQUESTS {
                return Box::pin(self.after_429(settings, route, &mut held, res, retry, None)).await;
            }
            return Ok(passthrough(res, route));
        };
        let current =
            with_valid_token(cred, |t| rewrite_request(route, parts, path.as_deref(), Some(t)).map(|()| t.generation));
        let generation = match current {
            Some(rewritten) => rewritten?,
            None => {
                let t = Box::pin(wait_for_token(cred, settings)).await?;
                rewrite_request(route, parts, path.as_deref(), Some(&t))?;
                t.generation
            }
        };

        // Keep what a retry needs: only for bodies small enough to resend.
        let retry = buffered.as_ref().map(|b| RetryCopy::of(parts, b));
        let req = Request::from_parts(take_parts(parts), watched(upstream_body(buffered, stream), settings));
        let res = self.send(settings, route, &mut held, req, retry.as_ref().map(|r| r as &dyn Replay)).await?;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            return Box::pin(self.after_429(settings, route, &mut held, res, retry, Some(cred))).await;
        }
        let verdict = quick_verdict(&res);
        if verdict == Some(false) {
            return Ok(passthrough(res, route));
        }
        let suspect = Suspect { cred, generation, retry, res, verdict };
        Box::pin(self.recheck(settings, route, &mut held, suspect)).await
    }

    /// A 4xx that may say the token is dead: renew it and resend the copy once.
    /// Boxed by `forward`: rare, and its state inline would enlarge the future of
    /// every request (hyper moves that future once per request).
    async fn recheck(
        &self,
        settings: &ProxySettings,
        route: &Route,
        held: &mut Held,
        suspect: Suspect<'_>,
    ) -> Result<Response<Body>, ProxyError> {
        let Suspect { cred, generation, retry, res, verdict } = suspect;
        let (res, rejected) = match verdict {
            Some(rejected) => (passthrough(res, route), rejected),
            None => inspect_forbidden(res, route, settings.request_timeout).await?,
        };
        if !rejected {
            return Ok(res);
        }

        tracing::info!(credential = %cred.name(), route = %route.prefix, status = res.status().as_u16(), "upstream rejected the token; renewing");
        // The renewal runs on the credential's refresh loop, never on this thread.
        let renewed = cred.rejected(generation).await;
        let (Some(retry), Ok(fresh)) = (retry, renewed) else {
            return Ok(res); // not retryable, or the renewal failed: the client sees GoTo's answer
        };
        // The rejected answer is dropped, whatever its size; a connection still carrying
        // its unread body is let go, so the retry never waits behind it.
        if !res.body().is_end_stream() {
            held.let_go(&route.target);
        }
        drop(res);
        self.metrics.retries.with_label_values(&[&route.prefix]).inc();
        let res = self.send(settings, route, held, retry.into_request(fresh.bearer()), None).await?;
        // A token issued for this very rejection, refused too: the request is refused for
        // another reason, and later rejections of that token must not renew again.
        let (res, rejected_again) = match quick_verdict(&res) {
            Some(rejected) => (passthrough(res, route), rejected),
            None => inspect_forbidden(res, route, settings.request_timeout).await?,
        };
        if rejected_again {
            cred.rejected_again(fresh.generation);
        }
        let mut res = res;
        access::mark_retried(&mut res, access::Retried::Token);
        Ok(res)
    }

    /// Sends `req` upstream on `held`'s connections; the answer's head, or the proxy's error
    /// (counted) when there is none within `request_timeout`. Not an `async fn`: the
    /// request is handed to the connection right away, and the returned future is only
    /// the wait (hyper moves it for every request, so it is kept small).
    fn send<'a>(
        &'a self,
        settings: &'a ProxySettings,
        route: &'a Route,
        held: &'a mut Held,
        req: Request<UpstreamBody>,
        replay: Option<&'a dyn Replay>,
    ) -> impl Future<Output = Result<Response<Incoming>, ProxyError>> + Send + 'a {
        let deadline = Instant::now() + settings.request_timeout;
        held.send(&self.connector, &route.target, deadline, req, replay).map(move |sent| match sent {
            Some(Ok(mut res)) => {
                if let Some(Resent(reason)) = res.extensions().get::<Resent>().copied() {
                    self.metrics.upstream_retries.with_label_values(&[&route.prefix, reason]).inc();
                    access::mark_retried(&mut res, access::Retried::Connection);
                }
                Ok(res)
            }
            None => {
                self.metrics.upstream_errors.with_label_values(&[&route.prefix, "timeout"]).inc();
                Err(ProxyError::new(
                    ErrorCode::UpstreamTimeout,
                    format!(
                        "{} did not answer within {}",
                        route.upstream(),
                        humantime::format_duration(settings.request_timeout)
                    ),
                ))
            }
            Some(Err(e)) => {
                let (kind, err) = classify_upstream_error(&e, route, settings.max_request_body);
                // A client's own fault (a malformed body) is not counted against the upstream.
                if let Some(kind) = kind {
                    self.metrics.upstream_errors.with_label_values(&[&route.prefix, kind]).inc();
                }
                Err(err)
            }
        })
    }
}

/// The request body as sent upstream: a stream is broken off after `body_idle_timeout`
/// without a byte.
fn watched(body: Either<Full<Bytes>, Limited<Incoming>>, settings: &ProxySettings) -> UpstreamBody {
    match body {
        Either::Left(full) => Either::Left(full),
        Either::Right(stream) => Either::Right(IdleBody::new(stream, settings.body_idle_timeout)),
    }
}

/// A small request body (at most [`RETRY_BODY_LIMIT`], its length announced), read whole
/// so it can be resent; a client that stops sending it for `idle` is refused.
async fn collect_small(body: Incoming, idle: std::time::Duration) -> Result<Bytes, ProxyError> {
    match IdleBody::new(body, idle).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => match e.downcast_ref::<crate::upstream::BodyIdle>() {
            Some(stalled) => {
                tracing::warn!(error = %stalled, "request body broken off");
                Err(bad_request(stalled.to_string()))
            }
            None => Err(bad_request("the request body ended early")),
        },
    }
}

/// Admission: the client's address and key, then who is asking (`Host`, and for a
/// browser its origin): before routing and before a token is touched.
fn admit_caller(
    snap: &Snapshot,
    parts: &http::request::Parts,
    conn: &ConnInfo<Affinity>,
) -> Result<inbound::Caller, ProxyError> {
    inbound::admit(&snap.inbound, conn.peer.ip(), &parts.headers)?;
    inbound::check_caller(&snap.inbound, conn.local, &parts.headers)
}

/// Request-target checks, routing and the route's method list: all that is decided
/// before anything is awaited. The route and, when normalising changed it, the path; an
/// error names the route when there is one (for its metrics).
fn route_request<'s>(
    snap: &'s Snapshot,
    parts: &http::request::Parts,
) -> Result<(&'s Route, Option<String>), Refused<'s>> {
    if parts.method == Method::CONNECT {
        return Err((None, bad_request("CONNECT is refused: this proxy only forwards to its configured upstreams")));
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        return Err((
            None,
            bad_request("absolute-form request targets are refused: send the path only, e.g. `GET /admin/rest/v1/me`"),
        ));
    }
    let path = route::normalize_path(parts.uri.path()).map_err(|e| (None, bad_request(e.to_string())))?;
    let Some(route) = snap.router.find(&path) else {
        return Err((None, ProxyError::new(ErrorCode::NoRoute, format!("no route matches {path}"))));
    };
    if let Some(methods) = &route.methods {
        if !methods.contains(&parts.method) {
            let allowed: Vec<&str> = methods.iter().map(Method::as_str).collect();
            let message =
                format!("{} is not allowed on {} (allowed: {})", parts.method, route.prefix, allowed.join(", "));
            return Err((Some(route), ProxyError::new(ErrorCode::MethodNotAllowed, message)));
        }
    }
    // The normalised path borrows nothing from the request when it is unchanged.
    let path = match path {
        Cow::Borrowed(_) => None,
        Cow::Owned(p) => Some(p),
    };
    Ok((route, path))
}

/// A request refused before forwarding, with its route when it had one (for metrics).
type Refused<'s> = (Option<&'s Route>, ProxyError);

fn overloaded(settings: &ProxySettings) -> ProxyError {
    ProxyError::new(
        ErrorCode::Overloaded,
        format!("{} requests are in flight (max_concurrent_requests); retry shortly", settings.max_concurrent_requests),
    )
}

/// The header that chooses an account of an account credential (removed before forwarding).
const ACCOUNT_HEADER: &str = "x-goto-account";

/// The account a request to an account credential's route uses ("Many accounts"). An
/// empty `X-GoTo-Account` chooses none, as if absent: Postman sends an unset variable so.
fn choose_account(
    set: &AccountSet,
    inbound: &crate::config::InboundSettings,
    parts: &mut http::request::Parts,
) -> Result<Arc<Account>, ProxyError> {
    let header = parts.headers.remove(ACCOUNT_HEADER).filter(|v| !v.is_empty());
    let named = match &header {
        Some(v) => Some(v.to_str().map_err(|_| {
            ProxyError::new(ErrorCode::UnknownAccount, "X-GoTo-Account names no account of this credential")
        })?),
        None => None,
    };
    let chosen = set.choose(named, parts.uri.path(), parts.uri.query()).map_err(|why| match why {
        NoAccount::Unknown => ProxyError::new(
            ErrorCode::UnknownAccount,
            format!("X-GoTo-Account names no account of credential {:?} (`goto-auth-proxy accounts` lists them)", set.name()),
        ),
        NoAccount::Required => ProxyError::new(
            ErrorCode::AccountRequired,
            format!(
                "credential {:?} holds many accounts: choose one with the X-GoTo-Account header (a name, email, organizer or account key), or set default_account",
                set.name()
            ),
        ),
    })?;
    // A client whose inbound key is limited to some accounts uses those only, however
    // the account was chosen (a default one included).
    if let Some(allowed) = inbound::key_accounts(inbound, &parts.headers) {
        if !allowed.iter().any(|a| *a == chosen.name) {
            return Err(ProxyError::new(ErrorCode::Forbidden, "this client's inbound key may not use that account"));
        }
    }
    Ok(chosen)
}

/// `f` on the credential's token if it is valid now (the per-request path: one
/// `ArcSwap` load, no reference count taken); `None` when there is none.
fn with_valid_token<R>(cred: &TokenHandle, f: impl FnOnce(&Token) -> R) -> Option<R> {
    cred.load().as_ref().filter(|t| t.is_valid_at(SystemTime::now())).map(|t| f(t))
}

/// Waits (bounded by `token_wait`) for a valid token; only while none is.
async fn wait_for_token(cred: &TokenHandle, settings: &ProxySettings) -> Result<Arc<Token>, ProxyError> {
    cred.wait_valid(settings.token_wait).await.map_err(|why| ProxyError::new(ErrorCode::TokenUnavailable, why))
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
