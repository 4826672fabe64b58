//! The refresh loop: one task per credential (`app` supervises it and starts it again
//! should it end). It renews on schedule, follows the shared store's news in between,
//! and answers the rejections the data path reports through its handles, so every
//! renewal runs here and none on a data-path thread.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;

use super::coordinate::next_change;
use super::schedule::{not_before_clamp, refresh_delay};
use super::{Credential, Trigger};
use crate::token::handle::{OpenInbox, Report};
use crate::token::{deadline_in, later};

/// How often a credential that waits for a person reads the store for a token someone
/// else obtained (no token endpoint call).
pub(crate) const SIGN_IN_CHECK: Duration = Duration::from_secs(30);

/// The renewal planned by the loop, kept while the token and the failure count stay:
/// store polls wake the loop often, and planning again each time would keep pushing a
/// half-life renewal later.
#[derive(Clone, Copy)]
pub(crate) struct Plan {
    generation: u64,
    failures: u32,
    pub(crate) when: Instant,
    /// The second booked in the credential's [`Calendar`](super::schedule::Calendar).
    booked: Option<u64>,
}

impl Credential {
    /// The refresh loop: sleeps until the next renewal, renews, repeats; follows the
    /// shared store's notifications in between; renews the rejections reported through
    /// [`Credential::handle`]s. Returns only once `shutdown` is cancelled.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // The inbox stays with this loop for its life, and passes to the next one a
        // supervisor starts should this one panic.
        let mut inbox = tokio::select! {
            _ = shutdown.cancelled() => return,
            inbox = self.inbox.open() => inbox,
        };
        self.renew_on_schedule(&mut inbox, &shutdown).await;
    }

    /// Renews a reported rejection (single-flight: reports of a token already renewed
    /// get the newer one) and answers the request that reported it.
    pub(in crate::token) async fn answer(&self, report: Report) {
        let answer = Box::pin(self.refresh(Trigger::Rejected(report.generation()))).await;
        report.answer(answer);
    }

    async fn renew_on_schedule(&self, inbox: &mut OpenInbox<'_>, shutdown: &CancellationToken) {
        // Every publish (whoever renewed: this loop, `POST /refresh`, a rejection, a
        // `login`, a replica) and every failure wakes the loop to plan again.
        let mut published = self.slot.changed.subscribe();
        let mut changes = self.peers.store().changes();
        let mut poll = self.peers.store().poll_interval().map(|every| {
            let mut i = tokio::time::interval_at(deadline_in(every), every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut plan: Option<Plan> = None;
        loop {
            let next = self.plan(plan);
            plan = Some(next);
            // Waiting for a person: no renewal is due, only the store is looked at now and
            // then (a `login` that could not tell this process, a replica's sign-in).
            let waiting = self.awaits_a_person();
            let when = if waiting { deadline_in(SIGN_IN_CHECK) } else { next.when };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(when) => {}
                _ = published.changed() => continue,
                report = inbox.next() => {
                    Box::pin(self.answer(report)).await;
                    continue;
                }
                _ = next_change(&mut changes, self.key()) => {
                    Box::pin(self.sync_with_store()).await;
                    continue;
                }
                _ = tick(&mut poll) => {
                    Box::pin(self.sync_with_store()).await;
                    continue;
                }
            }
            if waiting {
                Box::pin(self.sync_with_store()).await;
                continue;
            }
            plan = None;
            // Failures are recorded and logged inside; the loop's backoff handles them.
            // Boxed, like every renewal or store read here: a loop waits far more than it
            // works, and 10,000 accounts' idle loops must each stay small.
            let _outcome = Box::pin(self.refresh(Trigger::Scheduled(next.generation))).await;
        }
    }

    /// The renewal to wait for: `previous` while it was planned for the same token and
    /// failure count, else a new one (noted as `next_refresh` for `/tokens`).
    pub(crate) fn plan(&self, previous: Option<Plan>) -> Plan {
        let (failures, not_before) =
            self.slot.status.lock().map(|s| (s.consecutive_failures, s.not_before)).unwrap_or_default();
        let current = self.slot.current.load_full();
        let generation = current.as_ref().map_or(0, |t| t.generation);
        match previous {
            Some(p) if p.generation == generation && p.failures == failures => p,
            replaced => {
                if let (Some(cal), Some(second)) = (&self.calendar, replaced.and_then(|p| p.booked)) {
                    cal.release(second);
                }
                let now = SystemTime::now();
                let expires_at = current.as_ref().map(|t| t.expires_at);
                let delay = refresh_delay(now, expires_at, self.cfg.refresh_before, failures, rand::random::<f64>());
                let delay = not_before_clamp(delay, now, not_before);
                let waiting = self.awaits_a_person();
                // An account books its renewal in the credential's calendar, so the
                // accounts' renewals stay under `token_rate` without running late.
                let left = expires_at.and_then(|e| e.duration_since(now).ok());
                let (delay, booked) = match (&self.calendar, left) {
                    (Some(cal), Some(left)) if failures == 0 && !waiting && !delay.is_zero() => {
                        let (d, second) = cal.book(now, delay, left.checked_div(10).unwrap_or_default().min(delay));
                        (d, Some(second))
                    }
                    _ => (delay, None),
                };
                if let Ok(mut s) = self.slot.status.lock() {
                    // None is planned while only a person can help, nor for a token
                    // that does not expire (a configured one).
                    s.next_refresh = (!waiting && self.source.expires()).then(|| later(now, delay));
                }
                Plan { generation, failures, when: deadline_in(delay), booked }
            }
        }
    }
}

impl Plan {
    /// The generation of the token it renews.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
}

impl Credential {
    /// Gives back the calendar second `plan` booked (an account removed before its
    /// renewal).
    pub(crate) fn unplan(&self, plan: &Plan) {
        if let (Some(cal), Some(second)) = (&self.calendar, plan.booked) {
            cal.release(second);
        }
    }
}

/// The next tick of the store's poll; never, when the store is not polled.
async fn tick(poll: &mut Option<Interval>) {
    match poll.as_mut() {
        Some(p) => {
            p.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}
