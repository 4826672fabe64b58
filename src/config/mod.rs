//! Configuration: TOML file → raw serde structs (unknown keys refused) → a validated
//! [`Config`] whose every error names the file, the line and the key.
//!
//! Validation happens once, before any port is bound, so `check` and `run` agree on
//! what is wrong and a running proxy never meets an invalid route or credential.
//!
//! No error ever echoes a value from the file: a secret of the wrong type would otherwise
//! be printed verbatim. Errors name the key, the line and what was expected. The only
//! file text they name besides keys and table names is where a secret comes from (an
//! environment variable's name, a secret file's path). URLs are printed through
//! [`display_url`], without user info or query.
//!
//! The files, in the order a config file passes through them:
//!
//! * `mod.rs` (here) — the validated types, [`Config::load`] / [`Config::parse`].
//! * `raw.rs` — the file format as serde structs; a secret's three written forms.
//! * `error.rs` — [`ConfigError`]; toml's errors rebuilt from the key, the line and the
//!   expected type, never the value.
//! * `keys.rs` — the dotted key at a byte position of the file (`routes[1].methods[0]`).
//! * `names.rs` — the rule for credential names, and how a name is put into (and read
//!   back from) a URL path.
//! * `validate/` — raw → validated: routes, credentials and their grants, state,
//!   secrets from the environment or files; `validate/inbound.rs` for `[inbound]`;
//!   `validate/outbound.rs` for `[tls]` (its PEM files read and checked) and
//!   `proxy.outbound_proxy`.
//! * `display.rs` — what may be printed: URLs without user info or query, the
//!   redacting `Debug`s, and the `check` summary.
//! * `fixtures.rs` — for tests only: a good file that tests vary, and its errors.
//!
//! Of the crate, this module uses only [`crate::secret`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::secret::Secret;

mod display;
mod error;
mod keys;
mod names;
mod raw;
mod validate;

#[cfg(test)]
mod fixtures;

/// Every key the schema accepts, but `ca_file`, `client_cert` and `command` (their errors
/// name a file or a program, on purpose): the keys the "a config error never echoes a
/// value" tests try in every section. One list for the unit and the property test; a key
/// added to a section belongs in [`SECTION_KEYS`], a credential's key in
/// [`GrantKind::keys`], which this reads.
#[doc(hidden)]
pub fn echo_checked_keys() -> Vec<&'static str> {
    let grants = GrantKind::ALL.into_iter().flat_map(|g| {
        let (required, optional) = g.keys();
        required.iter().chain(optional)
    });
    let mut keys: Vec<&'static str> = SECTION_KEYS.iter().chain(grants).copied().collect();
    keys.push("grant");
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Keys whose string value is a name the user chose — a grant, a route's prefix, the
/// credential a route names — which an error quotes back (escaped), so that
/// `credential = "g2w_missing"` is told which name is wrong. Never a secret, and a value
/// of any other type is never echoed: what the never-echo tests skip, and only that.
#[doc(hidden)]
pub fn is_quoted_name(key: &str, value: &str) -> bool {
    let is_string = format!("v = {value}").parse::<toml::Table>().is_ok_and(|t| t.get("v").is_some_and(|v| v.is_str()));
    matches!(key, "grant" | "prefix" | "credential") && is_string
}

/// The keys of every section but a credential's (see [`echo_checked_keys`]).
const SECTION_KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "connect_timeout",
    "request_timeout",
    "body_idle_timeout",
    "max_request_body",
    "token_wait",
    "workers",
    "max_concurrent_requests",
    "store",
    "path",
    "redis_url",
    "redis_sentinels",
    "redis_master",
    "redis_cluster",
    "redis_prefix",
    "allow_remote",
    "keys",
    "allow_cidrs",
    "tls_cert",
    "tls_key",
    "hosts",
    "allow_origins",
    "prefix",
    "upstream",
    "credential",
    "strip_prefix",
    "methods",
    "rate_limit",
    "retry_429",
    "access_log",
    "watch_files",
    "outbound_proxy",
    "system_roots",
    "client_key",
    "encryption_keys",
    "webhook",
    "events",
    "after_failures",
];

