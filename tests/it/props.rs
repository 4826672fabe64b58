//! Property tests (proptest, bounded case counts so the suite stays fast): config parsing,
//! token answers, path normalisation and routing, keys in forwarded requests, hop-by-hop
//! headers.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use goto_auth_proxy::testing::strip_hop_by_hop;
use goto_auth_proxy::testing::TokenResponse;
use goto_auth_proxy::testing::{normalize_path, substitute_keys, substitute_query_keys, KeyName, Router};
use goto_auth_proxy::testing::{valid_key, Token};
use goto_auth_proxy::Config;

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
        prop::sample::select(goto_auth_proxy::testing::echo_checked_keys()).prop_map(|k| k.to_string()),
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
        if let Err(goto_auth_proxy::testing::ConfigError::At { line, file, .. }) = Config::parse("prop.toml", &text) {
            prop_assert_eq!(file, "prop.toml");
            // An error at the very end (an unterminated string) is on the line after the last.
            let last = text.lines().count() + 1;
            prop_assert!(line >= 1 && line <= last, "line {} of {}", line, text.lines().count());
        }
    }

    /// SPEC "Configuration": a config error never echoes a value. A secret-looking value
    /// of any type, under any key, in any section, amid random lines, never appears in
    /// the error (the forms that name where a secret comes from, `{ env }` and
    /// `{ file }`, are left out on purpose: those name a variable or a path).
    #[test]
    fn config_errors_never_echo_a_value(
        before in prop::collection::vec(config_line(), 0..6),
        after in prop::collection::vec(config_line(), 0..6),
        section in prop::sample::select(vec!["", "[proxy]", "[state]", "[inbound]", "[tls]", "[[notify]]", "[[routes]]", "[credentials.c]"]),
        key in config_key(),
        word in "S3c[A-Za-z0-9]{12}",
        digits in "[1-9][0-9]{13}",
        form in 0usize..9,
    ) {
        let (value, secret) = match form {
            0 => (format!("\"{word}\""), word),
            1 => (format!("[\"{word}\"]"), word),
            2 => (digits.clone(), digits),
            3 => (format!("{digits}.5"), digits),
            4 => (format!("{{ value = \"{word}\" }}"), word),
            5 => (format!("{{ env = [\"{word}\"] }}"), word),
            6 => (format!("\"\"\"\n{word}\"\"\""), word),
            7 => (word.clone(), word),
            _ => (format!("[1, \"{word}\", {{ a = \"{word}\" }}]"), word),
        };
        let mut lines = before;
        lines.push(section.to_string());
        lines.push(format!("{key} = {value}"));
        lines.extend(after);
        let text = lines.join("\n");
        if let Err(e) = Config::parse("prop.toml", &text) {
            let e = e.to_string();
            // A grant, prefix or route's credential is a name the user chose, quoted back on purpose.
            let name = goto_auth_proxy::testing::is_quoted_name(&key, &value) && e.contains(&format!("\"{secret}\""));
            prop_assert!(name || !e.contains(&secret), "{} echoed in: {}\n--- config:\n{}", secret, e, text);
        }
    }
}

fn config_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(goto_auth_proxy::testing::echo_checked_keys()).prop_map(|k| k.to_string()),
        "[a-z_]{1,10}",
    ]
}

// ===== token answers =====

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn token_parsing_never_panics(body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = TokenResponse::parse(&body);
    }

    #[test]
    // From 1: a lifetime of zero is a failed renewal (SPEC), see `extreme_lifetimes…` below.
    fn expires_in_as_number_or_string(n in 1..=u64::MAX, as_string in any::<bool>(), pad in "[ ]{0,2}") {
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

// ===== token answers with extreme numbers =====

/// `expires_in` values a hostile or broken endpoint may send: any integer (beyond u64
/// both ways), any float (NaN and infinities in Rust's spelling, which is not JSON),
/// both quoted, numbers too long for any type, and what is not a number at all.
fn extreme_expires_in() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i128>().prop_map(|n| n.to_string()),
        any::<i128>().prop_map(|n| format!("\"{n}\"")),
        any::<f64>().prop_map(|f| f.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        any::<f64>().prop_map(|f| format!("\"{f}\"")),
        "-?[0-9]{19,400}",
        "\"-?[0-9]{19,400}\"",
        "-?[0-9]{1,3}(\\.[0-9]{1,3})?[eE][-+]?[0-9]{1,5}",
        "\"[ -!#-\\[\\]-~]{0,16}\"",
        prop::sample::select(vec![
            "0",
            "-0",
            "0.0",
            "-0.0",
            "\"0\"",
            "\"-0\"",
            "1e-400",
            "1e400",
            "-1e400",
            "\"1e400\"",
            "\"NaN\"",
            "\"inf\"",
            "\"-inf\"",
            "18446744073709551615",
            "18446744073709551616",
            "null",
            "true",
            "[]",
            "{}",
            "\"\"",
            "\" \"",
            "\"7\"",
            "1",
        ])
        .prop_map(str::to_string),
    ]
}

