//! Organizer/account keys and who signed in, as data from outside. A token answer, a
//! keys lookup and an id_token all hand them out, and a key ends up inside the path or
//! query of requests that carry the bearer token: every one is checked here where it
//! enters, and one that fails is dropped (treated as absent) with a warning that names
//! the credential and the field, never the value.

/// Longest organizer or account key accepted (GoTo's are about 19 digits).
const MAX_KEY_LEN: usize = 64;

/// Longest principal accepted, in characters. A longer one is dropped, not cut: it
/// names an account and matches `X-GoTo-Account`, and a cut name would be another one.
pub(crate) const MAX_PRINCIPAL: usize = 200;

/// True when `key` may stand in for `{organizerKey}`/`{accountKey}`: 1–64 ASCII letters,
/// digits, `-`, `_` and `.`, and not dots alone (`.` or `..` in a path is a dot segment
/// that climbs). Such a key needs no escaping in a path segment or a query value.
pub fn valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    (1..=MAX_KEY_LEN).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && !b.iter().all(|c| *c == b'.')
}

/// Why a principal is refused, or `None` when it is fine: at most [`MAX_PRINCIPAL`]
/// characters and no control characters (it is shown on pages and in logs).
fn principal_fault(principal: &str) -> Option<&'static str> {
    if principal.chars().nth(MAX_PRINCIPAL).is_some() {
        Some("longer than 200 characters")
    } else if principal.chars().any(char::is_control) {
        Some("holds control characters")
    } else {
        None
    }
}

/// A value from outside that was dropped: which field of which answer, and why. Kept
/// until the caller, who knows the credential, logs it ([`warn_dropped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// The field as the answer spells it (`organizer_key`, `id`, `id_token.email`…).
    pub(crate) field: &'static str,
    /// Why, in words for the log.
    pub(crate) why: &'static str,
    /// Its length in characters (the value itself is never logged).
    pub(crate) chars: usize,
}

/// The first valid key among `candidates` (field name, value if present); each present
/// but invalid one is noted in `dropped`. Empty values count as absent.
pub(crate) fn first_key(
    candidates: impl IntoIterator<Item = (&'static str, Option<String>)>,
    dropped: &mut Vec<Dropped>,
) -> Option<String> {
    first_valid(candidates, dropped, |k| {
        (!valid_key(k)).then_some("not 1-64 ASCII letters, digits, '-', '_' or '.' (nor dots alone)")
    })
}

/// The first valid principal among `candidates`, as [`first_key`] does for keys;
/// blank values count as absent.
pub(crate) fn first_principal(
    candidates: impl IntoIterator<Item = (&'static str, Option<String>)>,
    dropped: &mut Vec<Dropped>,
) -> Option<String> {
    first_valid(candidates, dropped, principal_fault)
}

fn first_valid(
    candidates: impl IntoIterator<Item = (&'static str, Option<String>)>,
    dropped: &mut Vec<Dropped>,
    fault: impl Fn(&str) -> Option<&'static str>,
) -> Option<String> {
    for (field, value) in candidates {
        let Some(value) = value.filter(|v| !v.trim().is_empty()) else { continue };
        match fault(&value) {
            None => return Some(value),
            Some(why) => dropped.push(Dropped { field, why, chars: value.chars().count() }),
        }
    }
    None
}

/// Logs one warning per dropped value: the credential, where the value came from
/// (`token answer`, `keys lookup`, `stored token`), the field and why, never the value.
pub(crate) fn warn_dropped(credential: &str, source: &'static str, dropped: &[Dropped]) {
    for d in dropped {
        tracing::warn!(
            credential = %credential,
            source,
            field = d.field,
            chars = d.chars,
            "a key or principal from outside was dropped: {}",
            d.why
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_table() {
        let long = "9".repeat(MAX_KEY_LEN);
        let too_long = "9".repeat(MAX_KEY_LEN + 1);
        for (key, ok) in [
            ("8439885694023999999", true),
            ("abc-DEF_1.2", true),
            ("a", true),
            (long.as_str(), true),
            ("...a", true),
            ("", false),
            (too_long.as_str(), false),
            (".", false),
            ("..", false),
            ("...", false),
            ("../../../admin/rest/v1/users?evil=1#frag", false),
            ("a/b", false),
            ("a\\b", false),
            ("a?b", false),
            ("a#b", false),
            ("a%2fb", false),
            ("a&b=c", false),
            ("a=b", false),
            ("a;b", false),
            ("a b", false),
            ("a+b", false),
            ("a~b", false),
            ("{organizerKey}", false),
            ("a\nb", false),
            ("a\0", false),
            ("é", false),
            ("１２３", false), // full-width digits are not ASCII digits
        ] {
            assert_eq!(valid_key(key), ok, "{key:?}");
        }
    }

    #[test]
    fn principals_table() {
        let at_most = "p".repeat(MAX_PRINCIPAL);
        let beyond = "p".repeat(MAX_PRINCIPAL + 1);
        let wide = "é".repeat(MAX_PRINCIPAL); // 400 bytes, 200 characters
        for (p, ok) in [
            ("jane@example.com", true),
            (at_most.as_str(), true),
            (wide.as_str(), true),
            (beyond.as_str(), false),
            ("a\nb", false),
            ("a\u{1b}[31m", false),
        ] {
            assert_eq!(principal_fault(p).is_none(), ok, "{p:?}");
        }
    }

    #[test]
    fn the_first_valid_value_wins_and_each_bad_one_is_noted() {
        let mut dropped = Vec::new();
        let k = first_key(
            [
                ("organizer_key", Some("../x".to_string())),
                ("organizerKey", None),
                ("key", Some(String::new())),
                ("id", Some("42".to_string())),
            ],
            &mut dropped,
        );
        assert_eq!(k.as_deref(), Some("42"));
        assert_eq!(dropped, [Dropped { field: "organizer_key", why: dropped[0].why, chars: 4 }]);
        let mut dropped = Vec::new();
        let huge = "a".repeat(1 << 20);
        let p = first_principal([("principal", Some(huge)), ("email", Some("  ".into()))], &mut dropped);
        assert_eq!(p, None, "a blank value is absent, not dropped");
        assert_eq!(dropped.len(), 1);
        assert_eq!((dropped[0].field, dropped[0].chars), ("principal", 1 << 20));
    }
}
