//! The data path: route the request, inject the token, forward it on the pooled
//! upstream client, and retry once when the upstream rejects the token.
//!
//! Per request this does one `ArcSwap` load for the routes and one for the token; the
//! `Authorization` value is built once per token, never per request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body as _, Incoming};

use crate::config::{Config, InboundSettings, ProxySettings, RouteConfig};
use crate::error::{ErrorCode, ProxyError};
use crate::inbound;
use crate::limit::{InFlight, RateLimiter};
use crate::metrics::{Metrics, RequestCounters};
use crate::route::{self, Router};
use crate::server::ConnInfo;
use crate::token::{Credential, Token, Trigger};
use crate::upstream::{Affinity, Connector, Held, Target, UpstreamError};

/// Bodies up to this size are buffered so the request can be retried after a rejection.
pub const RETRY_BODY_LIMIT: u64 = 64 * 1024;

/// Largest 401/403 body read to decide whether the token was rejected.
const REJECTION_BODY_LIMIT: usize = 1024 * 1024;

/// What the proxy answers with: the upstream's streamed body, or bytes it made.
pub type Body = Either<UpstreamStream, Full<Bytes>>;

/// What the proxy sends upstream: a buffered (retryable) body or the client's stream.
pub type UpstreamBody = Either<Full<Bytes>, Limited<Incoming>>;

// ===== compiled routes =====

/// A route compiled at config load: everything per request is precomputed.
pub struct Route {
    /// The prefix, also the metrics label.
    pub prefix: String,
    /// Where requests go, with its connections.
    target: Arc<Target>,
    /// Upstream base path without a trailing slash (usually empty).
    base_path: String,
    /// `Host` sent upstream.
    host: HeaderValue,
    /// Token to inject; `None` passes the request through untouched.
    pub credential: Option<Arc<Credential>>,
    strip_prefix: bool,
    methods: Option<Vec<Method>>,
    duration: prometheus::Histogram,
    requests: RequestCounters,
    limiter: Option<RouteLimiter>,
    /// `upstream_errors{kind="aborted"}`: the upstream broke off a response body.
    aborted: prometheus::IntCounter,
}

/// A route's rate limit with its metric handles, resolved once.
struct RouteLimiter {
    limiter: RateLimiter,
    queue: prometheus::IntGauge,
    wait: prometheus::Histogram,
}

impl Route {
    fn compile(cfg: &RouteConfig, credentials: &HashMap<String, Arc<Credential>>, metrics: &Metrics) -> Route {
        let u = &cfg.upstream;
        let target = Arc::new(Target::new(u));
        Route {
            prefix: cfg.prefix.clone(),
            host: HeaderValue::from_str(target.authority().as_str()).unwrap_or(HeaderValue::from_static("invalid")),
            target,
            base_path: u.path().trim_end_matches('/').to_string(),
            credential: cfg.credential.as_ref().and_then(|c| credentials.get(c).cloned()),
            strip_prefix: cfg.strip_prefix,
            methods: cfg.methods.clone(),
            duration: metrics.request_duration.with_label_values(&[&cfg.prefix]),
            requests: RequestCounters::new(&metrics.requests_total, &cfg.prefix),
            limiter: cfg.rate_limit.map(|rate| RouteLimiter {
                limiter: RateLimiter::new(rate),
                queue: metrics.rate_limit_queue.with_label_values(&[&cfg.prefix]),
                wait: metrics.rate_limit_wait.with_label_values(&[&cfg.prefix]),
            }),
            aborted: metrics.upstream_errors.with_label_values(&[&cfg.prefix, "aborted"]),
        }
    }

    /// The upstream URL the route forwards to (for messages).
    pub fn upstream(&self) -> String {
        format!("{}{}", self.target.label, self.base_path)
    }
}

/// What a reload swaps: routes and the data-path settings.
pub struct Snapshot {
    /// Longest-prefix table.
    pub router: Router<Route>,
    /// Timeouts and limits.
    pub settings: ProxySettings,
    /// Who may send requests.
    pub inbound: InboundSettings,
}

impl Snapshot {
    /// Compiles the config's routes against the running credentials.
    pub fn compile(config: &Config, credentials: &HashMap<String, Arc<Credential>>, metrics: &Metrics) -> Snapshot {
        let router =
            Router::new(config.routes.iter().map(|r| (r.prefix.clone(), Route::compile(r, credentials, metrics))));
        Snapshot { router, settings: config.proxy.clone(), inbound: config.inbound.clone() }
    }
}