proptest! {
    #![proptest_config(cases(512))]

    /// Whatever the lifetime says: no panic while parsing or building the token, a zero
    /// lifetime never reaches a token, and a token never lives past a year (SPEC "A
    /// token answer is data, not trust").
    #[test]
    fn extreme_lifetimes_never_panic_and_are_clamped(v in extreme_expires_in()) {
        let body = format!(r#"{{"access_token":"a","expires_in":{v}}}"#);
        if let Ok(r) = TokenResponse::parse(body.as_bytes()) {
            prop_assert_ne!(r.expires_in, Some(0), "{} parsed as a zero lifetime", v);
            let now = std::time::SystemTime::now();
            let t = Token::from_response(r, now).unwrap();
            let life = t.expires_at.duration_since(now).unwrap_or_default();
            prop_assert!(life > std::time::Duration::ZERO, "{} gave an expired token", v);
            // A year of 365 days, with room for one of 365.25.
            prop_assert!(life.as_secs() <= 365 * 24 * 3600 + 6 * 3600, "{} lives {:?}", v, life);
        }
    }
}

// ===== the router, fuzzed =====

/// Path pieces for hostile spellings: those of [`path_piece`], `;` parameters and their
/// escapes, dot segments that carry parameters, and escaped hex digits after a bare `%`
/// (`%%32%65` must not turn into `%2e`).
fn hostile_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => path_piece(),
        1 => prop::sample::select(vec![
            ";", ";x", ";jsessionid=1", "%3b", "%3B", "..;", ".;", "%2e%2e;", "..%3b", ".%3B", "%252e", "%00",
            "\\\\", "//", "%2F%2e%2E", "rest", "~", "%%", "%32", "%65", "%45", "%3", "%4",
        ])
        .prop_map(str::to_string),
    ]
}

/// The prefixes the fuzzed router holds: nested, with and without a trailing `/`.
const PREFIXES: [&str; 7] = ["/", "/G2A/", "/G2A/rest/", "/admin/", "/a", "/a/b/", "/g2a"];

/// Which prefix should serve `path`, computed apart from the router: the longest whose
/// path (without its trailing `/`) is `path` itself or a whole-segment start of it.
fn expected_prefix(path: &str) -> Option<&'static str> {
    PREFIXES
        .iter()
        .filter(|p| {
            let base = p.trim_end_matches('/');
            base.is_empty() || path == base || path.starts_with(&format!("{base}/"))
        })
        .max_by_key(|p| p.len())
        .copied()
}

/// True for a segment that is a dot segment, with or without `;` parameters.
fn is_dot_segment(seg: &str) -> bool {
    let lower = seg.to_ascii_lowercase();
    let end = [lower.find(';'), lower.find("%3b")].into_iter().flatten().min().unwrap_or(lower.len());
    matches!(&lower[..end], "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e.")
}

/// Checks what normalising `raw` must guarantee, whatever `raw` holds.
fn check_normalised(raw: &str, router: &Router<&'static str>) -> Result<(), TestCaseError> {
    let Ok(n) = normalize_path(raw) else { return Ok(()) };
    let n = n.into_owned();
    prop_assert!(n.starts_with('/'), "{:?} -> {:?}", raw, n);
    let again = normalize_path(&n).map(|c| c.into_owned());
    prop_assert_eq!(again.as_deref(), Ok(n.as_str()), "not idempotent: {:?}", raw);
    for seg in n.split('/') {
        prop_assert!(!is_dot_segment(seg), "{:?} -> {:?} keeps the dot segment {:?}", raw, n, seg);
    }
    prop_assert_eq!(router.find(&n).copied(), expected_prefix(&n), "{:?} -> {:?}", raw, n);
    Ok(())
}

fn fuzz_router() -> Router<&'static str> {
    Router::new(PREFIXES.iter().map(|p| (p.to_string(), *p)))
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn random_bytes_never_panic_or_misroute(bytes in prop::collection::vec(any::<u8>(), 0..80), rooted in any::<bool>()) {
        let text = String::from_utf8_lossy(&bytes);
        let raw = if rooted { format!("/{text}") } else { text.into_owned() };
        check_normalised(&raw, &fuzz_router())?;
    }

    #[test]
    fn hostile_spellings_never_misroute(pieces in prop::collection::vec(hostile_piece(), 0..16)) {
        check_normalised(&format!("/{}", pieces.concat()), &fuzz_router())?;
    }

    /// A dot segment with `;` parameters is refused wherever it stands (SPEC "Data
    /// path"): servlet-style upstreams would resolve it as a dot segment.
    #[test]
    fn dot_segments_with_parameters_are_refused_anywhere(
        before in prop::collection::vec(hostile_piece(), 0..6),
        dot in prop::sample::select(vec!["..;", ".;", "..;x", ".;jsessionid=1", "%2e%2e;", "%2E.;a=b", "..%3b", ".%3B", "%2e%3b"]),
        after in prop::collection::vec(hostile_piece(), 0..6),
    ) {
        let raw = format!("/{}/{dot}/{}", before.concat(), after.concat());
        prop_assert!(normalize_path(&raw).is_err(), "{:?} -> {:?}", raw, normalize_path(&raw));
    }
}

