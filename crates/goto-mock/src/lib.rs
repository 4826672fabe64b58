//! A mock of GoTo's token endpoints and APIs on a real socket, faithful to how GoTo
//! issues tokens (as GoTo documents it). goto-auth-proxy's `demo` runs it, and every test
//! runs against it, so what the demo shows is what the tests prove.
//!
//! Test equipment, not published. The `faults` feature adds what only tests, benches and
//! the chaos soak need (injected token-endpoint faults, the remote control, odd upstream
//! answers); the proxy's `demo` builds without it.
//!
//! * `POST /oauth/token` — Basic client auth; grants `authorization_code` (single-use
//!   codes, `redirect_uri` must match, PKCE S256 checked), `refresh_token` (rotating:
//!   the old access token dies at once, the old refresh token once the new tokens are
//!   used), `personal_access_token`,
//!   `client_credentials`. Numeric `expires_in`; no organizer/account keys unless asked.
//! * `POST /oauth/access_token` — Direct Login (`password`, or `refresh_token` with
//!   `client_id`), no Basic header, **string** `expires_in`, keys in the answer, and every
//!   other token of the application revoked.
//! * `GET /oauth/authorize` — auto-approves: 302 to `redirect_uri?code=…&state=…`. The
//!   person signing in is the user `login_hint` names (email or organizer key), else
//!   the one [`MockGoto::sign_in_as`] chose, else the first; the code and every token
//!   issued from it belong to that user. Direct Login, PAT and client credentials
//!   tokens belong to the first user.
//! * Anything else is "the API": a valid bearer gets an answer; a dead one gets 401 on
//!   `/admin/…`, an empty 401 with `WWW-Authenticate: … error="invalid_token"` on
//!   `/identity/…`, and `403 {"int_err_code":"InvalidToken"}` elsewhere.
//!   `GET /admin/rest/v1/me` answers the token's user's keys; a path segment
//!   `forbidden` answers a plain permission 403, and so do `/organizers/{k}/`,
//!   `/accounts/{k}/` and `?accountKey=k` with a key that is not the token's user's;
//!   `…/_mock/bytes/N` streams N bytes; `…/_mock/slow/MS` waits before answering;
//!   `…/_mock/redirect` answers 302 to another host; `…/_mock/close` closes the
//!   connection after answering; `…/_mock/reset/N` promises more than it sends: headers
//!   and N bytes, then the connection is dropped; other requests echo their body (or a
//!   JSON document with keys beyond 2^53, the path and the query received); with
//!   [`MockOptions::known_paths_only`], a path outside GoTo's API families answers a JSON
//!   `404` naming the path and query.
//!   `GET /identity/v1/Users/me` answers the SCIM shape for the token's user (`id`,
//!   `userName`, accounts under the `urn:scim:schemas:extension:getgo:1.0` extension;
//!   two accounts, the user's first).
//!   With [`MockOptions::api_quota`], each token may call each API (first path segment)
//!   that many times per second; beyond, `429` with `Retry-After`. GoTo Connect paths
//!   (`/voice-admin/…`, `/call-history/…`, `/notification-channel/…`) answer `400`
//!   without `?accountKey=`.
//! * `GET /_mock/stats`, `POST /_mock/revoke` — for scripts poking the demo; and, with
//!   `faults`, the remote control of `control` (`/_mock/fault`, `/_mock/refresh_tokens/…`,
//!   `/_mock/token_calls`) for the chaos soak, which drives a mock in another process.
//! * With `faults`: `POST /_mock/moved/oauth/token`, `POST /_mock/moved/oauth/access_token`
//!   — the token endpoints without faults: where `TokenFault::Redirect` points, so a
//!   client that followed the redirect would get a token.
//!
//! The files, one per GoTo surface: `token_endpoint` (both token endpoints, one function
//! per grant), `authorize` (the sign-in redirect), `api` (the API and its `_mock/…`
//! operations), `control` (the remote control), `faults` (the token endpoints' injected
//! faults and the odd bodies),
//! `tokens` (the book of issued tokens, codes and refresh chains). This file holds the
//! handle ([`MockGoto`]), its options and counters, and the request dispatch.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
#[cfg(feature = "faults")]
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod api;
mod authorize;
#[cfg(feature = "faults")]
mod control;
#[cfg(feature = "faults")]
mod faults;
mod options;
mod serve;
mod stats;
mod token_endpoint;
mod tokens;

