//! Integration tests: real sockets on loopback, the mock GoTo server from the crate,
//! in-process proxies and the real binary. One test binary, so one link.

// Test and bench code may unwrap, expect and print (the house lints in Cargo.toml are
// for the product).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_methods,
    missing_docs,
    unreachable_pub
)]

mod access_log;
mod accounts;
mod cli;
mod corporate;
mod data_path;
mod encryption;
mod errors;
mod faults;
mod goto;
mod hostile;
mod hostile_config;
mod hostile_keys;
mod hostile_logs;
mod hostile_store;
mod hostile_token;
mod hostile_upstream;
mod idle;
mod login;
mod mock_users;
mod notify;
mod oidc;
mod props;
mod redis;
mod redis_ha;
mod safety;
mod state_files;
mod status_page;
mod support;
mod tokens;
mod upstream_conn;
mod watch;
