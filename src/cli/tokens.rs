//! `token` and `accounts`: what the state store holds, for one credential.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, GrantKind};
use crate::metrics::Metrics;
use crate::token::accounts::{AccountSet, Unobserved};
use crate::token::{Credential, Token};

/// Picks the credential: the one named, or the only one that fits.
pub(super) fn pick(config: &Config, name: Option<&str>, fits: impl Fn(GrantKind) -> bool) -> anyhow::Result<String> {
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

pub(super) async fn runtime_credentials(config: &Config) -> anyhow::Result<BTreeMap<String, Arc<Credential>>> {
    let metrics = Metrics::new(prometheus::Registry::new())?;
    let store = crate::app::open_checked_store(config, &metrics).await?;
    Ok(crate::app::credentials(config, &store, &metrics)?)
}

/// The store for a one-shot command (its metrics are not exported anywhere).
pub(super) async fn one_shot_store(config: &Config) -> anyhow::Result<Arc<dyn crate::token::store::TokenStore>> {
    let metrics = Metrics::new(prometheus::Registry::new())?;
    Ok(crate::app::open_checked_store(config, &metrics).await?)
}

pub(super) async fn token(config: Config, name: Option<&str>, account: Option<&str>) -> anyhow::Result<()> {
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
pub(super) async fn one_shot_accounts(
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
pub(super) async fn accounts(config: Config, name: Option<&str>, as_json: bool) -> anyhow::Result<()> {
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
