//! The mock's remote control, for processes that cannot call [`MockGoto`]'s methods (the
//! chaos soak, `benches/soak.sh`, drives a mock in another process): set a token fault,
//! mint a seed refresh token, ask whether the newest refresh tokens are held somewhere,
//! and read back every token call with the time it arrived.
//!
//! * `POST /_mock/fault?status=N` | `?retry_after=S` | `?delay_ms=MS` — the
//!   [`TokenFault`] `Status`, `TooManyRequests` or `Delay`; no query lifts the fault.
//! * `POST /_mock/token_lifetime?ms=MS` — tokens issued from now on live `MS`
//!   milliseconds, as [`MockGoto::set_token_lifetime`].
//! * `POST /_mock/refresh_tokens/mint` — `{"refresh_token":…}`, a new OAuth chain, as
//!   [`MockGoto::mint_refresh_token`].
//! * `POST /_mock/refresh_tokens/check` — body: a JSON array of refresh tokens found in
//!   the proxies' stores; answers `{"chains":N,"held":K}`: of the N refresh chains with a
//!   live newest refresh token, K have that newest token in the array. `N - K` refresh
//!   tokens were lost (no store holds what the next renewal needs). Tokens are never
//!   echoed.
//! * `POST /_mock/client_secret` — body: the OAuth client secret accepted from now on
//!   ([`MockGoto::set_client_secret`]), as a rotation in GoTo's developer center.
//! * `GET /_mock/token_calls` — `{"calls":[{"at_ms","endpoint","query"}],
//!   "password_logins_ms":[…]}`, unix milliseconds: each token call with the query of the
//!   URL it was sent to (the soak tags each replica's `token_url` with one), and each
//!   Direct Login password login.
//!
//! [`MockGoto`]: super::MockGoto
//! [`MockGoto::mint_refresh_token`]: super::MockGoto::mint_refresh_token
//! [`MockGoto::set_client_secret`]: super::MockGoto::set_client_secret
//! [`MockGoto::set_token_lifetime`]: super::MockGoto::set_token_lifetime

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::tokens::App;
use super::{json, lock, MockBody, State, TokenFault};

/// One token endpoint call, as `GET /_mock/token_calls` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct TokenCall {
    /// When it arrived, unix milliseconds.
    at_ms: u64,
    /// `oauth/token` or `oauth/access_token`.
    endpoint: &'static str,
    /// The query of the URL it was sent to (empty when none).
    query: String,
}

/// What the control surface records: every token call, in arrival order.
#[derive(Default)]
pub(super) struct Book {
    calls: std::sync::Mutex<Vec<TokenCall>>,
}

/// Notes a token endpoint call (any other request is ignored).
pub(super) fn note_token_call(state: &State, req: &Request<Incoming>) {
    let endpoint = match (req.method(), req.uri().path()) {
        (&Method::POST, "/oauth/token") => "oauth/token",
        (&Method::POST, "/oauth/access_token") => "oauth/access_token",
        _ => return,
    };
    let query = req.uri().query().unwrap_or("").to_string();
    lock(&state.control.calls).push(TokenCall { at_ms: unix_ms(SystemTime::now()), endpoint, query });
}

