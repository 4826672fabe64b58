//! goto-auth-proxy: a loopback sidecar that forwards plain HTTP requests to the GoTo
//! APIs and adds `Authorization: Bearer <token>`, with a background refresher keeping
//! the token fresh. The modules, top-down:
//!
//! * [`cli`] — the command line: `run`, `demo`, `check`, `login`, `token`.
//! * [`config`] — TOML → validated [`config::Config`]; errors name file, line and key.
//! * [`app`] — wiring: store, credentials, refreshers, listeners, reloads, orderly stop.
//! * [`watch`] — the config file and the files it names, watched: a change reloads
//!   without a signal (Kubernetes' `..data` swaps and editors' renames included).
//! * [`proxy`] — the data path: route, inject, forward, retry once on a rejected token.
//! * [`upstream`] — upstream connections: per client connection, idle lists, HTTP/2,
//!   through an outbound proxy's `CONNECT` tunnel when one applies.
//! * [`outbound`] — what every outbound connection shares: the TLS roots and client
//!   certificate of `[tls]`, and which destinations go through an outbound proxy.
//! * [`route`] — pure routing decisions: path normalisation, longest prefix, keys.
//! * [`inbound`] — who may use the proxy: loopback, CIDRs, keys, inbound TLS.
//! * [`limit`] — per-route rate limiting.
//! * [`token`] — per-credential tokens: grants, token endpoint, store (file or Redis,
//!   shared by replicas), refresher.
//! * [`log`] — logging to stderr; the writer escapes control characters in every line.
//! * [`login`] — authorization-code sign-in: authorize URL, PKCE, callback.
//! * [`admin`] — the status page, health, readiness, metrics, token metadata, sign-in endpoints.
//! * [`notify`] — `[[notify]]`: a webhook or command told when a credential needs a person.
//! * [`metrics`] — the Prometheus metrics, in a registry passed in.
//! * [`error`] — the proxy's own error answers (stable codes).
//! * [`server`] — the shared hyper accept loop with graceful drain.
//! * [`demo`] — `goto-auth-proxy demo`: the mock GoTo (the `goto-mock` crate, which the
//!   tests and benches run too) plus a proxy, zero set-up.
//! * [`secret`] — the redacting `Secret` type.
//! * [`random`] — unguessable values: OAuth `state`, PKCE, lock fencing tokens.
//! * [`response`] — the one builder of the small answers the proxy makes itself.

mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod inbound;
mod limit;
mod log;
mod login;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod proxy;
mod random;
mod response;
pub mod route;
pub mod secret;
pub mod server;
pub mod token;
mod upstream;
mod watch;

/// Header a client sends its inbound key in; never forwarded upstream. A `HeaderName`
/// (not a `&str`) so a lookup does not parse the name again for every request.
pub const INBOUND_KEY_HEADER: http::HeaderName = http::HeaderName::from_static("x-goto-auth-proxy-key");
