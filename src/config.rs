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

    /// A located error for a key whose value carries no span: the line of `key`'s own
    /// `key = …` statement when the file has one, else the line of `fallback`.
    fn err_key(&self, key: &str, fallback: &Range<usize>, message: impl Into<String>) -> ConfigError {
        let line = scan_entries(self.text)
            .iter()
            .find(|e| !e.header && e.key == key)
            .map(|e| self.line_of(&e.range))
            .unwrap_or_else(|| self.line_of(fallback));
        ConfigError::At { file: self.file.to_string(), line, key: key.to_string(), message: message.into() }
    }
}

// ===== toml errors: the key, the line and the expected type — never the value =====
//
// toml's own messages quote the input ("invalid type: integer `98765…`, expected a
// string"), and its error span points at the value, not the key. A secret of the wrong
// type would be echoed verbatim, so a toml error is rebuilt here from three things that
// are never a value: the dotted key found by scanning the text around the span, the
// line, and the type the schema expected.

/// What a secret may be, as an error message says it.
const SECRET_FORMS: &str = "a string, { env = \"NAME\" } or { file = \"PATH\" }";

/// Turns a toml/serde error into a located error that names the key and the expected
/// type, and never quotes the input.
fn toml_error(loc: &Locator<'_>, e: &toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let mut key = key_at(loc.text, span.start);
    // A file that is valid TOML failed the schema (a data error, whose message quotes the
    // value); otherwise toml's parser refused it, and its messages name only grammar
    // tokens and keys.
    let syntax_ok = loc.text.parse::<toml::Table>().is_ok();
    let message = if syntax_ok {
        describe_data_error(e.message(), &mut key)
    } else {
        describe_syntax_error(e.message(), loc.text.get(span.clone()).unwrap_or(""))
    };
    loc.err(&span, key, message)
}

/// A serde data error, rebuilt from the schema's side of it; `key` may grow by the
/// missing field's name.
fn describe_data_error(message: &str, key: &mut String) -> String {
    let first = message.lines().next().unwrap_or("").trim();
    if let Some(field) = first.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(field);
        return "is required".to_string();
    }
    if first.starts_with("unknown field `") {
        // "unknown field `x`, expected one of `a`, `b`" / "…, expected `a`" / "…, there are no fields"
        return match first.split_once(", expected ") {
            Some((_, allowed)) => {
                let allowed = allowed.strip_prefix("one of ").unwrap_or(allowed).replace('`', "").replace(" or ", ", ");
                if allowed == "env, file" {
                    // Inside `{ … }` given for a secret.
                    format!("invalid value: expected {SECRET_FORMS}")
                } else {
                    format!("unknown key (allowed keys: {allowed})")
                }
            }
            None => "unknown key (this table takes no keys)".to_string(),
        };
    }
    let (leaf, indexed) = leaf_of(key);
    let by_key = expected_for_key(leaf, indexed);
    // serde's Expected text is the schema's; the value sits before it, so the last
    // "expected " starts the schema's part even when the value itself says "expected ".
    let schema = first.rsplit_once("expected ").map(|(_, e)| e.trim());
    if matches!(schema, Some("a borrowed string" | "a spanned value")) {
        // toml cannot locate a table written with dotted keys (`[credentials]` + `a.grant = …`).
        return "write this table under its own [header] (dotted keys cannot be used here)".to_string();
    }
    let expected = by_key.map(str::to_string).or_else(|| schema.map(friendly_expected));
    let found = first.strip_prefix("invalid type: ").map(found_kind).filter(|k| !k.is_empty());
    match (expected, found) {
        (Some(x), Some(k)) => format!("invalid value: expected {x}, found {k}"),
        (Some(x), None) => format!("invalid value: expected {x}"),
        (None, _) => "invalid value".to_string(),
    }
}

/// A toml syntax error: its message names grammar tokens and key names only (the parser
/// never quotes values), made one line. As a second guard, a message that contains the
/// text at the error's span is replaced by a neutral one.
fn describe_syntax_error(message: &str, at_span: &str) -> String {
    let text = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(": ");
    let at_span = at_span.trim();
    let echoes = at_span.len() >= 4 && text.contains(at_span);
    if text.is_empty() || (echoes && !text.starts_with("duplicate key")) {
        "invalid TOML".to_string()
    } else {
        text
    }
}

/// The last segment of a dotted key without its index, and whether it had one.
fn leaf_of(key: &str) -> (&str, bool) {
    let last = key.rsplit('.').next().unwrap_or(key);
    match last.split_once('[') {
        Some((name, _)) => (name, true),
        None => (last, false),
    }
}

/// What a key of this name holds, when the schema's own words would be unhelpful
/// ("expected a duration" says nothing of the format).
fn expected_for_key(leaf: &str, indexed: bool) -> Option<&'static str> {
    match (leaf, indexed) {
        (
            "client_id" | "client_secret" | "refresh_token" | "username" | "password" | "pat" | "token" | "redis_url",
            false,
        )
        | ("keys", true) => Some(SECRET_FORMS),
        ("connect_timeout" | "request_timeout" | "token_wait" | "refresh_before", false) => {
            Some("a duration such as \"30s\"")
        }
        ("max_request_body", false) => Some("a size such as \"10MiB\""),
        ("listen" | "admin_listen", false) => Some("an address such as \"127.0.0.1:8080\""),
        _ => None,
    }
}

