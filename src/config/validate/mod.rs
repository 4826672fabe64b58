//! Raw → validated: every check that needs more than a type, each error located at the
//! value (or key) it is about. Secrets are resolved here, from the file, the environment
//! or a secret file; `[inbound]` has its own file, `inbound.rs`, and `[tls]` with
//! `proxy.outbound_proxy` theirs, `outbound.rs`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::error::{ConfigError, Locator};
use super::names::quoted;
use super::raw::{RawConfig, RawCredential, RawNotify, RawProxy, RawRoute, RawSecret, RawState};
use super::{
    ClientAuth, Config, CredentialConfig, GrantKind, NotifyConfig, NotifyEvent, NotifyTarget, ProxySettings,
    RedisTarget, RouteConfig, SecretFiles, StateSettings, AUTHORIZE_PARAMS_OWN, GOTO_AUTHORIZE_URL,
    GOTO_DIRECT_LOGIN_URL, GOTO_KEYS_URL, GOTO_TOKEN_URL,
};
use crate::secret::Secret;

mod inbound;
mod outbound;

pub use outbound::proxy_url;

/// The whole file, checked in file-section order: `[proxy]`, `[state]`, `[inbound]`,
/// `[tls]`, credentials, routes (which name credentials).
pub(super) fn validate(loc: &Locator<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let validated = validate_all(loc, raw);
    // Every secret that cannot be read is told in one run (a fresh machine often lacks
    // several); an error found after one is likely its consequence.
    let mut missing = loc.missing.take();
    match missing.len() {
        0 => validated,
        1 => Err(missing.remove(0)),
        _ => Err(ConfigError::Secrets(missing)),
    }
}

fn validate_all(loc: &Locator<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let proxy = validate_proxy(loc, raw.proxy)?;
    let state_encryption_keys = validate_state_keys(loc, &raw.state.encryption_keys)?;
    let state = validate_state(loc, raw.state)?;
    let inbound = inbound::validate_inbound(loc, raw.inbound, &proxy)?;
    let tls = outbound::validate_tls(loc, raw.tls)?;

    let mut credentials = BTreeMap::new();
    let mut spans = Vec::new();
    for (name, spanned) in raw.credentials {
        let span = spanned.span();
        spans.push((name.clone(), span.clone()));
        if !super::is_valid_name(&name) {
            let why = format!("{} is not a credential name: {}", quoted(&name), super::NAME_RULE);
            return Err(loc.err(&span, "credentials", why));
        }
        let cred = validate_credential(loc, &name, &span, spanned.into_inner())?;
        credentials.insert(name, Arc::new(cred));
    }

    let mut routes: Vec<RouteConfig> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, spanned) in raw.routes.into_iter().enumerate() {
        routes.push(validate_route(loc, i, spanned.into_inner(), &credentials, &mut seen)?);
    }
    // A credential no route names is never sent: usually a route that forgot its
    // `credential` (GoTo then answers its requests 401).
    for (name, span) in spans.iter().filter(|(n, _)| !routes.iter().any(|r| r.credential.as_deref() == Some(n))) {
        let why = format!(
            "no route uses credential {}: its token is never sent; name it in a route's `credential`, or remove it",
            quoted(name)
        );
        loc.warn(span, &format!("credentials.{name}"), why);
    }

    let mut notify = Vec::new();
    for (i, spanned) in raw.notify.into_iter().enumerate() {
        notify.push(validate_notify(loc, i, &spanned)?);
    }

    Ok(Config {
        warnings: loc.warnings.take(),
        files: loc.files.take(),
        source: loc.file.to_string(),
        proxy,
        state,
        state_encryption_keys,
        inbound,
        tls,
        credentials,
        routes,
        notify,
    })
}

/// `[proxy]`: its types are checked by serde; what remains is that counts are not 0
/// and that `outbound_proxy` is a proxy URL.
fn validate_proxy(loc: &Locator<'_>, raw: RawProxy) -> Result<ProxySettings, ConfigError> {
    let proxy = ProxySettings {
        listen: raw.listen,
        admin_listen: raw.admin_listen,
        connect_timeout: raw.connect_timeout,
        request_timeout: raw.request_timeout,
        body_idle_timeout: raw.body_idle_timeout,
        max_request_body: raw.max_request_body.as_u64(),
        token_wait: raw.token_wait,
        workers: raw.workers,
        max_concurrent_requests: raw.max_concurrent_requests,
        outbound_proxy: outbound::validate_outbound_proxy(loc, raw.outbound_proxy.as_ref())?,
        access_log: raw.access_log,
        watch_files: raw.watch_files,
    };
    if proxy.workers == Some(0) {
        return Err(loc.err_key("proxy.workers", &(0..0), "must be at least 1"));
    }
    if proxy.max_concurrent_requests == 0 {
        return Err(loc.err_key("proxy.max_concurrent_requests", &(0..0), "must be at least 1"));
    }
    Ok(proxy)
}

