//! A token endpoint's answer, parsed as GoTo sends it (string or number `expires_in`,
//! keys as strings or big integers), and the keys lookup's answers.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer};

use super::SourceError;
use crate::secret::Secret;
use crate::token::key::{self, Dropped};

/// Longest `Retry-After` honoured: a broken header must not stop renewals for a day.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// A token endpoint's `Retry-After` (seconds or an HTTP-date, as the data path reads an
/// API's), capped at [`MAX_RETRY_AFTER`]; garbage counts as absent.
pub(super) fn parse_retry_after(value: Option<&http::HeaderValue>, now: SystemTime) -> Option<Duration> {
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
    /// GoTo organizer key; only a valid one ([`crate::token::valid_key`]).
    #[serde(default, deserialize_with = "key_string")]
    pub organizer_key: Option<String>,
    /// GoTo account key; only a valid one.
    #[serde(default, deserialize_with = "key_string")]
    pub account_key: Option<String>,
    /// Who signed in (GoTo: the user's email), when the answer says (`principal`, else
    /// `email`); else the OpenID `id_token`'s `email` or `sub`, for display only
    /// ([`crate::token::id_token`]). At most [`crate::token::MAX_PRINCIPAL`] characters.
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
    pub(super) dropped: Vec<Dropped>,
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
        let [from_email, from_sub] = r
            .id_token
            .take()
            .map_or([("", None), ("", None)], |t| crate::token::id_token::principal_claims(t.expose()));
        let candidates = [("principal", r.principal.take()), ("email", r.email.take()), from_email, from_sub];
        r.principal = key::first_principal(candidates, &mut dropped);
        r.dropped = dropped;
        Ok(r)
    }

    /// An answer no endpoint gave: `access_token`, living `lifetime`, nothing else.
    pub(super) fn configured(access_token: Secret, lifetime: Duration) -> TokenResponse {
        TokenResponse {
            access_token,
            expires_in: Some(lifetime.as_secs()),
            refresh_token: None,
            organizer_key: None,
            account_key: None,
            principal: None,
            email: None,
            id_token: None,
            dropped: Vec::new(),
        }
    }

    /// Logs a warning for each key or principal [`Self::parse`] dropped, naming
    /// `credential` and the field (never the value).
    pub(super) fn warn_dropped(&self, credential: &str) {
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
/// clamped to a year later ([`crate::token::lifetime_of`]).
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

#[derive(Deserialize)]
pub(super) struct OAuthError {
    pub(super) error: Option<String>,
    pub(super) error_description: Option<String>,
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
pub(super) const SCIM_GETGO: &str = "urn:scim:schemas:extension:getgo:1.0";

/// Reads keys from any of the three answers that carry them, tolerating missing fields:
/// a token answer (`organizer_key`, `account_key`, `principal`), the Admin API's `/me`
/// (`key`, `accountKey` or `accounts[].key`, `email`) and the identity SCIM document
/// (`id` is the organizer key, the first `accounts[].value` of the
/// `urn:scim:schemas:extension:getgo:1.0` extension the account key, `userName` who
/// signed in). Keys may be strings or integers beyond 2^53; both stay exact. Each is
/// the first valid one of its fields; those not valid are dropped ([`Keys::dropped`]).
pub(super) fn parse_keys(body: &[u8]) -> Keys {
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
