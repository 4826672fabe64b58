//! Pure routing decisions: path normalisation, longest-prefix match, prefix stripping
//! and `{organizerKey}`/`{accountKey}` substitution. No I/O, so every spelling that
//! could smuggle a request past a prefix is unit-tested here.

use std::borrow::Cow;

/// A request path that cannot be routed safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed request path: {0}")]
pub struct PathError(pub &'static str);

/// Normalises a request path for routing and forwarding.
///
/// Percent-encoded unreserved characters (letters, digits, `-._~`: RFC 3986 §6.2.2.2),
/// slashes and backslashes (`%2f`, `%5c`) are decoded, backslashes count as slashes,
/// empty segments (`//`) collapse, and `.`/`..` segments are resolved (never above the
/// root). Other escapes are left as they are. Paths that need none of this are returned
/// without copying.
///
/// A dot segment carrying `;` parameters (`..;`, `.;jsessionid=1`, also spelled with
/// `%2e` or `%3b`) is refused: servlet-style upstreams drop the parameters and resolve
/// it as a dot segment, so `/G2A/..;/admin` would reach `/admin` with `/G2A/`'s token.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError("the path must start with `/`"));
    }
    // A dot segment with parameters starts with `.` right after a `/`, or with an
    // escape: either way `is_plain` sends it down the slow path below.
    if is_plain(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }

    let decoded = decode_separators(raw);
    let trailing_slash = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s if is_dot_segment_with_params(s) => {
                return Err(PathError("a dot segment with `;` parameters (`..;`, `.;x`)"));
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// True when the path has nothing to normalise: no `%`, no `\\`, no `//` or `/.`.
///
/// One pass over the bytes: it runs on every request, and `str::contains` with a
/// two-byte needle on a short path costs a searcher's set-up each time.
fn is_plain(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        if b == b'%' || b == b'\\' || (prev == b'/' && (b == b'/' || b == b'.')) {
            return false;
        }
        prev = b;
    }
    true
}

/// True for a (decoded) segment whose part before its first `;` (or `%3b`, which
/// servlet containers decode) is `.` or `..`: `..;`, `.;jsessionid=1`, `..%3Bx`.
fn is_dot_segment_with_params(seg: &str) -> bool {
    let params = |rest: &str| rest.starts_with(';') || rest.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("%3b"));
    seg.strip_prefix("..").is_some_and(params) || seg.strip_prefix('.').is_some_and(params)
}

/// Decodes escaped unreserved characters, `%2f` and `%5c`, and turns `\` into `/`.
fn decode_separators(raw: &str) -> String {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            let decoded = match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => match (h * 16 + l) as u8 {
                    b'/' | b'\\' => Some('/'),
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => Some(c as char),
                    _ => None,
                },
                _ => None,
            };
            // A hex digit decoded right after a literal `%` (or `%` and one hex digit)
            // would spell a new escape (`%%32%65` → `%2e`) that the upstream decodes in
            // turn: it stays escaped, so normalising is idempotent.
            let opens_escape = |c: char| {
                let o = out.as_bytes();
                c.is_ascii_hexdigit()
                    && (o.last() == Some(&b'%')
                        || (o.len() >= 2 && o[o.len() - 2] == b'%' && o[o.len() - 1].is_ascii_hexdigit()))
            };
            if let Some(c) = decoded.filter(|c| !opens_escape(*c)) {
                out.push(c);
                i += 3;
                continue;
            }
        }
        let c = raw[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(if c == '\\' { '/' } else { c });
        i += c.len_utf8();
    }
    out
}

/// True when `prefix` covers `path` at a segment boundary: `/G2A/` covers `/G2A/x`
/// and `/G2A`; `/G2A` covers `/G2A/x` but not `/G2AX`.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if let Some(rest) = path.strip_prefix(prefix) {
        return prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/');
    }
    prefix.len() > 1 && prefix.ends_with('/') && path == &prefix[..prefix.len() - 1]
}