/// `routes[i]`: a prefix no earlier route has (`seen` records them), an http(s)
/// upstream, a credential that exists, HTTP methods, a positive rate.
fn validate_route(
    loc: &Locator<'_>,
    i: usize,
    r: RawRoute,
    credentials: &BTreeMap<String, Arc<CredentialConfig>>,
    seen: &mut BTreeMap<String, usize>,
) -> Result<RouteConfig, ConfigError> {
    let key = |k: &str| format!("routes[{i}].{k}");
    let prefix = r.prefix.get_ref().clone();
    if !prefix.starts_with('/') {
        let why = format!("{} must start with `/`", quoted(&prefix));
        return Err(loc.err(&r.prefix.span(), key("prefix"), why));
    }
    if let Some(first) = seen.insert(prefix.clone(), i) {
        let why = format!("{} is already used by routes[{first}]", quoted(&prefix));
        return Err(loc.err(&r.prefix.span(), key("prefix"), why));
    }
    let upstream = parse_url(loc, &r.upstream, &key("upstream"))?;
    if upstream.query().is_some() || upstream.fragment().is_some() {
        return Err(loc.err(&r.upstream.span(), key("upstream"), "must not have a query or fragment"));
    }
    let credential = match r.credential {
        Some(c) if !credentials.contains_key(c.get_ref()) => {
            let known: Vec<String> = credentials.keys().map(|k| quoted(k)).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(loc.err(
                &c.span(),
                key("credential"),
                format!("{} names no credential that exists (defined: {known})", quoted(c.get_ref())),
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
            for (n, s) in m.into_inner().into_iter().enumerate() {
                let method = http::Method::from_bytes(s.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    loc.err(&span, key(&format!("methods[{n}]")), "is not an HTTP method such as \"GET\"")
                })?;
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
    Ok(RouteConfig {
        prefix,
        upstream,
        credential,
        strip_prefix: r.strip_prefix,
        methods,
        rate_limit,
        retry_429: r.retry_429,
    })
}

/// `notify[i]`: exactly one of `webhook` (an http(s) URL) and `command` (a non-empty
/// argv), known event names, `after_failures` at least 1.
fn validate_notify(loc: &Locator<'_>, i: usize, spanned: &Spanned<RawNotify>) -> Result<NotifyConfig, ConfigError> {
    let key = |k: &str| format!("notify[{i}].{k}");
    let n = spanned.get_ref();
    let target = match (&n.webhook, &n.command) {
        (Some(w), None) => {
            let url = resolve_secret(loc, w, &key("webhook"))?;
            // The URL is a secret: the error says what is wrong, never what it is.
            let ok = url::Url::parse(url.expose())
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !ok {
                return Err(loc.err(&w.span(), key("webhook"), "must be an http:// or https:// URL with a host"));
            }
            NotifyTarget::Webhook(url)
        }
        (None, Some(c)) => {
            if c.get_ref().first().is_none_or(|program| program.is_empty()) {
                return Err(loc.err(
                    &c.span(),
                    key("command"),
                    "must name a program: a list such as [\"/usr/local/bin/page-oncall\"]",
                ));
            }
            NotifyTarget::Command(c.get_ref().clone())
        }
        _ => {
            return Err(loc.err(
                &spanned.span(),
                format!("notify[{i}]"),
                "needs exactly one of `webhook` and `command`",
            ));
        }
    };
    let events = match &n.events {
        None => NotifyEvent::ALL.to_vec(),
        Some(list) => {
            let mut out = Vec::new();
            for (j, name) in list.get_ref().iter().enumerate() {
                let Some(e) = NotifyEvent::ALL.into_iter().find(|e| e.as_str() == name) else {
                    return Err(loc.err(
                        &list.span(),
                        key(&format!("events[{j}]")),
                        "is not an event: \"needs_login\", \"refresh_failing\" or \"recovered\"",
                    ));
                };
                out.push(e);
            }
            out
        }
    };
    let after_failures = match &n.after_failures {
        None => 3,
        Some(a) if *a.get_ref() == 0 => return Err(loc.err(&a.span(), key("after_failures"), "must be at least 1")),
        Some(a) => *a.get_ref(),
    };
    Ok(NotifyConfig { target, events, after_failures })
}

/// `[state]`: a file (the default) or Redis.
fn validate_state(loc: &Locator<'_>, raw: RawState) -> Result<StateSettings, ConfigError> {
    let kind = raw.store.as_ref().map(|s| s.get_ref().as_str()).unwrap_or("file");
    match kind {
        "file" => {
            Ok(StateSettings::File { path: raw.path.unwrap_or_else(|| PathBuf::from("state/goto-auth-proxy.json")) })
        }
        "redis" => {
            let target = validate_redis_target(loc, &raw)?;
            Ok(StateSettings::Redis {
                target,
                prefix: raw.redis_prefix.unwrap_or_else(|| "goto-auth-proxy".to_string()),
            })
        }
        _ => {
            let span = raw.store.as_ref().map(|s| s.span()).unwrap_or(0..0);
            Err(loc.err(&span, "state.store", "is not a store: expected \"file\" or \"redis\""))
        }
    }
}

/// Which Redis `[state]` names: `redis_url` (default: a local server), or
/// `redis_sentinels` with `redis_master`, or `redis_cluster` — one of the three.
fn validate_redis_target(loc: &Locator<'_>, raw: &RawState) -> Result<RedisTarget, ConfigError> {
    let urls = |list: &Spanned<Vec<Spanned<RawSecret>>>, key: &str| -> Result<Vec<Secret>, ConfigError> {
        if list.get_ref().is_empty() {
            return Err(loc.err(&list.span(), format!("state.{key}"), "is empty: list at least one redis:// URL"));
        }
        list.get_ref()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let k = format!("state.{key}[{i}]");
                let url = resolve_secret(loc, s, &k)?;
                // The URL may hold a password: the message never quotes it.
                if !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://")) {
                    return Err(loc.err(&s.span(), k, "must be a redis:// or rediss:// URL"));
                }
                Ok(url)
            })
            .collect()
    };
    let single = raw.redis_url.as_ref().map(|s| s.span());
    match (&raw.redis_sentinels, &raw.redis_master, &raw.redis_cluster) {
        (Some(_), _, Some(c)) => {
            Err(loc.err(&c.span(), "state.redis_cluster", "cannot be set together with state.redis_sentinels"))
        }
        (Some(s), _, None) | (None, None, Some(s)) if single.is_some() => Err(loc.err(
            &s.span(),
            if raw.redis_cluster.is_some() { "state.redis_cluster" } else { "state.redis_sentinels" },
            "cannot be set together with state.redis_url: name one Redis",
        )),
        (Some(s), None, None) => Err(loc.err(
            &s.span(),
            "state.redis_sentinels",
            "needs state.redis_master, the name the sentinels monitor the master under",
        )),
        (None, Some(m), _) => Err(loc.err(&m.span(), "state.redis_master", "needs state.redis_sentinels")),
        (Some(s), Some(m), None) => {
            let master = m.get_ref().trim();
            if master.is_empty() {
                return Err(loc.err(&m.span(), "state.redis_master", "is empty"));
            }
            Ok(RedisTarget::Sentinel { sentinels: urls(s, "redis_sentinels")?, master: master.to_string() })
        }
        (None, None, Some(c)) => {
            let seeds = urls(c, "redis_cluster")?;
            let tls = seeds[0].expose().starts_with("rediss://");
            if let Some(i) = seeds.iter().position(|u| u.expose().starts_with("rediss://") != tls) {
                let span = c.get_ref()[i].span();
                return Err(loc.err(&span, format!("state.redis_cluster[{i}]"), "mixes redis:// and rediss://"));
            }
            Ok(RedisTarget::Cluster(seeds))
        }
        (None, None, None) => Ok(RedisTarget::Single(match &raw.redis_url {
            Some(s) => resolve_secret(loc, s, "state.redis_url")?,
            None => Secret::new("redis://127.0.0.1:6379/0"),
        })),
    }
}

/// `state.encryption_keys`: each a secret that decodes to a 32-byte key. The error names
/// the key's position and line, never the value.
fn validate_state_keys(loc: &Locator<'_>, raw: &[Spanned<RawSecret>]) -> Result<Vec<Secret>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, s)| {
            let key = format!("state.encryption_keys[{i}]");
            let secret = resolve_secret(loc, s, &key)?;
            if crate::secret::decode_state_key(secret.expose()).is_none() {
                return Err(loc.err(&s.span(), key, "expected base64 of 32 bytes (goto-auth-proxy keygen makes one)"));
            }
            Ok(secret)
        })
        .collect()
}

