//! The helpers `benches/soak.sh` runs, one binary with a subcommand each (the script is
//! the conductor: it starts Redis, the mocks and the proxies, and injects the faults on a
//! schedule; these do what a shell does badly):
//!
//! * `mock` — a mock GoTo ([`goto_mock`]) in its own process, with its
//!   remote control (`/_mock/fault`, `/_mock/token_calls`…); the same as `bench_mock_goto`.
//! * `load` — the steady client: a few keep-alive connections per replica, paced, every
//!   answer checked (status, body) and recorded with its start and end time ([`load`]).
//! * `probe` — upstream faults through the proxy: requests the mock answers with a body it
//!   breaks off mid-way, or slowly; each must be seen as exactly that ([`load`]).
//! * `hostile` — an upstream behind a relay for the network faults: the keep-alive race
//!   (a kept-alive connection closed as a request arrives) and a black hole (every
//!   relayed connection silently stops forwarding) ([`hostile`]).
//! * `check-refresh` — reads what the proxies stored (state file or Redis, through the
//!   crate's own stores) and asks the mock whether the newest refresh token of each chain
//!   is among it ([`check`]).
//! * `report` — classifies every failure by the fault windows the script logged, and
//!   writes the table; exits 1 when a check fails ([`report`]).
//!
//! Built as the example `soak_tool`; `tests/soak.rs` carries the same code, so
//! `cargo test` runs the soak with helpers built from the tree it tests.

use std::process::ExitCode;

use clap::Parser;

mod check;
mod hostile;
mod load;
#[path = "../mock_server.rs"]
mod mock_server;
mod read;
#[path = "../relay.rs"]
mod relay;
mod report;

#[derive(Parser, Debug)]
#[command(name = "soak_tool", about = "Helpers of benches/soak.sh")]
enum Tool {
    /// A mock GoTo in its own process (arguments as `bench_mock_goto`'s).
    Mock {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Steady load on the replicas until SIGTERM; one TSV line per answer.
    Load(load::LoadArgs),
    /// Upstream-fault probes through the replicas for a while; one TSV line per answer.
    Probe(load::ProbeArgs),
    /// An upstream behind a relay for the keep-alive race and the black hole; until SIGTERM.
    Hostile(hostile::HostileArgs),
    /// Whether the newest refresh tokens the mock issued are in a store.
    CheckRefresh(check::CheckArgs),
    /// The soak's table, from the files the script wrote; exit 1 when a check fails.
    Report(report::ReportArgs),
}

/// Runs the subcommand in `argv` (the arguments after the program name).
pub fn main(argv: Vec<String>) -> ExitCode {
    let tool = match Tool::try_parse_from(std::iter::once("soak_tool".to_string()).chain(argv)) {
        Ok(t) => t,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(64);
        }
    };
    match tool {
        Tool::Mock { args } => mock_server::main(args),
        Tool::Load(a) => on_runtime(load::load(a)),
        Tool::Probe(a) => on_runtime(load::probe(a)),
        Tool::Hostile(a) => on_runtime(hostile::hostile(a)),
        Tool::CheckRefresh(a) => on_runtime(check::check(a)),
        Tool::Report(a) => report::report(&a),
    }
}

/// Runs `job` on a current-thread runtime: an error is printed and exits 1.
fn on_runtime(job: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak_tool: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak_tool: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Unix milliseconds now: every file the soak writes uses them, as does `date +%s%3N`.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
