//! Property tests (proptest, bounded case counts so the suite stays fast): config parsing,
//! token answers, path normalisation and routing, hop-by-hop headers.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use goto_auth_proxy::config::Config;
use goto_auth_proxy::proxy::strip_hop_by_hop;
use goto_auth_proxy::route::{normalize_path, Router};
use goto_auth_proxy::token::source::TokenResponse;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

// ===== config =====

/// One line of TOML-ish text: real section and key names with plausible and silly values.
fn config_line() -> impl Strategy<Value = String> {
    let section = prop_oneof![
        Just("[proxy]".to_string()),
        Just("[state]".to_string()),
        Just("[inbound]".to_string()),
        Just("[[routes]]".to_string()),
        "[credentials\\.[a-z0-9_]{1,6}]",
        "\\[[a-z.\\[\\]]{0,12}\\]?",
    ];
    let key = prop_oneof![
        prop::sample::select(vec![
            "listen",
            "admin_listen",
            "connect_timeout",
            "request_timeout",
            "max_request_body",
            "token_wait",
            "workers",
            "store",
            "path",
            "redis_url",
            "redis_prefix",
            "grant",
            "client_id",
            "client_secret",
            "redirect_uri",
            "refresh_token",
            "username",
            "password",
            "pat",
            "token",
            "token_url",
            "authorize_url",
            "keys_url",
            "scope",
            "refresh_before",
            "prefix",
            "upstream",
            "credential",
            "strip_prefix",
            "methods",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,10}",
    ];
    let value = prop_oneof![
        "\"[ -~]{0,24}\"".prop_map(|s| s.replace('\\', "")),
        prop::sample::select(vec![
            "\"127.0.0.1:0\"",
            "\"10.0.0.1:80\"",
            "\"5s\"",
            "\"soon\"",
            "\"1MiB\"",
            "\"password\"",
            "\"authorization_code\"",
            "\"static\"",
            "\"redis\"",
            "\"file\"",
            "\"http://127.0.0.1:9/\"",
            "\"https://api.getgo.com\"",
            "\"ftp://x\"",
            "\"/G2A/\"",
            "\"/\"",
            "{ env = \"GOTO_AUTH_PROXY_PROPTEST_UNSET\" }",
            "{ env = \"PATH\" }",
            "{ file = \"/nonexistent/goto-auth-proxy-proptest\" }",
            "[\"GET\", \"post\", \"BAD METHOD\"]",
            "true",
            "0",
            "-1",
            "18446744073709551616",
            "1.5",
            "{}",
            "[]",
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    prop_oneof![section, (key, value).prop_map(|(k, v)| format!("{k} = {v}")), "[ -~]{0,30}", Just(String::new()),]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn config_parsing_never_panics(lines in prop::collection::vec(config_line(), 0..16)) {
        let text = lines.join("\n");
        if let Ok(c) = Config::parse("prop.toml", &text) {
            let _shown = c.to_string();
            let _used = c.used_credentials();
        }
    }

    #[test]
    fn config_errors_name_a_line_inside_the_file(lines in prop::collection::vec(config_line(), 1..12)) {
        let text = lines.join("\n");
        if let Err(goto_auth_proxy::config::ConfigError::At { line, file, .. }) = Config::parse("prop.toml", &text) {
            prop_assert_eq!(file, "prop.toml");
            // An error at the very end (an unterminated string) is on the line after the last.
            let last = text.lines().count() + 1;
            prop_assert!(line >= 1 && line <= last, "line {} of {}", line, text.lines().count());
        }
    }
}

// ===== token answers =====

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn token_parsing_never_panics(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = TokenResponse::parse(&body);
    }

    #[test]
    fn expires_in_as_number_or_string(n in any::<u64>(), as_string in any::<bool>(), pad in "[ ]{0,2}") {
        let v = if as_string { format!("\"{pad}{n}{pad}\"") } else { n.to_string() };
        let body = format!(r#"{{"access_token":"a","expires_in":{v}}}"#);
        let r = TokenResponse::parse(body.as_bytes()).unwrap();
        prop_assert_eq!(r.expires_in, Some(n));
    }

    #[test]
    fn non_numeric_expires_in_is_refused(s in "[a-z]{1,8}") {
        let body = format!(r#"{{"access_token":"a","expires_in":"{s}"}}"#);
        prop_assert!(TokenResponse::parse(body.as_bytes()).is_err());
    }

    #[test]
    fn big_keys_kept_exact_and_extra_fields_ignored(
        key in any::<u64>(),
        account in any::<u64>(),
        quoted in any::<bool>(),
        extra in prop::collection::btree_map("[a-zA-Z_]{1,12}", prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            "\"[a-z ]{0,10}\"",
            Just("null".to_string()),
            Just("{\"nested\":[1,2,{}]}".to_string()),
        ], 0..6),
        with_refresh in any::<bool>(),
        with_expiry in any::<bool>(),
    ) {
        let known = ["access_token", "expires_in", "refresh_token", "organizer_key", "account_key"];
        let mut fields: Vec<String> = extra
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        fields.push("\"access_token\":\"tok\"".to_string());
        let k = if quoted { format!("\"{key}\"") } else { key.to_string() };
        fields.push(format!("\"organizer_key\":{k}"));
        fields.push(format!("\"account_key\":{account}"));
        if with_refresh {
            fields.push("\"refresh_token\":\"rt\"".to_string());
        }
        if with_expiry {
            fields.push("\"expires_in\":\"3600\"".to_string());
        }
        let body = format!("{{{}}}", fields.join(","));
        let r = TokenResponse::parse(body.as_bytes()).unwrap();
        let key_str = key.to_string();
        let account_str = account.to_string();
        prop_assert_eq!(r.organizer_key.as_deref(), Some(key_str.as_str()));
        prop_assert_eq!(r.account_key.as_deref(), Some(account_str.as_str()));
        prop_assert_eq!(r.refresh_token.is_some(), with_refresh);
        prop_assert_eq!(r.expires_in, with_expiry.then_some(3600));
    }
}

// ===== paths and routes =====

/// Path-ish text rich in the spellings that matter: dots, slashes, backslashes, and
/// escapes of each in both cases.
fn path_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "/",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2f",
            "%2F",
            "%5c",
            "%5C",
            "\\",
            "%",
            "%2",
            "%25",
            "G2A",
            "g2a",
            "admin",
            "a",
            "%7B",
            "{organizerKey}",
            "é",
        ])
        .prop_map(str::to_string),
        "[a-zA-Z0-9._~-]{1,4}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(path_piece(), 0..14).prop_map(|p| format!("/{}", p.concat()))
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn normalised_paths_have_no_dot_segments_doubled_slashes_or_separator_escapes(p in path()) {
        let n = normalize_path(&p).unwrap().into_owned();
        prop_assert!(n.starts_with('/'), "{:?} -> {:?}", p, n);
        for bad in ["/./", "/../", "//", "\\"] {
            prop_assert!(!n.contains(bad), "{:?} -> {:?} holds {:?}", p, n, bad);
        }
        prop_assert!(!n.ends_with("/.") && !n.ends_with("/.."), "{:?} -> {:?}", p, n);
        let lower = n.to_ascii_lowercase();
        for bad in ["%2e", "%2f", "%5c"] {
            prop_assert!(!lower.contains(bad), "{:?} -> {:?} holds {:?}", p, n, bad);
        }
    }

    #[test]
    fn normalisation_is_idempotent(p in path()) {
        let once = normalize_path(&p).unwrap().into_owned();
        let twice = normalize_path(&once).unwrap().into_owned();
        prop_assert_eq!(&once, &twice, "{:?}", p);
    }

    #[test]
    fn nothing_outside_g2a_reaches_the_g2a_route(
        start in prop::sample::select(vec!["/G2A/", "/G2A", "/g2a/", "/G2A%2f", "/G2A%2F..", "//G2A/", "/G2A/.", "/./G2A/", "/G2AX/", "/%47%32%41/"]),
        rest in prop::collection::vec(path_piece(), 0..10),
    ) {
        let raw = format!("{start}{}", rest.concat());
        let router = Router::new(vec![("/G2A/".to_string(), "g2a"), ("/".to_string(), "default")]);
        let n = normalize_path(&raw).unwrap().into_owned();
        let matched = router.find(&n).copied();
        let inside = n.starts_with("/G2A/") || n == "/G2A";
        prop_assert_eq!(matched == Some("g2a"), inside, "{:?} -> {:?} routed to {:?}", raw, n, matched);
    }
}

// ===== headers =====

const HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
];

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(HOP.to_vec()).prop_map(str::to_string),
        prop::sample::select(vec![
            "Connection",
            "KEEP-ALIVE",
            "Upgrade",
            "x-private",
            "x-keep",
            "accept",
            "content-type"
        ])
        .prop_map(str::to_string),
        "x-[a-z]{1,6}",
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn no_hop_by_hop_header_survives(
        headers in prop::collection::vec((header_name(), "[a-z0-9 ]{0,8}"), 0..12),
        connection_values in prop::collection::vec(prop::collection::vec(header_name(), 0..4), 0..3),
    ) {
        let mut h = HeaderMap::new();
        for (name, value) in &headers {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            h.append(name, HeaderValue::from_str(value).unwrap());
        }
        // Possibly several Connection headers, each naming headers that are hop-by-hop too.
        let mut named: Vec<String> = Vec::new();
        for names in &connection_values {
            named.extend(names.iter().map(|n| n.to_ascii_lowercase()));
            h.append(http::header::CONNECTION, HeaderValue::from_str(&names.join(", ")).unwrap());
        }
        let before: Vec<String> = h.keys().map(|k| k.as_str().to_string()).collect();
        strip_hop_by_hop(&mut h);
        for k in h.keys() {
            prop_assert!(!HOP.contains(&k.as_str()), "{} survived", k);
            prop_assert!(!named.contains(&k.as_str().to_string()), "{} was named by Connection and survived", k);
        }
        // Everything else is left alone.
        for k in before {
            if !HOP.contains(&k.as_str()) && !named.contains(&k) {
                prop_assert!(h.contains_key(k.as_str()), "{} was removed", k);
            }
        }
    }
}