/// serde's name for an expected type, in the words of the config file.
fn friendly_expected(schema: &str) -> String {
    match schema {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number (0 or more)".to_string(),
        "isize" | "i64" | "i32" | "i16" | "i8" => "a whole number".to_string(),
        "f64" | "f32" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a sequence" => "a list".to_string(),
        "a map" | "map" => "a table".to_string(),
        "a duration" => "a duration such as \"30s\"".to_string(),
        "parsable string" => "a size such as \"10MiB\"".to_string(),
        s if s.starts_with("struct ") => "a table".to_string(),
        s => s.to_string(),
    }
}

/// The kind of value serde found ("integer `5`" → "integer"): the words before the
/// quoted value, never the value.
fn found_kind(unexpected: &str) -> &'static str {
    let kind = unexpected.split(['`', '"', ',']).next().unwrap_or("").trim();
    match kind {
        "boolean" => "true/false",
        "integer" => "an integer",
        "floating point" => "a number",
        "string" | "char" | "character" => "a string",
        "sequence" => "a list",
        "map" => "a table",
        _ => "",
    }
}

/// One `key = value` statement or `[table]` header, as [`scan_entries`] finds it.
struct Entry {
    /// From the key's (or header's) first byte to the end of the value (or header line).
    range: Range<usize>,
    /// The full dotted key: `routes[1].methods`, or for a header `credentials.g2a`.
    key: String,
    /// A `[table]` or `[[array]]` header rather than a statement.
    header: bool,
    /// For a value that is an array: where it opens and closes, and its top-level commas
    /// (so a position inside it maps to an element index).
    array: Option<(usize, usize, Vec<usize>)>,
}

/// The dotted key at byte `pos`: the statement or header it falls in, with an array
/// element's index (`inbound.keys[1]`); the enclosing table when it falls between
/// statements; `config` at the top of the file.
fn key_at(text: &str, pos: usize) -> String {
    let mut table: Option<String> = None;
    for e in scan_entries(text) {
        if e.range.start > pos {
            break;
        }
        if pos <= e.range.end {
            return match e.array {
                Some((open, close, commas)) if open < pos && pos < close => {
                    let index = commas.iter().filter(|c| **c < pos).count();
                    format!("{}[{index}]", e.key)
                }
                _ => e.key,
            };
        }
        if e.header {
            table = Some(e.key);
        }
    }
    table.unwrap_or_else(|| "config".to_string())
}

/// A small TOML scanner: every statement and header with its dotted key, arrays of
/// tables numbered (`routes[0]`, `routes[1]`), strings, comments and nested brackets
/// skipped. Never fails: what it cannot read it skips to the end of the line.
fn scan_entries(text: &str) -> Vec<Entry> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut table = String::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'#' => i = line_end(b, i),
            b'[' => {
                let start = i;
                let double = b.get(i + 1) == Some(&b'[');
                let (segments, after) = parse_key(text, i + if double { 2 } else { 1 });
                let closing: &[u8] = if double { b"]]" } else { b"]" };
                let end = line_end(b, after);
                if let Some(segments) = segments.filter(|_| b[after.min(b.len())..].starts_with(closing)) {
                    let name = with_array_indexes(&segments, &arrays);
                    table = if double {
                        let plain = segments.join(".");
                        let n = arrays.entry(plain).or_insert(0);
                        let key = format!("{name}[{n}]");
                        *n += 1;
                        key
                    } else {
                        name
                    };
                    out.push(Entry { range: start..end, key: table.clone(), header: true, array: None });
                }
                i = end.max(start + 1);
            }
            _ => {
                let start = i;
                let (segments, after) = parse_key(text, i);
                let eq = skip_blanks(b, after);
                match segments {
                    Some(segments) if b.get(eq) == Some(&b'=') => {
                        let (end, array) = scan_value(b, eq + 1);
                        let key = segments.join(".");
                        let key = if table.is_empty() { key } else { format!("{table}.{key}") };
                        out.push(Entry { range: start..end, key, header: false, array });
                        i = end.max(start + 1);
                    }
                    _ => i = line_end(b, i).max(start + 1),
                }
            }
        }
    }
    out
}

/// A header's segments with the current index of every array of tables they pass
/// through: `[routes.extra]` after two `[[routes]]` → `routes[1].extra`.
fn with_array_indexes(segments: &[String], arrays: &BTreeMap<String, usize>) -> String {
    let mut out = String::new();
    for (n, seg) in segments.iter().enumerate() {
        if n > 0 {
            out.push('.');
        }
        out.push_str(seg);
        if n + 1 < segments.len() {
            if let Some(count) = arrays.get(&segments[..=n].join(".")) {
                out.push_str(&format!("[{}]", count.saturating_sub(1)));
            }
        }
    }
    out
}

/// Offset of the newline ending the line `i` is on (or the end of the text).
fn line_end(b: &[u8], i: usize) -> usize {
    b.iter().skip(i).position(|c| *c == b'\n').map_or(b.len(), |n| i + n)
}

