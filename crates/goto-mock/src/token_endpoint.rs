//! The token endpoints: `POST /oauth/token` (OAuth: Basic client auth, grants
//! `authorization_code`, `refresh_token`, `personal_access_token`, `client_credentials`)
//! and `POST /oauth/access_token` (Direct Login: `password` or `refresh_token`, no Basic
//! header, string `expires_in`, keys in the answer, every other token of the application
//! revoked). One function per grant; each refuses with a [`Refused`] or says which chain
//! the new tokens join and whose they are: a sign-in's user, kept through its refreshes;
//! the first user for the other grants.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::tokens::{App, Tokens};
use super::{json, lock, oauth_error, Issued, MockBody, MockOptions, State, TokenFault};
use crate::pkce_challenge;

/// A token endpoint call; `direct_login` for `/oauth/access_token`, `with_faults` false
/// for the `/_mock/moved/…` endpoints (which ignore the fault in force).
pub(super) async fn answer(
    state: &State,
    req: Request<Incoming>,
    direct_login: bool,
    with_faults: bool,
) -> Response<MockBody> {
    state.counters.token_calls.fetch_add(1, Ordering::Relaxed);
    lock(&state.token_call_times).push(Instant::now());
    #[cfg(feature = "faults")]
    let fault = if with_faults { state.fault.borrow().clone() } else { None };
    #[cfg(feature = "faults")]
    if let Some(f) = &fault {
        if let Some(answer) = crate::faults::answer(state, f, direct_login).await {
            return answer;
        }
    }
    #[cfg(not(feature = "faults"))]
    let fault: Option<TokenFault> = {
        let _ = with_faults;
        None
    };
    let basic = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "unreadable body"),
    };
    let form = Form::parse(&body);
    let opts = lock(&state.opts).clone();
    let issued = if direct_login {
        direct_login_grant(state, &form, &opts, fault.as_ref())
    } else {
        oauth_grant(state, basic.as_deref(), &form, &opts, fault.as_ref())
    };
    issued.unwrap_or_else(Refused::answer)
}

/// A token request's form fields.
struct Form(HashMap<String, String>);

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// The field `key`, empty when absent.
    fn get(&self, key: &str) -> &str {
        self.0.get(key).map(String::as_str).unwrap_or("")
    }
}

/// Why a token request is refused: what its OAuth error answer says.
struct Refused {
    status: StatusCode,
    error: &'static str,
    description: String,
}

fn refused(status: StatusCode, error: &'static str, description: impl Into<String>) -> Refused {
    Refused { status, error, description: description.into() }
}

impl Refused {
    fn answer(self) -> Response<MockBody> {
        oauth_error(self.status, self.error, &self.description)
    }
}

/// Which refresh chain the new tokens join and whose they are, and whether a refresh
/// token comes with them.
type Grant = Result<((u64, usize), bool), Refused>;

// ===== Direct Login: /oauth/access_token =====

/// A Direct Login token request: on success every other token of the application dies
/// and the answer carries the keys and a **string** `expires_in`.
fn direct_login_grant(
    state: &State,
    form: &Form,
    opts: &MockOptions,
    fault: Option<&TokenFault>,
) -> Result<Response<MockBody>, Refused> {
    if form.get("client_id") != opts.consumer_key {
        return Err(refused(StatusCode::UNAUTHORIZED, "invalid_client", "unknown consumer key"));
    }
    let mut t = lock(&state.tokens);
    let password = form.get("grant_type") == "password";
    match form.get("grant_type") {
        "password" => password_login(state, form, opts)?,
        "refresh_token" => direct_login_refresh(state, &t, form)?,
        other => return Err(refused(StatusCode::BAD_REQUEST, "unsupported_grant_type", other)),
    }
    // Creating a token revokes every other token of the application.
    t.revoke_app(App::DirectLogin);
    // The API Manager signs in as the first user.
    let chain = t.new_chain();
    let (at, rt) = t.issue(App::DirectLogin, (chain, 0), opts.token_lifetime, true);
    lock(&state.issued).push(Issued { at: Instant::now(), direct_login: true, password });
    let user = state.user(0);
    let mut v = serde_json::json!({
        "access_token": at,
        "refresh_token": rt,
        "organizer_key": user.organizer_key,
        "account_key": user.account_key,
        "account_type": "",
        "firstName": "Mahar",
        "lastName": "Singh",
        "email": "",
        "platform": "GLOBAL",
        "version": "2",
    });
    if let Some(e) = expires_in(fault, opts.token_lifetime, true) {
        v["expires_in"] = e;
    }
    Ok(json(StatusCode::OK, v.to_string()))
}

