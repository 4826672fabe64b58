//! The mock's book of what it issued: access tokens, refresh tokens, authorization codes,
//! and the refresh chains that tie them together (GoTo's rotation rules live here).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::random_token;

/// Which application a token belongs to: Direct Login revokes every other token of its
/// own application when it issues one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum App {
    OAuth,
    DirectLogin,
}

/// An access token: valid until `expires`, member of a refresh chain, owned by a user
/// (an index into the mock's users).
pub(super) struct AccessEntry {
    pub(super) app: App,
    pub(super) expires: Instant,
    pub(super) chain: u64,
    pub(super) user: usize,
}

/// A refresh token, its chain and its user.
pub(super) struct RefreshEntry {
    pub(super) app: App,
    pub(super) chain: u64,
    pub(super) user: usize,
    /// Set once rotated: the token stays usable until its successor proves received.
    pub(super) superseded: bool,
}

/// An authorization code waiting to be exchanged, and who signed in for it.
pub(super) struct CodeEntry {
    pub(super) redirect_uri: String,
    pub(super) challenge: Option<String>,
    pub(super) user: usize,
}

/// Every live token and code, and the codes already exchanged.
#[derive(Default)]
pub(super) struct Tokens {
    pub(super) access: HashMap<String, AccessEntry>,
    pub(super) refresh: HashMap<String, RefreshEntry>,
    pub(super) codes: HashMap<String, CodeEntry>,
    pub(super) used_codes: Vec<String>,
    next_chain: u64,
}

impl Tokens {
    /// A new refresh chain (a sign-in, a login, a token with no refresh token).
    pub(super) fn new_chain(&mut self) -> u64 {
        self.next_chain += 1;
        self.next_chain
    }

    /// Kills every token of `app`.
    pub(super) fn revoke_app(&mut self, app: App) {
        self.access.retain(|_, a| a.app != app);
        self.refresh.retain(|_, r| r.app != app);
    }

    /// Kills the access tokens of `chain`.
    pub(super) fn revoke_chain(&mut self, chain: u64) {
        self.access.retain(|_, a| a.chain != chain);
    }

    /// A token of `chain` was used: its client has the newest tokens, so the rotated
    /// refresh tokens of the chain die for good.
    pub(super) fn confirm_chain(&mut self, chain: u64) {
        self.refresh.retain(|_, r| r.chain != chain || !r.superseded);
    }

    /// A refresh token of `app` on a new chain, as if `user` had signed in.
    pub(super) fn mint_refresh(&mut self, app: App, user: usize) -> String {
        let chain = self.new_chain();
        let rt = format!("mock-rt-{}", random_token(18));
        self.refresh.insert(rt.clone(), RefreshEntry { app, chain, user, superseded: false });
        rt
    }

    /// Issues an access token of `app` for `user` on `chain` living `lifetime`, and with
    /// `with_refresh` a refresh token of the chain.
    pub(super) fn issue(
        &mut self,
        app: App,
        (chain, user): (u64, usize),
        lifetime: Duration,
        with_refresh: bool,
    ) -> (String, Option<String>) {
        let at = format!("mock-at-{}", random_token(18));
        self.access.insert(at.clone(), AccessEntry { app, expires: Instant::now() + lifetime, chain, user });
        let rt = with_refresh.then(|| {
            let rt = format!("mock-rt-{}", random_token(18));
            self.refresh.insert(rt.clone(), RefreshEntry { app, chain, user, superseded: false });
            rt
        });
        (at, rt)
    }
}
