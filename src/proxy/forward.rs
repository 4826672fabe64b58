//! The routed request's way upstream: its body, its token, the send, and the one
//! resend after the upstream rejected the token.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body as _, Incoming};

use super::body::passthrough;
use super::credential::{choose_account, wait_for_token, with_valid_token};
use super::rewrite::{has_foreign_coding, rewrite_request, take_parts, upstream_body};
use super::table::{Route, RouteCredential, Snapshot};
use super::verdict::{classify_upstream_error, inspect_forbidden, quick_verdict, RetryCopy, Suspect};
use super::{access, bad_request, throttle, too_large, Body, Proxy, RETRY_BODY_LIMIT};
use crate::config::ProxySettings;
use crate::error::{ErrorCode, ProxyError};
use crate::token::accounts::Account;
use crate::token::TokenHandle;
use crate::upstream::{Affinity, Held, IdleBody, Replay, Resent, UpstreamBody};

impl Proxy {
    /// Forwards a routed request, phase by phase: the account it chooses, the route's
    /// pace, its body, its head as the upstream must see it with the token injected
    /// (`upstream_request_filter`), the send, and what the answer's status asks for
    /// (`upstream_response_filter`: a 429's pause, one resend after a rejected token).
    /// Takes the request's parts by reference (it moves them out only to send them), so
    /// this future holds no second copy.
    pub(super) async fn forward(
        &self,
        snap: &Snapshot,
        route: &Route,
        path: Option<String>,
        parts: &mut http::request::Parts,
        body: &mut Option<Incoming>,
        affinity: &Affinity,
    ) -> Result<Response<Body>, ProxyError> {
        let settings = &snap.settings;
        let chosen = choose_route_account(route, &snap.inbound, parts)?;
        self.pace(route, settings).await?;
        let mut held = affinity.hold();
        let (buffered, stream) = read_body(body, parts, settings).await?;
        let cred = route_token(route, chosen.as_deref());
        let generation = upstream_request_filter(cred, route, parts, path.as_deref(), settings).await?;
        let retry = retry_copy(cred, parts, buffered.as_ref());
        let req = Request::from_parts(take_parts(parts), watched(upstream_body(buffered, stream), settings));
        let res = self.send(settings, route, &mut held, req, retry.as_ref().map(|r| r as &dyn Replay)).await?;
        self.upstream_response_filter(settings, route, &mut held, res, retry, cred.zip(generation)).await
    }

    /// The route's `rate_limit` and any 429 pause: no wait (one atomic load) usually.
    async fn pace(&self, route: &Route, settings: &ProxySettings) -> Result<(), ProxyError> {
        let shared = self.shared.as_ref();
        if !route.pace.is_open(shared) {
            let deadline = Instant::now() + settings.token_wait;
            Box::pin(route.pace.wait_turn(&route.prefix, shared, deadline)).await?;
        }
        Ok(())
    }

    /// What the answer's status asks for: a 429 pauses the route (and may resend,
    /// `retry_429`); a 4xx that may say the token is dead is looked at ([`Proxy::recheck`]);
    /// anything else passes through. `cred`: the credential and the generation of the
    /// token the request carried.
    async fn upstream_response_filter(
        &self,
        settings: &ProxySettings,
        route: &Route,
        held: &mut Held,
        res: Response<Incoming>,
        retry: Option<RetryCopy>,
        cred: Option<(&TokenHandle, u64)>,
    ) -> Result<Response<Body>, ProxyError> {
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            return Box::pin(self.after_429(settings, route, held, res, retry, cred.map(|(c, _)| c))).await;
        }
        let Some((cred, generation)) = cred else {
            return Ok(passthrough(res, route));
        };
        let verdict = quick_verdict(&res);
        if verdict == Some(false) {
            return Ok(passthrough(res, route));
        }
        let suspect = Suspect { cred, generation, retry, res, verdict };
        Box::pin(self.recheck(settings, route, held, suspect)).await
    }

    /// A 4xx that may say the token is dead: renew it and resend the copy once.
    /// Boxed by its caller: rare, and its state inline would enlarge the future of
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
    pub(super) fn send<'a>(
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

