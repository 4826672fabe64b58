//! `GET /oauth/authorize`: GoTo's sign-in page, auto-approved. It checks the client and
//! the PKCE method, signs in the user `login_hint` names (OpenID's parameter: an email
//! or organizer key; without it, the browser session's user), files a single-use code
//! for them, and redirects to `redirect_uri` with the code and the caller's `state`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use http::{Request, Response, StatusCode};

use hyper::body::Incoming;

use super::tokens::CodeEntry;
use super::{lock, oauth_error, MockBody, State};
use crate::random_token;

/// The sign-in answer: 302 to `redirect_uri?code=…&state=…`, or 400 with an OAuth error.
pub(super) fn answer(state: &State, req: &Request<Incoming>) -> Response<MockBody> {
    let q: HashMap<String, String> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let opts = lock(&state.opts).clone();
    if q.get("client_id") != Some(&opts.client_id) || q.get("response_type").map(String::as_str) != Some("code") {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "client_id or response_type wrong");
    }
    let Some(redirect) = q.get("redirect_uri").and_then(|r| url::Url::parse(r).ok()) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "redirect_uri missing");
    };
    let challenge = match q.get("code_challenge_method").map(String::as_str) {
        Some("S256") | None => q.get("code_challenge").cloned(),
        Some(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "only S256 is supported"),
    };
    let user = match q.get("login_hint") {
        Some(hint) => match state.user_index(hint) {
            Some(i) => i,
            None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "login_hint names no user"),
        },
        None => state.signed_in.load(Ordering::Relaxed),
    };
    let code = format!("mock-code-{}", random_token(12));
    let entry = CodeEntry { redirect_uri: redirect.to_string(), challenge, user };
    lock(&state.tokens).codes.insert(code.clone(), entry);
    let mut target = redirect;
    target.query_pairs_mut().append_pair("code", &code);
    if let Some(s) = q.get("state") {
        target.query_pairs_mut().append_pair("state", s);
    }
    crate::redirect(target.as_str())
}
