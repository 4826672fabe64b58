//! `bench_mock_goto`: the mock token endpoint `benches/load.sh` points the refreshing
//! credential at (2-second tokens, so the proxy under load renews about once a second).
//!
//! ```text
//! cargo run --release -p goto-bench-tools --bin bench_mock_goto -- [--listen 127.0.0.1:0] [--token-lifetime-ms 2000]
//! ```

// Test and bench code may unwrap, expect and print (the house lints in Cargo.toml are
// for the product).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs, unreachable_pub)]

mod mock_server;

fn main() -> std::process::ExitCode {
    mock_server::main(std::env::args().skip(1))
}
