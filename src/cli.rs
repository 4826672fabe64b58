//! The command line (clap): `run` (default), `demo`, `check`, `login`, `token`, `keygen`.
//! Exit codes: 0 success, 1 runtime failure, 64 bad config or usage, 69 could not start.

// The commands' results (`check`'s report, `token`'s token, `login`'s URL, `demo`'s
// banner, `keygen`'s key) are their standard output; logs go to stderr through tracing.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, GrantKind, StateSettings, DEFAULT_CONFIG_PATH};
use crate::login::{parse_pasted, LoginFlows};
use crate::metrics::Metrics;
use crate::token::accounts::{AccountSet, Unobserved};
use crate::token::{Credential, Token};

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
    let cli = Cli::parse();
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

fn check(arg: &ConfigArg) -> ExitCode {
    match load(arg) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            print!("{c}");
            // The outbound settings as `run` builds them: roots counted per source, the
            // proxy from the config or this environment (credentials as `***`).
            match crate::outbound::Outbound::from_config(&c) {
                Ok(outbound) => print!("{outbound}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            print_state_records(&c);
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `check`'s view of the stored records: which key id seals each credential's record
/// (never a key, never a token). The file store only: a Redis store is read by `run`, and
/// `/tokens` shows each credential's `state_key_id` there.
fn print_state_records(c: &Config) {
    let StateSettings::File { path } = &c.state else {
        println!("state records: in Redis (GET /tokens shows the key id of each credential's record)");
        return;
    };
    let Ok(bytes) = std::fs::read(path) else { return };
    let Some(records) = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("credentials").and_then(|r| r.as_object()).cloned())
    else {
        println!(
            "state records: {} cannot be read whole (`run` keeps what it can and reports the rest)",
            path.display()
        );
        return;
    };
    let kids = c.state_key_ids();
    println!("state records ({}):", path.display());
    for (name, record) in &records {
        match crate::token::seal::kid_of(record) {
            Some(kid) if kids.iter().any(|k| k == kid) => println!("  {name}: sealed with key {kid}"),
            Some(kid) => println!("  {name}: sealed with key {kid}, which no configured key is"),
            None => println!("  {name}: plaintext (sealed at the next start when keys are configured)"),
        }
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
            if let Some(crate::app::StartError::Keys(_) | crate::app::StartError::Outbound(_)) =
                e.downcast_ref::<crate::app::StartError>()
            {
                return ExitCode::from(EXIT_CONFIG);
            }
            let unavailable = e.downcast_ref::<crate::app::StartError>().is_some()
                || e.downcast_ref::<crate::demo::DemoError>().is_some();
            ExitCode::from(if unavailable { EXIT_UNAVAILABLE } else { 1 })
        }
    }
}

fn run(a: &RunArgs) -> ExitCode {
    with_config(&a.config, |mut config| {
        // Where reloads read the file again, with the same flags over it.
        let source = crate::app::Source {
            path: a.config.config.clone(),
            listen: a.listen.listen,
            admin_listen: a.listen.admin_listen,
        };
        source.override_listen(&mut config);
        // The data path runs on its own threads (`workers`); this runtime only renews
        // tokens and answers the admin listener.
        block_on(Some(1), async move {
            for w in &config.warnings {
                tracing::warn!("{w}");
            }
            let running = crate::app::start_from(config, Some(source)).await?;
            wait_for_stop(running.shutdown_token(), Some(&running.core)).await;
            tracing::info!("stopping: draining in-flight requests");
            running.wait().await;
            tracing::info!("stopped");
            Ok(())
        })
    })
}

fn demo(a: &ListenArgs) -> ExitCode {
    let listen = a.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let admin = a.admin_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901)));
    block_on(None, async move {
        let dir = tempfile_dir()?;
        let demo = crate::demo::start(listen, admin, &dir).await?;
        println!("{}", demo.banner);
        wait_for_stop(demo.running.shutdown_token(), None).await;
        demo.running.wait().await;
        drop(demo.mock);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}

/// A private directory for the demo's state file.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("goto-auth-proxy-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Returns when SIGTERM or SIGINT arrives (cancelling `shutdown`), or when `shutdown`
/// is cancelled some other way; SIGHUP reloads `core`'s configuration file when given.
async fn wait_for_stop(shutdown: CancellationToken, reload: Option<&Arc<crate::app::Core>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        else {
            tracing::error!("cannot install signal handlers");
            shutdown.cancelled().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match reload {
                    Some(core) => {
                        // Logged and counted by the reload itself.
                        let _outcome = core.reload_from_source(crate::app::ReloadTrigger::Signal).await;
                    }
                    None => tracing::info!("SIGHUP ignored: nothing to reload"),
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = shutdown.cancelled() => return,
        }
    }
    shutdown.cancel();
}

/// Picks the credential: the one named, or the only one that fits.
fn pick(config: &Config, name: Option<&str>, fits: impl Fn(GrantKind) -> bool) -> anyhow::Result<String> {
    if let Some(n) = name {
        if !config.credentials.contains_key(n) {
            let known: Vec<&str> = config.credentials.keys().map(String::as_str).collect();
            bail!("no credential named {n:?} in {} (configured: {})", config.source, known.join(", "));
        }
        return Ok(n.to_string());
    }
    let candidates: Vec<&String> = config.credentials.iter().filter(|(_, c)| fits(c.grant)).map(|(n, _)| n).collect();
    match candidates.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("{} has no credential this command applies to", config.source),
        many => bail!(
            "several credentials fit; choose one with --credential ({})",
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

async fn runtime_credentials(config: &Config) -> anyhow::Result<BTreeMap<String, Arc<Credential>>> {
    let metrics = Metrics::new(prometheus::Registry::new())?;
    let store = crate::app::open_checked_store(config, &metrics).await?;
    Ok(crate::app::credentials(config, &store, &metrics)?)
}

/// The store for a one-shot command (its metrics are not exported anywhere).
async fn one_shot_store(config: &Config) -> anyhow::Result<Arc<dyn crate::token::store::TokenStore>> {
    let metrics = Metrics::new(prometheus::Registry::new())?;
    Ok(crate::app::open_checked_store(config, &metrics).await?)
}

async fn token(config: Config, name: Option<&str>, account: Option<&str>) -> anyhow::Result<()> {
    let name = pick(&config, name, |_| true)?;
    let is_accounts = config.credentials.get(&name).is_some_and(|c| c.accounts);
    let name = match (account, is_accounts) {
        (Some(a), true) => format!("{name}/{a}"),
        (None, true) => bail!("credential {name:?} holds many accounts: choose one with --account NAME (`goto-auth-proxy accounts` lists them)"),
        (Some(_), false) => bail!("credential {name:?} holds one token: --account applies to credentials with accounts = true"),
        (None, false) => name,
    };
    let store = one_shot_store(&config).await?;
    let stored = store.load(&name).await?;
    let Some(stored) = stored else {
        bail!(
            "no token stored for credential {name:?} in {}: start the proxy (or run `login`) first",
            store.describe()
        );
    };
    let token = Token::from_stored(&name, &stored, std::time::SystemTime::now())?;
    if !token.is_valid_at(std::time::SystemTime::now()) {
        bail!("the stored token of {name:?} has expired: a running proxy renews it; is it running?");
    }
    println!("{}", token.access_token.expose());
    Ok(())
}

/// The account set of `cred` for a one-shot `login` (nothing renews in this process);
/// empty for a credential that holds one token.
async fn one_shot_accounts(
    config: &Config,
    cred: &Arc<Credential>,
) -> anyhow::Result<BTreeMap<String, Arc<AccountSet>>> {
    let mut sets = BTreeMap::new();
    if cred.config().accounts {
        let metrics = Metrics::new(prometheus::Registry::new())?;
        let store = crate::app::open_checked_store(config, &metrics).await?;
        let http = crate::outbound::Outbound::from_config(config)?.token_client(config.proxy.connect_timeout)?;
        let set = AccountSet::new(
            cred.config().clone(),
            http,
            store,
            metrics,
            Arc::new(Unobserved),
            None,
            CancellationToken::new(),
        );
        set.load().await;
        sets.insert(cred.name().to_string(), Arc::new(set));
    }
    Ok(sets)
}

/// `accounts`: the accounts an account credential holds in the store.
async fn accounts(config: Config, name: Option<&str>, as_json: bool) -> anyhow::Result<()> {
    let name = pick_accounts(&config, name)?;
    let store = one_shot_store(&config).await?;
    let now = std::time::SystemTime::now();
    let names = store.accounts(&name).await?;
    if !as_json {
        println!("{:<24} {:<32} {:<14} {:<14} {:<8} expires", "NAME", "PRINCIPAL", "ORGANIZER", "ACCOUNT", "STATE");
    }
    for account in &names {
        let stored = store.load(&format!("{name}/{account}")).await?;
        let token = stored.as_ref().and_then(|s| Token::from_stored(&name, s, now).ok());
        let state = match &token {
            Some(t) if t.is_valid_at(now) => "valid",
            Some(_) => "expired",
            None => "no_token",
        };
        let expires = token.as_ref().map(|t| humantime::format_rfc3339_seconds(t.expires_at).to_string());
        let field = |f: Option<&String>| f.cloned().unwrap_or_else(|| "-".into());
        let (principal, organizer, account_key) = match &token {
            Some(t) => (t.principal.as_ref(), t.organizer_key.as_ref(), t.account_key.as_ref()),
            None => (None, None, None),
        };
        if as_json {
            let line = serde_json::json!({
                "name": account, "principal": principal, "organizer_key": organizer,
                "account_key": account_key, "state": state, "expires_at": expires,
            });
            println!("{line}");
        } else {
            println!(
                "{:<24} {:<32} {:<14} {:<14} {:<8} {}",
                account,
                field(principal),
                field(organizer),
                field(account_key),
                state,
                expires.unwrap_or_else(|| "-".into())
            );
        }
    }
    if !as_json {
        eprintln!("{} account(s) of credential {name:?} in {}", names.len(), store.describe());
    }
    Ok(())
}

/// The account credential a command is about: `--credential`, or the only one.
fn pick_accounts(config: &Config, name: Option<&str>) -> anyhow::Result<String> {
    let with: Vec<&String> = config.credentials.iter().filter(|(_, c)| c.accounts).map(|(n, _)| n).collect();
    match name {
        Some(n) if with.iter().any(|w| *w == n) => Ok(n.to_string()),
        Some(n) => bail!(
            "credential {n:?} is not an account credential (accounts = true): {}",
            if with.is_empty() {
                "none is configured".to_string()
            } else {
                format!("those are {}", with.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(", "))
            }
        ),
        None => match with.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!("no credential has accounts = true"),
            many => bail!(
                "several account credentials; choose one with --credential ({})",
                many.iter().map(|w| w.as_str()).collect::<Vec<_>>().join(", ")
            ),
        },
    }
}

async fn login(config: Config, name: Option<&str>, account: Option<&str>) -> anyhow::Result<()> {
    let name = pick(&config, name, |g| g == GrantKind::AuthorizationCode)?;
    let credentials = runtime_credentials(&config).await?;
    let cred = credentials.get(&name).cloned().context("credential vanished")?;
    let sets = one_shot_accounts(&config, &cred).await?;
    let admin = config.proxy.admin_listen;
    let flows = Arc::new(LoginFlows::new(format!("http://{admin}/callback")));
    let started = flows.begin(&cred, account)?;
    let redirect = cred.config().redirect_uri.clone().unwrap_or_else(|| format!("http://{admin}/callback"));

    // The callback, when the redirect URI points at a loopback port we can take.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let stop = CancellationToken::new();
    let (callback_server, proxy_running) =
        callback_listener(&redirect, flows.clone(), credentials.clone(), sets.clone(), done_tx, stop.clone()).await;

    // The URL goes out only once the callback listener is up, so a fast browser finds it.
    println!("{}", started.url);
    eprintln!("Open the URL above in a browser and sign in.");
    eprintln!(
        "Then either let the browser return to {}, or paste here the address the browser",
        crate::config::display_url_str(&redirect)
    );
    eprintln!("ended on (a 404 page is fine: the code is in the address bar), or just the code.");

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut progress = tokio::time::interval(Duration::from_secs(30));
    progress.tick().await;
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            // `None`: no callback listener (its sender is gone); the paste is the only way.
            Some(()) = done_rx.recv() => break Ok(()),
            _ = progress.tick() => eprintln!("… still waiting for the sign-in (Ctrl-C to give up)"),
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => match parse_pasted(&line) {
                    Some((code, state)) => {
                        let state = state.unwrap_or_else(|| started.state.clone());
                        match flows.finish(&credentials, &sets, &code, &state).await {
                            Ok(_) => break Ok(()),
                            Err(e) => break Err(e.into()),
                        }
                    }
                    None => eprintln!("That holds no code; paste the whole address from the browser, or the code."),
                },
                Ok(None) | Err(_) => stdin_open = false,
            },
        }
    };
    // Let the browser's callback page finish sending before the process exits.
    stop.cancel();
    if let Some(server) = callback_server {
        let _drained = server.await;
    }
    outcome?;

    let refresh_path = match flows.last_account() {
        Some(account) => {
            println!(
                "Signed in: account {account:?} of credential {name:?} is stored in {}.",
                one_shot_store(&config).await?.describe()
            );
            format!("{}/{}", crate::config::refresh_path(&name), crate::config::name_to_path(&account))
        }
        None => {
            let info = cred.info();
            println!(
                "Signed in: credential {name:?} now holds a token (expires {}); stored in {}.",
                info.expires_at.unwrap_or_default(),
                one_shot_store(&config).await?.describe()
            );
            crate::config::refresh_path(&name)
        }
    };
    if proxy_running {
        let url = format!("http://{admin}{refresh_path}");
        // The admin listener is on loopback: never through an environment's proxy.
        let local = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
        match local.post(&url).timeout(Duration::from_secs(10)).send().await {
            Ok(r) if r.status().is_success() => println!("The running proxy at {admin} picked up the new token."),
            _ => println!("A running proxy picks the new token up at its next renewal (or: curl -X POST {url})."),
        }
    }
    Ok(())
}