#[cfg(feature = "faults")]
use faults::{Drip, Zeros};
use tokens::{App, Tokens};

pub use options::{MockOptions, MockUser};
use stats::Counters;
pub use stats::{Issued, Stats};

#[cfg(feature = "faults")]
/// A fault the token endpoints answer with instead of a token (or a token answer it
/// bends), for tests of how the proxy treats a token endpoint it cannot trust. Public:
/// tests inject it with [`MockGoto::set_fault`].
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

/// Without the `faults` feature no fault can be injected: a type with no value.
#[cfg(not(feature = "faults"))]
#[derive(Debug, Clone)]
enum TokenFault {}

#[cfg(feature = "faults")]
/// The pace of [`TokenFault::Drip`]: one body byte each. Public: it is part of what the
/// fault means, for a test that times a dripping answer.
pub const DRIP_EVERY: Duration = Duration::from_millis(200);

/// Everything the handlers share.
struct State {
    /// The options, without [`MockOptions::more_users`] (they live in `users`, so the
    /// per-call copy of the options stays small however many users there are).
    opts: Mutex<MockOptions>,
    /// Every user, the first first; a token's user is an index into it.
    users: Vec<MockUser>,
    /// Whom the sign-in page signs in when `login_hint` names nobody: the browser's
    /// session at GoTo ([`MockGoto::sign_in_as`]).
    signed_in: AtomicUsize,
    tokens: Mutex<Tokens>,
    /// The fault in force; a dripping body watches it to break off when it is lifted.
    #[cfg(feature = "faults")]
    fault: watch::Sender<Option<TokenFault>>,
    counters: Counters,
    /// When each token endpoint call arrived, oldest first.
    token_call_times: Mutex<Vec<Instant>>,
    /// Client addresses seen on API paths: one per upstream connection the proxy opened.
    api_peers: Mutex<HashSet<SocketAddr>>,
    issued: Mutex<Vec<Issued>>,
    /// The request target (path and query, as received) of each API call, oldest
    /// first; the first [`api::MAX_ARRIVALS`] are kept.
    api_targets: Mutex<Vec<String>>,
    /// GoTo's quota ([`MockOptions::api_quota`]) and the calls it saw.
    quota: Mutex<api::Quota>,
    /// What the remote control (`/_mock/fault`, `/_mock/token_calls`…) records.
    #[cfg(feature = "faults")]
    control: control::Book,
}

/// A running mock GoTo server; dropping it stops the server. Public: the demo, tests and
/// benches start it and steer it (faults, revocations, lifetimes) through its methods.
pub struct MockGoto {
    addr: SocketAddr,
    /// `http` or, when started with [`MockGoto::start_tls`], `https`.
    scheme: &'static str,
    state: Arc<State>,
    shutdown: CancellationToken,
}

/// Every answer's body: a buffered one, or one of the streaming bodies of `faults`.
#[cfg(feature = "faults")]
type MockBody = Either<Full<Bytes>, Either<Zeros, Drip>>;
/// Every answer's body: a buffered one (the streaming ones come with `faults`).
#[cfg(not(feature = "faults"))]
type MockBody = Either<Full<Bytes>, http_body_util::Empty<Bytes>>;

impl MockGoto {
    /// Starts on a free loopback port.
    pub async fn start(opts: MockOptions) -> std::io::Result<MockGoto> {
        MockGoto::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await
    }

    /// Starts on a free loopback port, serving HTTPS with `tls` (tests of the outbound
    /// TLS settings: a token endpoint and API only a private CA vouches for).
    pub async fn start_tls(opts: MockOptions, tls: tokio_rustls::TlsAcceptor) -> std::io::Result<MockGoto> {
        MockGoto::serve(SocketAddr::from(([127, 0, 0, 1], 0)), opts, Some(tls)).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr, opts: MockOptions) -> std::io::Result<MockGoto> {
        MockGoto::serve(addr, opts, None).await
    }

