//! The request's credential: the account it chooses, and the token read once.

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::ProxySettings;
use crate::error::{ErrorCode, ProxyError};
use crate::inbound;
use crate::token::accounts::{Account, AccountSet, NoAccount};
use crate::token::{Token, TokenHandle};

/// The header that chooses an account of an account credential (removed before forwarding).
const ACCOUNT_HEADER: &str = "x-goto-account";

/// The account a request to an account credential's route uses ("Many accounts"). An
/// empty `X-GoTo-Account` chooses none, as if absent: Postman sends an unset variable so.
pub(super) fn choose_account(
    set: &AccountSet,
    inbound: &crate::config::InboundSettings,
    parts: &mut http::request::Parts,
) -> Result<Arc<Account>, ProxyError> {
    let header = parts.headers.remove(ACCOUNT_HEADER).filter(|v| !v.is_empty());
    let named = match &header {
        Some(v) => Some(v.to_str().map_err(|_| {
            ProxyError::new(ErrorCode::UnknownAccount, "X-GoTo-Account names no account of this credential")
        })?),
        None => None,
    };
    let chosen = set.choose(named, parts.uri.path(), parts.uri.query()).map_err(|why| match why {
        NoAccount::Unknown => ProxyError::new(
            ErrorCode::UnknownAccount,
            format!("X-GoTo-Account names no account of credential {:?} (`goto-auth-proxy accounts` lists them)", set.name()),
        ),
        NoAccount::Required => ProxyError::new(
            ErrorCode::AccountRequired,
            format!(
                "credential {:?} holds many accounts: choose one with the X-GoTo-Account header (a name, email, organizer or account key), or set default_account",
                set.name()
            ),
        ),
    })?;
    // A client whose inbound key is limited to some accounts uses those only, however
    // the account was chosen (a default one included).
    if let Some(allowed) = inbound::key_accounts(inbound, &parts.headers) {
        if !allowed.iter().any(|a| *a == chosen.name) {
            return Err(ProxyError::new(ErrorCode::Forbidden, "this client's inbound key may not use that account"));
        }
    }
    Ok(chosen)
}

/// `f` on the credential's token if it is valid now (the per-request path: one
/// `ArcSwap` load, no reference count taken); `None` when there is none.
pub(super) fn with_valid_token<R>(cred: &TokenHandle, f: impl FnOnce(&Token) -> R) -> Option<R> {
    cred.load().as_ref().filter(|t| t.is_valid_at(SystemTime::now())).map(|t| f(t))
}

/// Waits (bounded by `token_wait`) for a valid token; only while none is.
pub(super) async fn wait_for_token(cred: &TokenHandle, settings: &ProxySettings) -> Result<Arc<Token>, ProxyError> {
    cred.wait_valid(settings.token_wait).await.map_err(|why| ProxyError::new(ErrorCode::TokenUnavailable, why))
}
