//! What each grant sends to the token endpoint, as pure functions: URL, `Authorization`
//! header or not, and form fields. No I/O here, so every grant's wire shape (and each
//! `client_auth` mode's exact bytes) is unit-tested.

use std::fmt;

use base64::Engine as _;

use crate::config::{ClientAuth, CredentialConfig, GrantKind};
use crate::secret::Secret;

/// One token endpoint call, ready to send.
pub(crate) struct TokenRequest {
    /// Where to POST.
    pub(crate) url: String,
    /// The whole `Authorization` header value (`Basic …`), when the client authenticates
    /// with one: a secret, as it holds the client secret.
    pub(crate) authorization: Option<Secret>,
    /// Form body fields (values may be secrets, hence the redacting `Debug`).
    pub(crate) form: Vec<(&'static str, String)>,
    /// A short name for logs and metrics (`refresh_token`, `password`, …).
    pub(crate) kind: &'static str,
}

/// Form fields whose values are secrets: a token endpoint that quotes them back in its
/// error text must not get them into logs, `/tokens` or a notification.
const SECRET_FIELDS: [&str; 6] = ["client_secret", "refresh_token", "password", "pat", "code", "code_verifier"];

impl TokenRequest {
    /// The secret values this request carries (form fields and `cfg`'s client secret, also
    /// as `client_auth = "basic_rfc6749"` encodes it), to be blanked out of whatever the
    /// endpoint answers.
    pub(crate) fn secrets<'a>(&'a self, cfg: &'a CredentialConfig) -> Vec<std::borrow::Cow<'a, str>> {
        let mut out: Vec<std::borrow::Cow<'a, str>> = self
            .form
            .iter()
            .filter(|(k, _)| SECRET_FIELDS.contains(k))
            .map(|(_, v)| std::borrow::Cow::Borrowed(v.as_str()))
            .collect();
        if let Some(secret) = &cfg.client_secret {
            out.push(std::borrow::Cow::Borrowed(secret.expose()));
            out.push(std::borrow::Cow::Owned(form_encode(secret.expose())));
        }
        if let Some(header) = &self.authorization {
            if let Some(encoded) = header.expose().strip_prefix("Basic ") {
                out.push(std::borrow::Cow::Borrowed(encoded));
            }
        }
        out
    }
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.form.iter().map(|(k, _)| *k).collect();
        f.debug_struct("TokenRequest")
            .field("url", &self.url)
            .field("authorization", &self.authorization.as_ref().map(|_| "Basic [redacted]"))
            .field("form_keys", &keys)
            .field("kind", &self.kind)
            .finish()
    }
}

/// The client's authentication at the token endpoint, per `client_auth`: the
/// `Authorization` header to send, or (`post`) `client_id` and `client_secret` added to
/// `form`. Nothing without both an id and a secret.
fn client_auth(cfg: &CredentialConfig, form: &mut Vec<(&'static str, String)>) -> Option<Secret> {
    let (Some(id), Some(secret)) = (&cfg.client_id, &cfg.client_secret) else { return None };
    match cfg.client_auth {
        ClientAuth::Basic => Some(basic_header(id, secret.expose())),
        ClientAuth::BasicRfc6749 => Some(basic_header(&form_encode(id), &form_encode(secret.expose()))),
        ClientAuth::Post => {
            form.push(("client_id", id.clone()));
            form.push(("client_secret", secret.expose().to_string()));
            None
        }
    }
}

/// `Basic base64(user:password)` of the bytes as given (standard base64, padded).
fn basic_header(user: &str, password: &str) -> Secret {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Secret::new(format!("Basic {encoded}"))
}

/// `application/x-www-form-urlencoded` of one value (space as `+`), as RFC 6749 §2.3.1
/// asks of a client id and secret before they go into a Basic header.
fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
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
    let authorization = if cfg.grant == GrantKind::Password {
        form.push(("client_id", cfg.client_id.clone().unwrap_or_default()));
        None
    } else {
        client_auth(cfg, &mut form)
    };
    TokenRequest { url: cfg.token_url.clone(), authorization, form, kind: "refresh_token" }
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
    TokenRequest { url: cfg.token_url.clone(), authorization: None, form, kind: "password" }
}

/// GoTo personal access token exchange.
pub(crate) fn personal_access_token(cfg: &CredentialConfig) -> TokenRequest {
    let pat = cfg.pat.as_ref().map(|s| s.expose().to_string()).unwrap_or_default();
    let mut form = with_scope(vec![("grant_type", "personal_access_token".to_string()), ("pat", pat)], cfg);
    let authorization = client_auth(cfg, &mut form);
    TokenRequest { url: cfg.token_url.clone(), authorization, form, kind: "personal_access_token" }
}

