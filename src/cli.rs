//! The command line (clap): `run` (default), `demo`, `check`, `login`, `token`, `keygen`.
//! Exit codes: 0 success, 1 runtime failure, 64 bad config or usage (clap's usage errors
//! included), 69 could not start (a port in use, a listen address that is not loopback).

// The commands' results (`check`'s report, `token`'s token, `login`'s URL, `demo`'s
// banner, `keygen`'s key) are their standard output; logs go to stderr through tracing.
#![allow(clippy::print_stdout)]

mod check;
mod serve;
mod sign_in;
mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use check::check;
use serve::{demo, run};
use sign_in::login;
use tokens::{accounts, token};

/// Exit code for a bad config or bad usage (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;
/// Exit code when the proxy could not start, e.g. a busy port (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser, Debug)]
#[command(
    name = "goto-auth-proxy",
    version,
    about = "Loopback sidecar that adds a fresh GoTo OAuth token to every plain HTTP request",
    after_help = "Examples:\n  goto-auth-proxy demo                      # try it: mock GoTo API, no credentials\n  goto-auth-proxy check --config my.toml     # validate a config\n  goto-auth-proxy run --config my.toml       # serve\n  goto-auth-proxy login --credential goto    # sign in once in a browser\n  goto-auth-proxy token --credential goto    # print the current access token\n  goto-auth-proxy keygen                     # a new key for state.encryption_keys"
)]
struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve (the default): forward requests to GoTo with the token injected.
    #[command(
        after_help = "Example:\n  goto-auth-proxy run --config config/goto-auth-proxy.toml --listen 127.0.0.1:8080"
    )]
    Run(RunArgs),
    /// Serve with no set-up: a built-in mock GoTo API, a credential for it, and curl lines to paste.
    #[command(after_help = "Example:\n  goto-auth-proxy demo\n  curl -s http://127.0.0.1:8080/admin/rest/v1/me")]
    Demo(ListenArgs),
    /// Validate the config and print the resolved routes and credentials (secrets redacted).
    #[command(after_help = "Example:\n  goto-auth-proxy check --config config/goto-auth-proxy.toml")]
    Check(ConfigArg),
    /// Sign in once (authorization code): prints the URL, accepts the callback or a pasted URL/code.
    #[command(after_help = "Example:\n  goto-auth-proxy login --config config/goto-auth-proxy.toml --credential goto")]
    Login(CredentialArgs),
    /// Print the current access token of a credential from the state store.
    #[command(
        after_help = "Example:\n  curl -H \"Authorization: Bearer $(goto-auth-proxy token --credential goto)\" https://api.getgo.com/admin/rest/v1/me"
    )]
    Token(CredentialArgs),
    /// List the accounts of an account credential from the state store: name, principal, keys, state, expiry.
    #[command(
        after_help = "Example:\n  goto-auth-proxy accounts --config config/goto-auth-proxy.toml --credential goto"
    )]
    Accounts(AccountsArgs),
    /// Print a new random state encryption key (base64 of 32 bytes) for state.encryption_keys.
    #[command(
        long_about = "Print a new random state encryption key: standard base64 of 32 bytes from the OS random \
number generator, one line on stdout, nothing else.\n\n\
Token records in the state file or in Redis are encrypted (AES-256-GCM) with the first key of \
[state] encryption_keys; every key listed decrypts. Keep the key in a secret store, separately \
from the state and its backups, and give it as a secret: { env = \"NAME\" } or { file = \"PATH\" }. \
To rotate, put the new key first and keep the old one until every record was written again.",
        after_help = "Example:\n  (umask 077; goto-auth-proxy keygen > /etc/goto-auth-proxy/state.key)\n\n  [state]\n  encryption_keys = [{ file = \"/etc/goto-auth-proxy/state.key\" }]"
    )]
    Keygen,
}

#[derive(Args, Debug, Clone)]
struct ConfigArg {
    /// Config file [default: $GOTO_AUTH_PROXY_CONFIG, else config/goto-auth-proxy.toml]
    #[arg(long, env = "GOTO_AUTH_PROXY_CONFIG", default_value = DEFAULT_CONFIG_PATH, hide_default_value = true, hide_env = true)]
    config: PathBuf,
}

