//! Account credentials (`accounts = true`): one OAuth client, any number of people
//! signed in to it, each an *account* with its own token, keys, principal and state,
//! chosen per request.
//!
//! Each account is a [`Credential`] of its own (record `credential/account` in the
//! store, its own token, renewals and health), so one account's dead refresh token never
//! touches another's. What they share is the credential's config, its token endpoint
//! client, its `token_rate` gate and calendar, and one task ([`AccountSet::run`], in
//! `run.rs`) that renews them all: 10,000 accounts keep no task, timer or channel each.
//! The data path reads the [`AccountIndex`] through one `ArcSwap::load`: names, and the
//! principals and keys an account is also known by.

mod index;
mod run;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::handle::{Inbox, TokenHandle};
use super::redis_budget::RedisBudget;
use super::refresher::{AccountParts, Calendar, TokenGate};
use super::source::{TokenResponse, TokenSource};
use super::store::TokenStore;
use super::{Credential, RefreshError};
use crate::config::{is_valid_name, CredentialConfig};
use crate::limit::SharedBudget;
use crate::metrics::Metrics;

pub(crate) use index::AccountIndex;

/// Hears of every account's renewal outcomes, from the set's task: how notifications
/// follow accounts without a task each (the wiring, `app`, provides it).
pub(crate) trait Observer: Send + Sync {
    /// `account` has news (a token, a failure, a sign-in).
    fn outcome(&self, account: &Credential);
    /// The account stored under `key` (`credential/account`) was removed.
    fn removed(&self, key: &str);
}

/// An observer for a process that notifies nobody (a one-shot `login`).
pub(crate) struct Unobserved;

impl Observer for Unobserved {
    fn outcome(&self, _: &Credential) {}
    fn removed(&self, _: &str) {}
}

/// One signed-in person of an account credential.
pub(crate) struct Account {
    /// Its name (unique within the credential).
    pub name: String,
    /// Its token, renewals and health.
    pub cred: Arc<Credential>,
    /// What the data path reads.
    pub handle: TokenHandle,
}

/// Why no account was chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoAccount {
    /// Nothing in the request chose one and there is no `default_account`.
    Required,
    /// `X-GoTo-Account` names no account.
    Unknown,
}

/// The accounts of one account credential.
pub(crate) struct AccountSet {
    cfg: Arc<CredentialConfig>,
    store: Arc<dyn TokenStore>,
    metrics: Metrics,
    /// What every account shares: gate, calendar, inbox, outcome queue, token source.
    parts: AccountParts,
    /// The outcome queue's receiving end, held by the running [`AccountSet::run`].
    outcomes: tokio::sync::Mutex<mpsc::UnboundedReceiver<Arc<str>>>,
    observer: Arc<dyn Observer>,
    index: ArcSwap<AccountIndex>,
    /// Serialises adding and removing (the index is rebuilt under it).
    edit: tokio::sync::Mutex<()>,
    /// Cancelled when the set is replaced: its task stops.
    stop: CancellationToken,
}

impl AccountSet {
    /// An empty set for `cfg`; [`AccountSet::load`] reads the stored accounts and
    /// [`AccountSet::run`] renews them. With `budget` (Redis), `token_rate` is one budget
    /// for every replica.
    pub(crate) fn new(
        cfg: Arc<CredentialConfig>,
        http: reqwest::Client,
        store: Arc<dyn TokenStore>,
        metrics: Metrics,
        observer: Arc<dyn Observer>,
        budget: Option<Arc<RedisBudget>>,
        stop: CancellationToken,
    ) -> AccountSet {
        let (tx, rx) = mpsc::unbounded_channel();
        let parts = AccountParts {
            gate: Arc::new(TokenGate::new(&cfg.name, cfg.token_rate, budget.map(|b| b as Arc<dyn SharedBudget>))),
            calendar: Arc::new(Calendar::new(cfg.token_rate)),
            inbox: Arc::new(Inbox::new()),
            outcomes: tx,
            source: TokenSource::new(http, cfg.clone()),
        };
        AccountSet {
            cfg,
            store,
            metrics,
            parts,
            outcomes: tokio::sync::Mutex::new(rx),
            observer,
            index: ArcSwap::default(),
            edit: tokio::sync::Mutex::new(()),
            stop,
        }
    }

    /// The credential's name.
    pub(crate) fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Its configuration.
    pub(crate) fn config(&self) -> &Arc<CredentialConfig> {
        &self.cfg
    }

    /// The accounts now (one `ArcSwap::load`).
    pub(crate) fn index(&self) -> arc_swap::Guard<Arc<AccountIndex>> {
        self.index.load()
    }

