//! The one task that renews every account of a set.
//!
//! A credential has a refresh loop of its own; an account has none, so 10,000 accounts
//! cost 10,000 entries in one timer queue, not 10,000 tasks. The task plans each
//! account's renewal with the same rules as a credential's loop
//! ([`Credential::plan`]: before expiry, booked in the set's calendar under
//! `token_rate`, backoff after failures), and learns of news from the accounts
//! themselves: every token published, every failure and every sign-in puts the account's
//! name on the set's outcome queue. Renewals, rejection answers and store reads run as
//! tasks of their own only while they work.
//!
//! With a shared store (Redis), the store's change notices name the account: a known
//! account reads its record, an unknown one is taken up, a removal is forgotten; after a
//! reconnect (a notice may have been lost) every account reads its record once. The
//! stored list is read again every [`RELIST_EVERY`].

use std::collections::HashMap;
use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::time::{delay_queue, DelayQueue};

use super::{Account, AccountSet};
use crate::token::redis_store::REMOVED;
use crate::token::refresher::{Plan, SIGN_IN_CHECK};
use crate::token::{deadline_in, Trigger};

/// How often a set following a shared store reads the stored account list again.
const RELIST_EVERY: Duration = Duration::from_secs(10);

/// What the task knows of one account's next renewal.
struct Planned {
    /// The renewal planned for its current token (kept while token and failures stay).
    plan: Option<Plan>,
    /// Its entry in the timer queue, while one is waiting.
    entry: Option<delay_queue::Key>,
    /// When that entry fires.
    when: Option<Instant>,
    /// A renewal or store read is running for it: planned again when that ends.
    busy: bool,
}

/// The task's bookkeeping: one timer queue for every account, and each account's plan.
#[derive(Default)]
struct Plans {
    due: DelayQueue<Arc<str>>,
    by_name: HashMap<Arc<str>, Planned>,
}

impl Plans {
    /// Plans `account`'s next renewal (or, while only a person can help, its next look
    /// at the store), keeping a plan made for the same token and failure count.
    fn plan(&mut self, name: &Arc<str>, account: &Account) {
        let p =
            self.by_name.entry(name.clone()).or_insert(Planned { plan: None, entry: None, when: None, busy: false });
        if p.busy {
            return;
        }
        let plan = account.cred.plan(p.plan);
        p.plan = Some(plan);
        let when = if account.cred.awaits_a_person() { deadline_in(SIGN_IN_CHECK) } else { plan.when };
        // A person's wait is kept too: each new look would otherwise push it on.
        if p.when.is_some() && (p.when == Some(when) || account.cred.awaits_a_person()) {
            return;
        }
        p.when = Some(when);
        match p.entry {
            Some(key) => self.due.reset_at(&key, when),
            None => p.entry = Some(self.due.insert_at(name.clone(), when)),
        }
    }

    /// Forgets `name` (removed), giving back its calendar second.
    fn drop_account(&mut self, name: &str, account: Option<&Account>) {
        if let Some(p) = self.by_name.remove(name) {
            if let Some(key) = p.entry {
                self.due.remove(&key);
            }
            if let (Some(plan), Some(a)) = (p.plan, account) {
                a.cred.unplan(&plan);
            }
        }
    }

    /// `name`'s entry fired: it is busy until its work ends. The plan to carry out.
    fn fired(&mut self, name: &str) -> Option<Plan> {
        let p = self.by_name.get_mut(name)?;
        p.entry = None;
        p.when = None;
        p.busy = true;
        p.plan.take()
    }

    /// `name` is busy with other work (a rejection, a store read).
    fn busy(&mut self, name: &Arc<str>) {
        if let Some(p) = self.by_name.get_mut(name) {
            p.busy = true;
        }
    }

    /// `name`'s work ended: it may be planned again.
    fn idle(&mut self, name: &str) {
        if let Some(p) = self.by_name.get_mut(name) {
            p.busy = false;
        }
    }
}

