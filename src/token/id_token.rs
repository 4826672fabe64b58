//! Who signed in, read from an OpenID `id_token` for display only (`/tokens`, the status
//! page): the JWT's payload is base64url-decoded and its `email` (else `sub`) claim
//! taken. The signature is NOT checked, so nothing here is ever trusted for anything but
//! showing an operator a name: no decision (routing, authorization, which token to use)
//! may depend on it. The token endpoint answered over the credential's own TLS
//! connection; that is all the trust a label needs.

use base64::Engine as _;

/// Longest principal shown; a claim is outside text, escaped and bounded.
const MAX_PRINCIPAL: usize = 200;

/// The `email` or else the `sub` claim of `id_token`'s payload, when it decodes.
pub(crate) fn display_principal(id_token: &str) -> Option<String> {
    let payload = id_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    ["email", "sub"].iter().find_map(|claim| match claims.get(*claim) {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(crate::error::printable(s, MAX_PRINCIPAL)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2lnbmF0dXJl", b64(r#"{"alg":"RS256","kid":"k"}"#), b64(payload))
    }

    #[test]
    fn email_first_then_sub() {
        assert_eq!(
            display_principal(&jwt(r#"{"sub":"248289761001","email":"jane@example.com"}"#)).as_deref(),
            Some("jane@example.com")
        );
        assert_eq!(display_principal(&jwt(r#"{"sub":"248289761001"}"#)).as_deref(), Some("248289761001"));
        assert_eq!(display_principal(&jwt(r#"{"sub":"u","email":""}"#)).as_deref(), Some("u"));
    }

    #[test]
    fn anything_else_is_no_principal() {
        for bad in ["", "abc", "a.!!!.c", &jwt("not json"), &jwt(r#"{"sub":5}"#), &jwt("[]")] {
            assert_eq!(display_principal(bad), None, "{bad}");
        }
    }

    #[test]
    fn control_characters_are_escaped_and_length_bounded() {
        let shown = display_principal(&jwt(&format!(r#"{{"sub":"a\nb{}"}}"#, "x".repeat(500)))).unwrap();
        assert!(!shown.contains('\n') && shown.starts_with("a\\nb") && shown.ends_with('…'), "{shown}");
        assert!(shown.chars().count() < 220, "{shown}");
    }
}