#[derive(Args, Debug, Clone, Default)]
struct ListenArgs {
    /// Data-path listen address (overrides proxy.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin listen address (overrides proxy.admin_listen).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    listen: ListenArgs,
}

#[derive(Args, Debug, Clone)]
struct CredentialArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Credential name (may be omitted when only one fits).
    #[arg(long)]
    credential: Option<String>,
    /// Account of an account credential (`accounts = true`): sign in, or read, this one.
    #[arg(long)]
    account: Option<String>,
}

#[derive(Args, Debug, Clone)]
struct AccountsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Account credential (may be omitted when only one has `accounts = true`).
    #[arg(long)]
    credential: Option<String>,
    /// One JSON object per account instead of a table.
    #[arg(long)]
    json: bool,
}

/// Entry point: parse, log, dispatch; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    // Held until `main` returns: dropping it flushes the log lines still queued.
    let _log_writer = crate::log::init(match cli.log_format {
        LogFormat::Text => crate::log::Format::Text,
        LogFormat::Json => crate::log::Format::Json,
    });
    let command = cli.command.unwrap_or_else(|| {
        let config =
            std::env::var_os("GOTO_AUTH_PROXY_CONFIG").map(PathBuf::from).unwrap_or_else(|| DEFAULT_CONFIG_PATH.into());
        Command::Run(RunArgs { config: ConfigArg { config }, listen: ListenArgs::default() })
    });
    match command {
        Command::Check(a) => check(&a),
        Command::Run(a) => run(&a),
        Command::Demo(a) => demo(&a),
        Command::Login(a) => with_config(&a.config, |c| {
            block_on(c.proxy.workers, login(c, a.credential.as_deref(), a.account.as_deref()))
        }),
        Command::Token(a) => {
            with_config(&a.config, |c| block_on(Some(1), token(c, a.credential.as_deref(), a.account.as_deref())))
        }
        Command::Accounts(a) => {
            with_config(&a.config, |c| block_on(Some(1), accounts(c, a.credential.as_deref(), a.json)))
        }
        Command::Keygen => keygen(),
    }
}

/// What clap had to say instead of a command: its message as clap prints it (help and
/// version on stdout, exit 0); a usage error exits 64 (EX_USAGE), not clap's 2.
fn clap_exit(e: &clap::Error) -> ExitCode {
    if let Err(io) = e.print() {
        eprintln!("error: cannot print the command line's error: {io}");
    }
    if e.use_stderr() {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::SUCCESS
    }
}

fn load(arg: &ConfigArg) -> Result<Config, ExitCode> {
    Config::load(&arg.config).map_err(|e| {
        eprintln!("error: {e}");
        let default = arg.config == std::path::Path::new(DEFAULT_CONFIG_PATH);
        if default && matches!(&e, crate::config::ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound) {
            eprintln!(
                "hint: {DEFAULT_CONFIG_PATH} is the default config file, relative to the current directory; name yours with --config FILE (or GOTO_AUTH_PROXY_CONFIG), see --help, or try `goto-auth-proxy demo`, which needs none"
            );
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

fn with_config(arg: &ConfigArg, f: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    match load(arg) {
        Ok(c) => f(c),
        Err(code) => code,
    }
}

/// `keygen`: a new state encryption key on stdout, nothing else.
fn keygen() -> ExitCode {
    println!("{}", crate::token::seal::generate_key());
    ExitCode::SUCCESS
}

fn block_on(workers: Option<usize>, fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = workers {
        b.worker_threads(w);
    }
    let rt = match b.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(fut);
    // Work is done; do not wait for a blocking stdin read (`login`) to end.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // A wrong or missing state.encryption_keys, or unusable outbound settings
            // (an HTTPS_PROXY that is no proxy URL), is a configuration error.
            if let Some(
                crate::app::StartError::Keys(_)
                | crate::app::StartError::BadKey(_)
                | crate::app::StartError::Outbound(_),
            ) = e.downcast_ref::<crate::app::StartError>()
            {
                return ExitCode::from(EXIT_CONFIG);
            }
            let unavailable = e.downcast_ref::<crate::app::StartError>().is_some()
                || e.downcast_ref::<crate::demo::DemoError>().is_some();
            ExitCode::from(if unavailable { EXIT_UNAVAILABLE } else { 1 })
        }
    }
}
