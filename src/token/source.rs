//! Talks to token endpoints (reqwest): sends a [`TokenRequest`], parses GoTo's answers
//! (string or number `expires_in`, keys as strings or big integers), and looks up
//! organizer/account keys when a token response lacks them.
//!
//! [`Renewal`] says which kind of source a credential has: its token endpoint, or
//! (`static`) its own config.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer};

use super::grant::{self, TokenRequest};
use super::key::{self, Dropped};
use crate::config::{CredentialConfig, GrantKind};
use crate::secret::Secret;

/// Why a token endpoint call did not yield a token.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Network, TLS or timeout.
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    /// The endpoint refused the grant (OAuth error body).
    #[error("token endpoint refused the {kind} grant: HTTP {status} {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// Which grant was sent.
        kind: &'static str,
        /// HTTP status.
        status: u16,
        /// OAuth `error` code, or `http_error` when the body had none.
        error: String,
        /// OAuth `error_description`.
        description: Option<String>,
        /// `Retry-After` (seconds) of the answer: the earliest the endpoint wants to see
        /// the next call.
        retry_after: Option<Duration>,
    },
    /// The body was not a token response.
    #[error("token endpoint answered something that is not a token: {0}")]
    Malformed(String),
    /// Nothing to renew with: a person must sign in.
    #[error("{0}")]
    NeedsLogin(String),
}

impl SourceError {
    /// True when the grant itself was refused (a dead refresh token, wrong password…),
    /// as opposed to a transient failure worth retrying as is.
    pub fn is_grant_refused(&self) -> bool {
        matches!(self, SourceError::Refused { status, .. } if (400..500).contains(status) && *status != 429)
    }

    /// True when the endpoint refused what the configuration's secret files hold: the
    /// client (`invalid_client`), or a Direct Login password. Before such a refusal
    /// counts, the files are read again ([`TokenSource::obtain`]).
    pub fn is_secret_refused(&self) -> bool {
        matches!(self, SourceError::Refused { error, .. } if error == "invalid_client")
            || matches!(self, SourceError::Refused { kind: "password", .. } if self.is_grant_refused())
    }

    /// True when the endpoint said the grant itself is dead (`invalid_grant`: a revoked
    /// PAT, a wrong password) or the client is not accepted (`invalid_client`, or any
    /// 401): asking again with the same values cannot succeed.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, SourceError::Refused { status, error, .. }
            if error == "invalid_grant" || error == "invalid_client" || *status == 401)
    }

    /// How long the endpoint asked the proxy to wait before calling again, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// `text` with every secret of four characters or more (shorter ones would blank out