/// An account credential's route: the account the request chooses.
fn choose_route_account(
    route: &Route,
    inbound: &crate::config::InboundSettings,
    parts: &mut http::request::Parts,
) -> Result<Option<Arc<Account>>, ProxyError> {
    match &route.credential {
        Some(RouteCredential::Accounts(set)) => choose_account(set, inbound, parts).map(Some),
        _ => Ok(None),
    }
}

/// The token the request carries: the route's credential's, or the chosen account's.
fn route_token<'a>(route: &'a Route, chosen: Option<&'a Account>) -> Option<&'a TokenHandle> {
    match (&route.credential, chosen) {
        (Some(RouteCredential::One(handle)), _) => Some(handle),
        (Some(RouteCredential::Accounts(_)), Some(account)) => Some(&account.handle),
        _ => None,
    }
}

/// The request body: refused when it is known to be too large or comes in a transfer
/// coding other than chunked; read whole when small enough to resend (its length
/// announced, at most [`RETRY_BODY_LIMIT`]), else streamed within `max_request_body`.
async fn read_body(
    body: &mut Option<Incoming>,
    parts: &http::request::Parts,
    settings: &ProxySettings,
) -> Result<(Option<Bytes>, Option<Limited<Incoming>>), ProxyError> {
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
    Ok(match hint.exact() {
        Some(0) => (Some(Bytes::new()), None),
        Some(n) if n <= RETRY_BODY_LIMIT => (Some(collect_small(body, settings.body_idle_timeout).await?), None),
        _ => (None, Some(Limited::new(body, max as usize))),
    })
}

/// The head as the upstream must see it ([`rewrite_request`]), with `cred`'s token: read
/// under one `ArcSwap` load (no reference count taken: the data-path threads would all
/// write the token's), waited for (bounded) only when no valid token exists. The
/// token's generation, to tell a rejection of it.
async fn upstream_request_filter(
    cred: Option<&TokenHandle>,
    route: &Route,
    parts: &mut http::request::Parts,
    path: Option<&str>,
    settings: &ProxySettings,
) -> Result<Option<u64>, ProxyError> {
    let Some(cred) = cred else {
        return rewrite_request(route, parts, path, None).map(|()| None);
    };
    if let Some(rewritten) =
        with_valid_token(cred, |t| rewrite_request(route, parts, path, Some(t)).map(|()| t.generation))
    {
        return rewritten.map(Some);
    }
    let t = Box::pin(wait_for_token(cred, settings)).await?;
    rewrite_request(route, parts, path, Some(&t))?;
    Ok(Some(t.generation))
}

/// What a resend needs, kept only for bodies small enough to resend: after a rejected
/// token (a credential's route), or for a route without one after a 429 or a connection
/// failure, for safe methods only ([`throttle::retry_copy`]).
fn retry_copy(cred: Option<&TokenHandle>, parts: &http::request::Parts, buffered: Option<&Bytes>) -> Option<RetryCopy> {
    match cred {
        Some(_) => buffered.map(|b| RetryCopy::of(parts, b)),
        None => throttle::retry_copy(parts, buffered),
    }
}

/// The request body as sent upstream: a stream is broken off after `body_idle_timeout`
/// without a byte.
pub(super) fn watched(body: Either<Full<Bytes>, Limited<Incoming>>, settings: &ProxySettings) -> UpstreamBody {
    match body {
        Either::Left(full) => Either::Left(full),
        Either::Right(stream) => Either::Right(IdleBody::new(stream, settings.body_idle_timeout)),
    }
}

/// A small request body (at most [`RETRY_BODY_LIMIT`], its length announced), read whole
/// so it can be resent; a client that stops sending it for `idle` is refused.
pub(super) async fn collect_small(body: Incoming, idle: std::time::Duration) -> Result<Bytes, ProxyError> {
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