/// `grant_type=password`: the user id and password must match.
fn password_login(state: &State, form: &Form, opts: &MockOptions) -> Result<(), Refused> {
    if form.get("user_id") != opts.user_id || form.get("password") != opts.password {
        return Err(refused(StatusCode::UNAUTHORIZED, "invalid_grant", "bad user id or password"));
    }
    state.counters.password_logins.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// `grant_type=refresh_token` at Direct Login: a live Direct Login refresh token.
fn direct_login_refresh(state: &State, t: &Tokens, form: &Form) -> Result<(), Refused> {
    let ok = t.refresh.get(form.get("refresh_token")).is_some_and(|r| r.app == App::DirectLogin);
    if !ok {
        return Err(refused(StatusCode::BAD_REQUEST, "invalid_grant", "refresh token invalid or revoked"));
    }
    state.counters.refreshes.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

// ===== OAuth: /oauth/token =====

/// An OAuth token request: Basic client auth, then the grant; the answer has a numeric
/// `expires_in` and keys only with [`MockOptions::keys_in_oauth_response`].
fn oauth_grant(
    state: &State,
    basic: Option<&str>,
    form: &Form,
    opts: &MockOptions,
    fault: Option<&TokenFault>,
) -> Result<Response<MockBody>, Refused> {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", opts.client_id, opts.client_secret))
    );
    if basic != Some(expected.as_str()) {
        return Err(refused(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed."));
    }
    let mut t = lock(&state.tokens);
    let ((chain, user), with_refresh) = match form.get("grant_type") {
        "authorization_code" => authorization_code(state, &mut t, form)?,
        "refresh_token" => refresh_token(state, &mut t, form, opts)?,
        "personal_access_token" => personal_access_token(&mut t, form, opts)?,
        "client_credentials" => ((t.new_chain(), 0), false),
        other => return Err(refused(StatusCode::BAD_REQUEST, "unsupported_grant_type", other)),
    };
    let (at, rt) = t.issue(App::OAuth, (chain, user), opts.token_lifetime, with_refresh);
    lock(&state.issued).push(Issued { at: Instant::now(), direct_login: false, password: false });
    let user = state.user(user);
    let mut v = serde_json::json!({
        "access_token": at,
        "token_type": "Bearer",
        "scope": "collab:",
        "principal": user.email,
    });
    if let Some(e) = expires_in(fault, opts.token_lifetime, false) {
        v["expires_in"] = e;
    }
    if let Some(rt) = rt {
        v["refresh_token"] = serde_json::Value::String(rt);
    }
    if opts.keys_in_oauth_response {
        v["organizer_key"] = serde_json::Value::String(user.organizer_key.clone());
        v["account_key"] = serde_json::Value::String(user.account_key.clone());
    }
    Ok(json(StatusCode::OK, v.to_string()))
}

/// `grant_type=authorization_code`: a code used once, with its `redirect_uri` and, if the
/// sign-in sent a challenge, the PKCE verifier. A new chain of the user who signed in,
/// with a refresh token.
fn authorization_code(state: &State, t: &mut Tokens, form: &Form) -> Grant {
    let code = form.get("code").to_string();
    let Some(entry) = t.codes.remove(&code) else {
        let why = if t.used_codes.contains(&code) { "code already used" } else { "unknown code" };
        return Err(refused(StatusCode::BAD_REQUEST, "invalid_grant", why));
    };
    t.used_codes.push(code);
    if entry.redirect_uri != form.get("redirect_uri") {
        return Err(refused(StatusCode::BAD_REQUEST, "invalid_grant", "redirect_uri does not match"));
    }
    if let Some(challenge) = entry.challenge {
        if pkce_challenge(form.get("code_verifier")) != challenge {
            return Err(refused(StatusCode::BAD_REQUEST, "invalid_grant", "PKCE verification failed"));
        }
    }
    state.counters.code_exchanges.fetch_add(1, Ordering::Relaxed);
    Ok(((t.new_chain(), entry.user), true))
}

/// `grant_type=refresh_token`: a live OAuth refresh token; the chain and user it belongs
/// to, with a new refresh token when they rotate.
fn refresh_token(state: &State, t: &mut Tokens, form: &Form, opts: &MockOptions) -> Grant {
    let rt = form.get("refresh_token").to_string();
    let Some((chain, user)) = t.refresh.get(&rt).filter(|r| r.app == App::OAuth).map(|r| (r.chain, r.user)) else {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The provided authorization grant or refresh token is invalid, expired or revoked.",
        ));
    };
    state.counters.refreshes.fetch_add(1, Ordering::Relaxed);
    if opts.rotate_refresh_tokens {
        // Single-use: the access tokens of the chain die now; the old refresh token
        // dies once the new tokens are used (a reuse interval, as OAuth servers
        // have, so a client that crashed before saving the answer can try again).
        // Reusing it retires every refresh token issued after it.
        let was_superseded = t.refresh.get(&rt).is_some_and(|r| r.superseded);
        if was_superseded {
            t.refresh.retain(|k, r| r.chain != chain || k == &rt);
        }
        if let Some(r) = t.refresh.get_mut(&rt) {
            r.superseded = true;
        }
        t.revoke_chain(chain);
    }
    Ok(((chain, user), opts.rotate_refresh_tokens))
}

/// `grant_type=personal_access_token`: the configured PAT, the first user's. A new
/// chain, no refresh token.
fn personal_access_token(t: &mut Tokens, form: &Form, opts: &MockOptions) -> Grant {
    if form.get("pat") != opts.pat {
        return Err(refused(StatusCode::BAD_REQUEST, "invalid_grant", "personal access token not accepted"));
    }
    Ok(((t.new_chain(), 0), false))
}

/// The `expires_in` of an issued token's answer: what an injected fault dictates, else the
/// real lifetime (a string in Direct Login answers, as GoTo sends it).
fn expires_in(fault: Option<&TokenFault>, lifetime: Duration, direct_login: bool) -> Option<serde_json::Value> {
    #[cfg(feature = "faults")]
    if let Some(bent) = crate::faults::bent_expires_in(fault) {
        return bent;
    }
    #[cfg(not(feature = "faults"))]
    let _ = fault;
    let secs = lifetime.as_secs().max(1);
    if direct_login {
        Some(serde_json::Value::String(secs.to_string()))
    } else {
        Some(serde_json::Value::from(secs))
    }
}