/// The path forwarded when the route strips its prefix; always starts with `/`.
pub(crate) fn strip_prefix<'a>(prefix: &str, path: &'a str) -> Cow<'a, str> {
    let rest = path.strip_prefix(prefix.trim_end_matches('/')).unwrap_or(path);
    if rest.starts_with('/') {
        Cow::Borrowed(rest)
    } else {
        Cow::Owned(format!("/{rest}"))
    }
}

/// Longest-prefix routing over values of any type; built once per config.
#[derive(Debug, Clone)]
pub struct Router<T> {
    /// Sorted by prefix length, longest first.
    entries: Vec<(String, T)>,
}

impl<T> Router<T> {
    /// Compiles the table.
    pub fn new(entries: impl IntoIterator<Item = (String, T)>) -> Router<T> {
        let mut entries: Vec<(String, T)> = entries.into_iter().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Router { entries }
    }

    /// The route with the longest prefix covering `path`.
    #[inline]
    pub fn find(&self, path: &str) -> Option<&T> {
        self.entries.iter().find(|(p, _)| prefix_matches(p, path)).map(|(_, v)| v)
    }
}

/// True when `path` (or a query string) may hold a `{organizerKey}`/`{accountKey}`
/// placeholder (raw or escaped): a cheap look for `{` or `%7b`, no allocation.
#[inline]
pub(crate) fn has_key_placeholder(path: &str) -> bool {
    let b = path.as_bytes();
    b.contains(&b'{') || b.windows(3).any(|w| w[0] == b'%' && w[1] == b'7' && (w[2] | 0x20) == b'b')
}

/// Which key a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyName {
    /// `{organizerKey}`.
    Organizer,
    /// `{accountKey}`.
    Account,
}

impl KeyName {
    /// The key in words, for messages: `organizer key`, `account key`.
    pub(crate) fn words(self) -> &'static str {
        match self {
            KeyName::Organizer => "organizer key",
            KeyName::Account => "account key",
        }
    }

    /// The placeholder as a client writes it.
    pub(crate) fn placeholder(self) -> &'static str {
        match self {
            KeyName::Organizer => "{organizerKey}",
            KeyName::Account => "{accountKey}",
        }
    }
}

/// A request names a placeholder whose key the credential does not have: it cannot be
/// forwarded (the upstream would get the placeholder itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no {} to fill in {}", .0.words(), .0.placeholder())]
pub struct MissingKey(pub KeyName);

/// Replaces whole path segments `{organizerKey}` and `{accountKey}` (also written
/// `%7BorganizerKey%7D`, hex in any case) with the credential's keys, each escaped as one
/// path segment: whatever a key holds, the path keeps its segments (`/`, `?`, `#`, `%`
/// and `;` are escaped, and a key of dots alone has its dots escaped, so it is never a
/// dot segment). A placeholder whose key is unknown (or empty) is a [`MissingKey`].
pub fn substitute_keys(
    path: &str,
    organizer_key: Option<&str>,
    account_key: Option<&str>,
) -> Result<String, MissingKey> {
    let mut out = String::with_capacity(path.len() + 32);
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let name = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')).or_else(|| {
            let lower = seg.get(..3)?.eq_ignore_ascii_case("%7b") && seg.len() >= 6;
            let upper = seg.get(seg.len() - 3..)?.eq_ignore_ascii_case("%7d");
            (lower && upper).then(|| &seg[3..seg.len() - 3])
        });
        let key = match name {
            Some("organizerKey") => KeyName::Organizer,
            Some("accountKey") => KeyName::Account,
            _ => {
                out.push_str(seg);
                continue;
            }
        };
        let value = key_of(key, organizer_key, account_key)?;
        if value.bytes().all(|b| b == b'.') {
            // `.` and `..` would be dot segments. (The data path never gets here with such
            // a key: it is not a valid key, so it counts as missing.)
            value.bytes().for_each(|_| out.push_str("%2E"));
        } else {
            out.extend(percent_encoding::utf8_percent_encode(value, KEY_ESCAPES));
        }
    }
    Ok(out)
}

