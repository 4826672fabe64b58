//! goto-auth-proxy: a loopback sidecar that forwards plain HTTP requests to the GoTo
//! APIs and adds `Authorization: Bearer <token>`, with a background refresher keeping
//! the token fresh. The modules (all private to the crate; the public face is at the
//! end of this file), top-down:
//!
//! * `cli` — the command line: `run`, `demo`, `check`, `login`, `token`.
//! * `config` — TOML → validated `config::Config`; errors name file, line and key.
//! * `app` — wiring: store, credentials, refreshers, listeners, reloads, orderly stop.
//! * `watch` — the config file and the files it names, watched: a change reloads
//!   without a signal (Kubernetes' `..data` swaps and editors' renames included).
//! * `proxy` — the data path: route, inject, forward, retry once on a rejected token.
//! * `upstream` — upstream connections: per client connection, idle lists, HTTP/2,
//!   through an outbound proxy's `CONNECT` tunnel when one applies.
//! * `outbound` — what every outbound connection shares: the TLS roots and client
//!   certificate of `[tls]`, and which destinations go through an outbound proxy.
//! * `route` — pure routing decisions: path normalisation, longest prefix, keys.
//! * `inbound` — who may use the proxy: loopback, CIDRs, keys, inbound TLS.
//! * `limit` — per-route rate limiting.
//! * `token` — per-credential tokens: grants, token endpoint, store (file or Redis,
//!   shared by replicas), refresher.
//! * `log` — logging to stderr; the writer escapes control characters in every line.
//! * `login` — authorization-code sign-in: authorize URL, PKCE, callback.
//! * `admin` — the status page, health, readiness, metrics, token metadata, sign-in endpoints.
//! * `notify` — `[[notify]]`: a webhook or command told when a credential needs a person.
//! * `metrics` — the Prometheus metrics, in a registry passed in.
//! * `error` — the proxy's own error answers (stable codes).
//! * `server` — the shared hyper accept loop with graceful drain.
//! * `demo` — `goto-auth-proxy demo`: the mock GoTo (the `goto-mock` crate, which the
//!   tests and benches run too) plus a proxy, zero set-up.
//! * `secret` — the redacting `Secret` type.
//! * `random` — unguessable values: OAuth `state`, PKCE, lock fencing tokens.
//! * `response` — the one builder of the small answers the proxy makes itself.

mod admin;
mod app;
mod cli;
mod config;
mod demo;
mod error;
mod inbound;
mod limit;
mod log;
mod login;
mod metrics;
mod notify;
mod outbound;
mod proxy;
mod random;
mod response;
mod route;
mod secret;
mod server;
mod token;
mod upstream;
mod watch;

// ===== the library's public face =====
// Every module above is private to the crate, so rustc's dead-code lint sees all of it.
// Public: the command line `main.rs` runs, and a proxy started in-process.

pub use app::{start, ReloadTrigger, Running};
pub use cli::main;
pub use config::Config;

/// The parts this workspace's integration tests, benches and soak tools drive directly:
/// stores and sealing (to read what the proxy wrote), routing and the accept loop (for
/// benches of the hot path), the demo. Not a supported API: they change with the code.
#[doc(hidden)]
pub mod testing {
    pub use crate::app::{credentials, open_store};
    pub use crate::config::{echo_checked_keys, is_quoted_name, ConfigError, RedisTarget, TlsFiles};
    pub use crate::demo::{people, start as start_demo, Demo};
    pub use crate::inbound::tls_acceptor;
    pub use crate::metrics::Metrics;
    pub use crate::proxy::{strip_hop_by_hop, PAUSE_POLL};
    pub use crate::route::{normalize_path, substitute_keys, substitute_query_keys, KeyName, Router};
    pub use crate::secret::Secret;
    pub use crate::server::{ConnInfo, Serve};
    pub use crate::token::redis_store::RedisStore;
    pub use crate::token::seal::{generate_key, Sealer};
    pub use crate::token::source::TokenResponse;
    pub use crate::token::store::{account_key, FileStore, Saved, StoredToken, TokenStore};
    pub use crate::token::{later, valid_key, Credential, Token, MAX_LIFETIME};
}

/// Header a client sends its inbound key in; never forwarded upstream. A `HeaderName`
/// (not a `&str`) so a lookup does not parse the name again for every request.
pub(crate) const INBOUND_KEY_HEADER: http::HeaderName = http::HeaderName::from_static("x-goto-auth-proxy-key");
