//! `check-refresh`: no refresh token lost. The mock knows the newest refresh token of
//! every chain it issued (the one a renewal needs next); the proxies' store must hold it.
//! The store is read through the crate's own [`FileStore`] and [`RedisStore`] (so a
//! format change cannot make this check read the wrong field), the refresh tokens sent
//! to the mock's `POST /_mock/refresh_tokens/check`, and only the counts printed:
//! `chains=N held=K` (a token is never printed).
//!
//! The script runs it while the token endpoint is down (nothing new can be issued, and a
//! call already answered has had time to be stored) and at the end.

use anyhow::Context as _;
use clap::Args;
use goto_auth_proxy::testing::RedisStore;
use goto_auth_proxy::testing::Secret;
use goto_auth_proxy::testing::{FileStore, TokenStore};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The mock that issued the tokens (`http://127.0.0.1:PORT`).
    #[arg(long)]
    mock: String,
    /// A credential whose stored refresh token to send (repeat).
    #[arg(long = "credential", required = true)]
    credentials: Vec<String>,
    /// The state file of a `store = "file"` proxy.
    #[arg(long, conflicts_with = "redis_url")]
    state_file: Option<std::path::PathBuf>,
    /// The Redis of `store = "redis"` proxies.
    #[arg(long, requires = "redis_prefix")]
    redis_url: Option<String>,
    /// Their `redis_prefix`.
    #[arg(long)]
    redis_prefix: Option<String>,
}

#[derive(serde::Deserialize)]
struct Verdict {
    chains: u64,
    held: u64,
}

pub async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let store: Box<dyn TokenStore> = match (&args.state_file, &args.redis_url) {
        (Some(path), None) => Box::new(FileStore::new(path)),
        (None, Some(url)) => Box::new(
            RedisStore::connect(&Secret::new(url.as_str()), args.redis_prefix.as_deref().unwrap_or_default(), None)
                .context("redis")?,
        ),
        _ => anyhow::bail!("give --state-file or --redis-url"),
    };
    let mut refresh_tokens = Vec::new();
    for c in &args.credentials {
        let stored = store.load(c).await.with_context(|| format!("{}: credential {c}", store.describe()))?;
        if let Some(rt) = stored.and_then(|s| s.refresh_token) {
            refresh_tokens.push(rt);
        }
    }
    let http = reqwest::Client::builder().no_proxy().build()?;
    let verdict: Verdict = http
        .post(format!("{}/_mock/refresh_tokens/check", args.mock))
        .json(&refresh_tokens)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    println!("chains={} held={}", verdict.chains, verdict.held);
    Ok(())
}