/// The control endpoint's answer for `req`, or `req` back when it is no control call.
pub(super) async fn answer(state: &State, req: Request<Incoming>) -> Result<Response<MockBody>, Request<Incoming>> {
    let res = match (req.method(), req.uri().path()) {
        (&Method::POST, "/_mock/fault") => set_fault(state, req.uri().query().unwrap_or("")),
        (&Method::POST, "/_mock/token_lifetime") => set_token_lifetime(state, req.uri().query().unwrap_or("")),
        (&Method::POST, "/_mock/refresh_tokens/mint") => {
            let rt = lock(&state.tokens).mint_refresh(App::OAuth, 0);
            json(StatusCode::OK, serde_json::json!({ "refresh_token": rt }).to_string())
        }
        (&Method::POST, "/_mock/refresh_tokens/check") => check_refresh_tokens(state, req).await,
        (&Method::GET, "/_mock/token_calls") => token_calls(state),
        (&Method::POST, "/_mock/client_secret") => match req.into_body().collect().await.map(|b| b.to_bytes()) {
            Ok(bytes) if !bytes.is_empty() => {
                lock(&state.opts).client_secret = String::from_utf8_lossy(&bytes).trim().to_string();
                json(StatusCode::OK, "{}".to_string())
            }
            _ => json(StatusCode::BAD_REQUEST, r#"{"error":"a body with the new client secret"}"#.to_string()),
        },
        _ => return Err(req),
    };
    Ok(res)
}

/// `POST /_mock/fault?…`: the fault the query names, or none.
fn set_fault(state: &State, query: &str) -> Response<MockBody> {
    let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let number = |k: &str| q.get(k).and_then(|v| v.parse::<u64>().ok());
    let fault = if let Some(s) = number("status") {
        Some(TokenFault::Status(u16::try_from(s).unwrap_or(500)))
    } else if let Some(secs) = number("retry_after") {
        Some(TokenFault::TooManyRequests(secs))
    } else if let Some(ms) = number("delay_ms") {
        Some(TokenFault::Delay(Duration::from_millis(ms)))
    } else if q.is_empty() {
        None
    } else {
        return json(StatusCode::BAD_REQUEST, r#"{"error":"expected status, retry_after or delay_ms"}"#.into());
    };
    let described = format!("{fault:?}");
    state.fault.send_replace(fault);
    json(StatusCode::OK, serde_json::json!({ "fault": described }).to_string())
}

/// `POST /_mock/token_lifetime?ms=MS`: the lifetime of every token issued from now on.
fn set_token_lifetime(state: &State, query: &str) -> Response<MockBody> {
    let ms = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "ms")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0);
    let Some(ms) = ms else {
        return json(StatusCode::BAD_REQUEST, r#"{"error":"expected ms, a positive number"}"#.into());
    };
    lock(&state.opts).token_lifetime = Duration::from_millis(ms);
    json(StatusCode::OK, serde_json::json!({ "token_lifetime_ms": ms }).to_string())
}

/// `POST /_mock/refresh_tokens/check`: how many refresh chains have their newest refresh
/// token among the ones sent. The newest of a chain is its one refresh token not yet
/// superseded by a rotation.
async fn check_refresh_tokens(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    let sent: Vec<String> = match req.into_body().collect().await.map(|b| serde_json::from_slice(&b.to_bytes())) {
        Ok(Ok(v)) => v,
        _ => return json(StatusCode::BAD_REQUEST, r#"{"error":"expected a JSON array of strings"}"#.into()),
    };
    let sent: HashSet<String> = sent.into_iter().collect();
    let t = lock(&state.tokens);
    let mut chains = HashSet::new();
    let mut held = HashSet::new();
    for (rt, entry) in t.refresh.iter().filter(|(_, r)| !r.superseded) {
        chains.insert(entry.chain);
        if sent.contains(rt) {
            held.insert(entry.chain);
        }
    }
    json(StatusCode::OK, serde_json::json!({ "chains": chains.len(), "held": held.len() }).to_string())
}

/// `GET /_mock/token_calls`: every token call and password login so far.
fn token_calls(state: &State) -> Response<MockBody> {
    let calls = lock(&state.control.calls).clone();
    let (now, now_unix) = (Instant::now(), SystemTime::now());
    let password_logins_ms: Vec<u64> = lock(&state.issued)
        .iter()
        .filter(|i| i.password)
        .map(|i| unix_ms(now_unix.checked_sub(now.duration_since(i.at)).unwrap_or(UNIX_EPOCH)))
        .collect();
    let body = serde_json::json!({ "calls": calls, "password_logins_ms": password_logins_ms });
    json(StatusCode::OK, body.to_string())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
