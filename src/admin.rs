//! The admin listener, for operators and orchestrators, never for API traffic:
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /` | the status page (HTML, see [`page`]) |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when every credential a route uses holds a valid token, else 503 naming each that does not and why |
//! | `GET /metrics` | Prometheus text |
//! | `GET /tokens` | per credential: grant, expiry, keys, last/next refresh, failures — never a token |
//! | `POST /refresh/{credential}` | renew now (a browser's form post: a redirect back to `/`) |
//! | `GET /login/{credential}` | 302 to GoTo's sign-in page (see [`crate::login`]) |
//! | `GET /callback?code=…&state=…` | finishes a sign-in |
//! | `POST /reload` | reloads the configuration file as `SIGHUP` does: JSON saying what changed, or why it was refused |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::config::Config;
use crate::error::ProxyError;
use crate::inbound;
use crate::login::LoginFlows;
use crate::response;
use crate::token::accounts::AccountSet;
use crate::token::{Credential, Trigger};

mod accounts;
mod credentials;
mod page;

/// Credentials by name, as the admin listener sees them.
pub(crate) type Credentials = BTreeMap<String, Arc<Credential>>;

/// The accounts of each account credential, by credential name.
pub(crate) type AccountSets = BTreeMap<String, Arc<AccountSet>>;

/// What the admin listener reads of the running proxy. `app` implements it over its live
/// state, so `admin` imports nothing of the wiring, and every reload is seen at once.
pub(crate) trait View: Send + Sync {
    /// The configuration in force (its inbound rules guard this listener too).
    fn config(&self) -> Arc<Config>;
    /// Every credential, by name: token metadata and the refresh trigger.
    fn credentials(&self) -> Arc<Credentials>;
    /// Names of the credentials routes use: what readiness waits for.
    fn used(&self) -> Arc<Vec<String>>;
    /// The Prometheus text exposition.
    fn metrics_text(&self) -> String;
    /// Requests answered so far, per route prefix.
    fn requests_by_route(&self) -> BTreeMap<String, u64>;
    /// The accounts of each account credential (`accounts = true`), by credential.
    fn accounts(&self) -> Arc<AccountSets>;
    /// Reloads the configuration file as `SIGHUP` does (`POST /reload`): what changed
    /// (`[proxy]`, `credentials.NAME`, `routes`…), or why it was refused.
    fn reload(&self) -> futures_util::future::BoxFuture<'_, Result<Vec<String>, String>>;
}

/// The admin service.
pub(crate) struct Admin {
    /// The live credentials, config and metrics (swapped by reloads).
    view: Arc<dyn View>,
    login: Arc<LoginFlows>,
}

impl Admin {
    /// An admin service over the running proxy's `view`.
    pub(crate) fn new(view: Arc<dyn View>, login: Arc<LoginFlows>) -> Admin {
        Admin { view, login }
    }

    /// Answers one admin request from `peer` on a connection to `local`. The inbound
    /// rules apply as on the data path, except that `/healthz` and `/readyz` need no key
    /// (orchestrators probe them), and that GoTo's redirect to `/callback` — a browser
    /// navigation from another site by design — is protected by its `state`, not by the
    /// origin rule.
    pub(crate) async fn serve(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let checked = self.check_caller(&req, local);
        let caller = match checked {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
        if let Some(answer) = inbound::preflight(&caller, req.method(), req.headers()) {
            return answer;
        }
        let mut res = self.route(req, peer).await;
        if let inbound::Caller::Cors(origin) = &caller {
            inbound::add_cors(res.headers_mut(), origin);
        }
        res
    }

    /// Who may use the admin listener: `Host` always; the browser origin
    /// rule on everything but the sign-in's `GET /callback` without an `Origin`.
    fn check_caller(&self, req: &Request<Incoming>, local: SocketAddr) -> Result<inbound::Caller, ProxyError> {
        let config = self.view.config();
        inbound::check_host(&config.inbound, local, req.headers())?;
        let oauth_return = req.method() == Method::GET
            && req.uri().path() == "/callback"
            && !req.headers().contains_key(header::ORIGIN);
        if oauth_return {
            return Ok(inbound::Caller::Plain);
        }
        inbound::check_origin(&config.inbound, local, req.headers())
    }

    async fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        // A credential's name, as `login_path`/`refresh_path` encoded it.
        let named = |segment: &str| crate::config::name_from_path(segment).unwrap_or_default().into_owned();
        let config = self.view.config();
        let admitted = match segments.as_slice() {
            ["healthz"] | ["readyz"] => inbound::admit_address(&config.inbound, peer.ip()),
            _ => inbound::admit(&config.inbound, peer.ip(), req.headers()),
        };
        if let Err(e) = admitted {
            return e.into_response();
        }
        let credentials = self.view.credentials();
        match (&method, segments.as_slice()) {
            (&Method::GET | &Method::HEAD, [""]) => {
                self.status_page(&accounts::AccountView::parse(req.uri().query().unwrap_or("").as_bytes()))
            }
            (&Method::GET | &Method::HEAD, ["healthz"]) => text(StatusCode::OK, "ok\n"),
            (&Method::GET | &Method::HEAD, ["readyz"]) => self.readyz(),
            (&Method::GET, ["metrics"]) => {
                let mut res = text(StatusCode::OK, &self.view.metrics_text());
                res.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
                res
            }
            (&Method::GET, ["tokens"]) => {
                let query: BTreeMap<String, String> =
                    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
                json(StatusCode::OK, &self.tokens(&credentials, &query))
            }
            (&Method::POST, ["refresh", name, account]) => {
                let (name, account) = (named(name), named(account));
                let Some(set) = self.view.accounts().get(&name).cloned() else {
                    return unknown(&credentials, &name);
                };
                if !set.adopt(&account).await {
                    return unknown_account(&name, &account);
                }
                let Some(a) = set.index().get(&account).cloned() else { return unknown_account(&name, &account) };
                if from_a_form(req.headers()) {
                    // The status page's button: back to the same search and page.
                    let back = accounts::AccountView::parse(&form_body(req).await).location();
                    let _outcome_is_on_the_page = a.cred.refresh(Trigger::Manual).await;
                    return see_other(&back);
                }
                match a.cred.refresh(Trigger::Manual).await {
                    Ok(_) => json(StatusCode::OK, &serde_json::to_value(a.cred.info()).unwrap_or_default()),
                    Err(e) => json(
                        StatusCode::BAD_GATEWAY,
                        &serde_json::json!({ "error": "refresh_failed", "message": e.message, "needs_login": e.needs_login }),
                    ),
                }
            }
            (&Method::POST, ["accounts", name, account, "remove"]) => {
                let (name, account) = (named(name), named(account));
                let Some(set) = self.view.accounts().get(&name).cloned() else {
                    return unknown(&credentials, &name);
                };
                let mut back = None;
                if from_a_form(req.headers()) {
                    // The status page asks first: its form removes only with "yes, remove" ticked.
                    let body = form_body(req).await;
                    let view = accounts::AccountView::parse(&body).location();
                    let confirmed = url::form_urlencoded::parse(&body).any(|(k, v)| k == "confirm" && v == "yes");
                    if !confirmed {
                        let nonce = crate::random::token(16);
                        let page = page::not_removed(&name, &account, &view, &nonce);
                        return secure_page(html(StatusCode::BAD_REQUEST, &page), &nonce, &[]);
                    }
                    back = Some(view);
                }
                match set.remove(&account).await {
                    Ok(true) if back.is_some() => see_other(back.as_deref().unwrap_or("/")),
                    Ok(true) => json(StatusCode::OK, &serde_json::json!({ "removed": account, "credential": name })),
                    Ok(false) => unknown_account(&name, &account),
                    Err(e) => json(
                        StatusCode::BAD_GATEWAY,
                        &serde_json::json!({ "error": "store_error", "message": e.to_string() }),
                    ),
                }
            }
            (&Method::POST, ["refresh", name]) => match credentials.get(&named(name)) {
                None => unknown(&credentials, &named(name)),
                // The status page's button: renew, then show the page again (PRG), where
                // the outcome is in the row.
                Some(c) if from_a_form(req.headers()) => {
                    let _outcome_is_on_the_page = c.refresh(Trigger::Manual).await;
                    see_other("/")
                }
                Some(c) => match c.refresh(Trigger::Manual).await {
                    Ok(_) => json(StatusCode::OK, &serde_json::to_value(c.info()).unwrap_or_default()),
                    Err(e) => json(
                        StatusCode::BAD_GATEWAY,
                        &serde_json::json!({ "error": "refresh_failed", "message": e.message, "needs_login": e.needs_login }),
                    ),
                },
            },
            // The same validation, swap, log line and metric as a signal's reload.
            (&Method::POST, ["reload"]) => match self.view.reload().await {
                Ok(changed) => json(StatusCode::OK, &serde_json::json!({ "outcome": "applied", "changed": changed })),
                Err(why) => json(
                    StatusCode::CONFLICT,
                    &serde_json::json!({ "outcome": "refused", "error": "reload_refused", "message": why }),
                ),
            },
            (&Method::GET, ["login", name]) => match credentials.get(&named(name)) {
                None => unknown(&credentials, &named(name)),
                Some(c) => match self.login.start(c, account_param(req.uri().query()).as_deref()) {
                    Ok(url) => redirect(&url),
                    Err(e) => json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({ "error": "login_unavailable", "message": e.to_string() }),
                    ),
                },
            },
            (&Method::GET, ["callback"]) => {
                let query = req.uri().query().unwrap_or("");
                let outcome = self.login.finish_callback(query, &credentials, &self.view.accounts()).await;
                let nonce = crate::random::token(16);
                secure_page(html(outcome.status, &page::after_sign_in(&outcome, &nonce)), &nonce, &[])
            }
            (
                _,
                ["" | "healthz" | "readyz" | "metrics" | "tokens" | "callback" | "reload"]
                | ["refresh" | "login", _]
                | ["refresh", _, _]
                | ["accounts", _, _, "remove"],
            ) => json(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({ "error": "method_not_allowed", "message": format!("{method} {path} is not supported") }),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": "not_found", "message": format!("{path}: try / (the status page), /healthz, /readyz, /metrics, /tokens, POST /refresh/{{credential}}, /login/{{credential}}, POST /reload") }),
            ),
        }
    }

    /// `GET /?credential=&q=&offset=`: the status page (showing that search and page of
    /// accounts), under a CSP that lets only its own nonce'd style and script run.
    fn status_page(&self, view: &accounts::AccountView) -> Response<Full<Bytes>> {
        let nonce = crate::random::token(16);
        let config = self.view.config();
        let body = page::render(
            &config,
            &self.view.credentials(),
            &self.view.accounts(),
            &self.view.requests_by_route(),
            view,
            &nonce,
        );
        secure_page(html(StatusCode::OK, &body), &nonce, &page::sign_in_origins(&config))
    }

    /// `GET /tokens`: every credential's metadata; an account credential's accounts under
    /// it, a page at a time (`?credential=&offset=&limit=`, 50 by default, 500 at most).
    fn tokens(&self, credentials: &Credentials, query: &BTreeMap<String, String>) -> serde_json::Value {
        let number = |k: &str, default: usize| query.get(k).and_then(|v| v.parse::<usize>().ok()).unwrap_or(default);
        let (offset, limit) = (number("offset", 0), number("limit", 50).min(500));
        let only = query.get("credential");
        let sets = self.view.accounts();
        let mut out = serde_json::Map::new();
        for (name, c) in credentials.iter().filter(|(n, _)| only.is_none_or(|o| o == *n)) {
            let mut info = serde_json::to_value(c.info()).unwrap_or_default();
            if let (Some(set), Some(obj)) = (sets.get(name), info.as_object_mut()) {
                let index = set.index();
                let items: Vec<serde_json::Value> = index
                    .iter()
                    .skip(offset)
                    .take(limit)
                    .map(|a| {
                        let mut v = serde_json::to_value(a.cred.info()).unwrap_or_default();
                        if let Some(o) = v.as_object_mut() {
                            o.insert("name".into(), a.name.clone().into());
                        }
                        v
                    })
                    .collect();
                let counts: serde_json::Map<String, serde_json::Value> =
                    set.state_counts().iter().map(|(s, n)| ((*s).to_string(), (*n).into())).collect();
                obj.insert("state".into(), if set.ready().is_ok() { "valid" } else { "no_token" }.into());
                obj.insert(
                    "accounts".into(),
                    serde_json::json!({ "total": index.len(), "offset": offset, "limit": limit, "states": counts, "items": items }),
                );
            }
            out.insert(name.clone(), info);
        }
        serde_json::Value::Object(out)
    }

    fn readyz(&self) -> Response<Full<Bytes>> {
        let (used, credentials) = (self.view.used(), self.view.credentials());
        let sets = self.view.accounts();
        let mut not_ready = BTreeMap::new();
        for name in used.iter() {
            if let Some(set) = sets.get(name) {
                if let Err(why) = set.ready() {
                    not_ready.insert(name.clone(), why);
                }
                continue;
            }
            if let Some(c) = credentials.get(name) {
                if c.valid_token().is_none() {
                    not_ready.insert(name.clone(), c.why_unavailable());
                }
            }
        }
        if not_ready.is_empty() {
            json(StatusCode::OK, &serde_json::json!({ "ready": true, "credentials": *used }))
        } else {
            json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({ "ready": false, "not_ready": not_ready }))
        }
    }
}

/// `res`, an HTML page of this listener, with the headers every such page carries: a CSP
/// that lets only `nonce`'d style and script run and forms go nowhere but here (and on
/// to `sign_in_origins`), never stored, never sniffed, never framed.
fn secure_page(res: Response<Full<Bytes>>, nonce: &str, sign_in_origins: &[String]) -> Response<Full<Bytes>> {
    response::lock_down(res, &page::content_security_policy(nonce, sign_in_origins))
}

fn unknown(credentials: &Credentials, name: &str) -> Response<Full<Bytes>> {
    let known: Vec<&str> = credentials.keys().map(String::as_str).collect();
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({ "error": "unknown_credential", "message": format!("no credential named {name:?} (configured: {})", known.join(", ")) }),
    )
}

fn unknown_account(credential: &str, account: &str) -> Response<Full<Bytes>> {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({ "error": "unknown_account", "message": format!("credential {credential:?} has no account named {account:?}") }),
    )
}

/// The `account` query parameter of `/login/{credential}?account=NAME`.
fn account_param(query: Option<&str>) -> Option<String> {
    // The status page's Connect form sends `account=` when the name is left empty.
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "account")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.trim().is_empty())
}

/// A form post's body (at most 8 KiB; a larger or unreadable one reads as empty).
async fn form_body(req: Request<Incoming>) -> Bytes {
    use http_body_util::{BodyExt, Limited};
    match Limited::new(req.into_body(), 8 * 1024).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response::with_body(status, response::TEXT, body.to_string())
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    response::json(status, v)
}

fn html(status: StatusCode, page: &str) -> Response<Full<Bytes>> {
    response::with_body(status, response::HTML, page.to_string())
}

fn redirect(url: &str) -> Response<Full<Bytes>> {
    response::redirect(url)
}

/// `303 See Other` to `location` (a path of this listener): after a form post, the
/// browser GETs the page again.
fn see_other(location: &str) -> Response<Full<Bytes>> {
    let mut res = response::with_body(StatusCode::SEE_OTHER, response::TEXT, Bytes::new());
    let location = HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/"));
    res.headers_mut().insert(header::LOCATION, location);
    res
}

/// A browser's form post (the status page's buttons) rather than an API client: it
/// sends a form content type, or asks for HTML. curl and scripts get JSON.
fn from_a_form(headers: &http::HeaderMap) -> bool {
    let has = |name: header::HeaderName, what: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).is_some_and(|v| v.to_ascii_lowercase().contains(what))
    };
    has(header::CONTENT_TYPE, "application/x-www-form-urlencoded") || has(header::ACCEPT, "text/html")
}
