//! Account credentials (`accounts = true`): one OAuth client, any number of people
//! signed in to it, each an *account* with its own token, keys, principal and state,
//! chosen per request.
//!
//! Each account is a [`Credential`] of its own (record `credential/account` in the
//! store, its own refresh loop and health), so one account's dead refresh token never
//! touches another's. What they share is the credential's config, its token endpoint
//! client and its `token_rate` gate. The data path reads the [`AccountIndex`] through
//! one `ArcSwap::load`: names, and the principals and keys an account is also known by.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::handle::TokenHandle;
use super::redis_store::REMOVED;
use super::refresher::{token_gate, Calendar};
use super::source::{TokenResponse, TokenSource};
use super::store::TokenStore;
use super::{Credential, RefreshError};
use crate::config::{is_valid_name, CredentialConfig};
use crate::limit::RateLimiter;
use crate::metrics::Metrics;

/// How often a set following a shared store reads the stored account list again.
const RELIST_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts an account's refresh loop (and whatever watches its health) until the token
/// is cancelled; the wiring (`app`) provides it.
pub type Starter = Arc<dyn Fn(Arc<Credential>, CancellationToken) + Send + Sync>;

/// One signed-in person of an account credential.
pub struct Account {
    /// Its name (unique within the credential).
    pub name: String,
    /// Its token, renewals and health.
    pub cred: Arc<Credential>,
    /// What the data path reads.
    pub handle: TokenHandle,
    /// Stops its refresh loop (when removed, or the credential is replaced).
    stop: CancellationToken,
}

/// Accounts by name, and by what else a request may call them: principal (any case),
/// organizer key, account key. An alias two accounts share chooses neither. Persistent
/// maps (`imbl`): adding or removing one account copies a path, not the whole index, so a
/// first wave of thousands of sign-ins costs O(n log n), not O(n²).
#[derive(Clone, Default)]
pub struct AccountIndex {
    /// Each account with the aliases it was indexed under (what its token said then).
    by_name: imbl::OrdMap<String, (Arc<Account>, Arc<[String]>)>,
    alias: imbl::HashMap<String, Alias>,
}

/// Who an alias names: `only` while exactly one account has it.
#[derive(Clone)]
struct Alias {
    count: u32,
    only: Option<Arc<Account>>,
}

/// What a request may call `a` besides its name, from its current token.
fn aliases_of(a: &Account) -> Arc<[String]> {
    let token = a.cred.load();
    let Some(t) = token.as_ref() else { return Arc::from([]) };
    [t.principal.as_ref().map(|p| p.to_ascii_lowercase()), t.organizer_key.clone(), t.account_key.clone()]
        .into_iter()
        .flatten()
        .collect()
}

impl AccountIndex {
    fn build(accounts: impl IntoIterator<Item = Arc<Account>>) -> AccountIndex {
        accounts.into_iter().fold(AccountIndex::default(), |index, a| index.with(a))
    }

    /// This index with `a` added (or, under its name, indexed again from its token).
    fn with(&self, a: Arc<Account>) -> AccountIndex {
        let mut next = self.without(&a.name);
        let aliases = aliases_of(&a);
        for alias in aliases.iter() {
            let entry = match next.alias.get(alias) {
                Some(seen) => Alias { count: seen.count.saturating_add(1), only: None },
                None => Alias { count: 1, only: Some(a.clone()) },
            };
            next.alias.insert(alias.clone(), entry);
        }
        next.by_name.insert(a.name.clone(), (a, aliases));
        next
    }

    /// This index without the account `name`. An alias it shared with exactly one other
    /// account names that one again (found by a scan: removals are rare).
    fn without(&self, name: &str) -> AccountIndex {
        let mut next = self.clone();
        let Some((_, aliases)) = next.by_name.remove(name) else { return next };
        for alias in aliases.iter() {
            let Some(seen) = next.alias.get(alias).cloned() else { continue };
            match seen.count {
                0 | 1 => {
                    next.alias.remove(alias);
                }
                2 => {
                    let only = next.by_name.values().find(|(_, a)| a.contains(alias)).map(|(acc, _)| acc.clone());
                    next.alias.insert(alias.clone(), Alias { count: 1, only });
                }
                n => {
                    next.alias.insert(alias.clone(), Alias { count: n.saturating_sub(1), only: None });
                }
            }
        }
        next
    }

