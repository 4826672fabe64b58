//! Token endpoint answers as GoTo sends them, and hostile ones.

use super::endpoint::keys_urls;
use super::redact::{blank_out, BLANK_LIMIT};
use super::response::{parse_keys, parse_retry_after, MAX_RETRY_AFTER, SCIM_GETGO};
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
fn secrets_quoted_back_are_blanked_out() {
    let text = "client dGhlLXNlY3JldA== with secret the-secret and refresh rt-123456 unknown; the password";
    let secrets: Vec<std::borrow::Cow<'_, str>> =
        vec!["the-secret".into(), "rt-123456".into(), "dGhlLXNlY3JldA==".into(), "pw".into()];
    assert_eq!(
        blank_out(text, &secrets),
        "client *** with secret *** and refresh *** unknown; the password",
        "secrets of four characters or more are blanked; shorter ones would eat words"
    );
    assert!(matches!(blank_out("nothing to hide", &secrets), std::borrow::Cow::Borrowed(_)));
}

#[test]
fn secrets_are_blanked_in_every_spelling_they_may_come_back_in() {
    use base64::Engine as _;
    let secret = "p+ss/w%rd X";
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let b64_url = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let every_byte = |upper: bool| -> String {
        secret.bytes().map(|b| if upper { format!("%{b:02X}") } else { format!("%{b:02x}") }).collect()
    };
    let spellings: Vec<(&str, String)> = vec![
        ("as sent", secret.to_string()),
        ("upper case", secret.to_ascii_uppercase()),
        ("lower case", secret.to_ascii_lowercase()),
        ("form-encoded, upper-case hex, + for space", "p%2Bss%2Fw%25rd+X".into()),
        ("form-encoded, lower-case hex", "p%2bss%2fw%25rd+X".into()),
        ("%20 for space", "p%2Bss%2Fw%25rd%20X".into()),
        ("every byte encoded, lower-case hex", every_byte(false)),
        ("every byte encoded, upper-case hex", every_byte(true)),
        ("encoded and in another case", "P%2bSS%2Fw%25RD+x".into()),
        ("Basic header: base64 of id:secret", b64(&format!("the-client:{secret}"))),
        ("base64 of a form-encoded id:secret", b64("the-client:p%2Bss%2Fw%25rd+X")),
        ("URL-safe base64 without padding", b64_url(&format!("another-id:{secret}"))),
        ("base64 of the secret alone", b64(secret)),
    ];
    let secrets: Vec<std::borrow::Cow<'_, str>> = vec![secret.into()];
    for (how, spelled) in &spellings {
        for text in [format!("bad client secret '{spelled}', try again"), format!("Basic {spelled}"), spelled.clone()] {
            let blanked = blank_out(&text, &secrets);
            assert!(blanked.contains("***"), "{how}: {text} -> {blanked}");
            let rest = blanked.replace("***", "");
            assert!(!rest.to_ascii_lowercase().contains("ss%2f") && !rest.contains("w%rd"), "{how}: {blanked}");
            assert!(!rest.contains(&spelled[..spelled.len().min(6)]), "{how}: {text} -> {blanked}");
        }
        assert_eq!(blank_out(&format!("bad '{spelled}' given"), &secrets), "bad '***' given", "{how}");
    }
    for innocent in ["p+ss/w%r and X", "nothing to hide", "p ss/w%rd X", "cCtzcy93JXJk"] {
        assert_eq!(blank_out(innocent, &secrets), innocent, "not the secret");
    }
}

#[test]
fn a_huge_error_text_is_cut_before_it_is_searched() {
    let secrets: Vec<std::borrow::Cow<'_, str>> = vec!["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab".into()];
    let text = format!("ü{}", "a".repeat(1024 * 1024));
    let started = std::time::Instant::now();
    let blanked = blank_out(&text, &secrets);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    assert!(blanked.len() <= BLANK_LIMIT + '…'.len_utf8() && blanked.ends_with('…'), "{}", blanked.len());
    let text = format!("{}ü", "a".repeat(BLANK_LIMIT - 1));
    assert!(blank_out(&text, &secrets).ends_with("a…"), "cut on a character boundary");
}