// ===== the service =====

/// The data-path service shared by every connection.
pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    connector: Connector,
    metrics: Metrics,
    /// Caps requests in flight (`max_concurrent_requests`, fixed at start).
    in_flight: InFlight,
}

impl Proxy {
    /// A proxy serving `snapshot`, connecting upstream with `connector`.
    pub fn new(snapshot: Snapshot, connector: Connector, metrics: Metrics) -> Proxy {
        let in_flight = InFlight::new(snapshot.settings.max_concurrent_requests);
        Proxy { snapshot: ArcSwap::from_pointee(snapshot), connector, metrics, in_flight }
    }

    /// Swaps in new routes and settings; requests in flight finish on the old ones.
    pub fn swap(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The current routes and settings.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Answers one request that came on `conn`; never fails (errors become SPEC's JSON
    /// answers).
    ///
    /// hyper moves this future for every request, so it is kept small: the request's
    /// parts are held once (an `async fn` would hold its parameters twice), everything
    /// that can be decided without waiting is done in plain functions, and the rare waits
    /// (rate limit, a token wait, a 403 body, a renewal) are boxed.
    pub fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        let (mut parts, body) = req.into_parts();
        let mut body = Some(body);
        async move {
            let start = Instant::now();
            let snap = self.snapshot.load_full();
            let method = parts.method.clone();
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
                                    let forwarded =
                                        self.forward(&snap, route, path, &mut parts, &mut body, &conn.upstream);
                                    (Some(route), forwarded.await)
                                }
                            }
                        }
                    },
                },
            };
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
        if let Some(l) = &route.limiter {
            let Some(wait) = l.limiter.reserve(Instant::now(), settings.token_wait) else {
                return Err(ProxyError::new(
                    ErrorCode::RateLimited,
                    format!("{} is limited to its rate_limit and its queue is full; retry later", route.prefix),
                ));
            };
            if !wait.is_zero() {
                l.queue.inc();
                Box::pin(tokio::time::sleep(wait)).await;
                l.queue.dec();
            }
            l.wait.observe(wait.as_secs_f64());
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
            Some(n) if n <= RETRY_BODY_LIMIT => match Limited::new(body, max as usize).collect().await {
                Ok(c) => (Some(c.to_bytes()), None),
                Err(_) => return Err(bad_request("the request body ended early")),
            },
            _ => (None, Some(Limited::new(body, max as usize))),
        };

        // Token: the head is rewritten under one `ArcSwap` load (no reference count taken:
        // the data-path threads would all write the token's); wait (bounded) only when no
        // valid token exists.
        let Some(cred) = route.credential.as_ref() else {
            rewrite_request(route, parts, path.as_deref(), None)?;
            let req = Request::from_parts(take_parts(parts), upstream_body(buffered, stream));
            return self.send(settings, route, &mut held, req).await.map(|r| passthrough(r, route));
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
        let req = Request::from_parts(take_parts(parts), upstream_body(buffered, stream));
        let res = self.send(settings, route, &mut held, req).await?;
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
            None => inspect_forbidden(res).await?,
        };
        if !rejected {
            return Ok(res);
        }

        tracing::info!(credential = %cred.name(), route = %route.prefix, status = res.status().as_u16(), "upstream rejected the token; renewing");
        let renewed = cred.refresh(Trigger::Rejected(generation)).await;
        let (Some(retry), Ok(fresh)) = (retry, renewed) else {
            return Ok(res); // not retryable, or the renewal failed: the client sees GoTo's answer
        };
        self.metrics.retries.with_label_values(&[&route.prefix]).inc();
        let res = self.send(settings, route, held, retry.into_request(fresh.bearer())).await?;
        // A token issued for this very rejection, refused too: the request is refused for
        // another reason, and later rejections of that token must not renew again.
        let (res, rejected_again) = match quick_verdict(&res) {
            Some(rejected) => (passthrough(res, route), rejected),
            None => inspect_forbidden(res).await?,
        };
        if rejected_again {
            cred.rejected_again(fresh.generation);
        }
        Ok(res)
    }

    /// Sends `req` upstream on `held`'s connections; the answer's head, or SPEC's error
    /// (counted) when there is none within `request_timeout`. Not an `async fn`: the
    /// request is handed to the connection right away, and the returned future is only
    /// the wait (hyper moves it for every request, so it is kept small).
    fn send<'a>(
        &'a self,
        settings: &'a ProxySettings,
        route: &'a Route,
        held: &'a mut Held,
        req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, ProxyError>> + Send + 'a {
        let deadline = Instant::now() + settings.request_timeout;
        held.send(&self.connector, &route.target, deadline, req).map(move |sent| match sent {
            Some(Ok(res)) => Ok(res),
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

/// An answer that may be a rejection of the token it was sent with.
struct Suspect<'a> {
    cred: &'a Credential,
    generation: u64,
    retry: Option<RetryCopy>,
    res: Response<Incoming>,
    /// [`quick_verdict`] on it: `Some(true)`, or `None` for a 403 whose body decides.
    verdict: Option<bool>,
}

/// What resending a request needs: a retry is rare, a copy is made for every small
/// request. The headers are reference-counted clones in one `Vec` (one allocation; an
/// inline array would make every request's future kilobytes larger, and that future is
/// moved for every request).
struct RetryCopy {
    method: Method,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl RetryCopy {
    fn of(parts: &http::request::Parts, body: &Bytes) -> RetryCopy {
        let headers = parts.headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        RetryCopy { method: parts.method.clone(), uri: parts.uri.clone(), headers, body: body.clone() }
    }

    /// The request again, with a fresh token.
    fn into_request(self, bearer: &HeaderValue) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Left(Full::new(self.body)));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        let headers = req.headers_mut();
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        headers.insert(header::AUTHORIZATION, bearer.clone());
        req
    }
}

