//! "The API": every path the other surfaces do not claim. The bearer token is checked
//! the way GoTo's products each reject a dead one; then organizer and account keys in
//! the path and query must be the token's user's, the `…/_mock/…` operations run
//! (bytes, slow, redirect, close, reset; with the `faults` feature), `…/me` answers the token's user's keys, and
//! anything else echoes the request.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::{json, lock, respond, MockBody, MockOptions, MockUser, State};

/// An API call's answer.
pub(super) async fn answer(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    let path = req.uri().path().to_string();
    {
        let mut targets = lock(&state.api_targets);
        if targets.len() < MAX_ARRIVALS {
            targets.push(req.uri().path_and_query().map_or_else(|| path.clone(), |pq| pq.as_str().to_string()));
        }
    }
    let Some(user) = bearer_user(state, &req) else {
        state.counters.api_rejected.fetch_add(1, Ordering::Relaxed);
        return rejected(&path);
    };
    let user = state.user(user);
    let opts = lock(&state.opts).clone();
    if let Some(res) = over_quota(state, &req, &path, &opts) {
        state.counters.api_throttled.fetch_add(1, Ordering::Relaxed);
        return res;
    }
    state.counters.api_ok.fetch_add(1, Ordering::Relaxed);
    let segments: Vec<&str> = path.split('/').collect();
    if let Some(res) = refused(&segments, user) {
        return res;
    }
    if let Some(res) = account_key_refused(&path, req.uri().query(), user) {
        return res;
    }
    #[cfg(feature = "faults")]
    if let Some(op) = segments.iter().position(|s| *s == "_mock").map(|i| &segments[i + 1..]) {
        if let Some(res) = crate::faults::mock_operation(op).await {
            return res;
        }
    }
    if opts.known_paths_only && !API_FAMILIES.iter().any(|f| path.starts_with(f)) {
        return not_found(&path, req.uri().query());
    }
    if path == "/admin/rest/v1/me" {
        return me(user);
    }
    if path == "/identity/v1/Users/me" {
        if opts.identity_unavailable {
            return json(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"temporarily unavailable"}"#.into());
        }
        return identity_me(user);
    }
    echo(req, &path, user).await
}

/// Where GoTo's APIs live, by product: with [`MockOptions::known_paths_only`], a path
/// under none of these answers `404`, as GoTo does.
const API_FAMILIES: &[&str] = &[
    "/G2M/rest/",
    "/G2W/rest/v1/",
    "/G2W/rest/v2/",
    "/G2T/rest/",
    "/G2A/rest/",
    "/admin/rest/v1/",
    "/identity/v1/",
    "/voice-admin/v1/",
    "/call-history/v1/",
    "/notification-channel/v1/",
];

/// `404` for a path no GoTo API serves: JSON that names the path and query received, so
/// a mistyped path (or a placeholder the proxy did not fill) shows.
fn not_found(path: &str, query: Option<&str>) -> Response<MockBody> {
    let body = serde_json::json!({
        "error": "not_found",
        "message": "no GoTo API at this path",
        "path": path,
        "query": query.unwrap_or(""),
    });
    json(StatusCode::NOT_FOUND, body.to_string())
}

/// The user of the request's access token, if it is live; using one confirms its chain
/// (the rotated refresh tokens before it die).
fn bearer_user(state: &State, req: &Request<Incoming>) -> Option<usize> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    let mut t = lock(&state.tokens);
    let (chain, user) = t.access.get(bearer).filter(|a| a.expires > Instant::now()).map(|a| (a.chain, a.user))?;
    t.confirm_chain(chain);
    Some(user)
}

/// Most arrival times [`Quota`] keeps, and most request targets recorded (a bench's
/// millions of calls must not grow them).
pub(super) const MAX_ARRIVALS: usize = 100_000;

/// GoTo's per-token, per-API quota (GCRA: one call per `1/quota` s, a burst of one
/// second's worth), the one-off throttle of [`super::MockGoto::throttle_once`], and when
/// calls arrived.
#[derive(Default)]
pub(super) struct Quota {
    /// Per (token, API): the theoretical arrival time of the next call.
    tat: HashMap<(String, String), Instant>,
    /// `Retry-After` of a 429 owed to the next call.
    pub(super) throttle_next: Option<String>,
    /// Arrival times of API calls with a valid token, oldest first.
    pub(super) arrivals: Vec<Instant>,
}

