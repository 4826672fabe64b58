//! What an upstream `429` does to the request that got it: the route
//! pauses for the answer's `Retry-After` ([`super::pace`]); with `retry_429 = true` a
//! `GET`, `HEAD` or `OPTIONS` is sent again once that pause has passed, if that is within
//! `token_wait`; otherwise GoTo's 429 passes through as it came. A `POST`, `PUT`, `PATCH`
//! or `DELETE` is never resent.

use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Response, StatusCode};
use hyper::body::Incoming;

use super::body::passthrough;
use super::table::Route;
use super::verdict::RetryCopy;
use super::{with_valid_token, Body, Proxy};
use crate::config::ProxySettings;
use crate::error::ProxyError;
use crate::token::TokenHandle;
use crate::upstream::Held;

/// Whether a request may be resent after a 429 without asking anyone: it changes nothing.
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A copy for resending a request of a route without a credential, when it may be resent
/// (a safe method, a body small enough to have been buffered): after a 429 when the route
/// asks for it (`retry_429`), and after a connection failed it before any answer.
pub(super) fn retry_copy(parts: &http::request::Parts, buffered: Option<&Bytes>) -> Option<RetryCopy> {
    if !is_safe(&parts.method) {
        return None;
    }
    buffered.map(|b| RetryCopy::of(parts, b))
}

impl Proxy {
    /// The upstream answered `429`: pause the route, then resend the request once
    /// (`retry_429`, safe methods) or pass the 429 through. Boxed by its callers: rare.
    pub(super) async fn after_429(
        &self,
        settings: &ProxySettings,
        route: &Route,
        held: &mut Held,
        res: Response<Incoming>,
        retry: Option<RetryCopy>,
        cred: Option<&TokenHandle>,
    ) -> Result<Response<Body>, ProxyError> {
        let shared = self.shared.as_ref();
        route.pace.throttled(&route.prefix, shared, res.headers().get(header::RETRY_AFTER)).await;
        let Some(retry) = retry.filter(|r| route.pace.retry_429 && is_safe(&r.method)) else {
            return Ok(passthrough(res, route));
        };
        let deadline = Instant::now() + settings.token_wait;
        if route.pace.wait_turn(&route.prefix, shared, deadline).await.is_err() {
            // The pause outlasts token_wait: the client sees GoTo's own 429.
            return Ok(passthrough(res, route));
        }
        drop(res);
        // The one place a request is resent after a 429 (the access log's `retried: 429`).
        let bearer = cred.and_then(|c| with_valid_token(c, |t| t.bearer().clone()));
        let req = match &bearer {
            Some(b) => retry.into_request(b),
            None => retry.into_request_as_sent(),
        };
        let res = self.send(settings, route, held, req, None).await?;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            route.pace.throttled(&route.prefix, shared, res.headers().get(header::RETRY_AFTER)).await;
        }
        let mut res = passthrough(res, route);
        super::access::mark_retried(&mut res, super::access::Retried::TooManyRequests);
        Ok(res)
    }
}