#[test]
fn retry_after_in_seconds_or_as_a_date_and_capped() {
    let h = |s: &'static str| http::HeaderValue::from_static(s);
    let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // Wed, 21 Oct 2015 07:27:50 GMT
    assert_eq!(parse_retry_after(Some(&h("7")), now), Some(Duration::from_secs(7)));
    assert_eq!(parse_retry_after(Some(&h(" 2 ")), now), Some(Duration::from_secs(2)));
    assert_eq!(parse_retry_after(Some(&h("999999")), now), Some(MAX_RETRY_AFTER));
    assert_eq!(parse_retry_after(Some(&h("Wed, 21 Oct 2015 07:28:00 GMT")), now), Some(Duration::from_secs(10)));
    assert_eq!(parse_retry_after(Some(&h("Fri, 21 Oct 2016 07:28:00 GMT")), now), Some(MAX_RETRY_AFTER));
    assert_eq!(parse_retry_after(Some(&h("soon")), now), None);
    assert_eq!(parse_retry_after(None, now), None);
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

#[test]
fn keys_and_principals_that_are_not_valid_are_dropped_with_their_field() {
    let hostile = "../../../admin/rest/v1/users?evil=1#frag";
    let huge = "a".repeat(201);
    let body = serde_json::json!({
        "access_token": "at",
        "organizer_key": hostile,
        "account_key": 9999982253621659654u64,
        "principal": huge,
        "email": "jane@example.com",
    });
    let r = TokenResponse::parse(body.to_string().as_bytes()).unwrap();
    assert_eq!(r.organizer_key, None);
    assert_eq!(r.account_key.as_deref(), Some("9999982253621659654"));
    assert_eq!(r.principal.as_deref(), Some("jane@example.com"), "the next source is used");
    let fields: Vec<(&str, usize)> = r.dropped.iter().map(|d| (d.field, d.chars)).collect();
    assert_eq!(fields, [("organizer_key", hostile.len()), ("principal", 201)]);
    assert!(!format!("{r:?}").contains("evil"), "{r:?}");

    let scim = serde_json::json!({
        "schemas": ["urn:scim:schemas:core:1.0"],
        "id": "..",
        "userName": "a\nb",
        SCIM_GETGO: { "accounts": [{ "value": "1&x=2" }] },
    });
    let k = parse_keys(scim.to_string().as_bytes());
    assert_eq!((k.organizer_key, k.account_key, k.principal), (None, None, None));
    let fields: Vec<&str> = k.dropped.iter().map(|d| d.field).collect();
    assert_eq!(fields, ["id", "accounts[0].value", "userName"]);
    let k = parse_keys(br#"{"key":"a/b","accountKey":"7","email":"boss@example.com"}"#);
    assert_eq!((k.organizer_key, k.account_key.as_deref()), (None, Some("7")));
    assert_eq!(k.dropped.iter().map(|d| d.field).collect::<Vec<_>>(), ["key"]);
}

#[test]
fn identity_scim_keys_first_account_wins() {
    let k = parse_keys(&fixture("identity-users-me-response.json"));
    assert_eq!(k.organizer_key.as_deref(), Some("8439885694023999999"), "`id` is the organizer key");
    assert_eq!(k.account_key.as_deref(), Some("9999982253621659654"), "the first of two accounts");
    assert_eq!(k.principal.as_deref(), Some("mister.jones@fakemail.com"));
    // Missing pieces: what is there is kept, nothing is invented.
    let k = parse_keys(br#"{"schemas":["urn:scim:schemas:core:1.0"],"id":"42"}"#);
    assert_eq!((k.organizer_key.as_deref(), k.account_key), (Some("42"), None));
    let k = parse_keys(br#"{"urn:scim:schemas:extension:getgo:1.0":{"accounts":[]}}"#);
    assert_eq!(k, Keys::default());
    // An `id` outside a SCIM document is not a user key.
    assert_eq!(parse_keys(br#"{"id":"7"}"#).organizer_key, None);
}

#[test]
fn token_answer_keys() {
    let k = parse_keys(&fixture("direct-login-response.json"));
    assert_eq!(k.organizer_key.as_deref(), Some("8439885694023999999"));
    assert_eq!(k.account_key.as_deref(), Some("9999982253621659654"));
    let k = parse_keys(&fixture("oauth-new-host-token-response.json"));
    assert_eq!((k.organizer_key, k.account_key), (None, None), "the new host's answer carries no keys");
    assert_eq!(k.principal.as_deref(), Some("mister.jones@fakemail.com"));
}

#[test]
fn an_identity_keys_url_falls_back_to_the_admin_me_on_its_host() {
    assert_eq!(
        keys_urls(crate::config::GOTO_KEYS_URL),
        ["https://api.getgo.com/identity/v1/Users/me", "https://api.getgo.com/admin/rest/v1/me"]
    );
    assert_eq!(
        keys_urls("http://127.0.0.1:9/gw/identity/v1/Users/me?x=1"),
        ["http://127.0.0.1:9/gw/identity/v1/Users/me?x=1", "http://127.0.0.1:9/gw/admin/rest/v1/me"]
    );
    assert_eq!(keys_urls("https://example.com/me"), ["https://example.com/me"], "no fallback for other URLs");
}

mod props {
    use proptest::prelude::*;

    use super::*;

    /// A key as GoTo may send it: a decimal string or a (possibly > 2^53) integer.
    fn key() -> impl Strategy<Value = (String, serde_json::Value)> {
        prop_oneof![
            "[1-9][0-9]{0,18}".prop_map(|s| (s.clone(), serde_json::Value::String(s))),
            any::<u64>().prop_map(|n| (n.to_string(), serde_json::Value::from(n))),
        ]
    }

    /// Some of an object's fields, chosen by `mask`.
    fn pick(fields: Vec<(&str, serde_json::Value)>, mask: u8) -> serde_json::Map<String, serde_json::Value> {
        fields
            .into_iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, (k, v))| (k.to_string(), v))
            .collect()
    }

    proptest! {
        #[test]
        fn token_answer((org, org_v) in key(), (acct, acct_v) in key(), who in "[a-z]{1,8}@[a-z]{1,8}\\.com", mask in any::<u8>()) {
            let mut doc = pick(vec![("organizer_key", org_v), ("account_key", acct_v), ("principal", who.clone().into())], mask);
            doc.insert("access_token".into(), "a".into());
            doc.insert("expires_in".into(), 3600.into());
            let k = parse_keys(serde_json::Value::Object(doc).to_string().as_bytes());
            prop_assert_eq!(k.organizer_key, (mask & 1 != 0).then_some(org));
            prop_assert_eq!(k.account_key, (mask & 2 != 0).then_some(acct));
            prop_assert_eq!(k.principal, (mask & 4 != 0).then_some(who));
        }

        #[test]
        fn admin_me((org, org_v) in key(), (acct, acct_v) in key(), mask in any::<u8>()) {
            let accounts = serde_json::json!([{ "key": acct_v.clone(), "name": "Example" }, { "key": "1", "name": "Other" }]);
            let doc = pick(vec![("key", org_v), ("accountKey", acct_v), ("accounts", accounts), ("email", "a@b.c".into())], mask);
            let k = parse_keys(serde_json::Value::Object(doc).to_string().as_bytes());
            prop_assert_eq!(k.organizer_key, (mask & 1 != 0).then_some(org));
            prop_assert_eq!(k.account_key, (mask & 6 != 0).then_some(acct), "accountKey, else the first account");
            prop_assert_eq!(k.principal.is_some(), mask & 8 != 0);
        }

        #[test]
        fn identity_scim((org, org_v) in key(), accts in proptest::collection::vec(key(), 0..4), mask in any::<u8>()) {
            let first = accts.first().map(|a| a.0.clone());
            let accounts: Vec<_> = accts.into_iter().map(|(_, v)| serde_json::json!({ "value": v, "display": "x" })).collect();
            let mut doc = pick(vec![("id", org_v), ("userName", "u@example.com".into())], mask);
            doc.insert("schemas".into(), serde_json::json!(["urn:scim:schemas:core:1.0"]));
            if mask & 4 != 0 {
                doc.insert(SCIM_GETGO.into(), serde_json::json!({ "accounts": accounts }));
            }
            let k = parse_keys(serde_json::Value::Object(doc).to_string().as_bytes());
            prop_assert_eq!(k.organizer_key, (mask & 1 != 0).then_some(org));
            prop_assert_eq!(k.account_key, if mask & 4 != 0 { first } else { None });
            prop_assert_eq!(k.principal.as_deref(), (mask & 2 != 0).then_some("u@example.com"));
        }

        #[test]
        fn any_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_keys(&body);
        }
    }
}
