//! Who signed in, read from an OpenID `id_token` for display only (`/tokens`, the status
//! page): the JWT's payload is base64url-decoded and its `email` and `sub` claims taken.
//! The signature is NOT checked, so nothing here is ever trusted for anything but
//! showing an operator a name: no decision (routing, authorization, which token to use)
//! may depend on it. The token endpoint answered over the credential's own TLS
//! connection; that is all the trust a label needs. The claims are outside text: the
//! caller checks them as any principal ([`super::key::first_principal`]).

use base64::Engine as _;

/// The `email` and `sub` claims of `id_token`'s payload (in that order, named as fields
/// for warnings), when it decodes; a claim that is no string is absent.
pub(crate) fn principal_claims(id_token: &str) -> [(&'static str, Option<String>); 2] {
    let claims: Option<serde_json::Value> = id_token
        .split('.')
        .nth(1)
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let claim = |name: &str| match claims.as_ref().and_then(|c| c.get(name)) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    [("id_token.email", claim("email")), ("id_token.sub", claim("sub"))]
}

#[cfg(test)]
mod tests {
    use super::super::key::{first_principal, Dropped};
    use super::*;

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2lnbmF0dXJl", b64(r#"{"alg":"RS256","kid":"k"}"#), b64(payload))
    }

    fn principal(id_token: &str) -> (Option<String>, Vec<Dropped>) {
        let mut dropped = Vec::new();
        (first_principal(principal_claims(id_token), &mut dropped), dropped)
    }

    #[test]
    fn email_first_then_sub() {
        assert_eq!(
            principal(&jwt(r#"{"sub":"248289761001","email":"jane@example.com"}"#)).0.as_deref(),
            Some("jane@example.com")
        );
        assert_eq!(principal(&jwt(r#"{"sub":"248289761001"}"#)).0.as_deref(), Some("248289761001"));
        assert_eq!(principal(&jwt(r#"{"sub":"u","email":""}"#)).0.as_deref(), Some("u"));
    }

    #[test]
    fn anything_else_is_no_principal() {
        for bad in ["", "abc", "a.!!!.c", &jwt("not json"), &jwt(r#"{"sub":5}"#), &jwt("[]")] {
            assert_eq!(principal(bad), (None, Vec::new()), "{bad}");
        }
    }

    #[test]
    fn control_characters_and_length_drop_a_claim_with_its_name() {
        let (shown, dropped) = principal(&jwt(&format!(r#"{{"sub":"a\nb","email":"{}"}}"#, "x".repeat(500))));
        assert_eq!(shown, None);
        let fields: Vec<&str> = dropped.iter().map(|d| d.field).collect();
        assert_eq!(fields, ["id_token.email", "id_token.sub"]);
        let (shown, _) = principal(&jwt(&format!(r#"{{"sub":"u-1","email":"{}"}}"#, "x".repeat(500))));
        assert_eq!(shown.as_deref(), Some("u-1"), "a bad email falls back to sub");
    }
}
