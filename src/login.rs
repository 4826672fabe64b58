//! Authorization-code sign-in: the authorize URL (with `state` and PKCE S256), the
//! callback that checks the state and exchanges the code exactly once, and parsing of
//! what a person pastes into `goto-auth-proxy login` (the redirected URL, or the code).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use maud::{html, Markup, DOCTYPE};

use crate::config::GrantKind;
use crate::token::accounts::AccountSet;
use crate::token::Credential;

/// A pending sign-in expires after this long: time enough to sign in, short enough that a
/// leaked `state` soon means nothing.
const PENDING_TTL: Duration = Duration::from_secs(10 * 60);

/// At most this many sign-ins are pending per credential; a new one drops the oldest, so
/// however often `/login` is called, memory and the cost of the next call stay the same.
const PENDING_PER_CREDENTIAL: usize = 32;

/// Why a sign-in could not start or finish; safe to show.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoginError {
    /// The credential's grant has no browser sign-in.
    #[error("credential {0:?} does not use grant \"authorization_code\"; it needs no sign-in")]
    NotAuthorizationCode(String),
    /// The callback's `state` is unknown, expired or already used.
    #[error(
        "unknown or already used sign-in state: start again from /login/{{credential}} or `goto-auth-proxy login`"
    )]
    BadState,
    /// `?account=` on a credential that holds one token.
    #[error("credential {0:?} holds one token: set accounts = true on it to sign in several accounts")]
    NotAccounts(String),
    /// `?account=` is not a name.
    #[error("{0} is not an account name: 1-64 ASCII letters, digits, '_', '-' and '.'")]
    BadAccountName(String),
    /// The callback carried no code.
    #[error("no authorization code in the callback{}", .0.as_deref().map(|e| format!(" (the authorization server said: {e})")).unwrap_or_default())]
    NoCode(Option<String>),
    /// The token endpoint refused the code, or was unreachable.
    #[error("code exchange failed: {0}")]
    Exchange(#[source] crate::token::source::SourceError),
    /// The tokens the code brought could not be kept (stored, or indexed as an account).
    #[error("code exchange failed: {0}")]
    Install(#[source] crate::token::RefreshError),
}

/// One sign-in in progress.
struct Pending {
    credential: String,
    /// The account a sign-in to an account credential adds or renews (`None`: named
    /// after who signs in).
    account: Option<String>,
    verifier: String,
    redirect_uri: String,
    /// `tokio`'s clock, so a test with paused time can let one expire.
    created: tokio::time::Instant,
}

/// Sign-ins in progress: by `state`, and per credential in the order they began, so
/// starting one is a constant amount of work (insert, and drop the oldest or the
/// expired from the front) instead of a scan of all.
#[derive(Default)]
struct PendingTable {
    by_state: HashMap<String, Pending>,
    /// Per credential, its states oldest first (one already finished stays until it
    /// reaches the front; it counts toward the bound, which only makes it tighter).
    order: HashMap<String, VecDeque<String>>,
}

impl PendingTable {
    /// Adds a sign-in under `state`, dropping the credential's expired ones and, beyond
    /// [`PENDING_PER_CREDENTIAL`], its oldest.
    fn insert(&mut self, state: String, pending: Pending) {
        let now = pending.created;
        let order = self.order.entry(pending.credential.clone()).or_default();
        while let Some(oldest) = order.front() {
            let expired = self.by_state.get(oldest).is_none_or(|p| now.duration_since(p.created) >= PENDING_TTL);
            if order.len() < PENDING_PER_CREDENTIAL && !expired {
                break;
            }
            if let Some(oldest) = order.pop_front() {
                self.by_state.remove(&oldest);
            }
        }
        order.push_back(state.clone());
        self.by_state.insert(state, pending);
    }

    /// Takes the sign-in of `state` (spent either way); `None` when unknown or expired.
    fn take(&mut self, state: &str) -> Option<Pending> {
        self.by_state.remove(state).filter(|p| p.created.elapsed() < PENDING_TTL)
    }
}

/// Sign-ins in progress, keyed by their `state`.
pub(crate) struct LoginFlows {
    pending: Mutex<PendingTable>,
    /// Used when a credential sets no `redirect_uri`: the admin listener's `/callback`.
    default_redirect: String,
    /// The account the last finished sign-in went to (for `login` to report).
    last_account: Mutex<Option<String>>,
}

/// An authorize URL and the state that will come back with the code.
pub(crate) struct Started {
    /// Where the person signs in.
    pub url: String,
    /// The `state` value sent.
    pub state: String,
}

impl LoginFlows {
    /// Flows whose default redirect URI is `default_redirect`.
    pub(crate) fn new(default_redirect: String) -> LoginFlows {
        LoginFlows { pending: Mutex::new(PendingTable::default()), default_redirect, last_account: Mutex::default() }
    }

    /// Begins a sign-in for `cred` (as `account`, for an account credential) and returns
    /// the authorize URL.
    pub(crate) fn start(&self, cred: &Credential, account: Option<&str>) -> Result<String, LoginError> {
        self.begin(cred, account).map(|s| s.url)
    }

    /// Begins a sign-in, returning the URL and its state.
    pub(crate) fn begin(&self, cred: &Credential, account: Option<&str>) -> Result<Started, LoginError> {
        let cfg = cred.config();
        if cfg.grant != GrantKind::AuthorizationCode {
            return Err(LoginError::NotAuthorizationCode(cfg.name.clone()));
        }
        if let Some(a) = account {
            if !cfg.accounts {
                return Err(LoginError::NotAccounts(cfg.name.clone()));
            }
            if !crate::config::is_valid_name(a) {
                return Err(LoginError::BadAccountName(crate::config::quoted(a)));
            }
        }
        let redirect_uri = cfg.redirect_uri.clone().unwrap_or_else(|| self.default_redirect.clone());
        let state = crate::random::token(24);
        let verifier = crate::random::token(48);
        let url = authorize_url(
            &cfg.authorize_url,
            cfg.client_id.as_deref().unwrap_or_default(),
            &redirect_uri,
            &state,
            &crate::random::pkce_challenge(&verifier),
            cfg.scope.as_deref(),
            &cfg.authorize_params,
        );
        if let Ok(mut p) = self.pending.lock() {
            let created = tokio::time::Instant::now();
            let account = account.map(str::to_string);
            p.insert(state.clone(), Pending { credential: cfg.name.clone(), account, verifier, redirect_uri, created });
        }
        Ok(Started { url, state })
    }

    /// The account the last finished sign-in went to, if it was an account's.
    pub(crate) fn last_account(&self) -> Option<String> {
        self.last_account.lock().ok().and_then(|l| l.clone())
    }

    /// Finishes a sign-in: the state must be pending (it is consumed either way). An
    /// account credential's sign-in goes to its account set (`accounts`); the answer
    /// names the account signed in.
    pub(crate) async fn finish(
        &self,
        credentials: &BTreeMap<String, Arc<Credential>>,
        accounts: &BTreeMap<String, Arc<AccountSet>>,
        code: &str,
        state: &str,
    ) -> Result<(Arc<Credential>, Option<String>), LoginError> {
        let pending = self.pending.lock().ok().and_then(|mut p| p.take(state)).ok_or(LoginError::BadState)?;
        let cred = credentials.get(&pending.credential).cloned().ok_or(LoginError::BadState)?;
        let response = cred
            .source()
            .exchange_code(code, &pending.redirect_uri, Some(&pending.verifier))
            .await
            .map_err(LoginError::Exchange)?;
        if let Some(set) = accounts.get(&pending.credential) {
            let name = set.sign_in(pending.account.as_deref(), response).await.map_err(LoginError::Install)?;
            if let Ok(mut last) = self.last_account.lock() {
                *last = Some(name.clone());
            }
            return Ok((cred, Some(name)));
        }
        cred.install_response(response).await.map_err(LoginError::Install)?;
        Ok((cred, None))
    }

    /// Finishes the sign-in a `GET /callback?…` brings back: what the page answering it
    /// says.
    pub(crate) async fn finish_callback(
        &self,
        query: &str,
        credentials: &BTreeMap<String, Arc<Credential>>,
        accounts: &BTreeMap<String, Arc<AccountSet>>,
    ) -> Outcome {
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let result = match (params.get("code"), params.get("state")) {
            (Some(code), Some(state)) => self.finish(credentials, accounts, code, state).await,
            (None, _) => Err(LoginError::NoCode(params.get("error_description").or(params.get("error")).cloned())),
            (Some(_), None) => Err(LoginError::BadState),
        };
        match result {
            Ok((cred, None)) => Outcome {
                status: StatusCode::OK,
                title: "Signed in",
                message: html! { "Credential " b { (cred.name()) } " is now signed in." },
            },
            Ok((cred, Some(account))) => Outcome {
                status: StatusCode::OK,
                title: "Signed in",
                message: html! { "Account " b { (account) } " of credential " b { (cred.name()) } " is now signed in." },
            },
            Err(e) => {
                tracing::warn!(error = %e, "sign-in callback failed");
                let status = match e {
                    LoginError::Exchange(_) | LoginError::Install(_) => StatusCode::BAD_GATEWAY,
                    _ => StatusCode::BAD_REQUEST,
                };
                Outcome { status, title: "Sign-in failed", message: html! { (e.to_string()) } }
            }
        }
    }

    /// Handles `GET /callback?…` where nothing else is served (`login`'s own listener):
    /// a page with neither style nor script.
    pub(crate) async fn callback(
        &self,
        query: &str,
        credentials: &BTreeMap<String, Arc<Credential>>,
        accounts: &BTreeMap<String, Arc<AccountSet>>,
    ) -> (StatusCode, String) {
        let outcome = self.finish_callback(query, credentials, accounts).await;
        let page = html! {
            (DOCTYPE)
            html {
                head { meta charset="utf-8"; title { "goto-auth-proxy: " (outcome.title) } }
                body {
                    h1 { (outcome.title) }
                    p { (outcome.message) @if outcome.status.is_success() { " You can close this tab." } }
                }
            }
        };
        (outcome.status, page.into_string())
    }
}

/// What a sign-in's callback came to, for the page that says so.
pub(crate) struct Outcome {
    /// The answer's status: 200 when signed in.
    pub status: StatusCode,
    /// "Signed in" or "Sign-in failed".
    pub title: &'static str,
    /// Who signed in, or why not (escaped by maud).
    pub message: Markup,
}

/// The authorize URL with every parameter the code flow needs, then the credential's
/// `authorize_params` (which config validation keeps from naming the proxy's own).
pub(crate) fn authorize_url(
    base: &str,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
    scope: Option<&str>,
    extra: &[(String, String)],
) -> String {
    // `base` was validated as a URL when the config loaded; GoTo's page otherwise.
    let Some(mut u) = url::Url::parse(base).or_else(|_| url::Url::parse(crate::config::GOTO_AUTHORIZE_URL)).ok() else {
        return base.to_string();
    };
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("client_id", client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(s) = scope {
            q.append_pair("scope", s);
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
    }
    u.into()
}

/// What a person pasted: the redirected URL (code and state in its query) or a bare code.
pub(crate) fn parse_pasted(line: &str) -> Option<(String, Option<String>)> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let query = if let Ok(u) = url::Url::parse(line) {
        u.query().map(str::to_string)
    } else if let Some((_, q)) = line.split_once('?') {
        Some(q.to_string())
    } else if line.contains("code=") {
        Some(line.to_string())
    } else {
        return Some((line.to_string(), None));
    };
    let params: HashMap<String, String> = url::form_urlencoded::parse(query?.as_bytes()).into_owned().collect();
    let code = params.get("code")?.clone();
    Some((code, params.get("state").cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorize_url_has_every_parameter() {
        let u = authorize_url(
            "https://auth.example/oauth/authorize",
            "cid",
            "http://127.0.0.1:9901/callback",
            "st",
            "ch",
            Some("openid offline_access"),
            &[("prompt".to_string(), "consent".to_string())],
        );
        let parsed = url::Url::parse(&u).unwrap();
        let q: HashMap<_, _> = parsed.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], "cid");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:9901/callback");
        assert_eq!(q["state"], "st");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["scope"], "openid offline_access");
        assert_eq!(q["prompt"], "consent");
    }

    fn pending(credential: &str) -> Pending {
        Pending {
            credential: credential.into(),
            account: None,
            verifier: "v".into(),
            redirect_uri: "http://127.0.0.1/callback".into(),
            created: tokio::time::Instant::now(),
        }
    }

    #[test]
    fn at_most_32_pending_per_credential_and_a_new_one_drops_the_oldest() {
        let mut t = PendingTable::default();
        for i in 0..1000 {
            t.insert(format!("a{i}"), pending("a"));
        }
        t.insert("b0".into(), pending("b"));
        assert_eq!(t.by_state.len(), PENDING_PER_CREDENTIAL + 1, "32 of `a`, one of `b`");
        assert_eq!(t.order["a"].len(), PENDING_PER_CREDENTIAL);
        assert!(t.take("a0").is_none() && t.take("a967").is_none(), "the oldest were dropped");
        assert!(t.take("a968").is_some() && t.take("a999").is_some() && t.take("b0").is_some());
        assert!(t.take("a999").is_none(), "a state is spent once taken");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pending_sign_in_lives_ten_minutes() {
        let mut t = PendingTable::default();
        for state in ["early", "late", "never-used"] {
            t.insert(state.into(), pending("a"));
        }
        tokio::time::advance(PENDING_TTL - Duration::from_secs(1)).await;
        assert!(t.take("early").is_some(), "still alive just before ten minutes");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(t.take("late").is_none(), "expired after ten minutes");
        t.insert("new".into(), pending("a"));
        assert_eq!(t.by_state.len(), 1, "starting one drops the expired: {:?}", t.order["a"]);
    }

    #[test]
    fn pasted_forms() {
        assert_eq!(
            parse_pasted("http://127.0.0.1:9901/callback?code=abc&state=xyz\n"),
            Some(("abc".into(), Some("xyz".into())))
        );
        assert_eq!(parse_pasted("https://example.com/404?state=s&code=a%2Fb"), Some(("a/b".into(), Some("s".into()))));
        assert_eq!(parse_pasted("  thecode  "), Some(("thecode".into(), None)));
        assert_eq!(parse_pasted("code=abc&state=q"), Some(("abc".into(), Some("q".into()))));
        assert_eq!(parse_pasted(""), None);
        assert_eq!(parse_pasted("https://example.com/cb?error=access_denied"), None);
    }
}
