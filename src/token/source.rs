//! Talks to token endpoints (reqwest): sends a [`TokenRequest`], parses GoTo's answers
//! (string or number `expires_in`, keys as strings or big integers), and looks up
//! organizer/account keys when a token response lacks them.
//!
//! [`Renewal`] says which kind of source a credential has: its token endpoint, or
//! (`static`) its own config.

mod endpoint;
mod redact;
mod response;

use std::time::Duration;

use crate::config::{CredentialConfig, GrantKind};
use crate::secret::Secret;

pub use endpoint::TokenSource;
pub use response::TokenResponse;
pub(crate) use response::{parse_keys, parse_retry_after, Keys, MAX_RETRY_AFTER};

/// Why a token endpoint call did not yield a token.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Network, TLS or timeout.
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    /// The endpoint refused the grant (OAuth error body).
    #[error("token endpoint refused the {kind} grant: HTTP {status} {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// Which grant was sent.
        kind: &'static str,
        /// HTTP status.
        status: u16,
        /// OAuth `error` code, or `http_error` when the body had none.
        error: String,
        /// OAuth `error_description`.
        description: Option<String>,
        /// `Retry-After` (seconds) of the answer: the earliest the endpoint wants to see
        /// the next call.
        retry_after: Option<Duration>,
    },
    /// The body was not a token response.
    #[error("token endpoint answered something that is not a token: {0}")]
    Malformed(String),
    /// Nothing to renew with: a person must sign in.
    #[error("{0}")]
    NeedsLogin(String),
}

impl SourceError {
    /// True when the grant itself was refused (a dead refresh token, wrong password…),
    /// as opposed to a transient failure worth retrying as is.
    pub fn is_grant_refused(&self) -> bool {
        matches!(self, SourceError::Refused { status, .. } if (400..500).contains(status) && *status != 429)
    }

    /// True when the endpoint refused what the configuration's secret files hold: the
    /// client (`invalid_client`), or a Direct Login password. Before such a refusal
    /// counts, the files are read again ([`TokenSource::obtain`]).
    pub fn is_secret_refused(&self) -> bool {
        matches!(self, SourceError::Refused { error, .. } if error == "invalid_client")
            || matches!(self, SourceError::Refused { kind: "password", .. } if self.is_grant_refused())
    }

    /// True when the endpoint said the grant itself is dead (`invalid_grant`: a revoked
    /// PAT, a wrong password) or the client is not accepted (`invalid_client`, or any
    /// 401): asking again with the same values cannot succeed.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, SourceError::Refused { status, error, .. }
            if error == "invalid_grant" || error == "invalid_client" || *status == 401)
    }

    /// How long the endpoint asked the proxy to wait before calling again, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
/// What renews a credential's token: the refresher asks this, never the grant.
pub(crate) enum Renewal {
    /// `static`: the configured token, served as given and read again at every
    /// renewal. Nothing to call, store, schedule or look keys up for; it never expires
    /// on its own within [`super::MAX_LIFETIME`].
    Static(Secret),
    /// Every other grant: the token endpoint, called through the credential's
    /// [`TokenSource`]; its answers are stored, and the next renewal scheduled.
    Endpoint,
}

impl Renewal {
    /// The kind of source `cfg`'s grant is: the one place the grant decides it.
    pub(crate) fn of(cfg: &CredentialConfig) -> Renewal {
        match cfg.grant {
            GrantKind::Static => Renewal::Static(cfg.token.clone().unwrap_or_else(|| Secret::new(""))),
            _ => Renewal::Endpoint,
        }
    }
}

#[cfg(test)]
mod tests;