    /// Reads every stored account (a store that cannot be listed now leaves the set
    /// empty, logged: people can still sign in); the set's task renews them.
    pub(crate) async fn load(&self) {
        let _edit = self.edit.lock().await;
        let names = match self.store.accounts(self.name()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(credential = %self.name(), error = %e, "cannot list the stored accounts");
                return;
            }
        };
        let mut accounts = Vec::with_capacity(names.len());
        for name in names.into_iter().filter(|n| is_valid_name(n)) {
            let a = self.account(&name);
            a.cred.init().await;
            accounts.push(a);
        }
        tracing::info!(credential = %self.name(), accounts = accounts.len(), "loaded stored accounts");
        self.index.store(Arc::new(AccountIndex::build(accounts)));
    }

    fn account(&self, name: &str) -> Arc<Account> {
        let cred = Arc::new(Credential::for_account(
            self.cfg.clone(),
            name,
            self.store.clone(),
            self.metrics.clone(),
            &self.parts,
        ));
        let handle = cred.handle();
        Arc::new(Account { name: name.to_string(), cred, handle })
    }

    /// Stores and serves a sign-in's token answer as the account `name` (or, without
    /// one, the account named after the principal's email, else its organizer key).
    /// Signing in again as an existing account (same name, or same principal) renews
    /// it instead of adding another. Answers the account's name.
    pub(crate) async fn sign_in(&self, name: Option<&str>, response: TokenResponse) -> Result<String, RefreshError> {
        let mut response = response;
        if response.principal.is_none() && response.organizer_key.is_none() && response.account_key.is_none() {
            // Who signed in decides which account this is: ask the keys endpoint now.
            if let Some(keys) = self.parts.source.fetch_keys(&response.access_token).await {
                response.organizer_key = keys.organizer_key;
                response.account_key = keys.account_key;
                response.principal = keys.principal;
            }
        }
        let _edit = self.edit.lock().await;
        let index = self.index.load_full();
        let principal = response.principal.as_ref().map(|p| p.to_ascii_lowercase());
        let existing = match name {
            Some(n) => index.get(n).cloned(),
            None => principal.as_deref().and_then(|p| index.named(p)).cloned(),
        };
        let (account, fresh) = match existing {
            Some(a) => (a, false),
            None => {
                let name = match name {
                    Some(n) => n.to_string(),
                    None => derived_name(&response).ok_or_else(|| RefreshError {
                        message: "the sign-in named no account and the token answer gives no email or organizer key to name it after: sign in with ?account=NAME".into(),
                        needs_login: true,
                    })?,
                };
                if let Some(a) = index.get(&name) {
                    (a.clone(), false)
                } else {
                    (self.account(&name), true)
                }
            }
        };
        account.cred.install_response(response).await?;
        // Indexed again either way: a new sign-in may bring new keys.
        self.index.store(Arc::new(index.with(account.clone())));
        self.tell(&account.name);
        tracing::info!(credential = %self.name(), account = %account.name, added = fresh, "account signed in");
        Ok(account.name.clone())
    }

    /// Forgets the account `name`: its renewals stop and its record is deleted. False
    /// when there is no such account.
    pub(crate) async fn remove(&self, name: &str) -> Result<bool, crate::token::store::StoreError> {
        let _edit = self.edit.lock().await;
        let index = self.index.load_full();
        let Some(gone) = index.get(name).cloned() else { return Ok(false) };
        self.store.remove(gone.cred.key()).await?;
        self.index.store(Arc::new(index.without(name)));
        self.tell(name);
        tracing::info!(credential = %self.name(), account = %name, "account removed");
        Ok(true)
    }

    /// The account a request uses: `X-GoTo-Account` (`header`) first, then an organizer
    /// or account key in the path (after `/organizers/` or `/accounts/`) or the
    /// `accountKey` query value, then the `default_account`.
    pub(crate) fn choose(
        &self,
        header: Option<&str>,
        path: &str,
        query: Option<&str>,
    ) -> Result<Arc<Account>, NoAccount> {
        let index = self.index.load();
        if let Some(value) = header {
            return index.named(value.trim()).cloned().ok_or(NoAccount::Unknown);
        }
        if let Some(a) = keys_in(path, query).find_map(|k| index.keyed(k)) {
            return Ok(a.clone());
        }
        match &self.cfg.default_account {
            Some(d) => index.get(d).cloned().ok_or(NoAccount::Unknown),
            None => Err(NoAccount::Required),
        }
    }

    /// How many accounts are in each state (`valid`, `renewing`, `needs_login`,
    /// `failing`, `no_token`), every state listed.
    pub(crate) fn state_counts(&self) -> [(&'static str, usize); 5] {
        let mut counts: [(&'static str, usize); 5] =
            [("valid", 0), ("renewing", 0), ("needs_login", 0), ("failing", 0), ("no_token", 0)];
        for a in self.index.load().iter() {
            let state = a.cred.state().as_str();
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == state) {
                c.1 = c.1.saturating_add(1);
            }
        }
        counts
    }

    /// Whether requests can be served: the `default_account` holds a valid token, or,
    /// without one, at least one account does.
    pub(crate) fn ready(&self) -> Result<(), String> {
        let index = self.index.load();
        match &self.cfg.default_account {
            Some(d) => match index.get(d) {
                Some(a) if a.cred.valid_token().is_some() => Ok(()),
                Some(a) => Err(format!("default account {d:?}: {}", a.cred.why_unavailable())),
                None => Err(format!("default account {d:?} has not signed in")),
            },
            None if index.iter().any(|a| a.cred.valid_token().is_some()) => Ok(()),
            None if index.is_empty() => {
                Err(format!("no account has signed in: open /login/{}?account=NAME", self.name()))
            }
            None => Err("no account holds a valid token".to_string()),
        }
    }

    /// Adds an account another process stored (a `login` command, a replica) that this
    /// set does not know yet. True when it is known now.
    pub(crate) async fn adopt(&self, name: &str) -> bool {
        if self.index.load().get(name).is_some() {
            return true;
        }
        let _edit = self.edit.lock().await;
        let index = self.index.load_full();
        if index.get(name).is_some() {
            return true;
        }
        let key = format!("{}/{name}", self.name());
        if !matches!(self.store.load(&key).await, Ok(Some(_))) {
            return false;
        }
        let a = self.account(name);
        a.cred.init().await;
        self.index.store(Arc::new(index.with(a)));
        self.tell(name);
        tracing::info!(credential = %self.name(), account = %name, "picked up an account signed in elsewhere");
        true
    }

    /// Takes up every stored account this set does not know yet.
    async fn relist(&self) {
        let Ok(names) = self.store.accounts(self.name()).await else { return };
        let index = self.index.load_full();
        for name in names.iter().filter(|n| index.get(n).is_none() && is_valid_name(n)) {
            self.adopt(name).await;
        }
    }

    /// Stops serving and renewing `name` (removed on another replica; its record is
    /// gone already).
    async fn forget(&self, name: &str) {
        let _edit = self.edit.lock().await;
        let index = self.index.load_full();
        if index.get(name).is_none() {
            return;
        }
        self.index.store(Arc::new(index.without(name)));
        self.tell(name);
        tracing::info!(credential = %self.name(), account = %name, "account removed by another replica");
    }

    /// Stops every account's renewals (the credential was replaced or removed).
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Indexes `name` again from its current token when its aliases changed (keys or
    /// principal from a renewal); serialised with sign-ins and removals.
    async fn reindex(&self, name: &str) {
        let _edit = self.edit.lock().await;
        let index = self.index.load_full();
        let Some(a) = index.get(name).cloned() else { return };
        if !index.current(&a) {
            self.index.store(Arc::new(index.with(a)));
            tracing::info!(credential = %self.name(), account = %name, "account's keys or principal changed: indexed again");
        }
    }

    /// Tells the set's task that the account `name` was added, signed in again or
    /// removed: it plans (or drops) its renewal.
    fn tell(&self, name: &str) {
        // The task is gone only when the set is: nobody to tell.
        let _ = self.parts.outcomes.send(Arc::from(name));
    }
}

/// The name an unnamed sign-in gets: the principal's email with every character outside
/// the name rule made `_` (`alice@example.com` → `alice_example.com`), else the
/// organizer key.
pub(crate) fn derived_name(response: &TokenResponse) -> Option<String> {
    if let Some(p) = &response.principal {
        let name: String = p
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' })
            .take(64)
            .collect();
        if is_valid_name(&name) {
            return Some(name);
        }
    }
    response.organizer_key.clone().filter(|k| is_valid_name(k))
}

/// Organizer and account keys a request names itself: the segment after each
/// `organizers` or `accounts` segment, and `accountKey` query values.
fn keys_in<'a>(path: &'a str, query: Option<&'a str>) -> impl Iterator<Item = &'a str> {
    let mut segments = path.split('/');
    let in_path = std::iter::from_fn(move || loop {
        let s = segments.next()?;
        if s == "organizers" || s == "accounts" {
            if let Some(k) = segments.next().filter(|k| !k.is_empty()) {
                return Some(k);
            }
        }
    });
    let in_query = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.strip_prefix("accountKey="))
        .filter(|v| !v.is_empty());
    in_path.chain(in_query)
}

#[cfg(test)]
mod tests {
    use super::keys_in;

    #[test]
    fn keys_are_read_from_organizer_and_account_segments_and_the_account_key_query() {
        let found: Vec<&str> = keys_in("/G2W/rest/v2/organizers/111/webinars", None).collect();
        assert_eq!(found, ["111"]);
        let found: Vec<&str> = keys_in("/G2W/rest/v2/accounts/222/webinars", Some("a=1&accountKey=333")).collect();
        assert_eq!(found, ["222", "333"]);
        assert_eq!(keys_in("/G2W/rest/v2/organizers/", None).count(), 0);
        assert_eq!(keys_in("/voice-admin/v1/users", Some("accountKey=")).count(), 0);
    }
}