/// `[credentials.NAME]` (at `span`): a known grant, exactly the keys that grant takes,
/// secrets resolved, endpoints defaulted to GoTo's.
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
                "{} is not a grant: expected authorization_code, password, personal_access_token, client_credentials or static",
                quoted(raw.grant.get_ref())
            ),
        )
    })?;
    check_grant_keys(loc, name, span, grant, &raw)?;

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
    let accounts = accounts_of(loc, name, &raw)?;
    Ok(CredentialConfig {
        // The demo's generated config ("(demo)") has no file to name.
        config_file: (loc.file != super::DEFAULT_CONFIG_PATH && !loc.file.starts_with('('))
            .then(|| loc.file.to_string()),
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
        client_auth: client_auth(loc, &raw.client_auth, &key("client_auth"))?,
        authorize_params: authorize_params(loc, &raw.authorize_params, &key("authorize_params"))?,
        accounts,
        default_account: raw.default_account.as_ref().map(|s| s.get_ref().clone()),
        token_rate: token_rate(loc, &raw.token_rate, &key("token_rate"))?,
        secret_files: SecretFiles { client_secret: file_of(&raw.client_secret), password: file_of(&raw.password) },
    })
}

/// The file a `{ file = … }` secret names.
fn file_of(s: &Option<Spanned<RawSecret>>) -> Option<PathBuf> {
    match s.as_ref().map(Spanned::get_ref) {
        Some(RawSecret::File { file }) => Some(file.clone()),
        _ => None,
    }
}

/// The default `token_rate`: token endpoint calls per second per credential.
const DEFAULT_TOKEN_RATE: f64 = 5.0;

/// `token_rate`: a positive number of calls per second, at most 1000.
fn token_rate(loc: &Locator<'_>, raw: &Option<Spanned<f64>>, key: &str) -> Result<f64, ConfigError> {
    match raw {
        None => Ok(DEFAULT_TOKEN_RATE),
        Some(r) if r.get_ref().is_finite() && *r.get_ref() > 0.0 && *r.get_ref() <= 1000.0 => Ok(*r.get_ref()),
        Some(r) => Err(loc.err(&r.span(), key, "must be a number of calls per second above 0 and at most 1000")),
    }
}

/// `accounts` and `default_account`: an account credential takes no seed refresh token
/// (each account signs in), and its default account is a name.
fn accounts_of(loc: &Locator<'_>, name: &str, raw: &RawCredential) -> Result<bool, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let on = raw.accounts.as_ref().is_some_and(|a| *a.get_ref());
    if on {
        if let Some(seed) = &raw.refresh_token {
            return Err(loc.err_key(
                &key("refresh_token"),
                &seed.span(),
                "is not used with accounts = true: each account signs in (`login --account NAME`)",
            ));
        }
    }
    if let Some(d) = &raw.default_account {
        if !on {
            return Err(loc.err(&d.span(), key("default_account"), "needs accounts = true"));
        }
        if !super::names::is_valid_name(d.get_ref()) {
            return Err(loc.err(
                &d.span(),
                key("default_account"),
                format!("{} is not an account name: 1-64 ASCII letters, digits, '_', '-' and '.'", quoted(d.get_ref())),
            ));
        }
    }
    Ok(on)
}

