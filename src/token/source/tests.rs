//! Token endpoint answers as GoTo sends them, and hostile ones.

use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/goto").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn direct_login_string_expires_in() {
    let r = TokenResponse::parse(&fixture("direct-login-response.json")).unwrap();
    assert_eq!(r.expires_in, Some(3600));
    assert!(r.refresh_token.is_some());
    assert_eq!(r.organizer_key.as_deref(), Some("8439885694023999999"));
    assert_eq!(r.account_key.as_deref(), Some("9999982253621659654"));
}

#[test]
fn oauth_shapes() {
    let r = TokenResponse::parse(&fixture("oauth-v2-token-response.json")).unwrap();
    assert_eq!(r.expires_in, Some(3600));
    assert!(r.refresh_token.is_some());
    let r = TokenResponse::parse(&fixture("oauth-new-host-token-response.json")).unwrap();
    assert!(r.refresh_token.is_none() && r.organizer_key.is_none());
    assert_eq!(r.principal.as_deref(), Some("mister.jones@fakemail.com"), "who signed in is kept");
    let r = TokenResponse::parse(&fixture("oauth-refresh-response-without-refresh-token.json")).unwrap();
    assert!(r.refresh_token.is_none());
}

#[test]
fn numeric_keys_kept_exact_and_garbage_refused() {
    let r =
        TokenResponse::parse(br#"{"access_token":"a","organizer_key":8439885694023999999,"expires_in":"7"}"#).unwrap();
    assert_eq!(r.organizer_key.as_deref(), Some("8439885694023999999"));
    assert_eq!(r.expires_in, Some(7));
    assert!(TokenResponse::parse(b"<html>").is_err());
    assert!(TokenResponse::parse(br#"{"expires_in":3600}"#).is_err());
    assert!(TokenResponse::parse(br#"{"access_token":"a","expires_in":"soon"}"#).is_err());
    let r = TokenResponse::parse(br#"{"access_token":"a"}"#).unwrap();
    assert_eq!(r.expires_in, None);
}

#[test]
fn lifetimes_that_are_not_lifetimes_are_refused_and_huge_ones_saturate() {
    let exp = |v: &str| TokenResponse::parse(format!(r#"{{"access_token":"a","expires_in":{v}}}"#).as_bytes());
    for bad in ["0", "-5", "-0.5", "\"0\"", "\"-5\"", "\"soon\"", "null", "\"\"", "true", "[1]"] {
        match exp(bad) {
            Err(SourceError::Malformed(m)) => {
                assert!(m.contains("expires_in") || bad == "true" || bad == "[1]", "{bad}: {m}")
            }
            Ok(r) if bad == "null" => assert_eq!(r.expires_in, None),
            other => panic!("{bad}: {:?}", other.map(|r| r.expires_in)),
        }
    }
    assert_eq!(exp("1e20").unwrap().expires_in, Some(u64::MAX));
    assert_eq!(exp("18446744073709551615").unwrap().expires_in, Some(u64::MAX));
    assert_eq!(exp("99999999999999999999999999").unwrap().expires_in, Some(u64::MAX));
    assert_eq!(exp("\"7\"").unwrap().expires_in, Some(7));
    assert_eq!(exp("0.2").unwrap().expires_in, Some(1));
    assert_eq!(exp("\"1e20\"").unwrap().expires_in, Some(u64::MAX));
}

#[test]
fn admin_me_keys() {
    let k = parse_keys(&fixture("admin-me-response.json"));
    assert_eq!(k.organizer_key.as_deref(), Some("8439885694023999999"));
    assert_eq!(k.account_key.as_deref(), Some("9999982253621659654"));
    let k = parse_keys(br#"{"key":1,"accounts":[{"key":"9"}]}"#);
    assert_eq!(k.account_key.as_deref(), Some("9"));
}

#[test]
fn refused_classification() {
    let e = SourceError::Refused {
        kind: "refresh_token",
        status: 400,
        error: "invalid_grant".into(),
        description: None,
        retry_after: None,
    };
    assert!(e.is_grant_refused());
    let refused = |status, retry_after| SourceError::Refused {
        kind: "refresh_token",
        status,
        error: "http_error".into(),
        description: None,
        retry_after,
    };
    assert!(!refused(503, None).is_grant_refused());
    let e = refused(429, Some(Duration::from_secs(3)));
    assert!(!e.is_grant_refused());
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
}

#[test]
fn retry_after_seconds_only_and_capped() {
    let h = |s: &'static str| http::HeaderValue::from_static(s);
    assert_eq!(parse_retry_after(Some(&h("7"))), Some(Duration::from_secs(7)));
    assert_eq!(parse_retry_after(Some(&h(" 2 "))), Some(Duration::from_secs(2)));
    assert_eq!(parse_retry_after(Some(&h("999999"))), Some(MAX_RETRY_AFTER));
    assert_eq!(parse_retry_after(Some(&h("Wed, 21 Oct 2015 07:28:00 GMT"))), None);
    assert_eq!(parse_retry_after(None), None);
}

#[test]
fn principal_from_the_answer_else_from_the_id_token() {
    use base64::Engine as _;
    let jwt = |claims: &str| {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims))
    };
    let answer = |extra: &str| format!(r#"{{"access_token":"at","expires_in":60{extra}}}"#);
    let id = jwt(r#"{"sub":"u-1","email":"jane@example.com"}"#);
    let r = TokenResponse::parse(answer(&format!(r#","id_token":"{id}""#)).as_bytes()).unwrap();
    assert_eq!(r.principal.as_deref(), Some("jane@example.com"));
    let r = TokenResponse::parse(answer(&format!(r#","principal":"boss","id_token":"{id}""#)).as_bytes()).unwrap();
    assert_eq!(r.principal.as_deref(), Some("boss"), "the answer's own principal comes first");
    let r = TokenResponse::parse(answer(r#","id_token":"garbage""#).as_bytes()).unwrap();
    assert_eq!(r.principal, None);
    assert!(!format!("{r:?}").contains("garbage"));
}
