//! The state a credential shares with the data path's [`super::TokenHandle`]s: the
//! current token (an `ArcSwap`, read with one `load`), the wake-up for requests waiting
//! for one, the generation counters that keep rejections single-flight, and the renewal
//! status that explains a missing token. No source, store or renewal logic lives here:
//! the refresher writes this state, handles read it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use prometheus::IntCounterVec;
use tokio::sync::watch;

use super::{deadline_in, Token};

/// A failed renewal, in words safe to show (no secrets).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub(crate) struct RefreshError {
    /// What went wrong and what to do.
    pub message: String,
    /// True when only a person can fix it (`login`).
    pub needs_login: bool,
}

/// The refresher's bookkeeping: written by renewals, shown by `/tokens`, and read by
/// [`TokenSlot::why_unavailable`].
#[derive(Debug, Default, Clone)]
pub(super) struct Status {
    /// Last successful renewal.
    pub(super) last_refresh: Option<SystemTime>,
    /// The planned renewal; only the refresh schedule writes it, and never for a token
    /// that does not expire (a `static` credential's).
    pub(super) next_refresh: Option<SystemTime>,
    /// Failed (or deferred) renewals since the last success: the backoff.
    pub(super) consecutive_failures: u32,
    /// The last failure, in words safe to show.
    pub(super) last_error: Option<String>,
    /// The token endpoint's `Retry-After`: no call before this.
    pub(super) not_before: Option<SystemTime>,
    /// When the token endpoint was last called (`MIN_RENEWAL_SPACING`).
    pub(super) last_call: Option<tokio::time::Instant>,
}

/// One credential's current token and what the data path needs around it; shared (by
/// `Arc`) between the [`super::Credential`] and its handles.
pub(super) struct TokenSlot {
    /// The credential's name, for errors and logs.
    pub(super) name: String,
    /// The token served now.
    pub(super) current: ArcSwapOption<Token>,
    /// Bumped on every publish and failed renewal; waiting requests watch it.
    pub(super) changed: watch::Sender<u64>,
    /// The last generation given to a published token.
    pub(super) generation: AtomicU64,
    /// The newest token generation whose rejection was already answered with a renewal
    /// (or that was rejected right after such a renewal): its later rejections pass
    /// through instead of renewing again (a rejected token renews at most once).
    pub(super) renewed_on_rejection: AtomicU64,
    /// True while only a person can make a token (`login`): waiting is pointless.
    pub(super) needs_login: AtomicBool,
    /// Renewal bookkeeping.
    pub(super) status: Mutex<Status>,
    /// `goto_auth_proxy_token_refreshes_total`, for the one outcome reported from here
    /// (`rejection_passed`); no other metric is reachable from a handle.
    refreshes: IntCounterVec,
}

impl TokenSlot {
    /// An empty slot for credential `name`; `refreshes` counts passed-through rejections.
    pub(super) fn new(name: String, refreshes: IntCounterVec) -> TokenSlot {
        TokenSlot {
            name,
            current: ArcSwapOption::empty(),
            changed: watch::channel(0).0,
            generation: AtomicU64::new(0),
            renewed_on_rejection: AtomicU64::new(0),
            needs_login: AtomicBool::new(false),
            status: Mutex::new(Status::default()),
            refreshes,
        }
    }

    /// The hot path's read: one `ArcSwap::load`, no lock, no reference count.
    #[inline]
    pub(super) fn load(&self) -> arc_swap::Guard<Option<Arc<Token>>> {
        self.current.load()
    }

    /// The current token if it may still be sent.
    pub(super) fn valid_token(&self) -> Option<Arc<Token>> {
        self.current.load_full().filter(|t| t.is_valid_at(SystemTime::now()))
    }

    /// The generation the next published token gets.
    pub(super) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Wakes everyone waiting on [`TokenSlot::changed`] without a new token (a failure:
    /// waiters look again and may give up with its reason).
    pub(super) fn wake(&self) {
        self.changed.send_modify(|_| {});
    }

    /// Waits up to `timeout` for a valid token; the error says why there is none.
    pub(super) async fn wait_valid(&self, timeout: Duration) -> Result<Arc<Token>, String> {
        let mut rx = self.changed.subscribe();
        let deadline = deadline_in(timeout);
        loop {
            if let Some(t) = self.valid_token() {
                return Ok(t);
            }
            if self.needs_login.load(Ordering::Relaxed) {
                return Err(self.why_unavailable());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(self.why_unavailable()),
            }
        }
    }

    /// Why no valid token is held, for 503 bodies and `/readyz`.
    pub(super) fn why_unavailable(&self) -> String {
        let last_error = self.status.lock().ok().and_then(|s| s.last_error.clone());
        match (self.current.load().is_some(), last_error) {
            (_, Some(e)) => format!("credential {:?} has no valid token: {e}", self.name),
            (true, None) => format!("credential {:?}: the token expired and its renewal is under way", self.name),
            (false, None) => format!("credential {:?}: the first token is still being obtained", self.name),
        }
    }

    /// A rejection that renews nothing: the token was already renewed once for one.
    pub(super) fn rejection_passed(&self, generation: u64) -> RefreshError {
        self.refreshes.with_label_values(&[self.name.as_str(), "rejection_passed"]).inc();
        tracing::info!(credential = %self.name, generation, "the upstream rejected a token that was already renewed once for a rejection (or was rejected as soon as it was issued): passing the answer through, not renewing again");
        RefreshError {
            message: "the token was already renewed once for a rejection; the upstream's answer is passed through"
                .into(),
            needs_login: false,
        }
    }

    /// Reports that a token issued for a rejection was itself rejected at once (the
    /// request's retry): the path, not the token, is refused, so its later rejections
    /// pass through instead of renewing again.
    pub(super) fn rejected_again(&self, generation: u64) {
        if self.renewed_on_rejection.fetch_max(generation, Ordering::AcqRel) < generation {
            self.refreshes.with_label_values(&[self.name.as_str(), "rejection_passed"]).inc();
            tracing::info!(credential = %self.name, generation, "a token renewed for a rejection was rejected too: the request is refused for another reason; not renewing again for it");
        }
    }
}