/// `client_auth`: one of the three names; absent is GoTo's raw Basic.
fn client_auth(loc: &Locator<'_>, raw: &Option<Spanned<String>>, key: &str) -> Result<ClientAuth, ConfigError> {
    match raw {
        None => Ok(ClientAuth::default()),
        Some(s) => ClientAuth::parse(s.get_ref()).ok_or_else(|| {
            let expected = "is not a client authentication: expected \"basic\", \"basic_rfc6749\" or \"post\"";
            loc.err_key(key, &s.span(), expected)
        }),
    }
}

/// `authorize_params`: extra query parameters, none of those the proxy sets itself (a
/// second `state` or `redirect_uri` would break the sign-in in ways hard to see).
fn authorize_params(
    loc: &Locator<'_>,
    raw: &Option<Spanned<BTreeMap<String, String>>>,
    key: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    // The line of `authorize_params = { … }` when a parameter has no statement of its own.
    let table = super::keys::statement_start(loc.text, key).map_or(raw.span(), |at| at..at);
    for name in raw.get_ref().keys() {
        if AUTHORIZE_PARAMS_OWN.contains(&name.as_str()) {
            let param = format!("{key}.{name}");
            return Err(loc.err_key(&param, &table, "is set by the proxy itself and cannot be overridden"));
        }
        if name.is_empty() {
            return Err(loc.err(&table, key, "has an empty parameter name"));
        }
    }
    Ok(raw.get_ref().iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// A credential has every key its grant requires and no key its grant does not use.
fn check_grant_keys(
    loc: &Locator<'_>,
    name: &str,
    span: &Range<usize>,
    grant: GrantKind,
    raw: &RawCredential,
) -> Result<(), ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    // Which optional keys are present, with their spans (the table's for the two that
    // carry none).
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
        ("client_auth", raw.client_auth.as_ref().map(Spanned::span)),
        ("authorize_params", raw.authorize_params.as_ref().map(Spanned::span)),
        ("accounts", raw.accounts.as_ref().map(Spanned::span)),
        ("default_account", raw.default_account.as_ref().map(Spanned::span)),
        ("token_rate", raw.token_rate.as_ref().map(Spanned::span)),
    ];
    let (required, optional) = grant.keys();
    for (k, s) in &present {
        if let Some(s) = s {
            if !required.contains(k) && !optional.contains(k) {
                return Err(loc.err_key(&key(k), s, format!("is not used by grant \"{grant}\"")));
            }
        }
    }
    for k in required {
        if present.iter().any(|(p, s)| p == k && s.is_none()) {
            return Err(loc.err(span, key(k), format!("is required for grant \"{grant}\"")));
        }
    }
    Ok(())
}

