//! A mock of GoTo's token endpoints and APIs on a real socket, faithful to how GoTo
//! issues tokens (SPEC "How GoTo issues tokens"). `demo` runs it, and every test runs
//! against it, so what the demo shows is what the tests prove.
//!
//! * `POST /oauth/token` — Basic client auth; grants `authorization_code` (single-use
//!   codes, `redirect_uri` must match, PKCE S256 checked), `refresh_token` (rotating:
//!   the old access token dies at once, the old refresh token once the new tokens are
//!   used), `personal_access_token`,
//!   `client_credentials`. Numeric `expires_in`; no organizer/account keys unless asked.
//! * `POST /oauth/access_token` — Direct Login (`password`, or `refresh_token` with
//!   `client_id`), no Basic header, **string** `expires_in`, keys in the answer, and every
//!   other token of the application revoked.
//! * `GET /oauth/authorize` — auto-approves: 302 to `redirect_uri?code=…&state=…`.
//! * Anything else is "the API": a valid bearer gets an answer; a dead one gets 401 on
//!   `/admin/…`, an empty 401 with `WWW-Authenticate: … error="invalid_token"` on
//!   `/identity/…`, and `403 {"int_err_code":"InvalidToken"}` elsewhere.
//!   `GET /admin/rest/v1/me` answers the keys; a path segment `forbidden` answers a
//!   plain permission 403; `/organizers/{k}/` and `/accounts/{k}/` with a wrong key 404;
//!   `…/_mock/bytes/N` streams N bytes; `…/_mock/slow/MS` waits before answering;
//!   `…/_mock/redirect` answers 302 to another host; `…/_mock/close` closes the
//!   connection after answering; `…/_mock/reset/N` promises more than it sends: headers
//!   and N bytes, then the connection is dropped; other requests echo their body (or a
//!   JSON document with keys beyond 2^53).
//! * `GET /_mock/stats`, `POST /_mock/revoke` — for scripts poking the demo.
//! * `POST /_mock/moved/oauth/token`, `POST /_mock/moved/oauth/access_token` — the token
//!   endpoints without faults: where [`TokenFault::Redirect`] points, so a client that
//!   followed the redirect would get a token.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::login::{pkce_challenge, random_token};

/// How the mock behaves; the defaults match the demo.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Lifetime of every access token it issues.
    pub token_lifetime: Duration,
    /// OAuth client id (`/oauth/token`).
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// Direct Login consumer key.
    pub consumer_key: String,
    /// Direct Login user id.
    pub user_id: String,
    /// Direct Login password.
    pub password: String,
    /// A personal access token it accepts.
    pub pat: String,
    /// The organizer key of "the user".
    pub organizer_key: String,
    /// The account key.
    pub account_key: String,
    /// Whether OAuth answers carry organizer/account keys (the old host's shape).
    pub keys_in_oauth_response: bool,
    /// Whether refresh tokens are single-use (a new one each refresh).
    pub rotate_refresh_tokens: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            token_lifetime: Duration::from_secs(3600),
            client_id: "demo-client-id".into(),
            client_secret: "demo-client-secret".into(),
            consumer_key: "demo-consumer-key".into(),
            user_id: "api-manager@example.com".into(),
            password: "demo-password".into(),
            pat: "demo-personal-access-token".into(),
            organizer_key: "8439885694023999999".into(),
            account_key: "9999982253621659654".into(),
            keys_in_oauth_response: false,
            rotate_refresh_tokens: true,
        }
    }
}