// ===== keys in the forwarded request =====

/// A key as a token answer or keys lookup might hand it out: GoTo's digits, spellings
/// built to reshape a request, and any text at all.
fn any_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,19}",
        prop::sample::select(vec![
            "",
            ".",
            "..",
            "...",
            "../../../admin/rest/v1/users?evil=1#frag",
            "a/b",
            "a\\b",
            "a?b=c",
            "#frag",
            "%2e%2e",
            "%2F",
            "1&evil=2",
            "a=b",
            ";x",
            " ",
            "{organizerKey}",
            "%7BaccountKey%7D",
        ])
        .prop_map(str::to_string),
        "[./?#%&=;+\\\\a-z0-9 ]{1,16}",
        any::<String>(),
    ]
}

/// A client's path and query with placeholders in every spelling.
fn templated_target() -> impl Strategy<Value = (String, String)> {
    let seg = prop::sample::select(vec![
        "G2W",
        "rest",
        "organizers",
        "{organizerKey}",
        "%7BorganizerKey%7D",
        "%7baccountKey%7d",
        "{accountKey}",
        "x.json",
    ]);
    let value =
        prop::sample::select(vec!["1", "{accountKey}", "%7BorganizerKey%7D", "owner:{organizerKey},x", "", "a%20b"]);
    let path = prop::collection::vec(seg, 1..6).prop_map(|s| format!("/{}", s.join("/")));
    let query = prop::collection::vec(("[a-zA-Z]{1,4}", value), 0..4)
        .prop_map(|ps| ps.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("&"));
    (path, query)
}

fn segment_count(path: &str) -> usize {
    path.split('/').count()
}

fn parameter_names(query: &str) -> Vec<&str> {
    query.split('&').map(|p| p.split('=').next().unwrap_or("")).collect()
}

/// What the data path forwards for `(path, query)` with these keys (normalise, fill in
/// the path, fill in the query, build the request target), or which key is missing.
fn forwarded(
    path: &str,
    query: &str,
    org: Option<&str>,
    acct: Option<&str>,
) -> Result<http::uri::PathAndQuery, KeyName> {
    let path = normalize_path(path).unwrap();
    let p = substitute_keys(&path, org, acct).map_err(|m| m.0)?;
    let q = substitute_query_keys(query, org, acct).map_err(|m| m.0)?;
    let target = if q.is_empty() { p } else { format!("{p}?{q}") };
    let pq = http::uri::PathAndQuery::try_from(target.as_str()).unwrap();
    assert_eq!(pq.as_str(), target, "nothing of the target is cut off (a `#` would be)");
    Ok(pq)
}

proptest! {
    #![proptest_config(cases(512))]

    /// For any key, what the data path forwards has the client's path segments and
    /// query parameter names; a key that is not valid is never used (the request is
    /// refused as missing that key), and a valid one always is.
    #[test]
    fn any_key_leaves_the_shape_of_the_request_alone(
        (path, query) in templated_target(),
        org in any_key(),
        acct in any_key(),
    ) {
        // As the data path does: only valid keys are filled in.
        let usable = |k: &str| Some(k).filter(|k| valid_key(k)).map(str::to_string);
        let (o, a) = (usable(&org), usable(&acct));
        match forwarded(&path, &query, o.as_deref(), a.as_deref()) {
            Ok(pq) => {
                prop_assert_eq!(segment_count(pq.path()), segment_count(&path), "{} -> {}", path, pq);
                prop_assert_eq!(parameter_names(pq.query().unwrap_or("")), parameter_names(&query), "{} -> {}", query, pq);
            }
            Err(KeyName::Organizer) => prop_assert!(o.is_none(), "{:?} is valid", org),
            Err(KeyName::Account) => prop_assert!(a.is_none(), "{:?} is valid", acct),
        }
        if valid_key(&org) && valid_key(&acct) {
            prop_assert!(forwarded(&path, &query, Some(&org), Some(&acct)).is_ok());
        }
    }

    /// The substitution alone, trusted with any key that is not empty (defence in
    /// depth: keys are checked where they come in and again where they are used), still
    /// keeps the client's segments and parameter names.
    #[test]
    fn even_an_unchecked_key_cannot_reshape_the_request(
        (path, query) in templated_target(),
        org in any_key().prop_filter("a key", |k| !k.is_empty()),
        acct in any_key().prop_filter("a key", |k| !k.is_empty()),
    ) {
        let pq = forwarded(&path, &query, Some(&org), Some(&acct)).unwrap();
        prop_assert_eq!(segment_count(pq.path()), segment_count(&path), "{} -> {}", path, pq);
        prop_assert_eq!(parameter_names(pq.query().unwrap_or("")), parameter_names(&query), "{} -> {}", query, pq);
        for seg in pq.path().split('/') {
            prop_assert!(seg != "." && seg != "..", "{}", pq);
        }
    }
}