/// Generic OAuth client credentials.
pub(crate) fn client_credentials(cfg: &CredentialConfig) -> TokenRequest {
    let mut form = with_scope(vec![("grant_type", "client_credentials".to_string())], cfg);
    let authorization = client_auth(cfg, &mut form);
    TokenRequest { url: cfg.token_url.clone(), authorization, form, kind: "client_credentials" }
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
    let authorization = client_auth(cfg, &mut form);
    TokenRequest { url: cfg.token_url.clone(), authorization, form, kind: "authorization_code" }
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
        assert!(r.authorization.is_none());
        assert_eq!(r.url, crate::config::GOTO_DIRECT_LOGIN_URL);
        assert_eq!(field(&r, "grant_type"), Some("password"));
        assert_eq!(field(&r, "user_id"), Some("u"));
        assert_eq!(field(&r, "client_id"), Some("ck"));
        let rr = refresh(&c, &Secret::new("rt"));
        assert!(rr.authorization.is_none());
        assert_eq!(field(&rr, "client_id"), Some("ck"));
        assert!(!format!("{r:?}").contains("\"p\""));
    }

    #[test]
    fn oauth_refresh_uses_basic() {
        let c = cred("authorization_code", "client_id = \"id\"\nclient_secret = \"sec\"");
        let r = refresh(&c, &Secret::new("rt"));
        assert_eq!(r.authorization.as_ref().unwrap().expose(), "Basic aWQ6c2Vj"); // id:sec
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

    /// A secret with every character RFC 6749's encoding changes, and non-ASCII.
    const HARD_SECRET: &str = "p+ss/w%rd:x=y&z ü";

    fn with_auth(mode: Option<&str>) -> CredentialConfig {
        let mode = mode.map(|m| format!("client_auth = \"{m}\"\n")).unwrap_or_default();
        cred("client_credentials", &format!("client_id = \"my:app\"\nclient_secret = \"{HARD_SECRET}\"\n{mode}"))
    }

    fn decoded_basic(r: &TokenRequest) -> String {
        let header = r.authorization.as_ref().unwrap().expose();
        let b64 = header.strip_prefix("Basic ").unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    }

    #[test]
    fn basic_is_the_default_and_sends_the_raw_values_as_goto_documents() {
        let r = client_credentials(&with_auth(None));
        assert_eq!(
            r.authorization.as_ref().unwrap().expose(),
            "Basic bXk6YXBwOnArc3MvdyVyZDp4PXkmeiDDvA==",
            "base64 of the UTF-8 bytes of `my:app:p+ss/w%rd:x=y&z ü`"
        );
        assert_eq!(decoded_basic(&r), format!("my:app:{HARD_SECRET}"));
        assert_eq!(client_credentials(&with_auth(Some("basic"))).authorization, r.authorization);
        assert!(field(&r, "client_secret").is_none() && field(&r, "client_id").is_none());
    }

    #[test]
    fn basic_rfc6749_form_urlencodes_id_and_secret_first() {
        let r = client_credentials(&with_auth(Some("basic_rfc6749")));
        // `:` in the id cannot be confused with the separator; space is `+`, `+` is `%2B`.
        assert_eq!(decoded_basic(&r), "my%3Aapp:p%2Bss%2Fw%25rd%3Ax%3Dy%26z+%C3%BC");
        assert_eq!(
            r.authorization.as_ref().unwrap().expose(),
            "Basic bXklM0FhcHA6cCUyQnNzJTJGdyUyNXJkJTNBeCUzRHklMjZ6KyVDMyVCQw=="
        );
        assert!(field(&r, "client_secret").is_none());
    }

    #[test]
    fn post_puts_id_and_secret_in_the_form_body() {
        let c = with_auth(Some("post"));
        for r in [client_credentials(&c), refresh(&c, &Secret::new("rt"))] {
            assert!(r.authorization.is_none());
            assert_eq!(field(&r, "client_id"), Some("my:app"));
            assert_eq!(field(&r, "client_secret"), Some(HARD_SECRET));
            assert!(!format!("{r:?}").contains("ss/w"), "{r:?}");
        }
        // The body as reqwest encodes it: application/x-www-form-urlencoded.
        let body = serde_urlencoded_body(&client_credentials(&c));
        assert_eq!(
            body,
            "grant_type=client_credentials&client_id=my%3Aapp&client_secret=p%2Bss%2Fw%25rd%3Ax%3Dy%26z+%C3%BC"
        );
    }

    #[test]
    fn every_oauth_grant_authenticates_the_same_way() {
        let c = cred(
            "authorization_code",
            &format!("client_id = \"id\"\nclient_secret = \"{HARD_SECRET}\"\nclient_auth = \"basic_rfc6749\""),
        );
        let code = authorization_code(&c, "abc", "http://127.0.0.1/cb", None);
        let renew = refresh(&c, &Secret::new("rt"));
        assert_eq!(code.authorization, renew.authorization);
        assert!(!format!("{code:?}").contains("Basic aWQ"), "{code:?}");
    }

    fn serde_urlencoded_body(r: &TokenRequest) -> String {
        url::form_urlencoded::Serializer::new(String::new()).extend_pairs(r.form.iter().map(|(k, v)| (*k, v))).finish()
    }

    #[test]
    fn every_secret_a_request_carries_is_listed_for_blanking() {
        let c = cred(
            "authorization_code",
            "client_id = \"id\"\nclient_secret = \"s e/c+ret\"\nclient_auth = \"basic_rfc6749\"",
        );
        let r = refresh(&c, &Secret::new("the-refresh-token"));
        let listed: Vec<String> = r.secrets(&c).into_iter().map(|s| s.into_owned()).collect();
        assert!(listed.contains(&"the-refresh-token".to_string()), "{listed:?}");
        assert!(listed.contains(&"s e/c+ret".to_string()), "the raw client secret");
        assert!(listed.contains(&"s+e%2Fc%2Bret".to_string()), "as basic_rfc6749 encodes it");
        let header = r.authorization.as_ref().unwrap().expose().strip_prefix("Basic ").unwrap().to_string();
        assert!(listed.contains(&header), "the Basic header's credentials");
        assert!(!listed.iter().any(|s| s == "refresh_token" || s == "id"), "names and the client id are not secrets");
    }
}
