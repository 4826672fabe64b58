//! The routed request's way upstream: its body, its token, the send, and the one
//! resend after the upstream rejected the token.

use std::future::Future;
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
use crate::upstream::{Affinity, Held, IdleBody, Replay, Resent, UpstreamBody};

impl Proxy {
    /// Forwards a routed request: rate limit, body, token, rewrite, send, and one retry
    /// when the upstream rejects the token. Takes the request's parts by reference (it
    /// moves them out only to send them), so this future holds no second copy.
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