/// An http(s) URL with a host.
fn parse_url(loc: &Locator<'_>, s: &Spanned<String>, key: &str) -> Result<url::Url, ConfigError> {
    // url's ParseError says what is wrong in fixed words, never quoting the input.
    let url = url::Url::parse(s.get_ref()).map_err(|e| loc.err(&s.span(), key, format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(loc.err(&s.span(), key, "must be an http:// or https:// URL with a host"));
    }
    Ok(url)
}

/// A secret's value: the literal, the environment variable's value, or the secret
/// file's text without its final line break; never empty. One that cannot be read is
/// noted in the locator (every such secret is reported together) and stands in as a
/// placeholder meanwhile.
fn resolve_secret(loc: &Locator<'_>, s: &Spanned<RawSecret>, key: &str) -> Result<Secret, ConfigError> {
    // The variable's name and the file's path say where the secret is; they are not it.
    let (value, source) = match s.get_ref() {
        RawSecret::Literal(v) => (v.clone(), String::new()),
        RawSecret::Env { env } => match std::env::var(env) {
            Ok(v) => (v, format!(" (environment variable {env})")),
            Err(e) => {
                let why = match e {
                    std::env::VarError::NotPresent => "is not set",
                    std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
                };
                return Ok(loc.missing(&s.span(), key, format!("environment variable {env} {why}")));
            }
        },
        RawSecret::File { file } => {
            loc.read_file(file);
            return match read_secret_file(file) {
                Ok(text) => {
                    warn_if_others_read(loc, &s.span(), key, file);
                    Ok(text)
                }
                Err(SecretFileError::Read(e)) => {
                    Ok(loc.missing(&s.span(), key, format!("cannot read secret file {}: {e}", file.display())))
                }
                Err(SecretFileError::Empty) => {
                    Err(loc.err(&s.span(), key, format!("is empty (secret file {})", file.display())))
                }
            };
        }
    };
    if value.is_empty() {
        return Err(loc.err(&s.span(), key, format!("is empty{source}")));
    }
    Ok(Secret::new(value))
}

/// Why a secret file gave no secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretFileError {
    /// It could not be read (or is not UTF-8).
    #[error("{0}")]
    Read(#[from] std::io::Error),
    /// It holds nothing but a line break.
    #[error("is empty")]
    Empty,
}

/// A secret file's text without its final line break (`\n` or `\r\n`); never empty.
/// The one reading of a `{ file = … }` secret, at load and when a refused token call
/// reads it again.
pub(crate) fn read_secret_file(file: &std::path::Path) -> Result<Secret, SecretFileError> {
    let text = std::fs::read_to_string(file)?;
    let value = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if value.is_empty() {
        return Err(SecretFileError::Empty);
    }
    Ok(Secret::new(value))
}

/// Warns (not refuses: container runtimes often mount secrets 0644) when the key or
/// secret file `path` is readable by its group or by everyone. The warning names the
/// file and its mode, never what it holds.
fn warn_if_others_read(loc: &Locator<'_>, span: &Range<usize>, key: &str, path: &std::path::Path) {
    if let Some(mode) = readable_by_others(path) {
        let message = format!(
            "{} is readable by other users (mode {mode:04o}); only the proxy's own user should read it (chmod 600)",
            path.display()
        );
        loc.warn(span, key, message);
    }
}

/// The permission bits of `path` (the file a symbolic link points at) when its group or
/// everyone may read it.
#[cfg(unix)]
fn readable_by_others(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}

/// Elsewhere files carry no such bits.
#[cfg(not(unix))]
fn readable_by_others(_path: &std::path::Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{err, GOOD};
    use super::super::Config;

    #[test]
    fn redis_sentinel_and_cluster_are_read_and_shown_without_their_passwords() {
        use super::super::{RedisTarget, StateSettings};
        let with = |state: &str| format!("{GOOD}\n[state]\nstore = \"redis\"\n{state}\n");
        let c = Config::parse(
            "t.toml",
            &with(
                "redis_sentinels = [\"redis://:s3cret@10.0.0.1:26379\", \"redis://:s3cret@10.0.0.2:26379\", \"redis://:s3cret@10.0.0.3:26379\"]\nredis_master = \"gapmaster\"",
            ),
        )
        .unwrap();
        let StateSettings::Redis { target, .. } = &c.state else { panic!("redis") };
        assert!(
            matches!(target, RedisTarget::Sentinel { sentinels, master } if sentinels.len() == 3 && master == "gapmaster")
        );
        let shown = c.to_string();
        assert!(shown.contains("state: redis sentinel gapmaster via 3 sentinels [redacted urls]"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");

        let c =
            Config::parse("t.toml", &with("redis_cluster = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]"))
                .unwrap();
        assert!(c.to_string().contains("state: redis cluster of 2 seeds [redacted urls]"), "{c}");
        let c = Config::parse("t.toml", &with("redis_url = \"redis://:s3cret@h:6379/0\"")).unwrap();
        assert!(c.to_string().contains("state: redis single [redacted url]"), "{c}");
    }

    #[test]
    fn redis_targets_that_conflict_or_are_incomplete_are_refused_by_name() {
        let with = |state: &str| format!("{GOOD}\n[state]\nstore = \"redis\"\n{state}\n");
        for (state, says) in [
            ("redis_sentinels = [\"redis://a:26379\"]", "state.redis_sentinels: needs state.redis_master"),
            ("redis_master = \"m\"", "state.redis_master: needs state.redis_sentinels"),
            (
                "redis_url = \"redis://h/0\"\nredis_cluster = [\"redis://a:7000\"]",
                "state.redis_cluster: cannot be set together with state.redis_url",
            ),
            (
                "redis_sentinels = [\"redis://a:26379\"]\nredis_master = \"m\"\nredis_cluster = [\"redis://a:7000\"]",
                "state.redis_cluster: cannot be set together with state.redis_sentinels",
            ),
            ("redis_cluster = []", "state.redis_cluster: is empty"),
            ("redis_cluster = [\"http://:pw@a:7000\"]", "state.redis_cluster[0]: must be a redis:// or rediss:// URL"),
            (
                "redis_cluster = [\"redis://a:7000\", \"rediss://b:7000\"]",
                "state.redis_cluster[1]: mixes redis:// and rediss://",
            ),
            ("redis_sentinels = [\"redis://a:26379\"]\nredis_master = \" \"", "state.redis_master: is empty"),
        ] {
            let e = err(&with(state));
            assert!(e.contains(says), "{state}: {e}");
            assert!(!e.contains(":pw@"), "{e}");
            assert!(e.starts_with("t.toml:"), "names the line: {e}");
        }
    }

    #[test]
    fn dangling_credential_is_quoted_with_the_names_that_exist() {
        let text = GOOD.replace("credential = \"goto\"", "credential = \"g2w_missing\"");
        let e = err(&text);
        let line = text.lines().position(|l| l.contains("\"g2w_missing\"")).unwrap() + 1;
        assert_eq!(
            e,
            format!(
                "t.toml:{line}: routes[1].credential: \"g2w_missing\" names no credential that exists (defined: \"g2a\", \"goto\")"
            )
        );
        // A name with control characters is quoted escaped: it cannot break the line.
        let e = err(&GOOD.replace("credential = \"goto\"", "credential = \"go\\u001b[2K\\nto\""));
        assert!(e.contains("\"go\\u{1b}[2K\\nto\" names no credential") && !e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn grants_prefixes_and_listen_addresses_are_quoted_back() {
        // (the last line that has it: a duplicate is refused at the second route)
        let line_of = |text: &str, needle: &str| {
            text.lines().enumerate().filter(|(_, l)| l.contains(needle)).last().unwrap().0 + 1
        };
        for (from, to, says) in [
            (
                "grant = \"password\"",
                "grant = \"passwrod\"",
                "credentials.g2a.grant: \"passwrod\" is not a grant: expected ",
            ),
            ("prefix = \"/G2A/\"", "prefix = \"G2A/\"", "routes[0].prefix: \"G2A/\" must start with `/`"),
            ("prefix = \"/G2A/\"", "prefix = \"/\"", "routes[1].prefix: \"/\" is already used by routes[0]"),
            ("127.0.0.1:18080", "10.9.8.7:80", "proxy.listen: \"10.9.8.7:80\" is not a loopback address"),
        ] {
            let text = GOOD.replace(from, to);
            let e = err(&text);
            let line = line_of(&text, to);
            assert!(e.starts_with(&format!("t.toml:{line}: {says}")), "{e}");
        }
    }

    #[test]
    fn credential_names_outside_the_rule_are_refused_quoted_at_their_line() {
        for (header, shown) in [
            ("[credentials.\"a b\"]", "\"a b\""),
            ("[credentials.\"x<script>\"]", "\"x<script>\""),
            ("[credentials.\"prod?x\"]", "\"prod?x\""),
            ("[credentials.\"..\"]", "\"..\""),
            ("[credentials.\"\"]", "\"\""),
            ("[credentials.\"r\\u001b[31mred\"]", "\"r\\u{1b}[31mred\""),
            ("[credentials.\"é\"]", "\"é\""),
        ] {
            let text = GOOD.replace("[credentials.goto]", header).replace("credential = \"goto\"", "");
            let e = err(&text);
            let line = text.lines().position(|l| l == header).unwrap() + 1;
            let expected = format!(
                "t.toml:{line}: credentials: {shown} is not a credential name: a name is 1 to 64 ASCII letters, digits, \"_\", \"-\" and \".\""
            );
            assert_eq!(e, expected, "{header}");
        }
        let long = "x".repeat(65);
        let e = err(&GOOD.replace("[credentials.goto]", &format!("[credentials.{long}]")));
        assert!(e.contains(&format!("\"{long}\" is not a credential name")), "{e}");
        // The rule's edges are accepted.
        let text = GOOD
            .replace("goto", "\"a.b-c_D9\"")
            .replace("\"\"a.b-c_D9\"\"", "\"a.b-c_D9\"")
            .replace("g2a", &"x".repeat(64));
        let c = Config::parse("t.toml", &text).unwrap();
        assert!(c.credentials.contains_key("a.b-c_D9") && c.credentials.contains_key(&"x".repeat(64)));
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
    fn every_unreadable_secret_is_reported_in_one_run_with_its_line() {
        let text = GOOD
            .replace("\"pw-literal-secret\"", "{ env = \"GOTO_AUTH_PROXY_TEST_UNSET_A\" }")
            .replace("\"cs-literal-secret\"", "{ file = \"/nonexistent/goto_client_secret\" }")
            .replace("client_id = \"cid\"", "client_id = { env = \"GOTO_AUTH_PROXY_TEST_UNSET_B\" }");
        let e = err(&text);
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        assert!(e.starts_with("3 secrets cannot be read:"), "{e}");
        for (key, what, needle) in [
            ("credentials.g2a.password", "GOTO_AUTH_PROXY_TEST_UNSET_A is not set", "UNSET_A"),
            ("credentials.goto.client_id", "GOTO_AUTH_PROXY_TEST_UNSET_B is not set", "UNSET_B"),
            (
                "credentials.goto.client_secret",
                "cannot read secret file /nonexistent/goto_client_secret",
                "nonexistent",
            ),
        ] {
            let line = format!("t.toml:{}: {key}: ", line_of(needle));
            assert!(e.lines().any(|l| l.trim_start().starts_with(&line) && l.contains(what)), "{line} {what}: {e}");
        }
    }

    #[test]
    fn a_credential_no_route_uses_is_warned_about_by_name_and_line() {
        let text = GOOD.replace("credential = \"goto\"\n", "");
        let c = Config::parse("t.toml", &text).unwrap();
        let line = text.lines().position(|l| l.contains("[credentials.goto]")).unwrap() + 1;
        let expected = format!("t.toml:{line}: credentials.goto: no route uses credential \"goto\"");
        assert!(c.warnings.iter().any(|w| w.starts_with(&expected)), "{:?}", c.warnings);
        assert!(Config::parse("t.toml", GOOD).unwrap().warnings.is_empty());
    }

    #[test]
    fn the_login_command_a_message_suggests_carries_the_config_file_given() {
        let c = Config::parse("conf/mine.toml", GOOD).unwrap();
        assert_eq!(
            c.credentials["goto"].login_command(Some("alice")),
            "goto-auth-proxy login --config conf/mine.toml --credential goto --account alice"
        );
        let c = Config::parse(crate::config::DEFAULT_CONFIG_PATH, GOOD).unwrap();
        assert_eq!(c.credentials["goto"].login_command(None), "goto-auth-proxy login --credential goto");
    }

    #[test]
    fn an_empty_secret_names_where_it_came_from() {
        std::env::set_var("GOTO_AUTH_PROXY_TEST_EMPTY_VAR", "");
        let text = GOOD.replace("\"pw-literal-secret\"", "{ env = \"GOTO_AUTH_PROXY_TEST_EMPTY_VAR\" }");
        let e = err(&text);
        assert!(
            e.contains("credentials.g2a.password: is empty (environment variable GOTO_AUTH_PROXY_TEST_EMPTY_VAR)"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty");
        std::fs::write(&p, "\n").unwrap();
        let text = GOOD.replace("\"pw-literal-secret\"", &format!("{{ file = {:?} }}", p.display().to_string()));
        assert!(err(&text).contains(&format!("is empty (secret file {})", p.display())), "{}", err(&text));
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

    #[cfg(unix)]
    #[test]
    fn key_and_secret_files_others_can_read_are_warned_about_by_name_never_content() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (secret, key) = (dir.path().join("password"), dir.path().join("state.key"));
        std::fs::write(&secret, "file-s3cr3t\n").unwrap();
        std::fs::write(&key, format!("{}\n", b64(&[5; 32]))).unwrap();
        let text = with_keys(&format!("[{{ file = {:?} }}]", key.display().to_string()))
            .replace("\"pw-literal-secret\"", &format!("{{ file = {:?} }}", secret.display().to_string()));
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        let mode =
            |p: &std::path::Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();

        mode(&secret, 0o644);
        mode(&key, 0o640);
        let c = Config::parse("t.toml", &text).unwrap();
        assert_eq!(
            c.warnings,
            vec![
                format!(
                    "t.toml:{}: state.encryption_keys[0]: {} is readable by other users (mode 0640); only the proxy's own user should read it (chmod 600)",
                    line_of("encryption_keys"),
                    key.display()
                ),
                format!(
                    "t.toml:{}: credentials.g2a.password: {} is readable by other users (mode 0644); only the proxy's own user should read it (chmod 600)",
                    line_of("password = {"),
                    secret.display()
                ),
            ]
        );
        assert!(!format!("{:?}", c.warnings).contains("s3cr3t"));

        // Owner-only files: nothing to say.
        mode(&secret, 0o600);
        mode(&key, 0o400);
        assert!(Config::parse("t.toml", &text).unwrap().warnings.is_empty());
        assert!(Config::parse("t.toml", GOOD).unwrap().warnings.is_empty(), "literal secrets are no files");
    }

    #[test]
    fn notify_entries_resolve_with_defaults_and_bad_ones_are_named_by_key_and_line() {
        use super::super::{NotifyEvent, NotifyTarget};
        let ok = format!("{GOOD}\n[[notify]]\nwebhook = \"https://hooks.example/T0/SECRET\"\n\n[[notify]]\ncommand = [\"/bin/page\", \"-q\"]\nevents = [\"needs_login\"]\nafter_failures = 5\n");
        let c = Config::parse("t.toml", &ok).unwrap();
        assert!(c.proxy.access_log, "the access log is on by default");
        assert!(matches!(&c.notify[0].target, NotifyTarget::Webhook(u) if u.expose().ends_with("/SECRET")));
        assert_eq!((c.notify[0].events.len(), c.notify[0].after_failures), (3, 3));
        assert_eq!(c.notify[1].target, NotifyTarget::Command(vec!["/bin/page".into(), "-q".into()]));
        assert_eq!((c.notify[1].events.clone(), c.notify[1].after_failures), (vec![NotifyEvent::NeedsLogin], 5));
        assert!(!c.to_string().contains("SECRET") && !format!("{c:?}").contains("SECRET"));

        let off = GOOD.replace("max_request_body = \"1MiB\"", "max_request_body = \"1MiB\"\naccess_log = false");
        assert!(!Config::parse("t.toml", &off).unwrap().proxy.access_log);

        for (entry, says) in [
            (
                "webhook = \"https://h.example/x\"\ncommand = [\"/bin/x\"]",
                "notify[0]: needs exactly one of `webhook` and `command`",
            ),
            ("events = [\"needs_login\"]", "notify[0]: needs exactly one of `webhook` and `command`"),
            ("webhook = \"not a url SECRET\"", "notify[0].webhook: must be an http:// or https:// URL"),
            ("command = []", "notify[0].command: must name a program"),
            ("command = [\"/bin/x\"]\nevents = [\"paged\"]", "notify[0].events[0]: is not an event"),
            ("command = [\"/bin/x\"]\nafter_failures = 0", "notify[0].after_failures: must be at least 1"),
            ("command = [\"/bin/x\"]\nshell = true", "shell"),
        ] {
            let e = err(&format!("{GOOD}\n[[notify]]\n{entry}\n"));
            assert!(e.contains(says) && e.contains("t.toml:"), "{entry}: {e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
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
    fn rate_limit_must_be_positive() {
        let text = GOOD.replace("credential = \"g2a\"", "credential = \"g2a\"\nrate_limit = 0");
        assert!(err(&text).contains("routes[0].rate_limit"));
        let text = GOOD.replace("credential = \"g2a\"", "credential = \"g2a\"\nrate_limit = 10");
        assert_eq!(Config::parse("t.toml", &text).unwrap().routes[0].rate_limit, Some(10.0));
    }

    #[test]
    fn url_and_route_errors_do_not_echo_the_value() {
        let text = GOOD.replace(
            "upstream = \"https://api.getgo.com\"\ncredential = \"g2a\"",
            "upstream = \"https://u:pa55@[zz/\"\ncredential = \"g2a\"",
        );
        let e = err(&text);
        assert!(e.contains("routes[0].upstream: is not a URL (") && !e.contains("pa55"), "{e}");
        let text = GOOD.replace("credential = \"g2a\"", "credential = \"g2a\"\nmethods = [\"GET\", \"B@D s3cr3t\"]");
        let e = err(&text);
        assert!(e.contains("routes[0].methods[1]: is not an HTTP method") && !e.contains("s3cr3t"), "{e}");
        let text = GOOD.replace("prefix = \"/G2A/\"", "prefix = \"/\"");
        let e = err(&text);
        assert!(e.contains("routes[1].prefix: \"/\" is already used by routes[0]"), "{e}");
    }

    #[test]
    fn secrets_from_env_and_files_never_appear_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "file-s3cr3t\n").unwrap();
        let file = format!("{{ file = {:?} }}", p.display().to_string());
        // A valid secret, then a later error in the same credential.
        let text = GOOD
            .replace("\"pw-literal-secret\"", &file)
            .replace("grant = \"password\"", "grant = \"password\"\nscope = \"x\"");
        let e = err(&text);
        assert!(e.contains("credentials.g2a.scope: is not used by grant"), "{e}");
        assert!(!e.contains("file-s3cr3t"), "{e}");
        let line = text.lines().position(|l| l.starts_with("scope")).unwrap() + 1;
        assert!(e.starts_with(&format!("t.toml:{line}:")), "{e}");
    }

    #[test]
    fn upstream_must_be_http() {
        let text = GOOD.replace(
            "upstream = \"https://api.getgo.com\"\ncredential = \"g2a\"",
            "upstream = \"ftp://x\"\ncredential = \"g2a\"",
        );
        assert!(err(&text).contains("routes[0].upstream"));
    }

    fn with_keys(keys: &str) -> String {
        GOOD.replace("[credentials.g2a]", &format!("[state]\nencryption_keys = {keys}\n\n[credentials.g2a]"))
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn state_encryption_keys_resolve_and_show_only_key_ids() {
        let (new, old) = (b64(&[1; 32]), b64(&[2; 32]));
        let c = Config::parse("t.toml", &with_keys(&format!("[\"{new}\", \"{old}\"]"))).unwrap();
        assert_eq!(c.state_encryption_keys.len(), 2);
        assert_eq!(c.state_encryption_keys[0].expose(), new);
        let ids = c.state_key_ids();
        assert_eq!(ids, vec![crate::secret::key_id(&[1; 32]), crate::secret::key_id(&[2; 32])]);
        let shown = c.to_string();
        assert!(shown.contains(&format!("encryption: 2 key(s), key ids: {} (seals), {}", ids[0], ids[1])), "{shown}");
        let debug = format!("{c:?}");
        assert!(!shown.contains(&new) && !debug.contains(&new) && !debug.contains(&old), "{debug}");
        let none = Config::parse("t.toml", GOOD).unwrap();
        assert!(none.state_encryption_keys.is_empty());
        assert!(none.to_string().contains("encryption: off"));
    }

    #[test]
    fn state_encryption_keys_of_the_wrong_size_are_refused_by_position_and_line() {
        for bad in [b64(&[3; 31]), b64(&[3; 33]), "not-base64-key!".to_string()] {
            let text = with_keys(&format!("[\n  \"{}\",\n  \"{bad}\",\n]", b64(&[1; 32])));
            let e = err(&text);
            assert!(
                e.contains("t.toml:10:")
                    && e.contains(
                        "state.encryption_keys[1]: expected base64 of 32 bytes (goto-auth-proxy keygen makes one)"
                    ),
                "{e}"
            );
            assert!(!e.contains(&bad), "{e}");
        }
    }

    #[test]
    fn state_encryption_keys_come_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.key");
        std::fs::write(&p, format!("{}\n", b64(&[4; 32]))).unwrap();
        let c = Config::parse("t.toml", &with_keys(&format!("[{{ file = {:?} }}]", p.display().to_string()))).unwrap();
        assert_eq!(c.state_key_ids(), vec![crate::secret::key_id(&[4; 32])]);
        std::fs::write(&p, "short\n").unwrap();
        let e = err(&with_keys(&format!("[{{ file = {:?} }}]", p.display().to_string())));
        assert!(e.contains("state.encryption_keys[0]: expected base64 of 32 bytes") && !e.contains("short"), "{e}");
        let e = err(&with_keys("[{ env = \"GOTO_AUTH_PROXY_TEST_UNSET_STATE_KEY\" }]"));
        assert!(
            e.contains(
                "state.encryption_keys[0]: environment variable GOTO_AUTH_PROXY_TEST_UNSET_STATE_KEY is not set"
            ),
            "{e}"
        );
    }

    #[test]
    fn client_auth_and_authorize_params_resolve_and_show_in_check() {
        let text = GOOD.replace(
            "refresh_before = \"2m\"",
            "refresh_before = \"2m\"\nclient_auth = \"basic_rfc6749\"\nauthorize_params = { prompt = \"consent\", ui_locales = \"de\" }",
        );
        let c = Config::parse("t.toml", &text).unwrap();
        let goto = &c.credentials["goto"];
        assert_eq!(goto.client_auth, super::ClientAuth::BasicRfc6749);
        assert_eq!(
            goto.authorize_params,
            vec![("prompt".into(), "consent".into()), ("ui_locales".into(), "de".into())]
        );
        let shown = c.to_string();
        assert!(
            shown.contains("client_auth: basic_rfc6749") && shown.contains("authorize_params: prompt, ui_locales"),
            "{shown}"
        );
        // The default is not shown.
        let plain = Config::parse("t.toml", GOOD).unwrap();
        assert_eq!(plain.credentials["goto"].client_auth, super::ClientAuth::Basic);
        assert!(!plain.to_string().contains("client_auth"));
    }

    #[test]
    fn client_auth_must_be_a_known_mode_and_suit_the_grant() {
        let text = GOOD.replace("refresh_before = \"2m\"", "refresh_before = \"2m\"\nclient_auth = \"digest-s3cr3t\"");
        let e = err(&text);
        assert!(
            e.starts_with("t.toml:18:") && e.contains("credentials.goto.client_auth: is not a client authentication"),
            "{e}"
        );
        assert!(!e.contains("s3cr3t"), "{e}");
        let text = GOOD.replace("password = \"pw-literal-secret\"", "password = \"x\"\nclient_auth = \"post\"");
        assert!(err(&text).contains("credentials.g2a.client_auth: is not used by grant \"password\""));
    }

    #[test]
    fn authorize_params_may_not_name_what_the_proxy_sets() {
        for own in super::AUTHORIZE_PARAMS_OWN {
            let text = GOOD.replace(
                "refresh_before = \"2m\"",
                &format!("refresh_before = \"2m\"\nauthorize_params = {{ prompt = \"consent\", {own} = \"v4lue\" }}"),
            );
            let e = err(&text);
            assert!(
                e.starts_with("t.toml:18:")
                    && e.contains(&format!("credentials.goto.authorize_params.{own}: is set by the proxy itself")),
                "{e}"
            );
            assert!(!e.contains("v4lue"), "{e}");
        }
        let text =
            GOOD.replace("password = \"pw-literal-secret\"", "password = \"x\"\nauthorize_params = { a = \"b\" }");
        assert!(err(&text).contains("credentials.g2a.authorize_params: is not used by grant \"password\""));
    }
}
