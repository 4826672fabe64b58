//! `soak_tool`: the helpers of `benches/soak.sh` (a mock GoTo, the steady load, upstream
//! probes, the refresh-token check, the report); see `src/soak/mod.rs`.
//!
//! ```text
//! cargo build --release -p goto-bench-tools --bin soak_tool && target/release/soak_tool --help
//! ```

// Test and bench code may unwrap, expect and print (the house lints in Cargo.toml are
// for the product).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs, unreachable_pub)]

mod soak;

fn main() -> std::process::ExitCode {
    soak::main(std::env::args().skip(1).collect())
}
