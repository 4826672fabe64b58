//! Did the upstream reject the token? (`401`, `403` with `InvalidToken`, or
//! `WWW-Authenticate: … error="invalid_token"`), what a retry needs, and what an upstream
//! failure means for the client (a `502`, a `504`, or the client's own fault).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

use super::body::passthrough_after;
use super::rewrite::strip_hop_by_hop;
use super::table::Route;
use super::{bad_request, too_large, Body};
use crate::error::{ErrorCode, ProxyError};
use crate::token::TokenHandle;
use crate::upstream::{UpstreamBody, UpstreamError};

/// Largest 401/403 body read to decide whether the token was rejected.
pub(super) const REJECTION_BODY_LIMIT: usize = 1024 * 1024;

/// An answer that may be a rejection of the token it was sent with.
pub(super) struct Suspect<'a> {
    pub(super) cred: &'a TokenHandle,
    pub(super) generation: u64,
    pub(super) retry: Option<RetryCopy>,
    pub(super) res: Response<Incoming>,
    /// [`quick_verdict`] on it: `Some(true)`, or `None` for a 403 whose body decides.
    pub(super) verdict: Option<bool>,
}

/// What resending a request needs: a retry is rare, a copy is made for every small
/// request. The headers are reference-counted clones in one `Vec` (one allocation; an
/// inline array would make every request's future kilobytes larger, and that future is
/// moved for every request).
pub(super) struct RetryCopy {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) body: Bytes,
}

impl RetryCopy {
    pub(super) fn of(parts: &http::request::Parts, body: &Bytes) -> RetryCopy {
        let headers = parts.headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        RetryCopy { method: parts.method.clone(), uri: parts.uri.clone(), headers, body: body.clone() }
    }

    /// The request again, with a fresh token.
    pub(super) fn into_request(self, bearer: &HeaderValue) -> Request<UpstreamBody> {
        let mut req = self.into_request_as_sent();
        req.headers_mut().insert(header::AUTHORIZATION, bearer.clone());
        req
    }

    /// The request again, exactly as it was sent.
    pub(super) fn into_request_as_sent(self) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Left(Full::new(self.body)));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        let headers = req.headers_mut();
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        req
    }
}

impl crate::upstream::Replay for RetryCopy {
    fn replay(&self) -> Request<UpstreamBody> {
        RetryCopy {
            method: self.method.clone(),
            uri: self.uri.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
        .into_request_as_sent()
    }
}

/// Whether the upstream rejected the token, when the head alone tells (every answer but
/// a 403, whose body must be read: see [`inspect_forbidden`]).
pub(super) fn quick_verdict(res: &Response<Incoming>) -> Option<bool> {
    match res.status() {
        // Success and server errors never mean a rejected token: no header lookup.
        status if !status.is_client_error() => Some(false),
        _ if www_invalid_token(res.headers()) => Some(true),
        StatusCode::FORBIDDEN => None,
        status => Some(status == StatusCode::UNAUTHORIZED),
    }
}

pub(super) fn www_invalid_token(headers: &HeaderMap) -> bool {
    headers.get_all(header::WWW_AUTHENTICATE).iter().any(|v| contains(v.as_bytes(), b"invalid_token"))
}

/// Reads enough of a 403 whose head did not decide ([`quick_verdict`]) to tell a
/// rejected token (`InvalidToken`) from a real permission error: until the word shows,
/// the body ends, [`REJECTION_BODY_LIMIT`] bytes were read or `within` has passed. A 403
/// not read whole passes through unchanged: the bytes read, then the rest streamed.
pub(super) async fn inspect_forbidden(
    res: Response<Incoming>,
    route: &Route,
    within: Duration,
) -> Result<(Response<Body>, bool), ProxyError> {
    let (mut parts, mut body) = res.into_parts();
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = BytesMut::new();
    let says = |b: &[u8]| contains(b, b"InvalidToken") || contains(b, b"invalid_token");
    // Each new chunk is searched once, with enough of the bytes before it for a word cut
    // between two chunks.
    let mut searched: usize = 0;
    let ended = loop {
        if seen.len() >= REJECTION_BODY_LIMIT || says(&seen[searched.saturating_sub("InvalidToken".len() - 1)..]) {
            break false;
        }
        searched = seen.len();
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => break false, // stalled: passed on as it is
            Ok(None) => break true,
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    seen.extend_from_slice(data);
                }
            }
            Ok(Some(Err(e))) => {
                return Err(ProxyError::new(
                    ErrorCode::UpstreamUnreachable,
                    format!("reading the upstream's 403 answer failed: {e}"),
                ))
            }
        }
    };
    let rejected = says(&seen);
    if !ended {
        let res = Response::from_parts(parts, body);
        return Ok((passthrough_after(res, route, Some(seen.freeze())), rejected));
    }
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok((Response::from_parts(parts, Either::Right(Full::new(seen.freeze()))), rejected))
}

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The upstream metric kind (`None`: the client's fault, not the upstream's) and the
/// error answered.
pub(super) fn classify_upstream_error(
    e: &UpstreamError,
    route: &Route,
    max: u64,
) -> (Option<&'static str>, ProxyError) {
    let hyper_error = match e {
        UpstreamError::Connect { .. } => {
            return (Some("connect"), ProxyError::new(ErrorCode::UpstreamUnreachable, e.to_string()));
        }
        // The outbound proxy, not the upstream: its own `kind`, so an alert tells them apart.
        UpstreamError::Proxy { .. } => {
            return (Some("proxy"), ProxyError::new(ErrorCode::UpstreamUnreachable, e.to_string()));
        }
        UpstreamError::Protocol { .. } => {
            return (Some("protocol"), ProxyError::new(ErrorCode::UpstreamUnreachable, e.to_string()));
        }
        UpstreamError::Http(h) => h,
    };
    let mut detail = hyper_error.to_string();
    let mut source = std::error::Error::source(hyper_error);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return (Some("body_too_large"), too_large(max));
        }
        // The client stopped sending its body: its fault, not the upstream's.
        if let Some(idle) = s.downcast_ref::<crate::upstream::BodyIdle>() {
            tracing::warn!("{idle}; broken off");
            return (None, bad_request(idle.to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_finds_needle() {
        assert!(contains(br#"{"int_err_code":"InvalidToken"}"#, b"InvalidToken"));
        assert!(!contains(br#"{"int_err_code":"NoPermission"}"#, b"InvalidToken"));
        assert!(!contains(b"", b"x"));
    }
}