/// A fault the token endpoints answer with instead of a token (or a token answer it
/// bends), for tests of how the proxy treats a token endpoint it cannot trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFault {
    /// Answer this status with an OAuth-ish error body.
    Status(u16),
    /// Wait this long before answering normally.
    Delay(Duration),
    /// 200 with a body that is not JSON.
    Garbage,
    /// A token with no `expires_in`.
    NoExpiresIn,
    /// 429 with `Retry-After`.
    TooManyRequests(u64),
    /// Answer exactly this status and body (HTML with 200, JSON without a token, 10 MB…);
    /// no token is issued.
    Body {
        /// The status (an invalid one answers 500).
        status: u16,
        /// The body, sent as is.
        body: Bytes,
    },
    /// Issue a real token, but with this `expires_in` value (0, -5, 1e20, "7", "soon"…).
    ExpiresIn(serde_json::Value),
    /// 200 with a token-looking body whose bytes come one every [`DRIP_EVERY`] (a minute
    /// in all, more than any client's patience); no token is issued. Lifting the fault
    /// (any [`MockGoto::set_fault`]) breaks the body off, as a dropped connection would.
    Drip,
    /// Answer this redirect status (302, 307…) to the same endpoint under `/_mock/moved/`,
    /// which would issue a token: a client that follows redirects gets one.
    Redirect(u16),
}

/// The pace of [`TokenFault::Drip`]: one body byte each.
pub const DRIP_EVERY: Duration = Duration::from_millis(200);

/// The size of [`TokenFault::Drip`]'s body: a minute's worth of bytes at [`DRIP_EVERY`].
const DRIP_BYTES: usize = 300;

/// Counters a test asserts on.
#[derive(Debug, Default)]
pub struct Counters {
    /// Every call to a token endpoint, whatever its outcome.
    pub token_calls: AtomicU64,
    /// Direct Login password logins that issued a token.
    pub password_logins: AtomicU64,
    /// Successful refresh-token grants (both endpoints).
    pub refreshes: AtomicU64,
    /// Successful code exchanges.
    pub code_exchanges: AtomicU64,
    /// API calls with a valid token.
    pub api_ok: AtomicU64,
    /// API calls whose token was rejected.
    pub api_rejected: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Every call to a token endpoint.
    pub token_calls: u64,
    /// Password logins that issued a token.
    pub password_logins: u64,
    /// Successful refreshes.
    pub refreshes: u64,
    /// Successful code exchanges.
    pub code_exchanges: u64,
    /// API calls with a valid token.
    pub api_ok: u64,
    /// API calls whose token was rejected.
    pub api_rejected: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum App {
    OAuth,
    DirectLogin,
}

struct AccessEntry {
    app: App,
    expires: Instant,
    chain: u64,
}

struct RefreshEntry {
    app: App,
    chain: u64,
    /// Set once rotated: the token stays usable until its successor proves received.
    superseded: bool,
}

struct CodeEntry {
    redirect_uri: String,
    challenge: Option<String>,
}

#[derive(Default)]
struct Tokens {
    access: HashMap<String, AccessEntry>,
    refresh: HashMap<String, RefreshEntry>,
    codes: HashMap<String, CodeEntry>,
    used_codes: Vec<String>,
    next_chain: u64,
}

/// One token the mock issued, for tests that check how token calls are spaced in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    /// When it was issued.
    pub at: Instant,
    /// Issued by Direct Login (which revokes every other token of the application).
    pub direct_login: bool,
    /// Issued for a password (a Direct Login "login", not a refresh).
    pub password: bool,
}

struct State {
    opts: Mutex<MockOptions>,
    tokens: Mutex<Tokens>,
    /// The fault in force; a dripping body watches it to break off when it is lifted.
    fault: watch::Sender<Option<TokenFault>>,
    counters: Counters,
    /// When each token endpoint call arrived, oldest first.
    token_call_times: Mutex<Vec<Instant>>,
    /// Client addresses seen on API paths: one per upstream connection the proxy opened.
    api_peers: Mutex<std::collections::HashSet<SocketAddr>>,
    issued: Mutex<Vec<Issued>>,
}

/// A running mock GoTo server.
pub struct MockGoto {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
}

type MockBody = Either<Full<Bytes>, Either<Zeros, Drip>>;

