//! Applying a configuration: credentials and account sets kept or built, refreshers
//! started or stopped, routes swapped; and what the admin listener reads of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::net::Net;
use super::supervise::supervise;
use super::{Core, ReloadTrigger};
use crate::admin::Credentials;
use crate::config::Config;
use crate::proxy::{RouteCredential, Snapshot};
use crate::token::accounts::AccountSet;
use crate::token::redis_budget::RedisBudget;
use crate::token::Credential;

impl Core {
    /// Every credential, by name.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials.load_full()
    }

    /// Names of the credentials routes use.
    pub fn used(&self) -> Arc<Vec<String>> {
        self.used.load_full()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Applies `config` with the outbound settings `net`: credentials whose settings did
    /// not change (nor the outbound ones) keep their tokens and refreshers; new or changed
    /// ones load from the store and start renewing; routes and limits swap atomically
    /// (requests in flight finish on the old ones).
    pub(super) async fn apply(&self, config: Config, net: Arc<Net>) {
        let old = self.credentials.load_full();
        let same_net = Arc::ptr_eq(&self.net.load(), &net);
        let mut fresh: Vec<Arc<Credential>> = Vec::new();
        let mut next = Credentials::new();
        for (name, cfg) in &config.credentials {
            let cred = match old.get(name) {
                Some(c) if same_net && **c.config() == **cfg => c.clone(),
                _ => {
                    let c = Arc::new(Credential::new(
                        cfg.clone(),
                        net.http.clone(),
                        self.store.clone(),
                        self.metrics.clone(),
                    ));
                    fresh.push(c.clone());
                    c
                }
            };
            next.insert(name.clone(), cred);
        }
        let used = config.used_credentials();
        // An account credential's token lives in its accounts: the credential itself
        // (kept for sign-ins and the admin) neither loads nor renews one.
        let renews =
            |name: &str| used.iter().any(|u| u == name) && !config.credentials.get(name).is_some_and(|c| c.accounts);
        for c in &fresh {
            if renews(c.name()) {
                c.init().await;
            }
        }
        let sets = self.account_sets(&config, &net, same_net).await;
        {
            let mut running = self.refreshers.lock().unwrap_or_else(|p| p.into_inner());
            running.retain(|name, (c, stop)| {
                let keep = renews(name) && next.get(name).is_some_and(|n| Arc::ptr_eq(n, c));
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for name in used.iter().filter(|n| renews(n)) {
                if let (false, Some(c)) = (running.contains_key(name), next.get(name)) {
                    let stop = self.shutdown.child_token();
                    let restarts = self.metrics.refresher_restarts.with_label_values(&[name.as_str()]);
                    let cred = c.clone();
                    let loop_stop = stop.clone();
                    self.tasks.spawn(supervise(name.clone(), stop.clone(), restarts, move || {
                        cred.clone().run(loop_stop.clone())
                    }));
                    self.tasks.spawn(self.notifier.clone().watch(c.clone(), stop.clone()));
                    running.insert(name.clone(), (c.clone(), stop));
                }
            }
        }
        self.notifier.set_targets(config.notify.clone(), net.webhooks.clone());
        let by_name: HashMap<String, RouteCredential> = next
            .iter()
            .map(|(k, v)| match sets.get(k) {
                Some(set) => (k.clone(), RouteCredential::Accounts(set.clone())),
                None => (k.clone(), RouteCredential::One(v.handle())),
            })
            .collect();
        self.proxy.swap(Snapshot::compile(&config, &by_name, &self.metrics, &net.outbound));
        self.net.store(net);
        self.credentials.store(Arc::new(next));
        self.accounts.store(Arc::new(sets));
        self.used.store(Arc::new(used));
        self.config.store(Arc::new(config));
    }

    /// The account sets of `config`'s account credentials: kept when the credential (and
    /// the outbound settings) did not change, else built and loaded from the store; the
    /// accounts of sets no longer used stop renewing.
    async fn account_sets(&self, config: &Config, net: &Arc<Net>, same_net: bool) -> BTreeMap<String, Arc<AccountSet>> {
        let old = self.accounts.load_full();
        let mut sets = BTreeMap::new();
        for (name, cfg) in config.credentials.iter().filter(|(_, c)| c.accounts) {
            let set = match old.get(name) {
                Some(s) if same_net && **s.config() == **cfg => s.clone(),
                _ => {
                    // Cancelled when the set is replaced or removed (`AccountSet::stop`).
                    let stop = self.shutdown.child_token();
                    let set = Arc::new(AccountSet::new(
                        cfg.clone(),
                        net.http.clone(),
                        self.store.clone(),
                        self.metrics.clone(),
                        Arc::new(crate::notify::Accounts::new(self.notifier.clone())),
                        self.shared_budget(),
                        stop.clone(),
                    ));
                    set.load().await;
                    // One task renews all the set's accounts, supervised like a credential's loop.
                    let restarts = self.metrics.refresher_restarts.with_label_values(&[name.as_str()]);
                    let s = set.clone();
                    self.tasks.spawn(supervise(name.clone(), stop, restarts, move || s.clone().run()));
                    set
                }
            };
            sets.insert(name.clone(), set);
        }
        for (name, s) in old.iter() {
            if !sets.get(name).is_some_and(|n| Arc::ptr_eq(n, s)) {
                s.stop();
            }
        }
        sets
    }

    /// The replicas' shared rate budget, when the state lives in Redis.
    fn shared_budget(&self) -> Option<Arc<RedisBudget>> {
        self.redis.as_ref()?.budget.clone()
    }

    /// The account credentials' account sets, by name.
    pub fn account_sets_now(&self) -> Arc<BTreeMap<String, Arc<AccountSet>>> {
        self.accounts.load_full()
    }
}

impl crate::admin::View for Core {
    fn config(&self) -> Arc<Config> {
        Core::config(self)
    }

    fn credentials(&self) -> Arc<Credentials> {
        Core::credentials(self)
    }

    fn used(&self) -> Arc<Vec<String>> {
        Core::used(self)
    }

    fn metrics_text(&self) -> String {
        for (name, set) in self.accounts.load().iter() {
            let counts = set.state_counts();
            for (state, n) in counts {
                self.metrics.accounts.with_label_values(&[name.as_str(), state]).set(n as i64);
            }
        }
        self.metrics.render()
    }

    fn accounts(&self) -> Arc<BTreeMap<String, Arc<AccountSet>>> {
        self.accounts.load_full()
    }

    fn requests_by_route(&self) -> std::collections::BTreeMap<String, u64> {
        self.metrics.requests_by_route()
    }

    fn reload(&self) -> futures_util::future::BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move { self.reload_from_source(ReloadTrigger::Admin).await.map_err(|e| e.to_string()) })
    }
}
