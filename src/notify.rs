//! `[[notify]]`: telling a person when the proxy needs one.
//!
//! Each credential publishes its [`Health`] after every renewal outcome; a watcher per
//! credential turns changes of *condition* into events — `needs_login`,
//! `refresh_failing` (after `after_failures` failures in a row), `recovered` — one per
//! change, never one per retry. Each event is delivered to every `[[notify]]` entry
//! that wants it: a webhook (POST of the event JSON) or a command (argv, never a shell;
//! the event JSON on stdin), each attempt bounded by [`ATTEMPT_TIMEOUT`] and retried
//! with backoff for [`GIVE_UP_AFTER`]. The payload never holds a secret.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{GrantKind, NotifyConfig, NotifyEvent, NotifyTarget};
use crate::metrics::Metrics;
use crate::token::{Credential, Health};

/// How long one delivery attempt (an HTTP POST, a command run) may take.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failing delivery is retried before it is given up (and counted `failed`).
pub(crate) const GIVE_UP_AFTER: Duration = Duration::from_secs(600);
/// The first retry's delay; each later one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What a notification holds, and nothing else (never a secret).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Payload {
    /// `needs_login`, `refresh_failing` or `recovered`.
    pub event: &'static str,
    /// The credential's name.
    pub credential: String,
    /// The account, for an account of an account credential (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Its grant.
    pub grant: &'static str,
    /// What happened, in words.
    pub message: String,
    /// Where a person signs in (authorization-code credentials), else `null`.
    pub login_url: Option<String>,
    /// When (RFC 3339, UTC).
    pub at: String,
}

/// A credential's condition as notifications see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    /// Renewing fine.
    Fine,
    /// Some failures, fewer than `after_failures`: not worth a page yet.
    Wobbly,
    /// `after_failures` or more failures in a row while a token is still served
    /// (the warning comes before clients notice; once none is served they already do).
    Failing,
    /// Only a person can help.
    NeedsLogin,
}

impl Condition {
    fn of(h: &Health, after_failures: u32) -> Condition {
        if h.needs_login {
            Condition::NeedsLogin
        } else if h.consecutive_failures >= after_failures && h.token_served {
            Condition::Failing
        } else if h.consecutive_failures > 0 {
            Condition::Wobbly
        } else {
            Condition::Fine
        }
    }

    fn alarming(self) -> bool {
        matches!(self, Condition::Failing | Condition::NeedsLogin)
    }
}

/// The event a change from `was` to `now` is worth, if any; `now` replaces `was` only
/// when it is returned as the new condition (a wobble after an alarm is still the alarm
/// until a success says otherwise).
fn transition(was: Condition, now: Condition) -> (Condition, Option<NotifyEvent>) {
    match (was, now) {
        (w, n) if w == n => (was, None),
        (_, Condition::NeedsLogin) => (now, Some(NotifyEvent::NeedsLogin)),
        (_, Condition::Failing) => (now, Some(NotifyEvent::RefreshFailing)),
        (w, Condition::Fine) if w.alarming() => (now, Some(NotifyEvent::Recovered)),
        (w, Condition::Wobbly) if w.alarming() => (was, None),
        _ => (now, None),
    }
}

/// Watches credentials and delivers their events to the `[[notify]]` entries in force.
pub(crate) struct Notifier {
    targets: ArcSwap<Vec<NotifyConfig>>,
    /// `http://ADMIN`: the admin listener, where a person signs in.
    admin_base: String,
    /// Posts webhooks: the outbound TLS and proxy settings of the config in force.
    http: ArcSwap<reqwest::Client>,
    metrics: Metrics,
    /// Deliveries in progress (so a stop waits for none of them longer than one attempt).
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Notifier {
    /// A notifier for `targets`, posting webhooks with `http` (built by the caller from
    /// the outbound settings, with [`ATTEMPT_TIMEOUT`]); sign-in links point at the admin
    /// listener `admin`.
    pub(crate) fn new(
        targets: Vec<NotifyConfig>,
        http: reqwest::Client,
        admin: std::net::SocketAddr,
        metrics: Metrics,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> Notifier {
        Notifier {
            targets: ArcSwap::from_pointee(targets),
            admin_base: format!("http://{admin}"),
            http: ArcSwap::from_pointee(http),
            metrics,
            tasks,
            stop,
        }
    }

    /// Replaces the `[[notify]]` entries and the webhook client (a reload); watchers keep
    /// their conditions.
    pub(crate) fn set_targets(&self, targets: Vec<NotifyConfig>, http: reqwest::Client) {
        self.targets.store(Arc::new(targets));
        self.http.store(Arc::new(http));
    }

    /// Follows `cred` until `stop`: each change of condition becomes one event per
    /// entry that wants it.
    pub(crate) async fn watch(self: Arc<Self>, cred: Arc<Credential>, stop: CancellationToken) {
        // An account has no health channel: its set's task calls `Accounts` instead.
        let Some(mut health) = cred.health() else { return };
        // Per entry (each has its own `after_failures`), in entry order; a reload that
        // changes the number of entries starts them all from "fine".
        let mut was: Vec<Condition> = Vec::new();
        // The health as it is when watching starts counts as a change from "fine".
        health.mark_changed();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = health.changed() => if changed.is_err() { return },
            }
            let h = health.borrow_and_update().clone();
            self.observe(&cred, &h, &mut was);
        }
    }