impl MockGoto {
    /// Starts on a free loopback port.
    pub async fn start(opts: MockOptions) -> std::io::Result<MockGoto> {
        MockGoto::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr, opts: MockOptions) -> std::io::Result<MockGoto> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            opts: Mutex::new(opts),
            tokens: Mutex::new(Tokens::default()),
            fault: watch::channel(None).0,
            counters: Counters::default(),
            token_call_times: Mutex::new(Vec::new()),
            api_peers: Mutex::new(Default::default()),
            issued: Mutex::new(Vec::new()),
        });
        let shutdown = CancellationToken::new();
        let s = state.clone();
        tokio::spawn(crate::server::serve(
            listener,
            move |req, conn: Arc<crate::server::ConnInfo>| {
                let s = s.clone();
                async move { handle(&s, req, conn.peer).await }
            },
            None,
            shutdown.clone(),
            Duration::from_secs(1),
            crate::server::HEADER_READ_TIMEOUT,
        ));
        Ok(MockGoto { addr, state, shutdown })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The options in force.
    pub fn options(&self) -> MockOptions {
        lock(&self.state.opts).clone()
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, d: Duration) {
        lock(&self.state.opts).token_lifetime = d;
    }

    /// Makes token endpoints fail (or stop failing, with `None`).
    pub fn set_fault(&self, fault: Option<TokenFault>) {
        self.state.fault.send_replace(fault);
    }

    /// When each token endpoint call arrived, oldest first: tests check how close
    /// renewals come to each other.
    pub fn token_call_times(&self) -> Vec<Instant> {
        lock(&self.state.token_call_times).clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.state.counters.snapshot()
    }

    /// Every token issued so far, oldest first.
    pub fn issued(&self) -> Vec<Issued> {
        lock(&self.state.issued).clone()
    }

    /// When each Direct Login password login happened, oldest first.
    pub fn password_login_times(&self) -> Vec<Instant> {
        self.issued().into_iter().filter(|i| i.password).map(|i| i.at).collect()
    }

    /// Kills every access token (refresh tokens survive), as a password change would.
    pub fn revoke_access_tokens(&self) {
        lock(&self.state.tokens).access.clear();
    }

    /// Kills every refresh token, so renewals fail with `invalid_grant`.
    pub fn revoke_refresh_tokens(&self) {
        lock(&self.state.tokens).refresh.clear();
    }

    /// Issues a refresh token for the OAuth client, as if someone had signed in.
    pub fn mint_refresh_token(&self) -> String {
        let mut t = lock(&self.state.tokens);
        let chain = t.new_chain();
        let rt = format!("mock-rt-{}", random_token(18));
        t.refresh.insert(rt.clone(), RefreshEntry { app: App::OAuth, chain, superseded: false });
        rt
    }

    /// How many distinct connections have carried API calls so far.
    pub fn api_connections(&self) -> usize {
        lock(&self.state.api_peers).len()
    }

    /// Whether `access_token` would be accepted now.
    pub fn is_valid(&self, access_token: &str) -> bool {
        lock(&self.state.tokens).access.get(access_token).is_some_and(|a| a.expires > Instant::now())
    }
}

impl Drop for MockGoto {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            token_calls: g(&self.token_calls),
            password_logins: g(&self.password_logins),
            refreshes: g(&self.refreshes),
            code_exchanges: g(&self.code_exchanges),
            api_ok: g(&self.api_ok),
            api_rejected: g(&self.api_rejected),
        }
    }
}

impl Tokens {
    fn new_chain(&mut self) -> u64 {
        self.next_chain += 1;
        self.next_chain
    }

    fn revoke_app(&mut self, app: App) {
        self.access.retain(|_, a| a.app != app);
        self.refresh.retain(|_, r| r.app != app);
    }

    fn revoke_chain(&mut self, chain: u64) {
        self.access.retain(|_, a| a.chain != chain);
    }

    /// A token of `chain` was used: its client has the newest tokens, so the rotated
    /// refresh tokens of the chain die for good.
    fn confirm_chain(&mut self, chain: u64) {
        self.refresh.retain(|_, r| r.chain != chain || !r.superseded);
    }

