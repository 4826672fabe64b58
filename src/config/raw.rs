//! The file format, as serde reads it: every table refuses unknown keys, and the values
//! whose place an error must name are [`Spanned`]. Nothing here is checked beyond its
//! type; `validate` turns these into the types of [`super`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// What a secret may be, as an error message says it.
pub(super) const SECRET_FORMS: &str = "a string, { env = \"NAME\" } or { file = \"PATH\" }";

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) proxy: RawProxy,
    #[serde(default)]
    pub(super) state: RawState,
    #[serde(default)]
    pub(super) inbound: RawInbound,
    #[serde(default)]
    pub(super) tls: RawTls,
    #[serde(default)]
    pub(super) credentials: BTreeMap<String, Spanned<RawCredential>>,
    #[serde(default)]
    pub(super) routes: Vec<Spanned<RawRoute>>,
    /// `[[notify]]`: who is told when a credential needs a person.
    #[serde(default)]
    pub(super) notify: Vec<Spanned<RawNotify>>,
}

/// `[proxy]`, defaults filled in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    #[serde(default = "default_listen")]
    pub(super) listen: SocketAddr,
    #[serde(default = "default_admin_listen")]
    pub(super) admin_listen: SocketAddr,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub(super) connect_timeout: Duration,
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub(super) request_timeout: Duration,
    #[serde(default = "default_body_idle_timeout", with = "humantime_serde")]
    pub(super) body_idle_timeout: Duration,
    #[serde(default = "default_max_request_body")]
    pub(super) max_request_body: bytesize::ByteSize,
    #[serde(default = "default_token_wait", with = "humantime_serde")]
    pub(super) token_wait: Duration,
    #[serde(default)]
    pub(super) workers: Option<usize>,
    #[serde(default = "default_max_concurrent_requests")]
    pub(super) max_concurrent_requests: usize,
    /// `proxy.outbound_proxy`: a secret, since the URL may hold a user and password.
    #[serde(default)]
    pub(super) outbound_proxy: Option<Spanned<RawSecret>>,
    #[serde(default = "default_access_log")]
    pub(super) access_log: bool,
    /// `proxy.watch_files`: apply changes to the config and the files it names without
    /// a signal (default on).
    #[serde(default = "default_watch_files")]
    pub(super) watch_files: bool,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            body_idle_timeout: default_body_idle_timeout(),
            max_request_body: default_max_request_body(),
            token_wait: default_token_wait(),
            workers: None,
            max_concurrent_requests: default_max_concurrent_requests(),
            outbound_proxy: None,
            access_log: default_access_log(),
            watch_files: default_watch_files(),
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
fn default_body_idle_timeout() -> Duration {
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
fn default_access_log() -> bool {
    true
}

fn default_watch_files() -> bool {
    true
}

/// `[inbound]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInbound {
    #[serde(default)]
    pub(super) allow_remote: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) keys: Vec<Spanned<RawInboundKey>>,
    #[serde(default)]
    pub(super) allow_cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) tls_cert: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) tls_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) allow_origins: Vec<Spanned<String>>,
}

/// `[tls]`: outbound TLS (upstreams, token and keys endpoints, `rediss://`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default)]
    pub(super) ca_file: Option<Spanned<PathList>>,
    #[serde(default)]
    pub(super) system_roots: Option<bool>,
    #[serde(default)]
    pub(super) client_cert: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) client_key: Option<Spanned<RawSecret>>,
}

/// One path or a list of paths (`tls.ca_file`).
#[derive(Debug)]
pub(super) struct PathList(pub(super) Vec<PathBuf>);

impl<'de> Deserialize<'de> for PathList {
    /// By hand rather than `#[serde(untagged)]`, for the same reason as [`RawSecret`]:
    /// an error then says what was expected.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, SeqAccess, Visitor};
        struct PathsVisitor;
        impl<'de> Visitor<'de> for PathsVisitor {
            type Value = PathList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a file path or a list of file paths")
            }

            fn visit_str<E: Error>(self, v: &str) -> Result<PathList, E> {
                Ok(PathList(vec![PathBuf::from(v)]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PathList, A::Error> {
                let mut out = Vec::new();
                while let Some(p) = seq.next_element::<PathBuf>()? {
                    out.push(p);
                }
                Ok(PathList(out))
            }
        }
        d.deserialize_any(PathsVisitor)
    }
}

/// `[state]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    #[serde(default)]
    pub(super) store: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) path: Option<PathBuf>,
    #[serde(default)]
    pub(super) redis_url: Option<Spanned<RawSecret>>,
    /// `state.redis_sentinels`: Sentinel URLs (secrets: they may carry a password).
    #[serde(default)]
    pub(super) redis_sentinels: Option<Spanned<Vec<Spanned<RawSecret>>>>,
    /// `state.redis_master`: the name the sentinels monitor the master under.
    #[serde(default)]
    pub(super) redis_master: Option<Spanned<String>>,
    /// `state.redis_cluster`: seed URLs of a Redis Cluster (secrets, as above).
    #[serde(default)]
    pub(super) redis_cluster: Option<Spanned<Vec<Spanned<RawSecret>>>>,
    #[serde(default)]
    pub(super) redis_prefix: Option<String>,
    /// `state.encryption_keys`: secrets, each base64 of 32 bytes; the first seals.
    #[serde(default)]
    pub(super) encryption_keys: Vec<Spanned<RawSecret>>,
}