pub(crate) use display::{display_url, display_url_str};
pub use error::ConfigError;
pub(crate) use names::{is_valid_name, login_path, name_from_path, name_to_path, quoted, refresh_path, NAME_RULE};
pub(crate) use validate::proxy_url;

/// Where `--config` points when neither the flag nor `GOTO_AUTH_PROXY_CONFIG` is given.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "config/goto-auth-proxy.toml";

/// GoTo's OAuth token endpoint (authorization code, refresh, PAT, client credentials).
pub(crate) const GOTO_TOKEN_URL: &str = "https://authentication.logmeininc.com/oauth/token";
/// GoTo's browser sign-in page.
pub(crate) const GOTO_AUTHORIZE_URL: &str = "https://authentication.logmeininc.com/oauth/authorize";
/// GoToAssist Corporate Direct Login endpoint (password grant).
pub(crate) const GOTO_DIRECT_LOGIN_URL: &str = "https://api.getgo.com/oauth/access_token";
/// Where organizer and account keys come from when a token response lacks them: GoTo's
/// identity endpoint, which every user may call (SCIM shape).
pub(crate) const GOTO_KEYS_URL: &str = "https://api.getgo.com/identity/v1/Users/me";
/// The Admin API's `/me`, tried when an identity lookup fails (it answers only admins of
/// Global-platform accounts). The same path is tried on the host of a configured identity
/// `keys_url`.
pub(crate) const ADMIN_KEYS_PATH: &str = "/admin/rest/v1/me";

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages and reloads).
    pub source: String,
    /// Listener and data-path settings.
    pub proxy: ProxySettings,
    /// Where tokens are persisted.
    pub state: StateSettings,
    /// `state.encryption_keys`: each standard base64 of 32 bytes (checked here); the
    /// first seals token records at rest, every one opens them. Empty: records are
    /// stored in plaintext. `Debug` redacts them; [`Config::state_key_ids`] names them.
    pub state_encryption_keys: Vec<Secret>,
    /// Who may use the listeners.
    pub inbound: InboundSettings,
    /// `[tls]`: how every outbound TLS connection verifies servers and identifies itself.
    pub tls: OutboundTls,
    /// Credentials by name; only those routes use get a refresher.
    pub credentials: BTreeMap<String, Arc<CredentialConfig>>,
    /// Routes in file order (matching is longest prefix, not order).
    pub routes: Vec<RouteConfig>,
    /// `[[notify]]`: where events about credentials that need a person go.
    pub notify: Vec<NotifyConfig>,
    /// What is worth telling but not refusing, e.g. a key or secret file other users can
    /// read (container runtimes often mount secrets 0644): `check` prints these and `run`
    /// logs them at start. Each names the file, the line and the key, never a value.
    pub warnings: Vec<String>,
    /// Every file the configuration read besides itself — `{ file = … }` secrets,
    /// `tls.ca_file`, `tls.client_cert` — in file order: what a running proxy watches
    /// for changes (`proxy.watch_files`). Not `inbound.tls_cert`/`tls_key`: the data
    /// listener's TLS needs a restart.
    pub files: Vec<PathBuf>,
}

impl Config {
    /// What differs from `self` in `new`, as an operator reads it: `[proxy]`,
    /// `[inbound]`, `[tls]`, `[state]`, `credentials.NAME` (added, removed or changed),
    /// `routes`, `[[notify]]`. Empty when `new` would change nothing. Names only, never
    /// a value.
    pub(crate) fn changes(&self, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        let mut differs = |changed: bool, what: &str| {
            if changed {
                out.push(what.to_string());
            }
        };
        differs(self.proxy != new.proxy, "[proxy]");
        differs(self.inbound != new.inbound, "[inbound]");
        differs(self.tls != new.tls, "[tls]");
        differs(self.state != new.state || self.state_encryption_keys != new.state_encryption_keys, "[state]");
        let names: std::collections::BTreeSet<&String> =
            self.credentials.keys().chain(new.credentials.keys()).collect();
        for name in names {
            differs(self.credentials.get(name) != new.credentials.get(name), &format!("credentials.{name}"));
        }
        differs(self.routes != new.routes, "routes");
        differs(self.notify != new.notify, "[[notify]]");
        out
    }