    fn issue(&mut self, app: App, chain: u64, lifetime: Duration, with_refresh: bool) -> (String, Option<String>) {
        let at = format!("mock-at-{}", random_token(18));
        self.access.insert(at.clone(), AccessEntry { app, expires: Instant::now() + lifetime, chain });
        let rt = with_refresh.then(|| {
            let rt = format!("mock-rt-{}", random_token(18));
            self.refresh.insert(rt.clone(), RefreshEntry { app, chain, superseded: false });
            rt
        });
        (at, rt)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ===== handlers =====

async fn handle(state: &State, req: Request<Incoming>, peer: SocketAddr) -> Response<MockBody> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::POST, "/oauth/token") => token_endpoint(state, req, false, true).await,
        (&Method::POST, "/oauth/access_token") => token_endpoint(state, req, true, true).await,
        (&Method::POST, "/_mock/moved/oauth/token") => token_endpoint(state, req, false, false).await,
        (&Method::POST, "/_mock/moved/oauth/access_token") => token_endpoint(state, req, true, false).await,
        (&Method::GET, "/oauth/authorize") => authorize(state, &req),
        (&Method::GET, "/_mock/stats") => {
            json(StatusCode::OK, serde_json::to_string(&state.counters.snapshot()).unwrap_or_default())
        }
        (&Method::POST, "/_mock/revoke") => {
            lock(&state.tokens).access.clear();
            json(StatusCode::OK, r#"{"revoked":"all access tokens"}"#.to_string())
        }
        _ => {
            lock(&state.api_peers).insert(peer);
            api(state, req).await
        }
    }
}

fn json(status: StatusCode, body: String) -> Response<MockBody> {
    let mut res = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<MockBody> {
    json(status, serde_json::json!({ "error": error, "error_description": description }).to_string())
}

/// What a token endpoint answers under `fault` instead of a token; `None` when it goes
/// on to issue one (after a `Delay`, or bent by `NoExpiresIn`/`ExpiresIn`).
async fn fault_answer(state: &State, fault: &TokenFault, direct_login: bool) -> Option<Response<MockBody>> {
    let raw = |status: u16, body: Bytes| {
        let mut res = Response::new(Either::Left(Full::new(body)));
        *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        res
    };
    Some(match fault {
        TokenFault::Status(s) => oauth_error(
            StatusCode::from_u16(*s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "server_error",
            "injected fault",
        ),
        TokenFault::TooManyRequests(secs) => {
            let mut res = oauth_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "injected fault");
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            res
        }
        TokenFault::Garbage => raw(200, Bytes::from_static(b"<html>upstream gateway says hi</html>")),
        TokenFault::Body { status, body } => raw(*status, body.clone()),
        TokenFault::Drip => {
            let mut body = br#"{"access_token":"mock-at-drip","token_type":"Bearer","expires_in":3600}"#.to_vec();
            body.resize(DRIP_BYTES, b' ');
            let tick = Box::pin(tokio::time::sleep(DRIP_EVERY));
            let drip = Drip { body: Bytes::from(body), tick, fault: state.fault.subscribe() };
            let mut res = Response::new(Either::Right(Either::Right(drip)));
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(DRIP_BYTES));
            res
        }
        TokenFault::Redirect(status) => {
            let mut res = raw(*status, Bytes::new());
            let to = if direct_login { "/_mock/moved/oauth/access_token" } else { "/_mock/moved/oauth/token" };
            res.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
            res
        }
        TokenFault::Delay(d) => {
            tokio::time::sleep(*d).await;
            return None;
        }
        TokenFault::NoExpiresIn | TokenFault::ExpiresIn(_) => return None,
    })
}