    /// The accounts in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.by_name.values().map(|(a, _)| a)
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The account named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Account>> {
        self.by_name.get(name).map(|(a, _)| a)
    }

    /// The account an `X-GoTo-Account` value names: its name, principal, organizer or
    /// account key.
    pub fn named(&self, value: &str) -> Option<&Arc<Account>> {
        if let Some(a) = self.get(value) {
            return Some(a);
        }
        if let Some(found) = self.alias.get(value) {
            return found.only.as_ref();
        }
        if value.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.alias.get(&value.to_ascii_lowercase()).and_then(|f| f.only.as_ref());
        }
        None
    }

    /// The one account whose organizer or account key is `key`.
    pub fn keyed(&self, key: &str) -> Option<&Arc<Account>> {
        self.alias.get(key).and_then(|f| f.only.as_ref())
    }
}

/// Why no account was chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAccount {
    /// Nothing in the request chose one and there is no `default_account`.
    Required,
    /// `X-GoTo-Account` names no account.
    Unknown,
}

/// The accounts of one account credential.
pub struct AccountSet {
    cfg: Arc<CredentialConfig>,
    http: reqwest::Client,
    store: Arc<dyn TokenStore>,
    metrics: Metrics,
    gate: Arc<RateLimiter>,
    /// Where the accounts book their renewals (spread under `token_rate`).
    calendar: Arc<Calendar>,
    /// The token endpoint client, for the keys lookup that names a sign-in.
    source: TokenSource,
    index: ArcSwap<AccountIndex>,
    /// Serialises adding and removing (the index is rebuilt under it).
    edit: tokio::sync::Mutex<()>,
    start: Starter,
    /// Cancelled when the set is replaced: every account's loop stops.
    stop: CancellationToken,
}

impl AccountSet {
    /// An empty set for `cfg`; [`AccountSet::load`] reads the stored accounts.
    pub fn new(
        cfg: Arc<CredentialConfig>,
        http: reqwest::Client,
        store: Arc<dyn TokenStore>,
        metrics: Metrics,
        start: Starter,
        stop: CancellationToken,
    ) -> AccountSet {
        let gate = Arc::new(token_gate(cfg.token_rate));
        let calendar = Arc::new(Calendar::new(cfg.token_rate));
        AccountSet {
            calendar,
            source: TokenSource::new(http.clone(), cfg.clone()),
            cfg,
            http,
            store,
            metrics,
            gate,
            index: ArcSwap::default(),
            edit: tokio::sync::Mutex::new(()),
            start,
            stop,
        }
    }

    /// The credential's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Its configuration.
    pub fn config(&self) -> &Arc<CredentialConfig> {
        &self.cfg
    }

    /// The accounts now (one `ArcSwap::load`).
    pub fn index(&self) -> arc_swap::Guard<Arc<AccountIndex>> {
        self.index.load()
    }

