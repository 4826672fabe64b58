//! `[credentials.NAME]`: the grant, the keys it takes, its secrets and endpoints.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::super::error::{ConfigError, Locator};
use super::super::names::quoted;
use super::super::raw::{RawCredential, RawSecret};
use super::super::{
    ClientAuth, CredentialConfig, GrantKind, SecretFiles, AUTHORIZE_PARAMS_OWN, GOTO_AUTHORIZE_URL,
    GOTO_DIRECT_LOGIN_URL, GOTO_KEYS_URL, GOTO_TOKEN_URL,
};
use super::{parse_url, resolve_secret};
use crate::secret::Secret;

/// `[credentials.NAME]` (at `span`): a known grant, exactly the keys that grant takes,
/// secrets resolved, endpoints defaulted to GoTo's.
pub(super) fn validate_credential(
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
        config_file: (loc.file != super::super::DEFAULT_CONFIG_PATH && !loc.file.starts_with('('))
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
        if !super::super::names::is_valid_name(d.get_ref()) {
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
    let table = super::super::keys::statement_start(loc.text, key).map_or(raw.span(), |at| at..at);
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
