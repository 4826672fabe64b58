//! Names the user chose for credentials: the rule a name must follow, and the one way a
//! name is put into, and read back from, a URL path (`/login/{name}`,
//! `/refresh/{name}`).
//!
//! The rule — 1 to 64 ASCII letters, digits, `_`, `-` and `.` — makes a name safe as it
//! is in a URL path, a header, a log line and a file name. The path segment is
//! percent-encoded all the same: a link is built in several places (the status page,
//! notifications, the command line's hints) and read in one (the admin router), and the
//! pair below keeps them agreeing whatever a name holds.

use std::borrow::Cow;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The longest name allowed.
const NAME_MAX_LEN: usize = 64;

/// What a name may hold, in the words errors use.
pub(crate) const NAME_RULE: &str = "a name is 1 to 64 ASCII letters, digits, \"_\", \"-\" and \".\"";

/// Whether `name` follows the rule. `.` and `..` alone are refused too: they are not
/// names in a URL path or a file system.
pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=NAME_MAX_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && name != "."
        && name != ".."
}

/// `name` quoted for a message: in double quotes, with quotes, backslashes and control
/// characters escaped, so an odd name can neither break the line nor pass for another.
pub(crate) fn quoted(name: &str) -> String {
    format!("{name:?}")
}

/// Every byte but the unreserved ones (RFC 3986: letters, digits, `-`, `.`, `_`, `~`) is
/// encoded in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `name` as one URL path segment: `/login/{name_to_path(name)}`. The inverse of
/// [`name_from_path`].
pub(crate) fn name_to_path(name: &str) -> Cow<'_, str> {
    utf8_percent_encode(name, SEGMENT).into()
}

/// The name a URL path segment holds (percent-decoded); `None` when the decoded bytes
/// are not UTF-8 (no credential can have such a name).
pub(crate) fn name_from_path(segment: &str) -> Option<Cow<'_, str>> {
    percent_decode_str(segment).decode_utf8().ok()
}

/// `/login/{name}` on the admin listener: where a person signs `name` in. Every link to
/// it (the status page, notifications, the command line's hints) is built here.
pub(crate) fn login_path(name: &str) -> String {
    format!("/login/{}", name_to_path(name))
}

/// `/refresh/{name}` on the admin listener: where `name` is renewed now (a `POST`).
pub(crate) fn refresh_path(name: &str) -> String {
    format!("/refresh/{}", name_to_path(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_takes_letters_digits_and_three_marks_up_to_64() {
        for ok in ["goto", "g2a", "a.b-c_d", "A", "0", "prod.eu-1", "...", &"x".repeat(64)] {
            assert!(is_valid_name(ok), "{ok:?}");
        }
        for bad in ["", ".", "..", "a b", "x<script>", "prod?x", "a/b", "é", "a\u{1b}[31m", "a%20", &"x".repeat(65)] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn path_segments_round_trip_whatever_the_name() {
        for name in ["goto", "a.b-c_d", "a b", "prod?x", "x<script>", "a/b", "50%", "#frag", "é", "~t"] {
            let seg = name_to_path(name);
            assert!(!seg.contains(['/', '?', '#', ' ', '<', '"']), "{name:?} → {seg}");
            assert_eq!(name_from_path(&seg).as_deref(), Some(name), "{name:?} → {seg}");
        }
        assert_eq!(name_to_path("a.b-c_d"), "a.b-c_d", "a valid name is its own segment");
        assert_eq!(name_to_path("prod?x"), "prod%3Fx");
        assert_eq!(login_path("prod?x"), "/login/prod%3Fx");
        assert_eq!(refresh_path("a b"), "/refresh/a%20b");
        assert_eq!(name_from_path("%FF"), None);
    }

    #[test]
    fn quoting_escapes_what_could_break_a_line() {
        assert_eq!(quoted("a b"), "\"a b\"");
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
        assert_eq!(quoted("a\u{1b}[31m\nx"), "\"a\\u{1b}[31m\\nx\"");
    }
}
