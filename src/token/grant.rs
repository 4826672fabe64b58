//! What each grant sends to the token endpoint, as pure functions: URL, Basic header or
//! not, and form fields. No I/O here, so every grant's wire shape is unit-tested.

use std::fmt;

use crate::config::{CredentialConfig, GrantKind};
use crate::secret::Secret;

/// One token endpoint call, ready to send.
pub(crate) struct TokenRequest {
    /// Where to POST.
    pub(crate) url: String,
    /// `Authorization: Basic base64(client_id:client_secret)`, when the grant uses it.
    pub(crate) basic: Option<(String, Secret)>,
    /// Form body fields (values may be secrets, hence the redacting `Debug`).
    pub(crate) form: Vec<(&'static str, String)>,
    /// A short name for logs and metrics (`refresh_token`, `password`, …).
    pub(crate) kind: &'static str,
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.form.iter().map(|(k, _)| *k).collect();
        f.debug_struct("TokenRequest")
            .field("url", &self.url)
            .field("basic", &self.basic.as_ref().map(|(id, _)| id))
            .field("form_keys", &keys)
            .field("kind", &self.kind)
            .finish()
    }
}

fn basic(cfg: &CredentialConfig) -> Option<(String, Secret)> {
    match (&cfg.client_id, &cfg.client_secret) {
        (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
        _ => None,
    }
}

fn with_scope(mut form: Vec<(&'static str, String)>, cfg: &CredentialConfig) -> Vec<(&'static str, String)> {
    if let Some(scope) = &cfg.scope {
        form.push(("scope", scope.clone()));
    }
    form
}

/// Renew with a refresh token. Direct Login (password grant) posts `client_id` in the
/// form with no Basic header; OAuth grants use the Basic header.
pub(crate) fn refresh(cfg: &CredentialConfig, refresh_token: &Secret) -> TokenRequest {
    let mut form =
        vec![("grant_type", "refresh_token".to_string()), ("refresh_token", refresh_token.expose().to_string())];
    let basic = if cfg.grant == GrantKind::Password {
        form.push(("client_id", cfg.client_id.clone().unwrap_or_default()));
        None
    } else {
        basic(cfg)
    };
    TokenRequest { url: cfg.token_url.clone(), basic, form, kind: "refresh_token" }
}

/// GoToAssist Corporate Direct Login: user id, password and consumer key, no Basic header.
pub(crate) fn password(cfg: &CredentialConfig) -> TokenRequest {
    let expose = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_string()).unwrap_or_default();
    let form = vec![
        ("grant_type", "password".to_string()),
        ("user_id", expose(&cfg.username)),
        ("password", expose(&cfg.password)),
        ("client_id", cfg.client_id.clone().unwrap_or_default()),
    ];
    TokenRequest { url: cfg.token_url.clone(), basic: None, form, kind: "password" }
}

/// GoTo personal access token exchange.
pub(crate) fn personal_access_token(cfg: &CredentialConfig) -> TokenRequest {
    let pat = cfg.pat.as_ref().map(|s| s.expose().to_string()).unwrap_or_default();
    let form = with_scope(vec![("grant_type", "personal_access_token".to_string()), ("pat", pat)], cfg);
    TokenRequest { url: cfg.token_url.clone(), basic: basic(cfg), form, kind: "personal_access_token" }
}

/// Generic OAuth client credentials.
pub(crate) fn client_credentials(cfg: &CredentialConfig) -> TokenRequest {
    let form = with_scope(vec![("grant_type", "client_credentials".to_string())], cfg);
    TokenRequest { url: cfg.token_url.clone(), basic: basic(cfg), form, kind: "client_credentials" }
}

/// Authorization code exchange; `redirect_uri` must equal the one sent to authorize.
pub(crate) fn authorization_code(
    cfg: &CredentialConfig,
    code: &str,
    redirect_uri: &str,
    verifier: Option<&str>,
) -> TokenRequest {
    let mut form = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code.to_string()),
        ("redirect_uri", redirect_uri.to_string()),
    ];
    if let Some(v) = verifier {
        form.push(("code_verifier", v.to_string()));
    }
    TokenRequest { url: cfg.token_url.clone(), basic: basic(cfg), form, kind: "authorization_code" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cred(grant: &str, extra: &str) -> CredentialConfig {
        let text = format!("[credentials.c]\ngrant = \"{grant}\"\n{extra}\n");
        let c = Config::parse("t.toml", &text).unwrap();
        (*c.credentials["c"]).clone()
    }

    fn field<'a>(r: &'a TokenRequest, k: &str) -> Option<&'a str> {
        r.form.iter().find(|(key, _)| *key == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn direct_login_posts_form_without_basic() {
        let c = cred("password", "client_id = \"ck\"\nusername = \"u\"\npassword = \"p\"");
        let r = password(&c);
        assert!(r.basic.is_none());
        assert_eq!(r.url, crate::config::GOTO_DIRECT_LOGIN_URL);
        assert_eq!(field(&r, "grant_type"), Some("password"));
        assert_eq!(field(&r, "user_id"), Some("u"));
        assert_eq!(field(&r, "client_id"), Some("ck"));
        let rr = refresh(&c, &Secret::new("rt"));
        assert!(rr.basic.is_none());
        assert_eq!(field(&rr, "client_id"), Some("ck"));
        assert!(!format!("{r:?}").contains("\"p\""));
    }

    #[test]
    fn oauth_refresh_uses_basic() {
        let c = cred("authorization_code", "client_id = \"id\"\nclient_secret = \"sec\"");
        let r = refresh(&c, &Secret::new("rt"));
        assert_eq!(r.basic.as_ref().unwrap().0, "id");
        assert_eq!(field(&r, "refresh_token"), Some("rt"));
        assert!(field(&r, "client_id").is_none());
        assert!(!format!("{r:?}").contains("sec"));
    }

    #[test]
    fn pat_and_client_credentials() {
        let c = cred(
            "personal_access_token",
            "client_id = \"id\"\nclient_secret = \"s\"\npat = \"thepat\"\nscope = \"collab:\"",
        );
        let r = personal_access_token(&c);
        assert_eq!(field(&r, "pat"), Some("thepat"));
        assert_eq!(field(&r, "scope"), Some("collab:"));
        let c = cred("client_credentials", "client_id = \"id\"\nclient_secret = \"s\"");
        assert_eq!(field(&client_credentials(&c), "grant_type"), Some("client_credentials"));
    }

    #[test]
    fn code_exchange_carries_redirect_and_verifier() {
        let c = cred("authorization_code", "client_id = \"id\"\nclient_secret = \"sec\"");
        let r = authorization_code(&c, "abc", "http://127.0.0.1:9901/callback", Some("ver"));
        assert_eq!(field(&r, "code"), Some("abc"));
        assert_eq!(field(&r, "redirect_uri"), Some("http://127.0.0.1:9901/callback"));
        assert_eq!(field(&r, "code_verifier"), Some("ver"));
    }
}