/// First offset from `i` that is not a space or tab.
fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// A dotted key from `i`: its segments (quotes removed, escapes left as written) and the
/// offset after it; `None` when no key starts there.
fn parse_key(text: &str, mut i: usize) -> (Option<Vec<String>>, usize) {
    let b = text.as_bytes();
    let bare = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    let mut segments = Vec::new();
    loop {
        i = skip_blanks(b, i);
        let start = i;
        match b.get(i) {
            Some(q @ (b'"' | b'\'')) => {
                i += 1;
                while let Some(&c) = b.get(i) {
                    if c == *q || c == b'\n' {
                        break;
                    }
                    i += if c == b'\\' && *q == b'"' { 2 } else { 1 };
                }
                if b.get(i) != Some(q) {
                    return (None, i);
                }
                segments.push(text.get(start + 1..i).unwrap_or("").to_string());
                i += 1;
            }
            Some(&c) if bare(c) => {
                while b.get(i).is_some_and(|c| bare(*c)) {
                    i += 1;
                }
                segments.push(text.get(start..i).unwrap_or("").to_string());
            }
            _ => return (None, i),
        }
        i = skip_blanks(b, i);
        if b.get(i) == Some(&b'.') {
            i += 1;
        } else {
            return (Some(segments), i);
        }
    }
}

/// Scans a value from `i` (just after `=`) to its end: the newline outside brackets and
/// strings. Returns that end and, for an array, where it opens and closes and its
/// top-level commas.
#[allow(clippy::type_complexity)]
fn scan_value(b: &[u8], i: usize) -> (usize, Option<(usize, usize, Vec<usize>)>) {
    let first = skip_blanks(b, i);
    let is_array = b.get(first) == Some(&b'[');
    let mut close = b.len();
    let mut commas = Vec::new();
    let mut depth = 0usize;
    let mut k = i;
    while k < b.len() {
        match b[k] {
            b'\n' if depth == 0 => break,
            b'#' => k = line_end(b, k).max(k + 1),
            b'"' | b'\'' => k = skip_string(b, k),
            b'[' | b'{' => {
                depth += 1;
                k += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 && is_array && close == b.len() {
                    close = k;
                }
                k += 1;
            }
            b',' => {
                if depth == 1 && is_array && close == b.len() {
                    commas.push(k);
                }
                k += 1;
            }
            _ => k += 1,
        }
    }
    (k.min(b.len()), is_array.then_some((first, close, commas)))
}

/// The offset after the string starting at `k` (basic or literal, single- or
/// multi-line); an unterminated single-line string ends at its newline.
fn skip_string(b: &[u8], k: usize) -> usize {
    let q = b[k];
    let escapes = q == b'"';
    let triple = [q, q, q];
    if b[k..].starts_with(&triple) {
        let mut j = k + 3;
        while j < b.len() {
            if escapes && b[j] == b'\\' {
                j += 2;
            } else if b[j..].starts_with(&triple) {
                j += 3;
                // Up to two quotes may end the content right before the delimiter.
                let mut extra = 0;
                while extra < 2 && b.get(j) == Some(&q) {
                    j += 1;
                    extra += 1;
                }
                return j;
            } else {
                j += 1;
            }
        }
        return b.len();
    }
    let mut j = k + 1;
    while j < b.len() {
        match b[j] {
            c if c == q => return j + 1,
            b'\n' => return j,
            b'\\' if escapes => j += 2,
            _ => j += 1,
        }
    }
    b.len()
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
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    allow_origins: Vec<Spanned<String>>,
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
#[derive(Debug)]
enum RawSecret {
    Literal(String),
    Env { env: String },
    File { file: PathBuf },
}

impl<'de> Deserialize<'de> for RawSecret {
    /// By hand rather than `#[serde(untagged)]`: an untagged enum buffers its input, so
    /// toml can then only point at the whole list a bad secret is in (`inbound.keys`,
    /// not `inbound.keys[1]`), and it says nothing of what was expected.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};
        struct SecretVisitor;
        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = RawSecret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SECRET_FORMS)
            }

            fn visit_str<E: Error>(self, v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret::Literal(v.to_string()))
            }

            fn visit_string<E: Error>(self, v: String) -> Result<RawSecret, E> {
                Ok(RawSecret::Literal(v))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSecret, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::invalid_length(0, &self));
                };
                let secret = match key.as_str() {
                    "env" => RawSecret::Env { env: map.next_value()? },
                    "file" => RawSecret::File { file: map.next_value()? },
                    _ => return Err(A::Error::unknown_field(&key, &["env", "file"])),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(A::Error::invalid_length(2, &self));
                }
                Ok(secret)
            }
        }
        d.deserialize_any(SecretVisitor)
    }
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
}