/// Admission: the client's address and key, then who is asking (`Host`, and for a
/// browser its origin): before routing and before a token is touched.
fn admit_caller(snap: &Snapshot, parts: &http::request::Parts, conn: &ConnInfo) -> Result<inbound::Caller, ProxyError> {
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

/// Moves the parts out for sending, leaving empty ones (no allocation).
fn take_parts(parts: &mut http::request::Parts) -> http::request::Parts {
    std::mem::replace(parts, Request::new(()).into_parts().0)
}

/// The request head as the upstream must see it: its path (prefix stripped, keys
/// substituted), no hop-by-hop headers or inbound key, the upstream's `Host`, and the
/// token (`None`: a pass-through route).
fn rewrite_request(
    route: &Route,
    parts: &mut http::request::Parts,
    normalized: Option<&str>,
    token: Option<&Token>,
) -> Result<(), ProxyError> {
    let path = normalized.unwrap_or(parts.uri.path());
    let fwd_path: Cow<str> =
        if route.strip_prefix { route::strip_prefix(&route.prefix, path) } else { Cow::Borrowed(path) };
    let fwd_path: Cow<str> = match token {
        Some(t) if route::has_key_placeholder(&fwd_path) => {
            Cow::Owned(route::substitute_keys(&fwd_path, t.organizer_key.as_deref(), t.account_key.as_deref()))
        }
        _ => fwd_path,
    };
    let uri = upstream_uri(route, &fwd_path, &parts.uri)?;
    strip_headers(&mut parts.headers, &NOT_FORWARDED);
    parts.headers.insert(header::HOST, route.host.clone());
    if let Some(t) = token {
        parts.headers.insert(header::AUTHORIZATION, t.bearer().clone());
    }
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    Ok(())
}

fn overloaded(settings: &ProxySettings) -> ProxyError {
    ProxyError::new(
        ErrorCode::Overloaded,
        format!("{} requests are in flight (max_concurrent_requests); retry shortly", settings.max_concurrent_requests),
    )
}

fn upstream_body(buffered: Option<Bytes>, stream: Option<Limited<Incoming>>) -> UpstreamBody {
    match (buffered, stream) {
        (_, Some(s)) => Either::Right(s),
        (Some(b), None) => Either::Left(Full::new(b)),
        (None, None) => Either::Left(Full::new(Bytes::new())),
    }
}

/// `f` on the credential's token if it is valid now (the per-request path: one
/// `ArcSwap` load, no reference count taken); `None` when there is none.
fn with_valid_token<R>(cred: &Credential, f: impl FnOnce(&Token) -> R) -> Option<R> {
    cred.load().as_ref().filter(|t| t.is_valid_at(SystemTime::now())).map(|t| f(t))
}

/// Waits (bounded by `token_wait`) for a valid token; only while none is.
async fn wait_for_token(cred: &Credential, settings: &ProxySettings) -> Result<Arc<Token>, ProxyError> {
    cred.wait_valid(settings.token_wait).await.map_err(|why| ProxyError::new(ErrorCode::TokenUnavailable, why))
}

/// The upstream request target (origin-form: path and query). When the forwarded path
/// is the client's own (the usual case), the client's path-and-query is reused as is.
fn upstream_uri(route: &Route, path: &str, inbound: &Uri) -> Result<Uri, ProxyError> {
    let reuse = route.base_path.is_empty() && path == inbound.path();
    let pq = match inbound.path_and_query() {
        Some(pq) if reuse => pq.clone(),
        _ => build_path_and_query(&route.base_path, path, inbound.query())?,
    };
    Ok(Uri::from(pq))
}

fn build_path_and_query(base_path: &str, path: &str, query: Option<&str>) -> Result<PathAndQuery, ProxyError> {
    let mut pq = String::with_capacity(base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    pq.push_str(base_path);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    PathAndQuery::try_from(pq).map_err(|_| bad_request("the request path cannot be forwarded"))
}

/// Headers never forwarded: first those that describe one hop (RFC 9110 §7.6.1) and
/// `Transfer-Encoding` (hyper frames each hop's body itself), then this proxy's own
/// inbound key, which only requests lose.
const NOT_FORWARDED: [HeaderName; HOP_BY_HOP + 1] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
    crate::INBOUND_KEY_HEADER,
];
/// How many of [`NOT_FORWARDED`] are hop-by-hop.
const HOP_BY_HOP: usize = 9;

/// Removes hop-by-hop headers, including those any `Connection` header names (a
/// request may carry several `Connection` lines; each counts).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_headers(headers, &NOT_FORWARDED[..HOP_BY_HOP]);
}

