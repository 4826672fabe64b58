//! The errors the proxy itself answers with: stable codes users rely on, each with its status,
//! sent as `x-goto-auth-proxy-error: <code>` plus `{"error":"<code>","message":"…"}`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

/// The header that marks an answer as made by the proxy, not by GoTo.
pub(crate) const ERROR_HEADER: &str = "x-goto-auth-proxy-error";

/// A stable error code users and scripts rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// 404: no route matches.
    NoRoute,
    /// 405: the route's `methods` excludes the method.
    MethodNotAllowed,
    /// 400: absolute-form target, CONNECT, malformed path.
    BadRequest,
    /// 401: inbound key required and missing or wrong.
    UnauthorizedClient,
    /// 413: body over `max_request_body`.
    BodyTooLarge,
    /// 503: no valid token within `token_wait`.
    TokenUnavailable,
    /// 502: connect/TLS failure or a broken upstream connection.
    UpstreamUnreachable,
    /// 504: no response headers within `request_timeout`.
    UpstreamTimeout,
    /// 429: the route's `rate_limit` queue would hold the request longer than `token_wait`.
    RateLimited,
    /// 503: `max_concurrent_requests` are already in flight.
    Overloaded,
    /// 403: a `Host` the listener does not serve, or a browser page from an origin not
    /// allowed.
    Forbidden,
    /// 501: a request body in a transfer coding other than `chunked`, which the proxy
    /// would otherwise have to drop silently.
    UnsupportedTransferCoding,
    /// 400: an account credential's route, and nothing in the request chooses an account.
    AccountRequired,
    /// 400: `X-GoTo-Account` names no account of the route's credential.
    UnknownAccount,
}

impl ErrorCode {
    /// The code as users see it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NoRoute => "no_route",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnauthorizedClient => "unauthorized_client",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::TokenUnavailable => "token_unavailable",
            ErrorCode::UpstreamUnreachable => "upstream_unreachable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnsupportedTransferCoding => "unsupported_transfer_coding",
            ErrorCode::AccountRequired => "account_required",
            ErrorCode::UnknownAccount => "unknown_account",
        }
    }

    /// The HTTP status that goes with the code.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            ErrorCode::NoRoute => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::UnauthorizedClient => StatusCode::UNAUTHORIZED,
            ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TokenUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            ErrorCode::AccountRequired | ErrorCode::UnknownAccount => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error answer the proxy produces, with a message for the user.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub(crate) struct ProxyError {
    /// The stable code.
    pub code: ErrorCode,
    /// Human-readable detail; never holds a secret.
    pub message: String,
    /// Whole seconds for a `Retry-After` header (`rate_limited`: when to come back).
    pub retry_after_secs: Option<u32>,
}

impl ProxyError {
    /// An error with its code and message.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProxyError { code, message: message.into(), retry_after_secs: None }
    }

    /// The same error, telling the client to come back in `after` (rounded up to whole
    /// seconds, at least one) with `Retry-After`.
    pub(crate) fn retry_after(mut self, after: std::time::Duration) -> Self {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.retry_after_secs = Some(secs.clamp(1, u64::from(u32::MAX)) as u32);
        self
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> Bytes {
        let v = serde_json::json!({ "error": self.code.as_str(), "message": self.message });
        Bytes::from(v.to_string())
    }

    /// The full HTTP answer, for any body type that can be built from bytes.
    pub(crate) fn into_response<B: From<Bytes>>(self) -> Response<B> {
        let mut res = crate::response::with_body(self.code.status(), crate::response::JSON, self.body());
        res.headers_mut().insert(ERROR_HEADER, HeaderValue::from_static(self.code.as_str()));
        if let Some(secs) = self.retry_after_secs {
            res.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// Text from outside (a token endpoint's `error_description`, an upstream's message) made
/// safe for a log line or a page: control characters escaped (a newline cannot forge a
/// log line), at most `max` characters kept.
pub(crate) fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_cannot_break_a_line_and_is_bounded() {
        assert_eq!(
            printable("bad\n2026-12-04 INFO forged\r\u{1b}[31m", 100),
            "bad\\n2026-12-04 INFO forged\\r\\u{1b}[31m"
        );
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(printable("ünïcode ok", 100), "ünïcode ok");
    }

    #[test]
    fn response_has_header_status_and_json() {
        let res: Response<Bytes> = ProxyError::new(ErrorCode::NoRoute, "no route for /x").into_response();
        assert_eq!(res.status(), 404);
        assert_eq!(res.headers()[ERROR_HEADER], "no_route");
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["error"], "no_route");
        assert_eq!(v["message"], "no route for /x");
    }
}
