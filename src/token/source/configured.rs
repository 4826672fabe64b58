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
    pub(super) fn new(token: Secret) -> ConfiguredToken {
        ConfiguredToken { token }
    }

    /// The token, as a token endpoint would answer it: living [`MAX_LIFETIME`], the
    /// longest believed (so, for as long as anything is planned).
    pub(super) fn answer(&self) -> TokenResponse {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_configured_token_loads_living_a_year_and_nothing_is_ever_stored() {
        let configured = ConfiguredToken::new(Secret::new("tok"));
        let before = SystemTime::now();
        let loaded = configured.load("s").await.unwrap().expect("the configured token");
        assert_eq!(loaded.access_token, "tok");
        assert!(loaded.expires_at_time() >= later(before, MAX_LIFETIME - Duration::from_secs(1)));

        let mut other = loaded.clone();
        other.access_token = "something else".into();
        other.version = 7;
        assert!(matches!(configured.save("s", &other).await.unwrap(), Saved::Stored(7)));
        assert_eq!(configured.load("s").await.unwrap().unwrap().access_token, "tok", "nothing was written");
        assert!(!configured.is_shared(), "no other process renews a configured token");
        assert_eq!(configured.answer().expires_in, Some(MAX_LIFETIME.as_secs()));
    }
}
