//! [`TokenHandle`]: all the data path holds of a credential. It reads the current
//! token, waits (bounded) for one, and reports a rejection; nothing else (no token
//! source, no store, no metrics) is reachable from it.
//!
//! A rejection is renewed on the refresher's side, never on the data-path thread that
//! saw it: the handle sends the rejected generation to the credential's [`Inbox`], which
//! the credential's refresh loop (the task `app` supervises) answers with
//! `Credential::refresh(Trigger::Rejected(generation))`. Requests rejected together
//! queue there, so the first one renews and the others find the newer token (one token
//! call for any number of them). The data-path threads run small current-thread
//! runtimes; the token call, its store write and its coordination run on the
//! refresher's runtime instead.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::slot::{RefreshError, TokenSlot};
use super::Token;

/// What the refresh loop answers a reported rejection with.
pub(super) type Answer = Result<Arc<Token>, RefreshError>;

/// A rejection reported by the data path, waiting for the refresh loop.
pub(super) struct Report {
    /// The generation of the token the upstream rejected.
    generation: u64,
    /// Whose token it was (an account set's inbox is shared by all its accounts).
    from: Arc<TokenSlot>,
    /// Where the renewed token (or why there is none) goes.
    reply: oneshot::Sender<Answer>,
}

impl Report {
    /// The generation of the rejected token.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// The store key of the credential (or `credential/account`) whose token it was.
    pub(super) fn key(&self) -> &str {
        &self.from.name
    }

    /// Sends the outcome to the request that reported the rejection.
    pub(super) fn answer(self, answer: Answer) {
        if self.reply.send(answer).is_err() {
            // The request ended meanwhile (its client went away): nobody to tell.
            tracing::debug!(generation = self.generation, "a rejection's reporter left before its answer");
        }
    }
}

/// The refresher's end of a credential's rejection reports. Held by the credential (an
/// account set's by the set, shared by its accounts), so a refresh loop started again
/// after a panic finds the same queue.
pub(super) struct Inbox {
    /// Cloned into every handle.
    tx: mpsc::UnboundedSender<Report>,
    /// Taken by the running refresh loop for its whole life ([`Inbox::open`]).
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Report>>,
    /// True while a refresh loop holds the queue: a handle reports only then, and gives
    /// up when it stops (a report must never wait for a loop that is gone).
    open: watch::Sender<bool>,
}

impl Inbox {
    /// A queue nobody answers yet.
    pub(super) fn new() -> Inbox {
        // Unbounded: one report per request in flight at most, and requests in flight
        // are bounded (`max_concurrent_requests`); a report never waits to be queued.
        let (tx, rx) = mpsc::unbounded_channel();
        Inbox { tx, rx: tokio::sync::Mutex::new(rx), open: watch::channel(false).0 }
    }

    /// A handle reading `slot` and reporting here.
    pub(super) fn handle(&self, slot: &Arc<TokenSlot>) -> TokenHandle {
        TokenHandle { slot: slot.clone(), reports: self.tx.clone(), renewer: self.open.subscribe() }
    }

    /// Takes the queue for the calling refresh loop (waiting while another loop holds
    /// it); it is handed back, and handles stop waiting on it, when the result drops.
    pub(super) async fn open(&self) -> OpenInbox<'_> {
        let rx = self.rx.lock().await;
        self.open.send_replace(true);
        OpenInbox { rx, open: &self.open }
    }
}

/// The queue while a refresh loop holds it.
pub(super) struct OpenInbox<'a> {
    rx: tokio::sync::MutexGuard<'a, mpsc::UnboundedReceiver<Report>>,
    open: &'a watch::Sender<bool>,
}

impl OpenInbox<'_> {
    /// The next report whose request still waits (one whose request is gone renews
    /// nothing). Cancel-safe: a report is taken only when returned.
    pub(super) async fn next(&mut self) -> Report {
        loop {
            match self.rx.recv().await {
                Some(r) if r.reply.is_closed() => continue,
                Some(r) => return r,
                // Never: the inbox itself holds a sender.
                None => return std::future::pending().await,
            }
        }
    }
}

impl Drop for OpenInbox<'_> {
    fn drop(&mut self) {
        // The loop ended (stopped, or panicked): waiting reporters give up now.
        self.open.send_replace(false);
    }
}

/// The data path's view of one credential: read the current token, wait for one,
/// report a rejection. Cheap to clone (three reference counts).
#[derive(Clone)]
pub(crate) struct TokenHandle {
    slot: Arc<TokenSlot>,
    reports: mpsc::UnboundedSender<Report>,
    /// Whether a refresh loop answers reports.
    renewer: watch::Receiver<bool>,
}

impl TokenHandle {
    /// The credential's name, for logs and errors.
    pub(crate) fn name(&self) -> &str {
        &self.slot.name
    }

    /// The hot path's read: one `ArcSwap::load`, no lock, no reference count taken.
    #[inline]
    pub(crate) fn load(&self) -> arc_swap::Guard<Option<Arc<Token>>> {
        self.slot.load()
    }

    /// Waits up to `timeout` for a valid token; the error says why there is none.
    pub(crate) async fn wait_valid(&self, timeout: Duration) -> Result<Arc<Token>, String> {
        self.slot.wait_valid(timeout).await
    }

    /// The upstream rejected the token of `generation`: the credential's refresh loop
    /// renews it (once, however many requests report it) and the renewed token comes
    /// back. Never renews on the calling thread; an error when the renewal failed, was
    /// already done once for this token, or no refresh loop is running.
    pub(crate) async fn rejected(&self, generation: u64) -> Result<Arc<Token>, RefreshError> {
        let mut renewer = self.renewer.clone();
        if !*renewer.borrow_and_update() {
            return Err(self.not_running());
        }
        let (reply, answer) = oneshot::channel();
        if self.reports.send(Report { generation, from: self.slot.clone(), reply }).is_err() {
            return Err(self.not_running());
        }
        tokio::select! {
            biased;
            answer = answer => answer.unwrap_or_else(|_| Err(self.not_running())),
            _ = renewer.wait_for(|open| !open) => Err(self.not_running()),
        }
    }

    /// A token issued for a rejection was rejected at once too (the request's retry):
    /// the path, not the token, is refused, so its later rejections pass through.
    pub(crate) fn rejected_again(&self, generation: u64) {
        self.slot.rejected_again(generation);
    }

    fn not_running(&self) -> RefreshError {
        tracing::warn!(credential = %self.name(), "a rejected token was reported, but the credential's renewal task is not running");
        RefreshError {
            message: format!(
                "the renewal task of credential {:?} is not running; the token was not renewed",
                self.name()
            ),
            needs_login: false,
        }
    }
}

impl std::fmt::Debug for TokenHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenHandle").field("credential", &self.slot.name).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