impl AccountSet {
    /// Renews every account until the set stops; `app` supervises it like a credential's
    /// refresh loop (started again should it end), and a task started again plans every
    /// account afresh.
    pub(crate) async fn run(self: Arc<Self>) {
        let (mut inbox, mut outcomes) = tokio::select! {
            _ = self.stop.cancelled() => return,
            held = async { (self.parts.inbox.open().await, self.outcomes.lock().await) } => held,
        };
        let mut changes = self.store.changes();
        let mut relist = tokio::time::interval_at(deadline_in(RELIST_EVERY), RELIST_EVERY);
        relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut plans = Plans::default();
        let mut work: JoinSet<Option<Arc<str>>> = JoinSet::new();
        for a in self.index.load().iter() {
            plans.plan(&Arc::from(a.name.as_str()), a);
        }
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => {
                    // Renewals under way finish (their store write included), none starts.
                    work.detach_all();
                    return;
                }
                Some(fired) = poll_fn(|cx| plans.due.poll_expired(cx)) => {
                    let name = fired.into_inner();
                    let plan = plans.fired(&name);
                    let Some(a) = self.index.load().get(&name).cloned() else {
                        plans.drop_account(&name, None);
                        continue;
                    };
                    if a.cred.awaits_a_person() {
                        // A sign-in someone else stored (a `login`, a replica).
                        spawn(&mut work, name, async move { a.cred.sync_with_store().await });
                    } else {
                        let generation = plan.map_or(0, |p| p.generation());
                        spawn(&mut work, name, async move {
                            // Failures are recorded and logged inside; the plan backs off.
                            let _ = a.cred.refresh(Trigger::Scheduled(generation)).await;
                        });
                    }
                }
                report = inbox.next() => {
                    let found = report.key().split_once('/').and_then(|(_, n)| self.index.load().get(n).cloned());
                    match found {
                        Some(a) => {
                            let name: Arc<str> = Arc::from(a.name.as_str());
                            plans.busy(&name);
                            spawn(&mut work, name, async move { a.cred.answer(report).await });
                        }
                        // Removed meanwhile: nothing renews it any more.
                        None => {
                            let message = format!("{} was removed", report.key());
                            report.answer(Err(crate::token::RefreshError { message, needs_login: true }));
                        }
                    }
                }
                Some(name) = outcomes.recv() => self.heard(&mut plans, &name),
                Some(done) = work.join_next() => {
                    if let Ok(Some(name)) = done {
                        plans.idle(&name);
                        self.heard(&mut plans, &name);
                    }
                }
                notice = next_notice(&mut changes) => match notice {
                    // The store's notices ended: nothing more will come.
                    Err(RecvError::Closed) => changes = None,
                    Err(RecvError::Lagged(_)) => self.notice("", &mut plans, &mut work),
                    Ok(key) => self.notice(&key, &mut plans, &mut work),
                },
                _ = relist.tick(), if changes.is_some() => {
                    let me = self.clone();
                    work.spawn(async move {
                        me.relist().await;
                        None
                    });
                }
            }
        }
    }

    /// An account has news (or was added or removed): plan it again, index it again when
    /// its keys changed, and tell the observer (notifications).
    fn heard(self: &Arc<Self>, plans: &mut Plans, name: &Arc<str>) {
        let index = self.index.load();
        match index.get(name) {
            Some(a) => {
                plans.plan(name, a);
                self.observer.outcome(&a.cred);
                if !index.current(a) {
                    let (me, name) = (self.clone(), name.clone());
                    tokio::spawn(async move { me.reindex(&name).await });
                }
            }
            None => {
                plans.drop_account(name, None);
                self.observer.removed(&format!("{}/{name}", self.name()));
            }
        }
    }

    /// A shared store's change notice: a record of ours was saved (read it, or take an
    /// unknown account up) or removed (forget it); "" or a lag: anything may have
    /// changed, so every account reads its record and the list is read again.
    fn notice(self: &Arc<Self>, key: &str, plans: &mut Plans, work: &mut JoinSet<Option<Arc<str>>>) {
        let ours = format!("{}/", self.name());
        let me = self.clone();
        if let Some(name) = key.strip_prefix(REMOVED).and_then(|k| k.strip_prefix(ours.as_str())) {
            let name = name.to_string();
            work.spawn(async move {
                me.forget(&name).await;
                None
            });
        } else if let Some(name) = key.strip_prefix(ours.as_str()) {
            match self.index.load().get(name).cloned() {
                Some(a) => {
                    let name: Arc<str> = Arc::from(name);
                    plans.busy(&name);
                    spawn(work, name, async move { a.cred.sync_with_store().await });
                }
                None => {
                    let name = name.to_string();
                    work.spawn(async move {
                        me.adopt(&name).await;
                        None
                    });
                }
            }
        } else if key.is_empty() {
            work.spawn(async move {
                // One account after another: a reconnect must not fire 10,000 reads at once.
                for a in me.index.load().iter() {
                    a.cred.sync_with_store().await;
                }
                me.relist().await;
                None
            });
        }
    }
}

/// Runs `job` for the account `name` as a task of its own; the account is planned again
/// when it ends, a panic included (logged: the account must not be left unplanned).
fn spawn<F>(work: &mut JoinSet<Option<Arc<str>>>, name: Arc<str>, job: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    work.spawn(async move {
        if AssertUnwindSafe(job).catch_unwind().await.is_err() {
            tracing::error!(account = %name, "an account's renewal panicked; it is planned again");
        }
        Some(name)
    });
}

/// The next change notice of a shared store; never, without one.
async fn next_notice(changes: &mut Option<tokio::sync::broadcast::Receiver<String>>) -> Result<String, RecvError> {
    match changes.as_mut() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