/// ordinary words) replaced by `***`, in each spelling an endpoint may quote it back in:
/// as sent, in any ASCII case, percent-encoded (either case of hex digit, any mix of
/// encoded and plain characters, `+` or `%20` for a space), and inside base64 (as a Basic
/// header carries `client_id:client_secret`, whatever the client id).
///
/// Only the first [`BLANK_LIMIT`] bytes are kept (then `…`): the search costs the text's
/// length times the secrets', and callers show a few hundred characters at most, so a
/// hostile megabyte of error text costs no more than a short one.
fn blank_out<'a>(text: &'a str, secrets: &[std::borrow::Cow<'_, str>]) -> std::borrow::Cow<'a, str> {
    let secrets: Vec<&[u8]> = secrets.iter().filter(|s| s.chars().count() >= 4).map(|s| s.as_bytes()).collect();
    let cut = (0..=BLANK_LIMIT.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let (text, cut_off) = (&text[..cut], cut < text.len());
    let bytes = text.as_bytes();
    let mut found: Vec<(usize, usize)> = Vec::new();
    for start in (0..bytes.len()).filter(|&i| text.is_char_boundary(i)) {
        let end = secrets.iter().filter_map(|s| spelled_at(bytes, start, s)).max();
        if let Some(end) = end.filter(|&e| text.is_char_boundary(e)) {
            found.push((start, end));
        }
    }
    found.extend(base64_runs(bytes).filter(|&(s, e)| holds_secret_in_base64(&bytes[s..e], &secrets)));
    if found.is_empty() && !cut_off {
        return std::borrow::Cow::Borrowed(text);
    }
    found.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end) in found {
        if end <= copied {
            continue;
        }
        if start >= copied {
            out.push_str(&text[copied..start]);
            out.push_str("***");
        }
        copied = end;
    }
    out.push_str(&text[copied..]);
    if cut_off {
        out.push('…');
    }
    std::borrow::Cow::Owned(out)
}

/// How much of an outside error text [`blank_out`] searches and keeps.
const BLANK_LIMIT: usize = 8 * 1024;

/// Where a spelling of `secret` that begins at `text[start]` ends: each of its bytes as
/// itself in any ASCII case, as `%XX` (either case), or a space as `+`.
fn spelled_at(text: &[u8], start: usize, secret: &[u8]) -> Option<usize> {
    // Every position a spelling of the secret so far may end at (`%` matches itself or
    // begins `%25`, so more than one).
    let mut ends: smallvec::SmallVec<[usize; 4]> = smallvec::smallvec![start];
    for &want in secret {
        let mut next = smallvec::SmallVec::<[usize; 4]>::new();
        for &at in &ends {
            let Some(&got) = text.get(at) else { continue };
            if got.eq_ignore_ascii_case(&want) || (want == b' ' && got == b'+') {
                next.push(at.saturating_add(1));
            }
            let decoded =
                text.get(at.saturating_add(1)..at.saturating_add(3)).and_then(|h| std::str::from_utf8(h).ok());
            if got == b'%'
                && decoded.and_then(|h| u8::from_str_radix(h, 16).ok()).is_some_and(|d| d.eq_ignore_ascii_case(&want))
            {
                next.push(at.saturating_add(3));
            }
        }
        next.sort_unstable();
        next.dedup();
        if next.is_empty() {
            return None;
        }
        ends = next;
    }
    ends.last().copied()
}

/// The stretches of `text` that may be base64 (standard or URL-safe alphabet, at least
/// six characters, with their `=` padding).
fn base64_runs(text: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let is_b64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_');
    let mut from = 0usize;
    std::iter::from_fn(move || loop {
        let start = from.saturating_add(text.get(from..)?.iter().position(is_b64)?);
        let core = text.get(start..)?.iter().take_while(|b| is_b64(b)).count();
        let core_end = start.saturating_add(core);
        let padding = text.get(core_end..)?.iter().take(2).take_while(|&&b| b == b'=').count();
        from = core_end.saturating_add(padding);
        if core >= 6 {
            return Some((start, from));
        }
    })
}

/// Whether `run`, decoded as base64 from any of its first four characters (it may be
/// glued to a word before it), holds a secret in any spelling.
fn holds_secret_in_base64(run: &[u8], secrets: &[&[u8]]) -> bool {
    use base64::engine::{general_purpose::GeneralPurposeConfig, DecodePaddingMode, GeneralPurpose};
    use base64::{alphabet, Engine as _};
    let config = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true);
    let engines = [GeneralPurpose::new(&alphabet::STANDARD, config), GeneralPurpose::new(&alphabet::URL_SAFE, config)];
    let core = run.strip_suffix(b"==").or_else(|| run.strip_suffix(b"=")).unwrap_or(run);
    (0..4).filter_map(|skip| core.get(skip..)).any(|part| {
        let whole = part.get(..part.len().saturating_sub(part.len() % 4)).unwrap_or(part);
        // A last group of two or three characters is a byte or two; of one, nothing.
        let part = if part.len() % 4 == 1 { whole } else { part };
        engines.iter().filter_map(|e| e.decode(part).ok()).any(|decoded| {
            (0..decoded.len()).any(|start| secrets.iter().any(|s| spelled_at(&decoded, start, s).is_some()))
        })
    })
}