/// The quota's `429` for this call, if it is over: per token and API (the first path
/// segment); `Retry-After` in whole seconds, at least 1.
fn over_quota(state: &State, req: &Request<Incoming>, path: &str, opts: &MockOptions) -> Option<Response<MockBody>> {
    let now = Instant::now();
    let mut q = lock(&state.quota);
    if q.arrivals.len() < MAX_ARRIVALS {
        q.arrivals.push(now);
    }
    let too_many = |retry_after: &str| {
        let mut res = json(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"errorCode":"TooManyRequests","description":"Rate limit exceeded"}"#.into(),
        );
        if let Ok(v) = HeaderValue::from_str(retry_after) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    };
    if let Some(retry_after) = q.throttle_next.take() {
        return Some(too_many(&retry_after));
    }
    let per_second = opts.api_quota.filter(|q| *q > 0)?;
    let token = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let api = path.split('/').nth(1).unwrap_or("").to_string();
    let interval = Duration::from_secs(1) / per_second;
    let tolerance = interval * (per_second - 1);
    let tat = q.tat.entry((token, api)).or_insert(now);
    let next = (*tat).max(now);
    let ahead = next - now;
    if ahead > tolerance {
        let secs = (ahead - tolerance).as_secs_f64().ceil().max(1.0);
        return Some(too_many(&format!("{secs}")));
    }
    *tat = next + interval;
    None
}

/// The refusals of an `accountKey` query value: 403 when it is another account's than
/// the token's user's (GoTo Connect's error shape on its paths), and on GoTo Connect's
/// paths, which take the account key this way, 400 without one.
fn account_key_refused(path: &str, query: Option<&str>, user: &MockUser) -> Option<Response<MockBody>> {
    const CONNECT: [&str; 3] = ["/voice-admin/", "/call-history/", "/notification-channel/"];
    let connect = CONNECT.iter().any(|p| path.starts_with(p));
    let key = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "accountKey")
        .map(|(_, v)| v.into_owned());
    match key {
        None if connect => Some(json(
            StatusCode::BAD_REQUEST,
            r#"{"errorCode":"BAD_REQUEST","message":"Query parameter 'accountKey' is required"}"#.into(),
        )),
        Some(k) if k != user.account_key && connect => Some(json(
            StatusCode::FORBIDDEN,
            format!(
                r#"{{"errorCode":"FORBIDDEN","message":"no permission for account {}"}}"#,
                serde_json::Value::String(k)
            ),
        )),
        Some(k) if k != user.account_key => Some(no_permission(&format!("no permission for account {k}"))),
        _ => None,
    }
}

/// A dead token's answer, as each product gives it: 401 JSON on `/admin/…`, an empty 401
/// with `WWW-Authenticate` on `/identity/…`, 403 `InvalidToken` elsewhere.
fn rejected(path: &str) -> Response<MockBody> {
    if path.starts_with("/admin/") {
        json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"invalid_token","error_description":"The access token expired"}"#.into(),
        )
    } else if path.starts_with("/identity/") {
        let mut res = respond(StatusCode::UNAUTHORIZED, Bytes::new());
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="identity", error="invalid_token", error_description="expired""#),
        );
        res
    } else {
        json(StatusCode::FORBIDDEN, r#"{"int_err_code":"InvalidToken","msg":"Invalid token passed"}"#.into())
    }
}

/// A good token's refusals, permission 403s: a `forbidden` segment, or an organizer or
/// account key in the path that is not the token's user's (GoTo lets nobody read
/// another organizer's webinars).
fn refused(segments: &[&str], user: &MockUser) -> Option<Response<MockBody>> {
    if segments.contains(&"forbidden") {
        return Some(no_permission("Not allowed"));
    }
    for (i, s) in segments.iter().enumerate() {
        let expected = match *s {
            "organizers" => &user.organizer_key,
            "accounts" => &user.account_key,
            _ => continue,
        };
        if let Some(k) = segments.get(i + 1) {
            if *k != expected.as_str() {
                return Some(no_permission(&format!("no permission for {s} key {k}")));
            }
        }
    }
    None
}

