//! The token endpoint client (reqwest): sends a [`TokenRequest`], reads the answer
//! (bounded), and looks up organizer/account keys when a token answer lacks them.

use std::sync::Arc;
use std::time::SystemTime;

use super::redact::blank_out;
use super::response::{parse_keys, parse_retry_after, Keys, OAuthError, TokenResponse};
use super::SourceError;
use crate::config::{CredentialConfig, GrantKind};
use crate::secret::Secret;
use crate::token::grant::{self, TokenRequest};
use crate::token::key;

/// Largest token endpoint (or keys endpoint) answer read: beyond it the answer is
/// refused, like a malformed one, instead of growing the process (1 MiB).
const MAX_ANSWER: usize = 1024 * 1024;

/// A failed exchange with an endpoint (network, TLS, timeout), shown with its causes
/// ("error sending request: connection refused") and never with its URL: a configured
/// URL's user info and query are never logged.
#[derive(Debug)]
pub struct Transport(reqwest::Error);

impl From<reqwest::Error> for Transport {
    fn from(e: reqwest::Error) -> Transport {
        Transport(e.without_url())
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(&self.0);
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// No `source()`: the display already walks the causes, and would show them twice.
impl std::error::Error for Transport {}

/// Obtains tokens for one credential from its token endpoint.
#[derive(Clone)]
pub(crate) struct TokenSource {
    http: reqwest::Client,
    cfg: Arc<CredentialConfig>,
    /// `cfg` with the client secret and password read again from their files after the
    /// endpoint refused them: used instead of `cfg` until a reload brings a credential
    /// built on the new values (which also drops this source).
    reread: Arc<arc_swap::ArcSwapOption<CredentialConfig>>,
    /// Where keys are looked up, in order: the next is tried when one fails (shared by
    /// the clones an account credential's accounts hold).
    keys_urls: Arc<[String]>,
}

impl TokenSource {
    /// A source for `cfg`, sharing `http` with the others.
    pub(crate) fn new(http: reqwest::Client, cfg: Arc<CredentialConfig>) -> TokenSource {
        // Keys are looked up only where the token is meant to go: an explicit keys_url,
        // or GoTo's own when the token also comes from GoTo.
        let goto_token =
            cfg.token_url == crate::config::GOTO_TOKEN_URL || cfg.token_url == crate::config::GOTO_DIRECT_LOGIN_URL;
        let keys_urls = if cfg.keys_url != crate::config::GOTO_KEYS_URL || goto_token {
            keys_urls(&cfg.keys_url)
        } else {
            Vec::new()
        };
        TokenSource { http, cfg, reread: Arc::default(), keys_urls: keys_urls.into() }
    }

    /// What token calls send: the configuration, or its secrets read again.
    fn current(&self) -> Arc<CredentialConfig> {
        self.reread.load_full().unwrap_or_else(|| self.cfg.clone())
    }

    /// Makes `call` with the current secrets; when the endpoint refuses them
    /// ([`SourceError::is_secret_refused`]) and their files now hold other values (a
    /// rotation no reload has brought yet), once more at once with those.
    async fn with_reread<F, Fut>(&self, call: F) -> Result<TokenResponse, SourceError>
    where
        F: Fn(Arc<CredentialConfig>) -> Fut,
        Fut: std::future::Future<Output = Result<TokenResponse, SourceError>>,
    {
        let cfg = self.current();
        match call(cfg.clone()).await {
            Err(e) if e.is_secret_refused() => {
                let Some(fresh) = cfg.with_secret_files_reread().map(Arc::new) else { return Err(e) };
                tracing::info!(credential = %cfg.name, error = %e, "refused, and a secret file holds a new value: calling again with it");
                self.reread.store(Some(fresh.clone()));
                call(fresh).await
            }
            other => other,
        }
    }

    /// Obtains a new token with whatever this grant renews with.
    ///
    /// `refresh_token` is the newest one held (stored, or the config's seed).
    /// A refusal of the client secret or password reads their files again first
    /// ([`TokenSource::with_reread`]).
    pub(super) async fn obtain(&self, refresh_token: Option<&Secret>) -> Result<TokenResponse, SourceError> {
        self.with_reread(|cfg| async move { self.obtain_with(&cfg, refresh_token).await }).await
    }

    /// [`TokenSource::obtain`] with `cfg`'s secrets.
    async fn obtain_with(
        &self,
        cfg: &CredentialConfig,
        refresh_token: Option<&Secret>,
    ) -> Result<TokenResponse, SourceError> {
        match cfg.grant {
            // Never asked: a static credential's source is its configuration ([`super::Source`]).
            GrantKind::Static => Err(SourceError::NoEndpoint(cfg.name.clone())),
            GrantKind::AuthorizationCode => match refresh_token {
                Some(rt) => self.send_with(cfg, grant::refresh(cfg, rt)).await,
                None => Err(SourceError::NeedsLogin(format!(
                    "credential {:?} has never been signed in: run `{}`",
                    cfg.name,
                    cfg.login_command(None)
                ))),
            },
            GrantKind::Password => {
                if let Some(rt) = refresh_token {
                    match self.send_with(cfg, grant::refresh(cfg, rt)).await {
                        Err(e) if e.is_grant_refused() => {
                            tracing::info!(credential = %cfg.name, error = %e, "refresh refused; logging in with the password again");
                        }
                        other => return other,
                    }
                }
                self.send_with(cfg, grant::password(cfg)).await
            }
            GrantKind::PersonalAccessToken => self.send_with(cfg, grant::personal_access_token(cfg)).await,
            GrantKind::ClientCredentials => self.send_with(cfg, grant::client_credentials(cfg)).await,
        }
    }

    /// Exchanges an authorization code (once) for tokens.
    pub(crate) async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> Result<TokenResponse, SourceError> {
        self.with_reread(|cfg| async move {
            self.send_with(&cfg, grant::authorization_code(&cfg, code, redirect_uri, verifier)).await
        })
        .await
    }

    /// Sends one token request built from `cfg` and parses the answer.
    async fn send_with(&self, cfg: &CredentialConfig, req: TokenRequest) -> Result<TokenResponse, SourceError> {
        let mut b = self.http.post(&req.url).form(&req.form).header(http::header::ACCEPT, "application/json");
        if let Some(authorization) = &req.authorization {
            let mut value =
                http::HeaderValue::try_from(authorization.expose()).map_err(SourceError::ClientCredentials)?;
            value.set_sensitive(true);
            b = b.header(http::header::AUTHORIZATION, value);
        }
        let res = b.send().await.map_err(Transport::from)?;
        let status = res.status().as_u16();
        let retry_after = parse_retry_after(res.headers().get(http::header::RETRY_AFTER), SystemTime::now());
        if (300..400).contains(&status) {
            // Never followed: the request carries secrets, and the token goes nowhere else.
            return Err(SourceError::Refused {
                kind: req.kind,
                status,
                error: "redirect_not_followed".into(),
                description: Some(
                    "the token endpoint redirected; redirects are never followed: check token_url".into(),
                ),
                retry_after,
            });
        }
        let body = read_capped(res).await?;
        // Words from outside go into logs, pages and notifications: with any secret this
        // request sent blanked out (an endpoint may quote it back), escaped and bounded.
        let secrets = req.secrets(cfg);
        let outside = |text: &str, max| crate::error::printable(&blank_out(text, &secrets), max);
        if !(200..300).contains(&status) {
            let parsed: Option<OAuthError> = serde_json::from_slice(&body).ok();
            let (error, description) = match parsed {
                Some(OAuthError { error: Some(e), error_description }) => {
                    (outside(&e, 100), error_description.map(|d| outside(&d, 300)))
                }
                _ => ("http_error".to_string(), None),
            };
            return Err(SourceError::Refused { kind: req.kind, status, error, description, retry_after });
        }
        // The parser's complaint may quote the body ("invalid type: string \"…\"").
        let answer = TokenResponse::parse(&body).map_err(|e| match e {
            SourceError::Malformed(why) => SourceError::Malformed(outside(&why, 300)),
            e => e,
        })?;
        answer.warn_dropped(&self.cfg.name);
        Ok(answer)
    }

    /// Looks up organizer/account keys with `access_token`, when a keys URL applies: the
    /// identity endpoint, then the Admin API's `/me` when that fails.
    pub(crate) async fn fetch_keys(&self, access_token: &Secret) -> Option<Keys> {
        for (i, url) in self.keys_urls.iter().enumerate() {
            let res = self.http.get(url).bearer_auth(access_token.expose()).send().await;
            let fallback = i.saturating_add(1) < self.keys_urls.len();
            match res {
                Ok(r) if r.status().is_success() => match read_capped(r).await {
                    Ok(b) => {
                        let keys = parse_keys(&b);
                        key::warn_dropped(&self.cfg.name, "keys lookup", &keys.dropped);
                        return Some(keys);
                    }
                    Err(e) => {
                        tracing::warn!(credential = %self.cfg.name, error = %e, fallback, "organizer/account key lookup failed")
                    }
                },
                Ok(r) => {
                    tracing::warn!(credential = %self.cfg.name, status = r.status().as_u16(), fallback, "organizer/account key lookup failed");
                }
                Err(e) => {
                    tracing::warn!(credential = %self.cfg.name, error = %Transport::from(e), fallback, "organizer/account key lookup failed");
                }
            }
        }
        None
    }
}

/// The URLs a key lookup tries, in order: `keys_url`, and when it is an identity
/// endpoint (`…/identity/v1/Users/me`), the Admin API's `/me` on the same host.
pub(super) fn keys_urls(keys_url: &str) -> Vec<String> {
    let mut urls = vec![keys_url.to_string()];
    if let Ok(mut u) = url::Url::parse(keys_url) {
        if u.path().ends_with("/identity/v1/Users/me") {
            let base = u.path().trim_end_matches("/identity/v1/Users/me").to_string();
            u.set_path(&format!("{base}{}", crate::config::ADMIN_KEYS_PATH));
            u.set_query(None);
            urls.push(u.to_string());
        }
    }
    urls
}

/// Reads an answer's body, refusing one larger than [`MAX_ANSWER`] as soon as that is
/// known (from `Content-Length`, or while reading), so a hostile endpoint cannot make
/// the process hold an answer of any size.
async fn read_capped(mut res: reqwest::Response) -> Result<bytes::Bytes, SourceError> {
    let too_large = || SourceError::Malformed(format!("the answer is larger than {} KiB", MAX_ANSWER / 1024));
    if res.content_length().is_some_and(|n| n > MAX_ANSWER as u64) {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = res.chunk().await.map_err(Transport::from)? {
        if body.len().saturating_add(chunk.len()) > MAX_ANSWER {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
