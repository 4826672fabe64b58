//! The crate's own mock GoTo server ([`goto_mock`]) as a process of its
//! own, issuing short-lived tokens: `benches/load.sh` points its refreshing credential at
//! it (`bench_mock_goto`), and `benches/soak.sh` runs two (`soak_tool mock`).
//!
//! ```text
//! bench_mock_goto [--listen 127.0.0.1:0] [--token-lifetime-ms 2000]
//! ```
//!
//! Prints one line, `http://127.0.0.1:PORT`, once it is listening, then serves until
//! SIGTERM or Ctrl-C. Its client id and secret are `MockOptions::default()`'s
//! (`demo-client-id` / `demo-client-secret`); its remote control (`/_mock/fault`,
//! `/_mock/token_calls`…) is described in `crates/goto-mock/src/control.rs`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use goto_mock::{MockGoto, MockOptions};

struct Args {
    listen: SocketAddr,
    token_lifetime: Duration,
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut args = Args { listen: SocketAddr::from(([127, 0, 0, 1], 0)), token_lifetime: Duration::from_secs(2) };
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => args.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--token-lifetime-ms" => {
                let ms: u64 = value()?.parse().map_err(|e| format!("--token-lifetime-ms: {e}"))?;
                args.token_lifetime = Duration::from_millis(ms);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !args.listen.ip().is_loopback() {
        return Err("--listen must be a loopback address".into());
    }
    Ok(args)
}

async fn serve(args: Args) -> std::io::Result<()> {
    let opts = MockOptions { token_lifetime: args.token_lifetime, ..MockOptions::default() };
    let mock = MockGoto::start_on(args.listen, opts).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", mock.url())?;
    out.flush()?;
    drop(out);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    let stats = mock.stats();
    eprintln!("bench_mock_goto: {} token calls served", stats.token_calls);
    Ok(())
}

/// Runs the mock with `argv` (the arguments after the program name) until SIGTERM.
pub fn main(argv: impl IntoIterator<Item = String>) -> ExitCode {
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_mock_goto: {e}");
            return ExitCode::from(64);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench_mock_goto: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_mock_goto: {e}");
            ExitCode::FAILURE
        }
    }
}
