//! Configuration: TOML file → raw serde structs (unknown keys refused) → a validated
//! [`Config`] whose every error names the file, the line and the key.
//!
//! Validation happens once, before any port is bound, so `check` and `run` agree on
//! what is wrong and a running proxy never meets an invalid route or credential.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::secret::Secret;

/// Where `--config` points when neither the flag nor `GOTO_AUTH_PROXY_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/goto-auth-proxy.toml";

/// GoTo's OAuth token endpoint (authorization code, refresh, PAT, client credentials).
pub const GOTO_TOKEN_URL: &str = "https://authentication.logmeininc.com/oauth/token";
/// GoTo's browser sign-in page.
pub const GOTO_AUTHORIZE_URL: &str = "https://authentication.logmeininc.com/oauth/authorize";
/// GoToAssist Corporate Direct Login endpoint (password grant).
pub const GOTO_DIRECT_LOGIN_URL: &str = "https://api.getgo.com/oauth/access_token";
/// Where organizer and account keys come from when a token response lacks them.
pub const GOTO_KEYS_URL: &str = "https://api.getgo.com/admin/rest/v1/me";

// ===== errors =====

/// A configuration problem, located as precisely as the input allows.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why the read failed.
        source: std::io::Error,
    },
    /// A problem at a known place in the file.
    #[error("{file}:{line}: {key}: {message}")]
    At {
        /// The config file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// Dotted key, e.g. `routes[1].credential`.
        key: String,
        /// What is wrong, in words.
        message: String,
    },
}

/// Turns byte offsets into line numbers and builds located errors.
struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|b| *b == b'\n').count() + 1
    }

    fn err(&self, span: &Range<usize>, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::At {
            file: self.file.to_string(),
            line: self.line_of(span),
            key: key.into(),
            message: message.into(),
        }
    }
}

// ===== raw file format =====

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    inbound: RawInbound,
    #[serde(default)]
    credentials: BTreeMap<String, Spanned<RawCredential>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    #[serde(default = "default_admin_listen")]
    admin_listen: SocketAddr,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    request_timeout: Duration,
    #[serde(default = "default_max_request_body")]
    max_request_body: bytesize::ByteSize,
    #[serde(default = "default_token_wait", with = "humantime_serde")]
    token_wait: Duration,
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default = "default_max_concurrent_requests")]
    max_concurrent_requests: usize,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            max_request_body: default_max_request_body(),
            token_wait: default_token_wait(),
            workers: None,
            max_concurrent_requests: default_max_concurrent_requests(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_request_body() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(10)
}
fn default_token_wait() -> Duration {
    Duration::from_secs(10)
}
fn default_max_concurrent_requests() -> usize {
    4096
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    #[serde(default)]
    allow_remote: Option<Spanned<bool>>,
    #[serde(default)]
    keys: Vec<Spanned<RawSecret>>,
    #[serde(default)]
    allow_cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    tls_cert: Option<Spanned<PathBuf>>,
    #[serde(default)]
    tls_key: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default)]
    store: Option<Spanned<String>>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    redis_url: Option<Spanned<RawSecret>>,
    #[serde(default)]
    redis_prefix: Option<String>,
}

/// A secret as written in the file: a literal, `{ env = "NAME" }` or `{ file = "PATH" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSecret {
    Literal(String),
    Env { env: String },
    File { file: PathBuf },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    grant: Spanned<String>,
    client_id: Option<Spanned<RawSecret>>,
    client_secret: Option<Spanned<RawSecret>>,
    redirect_uri: Option<Spanned<String>>,
    refresh_token: Option<Spanned<RawSecret>>,
    username: Option<Spanned<RawSecret>>,
    password: Option<Spanned<RawSecret>>,
    pat: Option<Spanned<RawSecret>>,
    token: Option<Spanned<RawSecret>>,
    token_url: Option<Spanned<String>>,
    authorize_url: Option<Spanned<String>>,
    keys_url: Option<Spanned<String>>,
    scope: Option<String>,
    #[serde(default, with = "humantime_serde")]
    refresh_before: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: Spanned<String>,
    upstream: Spanned<String>,
    credential: Option<Spanned<String>>,
    #[serde(default)]
    strip_prefix: bool,
    methods: Option<Spanned<Vec<String>>>,
    rate_limit: Option<Spanned<f64>>,
}