    /// The key ids of `state.encryption_keys` in order, the sealing key first
    /// ([`crate::secret::key_id`]): what `check` and a reload's comparison show, never
    /// the keys.
    pub(crate) fn state_key_ids(&self) -> Vec<String> {
        self.state_encryption_keys
            .iter()
            .filter_map(|k| crate::secret::decode_state_key(k.expose()))
            .map(|k| crate::secret::key_id(&k))
            .collect()
    }
}

/// `[proxy]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    /// Data-path listener.
    pub listen: SocketAddr,
    /// Admin listener: health, metrics, tokens.
    pub admin_listen: SocketAddr,
    /// TCP + TLS connect budget to an upstream.
    pub connect_timeout: Duration,
    /// Budget until the upstream's response headers arrive.
    pub request_timeout: Duration,
    /// A request or answer body that moves no byte this long is broken off.
    pub body_idle_timeout: Duration,
    /// Largest request body forwarded.
    pub max_request_body: u64,
    /// How long a request may wait for a token when none is valid.
    pub token_wait: Duration,
    /// Runtime worker threads; `None` = number of cores.
    pub workers: Option<usize>,
    /// Requests served at once; beyond it clients get `503 overloaded` at once.
    pub max_concurrent_requests: usize,
    /// `proxy.outbound_proxy`: the `http://` forward proxy every upstream, token and keys
    /// endpoint is reached through (loopback included); `None`: the environment's
    /// `HTTPS_PROXY`/`HTTP_PROXY` decide. A secret: user and password may be in it.
    pub outbound_proxy: Option<Secret>,
    /// One line per request on target `goto_auth_proxy::access` (default on).
    pub access_log: bool,
    /// `proxy.watch_files`: a change to the config file or to a file it names is applied
    /// like a `SIGHUP`, without one (default on).
    pub watch_files: bool,
}

/// `[inbound]`: who may send requests, since any request becomes an authenticated one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboundSettings {
    /// Non-loopback listen addresses are allowed (with keys and/or CIDRs).
    pub allow_remote: bool,
    /// Accepted values of `x-goto-auth-proxy-key`; when set, every client needs one.
    pub keys: Vec<Secret>,
    /// Per key (same order): the accounts it may use, `None` for any (`{ key = …,
    /// accounts = [...] }`).
    pub key_accounts: Vec<Option<Vec<String>>>,
    /// Remote peers allowed to connect (loopback always is).
    pub allow_cidrs: Vec<ipnet::IpNet>,
    /// TLS on the data-path listener: certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
    /// `inbound.hosts`: extra `Host` names both listeners serve (lowercase, no port);
    /// `["*"]` turns the `Host` check off. Loopback names are always served.
    pub hosts: Vec<String>,
    /// `inbound.allow_origins`: browser origins served with CORS answers, normalised
    /// to `scheme://host[:port]` (lowercase, default port omitted).
    pub allow_origins: Vec<String>,
}

/// PEM files for inbound TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// `[tls]`: outbound TLS for upstreams, token and keys endpoints and `rediss://`. Its PEM
/// files are read and checked at load, so a bad one stops `check` and `run` at its line,
/// and a reload compares what the files held, not only their names.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundTls {
    /// `tls.ca_file`: extra trusted roots, each file with the certificates it held.
    pub ca_files: Vec<CaFile>,
    /// `tls.system_roots`: also trust the operating system's store (default true).
    pub system_roots: bool,
    /// `tls.client_cert` with `tls.client_key`: the certificate presented for mutual TLS.
    pub client_cert: Option<ClientCert>,
}

impl Default for OutboundTls {
    fn default() -> Self {
        OutboundTls { ca_files: Vec::new(), system_roots: true, client_cert: None }
    }
}

/// One `tls.ca_file` and the certificates (DER) it held. `Debug` counts them.
#[derive(Clone, PartialEq)]
pub struct CaFile {
    /// The file.
    pub path: PathBuf,
    /// Its certificates, in file order.
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// `tls.client_cert` and `tls.client_key`, checked to be a pair. `Debug` redacts the key.
#[derive(Clone, PartialEq)]
pub struct ClientCert {
    /// `tls.client_cert`: the file.
    pub cert_file: PathBuf,
    /// Its certificate chain (DER), the client's own first.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// `tls.client_key`: the private key's PEM text (a secret).
    pub key: Secret,
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq)]
pub enum StateSettings {
    /// One JSON file, written atomically with mode 0600.
    File {
        /// Its path.
        path: PathBuf,
    },
    /// Shared by replicas through Redis.
    Redis {
        /// Which Redis: one server, Sentinel's master, or a cluster.
        target: RedisTarget,
        /// Key prefix.
        prefix: String,
    },
}