    /// Reads every stored account and starts renewing each (a store that cannot be
    /// listed now leaves the set empty, logged: people can still sign in).
    pub async fn load(&self) {
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
            (self.start)(a.cred.clone(), a.stop.clone());
            accounts.push(a);
        }
        tracing::info!(credential = %self.name(), accounts = accounts.len(), "loaded stored accounts");
        self.index.store(Arc::new(AccountIndex::build(accounts)));
    }

    fn account(&self, name: &str) -> Arc<Account> {
        let cred = Arc::new(Credential::for_account(
            self.cfg.clone(),
            name,
            self.http.clone(),
            self.store.clone(),
            self.metrics.clone(),
            (self.gate.clone(), self.calendar.clone()),
        ));
        let handle = cred.handle();
        Arc::new(Account { name: name.to_string(), cred, handle, stop: self.stop.child_token() })
    }

    /// Stores and serves a sign-in's token answer as the account `name` (or, without
    /// one, the account named after the principal's email, else its organizer key).
    /// Signing in again as an existing account (same name, or same principal) renews
    /// it instead of adding another. Answers the account's name.
    pub async fn sign_in(&self, name: Option<&str>, response: TokenResponse) -> Result<String, RefreshError> {
        let mut response = response;
        if response.principal.is_none() && response.organizer_key.is_none() && response.account_key.is_none() {
            // Who signed in decides which account this is: ask the keys endpoint now.
            if let Some(keys) = self.source.fetch_keys(&response.access_token).await {
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
        if fresh {
            (self.start)(account.cred.clone(), account.stop.clone());
        }
        // Indexed again either way: a new sign-in may bring new keys.
        self.index.store(Arc::new(index.with(account.clone())));
        tracing::info!(credential = %self.name(), account = %account.name, added = fresh, "account signed in");
        Ok(account.name.clone())
    }

    /// Forgets the account `name`: its renewals stop and its record is deleted. False
    /// when there is no such account.
    pub async fn remove(&self, name: &str) -> Result<bool, crate::token::store::StoreError> {
        let _edit = self.edit.lock().await;
        let index = self.index.load_full();
        let Some(gone) = index.get(name).cloned() else { return Ok(false) };
        self.store.remove(gone.cred.key()).await?;
        gone.stop.cancel();
        self.index.store(Arc::new(index.without(name)));
        tracing::info!(credential = %self.name(), account = %name, "account removed");
        Ok(true)
    }

    /// The account a request uses: `X-GoTo-Account` (`header`) first, then an organizer
    /// or account key in the path (after `/organizers/` or `/accounts/`) or the
    /// `accountKey` query value, then the `default_account`.
    pub fn choose(&self, header: Option<&str>, path: &str, query: Option<&str>) -> Result<Arc<Account>, NoAccount> {
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
    pub fn state_counts(&self) -> [(&'static str, usize); 5] {
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
    pub fn ready(&self) -> Result<(), String> {
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
    pub async fn adopt(&self, name: &str) -> bool {
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
        (self.start)(a.cred.clone(), a.stop.clone());
        self.index.store(Arc::new(index.with(a)));
        tracing::info!(credential = %self.name(), account = %name, "picked up an account signed in elsewhere");
        true
    }

    /// Follows a shared store (Redis) until the set stops: an account signed in or
    /// removed on another replica is taken up or forgotten here within a moment (the
    /// change notice names it), and the stored list is read again now and then in case
    /// a notice was lost. A record that merely vanished (Redis restarted empty) is not
    /// a removal: its account keeps its token and writes it back.
    pub async fn follow(self: Arc<Self>) {
        let Some(mut changes) = self.store.changes() else { return };
        let ours = format!("{}/", self.name());
        let mut relist = tokio::time::interval(RELIST_EVERY);
        relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = relist.tick() => self.relist().await,
                notice = changes.recv() => match notice {
                    Ok(key) => {
                        if let Some(name) = key.strip_prefix(REMOVED).and_then(|k| k.strip_prefix(ours.as_str())) {
                            self.forget(name).await;
                        } else if let Some(name) = key.strip_prefix(ours.as_str()) {
                            self.adopt(name).await;
                        } else if key.is_empty() {
                            self.relist().await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.relist().await,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
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
        let Some(gone) = index.get(name).cloned() else { return };
        gone.stop.cancel();
        self.index.store(Arc::new(index.without(name)));
        tracing::info!(credential = %self.name(), account = %name, "account removed by another replica");
    }

    /// Stops every account's renewals (the credential was replaced or removed).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// The name an unnamed sign-in gets: the principal's email with every character outside
/// the name rule made `_` (`alice@example.com` → `alice_example.com`), else the
/// organizer key.
pub fn derived_name(response: &TokenResponse) -> Option<String> {
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