// ===== validated config =====

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages and reloads).
    pub source: String,
    /// Listener and data-path settings.
    pub proxy: ProxySettings,
    /// Where tokens are persisted.
    pub state: StateSettings,
    /// Who may use the listeners.
    pub inbound: InboundSettings,
    /// Credentials by name; only those routes use get a refresher.
    pub credentials: BTreeMap<String, Arc<CredentialConfig>>,
    /// Routes in file order (matching is longest prefix, not order).
    pub routes: Vec<RouteConfig>,
}

/// `[proxy]`.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Data-path listener.
    pub listen: SocketAddr,
    /// Admin listener: health, metrics, tokens.
    pub admin_listen: SocketAddr,
    /// TCP + TLS connect budget to an upstream.
    pub connect_timeout: Duration,
    /// Budget until the upstream's response headers arrive.
    pub request_timeout: Duration,
    /// Largest request body forwarded.
    pub max_request_body: u64,
    /// How long a request may wait for a token when none is valid.
    pub token_wait: Duration,
    /// Runtime worker threads; `None` = number of cores.
    pub workers: Option<usize>,
    /// Requests served at once; beyond it clients get `503 overloaded` at once.
    pub max_concurrent_requests: usize,
}

/// `[inbound]`: who may send requests, since any request becomes an authenticated one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundSettings {
    /// Non-loopback listen addresses are allowed (with keys and/or CIDRs).
    pub allow_remote: bool,
    /// Accepted values of `x-goto-auth-proxy-key`; when set, every client needs one.
    pub keys: Vec<Secret>,
    /// Remote peers allowed to connect (loopback always is).
    pub allow_cidrs: Vec<ipnet::IpNet>,
    /// TLS on the data-path listener: certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
}

/// PEM files for inbound TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// `[state]`.
#[derive(Debug, Clone)]
pub enum StateSettings {
    /// One JSON file, written atomically with mode 0600.
    File {
        /// Its path.
        path: PathBuf,
    },
    /// Shared by replicas through Redis.
    Redis {
        /// Connection URL (may hold a password, so a secret).
        url: Secret,
        /// Key prefix.
        prefix: String,
    },
}

/// How a credential obtains its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// OAuth 2.0 authorization code, then refresh tokens.
    AuthorizationCode,
    /// GoToAssist Corporate Direct Login.
    Password,
    /// GoTo personal access token.
    PersonalAccessToken,
    /// Generic OAuth client credentials.
    ClientCredentials,
    /// A fixed token managed elsewhere.
    Static,
}

impl GrantKind {
    /// The name used in the config file and in `/tokens`.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::AuthorizationCode => "authorization_code",
            GrantKind::Password => "password",
            GrantKind::PersonalAccessToken => "personal_access_token",
            GrantKind::ClientCredentials => "client_credentials",
            GrantKind::Static => "static",
        }
    }

    fn parse(s: &str) -> Option<GrantKind> {
        [
            GrantKind::AuthorizationCode,
            GrantKind::Password,
            GrantKind::PersonalAccessToken,
            GrantKind::ClientCredentials,
            GrantKind::Static,
        ]
        .into_iter()
        .find(|g| g.as_str() == s)
    }

    /// Keys a credential of this grant must have, and keys it may have.
    fn keys(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            GrantKind::AuthorizationCode => (
                &["client_id", "client_secret"],
                &["redirect_uri", "refresh_token", "token_url", "authorize_url", "keys_url", "scope", "refresh_before"],
            ),
            GrantKind::Password => {
                (&["client_id", "username", "password"], &["token_url", "keys_url", "refresh_before"])
            }
            GrantKind::PersonalAccessToken => {
                (&["client_id", "client_secret", "pat"], &["token_url", "keys_url", "scope", "refresh_before"])
            }
            GrantKind::ClientCredentials => {
                (&["client_id", "client_secret"], &["token_url", "keys_url", "scope", "refresh_before"])
            }
            GrantKind::Static => (&["token"], &[]),
        }
    }
}