/// Where the shared store's Redis is. URLs are secrets: they may hold a password.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisTarget {
    /// `redis_url`: one server (or a managed endpoint that follows its own failover).
    Single(Secret),
    /// `redis_sentinels` + `redis_master`: the master the sentinels name, followed
    /// through failovers. The master is reached with the user, password and database
    /// of the first sentinel URL, over TLS when that URL is `rediss://`.
    Sentinel {
        /// The sentinels' URLs.
        sentinels: Vec<Secret>,
        /// The name they monitor the master under.
        master: String,
    },
    /// `redis_cluster`: seed nodes of a Redis Cluster; the client learns the rest.
    Cluster(Vec<Secret>),
}

impl RedisTarget {
    /// Every URL it names (for the TLS question and for messages).
    pub(crate) fn urls(&self) -> &[Secret] {
        match self {
            RedisTarget::Single(url) => std::slice::from_ref(url),
            RedisTarget::Sentinel { sentinels, .. } => sentinels,
            RedisTarget::Cluster(seeds) => seeds,
        }
    }

    /// Whether a save waits for a replica (`WAIT`): with Sentinel or Cluster, where a
    /// replica is what a failover promotes.
    pub(crate) fn is_replicated(&self) -> bool {
        !matches!(self, RedisTarget::Single(_))
    }

    /// The mode in words, as `check` prints it: `single`, `sentinel mymaster via 3
    /// sentinels`, `cluster of 6 seeds` (no URL: they may hold a password).
    pub(crate) fn mode(&self) -> String {
        match self {
            RedisTarget::Single(_) => "single".to_string(),
            RedisTarget::Sentinel { sentinels, master } => {
                format!("sentinel {master} via {} sentinel{}", sentinels.len(), plural(sentinels.len()))
            }
            RedisTarget::Cluster(seeds) => format!("cluster of {} seed{}", seeds.len(), plural(seeds.len())),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl StateSettings {
    /// Whether the store is Redis over TLS (`rediss://`), which trusts `[tls]`.
    pub(crate) fn is_rediss(&self) -> bool {
        matches!(self, StateSettings::Redis { target, .. }
            if target.urls().iter().any(|u| u.expose().starts_with("rediss://")))
    }
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GrantKind::AuthorizationCode => "authorization_code",
            GrantKind::Password => "password",
            GrantKind::PersonalAccessToken => "personal_access_token",
            GrantKind::ClientCredentials => "client_credentials",
            GrantKind::Static => "static",
        }
    }

    /// Every grant.
    const ALL: [GrantKind; 5] = [
        GrantKind::AuthorizationCode,
        GrantKind::Password,
        GrantKind::PersonalAccessToken,
        GrantKind::ClientCredentials,
        GrantKind::Static,
    ];

    /// The grant a config file's `grant = "…"` names, if any.
    fn parse(s: &str) -> Option<GrantKind> {
        GrantKind::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// Keys a credential of this grant must have, and keys it may have.
    fn keys(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            GrantKind::AuthorizationCode => (
                &["client_id", "client_secret"],
                &[
                    "redirect_uri",
                    "refresh_token",
                    "token_url",
                    "authorize_url",
                    "keys_url",
                    "scope",
                    "refresh_before",
                    "client_auth",
                    "authorize_params",
                    "accounts",
                    "default_account",
                    "token_rate",
                ],
            ),
            GrantKind::Password => {
                (&["client_id", "username", "password"], &["token_url", "keys_url", "refresh_before"])
            }
            GrantKind::PersonalAccessToken => (
                &["client_id", "client_secret", "pat"],
                &["token_url", "keys_url", "scope", "refresh_before", "client_auth"],
            ),
            GrantKind::ClientCredentials => {
                (&["client_id", "client_secret"], &["token_url", "keys_url", "scope", "refresh_before", "client_auth"])
            }
            GrantKind::Static => (&["token"], &[]),
        }
    }
}

/// `client_auth`: how a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// `Authorization: Basic base64(client_id:client_secret)` of the raw values, as GoTo
    /// documents it (GoTo's secrets hold `+` and `=`, sent as they are). The default.
    #[default]
    Basic,
    /// RFC 6749 §2.3.1: id and secret each form-urlencoded, then Basic. What standard
    /// OAuth servers decode.
    BasicRfc6749,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
}