/// Largest token endpoint (or keys endpoint) answer read: beyond it the answer is
/// refused, like a malformed one, instead of growing the process (1 MiB).
pub(crate) const MAX_ANSWER: usize = 1024 * 1024;

/// Longest `Retry-After` honoured: a broken header must not stop renewals for a day.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A token endpoint's `Retry-After` (seconds or an HTTP-date, as the data path reads an
/// API's), capped at [`MAX_RETRY_AFTER`]; garbage counts as absent.
pub(crate) fn parse_retry_after(value: Option<&http::HeaderValue>, now: SystemTime) -> Option<Duration> {
    crate::limit::retry_after(value, now).map(|d| d.min(MAX_RETRY_AFTER))
}

/// A token endpoint's answer, with every field GoTo may send that the proxy uses.
#[derive(Deserialize)]
pub struct TokenResponse {
    /// The bearer token.
    #[serde(deserialize_with = "secret")]
    pub access_token: Secret,
    /// Seconds of validity: a number, or a string in Direct Login answers.
    #[serde(default, deserialize_with = "number_or_string")]
    pub expires_in: Option<u64>,
    /// Present when the server issued (or rotated) one.
    #[serde(default, deserialize_with = "opt_secret")]
    pub refresh_token: Option<Secret>,
    /// GoTo organizer key; only a valid one ([`super::valid_key`]).
    #[serde(default, deserialize_with = "key_string")]
    pub organizer_key: Option<String>,
    /// GoTo account key; only a valid one.
    #[serde(default, deserialize_with = "key_string")]
    pub account_key: Option<String>,
    /// Who signed in (GoTo: the user's email), when the answer says (`principal`, else
    /// `email`); else the OpenID `id_token`'s `email` or `sub`, for display only
    /// ([`super::id_token`]). At most [`super::MAX_PRINCIPAL`] characters.
    #[serde(default, deserialize_with = "key_string")]
    pub principal: Option<String>,
    /// The answer's `email`: who signed in when there is no `principal`.
    #[serde(default, deserialize_with = "key_string")]
    email: Option<String>,
    /// An OpenID answer's `id_token`: read once for `principal`, never stored or sent.
    #[serde(default, deserialize_with = "opt_secret")]
    id_token: Option<Secret>,
    /// Keys and principals of the answer that were not valid, dropped: warned about by
    /// whoever knows the credential ([`TokenResponse::warn_dropped`]).
    #[serde(skip)]
    dropped: Vec<Dropped>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("organizer_key", &self.organizer_key)
            .field("account_key", &self.account_key)
            .field("principal", &self.principal)
            .field("has_id_token", &self.id_token.is_some())
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl TokenResponse {
    /// Parses a token endpoint body. Keys and the principal are data from outside:
    /// one that is not valid is dropped (absent), and noted for [`Self::warn_dropped`].
    pub fn parse(body: &[u8]) -> Result<TokenResponse, SourceError> {
        let mut r: TokenResponse =
            serde_json::from_slice(body).map_err(|e| SourceError::Malformed(format!("{e} ({} bytes)", body.len())))?;
        if r.access_token.expose().is_empty() {
            return Err(SourceError::Malformed("empty access_token".into()));
        }
        let mut dropped = Vec::new();
        r.organizer_key = key::first_key([("organizer_key", r.organizer_key.take())], &mut dropped);
        r.account_key = key::first_key([("account_key", r.account_key.take())], &mut dropped);
        let [from_email, from_sub] =
            r.id_token.take().map_or([("", None), ("", None)], |t| super::id_token::principal_claims(t.expose()));
        let candidates = [("principal", r.principal.take()), ("email", r.email.take()), from_email, from_sub];
        r.principal = key::first_principal(candidates, &mut dropped);
        r.dropped = dropped;
        Ok(r)
    }

    /// Logs a warning for each key or principal [`Self::parse`] dropped, naming
    /// `credential` and the field (never the value).
    pub(crate) fn warn_dropped(&self, credential: &str) {
        key::warn_dropped(credential, "token answer", &self.dropped);
    }
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    String::deserialize(d).map(Secret::new)
}

fn opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()).map(Secret::new))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Float(f64),
    Str(String),
}