/// A product API's permission error: 403 with an `int_err_code` that is not
/// `InvalidToken`, so a client must not take it for a dead token.
fn no_permission(msg: &str) -> Response<MockBody> {
    json(StatusCode::FORBIDDEN, serde_json::json!({ "int_err_code": "NoPermission", "msg": msg }).to_string())
}

/// `GET /admin/rest/v1/me`: the token's user and their keys, in the Admin API's shape.
fn me(user: &MockUser) -> Response<MockBody> {
    let s = |v: &str| serde_json::Value::from(v);
    json(
        StatusCode::OK,
        format!(
            r#"{{"key":{},"accountKey":{},"email":{},"firstName":{},"lastName":{},"locale":"en_US","accounts":[{{"key":{},"name":"Example Co"}}]}}"#,
            s(&user.organizer_key),
            s(&user.account_key),
            s(&user.email),
            s(&user.first_name),
            s(&user.last_name),
            s(&user.account_key),
        ),
    )
}

/// A second account of the user in the identity answer: the key lookup must take the first.
const OTHER_ACCOUNT_KEY: &str = "1111182253621651111";

/// `GET /identity/v1/Users/me`: the SCIM document every user can read (the shape of
/// `tests/fixtures/goto/identity-users-me-response.json`), the token's user's account
/// first.
fn identity_me(user: &MockUser) -> Response<MockBody> {
    let doc = serde_json::json!({
        "schemas": ["urn:scim:schemas:core:1.0", "urn:scim:schemas:extension:getgo:1.0"],
        "id": user.organizer_key,
        "userName": user.email,
        "name": { "familyName": user.last_name, "givenName": user.first_name },
        "displayName": format!("{} {}", user.first_name, user.last_name),
        "emails": [{ "value": user.email, "type": "work", "primary": true }],
        "locale": "en_US",
        "urn:scim:schemas:extension:getgo:1.0": {
            "accounts": [
                { "value": user.account_key, "display": "Example Co", "entitlements": ["g2w", "g2m", "acctadmin"] },
                { "value": OTHER_ACCOUNT_KEY, "display": "Example Co (sandbox)", "entitlements": ["g2w"] }
            ]
        },
        "meta": { "resourceType": "User" }
    });
    json(StatusCode::OK, doc.to_string())
}

/// Any other call: its body echoed (or, with no body, a JSON document with keys beyond
/// 2^53), and what arrived in `x-mock-…` headers: method, path, query, host, the
/// hop-by-hop headers that got through, the body's size.
async fn echo(req: Request<Incoming>, path: &str, user: &MockUser) -> Response<MockBody> {
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let hop: Vec<String> =
        ["connection", "keep-alive", "te", "upgrade", "proxy-authorization", "x-goto-auth-proxy-key"]
            .iter()
            .filter(|h| req.headers().contains_key(**h))
            .map(|h| h.to_string())
            .collect();
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return json(StatusCode::BAD_REQUEST, r#"{"error":"unreadable body"}"#.into()),
    };
    let mut res = if body.is_empty() {
        // Keys beyond 2^53: a proxy that re-encodes JSON through f64 would corrupt them.
        json(
            StatusCode::OK,
            format!(
                r#"{{"path":{},"query":{},"webinarKey":8439885694023999999,"organizerKey":{}}}"#,
                serde_json::Value::String(path.to_string()),
                serde_json::Value::String(query.clone()),
                user.organizer_key
            ),
        )
    } else {
        let mut r = respond(StatusCode::OK, body.clone());
        if let Some(ct) = content_type {
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        r
    };
    let h = res.headers_mut();
    let mut put = |name: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(name, v);
        }
    };
    put("x-mock-method", &method);
    put("x-mock-path", path);
    put("x-mock-query", &query);
    put("x-mock-host", &host);
    put("x-mock-hop-by-hop", &hop.join(","));
    put("x-mock-body-bytes", &body.len().to_string());
    res
}