    async fn serve(
        addr: SocketAddr,
        opts: MockOptions,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<MockGoto> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let users = opts.users();
        let opts = MockOptions { more_users: Vec::new(), ..opts };
        let state = Arc::new(State {
            opts: Mutex::new(opts),
            users,
            signed_in: AtomicUsize::new(0),
            tokens: Mutex::new(Tokens::default()),
            #[cfg(feature = "faults")]
            fault: watch::channel(None).0,
            counters: Counters::default(),
            token_call_times: Mutex::new(Vec::new()),
            api_peers: Mutex::new(HashSet::new()),
            issued: Mutex::new(Vec::new()),
            api_targets: Mutex::new(Vec::new()),
            quota: Mutex::new(api::Quota::default()),
            #[cfg(feature = "faults")]
            control: control::Book::default(),
        });
        let shutdown = CancellationToken::new();
        let s = state.clone();
        tokio::spawn(serve::run(listener, tls, shutdown.clone(), move |req, peer| {
            let s = s.clone();
            async move { handle(&s, req, peer).await }
        }));
        Ok(MockGoto { addr, scheme, state, shutdown })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (`https://` when started with [`MockGoto::start_tls`]).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The options in force.
    pub fn options(&self) -> MockOptions {
        let more_users = self.state.users.iter().skip(1).cloned().collect();
        MockOptions { more_users, ..lock(&self.state.opts).clone() }
    }

    /// Makes `who` (an email or organizer key) the person signed in at GoTo's sign-in
    /// page, as a browser session would: sign-ins without a `login_hint` are theirs from
    /// now on. False (and nothing changes) when no user matches.
    pub fn sign_in_as(&self, who: &str) -> bool {
        let Some(i) = self.state.user_index(who) else { return false };
        self.state.signed_in.store(i, Ordering::Relaxed);
        true
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, d: Duration) {
        lock(&self.state.opts).token_lifetime = d;
    }

    /// Changes the OAuth client secret it accepts from now on, as rotating it in GoTo's
    /// developer center does: calls with the old one get `401 invalid_client`.
    pub fn set_client_secret(&self, secret: &str) {
        lock(&self.state.opts).client_secret = secret.to_string();
    }

    /// Changes the Direct Login password it accepts from now on.
    pub fn set_password(&self, password: &str) {
        lock(&self.state.opts).password = password.to_string();
    }

    /// Makes token endpoints fail (or stop failing, with `None`).
    #[cfg(feature = "faults")]
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

    /// Kills the refresh tokens of one user (`who`: an email or organizer key), as GoTo
    /// does when that person revokes the app; false when no user matches.
    pub fn revoke_refresh_tokens_of(&self, who: &str) -> bool {
        let Some(i) = self.state.user_index(who) else { return false };
        lock(&self.state.tokens).refresh.retain(|_, r| r.user != i);
        true
    }

    /// Issues a refresh token for the OAuth client, as if the first user had signed in.
    pub fn mint_refresh_token(&self) -> String {
        lock(&self.state.tokens).mint_refresh(App::OAuth, 0)
    }

    /// Issues a refresh token for the OAuth client, as if `who` (an email or organizer
    /// key) had signed in; `None` when no user matches.
    pub fn mint_refresh_token_for(&self, who: &str) -> Option<String> {
        let user = self.state.user_index(who)?;
        Some(lock(&self.state.tokens).mint_refresh(App::OAuth, user))
    }

    /// How many distinct connections have carried API calls so far.
    pub fn api_connections(&self) -> usize {
        lock(&self.state.api_peers).len()
    }

    /// When each API call with a valid token arrived (throttled ones included), oldest
    /// first; the first 100 000 are kept. Tests measure the rate GoTo saw with it.
    pub fn api_call_times(&self) -> Vec<Instant> {
        lock(&self.state.quota).arrivals.clone()
    }

    /// The request target (path and query, byte for byte as received) of every API
    /// call so far, whatever its token, oldest first: tests check what the proxy
    /// forwarded, even where no answer echoes it.
    pub fn api_targets(&self) -> Vec<String> {
        lock(&self.state.api_targets).clone()
    }

    /// Answers the next API call with a valid token `429` with this `Retry-After` value
    /// (seconds or an HTTP date), as GoTo does when the quota is spent elsewhere.
    pub fn throttle_once(&self, retry_after: &str) {
        lock(&self.state.quota).throttle_next = Some(retry_after.to_string());
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

impl State {
    /// The index of the user `who` names: their email (any case) or organizer key.
    fn user_index(&self, who: &str) -> Option<usize> {
        self.users.iter().position(|u| u.email.eq_ignore_ascii_case(who) || u.organizer_key == who)
    }

    /// User `i` of the table (the first, should `i` be out of range; the table always
    /// holds the first user).
    fn user(&self, i: usize) -> &MockUser {
        &self.users[if i < self.users.len() { i } else { 0 }]
    }
}

/// Locks `m`, taking the data of a poisoned lock as is: a test that panicked while
/// holding it must not take the mock down for the other tests.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ===== dispatch and answers =====

/// Sends a request to the surface that answers it.
async fn handle(state: &State, req: Request<Incoming>, peer: SocketAddr) -> Response<MockBody> {
    #[cfg(feature = "faults")]
    control::note_token_call(state, &req);
    #[cfg(feature = "faults")]
    let req = match control::answer(state, req).await {
        Ok(res) => return res,
        Err(req) => req,
    };
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::POST, "/oauth/token") => token_endpoint::answer(state, req, false, true).await,
        (&Method::POST, "/oauth/access_token") => token_endpoint::answer(state, req, true, true).await,
        #[cfg(feature = "faults")]
        (&Method::POST, "/_mock/moved/oauth/token") => token_endpoint::answer(state, req, false, false).await,
        #[cfg(feature = "faults")]
        (&Method::POST, "/_mock/moved/oauth/access_token") => token_endpoint::answer(state, req, true, false).await,
        (&Method::GET, "/oauth/authorize") => authorize::answer(state, &req),
        (&Method::GET, "/_mock/stats") => {
            json(StatusCode::OK, serde_json::to_string(&state.counters.snapshot()).unwrap_or_default())
        }
        (&Method::POST, "/_mock/revoke") => {
            lock(&state.tokens).access.clear();
            json(StatusCode::OK, r#"{"revoked":"all access tokens"}"#.to_string())
        }
        _ => {
            lock(&state.api_peers).insert(peer);
            api::answer(state, req).await
        }
    }
}

/// An answer with `status` and `body` and no `Content-Type`: the odd answers (a fault's
/// raw body, the empty 401 of `/identity/…`) and the echo, which sends back the caller's
/// own type.
fn respond(status: StatusCode, body: Bytes) -> Response<MockBody> {
    let mut res = Response::new(Either::Left(Full::new(body)));
    *res.status_mut() = status;
    res
}

/// A JSON answer (the body as given: no newline added).
fn json(status: StatusCode, body: String) -> Response<MockBody> {
    let mut res = respond(status, Bytes::from(body));
    res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    res
}

/// `302 Found` to `location` (no `Location` when it is not a valid header value).
fn redirect(location: &str) -> Response<MockBody> {
    let mut res = respond(StatusCode::FOUND, Bytes::new());
    if let Ok(v) = http::HeaderValue::from_str(location) {
        res.headers_mut().insert(http::header::LOCATION, v);
    }
    res
}

/// An unguessable URL-safe token of `bytes` random bytes: codes and tokens the mock issues.
fn random_token(bytes: usize) -> String {
    use base64::Engine as _;
    let buf: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// `BASE64URL(SHA256(verifier))` without padding: the PKCE S256 challenge GoTo checks a
/// code exchange's verifier against (RFC 7636).
fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// An OAuth error answer: `{"error":…,"error_description":…}`.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<MockBody> {
    json(status, serde_json::json!({ "error": error, "error_description": description }).to_string())
}