/// `expires_in` as GoTo sends it (a number, or a string in Direct Login answers). Zero,
/// negative and non-numeric values are refused, so the renewal fails like an error answer
/// and the current token stays; huge values saturate and are
/// clamped to a year later ([`super::lifetime_of`]).
fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let secs = match Option::<NumOrStr>::deserialize(d)? {
        None => return Ok(None),
        Some(NumOrStr::Num(n)) => Some(n),
        Some(NumOrStr::Float(f)) => whole_seconds(f),
        Some(NumOrStr::Str(s)) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| s.parse::<f64>().ok().and_then(whole_seconds)).or_else(|| {
                // "-5" and "0" are numbers, just not lifetimes.
                s.parse::<f64>().ok().map(|_| 0)
            })
        }
    };
    match secs {
        Some(0) => Err(D::Error::custom("expires_in is zero or negative")),
        Some(n) => Ok(Some(n)),
        None => Err(D::Error::custom("expires_in is not a number of seconds")),
    }
}

/// A positive float as whole seconds (saturating); zero for zero or less, `None` for
/// what is not a finite number.
fn whole_seconds(f: f64) -> Option<u64> {
    if !f.is_finite() {
        return None;
    }
    // `as` saturates: 1e20 becomes u64::MAX, -5.0 becomes 0.
    Some(f.ceil() as u64)
}

/// Keys are integers beyond 2^53: keep them as exact decimal strings.
fn key_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// An error with its causes ("error sending request: connection refused"), without the
/// URL: a configured URL's user info and query are never logged.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[derive(Deserialize)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

/// Organizer and account keys of the signed-in user; each valid, or absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Keys {
    /// `{organizerKey}`.
    pub(crate) organizer_key: Option<String>,
    /// `{accountKey}`.
    pub(crate) account_key: Option<String>,
    /// Who signed in, when the answer says (email or user name).
    pub(crate) principal: Option<String>,
    /// Values of the answer that were not valid, dropped, for the warnings.
    pub(crate) dropped: Vec<Dropped>,
}

/// The SCIM extension of GoTo's identity answer that holds the user's accounts.
const SCIM_GETGO: &str = "urn:scim:schemas:extension:getgo:1.0";

/// Reads keys from any of the three answers that carry them, tolerating missing fields:
/// a token answer (`organizer_key`, `account_key`, `principal`), the Admin API's `/me`
/// (`key`, `accountKey` or `accounts[].key`, `email`) and the identity SCIM document
/// (`id` is the organizer key, the first `accounts[].value` of the
/// `urn:scim:schemas:extension:getgo:1.0` extension the account key, `userName` who
/// signed in). Keys may be strings or integers beyond 2^53; both stay exact. Each is
/// the first valid one of its fields; those not valid are dropped ([`Keys::dropped`]).
pub(crate) fn parse_keys(body: &[u8]) -> Keys {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Keys::default();
    };
    let as_key = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let field = |name: &'static str| (name, v.get(name).and_then(as_key));
    let first_of = |list: Option<&serde_json::Value>, field: &str| {
        list.and_then(|a| a.get(0)).and_then(|a| a.get(field)).and_then(as_key)
    };
    let scim = v.get(SCIM_GETGO);
    // `id` means the user key only in a SCIM document (anything else may have an `id`).
    let is_scim = scim.is_some() || v.get("schemas").is_some();
    let mut dropped = Vec::new();
    let organizer_key = key::first_key(
        [
            field("organizer_key"),
            field("organizerKey"),
            field("key"),
            ("id", if is_scim { v.get("id").and_then(as_key) } else { None }),
        ],
        &mut dropped,
    );
    let account_key = key::first_key(
        [
            field("account_key"),
            field("accountKey"),
            ("accounts[0].key", first_of(v.get("accounts"), "key")),
            ("accounts[0].value", first_of(scim.and_then(|s| s.get("accounts")), "value")),
        ],
        &mut dropped,
    );
    let principal = key::first_principal(
        [
            field("principal"),
            field("userName"),
            field("email"),
            ("emails[0].value", first_of(v.get("emails"), "value")),
        ],
        &mut dropped,
    );
    Keys { organizer_key, account_key, principal, dropped }
}

