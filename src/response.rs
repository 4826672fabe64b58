//! Small answers the proxy makes itself (admin pages, JSON, redirects, error bodies): one
//! builder, so every such answer carries its status and `Content-Type` the same way. A
//! leaf: it imports nothing of ours.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// `Content-Type` of JSON answers.
pub(crate) const JSON: &str = "application/json";
/// `Content-Type` of plain-text answers.
pub(crate) const TEXT: &str = "text/plain; charset=utf-8";
/// `Content-Type` of HTML pages.
pub(crate) const HTML: &str = "text/html; charset=utf-8";

/// An answer with `status`, `content_type` and `body`, for any body type built from bytes.
pub(crate) fn with_body<B: From<Bytes>>(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<B> {
    let mut res = Response::new(B::from(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// A JSON answer: `value` and a newline.
pub(crate) fn json<B: From<Bytes>>(status: StatusCode, value: &serde_json::Value) -> Response<B> {
    with_body(status, JSON, format!("{value}\n"))
}

/// `302 Found` to `location` (an empty body; no `Location` when it is not a valid header).
pub(crate) fn redirect<B: From<Bytes>>(location: &str) -> Response<B> {
    let mut res = Response::new(B::from(Bytes::new()));
    *res.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// The content security policy of a page with neither style nor script.
pub(crate) const STATIC_PAGE_CSP: &str =
    "default-src 'none'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

/// `res`, an HTML page of ours, with the headers every such page carries: the content
/// security policy `csp`, never stored, never sniffed, never framed.
pub(crate) fn lock_down<B>(mut res: Response<B>, csp: &str) -> Response<B> {
    let h = res.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: with it, a browser sends `Origin: null` on a page's own form posts.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_type_and_body() {
        let r: Response<Bytes> = json(StatusCode::NOT_FOUND, &serde_json::json!({"a": 1}));
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()[header::CONTENT_TYPE], JSON);
        assert_eq!(r.body(), "{\"a\":1}\n");
        let r: Response<Bytes> = redirect("http://x/y");
        assert_eq!(r.status(), 302);
        assert_eq!(r.headers()[header::LOCATION], "http://x/y");
        let r: Response<Bytes> = redirect("bad\nvalue");
        assert!(r.headers().get(header::LOCATION).is_none());
    }
}