impl fmt::Display for GrantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[credentials.NAME]` table, secrets resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialConfig {
    /// The table's name.
    pub name: String,
    /// How tokens are obtained.
    pub grant: GrantKind,
    /// OAuth client id or Direct Login consumer key (not a secret).
    pub client_id: Option<String>,
    /// OAuth client secret.
    pub client_secret: Option<Secret>,
    /// Redirect URI registered with the OAuth client.
    pub redirect_uri: Option<String>,
    /// Seed refresh token, used when the store holds none.
    pub refresh_token: Option<Secret>,
    /// Direct Login user id.
    pub username: Option<Secret>,
    /// Direct Login password.
    pub password: Option<Secret>,
    /// Personal access token.
    pub pat: Option<Secret>,
    /// Static access token.
    pub token: Option<Secret>,
    /// Token endpoint.
    pub token_url: String,
    /// Browser sign-in endpoint.
    pub authorize_url: String,
    /// Where organizer/account keys come from when token responses lack them.
    pub keys_url: String,
    /// Requested scope, if any.
    pub scope: Option<String>,
    /// Renew when less than this remains.
    pub refresh_before: Duration,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Path prefix matched against the normalised request path.
    pub prefix: String,
    /// Upstream base URL (scheme, authority, optional base path).
    pub upstream: url::Url,
    /// Credential whose token is injected; `None` passes requests through untouched.
    pub credential: Option<String>,
    /// Remove the prefix from the forwarded path.
    pub strip_prefix: bool,
    /// Allowed methods; `None` allows all.
    pub methods: Option<Vec<http::Method>>,
    /// Requests per second sent upstream; excess requests queue up to `token_wait`.
    pub rate_limit: Option<f64>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::parse(&path.display().to_string(), &text)
    }

    /// Validates config text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let loc = Locator { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let key = span_key(text, &span);
            loc.err(&span, key, e.message().trim().to_string())
        })?;
        validate(&loc, raw)
    }

    /// Names of credentials that at least one route uses, in name order.
    pub fn used_credentials(&self) -> Vec<String> {
        let mut names: Vec<String> = self.routes.iter().filter_map(|r| r.credential.clone()).collect();
        names.sort();
        names.dedup();
        names
    }
}

/// A best-effort key name for a toml parse error: the word at the error's span.
fn span_key(text: &str, span: &Range<usize>) -> String {
    let snippet = text.get(span.clone()).unwrap_or("").trim();
    if snippet.is_empty() || snippet.len() > 60 || snippet.contains('\n') {
        "config".to_string()
    } else {
        snippet.to_string()
    }
}

fn validate(loc: &Locator<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let proxy = ProxySettings {
        listen: raw.proxy.listen,
        admin_listen: raw.proxy.admin_listen,
        connect_timeout: raw.proxy.connect_timeout,
        request_timeout: raw.proxy.request_timeout,
        max_request_body: raw.proxy.max_request_body.as_u64(),
        token_wait: raw.proxy.token_wait,
        workers: raw.proxy.workers,
        max_concurrent_requests: raw.proxy.max_concurrent_requests,
    };
    if proxy.workers == Some(0) {
        return Err(ConfigError::At {
            file: loc.file.to_string(),
            line: line_of_key(loc.text, "workers"),
            key: "proxy.workers".into(),
            message: "must be at least 1".into(),
        });
    }
    if proxy.max_concurrent_requests == 0 {
        return Err(ConfigError::At {
            file: loc.file.to_string(),
            line: line_of_key(loc.text, "max_concurrent_requests"),
            key: "proxy.max_concurrent_requests".into(),
            message: "must be at least 1".into(),
        });
    }
    let state = validate_state(loc, raw.state)?;
    let inbound = validate_inbound(loc, raw.inbound, &proxy)?;

    let mut credentials = BTreeMap::new();
    for (name, spanned) in raw.credentials {
        let span = spanned.span();
        let cred = validate_credential(loc, &name, &span, spanned.into_inner())?;
        credentials.insert(name, Arc::new(cred));
    }

    let mut routes: Vec<RouteConfig> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, spanned) in raw.routes.into_iter().enumerate() {
        let r = spanned.into_inner();
        let key = |k: &str| format!("routes[{i}].{k}");
        let prefix = r.prefix.get_ref().clone();
        if !prefix.starts_with('/') {
            return Err(loc.err(&r.prefix.span(), key("prefix"), "must start with `/`"));
        }
        if let Some(first) = seen.insert(prefix.clone(), i) {
            return Err(loc.err(
                &r.prefix.span(),
                key("prefix"),
                format!("prefix {prefix:?} is already used by routes[{first}]"),
            ));
        }
        let upstream = parse_url(loc, &r.upstream, &key("upstream"))?;
        if upstream.query().is_some() || upstream.fragment().is_some() {
            return Err(loc.err(&r.upstream.span(), key("upstream"), "must not have a query or fragment"));
        }
        let credential = match r.credential {
            Some(c) if !credentials.contains_key(c.get_ref()) => {
                let known: Vec<&str> = credentials.keys().map(String::as_str).collect();
                return Err(loc.err(
                    &c.span(),
                    key("credential"),
                    format!("no credential named {:?} (defined: {})", c.get_ref(), known.join(", ")),
                ));
            }
            Some(c) => Some(c.into_inner()),
            None => None,
        };
        let methods = match r.methods {
            None => None,
            Some(m) => {
                let span = m.span();
                let mut out = Vec::new();
                for s in m.into_inner() {
                    let method = http::Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                        .map_err(|_| loc.err(&span, key("methods"), format!("{s:?} is not an HTTP method")))?;
                    out.push(method);
                }
                Some(out)
            }
        };
        let rate_limit = match r.rate_limit {
            Some(l) if !(*l.get_ref() > 0.0 && l.get_ref().is_finite()) => {
                return Err(loc.err(&l.span(), key("rate_limit"), "must be a positive number of requests per second"));
            }
            l => l.map(Spanned::into_inner),
        };
        routes.push(RouteConfig { prefix, upstream, credential, strip_prefix: r.strip_prefix, methods, rate_limit });
    }

    Ok(Config { source: loc.file.to_string(), proxy, state, inbound, credentials, routes })
}

fn validate_inbound(loc: &Locator<'_>, raw: RawInbound, proxy: &ProxySettings) -> Result<InboundSettings, ConfigError> {
    let allow_remote = raw.allow_remote.as_ref().is_some_and(|a| *a.get_ref());
    let keys = raw
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| resolve_secret(loc, k, &format!("inbound.keys[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut allow_cidrs = Vec::new();
    for (i, c) in raw.allow_cidrs.iter().enumerate() {
        let net = c
            .get_ref()
            .parse::<ipnet::IpNet>()
            .or_else(|_| c.get_ref().parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                loc.err(
                    &c.span(),
                    format!("inbound.allow_cidrs[{i}]"),
                    format!("{:?} is not a CIDR such as \"10.0.0.0/8\"", c.get_ref()),
                )
            })?;
        allow_cidrs.push(net);
    }
    let tls = match (raw.tls_cert, raw.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            for (k, f) in [("inbound.tls_cert", &cert), ("inbound.tls_key", &key)] {
                if !f.get_ref().is_file() {
                    return Err(loc.err(&f.span(), k, format!("{} is not a readable file", f.get_ref().display())));
                }
            }
            Some(TlsFiles { cert: cert.into_inner(), key: key.into_inner() })
        }
        (Some(c), None) => return Err(loc.err(&c.span(), "inbound.tls_key", "is required with tls_cert")),
        (None, Some(k)) => return Err(loc.err(&k.span(), "inbound.tls_cert", "is required with tls_key")),
    };
    if allow_remote && keys.is_empty() && allow_cidrs.is_empty() {
        let span = raw.allow_remote.as_ref().map(Spanned::span).unwrap_or(0..0);
        return Err(loc.err(&span, "inbound.allow_remote", "needs `keys` or `allow_cidrs` (or both): otherwise anyone who can reach the proxy could call GoTo with your token"));
    }
    for (what, addr) in [("proxy.listen", proxy.listen), ("proxy.admin_listen", proxy.admin_listen)] {
        if !addr.ip().is_loopback() && !allow_remote {
            let short = what.trim_start_matches("proxy.");
            return Err(ConfigError::At {
                file: loc.file.to_string(),
                line: line_of_key(loc.text, &format!("{short} ")),
                key: what.to_string(),
                message: format!("{addr} is not a loopback address: anyone who can reach it could call GoTo with your token; set [inbound] allow_remote = true with keys and/or allow_cidrs to allow it"),
            });
        }
    }
    Ok(InboundSettings { allow_remote, keys, allow_cidrs, tls })
}

/// Line of the first occurrence of `key =` (for settings whose value carries no span).
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines().position(|l| l.trim_start().starts_with(key)).map(|i| i + 1).unwrap_or(1)
}

fn validate_state(loc: &Locator<'_>, raw: RawState) -> Result<StateSettings, ConfigError> {
    let kind = raw.store.as_ref().map(|s| s.get_ref().as_str()).unwrap_or("file");
    match kind {
        "file" => {
            Ok(StateSettings::File { path: raw.path.unwrap_or_else(|| PathBuf::from("state/goto-auth-proxy.json")) })
        }
        "redis" => {
            let url = match raw.redis_url {
                Some(s) => resolve_secret(loc, &s, "state.redis_url")?,
                None => Secret::new("redis://127.0.0.1:6379/0"),
            };
            Ok(StateSettings::Redis { url, prefix: raw.redis_prefix.unwrap_or_else(|| "goto-auth-proxy".to_string()) })
        }
        other => {
            let span = raw.store.as_ref().map(|s| s.span()).unwrap_or(0..0);
            Err(loc.err(&span, "state.store", format!("{other:?} is not a store (expected \"file\" or \"redis\")")))
        }
    }
}

fn validate_credential(
    loc: &Locator<'_>,
    name: &str,
    span: &Range<usize>,
    raw: RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let grant = GrantKind::parse(raw.grant.get_ref()).ok_or_else(|| {
        loc.err(
            &raw.grant.span(),
            key("grant"),
            format!(
                "{:?} is not a grant (expected authorization_code, password, personal_access_token, client_credentials or static)",
                raw.grant.get_ref()
            ),
        )
    })?;

    // Which optional keys are present, with their spans, to check them against the grant.
    let present: Vec<(&str, Option<Range<usize>>)> = vec![
        ("client_id", raw.client_id.as_ref().map(Spanned::span)),
        ("client_secret", raw.client_secret.as_ref().map(Spanned::span)),
        ("redirect_uri", raw.redirect_uri.as_ref().map(Spanned::span)),
        ("refresh_token", raw.refresh_token.as_ref().map(Spanned::span)),
        ("username", raw.username.as_ref().map(Spanned::span)),
        ("password", raw.password.as_ref().map(Spanned::span)),
        ("pat", raw.pat.as_ref().map(Spanned::span)),
        ("token", raw.token.as_ref().map(Spanned::span)),
        ("token_url", raw.token_url.as_ref().map(Spanned::span)),
        ("authorize_url", raw.authorize_url.as_ref().map(Spanned::span)),
        ("keys_url", raw.keys_url.as_ref().map(Spanned::span)),
        ("scope", raw.scope.as_ref().map(|_| span.clone())),
        ("refresh_before", raw.refresh_before.as_ref().map(|_| span.clone())),
    ];
    let (required, optional) = grant.keys();
    for (k, s) in &present {
        if let Some(s) = s {
            if !required.contains(k) && !optional.contains(k) {
                return Err(loc.err(s, key(k), format!("is not used by grant \"{grant}\"")));
            }
        }
    }
    for k in required {
        if present.iter().any(|(p, s)| p == k && s.is_none()) {
            return Err(loc.err(span, key(k), format!("is required for grant \"{grant}\"")));
        }
    }

    let secret = |s: &Option<Spanned<RawSecret>>, k: &str| -> Result<Option<Secret>, ConfigError> {
        s.as_ref().map(|s| resolve_secret(loc, s, &key(k))).transpose()
    };
    let url_of = |s: &Option<Spanned<String>>, k: &str, default: &str| -> Result<String, ConfigError> {
        match s {
            Some(s) => parse_url(loc, s, &key(k)).map(|u| u.to_string()),
            None => Ok(default.to_string()),
        }
    };
    let default_token_url = match grant {
        GrantKind::Password => GOTO_DIRECT_LOGIN_URL,
        _ => GOTO_TOKEN_URL,
    };
    let redirect_uri = match &raw.redirect_uri {
        Some(s) => Some(parse_url(loc, s, &key("redirect_uri"))?.to_string()),
        None => None,
    };
    Ok(CredentialConfig {
        name: name.to_string(),
        grant,
        client_id: secret(&raw.client_id, "client_id")?.map(|s| s.expose().to_string()),
        client_secret: secret(&raw.client_secret, "client_secret")?,
        redirect_uri,
        refresh_token: secret(&raw.refresh_token, "refresh_token")?,
        username: secret(&raw.username, "username")?,
        password: secret(&raw.password, "password")?,
        pat: secret(&raw.pat, "pat")?,
        token: secret(&raw.token, "token")?,
        token_url: url_of(&raw.token_url, "token_url", default_token_url)?,
        authorize_url: url_of(&raw.authorize_url, "authorize_url", GOTO_AUTHORIZE_URL)?,
        keys_url: url_of(&raw.keys_url, "keys_url", GOTO_KEYS_URL)?,
        scope: raw.scope,
        refresh_before: raw.refresh_before.unwrap_or(Duration::from_secs(300)),
    })
}

fn parse_url(loc: &Locator<'_>, s: &Spanned<String>, key: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(s.get_ref())
        .map_err(|e| loc.err(&s.span(), key, format!("{:?} is not a URL: {e}", s.get_ref())))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(loc.err(
            &s.span(),
            key,
            format!("{:?} must be an http:// or https:// URL with a host", s.get_ref()),
        ));
    }
    Ok(url)
}

fn resolve_secret(loc: &Locator<'_>, s: &Spanned<RawSecret>, key: &str) -> Result<Secret, ConfigError> {
    let value = match s.get_ref() {
        RawSecret::Literal(v) => v.clone(),
        RawSecret::Env { env } => {
            std::env::var(env).map_err(|_| loc.err(&s.span(), key, format!("environment variable {env} is not set")))?
        }
        RawSecret::File { file } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| loc.err(&s.span(), key, format!("cannot read secret file {}: {e}", file.display())))?;
            text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_string()
        }
    };
    if value.is_empty() {
        return Err(loc.err(&s.span(), key, "is empty"));
    }
    Ok(Secret::new(value))
}

// ===== `check` output =====

impl fmt::Display for Config {
    /// The resolved configuration with every secret redacted, as `check` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.proxy;
        writeln!(f, "config: {}", self.source)?;
        writeln!(f, "proxy: listen {} admin {}", p.listen, p.admin_listen)?;
        writeln!(
            f,
            "  connect_timeout {} request_timeout {} token_wait {} max_request_body {}",
            humantime::format_duration(p.connect_timeout),
            humantime::format_duration(p.request_timeout),
            humantime::format_duration(p.token_wait),
            bytesize::ByteSize(p.max_request_body).to_string_as(true),
        )?;
        match &self.state {
            StateSettings::File { path } => writeln!(f, "state: file {}", path.display())?,
            StateSettings::Redis { prefix, .. } => writeln!(f, "state: redis [redacted url] prefix {prefix}")?,
        }
        let i = &self.inbound;
        writeln!(
            f,
            "inbound: {}{}{}{}",
            if i.allow_remote { "remote allowed" } else { "loopback only" },
            if i.keys.is_empty() { String::new() } else { format!(", {} key(s) [redacted]", i.keys.len()) },
            if i.allow_cidrs.is_empty() {
                String::new()
            } else {
                format!(", cidrs {}", i.allow_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","))
            },
            if i.tls.is_some() { ", TLS" } else { "" },
        )?;
        writeln!(f, "credentials:")?;
        for c in self.credentials.values() {
            writeln!(f, "  {} ({})", c.name, c.grant)?;
            if let Some(id) = &c.client_id {
                writeln!(f, "    client_id: {id}")?;
            }
            let secrets = [
                ("client_secret", &c.client_secret),
                ("refresh_token", &c.refresh_token),
                ("username", &c.username),
                ("password", &c.password),
                ("pat", &c.pat),
                ("token", &c.token),
            ];
            for (k, v) in secrets {
                if let Some(v) = v {
                    writeln!(f, "    {k}: {v}")?;
                }
            }
            if c.grant != GrantKind::Static {
                writeln!(f, "    token_url: {}", c.token_url)?;
                writeln!(f, "    refresh_before: {}", humantime::format_duration(c.refresh_before))?;
            }
            if let Some(r) = &c.redirect_uri {
                writeln!(f, "    redirect_uri: {r}")?;
            }
        }
        writeln!(f, "routes (longest prefix wins):")?;
        let mut routes: Vec<&RouteConfig> = self.routes.iter().collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        for r in routes {
            let cred = r.credential.as_deref().unwrap_or("(none: passed through untouched)");
            write!(f, "  {} -> {} credential {}", r.prefix, r.upstream.as_str().trim_end_matches('/'), cred)?;
            if r.strip_prefix {
                write!(f, " strip_prefix")?;
            }
            if let Some(m) = &r.methods {
                let m: Vec<&str> = m.iter().map(http::Method::as_str).collect();
                write!(f, " methods {}", m.join(","))?;
            }
            if let Some(l) = r.rate_limit {
                write!(f, " rate_limit {l}/s")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:18080"
request_timeout = "30s"
max_request_body = "1MiB"

[credentials.g2a]
grant = "password"
client_id = "consumer"
username = "user@example.com"
password = "pw-literal-secret"

[credentials.goto]
grant = "authorization_code"
client_id = "cid"
client_secret = "cs-literal-secret"
refresh_before = "2m"

[[routes]]
prefix = "/G2A/"
upstream = "https://api.getgo.com"
credential = "g2a"

[[routes]]
prefix = "/"
upstream = "https://api.getgo.com"
credential = "goto"
"#;

    fn err(text: &str) -> String {
        Config::parse("t.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn good_config_resolves_with_defaults() {
        let c = Config::parse("t.toml", GOOD).unwrap();
        assert_eq!(c.proxy.request_timeout, Duration::from_secs(30));
        assert_eq!(c.proxy.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.proxy.max_request_body, 1024 * 1024);
        assert_eq!(c.credentials["g2a"].token_url, GOTO_DIRECT_LOGIN_URL);
        assert_eq!(c.credentials["goto"].token_url, GOTO_TOKEN_URL);
        assert_eq!(c.credentials["goto"].refresh_before, Duration::from_secs(120));
        assert_eq!(c.used_credentials(), vec!["g2a", "goto"]);
        let shown = c.to_string();
        assert!(!shown.contains("pw-literal-secret") && !shown.contains("cs-literal-secret"));
        assert!(!format!("{c:?}").contains("pw-literal-secret"));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("[proxy]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n");
        assert!(e.starts_with("t.toml:3: listen_port:"), "{e}");
    }

    #[test]
    fn dangling_credential_names_route_and_line() {
        let text = GOOD.replace("credential = \"goto\"", "credential = \"nope\"");
        let e = err(&text);
        assert!(e.contains("routes[1].credential") && e.contains("\"nope\""), "{e}");
        let line = text.lines().position(|l| l.contains("\"nope\"")).unwrap() + 1;
        assert!(e.starts_with(&format!("t.toml:{line}:")), "{e}");
    }

    #[test]
    fn duplicate_prefix_refused() {
        let text = GOOD.replace("prefix = \"/G2A/\"", "prefix = \"/\"");
        assert!(err(&text).contains("already used by routes[0]"));
    }

    #[test]
    fn missing_env_secret_refused() {
        let text = GOOD.replace("\"pw-literal-secret\"", "{ env = \"GOTO_AUTH_PROXY_TEST_UNSET_VAR\" }");
        let e = err(&text);
        assert!(e.contains("credentials.g2a.password") && e.contains("GOTO_AUTH_PROXY_TEST_UNSET_VAR"), "{e}");
    }

    #[test]
    fn secret_file_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "abc\n").unwrap();
        let text = GOOD.replace("\"pw-literal-secret\"", &format!("{{ file = {:?} }}", p.display().to_string()));
        let c = Config::parse("t.toml", &text).unwrap();
        assert_eq!(c.credentials["g2a"].password.as_ref().unwrap().expose(), "abc");
    }

    #[test]
    fn key_foreign_to_grant_refused() {
        let text = GOOD.replace("password = \"pw-literal-secret\"", "password = \"x\"\npat = \"y\"");
        assert!(err(&text).contains("credentials.g2a.pat: is not used by grant \"password\""));
    }

    #[test]
    fn missing_required_key_refused() {
        let text = GOOD.replace("username = \"user@example.com\"\n", "");
        assert!(err(&text).contains("credentials.g2a.username: is required"));
    }

    #[test]
    fn bad_duration_and_size_refused() {
        assert!(err("[proxy]\nrequest_timeout = \"soon\"\n").starts_with("t.toml:2:"));
        assert!(err("[proxy]\nmax_request_body = \"ten\"\n").starts_with("t.toml:2:"));
    }

    #[test]
    fn remote_listen_needs_opt_in_with_keys_or_cidrs() {
        let text = GOOD.replace("127.0.0.1:18080", "0.0.0.0:18080");
        let e = err(&text);
        assert!(e.contains("proxy.listen") && e.contains("not a loopback"), "{e}");
        assert!(e.starts_with("t.toml:3:"), "{e}");
        let open = format!("{text}\n[inbound]\nallow_remote = true\n");
        assert!(err(&open).contains("needs `keys` or `allow_cidrs`"));
        let ok = format!("{text}\n[inbound]\nallow_remote = true\nkeys = [\"k-secret-1\"]\nallow_cidrs = [\"10.0.0.0/8\", \"192.168.1.7\"]\n");
        let c = Config::parse("t.toml", &ok).unwrap();
        assert_eq!(c.inbound.allow_cidrs.len(), 2);
        assert!(!c.to_string().contains("k-secret-1"));
        let bad = format!("{text}\n[inbound]\nallow_remote = true\nallow_cidrs = [\"ten\"]\n");
        assert!(err(&bad).contains("inbound.allow_cidrs[0]"));
    }

    #[test]
    fn rate_limit_must_be_positive() {
        let text = GOOD.replace("credential = \"g2a\"", "credential = \"g2a\"\nrate_limit = 0");
        assert!(err(&text).contains("routes[0].rate_limit"));
        let text = GOOD.replace("credential = \"g2a\"", "credential = \"g2a\"\nrate_limit = 10");
        assert_eq!(Config::parse("t.toml", &text).unwrap().routes[0].rate_limit, Some(10.0));
    }

    #[test]
    fn upstream_must_be_http() {
        let text = GOOD.replace(
            "upstream = \"https://api.getgo.com\"\ncredential = \"g2a\"",
            "upstream = \"ftp://x\"\ncredential = \"g2a\"",
        );
        assert!(err(&text).contains("routes[0].upstream"));
    }
}