    /// Moves `was` (one condition per entry) to what `h` says, sending each event an
    /// entry wants on the way.
    fn observe(self: &Arc<Self>, cred: &Credential, h: &Health, was: &mut Vec<Condition>) {
        let targets = self.targets.load_full();
        was.resize(targets.len(), Condition::Fine);
        for (target, was) in targets.iter().zip(was.iter_mut()) {
            let (next, event) = transition(*was, Condition::of(h, target.after_failures));
            *was = next;
            let Some(event) = event.filter(|e| target.events.contains(e)) else { continue };
            let payload = self.payload(cred, event, h);
            tracing::info!(credential = %cred.key(), event = event.as_str(), "notifying");
            let (me, target) = (self.clone(), target.clone());
            self.tasks.spawn(async move { me.deliver(&target, &payload).await });
        }
    }

    fn payload(&self, cred: &Credential, event: NotifyEvent, h: &Health) -> Payload {
        let name = cred.key();
        let grant = cred.config().grant;
        let login_url = (grant == GrantKind::AuthorizationCode).then(|| {
            let path = crate::config::login_path(cred.name());
            match cred.account() {
                Some(a) => format!("{}{path}?account={a}", self.admin_base),
                None => format!("{}{path}", self.admin_base),
            }
        });
        let why = h.last_error.as_deref().unwrap_or("no reason given");
        let message = match event {
            NotifyEvent::NeedsLogin => match &login_url {
                Some(url) => format!("{name} cannot renew its token without a person: {why}. Sign in at {url}"),
                None => format!("{name} cannot renew its token without a person: {why}"),
            },
            NotifyEvent::RefreshFailing => format!(
                "{} renewals of {name} in a row failed ({why}); the current token is still served",
                h.consecutive_failures
            ),
            NotifyEvent::Recovered => format!("{name} holds a valid token again"),
        };
        Payload {
            event: event.as_str(),
            credential: cred.name().to_string(),
            account: cred.account().map(str::to_string),
            grant: grant.as_str(),
            message,
            login_url,
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }

    /// Delivers `payload` to `target`, retrying with backoff for [`GIVE_UP_AFTER`];
    /// counts the outcome once.
    async fn deliver(&self, target: &NotifyConfig, payload: &Payload) {
        let body = serde_json::to_vec(payload).unwrap_or_default();
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let outcome = loop {
            let attempt = match &target.target {
                NotifyTarget::Webhook(url) => self.post(url.expose(), &body).await,
                NotifyTarget::Command(argv) => run_command(argv, &body).await,
            };
            match attempt {
                Ok(()) => break "sent",
                Err(why) if started.elapsed() + backoff > GIVE_UP_AFTER => {
                    tracing::error!(credential = %payload.credential, event = payload.event, to = target.describe(), error = %why, "notification given up");
                    break "failed";
                }
                Err(why) => {
                    tracing::warn!(credential = %payload.credential, event = payload.event, to = target.describe(), error = %why, retry_in_secs = backoff.as_secs(), "notification not delivered; retrying");
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => break "failed",
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        self.metrics.notifications.with_label_values(&[payload.event, outcome]).inc();
    }

    /// One POST; a 2xx answer is a delivery. The error never names the URL (a secret).
    async fn post(&self, url: &str, body: &[u8]) -> Result<(), String> {
        let sent = self
            .http
            .load()
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| format!("the webhook could not be reached ({})", e.without_url()))?;
        if sent.status().is_success() {
            Ok(())
        } else {
            Err(format!("the webhook answered {}", sent.status().as_u16()))
        }
    }
}

impl NotifyConfig {
    /// How a log line names this entry: the command's program, never the webhook URL.
    fn describe(&self) -> &str {
        match &self.target {
            NotifyTarget::Webhook(_) => "webhook",
            NotifyTarget::Command(argv) => argv.first().map(String::as_str).unwrap_or("command"),
        }
    }
}

/// Runs `argv` (no shell) with `body` on stdin; success is exit status 0 within
/// [`ATTEMPT_TIMEOUT`] (a program still running then is killed).
async fn run_command(argv: &[String], body: &[u8]) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("the command is empty".into());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A program that does not read its stdin is not an error of ours.
            let _ = stdin.write_all(body).await;
        }
        child.wait().await
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, run).await {
        Err(_) => Err(format!("{program} did not finish within {}s", ATTEMPT_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{program} exited with {status}")),
    }
}

/// Notifications for the accounts of account credentials, without a task or channel per
/// account: each set's task tells it of every outcome. Only accounts that are not fine
/// are remembered, so 10,000 healthy accounts cost nothing here.
pub(crate) struct Accounts {
    notifier: Arc<Notifier>,
    was: std::sync::Mutex<std::collections::HashMap<String, Vec<Condition>>>,
}

impl Accounts {
    /// Follows accounts for `notifier`.
    pub(crate) fn new(notifier: Arc<Notifier>) -> Accounts {
        Accounts { notifier, was: std::sync::Mutex::default() }
    }
}

impl crate::token::accounts::Observer for Accounts {
    fn outcome(&self, account: &Credential) {
        let h = account.health_now();
        let Ok(mut all) = self.was.lock() else { return };
        let mut was = all.remove(account.key()).unwrap_or_default();
        self.notifier.observe(account, &h, &mut was);
        if was.iter().any(|c| *c != Condition::Fine) {
            all.insert(account.key().to_string(), was);
        }
    }

    fn removed(&self, key: &str) {
        if let Ok(mut all) = self.was.lock() {
            all.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Condition::*;

    fn h(needs_login: bool, failures: u32) -> Health {
        Health { needs_login, consecutive_failures: failures, token_served: true, last_error: None }
    }

    fn unserved(failures: u32) -> Health {
        Health { token_served: false, ..h(false, failures) }
    }

    #[test]
    fn one_event_per_change_of_condition_never_per_retry() {
        let mut was = Fine;
        let mut events = Vec::new();
        for health in [
            h(false, 1),
            h(false, 2),
            h(false, 3),
            h(false, 4),
            h(false, 9),
            h(false, 0),
            h(true, 1),
            h(true, 2),
            h(false, 0),
        ] {
            let (next, e) = transition(was, Condition::of(&health, 3));
            was = next;
            events.extend(e);
        }
        assert_eq!(
            events,
            vec![NotifyEvent::RefreshFailing, NotifyEvent::Recovered, NotifyEvent::NeedsLogin, NotifyEvent::Recovered]
        );
    }

    #[test]
    fn a_wobble_without_an_alarm_says_nothing() {
        assert_eq!(transition(Fine, Wobbly), (Wobbly, None));
        assert_eq!(transition(Wobbly, Fine), (Fine, None));
        assert_eq!(transition(Failing, Wobbly), (Failing, None));
    }

    #[test]
    fn refresh_failing_only_while_a_token_is_still_served() {
        // Never held a token (or it expired first): failures alone are no `refresh_failing`.
        assert_eq!(Condition::of(&unserved(5), 3), Wobbly);
        assert_eq!(transition(Fine, Condition::of(&unserved(5), 3)), (Wobbly, None));
        // Warned while it was served, then it expired: still the one alarm, no second event,
        // and `recovered` once renewing works again.
        let (was, e) = transition(Fine, Condition::of(&h(false, 3), 3));
        assert_eq!((was, e), (Failing, Some(NotifyEvent::RefreshFailing)));
        let (was, e) = transition(was, Condition::of(&unserved(4), 3));
        assert_eq!((was, e), (Failing, None));
        assert_eq!(transition(was, Fine), (Fine, Some(NotifyEvent::Recovered)));
    }
}
