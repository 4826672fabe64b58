//! The chaos soak as part of `cargo test`: `SOAK_SECONDS=60 bash benches/soak.sh`, one
//! round of every fault (token endpoint down, 500s, 429s, upstream resets and slow
//! answers, an upstream closing kept-alive connections as requests arrive, a network
//! black-holing the upstream connections, a revocation of every token, a SIGHUP with a
//! changed route, the client secret rotated in its file with no signal, Redis restarted,
//! a Redis Sentinel failover, `kill -9` of a replica), with the binary under test. It passes when the script's
//! verdict does (no failure the proxy could have avoided, no refresh token lost, flat
//! memory and fds…), and when nothing it wrote holds a token or a secret.
//!
//! No libtest harness: this binary is also the script's helper. Run with `soak-tool` as
//! its first argument it is `soak_tool` (`crates/bench-tools/src/soak/`), so the script's mock,
//! load and report are built from the same tree as the proxy, with no build of their own.
//! A missing `redis-server` (the script exits 77) skips it with a notice, except under
//! CI (`CI` set), where `scripts/install-test-deps.sh` installs it.

// Test and bench code may unwrap, expect and print (the house lints in Cargo.toml are
// for the product).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::process::Command;

#[path = "../crates/bench-tools/src/soak/mod.rs"]
mod soak;

/// The first argument that makes this binary the script's helper.
const TOOL_ROLE: &str = "soak-tool";
/// This test's name, for `cargo test NAME` filters.
const NAME: &str = "soak_sixty_seconds_of_every_fault";
/// The run takes about 70 s; past this it has hung.
const TIMEOUT: Duration = Duration::from_secs(240);
/// What must never appear in what the soak wrote: the mock's access and refresh tokens
/// (`mock-at-…`, `mock-rt-…`), the Direct Login password and the OAuth client secret, the
/// first and each rotated one.
const SECRETS: &[&str] = &["mock-at-", "mock-rt-", "demo-password", "demo-client-secret", "soak-client-secret-"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(TOOL_ROLE) {
        return soak::main(args[1..].to_vec());
    }
    if args.iter().any(|a| a == "--list") {
        println!("{NAME}: test");
        return ExitCode::SUCCESS;
    }
    if filtered_out(&args) {
        println!("running 0 tests ({NAME} filtered out)");
        return ExitCode::SUCCESS;
    }
    println!("running 1 test\ntest {NAME} ...");
    run_soak();
    println!("test {NAME} ... ok");
    ExitCode::SUCCESS
}

/// libtest's filters, as far as they matter here: names (substrings) and `--skip NAME`.
fn filtered_out(args: &[String]) -> bool {
    let mut filters = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--skip" => {
                if it.next().is_some_and(|s| NAME.contains(s.as_str())) {
                    return true;
                }
            }
            s if s.starts_with('-') => {}
            s => filters.push(s),
        }
    }
    !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn run_soak() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("tempdir");
    let me = std::env::current_exe().expect("this test's binary");
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let status = rt.block_on(async {
        let mut child = Command::new("bash")
            .arg("benches/soak.sh")
            .current_dir(&repo)
            .env("SOAK_SECONDS", "60")
            .env("SOAK_BIN", env!("CARGO_BIN_EXE_goto-auth-proxy"))
            .env("SOAK_TOOL", &me)
            .env("SOAK_TOOL_ARG", TOOL_ROLE)
            .env("BENCH_OUT", out.path())
            .spawn()
            .expect("run bash benches/soak.sh");
        match tokio::time::timeout(TIMEOUT, child.wait()).await {
            Ok(status) => Some(status.expect("wait for soak.sh")),
            Err(_) => {
                // SIGTERM: the script's trap stops everything it started.
                if let Some(pid) = child.id() {
                    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
                let _ = child.kill().await;
                None
            }
        }
    });
    let Some(status) = status else {
        let kept = out.keep();
        panic!("benches/soak.sh still running after {TIMEOUT:?}; its files: {}", kept.display());
    };
    match status.code() {
        Some(0) => {}
        Some(77) if !in_ci() => {
            println!("NOTICE: {NAME} skipped: benches/soak.sh lacks a tool (apt-get install redis-server)");
            return;
        }
        _ => {
            let kept = out.keep();
            panic!("benches/soak.sh failed ({status}); its report and logs: {}", kept.display());
        }
    }
    println!("{NAME}: the soak took {:.0} s", started.elapsed().as_secs_f64());
    audit(out.path());
}

/// Everything the soak wrote but the stores, the configs and the client secret's file
/// (which hold them by design) is free of tokens and secrets.
fn audit(dir: &Path) {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                // redis/ holds Redis' dump, c/ the file store: the stores themselves;
                // secrets/ the client secret file the replicas read.
                if name != "redis" && name != "c" && name != "secrets" {
                    todo.push(p);
                }
            } else if !name.ends_with(".toml") {
                files.push(p);
            }
        }
    }
    assert!(files.iter().any(|f| f.ends_with("soak.md")), "no soak.md in {}", dir.display());
    assert!(files.len() >= 8, "too few files to audit: {files:?}");
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).expect("read")).into_owned();
        for s in SECRETS {
            assert!(!text.contains(s), "{} contains {s:?}", f.display());
        }
    }
}