/// What renews a credential's token: the refresher asks this, never the grant.
pub(crate) enum Renewal {
    /// `static`: the configured token, served as given and read again at every
    /// renewal. Nothing to call, store, schedule or look keys up for; it never expires
    /// on its own within [`super::MAX_LIFETIME`].
    Static(Secret),
    /// Every other grant: the token endpoint, called through the credential's
    /// [`TokenSource`]; its answers are stored, and the next renewal scheduled.
    Endpoint,
}

impl Renewal {
    /// The kind of source `cfg`'s grant is: the one place the grant decides it.
    pub(crate) fn of(cfg: &CredentialConfig) -> Renewal {
        match cfg.grant {
            GrantKind::Static => Renewal::Static(cfg.token.clone().unwrap_or_else(|| Secret::new(""))),
            _ => Renewal::Endpoint,
        }
    }
}

/// Obtains tokens for one credential from its token endpoint.
#[derive(Clone)]
pub struct TokenSource {
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

    /// The credential's configuration.
    pub fn config(&self) -> &Arc<CredentialConfig> {
        &self.cfg
    }

    /// Obtains a new token with whatever this grant renews with.
    ///
    /// `refresh_token` is the newest one held (stored, or the config's seed).
    /// A refusal of the client secret or password reads their files again first
    /// ([`TokenSource::with_reread`]).
    pub(crate) async fn obtain(&self, refresh_token: Option<&Secret>) -> Result<TokenResponse, SourceError> {
        self.with_reread(|cfg| async move { self.obtain_with(&cfg, refresh_token).await }).await
    }

    /// [`TokenSource::obtain`] with `cfg`'s secrets.
    async fn obtain_with(
        &self,
        cfg: &CredentialConfig,
        refresh_token: Option<&Secret>,
    ) -> Result<TokenResponse, SourceError> {
        match cfg.grant {
            // Never asked: a static credential renews from its config ([`Renewal::Static`]).
            GrantKind::Static => Err(SourceError::Unreachable(format!(
                "credential {:?} is static: it has no token endpoint to call",
                cfg.name
            ))),
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
    pub async fn exchange_code(
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
    pub(crate) async fn send_with(
        &self,
        cfg: &CredentialConfig,
        req: TokenRequest,
    ) -> Result<TokenResponse, SourceError> {
        let mut b = self.http.post(&req.url).form(&req.form).header(http::header::ACCEPT, "application/json");
        if let Some(authorization) = &req.authorization {
            let mut value = http::HeaderValue::try_from(authorization.expose())
                .map_err(|_| SourceError::Unreachable("the client credentials do not form a header".into()))?;
            value.set_sensitive(true);
            b = b.header(http::header::AUTHORIZATION, value);
        }
        let res = b.send().await.map_err(|e| SourceError::Unreachable(describe(e)))?;
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
                    tracing::warn!(credential = %self.cfg.name, error = %describe(e), fallback, "organizer/account key lookup failed");
                }
            }
        }
        None
    }
}

/// The URLs a key lookup tries, in order: `keys_url`, and when it is an identity
/// endpoint (`…/identity/v1/Users/me`), the Admin API's `/me` on the same host.
fn keys_urls(keys_url: &str) -> Vec<String> {
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
    while let Some(chunk) = res.chunk().await.map_err(|e| SourceError::Unreachable(describe(e)))? {
        if body.len().saturating_add(chunk.len()) > MAX_ANSWER {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests;