/// Serves the sign-in's `/callback` on the redirect URI's loopback port while `login`
/// waits, telling `done` when a sign-in finished. `None` when the port cannot be taken;
/// the flag says it is in use (most likely by a running proxy, which is then told to pick
/// the new token up).
async fn callback_listener(
    redirect: &str,
    flows: Arc<LoginFlows>,
    credentials: BTreeMap<String, Arc<Credential>>,
    sets: BTreeMap<String, Arc<AccountSet>>,
    done: tokio::sync::mpsc::Sender<()>,
    stop: CancellationToken,
) -> (Option<tokio::task::JoinHandle<()>>, bool) {
    let Some(addr) = loopback_callback_addr(redirect) else { return (None, false) };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!("({addr} is in use, probably by a running proxy: paste the redirected address here.)");
            return (None, true);
        }
        Err(e) => {
            eprintln!("(cannot listen on {addr} for the callback: {e}; paste the redirected address here.)");
            return (None, false);
        }
    };
    let (credentials, sets) = (Arc::new(credentials), Arc::new(sets));
    let serve = crate::server::Serve::new(stop).drain(Duration::from_secs(2));
    let server = serve.run(listener, move |req: http::Request<hyper::body::Incoming>, _peer| {
        let (flows, creds, sets, done) = (flows.clone(), credentials.clone(), sets.clone(), done.clone());
        async move {
            let query = req.uri().query().unwrap_or("").to_string();
            let (status, page) = if req.uri().path() == "/callback" {
                flows.callback(&query, &creds, &sets).await
            } else {
                (http::StatusCode::NOT_FOUND, "not found\n".to_string())
            };
            if status.is_success() {
                let _ = done.try_send(());
            }
            let page =
                crate::response::with_body::<http_body_util::Full<bytes::Bytes>>(status, crate::response::HTML, page);
            crate::response::lock_down(page, crate::response::STATIC_PAGE_CSP)
        }
    });
    (Some(tokio::spawn(server)), false)
}

/// The loopback `host:port` of an `http://` redirect URI, if it is one.
fn loopback_callback_addr(redirect: &str) -> Option<SocketAddr> {
    let u = url::Url::parse(redirect).ok()?;
    if u.scheme() != "http" {
        return None;
    }
    let host = match u.host()? {
        url::Host::Ipv4(ip) => std::net::IpAddr::V4(ip),
        url::Host::Ipv6(ip) => std::net::IpAddr::V6(ip),
        url::Host::Domain("localhost") => std::net::IpAddr::from([127, 0, 0, 1]),
        url::Host::Domain(_) => return None,
    };
    host.is_loopback().then(|| SocketAddr::new(host, u.port_or_known_default().unwrap_or(80)))
}