impl ClientAuth {
    /// The name in the config file.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Basic => "basic",
            ClientAuth::BasicRfc6749 => "basic_rfc6749",
            ClientAuth::Post => "post",
        }
    }

    /// The mode a config file's `client_auth = "…"` names, if any.
    fn parse(s: &str) -> Option<ClientAuth> {
        [ClientAuth::Basic, ClientAuth::BasicRfc6749, ClientAuth::Post].into_iter().find(|m| m.as_str() == s)
    }
}

/// Authorize query parameters the proxy sets itself: `authorize_params` may not name them.
pub(crate) const AUTHORIZE_PARAMS_OWN: [&str; 6] =
    ["client_id", "response_type", "redirect_uri", "state", "code_challenge", "code_challenge_method"];

impl fmt::Display for GrantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[credentials.NAME]` table, secrets resolved. `Debug` redacts (`display.rs`).
#[derive(Clone, PartialEq)]
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
    /// How the client authenticates at the token endpoint.
    pub client_auth: ClientAuth,
    /// Extra authorize query parameters (`prompt = "consent"`), in name order.
    pub authorize_params: Vec<(String, String)>,
    /// `accounts = true`: many people sign in to this client, each an account chosen per
    /// request (an account credential).
    pub accounts: bool,
    /// The account a request that names none uses (account credentials only).
    pub default_account: Option<String>,
    /// Token endpoint calls per second this credential may make (all its accounts
    /// together; with Redis, all replicas together).
    pub token_rate: f64,
    /// The files `client_secret` and `password` came from (`{ file = … }`): read again
    /// when the token endpoint refuses them ([`CredentialConfig::with_secret_files_reread`]).
    pub secret_files: SecretFiles,
    /// The config file it was read from, when not the default one: the `login` command a
    /// message suggests names it ([`CredentialConfig::login_command`]).
    pub config_file: Option<String>,
}

/// Where a credential's client secret and password were read from, when from files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretFiles {
    /// `client_secret = { file = … }`.
    pub client_secret: Option<PathBuf>,
    /// `password = { file = … }` (Direct Login).
    pub password: Option<PathBuf>,
}

impl CredentialConfig {
    /// The command that signs this credential (or its `account`) in again, with the
    /// `--config` it was read from.
    pub(crate) fn login_command(&self, account: Option<&str>) -> String {
        let mut cmd = String::from("goto-auth-proxy login");
        if let Some(file) = &self.config_file {
            cmd.push_str(&format!(" --config {file}"));
        }
        cmd.push_str(&format!(" --credential {}", self.name));
        if let Some(a) = account {
            cmd.push_str(&format!(" --account {a}"));
        }
        cmd
    }

    /// This credential with its client secret and password read again from their files,
    /// when either file now holds another value: what a token call refused with
    /// `invalid_client` (or a refused password) retries with, so a rotated secret is
    /// used even when no reload brought it. `None` when nothing changed or a file cannot
    /// be read (the refusal then stands).
    pub(crate) fn with_secret_files_reread(&self) -> Option<CredentialConfig> {
        let reread = |file: &Option<PathBuf>, current: &Option<Secret>| -> Option<Secret> {
            let value = validate::read_secret_file(file.as_deref()?).ok()?;
            (current.as_ref().map(Secret::expose) != Some(value.expose())).then_some(value)
        };
        let client_secret = reread(&self.secret_files.client_secret, &self.client_secret);
        let password = reread(&self.secret_files.password, &self.password);
        if client_secret.is_none() && password.is_none() {
            return None;
        }
        let mut fresh = self.clone();
        fresh.client_secret = client_secret.or(fresh.client_secret);
        fresh.password = password.or(fresh.password);
        Some(fresh)
    }
}

/// One `[[routes]]` entry. `Debug` hides the upstream's user info (`display.rs`).
#[derive(Clone, PartialEq)]
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
    /// Resend a `GET`/`HEAD`/`OPTIONS` once after an upstream 429's pause (within
    /// `token_wait`).
    pub retry_429: bool,
}

/// What a notification is about (`[[notify]]` `events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyEvent {
    /// A credential cannot renew without a person.
    NeedsLogin,
    /// `after_failures` renewals in a row failed.
    RefreshFailing,
    /// A credential that needed login or was failing is valid again.
    Recovered,
}

