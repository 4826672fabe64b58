//! The request head as the upstream must see it (the pure "upstream request filter"
//! phase): forwarded path and query, hop-by-hop headers out, the upstream's `Host` and
//! the token in. No I/O, unit-tested here.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Uri, Version};
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;

use super::bad_request;
use super::table::Route;
use crate::error::{ErrorCode, ProxyError};
use crate::route;
use crate::token::Token;

/// Moves the parts out for sending, leaving empty ones (no allocation).
pub(super) fn take_parts(parts: &mut http::request::Parts) -> http::request::Parts {
    std::mem::replace(parts, Request::new(()).into_parts().0)
}

/// The request head as the upstream must see it: its path (prefix stripped, keys
/// substituted), no hop-by-hop headers or inbound key, the upstream's `Host`, and the
/// token (`None`: a pass-through route).
pub(super) fn rewrite_request(
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
            let (organizer, account) = usable_keys(t);
            Cow::Owned(route::substitute_keys(&fwd_path, organizer, account).map_err(|m| missing_key(route, m))?)
        }
        _ => fwd_path,
    };
    // GoTo Connect's `?accountKey={accountKey}`: only a query that may hold one is copied.
    let fwd_query = match (token, parts.uri.query()) {
        (Some(t), Some(q)) if route::has_key_placeholder(q) => {
            let (organizer, account) = usable_keys(t);
            Some(route::substitute_query_keys(q, organizer, account).map_err(|m| missing_key(route, m))?)
        }
        _ => None,
    };
    let uri = upstream_uri(route, &fwd_path, &parts.uri, fwd_query.as_deref())?;
    strip_headers(&mut parts.headers, &NOT_FORWARDED);
    parts.headers.insert(header::HOST, route.host.clone());
    if let Some(t) = token {
        parts.headers.insert(header::AUTHORIZATION, t.bearer().clone());
    }
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    Ok(())
}

/// The token's keys that may be filled in: each checked again here, where it is used
/// (a key that is not valid counts as missing), though tokens only ever hold valid ones.
fn usable_keys(t: &Token) -> (Option<&str>, Option<&str>) {
    (usable_key(&t.organizer_key), usable_key(&t.account_key))
}

fn usable_key(key: &Option<String>) -> Option<&str> {
    key.as_deref().filter(|k| crate::token::valid_key(k))
}

/// `503 token_unavailable` for a request that needs a key the credential lacks (none
/// came with its token, or the one that came was not valid and was dropped).
fn missing_key(route: &Route, missing: route::MissingKey) -> ProxyError {
    let credential = route.credential.as_ref().map_or("", |c| c.name());
    ProxyError::new(
        ErrorCode::TokenUnavailable,
        format!(
            "credential {credential:?} has no {} to fill in {}: its token answer and keys lookup gave none that is valid (1-64 ASCII letters, digits, '-', '_' or '.'); see the proxy's warnings",
            missing.0.words(),
            missing.0.placeholder()
        ),
    )
}

pub(super) fn upstream_body(
    buffered: Option<Bytes>,
    stream: Option<Limited<Incoming>>,
) -> Either<Full<Bytes>, Limited<Incoming>> {
    match (buffered, stream) {
        (_, Some(s)) => Either::Right(s),
        (Some(b), None) => Either::Left(Full::new(b)),
        (None, None) => Either::Left(Full::new(Bytes::new())),
    }
}

/// The upstream request target (origin-form: path and query; `query` when keys were
/// filled into it). When the forwarded path and query are the client's own (the usual
/// case), the client's path-and-query is reused as is.
pub(super) fn upstream_uri(route: &Route, path: &str, inbound: &Uri, query: Option<&str>) -> Result<Uri, ProxyError> {
    let reuse = route.base_path.is_empty() && path == inbound.path() && query.is_none();
    let pq = match inbound.path_and_query() {
        Some(pq) if reuse => pq.clone(),
        _ => build_path_and_query(&route.base_path, path, query.or(inbound.query()))?,
    };
    Ok(Uri::from(pq))
}

pub(super) fn build_path_and_query(
    base_path: &str,
    path: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, ProxyError> {
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
pub(super) const NOT_FORWARDED: [HeaderName; HOP_BY_HOP + 1] = [
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
pub(super) const HOP_BY_HOP: usize = 9;

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
pub(super) fn strip_headers(headers: &mut HeaderMap, names: &[HeaderName]) {
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

/// Whether a request's `Transfer-Encoding` names a coding other than `chunked` (which
/// hyper decodes; any other would be dropped when the header is, so it is refused).
pub(super) fn has_foreign_coding(headers: &HeaderMap) -> bool {
    headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii).any(|c| !c.eq_ignore_ascii_case(b"chunked"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_keys_are_filled_in() {
        for (key, used) in [("8439885694023999999", true), ("../admin?x=1#f", false), ("..", false), ("", false)] {
            assert_eq!(usable_key(&Some(key.to_string())).is_some(), used, "{key:?}");
        }
        assert_eq!(usable_key(&None), None);
    }

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
}