/// A secret as written in the file: a literal, `{ env = "NAME" }` or `{ file = "PATH" }`.
#[derive(Debug)]
pub(super) enum RawSecret {
    Literal(String),
    Env { env: String },
    File { file: PathBuf },
}

/// One `inbound.keys` entry: a secret as for any secret, or a table
/// `{ key = <secret>, accounts = ["alice", …] }` that limits the key to those accounts.
#[derive(Debug)]
pub(super) struct RawInboundKey {
    pub(super) key: RawSecret,
    pub(super) accounts: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for RawInboundKey {
    /// By hand, for the reason [`RawSecret`]'s is: errors keep pointing at the entry.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = RawInboundKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{SECRET_FORMS}, or {{ key = <one of those>, accounts = [\"NAME\", …] }}")
            }

            fn visit_str<E: Error>(self, v: &str) -> Result<RawInboundKey, E> {
                Ok(RawInboundKey { key: RawSecret::Literal(v.to_string()), accounts: None })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawInboundKey, A::Error> {
                let (mut key, mut accounts, mut plain) = (None, None, None);
                while let Some(field) = map.next_key::<String>()? {
                    match field.as_str() {
                        "env" if plain.is_none() => plain = Some(RawSecret::Env { env: map.next_value()? }),
                        "file" if plain.is_none() => plain = Some(RawSecret::File { file: map.next_value()? }),
                        "key" => key = Some(map.next_value::<RawSecret>()?),
                        "accounts" => accounts = Some(map.next_value::<Vec<String>>()?),
                        _ => return Err(A::Error::unknown_field(&field, &["env", "file", "key", "accounts"])),
                    }
                }
                match (key, plain) {
                    (Some(key), None) => Ok(RawInboundKey { key, accounts }),
                    (None, Some(key)) if accounts.is_none() => Ok(RawInboundKey { key, accounts }),
                    _ => Err(A::Error::custom(format!(
                        "expected {SECRET_FORMS}, or {{ key = <one of those>, accounts = [\"NAME\", …] }}"
                    ))),
                }
            }
        }
        d.deserialize_any(KeyVisitor)
    }
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

/// One `[credentials.NAME]` table; which keys its grant takes is checked later.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    pub(super) grant: Spanned<String>,
    pub(super) client_id: Option<Spanned<RawSecret>>,
    pub(super) client_secret: Option<Spanned<RawSecret>>,
    pub(super) redirect_uri: Option<Spanned<String>>,
    pub(super) refresh_token: Option<Spanned<RawSecret>>,
    pub(super) username: Option<Spanned<RawSecret>>,
    pub(super) password: Option<Spanned<RawSecret>>,
    pub(super) pat: Option<Spanned<RawSecret>>,
    pub(super) token: Option<Spanned<RawSecret>>,
    pub(super) token_url: Option<Spanned<String>>,
    pub(super) authorize_url: Option<Spanned<String>>,
    pub(super) keys_url: Option<Spanned<String>>,
    pub(super) scope: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(super) refresh_before: Option<Duration>,
    pub(super) client_auth: Option<Spanned<String>>,
    pub(super) authorize_params: Option<Spanned<BTreeMap<String, String>>>,
    pub(super) accounts: Option<Spanned<bool>>,
    pub(super) default_account: Option<Spanned<String>>,
    pub(super) token_rate: Option<Spanned<f64>>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) prefix: Spanned<String>,
    pub(super) upstream: Spanned<String>,
    pub(super) credential: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) strip_prefix: bool,
    pub(super) methods: Option<Spanned<Vec<String>>>,
    pub(super) rate_limit: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) retry_429: bool,
}

/// One `[[notify]]` entry: a `webhook` or a `command`, which events, and when failing
/// renewals are worth a page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) webhook: Option<Spanned<RawSecret>>,
    pub(super) command: Option<Spanned<Vec<String>>>,
    pub(super) events: Option<Spanned<Vec<String>>>,
    pub(super) after_failures: Option<Spanned<u32>>,
}