/// The key `name` stands for, when known and not empty.
fn key_of<'k>(
    name: KeyName,
    organizer_key: Option<&'k str>,
    account_key: Option<&'k str>,
) -> Result<&'k str, MissingKey> {
    let key = match name {
        KeyName::Organizer => organizer_key,
        KeyName::Account => account_key,
    };
    key.filter(|k| !k.is_empty()).ok_or(MissingKey(name))
}

/// The placeholders and the key each one stands for.
const PLACEHOLDERS: [(&str, KeyName); 2] = [("organizerKey", KeyName::Organizer), ("accountKey", KeyName::Account)];

/// Replaces `{organizerKey}` and `{accountKey}` (also written `%7BaccountKey%7D`, hex in
/// any case) wherever they stand in the query string's values (`?accountKey={accountKey}`,
/// `?filter=owner:{organizerKey}`) with the credential's keys, percent-encoded as part of
/// one value (`&`, `=`, `#`, `+` escaped: a key never adds a parameter). Names,
/// separators and everything else stay byte for byte; a placeholder in a parameter's
/// name is left as it is. A placeholder whose key is unknown (or empty) is a
/// [`MissingKey`].
pub fn substitute_query_keys(
    query: &str,
    organizer_key: Option<&str>,
    account_key: Option<&str>,
) -> Result<String, MissingKey> {
    let mut out = String::with_capacity(query.len() + 32);
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (name, value) = match pair.find('=') {
            Some(eq) => pair.split_at(eq + 1),
            None => {
                out.push_str(pair);
                continue;
            }
        };
        out.push_str(name);
        let mut rest = value;
        while !rest.is_empty() {
            match placeholder_at(rest) {
                Some((len, name)) => {
                    let key = key_of(name, organizer_key, account_key)?;
                    out.extend(percent_encoding::utf8_percent_encode(key, KEY_ESCAPES));
                    rest = &rest[len..];
                }
                None => {
                    let c = rest.chars().next().map_or(1, char::len_utf8);
                    out.push_str(&rest[..c]);
                    rest = &rest[c..];
                }
            }
        }
    }
    Ok(out)
}

