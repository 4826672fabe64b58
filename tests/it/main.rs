//! Integration tests: real sockets on loopback, the mock GoTo server from the crate,
//! in-process proxies and the real binary. One test binary, so one link.

mod cli;
mod data_path;
mod errors;
mod faults;
mod hostile;
mod hostile_token;
mod idle;
mod login;
mod props;
mod redis;
mod safety;
mod state_files;
mod support;
mod tokens;