impl NotifyEvent {
    /// Every event, in the order a config file lists them by default.
    pub const ALL: [NotifyEvent; 3] = [NotifyEvent::NeedsLogin, NotifyEvent::RefreshFailing, NotifyEvent::Recovered];

    /// The event's name in the config file, the payload and the metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::NeedsLogin => "needs_login",
            NotifyEvent::RefreshFailing => "refresh_failing",
            NotifyEvent::Recovered => "recovered",
        }
    }
}

/// Where one `[[notify]]` entry delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum NotifyTarget {
    /// POST the event as JSON to this URL (a secret: chat webhook URLs carry tokens).
    Webhook(Secret),
    /// Run this program (argv, no shell) with the event JSON on stdin.
    Command(Vec<String>),
}

/// One `[[notify]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyConfig {
    /// Where events go.
    pub target: NotifyTarget,
    /// Which events go there (default: all three).
    pub events: Vec<NotifyEvent>,
    /// `refresh_failing` after this many failed renewals in a row (default 3).
    pub after_failures: u32,
}

impl Config {
    /// Reads and validates a config file.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::parse(&path.display().to_string(), &text)
    }

    /// Validates config text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let loc = error::Locator {
            file,
            text,
            warnings: Default::default(),
            missing: Default::default(),
            files: Default::default(),
        };
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| error::toml_error(&loc, &e))?;
        validate::validate(&loc, raw)
    }

    /// Names of credentials that at least one route uses, in name order.
    pub fn used_credentials(&self) -> Vec<String> {
        let mut names: Vec<String> = self.routes.iter().filter_map(|r| r.credential.clone()).collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::GOOD;
    use super::*;

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
    fn changes_name_what_differs_and_nothing_else() {
        let old = Config::parse("t.toml", GOOD).unwrap();
        assert!(old.changes(&Config::parse("t.toml", GOOD).unwrap()).is_empty());
        let new = GOOD.replace("cs-literal-secret", "cs-rotated-secret").replace("max_request_body = \"1MiB\"", "");
        let new = Config::parse("t.toml", &new).unwrap();
        assert_eq!(old.changes(&new), vec!["[proxy]", "credentials.goto"]);
        let shown = format!("{:?}", old.changes(&new));
        assert!(!shown.contains("cs-"), "names only, never a value: {shown}");
    }

    #[test]
    fn secret_files_are_read_again_only_when_they_hold_another_value() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, password) = (dir.path().join("cs"), dir.path().join("pw"));
        std::fs::write(&secret, "cs-one\n").unwrap();
        std::fs::write(&password, "pw-one\n").unwrap();
        let text = GOOD
            .replace("\"cs-literal-secret\"", &format!("{{ file = {:?} }}", secret.display().to_string()))
            .replace("\"pw-literal-secret\"", &format!("{{ file = {:?} }}", password.display().to_string()));
        let c = Config::parse("t.toml", &text).unwrap();
        assert_eq!(c.files, vec![password.clone(), secret.clone()], "every file read, in file order");
        let goto = &c.credentials["goto"];
        assert_eq!(goto.secret_files.client_secret.as_deref(), Some(secret.as_path()));
        assert!(goto.with_secret_files_reread().is_none(), "unchanged: nothing to retry with");
        std::fs::write(&secret, "cs-two\n").unwrap();
        let fresh = goto.with_secret_files_reread().unwrap();
        assert_eq!(fresh.client_secret.as_ref().map(Secret::expose), Some("cs-two"));
        std::fs::write(&secret, "\n").unwrap();
        assert!(goto.with_secret_files_reread().is_none(), "an emptied file is no new secret");
        std::fs::write(&password, "pw-two").unwrap();
        let g2a = c.credentials["g2a"].with_secret_files_reread().unwrap();
        assert_eq!(g2a.password.as_ref().map(Secret::expose), Some("pw-two"));
    }
}