/// One `[[routes]]` entry.
#[derive(Clone)]
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(&loc, &e))?;
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
        return Err(loc.err_key("proxy.workers", &(0..0), "must be at least 1"));
    }
    if proxy.max_concurrent_requests == 0 {
        return Err(loc.err_key("proxy.max_concurrent_requests", &(0..0), "must be at least 1"));
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
            return Err(loc.err(&r.prefix.span(), key("prefix"), format!("is already used by routes[{first}]")));
        }
        let upstream = parse_url(loc, &r.upstream, &key("upstream"))?;
        if upstream.query().is_some() || upstream.fragment().is_some() {
            return Err(loc.err(&r.upstream.span(), key("upstream"), "must not have a query or fragment"));
        }
        let credential = match r.credential {
            Some(c) if !credentials.contains_key(c.get_ref()) => {
                let known: Vec<&str> = credentials.keys().map(String::as_str).collect();
                let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                return Err(loc.err(
                    &c.span(),
                    key("credential"),
                    format!("names no credential that exists (defined: {known})"),
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
                    "is not an address or CIDR such as \"10.0.0.0/8\"",
                )
            })?;
        allow_cidrs.push(net);
    }
    let tls = match (raw.tls_cert, raw.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            for (k, f) in [("inbound.tls_cert", &cert), ("inbound.tls_key", &key)] {
                if !f.get_ref().is_file() {
                    return Err(loc.err(&f.span(), k, "is not a readable file"));
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
            return Err(loc.err_key(what, &(0..0), "is not a loopback address: anyone who can reach it could call GoTo with your token; set [inbound] allow_remote = true with keys and/or allow_cidrs to allow it"));
        }
    }
    let hosts = validate_hosts(loc, &raw.hosts)?;
    let mut allow_origins: Vec<String> = Vec::new();
    for (i, o) in raw.allow_origins.iter().enumerate() {
        let origin = normalise_origin(o.get_ref()).ok_or_else(|| {
            loc.err(
                &o.span(),
                format!("inbound.allow_origins[{i}]"),
                "is not a browser origin such as \"https://web.postman.co\" (http or https, a host, an optional port; no path, query or user info)",
            )
        })?;
        if !allow_origins.contains(&origin) {
            allow_origins.push(origin);
        }
    }
    Ok(InboundSettings { allow_remote, keys, allow_cidrs, tls, hosts, allow_origins })
}