/// Removes `names` (`Connection` first) and what `Connection` names.
///
/// Runs twice per request (request and response), so it looks first: one pass over the
/// names (usually finding nothing), then removes only what is there.
#[inline(always)]
fn strip_headers(headers: &mut HeaderMap, names: &[HeaderName]) {
    debug_assert!(names.len() <= 16 && names[0] == header::CONNECTION);
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = names.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Names listed in `Connection`; `close` and `keep-alive` need no lookup.
        let listed: smallvec::SmallVec<[HeaderValue; 2]> =
            headers.get_all(header::CONNECTION).iter().cloned().collect();
        for value in &listed {
            for token in value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.is_empty() || token.eq_ignore_ascii_case(b"close") || token.eq_ignore_ascii_case(b"keep-alive")
                {
                    continue;
                }
                // A name that is not a valid header name matches nothing.
                if let Ok(name) = std::str::from_utf8(token) {
                    headers.remove(name);
                }
            }
        }
    }
    for (i, h) in names.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

fn passthrough(mut res: Response<Incoming>, route: &Route) -> Response<Body> {
    strip_hop_by_hop(res.headers_mut());
    let aborted = route.aborted.clone();
    res.map(|inner| Either::Left(UpstreamStream { inner, aborted: Some(aborted) }))
}

/// The upstream's response body streamed to the client. When the upstream breaks off
/// mid-body the error reaches hyper, which aborts the client's connection (the client
/// sees a truncated answer, never a hang), and the route's `aborted` counter counts it.
pub struct UpstreamStream {
    inner: Incoming,
    /// Taken on the first error, so one broken body counts once.
    aborted: Option<prometheus::IntCounter>,
}