/// What a key is escaped of, in a path segment or a query value: all but RFC 3986's
/// unreserved characters. A valid key (digits, letters, `-_.`) passes unchanged.
const KEY_ESCAPES: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The placeholder at the start of `s`, raw or escaped: its length and which key.
fn placeholder_at(s: &str) -> Option<(usize, KeyName)> {
    let (open, close) = if s.starts_with('{') {
        (1, "}")
    } else if s.get(..3).is_some_and(|o| o.eq_ignore_ascii_case("%7b")) {
        (3, "%7d")
    } else {
        return None;
    };
    PLACEHOLDERS.iter().find_map(|(name, key)| {
        let after = s[open..].strip_prefix(name)?;
        after
            .get(..close.len())
            .filter(|c| c.eq_ignore_ascii_case(close))
            .map(|_| (open + name.len() + close.len(), *key))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_paths_are_borrowed() {
        assert!(matches!(normalize_path("/admin/rest/v1/me").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalize_path("/G2W/rest/v2/x.json").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalize_path("/a.b/c./").unwrap(), Cow::Borrowed(_)));
        for dirty in ["//a", "/a//", "/a/.", "/a/.b", "/%41", "/a\\b", "%"] {
            assert!(!is_plain(dirty.as_bytes()), "{dirty}");
        }
    }

    #[test]
    fn dot_segments_and_escapes() {
        let n = |p| normalize_path(p).unwrap().into_owned();
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/../../etc"), "/etc");
        assert_eq!(n("/G2A/%2e%2e/admin"), "/admin");
        assert_eq!(n("/G2A/%2E%2E%2Fadmin"), "/admin");
        assert_eq!(n("/G2A/..%2fadmin"), "/admin");
        assert_eq!(n("/G2A/..%5cadmin"), "/admin");
        assert_eq!(n("/G2A/..\\admin"), "/admin");
        assert_eq!(n("//G2A//x//"), "/G2A/x/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a%20b/%7BorganizerKey%7D"), "/a%20b/%7BorganizerKey%7D");
        assert_eq!(n("/%47%32%41/x"), "/G2A/x", "escaped letters route as what GoTo decodes them to");
        assert_eq!(n("/G2A/%7e%2D%5F"), "/G2A/~-_");
        assert_eq!(n("/%"), "/%");
        assert_eq!(n("/ab%2"), "/ab%2");
        assert!(normalize_path("*").is_err());
    }

    #[test]
    fn decoding_never_spells_a_new_escape() {
        let n = |p: &str| normalize_path(p).unwrap().into_owned();
        // `%%32%65` must not become `%2e`, which the upstream would decode to `.`.
        assert_eq!(n("/G2A/%%32%65%%32%65/admin"), "/G2A/%%32e%%32e/admin");
        assert_eq!(n("/G2A/%2%65%2%65/admin"), "/G2A/%2%65%2%65/admin");
        assert_eq!(n("/%%36%31"), "/%%361");
        assert_eq!(n("/%25%32%65"), "/%252e", "an escaped `%` is no literal `%`");
        for p in ["/G2A/%%32%65%%32%65/admin", "/G2A/%2%65%2%65/admin", "/%%36%31", "/%%%32%32%32", "/%4%31%31"] {
            let once = n(p);
            assert_eq!(n(&once), once, "{p}");
        }
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        for p in [
            "/G2A/..;/admin",
            "/G2A/.;x/admin",
            "/G2A/%2e%2e;/admin",
            "/G2A/%2E.;/admin",
            "/G2A/..%3b/admin",
            "/G2A/..%3Bx/admin",
            "/G2A/.%3b/admin",
            "/a/..;jsessionid=1/b",
            "/a/.;",
            "/a/..;",
            "/G2A%2f..;/admin",
            "/G2A\\..;\\admin",
        ] {
            assert!(!is_plain(p.as_bytes()), "{p} must take the slow path");
            assert!(normalize_path(p).is_err(), "{p}");
        }
        let n = |p| normalize_path(p).unwrap().into_owned();
        assert_eq!(n("/a/b;c/d"), "/a/b;c/d");
        assert_eq!(n("/a/...;x"), "/a/...;x", "three dots are not a dot segment");
        assert_eq!(n("/a/.x;y/b"), "/a/.x;y/b");
        assert_eq!(n("/a/..x;/b"), "/a/..x;/b");
        assert_eq!(n("/a/;/b"), "/a/;/b");
        assert_eq!(n("/a/b%3b../c"), "/a/b%3b../c");
        assert_eq!(n("/a/%3b/.."), "/a/");
    }

    #[test]
    fn prefix_boundaries() {
        assert!(prefix_matches("/G2A/", "/G2A/x"));
        assert!(prefix_matches("/G2A/", "/G2A"));
        assert!(prefix_matches("/G2A", "/G2A/x"));
        assert!(!prefix_matches("/G2A", "/G2AX"));
        assert!(!prefix_matches("/G2A/", "/G2AX"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn longest_prefix_wins() {
        let r = Router::new(vec![("/".to_string(), 0), ("/G2A/".to_string(), 1), ("/G2A/rest/".to_string(), 2)]);
        assert_eq!(r.find("/G2A/rest/x"), Some(&2));
        assert_eq!(r.find("/G2A/other"), Some(&1));
        assert_eq!(r.find("/admin"), Some(&0));
        let r = Router::new(vec![("/G2A/".to_string(), 1)]);
        assert_eq!(r.find("/admin"), None);
        // an escaped climb out of /G2A/ lands on the other route, never on /G2A/'s
        assert_eq!(r.find(&normalize_path("/G2A/%2e%2e/admin").unwrap()), None);
    }

    #[test]
    fn strip() {
        assert_eq!(strip_prefix("/g2a/", "/g2a/x/y"), "/x/y");
        assert_eq!(strip_prefix("/g2a", "/g2a/x"), "/x");
        assert_eq!(strip_prefix("/g2a/", "/g2a"), "/");
        assert_eq!(strip_prefix("/", "/x"), "/x");
    }

    #[test]
    fn key_substitution() {
        let s = |p| substitute_keys(p, Some("111"), Some("222")).unwrap();
        assert_eq!(s("/G2W/rest/v2/organizers/{organizerKey}/webinars"), "/G2W/rest/v2/organizers/111/webinars");
        assert_eq!(s("/G2W/rest/v2/organizers/%7BorganizerKey%7D/webinars"), "/G2W/rest/v2/organizers/111/webinars");
        assert_eq!(s("/G2W/rest/v2/accounts/%7baccountKey%7d/x"), "/G2W/rest/v2/accounts/222/x");
        assert_eq!(s("/a/{other}/b"), "/a/{other}/b");
        assert_eq!(substitute_keys("/o/{organizerKey}", None, None), Err(MissingKey(KeyName::Organizer)));
        assert_eq!(substitute_keys("/a/%7BaccountKey%7D", Some("1"), Some("")), Err(MissingKey(KeyName::Account)));
        assert_eq!(substitute_keys("/o/{other}/x", None, None).as_deref(), Ok("/o/{other}/x"), "no key needed");
        for p in ["/o/%7borganizerKey%7d", "/o/%7BorganizerKey%7D", "/o/{organizerKey}", "/%7B"] {
            assert!(has_key_placeholder(p), "{p}");
        }
        for p in ["/o/x", "/o/%7", "/o/%7c", "/o/%27b", "/7b%"] {
            assert!(!has_key_placeholder(p), "{p}");
        }
    }

    #[test]
    fn query_key_substitution() {
        let q = |s| substitute_query_keys(s, Some("111"), Some("222")).unwrap();
        assert_eq!(q("accountKey={accountKey}"), "accountKey=222");
        assert_eq!(q("accountKey=%7BaccountKey%7D"), "accountKey=222");
        assert_eq!(q("accountKey=%7baccountkey%7d"), "accountKey=%7baccountkey%7d", "the name is case-sensitive");
        assert_eq!(q("a=1&accountKey=%7baccountKey%7D&b=x%20y"), "a=1&accountKey=222&b=x%20y");
        assert_eq!(q("filter=owner:{organizerKey},acct:%7BaccountKey%7d"), "filter=owner:111,acct:222");
        assert_eq!(q("{accountKey}=1&flag&x=={accountKey}"), "{accountKey}=1&flag&x==222", "names stay");
        assert_eq!(q("x={other}&y=%7B&z={accountKey"), "x={other}&y=%7B&z={accountKey");
        assert_eq!(q("&&a=&=b&c=%7BorganizerKey%7D"), "&&a=&=b&c=111");
        assert_eq!(q("é=ü{accountKey}ö"), "é=ü222ö");
        assert_eq!(substitute_query_keys("k={accountKey}", Some("1"), None), Err(MissingKey(KeyName::Account)));
        assert_eq!(substitute_query_keys("k=%7BorganizerKey%7D", None, Some("")), Err(MissingKey(KeyName::Organizer)));
        assert_eq!(substitute_query_keys("k={accountKey}", None, Some("a b&c")).as_deref(), Ok("k=a%20b%26c"));
    }

    #[test]
    fn hostile_keys_stay_one_segment_or_one_value() {
        let hostile = "../../../admin/rest/v1/users?evil=1#frag";
        let p = substitute_keys("/G2W/rest/v2/organizers/{organizerKey}/webinars", Some(hostile), None).unwrap();
        assert_eq!(p, "/G2W/rest/v2/organizers/..%2F..%2F..%2Fadmin%2Frest%2Fv1%2Fusers%3Fevil%3D1%23frag/webinars");
        for (key, want) in
            [("..", "/o/%2E%2E/x"), (".", "/o/%2E/x"), ("%2e%2e", "/o/%252e%252e/x"), ("a;b", "/o/a%3Bb/x")]
        {
            assert_eq!(substitute_keys("/o/{organizerKey}/x", Some(key), None).unwrap(), want, "{key}");
        }
        let q = substitute_query_keys("accountKey={accountKey}&b=1", None, Some("1&evil=2#x+y")).unwrap();
        assert_eq!(q, "accountKey=1%26evil%3D2%23x%2By&b=1");
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Without keys to fill in, a query is untouched, whatever it holds, unless a
            /// value needs a key: then it is refused.
            #[test]
            fn unknown_keys_leave_the_query_byte_for_byte(q in "[a-zA-Z0-9%{}=&:,;+ é]{0,40}") {
                match substitute_query_keys(&q, None, None) {
                    Ok(same) => prop_assert_eq!(same, q),
                    Err(_) => prop_assert!(q.contains("Key")),
                }
            }

            /// Whatever a key holds, the path keeps its segments and the query its
            /// parameter names; each placeholder decodes back to the key.
            #[test]
            fn any_key_is_one_segment_and_one_value(
                org in "\\PC{1,12}|[./?#%&=;\\\\]{1,6}",
                acct in any::<String>().prop_filter("not empty", |s| !s.is_empty()),
                before in "(/[a-z]{1,3}){0,3}",
                after in "(/[a-z]{1,3}){0,3}",
            ) {
                let path = format!("{before}/{{organizerKey}}/%7baccountKey%7D{after}");
                let out = substitute_keys(&path, Some(&org), Some(&acct)).unwrap();
                prop_assert_eq!(out.split('/').count(), path.split('/').count(), "{:?}", out);
                prop_assert!(!out.contains(['?', '#']), "{:?}", out);
                let segs: Vec<&str> = out.split('/').collect();
                let at = before.split('/').count();
                let decoded = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8().unwrap().into_owned();
                prop_assert_eq!(decoded(segs[at]), org.clone());
                prop_assert_eq!(decoded(segs[at + 1]), acct.clone());
                prop_assert!(segs[at] != "." && segs[at] != "..");

                let query = "a=1&accountKey={accountKey}&f=owner:%7BorganizerKey%7D,x&z";
                let out = substitute_query_keys(query, Some(&org), Some(&acct)).unwrap();
                let names = |q: &str| q.split('&').map(|p| p.split('=').next().unwrap_or("").to_string()).collect::<Vec<_>>();
                prop_assert_eq!(names(&out), names(query), "{:?}", out);
                prop_assert!(!out.contains('#'), "{:?}", out);
                let value = out.split('&').nth(1).unwrap().strip_prefix("accountKey=").unwrap();
                prop_assert_eq!(decoded(value), acct);
            }

            /// A placeholder in any spelling, anywhere in a value, is filled; the rest stays.
            #[test]
            fn a_placeholder_anywhere_in_a_value_is_filled(
                before in "[a-zA-Z0-9=&:,%]{0,12}",
                head in "[a-zA-Z0-9:,=]{0,6}",
                tail in "[a-zA-Z0-9:,=]{0,6}",
                after in "(&[a-zA-Z0-9=:,%]{0,12})?",
                (open, close) in prop_oneof![Just(("{", "}")), Just(("%7B", "%7D")), Just(("%7b", "%7d")), Just(("%7B", "%7d"))],
            ) {
                let before = if before.is_empty() { String::new() } else { format!("{before}&") };
                let q = format!("{before}k={head}{open}accountKey{close}{tail}{after}");
                let want = format!("{before}k={head}222{tail}{after}");
                prop_assert_eq!(substitute_query_keys(&q, None, Some("222")), Ok(want));
            }
        }
    }
}