/// `inbound.hosts`: each a host name or IP address, stored as a `Host` header carries it
/// (lowercase name, dotted IPv4, bracketed IPv6); `*` alone turns the check off.
fn validate_hosts(loc: &Locator<'_>, raw: &[Spanned<String>]) -> Result<Vec<String>, ConfigError> {
    let mut hosts: Vec<String> = Vec::new();
    for (i, h) in raw.iter().enumerate() {
        let key = format!("inbound.hosts[{i}]");
        if h.get_ref() == "*" {
            if raw.len() != 1 {
                return Err(loc.err(&h.span(), key, "\"*\" serves any Host and must be the only entry"));
            }
            return Ok(vec!["*".to_string()]);
        }
        let host = normalise_host(h.get_ref()).ok_or_else(|| {
            loc.err(
                &h.span(),
                key,
                "is not a host name or IP address such as \"proxy.internal\" (no scheme, port, path or wildcard)",
            )
        })?;
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(hosts)
}

/// An `inbound.hosts` entry in the form a `Host` header carries it, or `None` when it is
/// not a bare host name (letters, digits, `-`, `_`; dot-separated labels) or IP address.
fn normalise_host(s: &str) -> Option<String> {
    use std::net::{IpAddr, Ipv6Addr};
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        });
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(|v6| format!("[{v6}]"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    // A last label of digits only would make it a malformed IPv4 address, not a name.
    let last_numeric = s.rsplit('.').next().is_some_and(|l| l.bytes().all(|c| c.is_ascii_digit()));
    (s.len() <= 253 && s.split('.').all(label_ok) && !last_numeric).then(|| s.to_ascii_lowercase())
}

/// An `inbound.allow_origins` entry as browsers send `Origin`: `scheme://host[:port]`,
/// lowercase, default port omitted; `None` for anything with more (path, query, user
/// info, fragment) or less (no host), or another scheme.
fn normalise_origin(s: &str) -> Option<String> {
    let u = url::Url::parse(s).ok()?;
    let bare = matches!(u.scheme(), "http" | "https")
        && u.host_str().is_some_and(|h| !h.contains('*'))
        && u.username().is_empty()
        && u.password().is_none()
        && u.path() == "/"
        && u.query().is_none()
        && u.fragment().is_none();
    bare.then(|| u.origin().ascii_serialization())
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
        _ => {
            let span = raw.store.as_ref().map(|s| s.span()).unwrap_or(0..0);
            Err(loc.err(&span, "state.store", "is not a store: expected \"file\" or \"redis\""))
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
            "is not a grant: expected authorization_code, password, personal_access_token, client_credentials or static",
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
                return Err(loc.err_key(&key(k), s, format!("is not used by grant \"{grant}\"")));
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
    // url's ParseError says what is wrong in fixed words, never quoting the input.
    let url = url::Url::parse(s.get_ref()).map_err(|e| loc.err(&s.span(), key, format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(loc.err(&s.span(), key, "must be an http:// or https:// URL with a host"));
    }
    Ok(url)
}

fn resolve_secret(loc: &Locator<'_>, s: &Spanned<RawSecret>, key: &str) -> Result<Secret, ConfigError> {
    let value = match s.get_ref() {
        RawSecret::Literal(v) => v.clone(),
        // The variable's name and the file's path say where the secret is; they are not it.
        RawSecret::Env { env } => std::env::var(env).map_err(|e| {
            let why = match e {
                std::env::VarError::NotPresent => "is not set",
                std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
            };
            loc.err(&s.span(), key, format!("environment variable {env} {why}"))
        })?,
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

// ===== printing URLs =====

/// A configured URL as it may be printed or logged: scheme, host, port and path. User
/// info and query string are where URLs carry passwords and `client_secret=`
/// parameters, so they are never shown (SPEC "Configuration"); their place is marked
/// `[redacted]` (`https://[redacted]@host/token?[redacted]`) so a reader still sees that
/// the URL has them. A fragment is marked the same way.
pub fn display_url(url: &url::Url) -> String {
    let mut out = String::with_capacity(url.as_str().len());
    out.push_str(url.scheme());
    match url.host_str() {
        Some(host) => {
            out.push_str("://");
            if !url.username().is_empty() || url.password().is_some() {
                out.push_str("[redacted]@");
            }
            out.push_str(host);
            if let Some(port) = url.port() {
                out.push(':');
                out.push_str(&port.to_string());
            }
            out.push_str(url.path());
        }
        // No host: the rest (`mailto:…`, `data:…`) is opaque and may be anything.
        None => out.push_str(":[redacted]"),
    }
    if url.query().is_some() {
        out.push_str("?[redacted]");
    }
    if url.fragment().is_some() {
        out.push_str("#[redacted]");
    }
    out
}

/// [`display_url`] for a URL kept as text (credential endpoints); text that does not
/// parse as a URL is not shown at all, since nothing can be said about what it holds.
pub fn display_url_str(url: &str) -> String {
    url::Url::parse(url).map(|u| display_url(&u)).unwrap_or_else(|_| "[not a URL]".to_string())
}

impl fmt::Debug for CredentialConfig {
    /// Secrets print as `[redacted]` through [`Secret`]; URLs through [`display_url`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialConfig")
            .field("name", &self.name)
            .field("grant", &self.grant)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("redirect_uri", &self.redirect_uri.as_deref().map(display_url_str))
            .field("refresh_token", &self.refresh_token)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("pat", &self.pat)
            .field("token", &self.token)
            .field("token_url", &display_url_str(&self.token_url))
            .field("authorize_url", &display_url_str(&self.authorize_url))
            .field("keys_url", &display_url_str(&self.keys_url))
            .field("scope", &self.scope)
            .field("refresh_before", &self.refresh_before)
            .finish()
    }
}

impl fmt::Debug for RouteConfig {
    /// The upstream through [`display_url`], like every printed URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteConfig")
            .field("prefix", &self.prefix)
            .field("upstream", &display_url(&self.upstream))
            .field("credential", &self.credential)
            .field("strip_prefix", &self.strip_prefix)
            .field("methods", &self.methods)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
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
        if i.hosts.iter().any(|h| h == "*") {
            writeln!(f, "  hosts: * (any Host is served)")?;
        } else if !i.hosts.is_empty() {
            writeln!(f, "  hosts: {} (besides loopback and localhost)", i.hosts.join(", "))?;
        }
        if !i.allow_origins.is_empty() {
            writeln!(f, "  allow_origins: {}", i.allow_origins.join(", "))?;
        }
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
                writeln!(f, "    token_url: {}", display_url_str(&c.token_url))?;
                if c.grant == GrantKind::AuthorizationCode {
                    writeln!(f, "    authorize_url: {}", display_url_str(&c.authorize_url))?;
                }
                writeln!(f, "    keys_url: {}", display_url_str(&c.keys_url))?;
                writeln!(f, "    refresh_before: {}", humantime::format_duration(c.refresh_before))?;
            }
            if let Some(r) = &c.redirect_uri {
                writeln!(f, "    redirect_uri: {}", display_url_str(r))?;
            }
        }
        writeln!(f, "routes (longest prefix wins):")?;
        let mut routes: Vec<&RouteConfig> = self.routes.iter().collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        for r in routes {
            let cred = r.credential.as_deref().unwrap_or("(none: passed through untouched)");
            write!(f, "  {} -> {} credential {}", r.prefix, display_url(&r.upstream).trim_end_matches('/'), cred)?;
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
        assert!(e.starts_with("t.toml:3: proxy.listen_port: unknown key (allowed keys: listen, "), "{e}");
    }

    #[test]
    fn dangling_credential_names_route_and_line() {
        let text = GOOD.replace("credential = \"goto\"", "credential = \"nope\"");
        let e = err(&text);
        assert!(e.contains("routes[1].credential") && e.contains("defined: g2a, goto"), "{e}");
        assert!(!e.contains("nope"), "the value is not echoed: {e}");
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
    fn wrong_type_secret_names_key_line_and_forms_not_the_value() {
        for (line, value) in [
            ("password = [\"s3cr3t-xyz\"]", "s3cr3t-xyz"),
            ("password = 98765432101234", "98765432101234"),
            ("password = 9876543210.1234", "9876543210.1234"),
            ("password = { env = 5 }", "{ env = 5 }"),
            ("password = { value = \"s3cr3t-xyz\" }", "s3cr3t-xyz"),
            ("password = [\n  1,\n  \"s3cr3t-xyz\",\n]", "s3cr3t-xyz"),
        ] {
            let text = GOOD.replace("password = \"pw-literal-secret\"", line);
            let e = err(&text);
            let at = text.lines().position(|l| l.starts_with("password")).expect("replaced") + 1;
            assert!(e.starts_with(&format!("t.toml:{at}: credentials.g2a.password: invalid value: expected ")), "{e}");
            assert!(e.contains(SECRET_FORMS), "{e}");
            assert!(!e.contains(value), "{line}: {e}");
        }
        let e = err("[credentials.s]\ngrant = \"static\"\ntoken = [\"s3cr3t-xyz\"]\n");
        assert!(e.starts_with("t.toml:3: credentials.s.token: invalid value: expected a string, {"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e =
            err("[credentials.goto]\ngrant = \"client_credentials\"\nclient_id = \"c\"\nclient_secret = { env = 5 }\n");
        assert!(e.starts_with("t.toml:4: credentials.goto.client_secret: invalid value"), "{e}");
        let e = err("[inbound]\nkeys = [\"ok-key\", 98765432101234]\n");
        assert!(e.starts_with("t.toml:2: inbound.keys[1]: invalid value: expected a string, {"), "{e}");
        assert!(!e.contains("98765432101234"), "{e}");
    }

    /// Every key the schema has (and an unknown one), in every section, with a value of
    /// every shape: an error never contains the value. (`{ env }`/`{ file }` are left
    /// out: their errors name the variable or the path, on purpose.)
    #[test]
    fn no_error_echoes_a_value_whatever_the_key_section_or_shape() {
        let keys = [
            "listen",
            "admin_listen",
            "connect_timeout",
            "request_timeout",
            "max_request_body",
            "token_wait",
            "workers",
            "max_concurrent_requests",
            "store",
            "path",
            "redis_url",
            "redis_prefix",
            "allow_remote",
            "keys",
            "allow_cidrs",
            "tls_cert",
            "tls_key",
            "hosts",
            "allow_origins",
            "grant",
            "client_id",
            "client_secret",
            "redirect_uri",
            "refresh_token",
            "username",
            "password",
            "pat",
            "token",
            "token_url",
            "authorize_url",
            "keys_url",
            "scope",
            "refresh_before",
            "prefix",
            "upstream",
            "credential",
            "strip_prefix",
            "methods",
            "rate_limit",
            "bogus",
        ];
        let sections = ["", "[proxy]", "[state]", "[inbound]", "[[routes]]", "[credentials.c]"];
        let (word, digits) = ("S3cr3tW0rd", "98765432101234");
        let shapes = [
            (format!("\"{word}\""), word),
            (format!("[\"{word}\"]"), word),
            (format!("[\"/\", \"{word}\"]"), word),
            (digits.to_string(), digits),
            (format!("{digits}.5"), digits),
            (format!("{{ value = \"{word}\" }}"), word),
            (format!("{{ env = [\"{word}\"] }}"), word),
            (format!("{{ env = \"X\", file = \"{word}\" }}"), word),
            (format!("\"\"\"\n{word}\"\"\""), word),
            (word.to_string(), word),
            (format!("\"{word}"), word),
            (format!("[1, \"{word}\", {{ a = \"{word}\" }}]"), word),
        ];
        let mut on_the_line = 0;
        for section in sections {
            for key in keys {
                for (value, hidden) in &shapes {
                    let text = format!("{section}\n{key} = {value}\n");
                    if let Err(e) = Config::parse("t.toml", &text) {
                        let e = e.to_string();
                        assert!(!e.contains(hidden), "{text:?} echoed: {e}");
                        on_the_line += usize::from(e.starts_with("t.toml:2:"));
                    }
                }
            }
        }
        assert!(on_the_line > 1500, "only {on_the_line} errors pointed at the value's line");
    }

    #[test]
    fn wrong_type_values_name_the_expected_type_only() {
        // (text, error start, text that must not appear)
        let cases = [
            (
                "[proxy]\nworkers = \"77x\"\n",
                "t.toml:2: proxy.workers: invalid value: expected a whole number (0 or more), found a string",
                "77x",
            ),
            ("[proxy]\nworkers = -77777\n", "t.toml:2: proxy.workers: invalid value: expected a whole number", "77777"),
            (
                "[proxy]\nrequest_timeout = \"soonish\"\n",
                "t.toml:2: proxy.request_timeout: invalid value: expected a duration such as \"30s\"",
                "soonish",
            ),
            (
                "[proxy]\nmax_request_body = \"tenXYZ\"\n",
                "t.toml:2: proxy.max_request_body: invalid value: expected a size such as \"10MiB\"",
                "tenXYZ",
            ),
            (
                "[proxy]\nlisten = \"1.2.3.4:99999\"\n",
                "t.toml:2: proxy.listen: invalid value: expected an address such as",
                "99999",
            ),
            (
                "[credentials.a]\ngrant = \"static\"\ntoken = \"t\"\nscope = 98765\n",
                "t.toml:4: credentials.a.scope: invalid value: expected a string, found an integer",
                "98765",
            ),
            (
                "[credentials.a]\ngrant = \"static\"\ntoken = \"t\"\nrefresh_before = \"later7\"\n",
                "t.toml:4: credentials.a.refresh_before: invalid value: expected a duration",
                "later7",
            ),
            (
                "[[routes]]\nprefix = \"/\"\nupstream = \"http://x\"\n[[routes]]\nprefix = 12345\n",
                "t.toml:5: routes[1].prefix: invalid value: expected a string, found an integer",
                "12345",
            ),
            (
                "[[routes]]\nprefix = \"/\"\nupstream = \"http://x\"\nmethods = [\"GET\",\n  7777]\n",
                "t.toml:5: routes[0].methods[1]: invalid value: expected a string",
                "7777",
            ),
            (
                "[[routes]]\nprefix = \"/\"\nupstream = \"http://x\"\nrate_limit = \"fast7\"\n",
                "t.toml:4: routes[0].rate_limit: invalid value: expected a number, found a string",
                "fast7",
            ),
            (
                "[[routes]]\nprefix = \"/\"\nupstream = \"http://x\"\nstrip_prefix = \"yes7\"\n",
                "t.toml:4: routes[0].strip_prefix: invalid value: expected true or false",
                "yes7",
            ),
            ("[[routes]]\nupstream = \"http://x\"\n", "t.toml:1: routes[0].prefix: is required", "http://x"),
            ("[credentials.a]\ntoken = \"t\"\n", "t.toml:1: credentials.a.grant: is required", "\"t\""),
            ("routes = 5\n", "t.toml:1: routes: invalid value: expected a list, found an integer", "5\n"),
            ("proxy = 98765\n", "t.toml:1: proxy: invalid value: expected a table", "98765"),
            ("[state]\nstore = \"s3cr3t\"\n", "t.toml:2: state.store: is not a store", "s3cr3t"),
            ("[credentials.a]\ngrant = \"s3cr3t\"\n", "t.toml:2: credentials.a.grant: is not a grant", "s3cr3t"),
            (
                "[credentials.a]\ngrant = \"static\"\ntoken = \"t\"\nbogus = \"s3cr3t\"\n",
                "t.toml:4: credentials.a.bogus: unknown key (allowed keys: grant, ",
                "s3cr3t",
            ),
            (
                "[inbound]\nallow_cidrs = [\"s3cr3t\"]\n",
                "t.toml:2: inbound.allow_cidrs[0]: is not an address or CIDR",
                "s3cr3t",
            ),
            (
                "[inbound]\ntls_cert = \"/s3cr3t/c.pem\"\ntls_key = \"/s3cr3t/k.pem\"\n",
                "t.toml:2: inbound.tls_cert: is not a readable file",
                "s3cr3t",
            ),
            ("[proxy]\nlisten = \"10.9.8.7:80\"\n", "t.toml:2: proxy.listen: is not a loopback address", "10.9.8.7"),
        ];
        for (text, start, hidden) in cases {
            let e = err(text);
            assert!(e.starts_with(start), "{text:?}:\n  {e}\n  expected: {start}");
            assert!(!e.contains(hidden), "{text:?} echoed {hidden:?}: {e}");
        }
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
        assert!(e.contains("routes[1].prefix: is already used by routes[0]") && !e.contains("\"/\""), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_key_and_line() {
        let e = err("[proxy]\nlisten = 127.0.0.1:80\n");
        assert!(e.starts_with("t.toml:2: proxy.listen: "), "{e}");
        let e = err("[credentials.a]\ngrant = \"static\"\ntoken = s3cr3t-xyz\n");
        assert!(e.starts_with("t.toml:3: credentials.a.token: "), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = err("[proxy]\nlisten = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\n");
        assert!(e.starts_with("t.toml:3: proxy.listen: duplicate key"), "{e}");
        let e = err("[credentials.a]\ngrant = \"static\"\ntoken = \"s3cr3t-xyz\n");
        assert!(e.starts_with("t.toml:3: credentials.a.token: ") && !e.contains("s3cr3t"), "{e}");
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
    fn key_scanner_follows_tables_arrays_and_strings() {
        let text = "top = 1\n# [fake]\n[proxy] # c\nlisten = \"a#b\" # c\n[[routes]]\nprefix = \"\"\"\n[not.a.header]\nx = 1\"\"\"\n[[routes]]\nmethods = [\n  \"GET\", # c, d\n  'PUT',\n]\n[routes.extra]\n\"q.k\" . z = 2\n[credentials . \"g 2\"]\nk = { a = [1, 2], b = 3 }\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap());
        assert_eq!(at("1\n#"), "top");
        assert_eq!(at("\"a#b\""), "proxy.listen");
        assert_eq!(at("[not.a"), "routes[0].prefix");
        assert_eq!(at("x = 1"), "routes[0].prefix");
        assert_eq!(at("\"GET\""), "routes[1].methods[0]");
        assert_eq!(at("'PUT'"), "routes[1].methods[1]");
        assert_eq!(at("[\n  \"GET\""), "routes[1].methods");
        assert_eq!(at("[routes.extra]"), "routes[1].extra");
        assert_eq!(at("2\n[cred"), "routes[1].extra.q.k.z");
        assert_eq!(at("b = 3"), "credentials.g 2.k");
        assert_eq!(key_at("", 0), "config");
        // Never panics on anything, including cut-off text.
        for cut in 0..text.len() {
            if text.is_char_boundary(cut) {
                let _ = key_at(&text[..cut], cut);
            }
        }
    }

    #[test]
    fn display_url_drops_user_info_and_query() {
        let u = url::Url::parse("https://user:pa55@auth.example:8443/oauth/token?client_secret=abc#frag").unwrap();
        assert_eq!(display_url(&u), "https://[redacted]@auth.example:8443/oauth/token?[redacted]#[redacted]");
        let u = url::Url::parse("https://api.getgo.com").unwrap();
        assert_eq!(display_url(&u), "https://api.getgo.com/");
        let u = url::Url::parse("http://[::1]:80/x?").unwrap();
        assert_eq!(display_url(&u), "http://[::1]/x?[redacted]");
        assert_eq!(display_url_str("mailto:s3cr3t@example.com"), "mailto:[redacted]");
        assert_eq!(display_url_str("not a url s3cr3t"), "[not a URL]");
    }

    #[test]
    fn check_output_and_debug_hide_url_user_info_and_query() {
        let text = GOOD
            .replace(
                "client_secret = \"cs-literal-secret\"",
                "client_secret = \"cs-literal-secret\"\ntoken_url = \"https://user:pa55@host/token?client_secret=abc\"\nauthorize_url = \"https://host/authorize?k=abc\"\nkeys_url = \"https://user:pa55@host/me?abc\"\nredirect_uri = \"http://127.0.0.1:9901/callback?abc=1\"",
            )
            .replace("upstream = \"https://api.getgo.com\"\ncredential = \"goto\"", "upstream = \"https://user:pa55@api.getgo.com/base\"\ncredential = \"goto\"");
        let c = Config::parse("t.toml", &text).unwrap();
        let shown = c.to_string();
        let debug = format!("{c:?}");
        for out in [&shown, &debug] {
            assert!(!out.contains("pa55") && !out.contains("abc") && !out.contains("client_secret="), "{out}");
        }
        assert!(shown.contains("token_url: https://[redacted]@host/token?[redacted]"), "{shown}");
        assert!(shown.contains("authorize_url: https://host/authorize?[redacted]"), "{shown}");
        assert!(shown.contains("keys_url: https://[redacted]@host/me?[redacted]"), "{shown}");
        assert!(shown.contains("redirect_uri: http://127.0.0.1:9901/callback?[redacted]"), "{shown}");
        assert!(shown.contains("/ -> https://[redacted]@api.getgo.com/base credential goto"), "{shown}");
        // What runs keeps the whole URL.
        assert_eq!(c.credentials["goto"].token_url, "https://user:pa55@host/token?client_secret=abc");
    }

    #[test]
    fn inbound_hosts_and_origins_are_normalised() {
        let text = "[inbound]\nhosts = [\"Proxy.Internal\", \"10.0.0.5\", \"::1\", \"[2001:DB8::1]\", \"my_service\", \"proxy.internal\"]\nallow_origins = [\"https://Web.Postman.co\", \"https://web.postman.co:443/\", \"http://localhost:3000\", \"https://app.example:8443\"]\n";
        let c = Config::parse("t.toml", text).unwrap();
        assert_eq!(c.inbound.hosts, ["proxy.internal", "10.0.0.5", "[::1]", "[2001:db8::1]", "my_service"]);
        assert_eq!(
            c.inbound.allow_origins,
            ["https://web.postman.co", "http://localhost:3000", "https://app.example:8443"]
        );
        let shown = c.to_string();
        assert!(shown.contains("  hosts: proxy.internal, 10.0.0.5, [::1], [2001:db8::1], my_service"), "{shown}");
        assert!(
            shown.contains("  allow_origins: https://web.postman.co, http://localhost:3000, https://app.example:8443"),
            "{shown}"
        );
        let any = Config::parse("t.toml", "[inbound]\nhosts = [\"*\"]\n").unwrap();
        assert_eq!(any.inbound.hosts, ["*"]);
        assert!(any.to_string().contains("hosts: * (any Host is served)"));
        let none = Config::parse("t.toml", "").unwrap();
        assert!(none.inbound.hosts.is_empty() && none.inbound.allow_origins.is_empty());
        assert!(!none.to_string().contains("hosts"));
    }

    #[test]
    fn bad_inbound_hosts_and_origins_refused_without_echo() {
        for bad in [
            "http://s3cr3t.example",
            "s3cr3t.example:8080",
            "s3cr3t.example/path",
            "*.s3cr3t.example",
            "s3cr3t..example",
            "-s3cr3t.example",
            "s3cr3t example",
            "",
            "1.2.3",
            "[s3cr3t]",
            "s3cr3t@example",
        ] {
            let e = err(&format!("[inbound]\nhosts = [\"ok.example\",\n  \"{bad}\"]\n"));
            assert!(e.starts_with("t.toml:3: inbound.hosts[1]: is not a host name or IP address"), "{bad:?}: {e}");
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        let e = err("[inbound]\nhosts = [\"a.example\", \"*\"]\n");
        assert!(e.starts_with("t.toml:2: inbound.hosts[1]: \"*\" serves any Host and must be the only entry"), "{e}");
        for bad in [
            "web.s3cr3t.co",
            "https://web.s3cr3t.co/path",
            "https://web.s3cr3t.co?x=1",
            "https://web.s3cr3t.co/#x",
            "https://user:pw@web.s3cr3t.co",
            "ftp://web.s3cr3t.co",
            "https://*.s3cr3t.co",
            "null",
            "*",
            "file:///s3cr3t",
        ] {
            let e = err(&format!("[inbound]\nallow_origins = [\"{bad}\"]\n"));
            assert!(e.starts_with("t.toml:2: inbound.allow_origins[0]: is not a browser origin"), "{bad:?}: {e}");
            assert!(!e.contains(bad), "{e}");
        }
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