impl hyper::body::Body for UpstreamStream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(e))) = &polled {
            if let Some(c) = self.aborted.take() {
                c.inc();
                tracing::warn!(error = %e, "upstream broke off the response body");
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the upstream rejected the token, when the head alone tells (every answer but
/// a 403, whose body must be read: see [`inspect_forbidden`]).
fn quick_verdict(res: &Response<Incoming>) -> Option<bool> {
    match res.status() {
        // Success and server errors never mean a rejected token: no header lookup.
        status if !status.is_client_error() => Some(false),
        _ if www_invalid_token(res.headers()) => Some(true),
        StatusCode::FORBIDDEN => None,
        status => Some(status == StatusCode::UNAUTHORIZED),
    }
}

fn www_invalid_token(headers: &HeaderMap) -> bool {
    headers.get_all(header::WWW_AUTHENTICATE).iter().any(|v| contains(v.as_bytes(), b"invalid_token"))
}

/// Reads enough of a 403 whose head did not decide ([`quick_verdict`]) to tell a
/// rejected token (`InvalidToken`) from a real permission error.
async fn inspect_forbidden(res: Response<Incoming>) -> Result<(Response<Body>, bool), ProxyError> {
    let (mut parts, body) = res.into_parts();
    let bytes = match Limited::new(body, REJECTION_BODY_LIMIT).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return Err(ProxyError::new(
                ErrorCode::UpstreamUnreachable,
                format!("reading the upstream's 403 answer failed: {e}"),
            ))
        }
    };
    let rejected = contains(&bytes, b"InvalidToken") || contains(&bytes, b"invalid_token");
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok((Response::from_parts(parts, Either::Right(Full::new(bytes))), rejected))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a request's `Transfer-Encoding` names a coding other than `chunked` (which
/// hyper decodes; any other would be dropped when the header is, so it is refused).
fn has_foreign_coding(headers: &HeaderMap) -> bool {
    headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii).any(|c| !c.eq_ignore_ascii_case(b"chunked"))
    })
}

/// The upstream metric kind (`None`: the client's fault, not the upstream's) and the
/// error answered.
fn classify_upstream_error(e: &UpstreamError, route: &Route, max: u64) -> (Option<&'static str>, ProxyError) {
    let hyper_error = match e {
        UpstreamError::Connect { .. } => {
            return (Some("connect"), ProxyError::new(ErrorCode::UpstreamUnreachable, e.to_string()));
        }
        UpstreamError::Http(h) => h,
    };
    let mut detail = hyper_error.to_string();
    let mut source = std::error::Error::source(hyper_error);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return (Some("body_too_large"), too_large(max));
        }
        // The body sent upstream is the client's: an error reading it is the client's
        // framing (a malformed chunk, a body cut short), not the upstream's.
        if hyper_error.is_user() && s.is::<hyper::Error>() {
            return (None, bad_request(format!("the request body is malformed: {s}")));
        }
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    (
        Some("reset"),
        ProxyError::new(ErrorCode::UpstreamUnreachable, format!("connection to {} failed: {detail}", route.upstream())),
    )
}

fn bad_request(message: impl Into<String>) -> ProxyError {
    ProxyError::new(ErrorCode::BadRequest, message)
}

fn too_large(max: u64) -> ProxyError {
    ProxyError::new(
        ErrorCode::BodyTooLarge,
        format!("the request body is larger than max_request_body ({})", bytesize::ByteSize(max).to_string_as(true)),
    )
}

/// A proxy-made error as a response of the data path's body type.
pub fn error_response(e: ProxyError) -> Response<Body> {
    e.into_response::<Full<Bytes>>().map(Either::Right)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_removed_including_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn every_connection_line_counts() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-second"));
        h.insert("x-second", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn connection_tokens_are_case_insensitive_and_framing_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive, X-Private ,,"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn nothing_hop_by_hop_leaves_headers_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("x"));
        h.append(header::ACCEPT, HeaderValue::from_static("a"));
        h.append(header::ACCEPT, HeaderValue::from_static("b"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn an_invalid_connection_token_matches_nothing() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("bad name, x-a"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-b"]);
    }

    #[test]
    fn only_chunked_is_a_supported_coding() {
        let te = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.append(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
            h
        };
        assert!(!has_foreign_coding(&HeaderMap::new()));
        assert!(!has_foreign_coding(&te("chunked")));
        assert!(!has_foreign_coding(&te("Chunked")));
        assert!(has_foreign_coding(&te("gzip, chunked")));
        assert!(has_foreign_coding(&te("gzip")));
        let mut two = te("gzip");
        two.append(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(has_foreign_coding(&two));
    }

    #[test]
    fn contains_finds_needle() {
        assert!(contains(br#"{"int_err_code":"InvalidToken"}"#, b"InvalidToken"));
        assert!(!contains(br#"{"int_err_code":"NoPermission"}"#, b"InvalidToken"));
        assert!(!contains(b"", b"x"));
    }
}