/// The `expires_in` of an issued token's answer: what the fault dictates, else the real
/// lifetime (a string in Direct Login answers, as GoTo sends it).
fn expires_in(fault: Option<&TokenFault>, lifetime: Duration, direct_login: bool) -> Option<serde_json::Value> {
    let secs = lifetime.as_secs().max(1);
    match fault {
        Some(TokenFault::NoExpiresIn) => None,
        Some(TokenFault::ExpiresIn(v)) => Some(v.clone()),
        _ if direct_login => Some(serde_json::Value::String(secs.to_string())),
        _ => Some(serde_json::Value::from(secs)),
    }
}

/// A token endpoint call; `with_faults` false for the `/_mock/moved/…` endpoints.
async fn token_endpoint(
    state: &State,
    req: Request<Incoming>,
    direct_login: bool,
    with_faults: bool,
) -> Response<MockBody> {
    state.counters.token_calls.fetch_add(1, Ordering::Relaxed);
    lock(&state.token_call_times).push(Instant::now());
    let fault = if with_faults { state.fault.borrow().clone() } else { None };
    if let Some(f) = &fault {
        if let Some(answer) = fault_answer(state, f, direct_login).await {
            return answer;
        }
    }
    let basic = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "unreadable body"),
    };
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let opts = lock(&state.opts).clone();
    let f = |k: &str| form.get(k).map(String::as_str).unwrap_or("");

    if direct_login {
        if f("client_id") != opts.consumer_key {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown consumer key");
        }
        let mut t = lock(&state.tokens);
        let password = f("grant_type") == "password";
        match f("grant_type") {
            "password" => {
                if f("user_id") != opts.user_id || f("password") != opts.password {
                    return oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant", "bad user id or password");
                }
                state.counters.password_logins.fetch_add(1, Ordering::Relaxed);
            }
            "refresh_token" => {
                let ok = t.refresh.get(f("refresh_token")).is_some_and(|r| r.app == App::DirectLogin);
                if !ok {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "refresh token invalid or revoked");
                }
                state.counters.refreshes.fetch_add(1, Ordering::Relaxed);
            }
            other => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", other),
        }
        // Creating a token revokes every other token of the application.
        t.revoke_app(App::DirectLogin);
        let chain = t.new_chain();
        let (at, rt) = t.issue(App::DirectLogin, chain, opts.token_lifetime, true);
        lock(&state.issued).push(Issued { at: Instant::now(), direct_login: true, password });
        let mut v = serde_json::json!({
            "access_token": at,
            "refresh_token": rt,
            "organizer_key": opts.organizer_key,
            "account_key": opts.account_key,
            "account_type": "",
            "firstName": "Mahar",
            "lastName": "Singh",
            "email": "",
            "platform": "GLOBAL",
            "version": "2",
        });
        if let Some(e) = expires_in(fault.as_ref(), opts.token_lifetime, true) {
            v["expires_in"] = e;
        }
        return json(StatusCode::OK, v.to_string());
    }

    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", opts.client_id, opts.client_secret))
    );
    if basic.as_deref() != Some(expected.as_str()) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed.");
    }
    let mut t = lock(&state.tokens);
    let (chain, with_refresh) = match f("grant_type") {
        "authorization_code" => {
            let code = f("code").to_string();
            let Some(entry) = t.codes.remove(&code) else {
                let why = if t.used_codes.contains(&code) { "code already used" } else { "unknown code" };
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why);
            };
            t.used_codes.push(code);
            if entry.redirect_uri != f("redirect_uri") {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "redirect_uri does not match");
            }
            if let Some(challenge) = entry.challenge {
                if pkce_challenge(f("code_verifier")) != challenge {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "PKCE verification failed");
                }
            }
            state.counters.code_exchanges.fetch_add(1, Ordering::Relaxed);
            (t.new_chain(), true)
        }
        "refresh_token" => {
            let rt = f("refresh_token").to_string();
            let Some(chain) = t.refresh.get(&rt).filter(|r| r.app == App::OAuth).map(|r| r.chain) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The provided authorization grant or refresh token is invalid, expired or revoked.",
                );
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
            (chain, opts.rotate_refresh_tokens)
        }
        "personal_access_token" => {
            if f("pat") != opts.pat {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "personal access token not accepted");
            }
            (t.new_chain(), false)
        }
        "client_credentials" => (t.new_chain(), false),
        other => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", other),
    };
    let (at, rt) = t.issue(App::OAuth, chain, opts.token_lifetime, with_refresh);
    lock(&state.issued).push(Issued { at: Instant::now(), direct_login: false, password: false });
    let mut v = serde_json::json!({
        "access_token": at,
        "token_type": "Bearer",
        "scope": "collab:",
        "principal": "mister.jones@fakemail.com",
    });
    if let Some(e) = expires_in(fault.as_ref(), opts.token_lifetime, false) {
        v["expires_in"] = e;
    }
    if let Some(rt) = rt {
        v["refresh_token"] = serde_json::Value::String(rt);
    }
    if opts.keys_in_oauth_response {
        v["organizer_key"] = serde_json::Value::String(opts.organizer_key.clone());
        v["account_key"] = serde_json::Value::String(opts.account_key.clone());
    }
    json(StatusCode::OK, v.to_string())
}

