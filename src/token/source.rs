//! Where a credential's tokens come from: its token endpoint ([`TokenSource`]), or for
//! a `static` credential the token its configuration holds ([`ConfiguredToken`]).
//! [`Source`] is the one place the grant decides which.
//!
//! * `endpoint` — the token endpoint client: the call, the bounded read, key lookups.
//! * `response` — its answers, parsed as GoTo sends them and checked.
//! * `redact` — error texts from outside, with the secrets sent blanked out.
//! * `configured` — the `static` credential's token: source and store at once.

mod configured;
mod endpoint;
mod redact;
mod response;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::store::TokenStore;
use super::InvalidTokenChars;
use crate::config::{CredentialConfig, GrantKind};
use crate::secret::Secret;

use configured::ConfiguredToken;
pub(crate) use endpoint::{TokenSource, Transport};
use response::Keys;
pub use response::TokenResponse;

/// Why a token endpoint call did not yield a token.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Network, TLS or timeout.
    #[error("token endpoint unreachable: {0}")]
    Unreachable(#[from] Transport),
    /// The client id and secret cannot be sent in a Basic header.
    #[error("token endpoint unreachable: the client credentials do not form a header")]
    ClientCredentials(#[source] http::header::InvalidHeaderValue),
    /// The credential has no token endpoint: its token is configured (`static`).
    #[error("token endpoint unreachable: credential {0:?} is static: it has no token endpoint to call")]
    NoEndpoint(String),
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
    /// The answer's access token cannot be sent in an HTTP header.
    #[error("token endpoint answered something that is not a token: {0}")]
    InvalidToken(#[from] InvalidTokenChars),
    /// Nothing to renew with: a person must sign in.
    #[error("{0}")]
    NeedsLogin(String),
}

impl SourceError {
    /// True when the grant itself was refused (a dead refresh token, wrong password…),
    /// as opposed to a transient failure worth retrying as is.
    pub(crate) fn is_grant_refused(&self) -> bool {
        matches!(self, SourceError::Refused { status, .. } if (400..500).contains(status) && *status != 429)
    }

    /// True when the endpoint refused what the configuration's secret files hold: the
    /// client (`invalid_client`), or a Direct Login password. Before such a refusal
    /// counts, the files are read again ([`TokenSource::obtain`]).
    pub(crate) fn is_secret_refused(&self) -> bool {
        matches!(self, SourceError::Refused { error, .. } if error == "invalid_client")
            || matches!(self, SourceError::Refused { kind: "password", .. } if self.is_grant_refused())
    }

    /// True when the endpoint said the grant itself is dead (`invalid_grant`: a revoked
    /// PAT, a wrong password) or the client is not accepted (`invalid_client`, or any
    /// 401): asking again with the same values cannot succeed.
    pub(crate) fn is_invalid_grant(&self) -> bool {
        matches!(self, SourceError::Refused { status, error, .. }
            if error == "invalid_grant" || error == "invalid_client" || *status == 401)
    }

    /// How long the endpoint asked the proxy to wait before calling again, if it did.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
/// Where a credential's tokens come from; the refresher asks this, never the grant.
pub(crate) enum Source {
    /// Every grant but `static`: the token endpoint. Its answers are stored, and the
    /// next renewal planned before they expire.
    Endpoint(TokenSource),
    /// `static`: the configured token, served as given and read again at every
    /// renewal. Nothing is called, stored or looked up for it; it never expires.
    Configured(Arc<ConfiguredToken>),
}

impl Source {
    /// The source `cfg`'s grant has, calling through `client` when it calls.
    pub(crate) fn of(cfg: &CredentialConfig, client: TokenSource) -> Source {
        match cfg.grant {
            GrantKind::Static => {
                Source::Configured(Arc::new(ConfiguredToken::new(cfg.token.clone().unwrap_or_else(|| Secret::new("")))))
            }
            _ => Source::Endpoint(client),
        }
    }

    /// Where the credential keeps its tokens: `store`, except that a configured token is
    /// kept by the configuration.
    pub(crate) fn store(&self, store: Arc<dyn TokenStore>) -> Arc<dyn TokenStore> {
        match self {
            Source::Endpoint(_) => store,
            Source::Configured(configured) => configured.clone(),
        }
    }

    /// A new token: the token endpoint's answer once `turn` (the call's place in the
    /// credential's spacing) has come, or the configured token at once. `refresh_token`
    /// is the newest one held.
    pub(crate) async fn obtain(
        &self,
        refresh_token: Option<&Secret>,
        turn: impl Future<Output = ()>,
    ) -> Result<TokenResponse, SourceError> {
        match self {
            Source::Endpoint(client) => {
                turn.await;
                client.obtain(refresh_token).await
            }
            Source::Configured(configured) => Ok(configured.answer()),
        }
    }

    /// Organizer/account keys for `access_token`, where they can be looked up.
    pub(crate) async fn fetch_keys(&self, access_token: &Secret) -> Option<Keys> {
        match self {
            Source::Endpoint(client) => client.fetch_keys(access_token).await,
            Source::Configured(_) => None,
        }
    }

    /// Whether its tokens expire, so that a renewal is planned: a configured one does not.
    pub(crate) fn expires(&self) -> bool {
        matches!(self, Source::Endpoint(_))
    }
}

#[cfg(test)]
mod tests;