// ===== stored records with extreme numbers =====

proptest! {
    #![proptest_config(cases(256))]

    /// Whatever a state file or Redis holds in its time fields, reading the record back
    /// neither panics nor believes an expiry more than a year ahead, nor an obtained time
    /// in the future.
    #[test]
    fn stored_records_with_extreme_times_never_panic(
        expires_at in any::<u64>(),
        expires_at_ms in prop::option::of(any::<u64>()),
        obtained_at_ms in any::<u64>(),
    ) {
        let now = std::time::SystemTime::now();
        let json = serde_json::json!({
            "access_token": "a", "refresh_token": "r",
            "expires_at": expires_at, "expires_at_ms": expires_at_ms, "obtained_at_ms": obtained_at_ms,
        });
        let stored: goto_auth_proxy::testing::StoredToken = serde_json::from_value(json).unwrap();
        let t = Token::from_stored("c", &stored, now).unwrap();
        prop_assert!(t.expires_at <= goto_auth_proxy::testing::later(now, goto_auth_proxy::testing::MAX_LIFETIME));
        prop_assert!(t.obtained_at <= now);
        let _ = t.is_valid_at(now);
        let _ = t.to_stored();
    }
}

// ===== the request head parser and router, over real sockets =====

/// One raw request target: hostile path pieces, sometimes with a query.
fn raw_target() -> impl Strategy<Value = String> {
    (prop::collection::vec(hostile_piece(), 1..10), prop::option::of("[a-z=&%{}]{0,12}")).prop_map(|(pieces, q)| {
        let mut t = String::from("/");
        t.push_str(&pieces.concat());
        if let Some(q) = q {
            t.push('?');
            t.push_str(&q);
        }
        t
    })
}

/// Random request targets sent over a socket to a proxy whose `/G2A/` route carries a
/// token and whose `/` route carries none: whatever the spelling, a request reaches the
/// upstream only with the normalised path, and carries the `/G2A/` token only when that
/// normalised path is under `/G2A/`; everything else is refused, and the proxy stays up.
#[tokio::test]
async fn raw_request_targets_reach_only_the_route_their_normalised_path_selects() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let s = crate::support::stack(goto_mock::MockOptions::default(), |mock, dir| {
        crate::support::config_text(
            dir,
            "",
            &format!(
                "{}\n{}\n{}",
                crate::support::password_cred("g2a", mock),
                crate::support::route("/G2A/", mock, Some("g2a")),
                crate::support::route("/", mock, None)
            ),
        )
    })
    .await;
    crate::support::wait_ready(&s.http, &s.admin("/readyz"), std::time::Duration::from_secs(5)).await;
    let mut runner = TestRunner::new(cases(96));
    for _ in 0..96 {
        let target = raw_target().new_tree(&mut runner).unwrap().current();
        let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let out = crate::support::raw(s.proxy.proxy_addr, req.as_bytes()).await;
        let status: u16 = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mock_path =
            out.lines().take_while(|l| !l.is_empty()).find_map(|l| l.strip_prefix("x-mock-path: ")).map(str::to_string);
        let raw_path = target.split('?').next().unwrap_or("");
        match (normalize_path(raw_path), mock_path) {
            (Ok(normal), Some(seen)) => {
                assert_eq!(seen, normal.as_ref(), "{target}: forwarded with another path");
                let with_token = status == 200;
                assert_eq!(with_token, normal.starts_with("/G2A/") || normal == "/G2A", "{target} → {normal}: {out}");
            }
            // Not forwarded with a token: GoTo's rejection of a token-less request, or a
            // target hyper itself refuses (400). Never a /G2A/ path answered without one.
            (Ok(normal), None) => {
                let g2a = normal.starts_with("/G2A/") || normal == "/G2A";
                assert!(status == 400 || (!g2a && (status == 401 || status == 403)), "{target} → {normal}: {out}");
            }
            (Err(_), seen) => {
                assert!(seen.is_none(), "{target}: a path the router refuses reached the upstream");
                assert_eq!(status, 400, "{target}: {out}");
            }
        }
    }
    assert_eq!(s.http.get(s.admin("/healthz")).send().await.unwrap().status(), 200);
}
