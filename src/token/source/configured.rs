//! A `static` credential's tokens: the one its configuration holds. It is never renewed
//! by a call and never expires on its own, and since the configuration is where it is
//! kept, [`ConfiguredToken`] is the credential's store as well: loading reads it, and
//! nothing is ever written.

use std::time::SystemTime;

use super::TokenResponse;
use crate::secret::Secret;
use crate::token::store::{Saved, StoreError, StoredToken, TokenStore};
use crate::token::{later, Token, MAX_LIFETIME};

/// The configured token of a `static` credential: its source and its store.
pub(crate) struct ConfiguredToken {
    token: Secret,
}

impl ConfiguredToken {
    /// The token `token` as configured.
    pub(crate) fn new(token: Secret) -> ConfiguredToken {
        ConfiguredToken { token }
    }

    /// The token, as a token endpoint would answer it: living [`MAX_LIFETIME`], the
    /// longest believed (so, for as long as anything is planned).
    pub(crate) fn answer(&self) -> TokenResponse {
        TokenResponse::configured(self.token.clone(), MAX_LIFETIME)
    }
}

#[async_trait::async_trait]
impl TokenStore for ConfiguredToken {
    /// The configured token, living [`MAX_LIFETIME`] from now (`Ok(None)`: a token that
    /// cannot be sent, which the renewal then reports).
    async fn load(&self, _credential: &str) -> Result<Option<StoredToken>, StoreError> {
        let now = SystemTime::now();
        Ok(Token::new(self.token.clone(), None, later(now, MAX_LIFETIME), now).ok().map(|t| t.to_stored()))
    }

    /// Keeps nothing: the configuration holds the token.
    async fn save(&self, _credential: &str, token: &StoredToken) -> Result<Saved, StoreError> {
        Ok(Saved::Stored(token.version))
    }

    fn describe(&self) -> String {
        "the configuration".into()
    }

    async fn accounts(&self, _credential: &str) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    async fn remove(&self, _key: &str) -> Result<(), StoreError> {
        Ok(())
    }
}