fn authorize(state: &State, req: &Request<Incoming>) -> Response<MockBody> {
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
    let code = format!("mock-code-{}", random_token(12));
    lock(&state.tokens).codes.insert(code.clone(), CodeEntry { redirect_uri: redirect.to_string(), challenge });
    let mut target = redirect;
    target.query_pairs_mut().append_pair("code", &code);
    if let Some(s) = q.get("state") {
        target.query_pairs_mut().append_pair("state", s);
    }
    let mut res = Response::new(Either::Left(Full::new(Bytes::new())));
    *res.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(target.as_str()) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

async fn api(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    let path = req.uri().path().to_string();
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let valid = bearer.as_deref().is_some_and(|b| {
        let mut t = lock(&state.tokens);
        let chain = t.access.get(b).filter(|a| a.expires > Instant::now()).map(|a| a.chain);
        if let Some(c) = chain {
            t.confirm_chain(c);
        }
        chain.is_some()
    });
    if !valid {
        state.counters.api_rejected.fetch_add(1, Ordering::Relaxed);
        return if path.starts_with("/admin/") {
            json(
                StatusCode::UNAUTHORIZED,
                r#"{"error":"invalid_token","error_description":"The access token expired"}"#.into(),
            )
        } else if path.starts_with("/identity/") {
            let mut res = Response::new(Either::Left(Full::new(Bytes::new())));
            *res.status_mut() = StatusCode::UNAUTHORIZED;
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    r#"Bearer realm="identity", error="invalid_token", error_description="expired""#,
                ),
            );
            res
        } else {
            json(StatusCode::FORBIDDEN, r#"{"int_err_code":"InvalidToken","msg":"Invalid token passed"}"#.into())
        };
    }
    state.counters.api_ok.fetch_add(1, Ordering::Relaxed);
    let opts = lock(&state.opts).clone();
    let segments: Vec<&str> = path.split('/').collect();

    if segments.contains(&"forbidden") {
        return json(StatusCode::FORBIDDEN, r#"{"int_err_code":"NoPermission","msg":"Not allowed"}"#.into());
    }
    for (i, s) in segments.iter().enumerate() {
        let expected = match *s {
            "organizers" => &opts.organizer_key,
            "accounts" => &opts.account_key,
            _ => continue,
        };
        if let Some(k) = segments.get(i + 1) {
            if *k != expected.as_str() {
                return json(
                    StatusCode::NOT_FOUND,
                    format!(r#"{{"errorCode":"NotFound","description":"no {s} with key {k}"}}"#),
                );
            }
        }
    }
    let mock_op = segments.iter().position(|s| *s == "_mock").map(|i| &segments[i + 1..]);
    if let Some(["bytes", n]) = mock_op {
        let n: u64 = n.parse().unwrap_or(0);
        let mut res = Response::new(Either::Right(Either::Left(Zeros { remaining: n, then_fail: false, pause: None })));
        res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        return res;
    }
    if let Some(["close"]) = mock_op {
        // Like an upstream ending keep-alive: answer, then close the connection.
        let mut res = json(StatusCode::OK, r#"{"closing":true}"#.into());
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return res;
    }
    if let Some(["reset", n]) = mock_op {
        // Announce twice what is sent, send N bytes, then fail the body: hyper drops the
        // connection, as a crashing upstream or a middlebox reset would.
        let n: u64 = n.parse().unwrap_or(0);
        let mut res = Response::new(Either::Right(Either::Left(Zeros { remaining: n, then_fail: true, pause: None })));
        res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n.saturating_mul(2).max(1)));
        return res;
    }
    if let Some(["redirect"]) = mock_op {
        let mut res = json(StatusCode::FOUND, r#"{"moved":true}"#.into());
        res.headers_mut().insert(header::LOCATION, HeaderValue::from_static("http://elsewhere.invalid/collect"));
        return res;
    }
    if let Some(["slow", ms]) = mock_op {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if path == "/admin/rest/v1/me" || path == "/identity/v1/Users/me" {
        return json(
            StatusCode::OK,
            format!(
                r#"{{"key":"{}","accountKey":"{}","email":"mister.jones@fakemail.com","firstName":"Moon","lastName":"Beam","locale":"en_US","accounts":[{{"key":"{}","name":"Example Co"}}]}}"#,
                opts.organizer_key, opts.account_key, opts.account_key
            ),
        );
    }

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
                r#"{{"path":{},"webinarKey":8439885694023999999,"organizerKey":{}}}"#,
                serde_json::Value::String(path.clone()),
                opts.organizer_key
            ),
        )
    } else {
        let mut r = Response::new(Either::Left(Full::new(body.clone())));
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
    put("x-mock-path", &path);
    put("x-mock-query", &query);
    put("x-mock-host", &host);
    put("x-mock-hop-by-hop", &hop.join(","));
    put("x-mock-body-bytes", &body.len().to_string());
    res
}

/// A body of `remaining` zero bytes, produced in 64 KiB chunks without buffering; with
/// `then_fail`, it ends in an error instead (the connection is dropped mid-body), after
/// a pause that lets what was sent reach the client first.
pub struct Zeros {
    remaining: u64,
    then_fail: bool,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

static ZERO_CHUNK: [u8; 64 * 1024] = [0; 64 * 1024];

impl hyper::body::Body for Zeros {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            if self.then_fail {
                let pause = self.pause.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.then_fail = false;
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "mock: connection dropped mid-body",
                ))));
            }
            return Poll::Ready(None);
        }
        let n = self.remaining.min(ZERO_CHUNK.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZERO_CHUNK[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && !self.then_fail
    }

    fn size_hint(&self) -> SizeHint {
        if self.then_fail {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.remaining)
        }
    }
}

/// [`TokenFault::Drip`]'s body: one byte per [`DRIP_EVERY`]; it ends in an error (hyper
/// drops the connection) as soon as the fault is changed, so a test need not wait out
/// the client's timeout to see the renewal fail and recover.
struct Drip {
    body: Bytes,
    tick: Pin<Box<tokio::time::Sleep>>,
    fault: watch::Receiver<Option<TokenFault>>,
}

impl hyper::body::Body for Drip {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.body.is_empty() {
            return Poll::Ready(None);
        }
        if self.tick.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if !matches!(self.fault.has_changed(), Ok(false)) {
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "mock: the drip was broken off (fault lifted)",
            ))));
        }
        let next = tokio::time::Instant::now() + DRIP_EVERY;
        self.tick.as_mut().reset(next);
        let byte = self.body.split_to(1);
        Poll::Ready(Some(Ok(Frame::data(byte))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.body.len() as u64)
    }
}
