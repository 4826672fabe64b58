//! [`ConfigError`], and toml's errors rebuilt so that they name the key, the line and
//! the expected type — never the value.
//!
//! toml's own messages quote the input ("invalid type: integer `98765…`, expected a
//! string"), and its error span points at the value, not the key. A secret of the wrong
//! type would be echoed verbatim, so a toml error is rebuilt here from three things that
//! are never a value: the dotted key at the span ([`super::keys`]), the line, and the
//! type the schema expected.

use std::cell::RefCell;
use std::ops::Range;
use std::path::PathBuf;

use super::keys;
use super::raw::SECRET_FORMS;

/// A configuration problem, located as precisely as the input allows.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// Why the read failed.
        source: std::io::Error,
    },
    /// A problem at a known place in the file.
    #[error("{file}:{line}: {key}: {message}")]
    At {
        /// The config file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// Dotted key, e.g. `routes[1].credential`.
        key: String,
        /// What is wrong, in words.
        message: String,
    },
    /// Several secrets cannot be read (unset variables, missing files): all of them, so
    /// one run tells everything to set.
    #[error("{} secrets cannot be read:{}", .0.len(), .0.iter().map(|e| format!("\n  {e}")).collect::<String>())]
    Secrets(Vec<ConfigError>),
}

/// Turns byte offsets into line numbers and builds located errors (and warnings).
pub(super) struct Locator<'a> {
    /// The file's name, as errors print it.
    pub(super) file: &'a str,
    /// The file's text.
    pub(super) text: &'a str,
    /// What validation found worth telling but not refusing, located like errors; it
    /// becomes [`super::Config::warnings`].
    pub(super) warnings: RefCell<Vec<String>>,
    /// Secrets that could not be read, reported together at the end of validation.
    pub(super) missing: RefCell<Vec<ConfigError>>,
    /// Every file validation read (secret and PEM files): it becomes
    /// [`super::Config::files`], what a running proxy watches.
    pub(super) files: RefCell<Vec<std::path::PathBuf>>,
}

impl Locator<'_> {
    /// The 1-based line byte `offset` is on.
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
    }

    /// An error at the line `span` starts on.
    pub(super) fn err(&self, span: &Range<usize>, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::At {
            file: self.file.to_string(),
            line: self.line_of(span.start),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Notes a secret that cannot be read (reported with every other one when validation
    /// ends) and answers a placeholder that stands in for it meanwhile.
    pub(super) fn missing(&self, span: &Range<usize>, key: &str, message: String) -> crate::secret::Secret {
        let e = self.err(span, key, message);
        self.missing.borrow_mut().push(e);
        crate::secret::Secret::new("http://unreadable-secret.invalid/")
    }

    /// Notes a file validation read, for [`super::Config::files`].
    pub(super) fn read_file(&self, path: &std::path::Path) {
        let mut files = self.files.borrow_mut();
        if !files.iter().any(|f| f == path) {
            files.push(path.to_path_buf());
        }
    }

    /// Notes a warning at the line `span` starts on, in the form errors print.
    pub(super) fn warn(&self, span: &Range<usize>, key: &str, message: impl std::fmt::Display) {
        let line = self.line_of(span.start);
        self.warnings.borrow_mut().push(format!("{}:{line}: {key}: {message}", self.file));
    }

    /// A located error for a key whose value carries no span: the line of `key`'s own
    /// `key = …` statement when the file has one, else the line of `fallback`.
    pub(super) fn err_key(&self, key: &str, fallback: &Range<usize>, message: impl Into<String>) -> ConfigError {
        let line = self.line_of(keys::statement_start(self.text, key).unwrap_or(fallback.start));
        ConfigError::At { file: self.file.to_string(), line, key: key.to_string(), message: message.into() }
    }
}

/// Turns a toml/serde error into a located error that names the key and the expected
/// type, and never quotes the input.
pub(super) fn toml_error(loc: &Locator<'_>, e: &toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let mut key = keys::key_at(loc.text, span.start);
    // A file that is valid TOML failed the schema (a data error, whose message quotes the
    // value); otherwise toml's parser refused it, and its messages name only grammar
    // tokens and keys.
    let syntax_ok = loc.text.parse::<toml::Table>().is_ok();
    let message = if syntax_ok {
        describe_data_error(e.message(), &mut key)
    } else {
        describe_syntax_error(e.message(), loc.text.get(span.clone()).unwrap_or(""))
    };
    loc.err(&span, key, message)
}

/// A serde data error, rebuilt from the schema's side of it; `key` may grow by the
/// missing field's name.
fn describe_data_error(message: &str, key: &mut String) -> String {
    let first = message.lines().next().unwrap_or("").trim();
    if let Some(field) = first.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(field);
        return "is required".to_string();
    }
    if first.starts_with("unknown field `") {
        return describe_unknown_field(first);
    }
    let (leaf, indexed) = leaf_of(key);
    let by_key = expected_for_key(leaf, indexed);
    // serde's Expected text is the schema's; the value sits before it, so the last
    // "expected " starts the schema's part even when the value itself says "expected ".
    let schema = first.rsplit_once("expected ").map(|(_, e)| e.trim());
    if matches!(schema, Some("a borrowed string" | "a spanned value")) {
        // toml cannot locate a table written with dotted keys (`[credentials]` + `a.grant = …`).
        return "write this table under its own [header] (dotted keys cannot be used here)".to_string();
    }
    let expected = by_key.map(str::to_string).or_else(|| schema.map(friendly_expected));
    let found = first.strip_prefix("invalid type: ").map(found_kind).filter(|k| !k.is_empty());
    match (expected, found) {
        (Some(x), Some(k)) => format!("invalid value: expected {x}, found {k}"),
        (Some(x), None) => format!("invalid value: expected {x}"),
        (None, _) => "invalid value".to_string(),
    }
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "…, expected `a`", or
/// "…, there are no fields"), as the keys the table does take.
fn describe_unknown_field(first: &str) -> String {
    match first.split_once(", expected ") {
        Some((_, allowed)) => {
            let allowed = allowed.strip_prefix("one of ").unwrap_or(allowed).replace('`', "").replace(" or ", ", ");
            if allowed == "env, file" {
                // Inside `{ … }` given for a secret.
                format!("invalid value: expected {SECRET_FORMS}")
            } else {
                format!("unknown key (allowed keys: {allowed})")
            }
        }
        None => "unknown key (this table takes no keys)".to_string(),
    }
}

/// A toml syntax error: its message names grammar tokens and key names only (the parser
/// never quotes values), made one line. As a second guard, a message that contains the
/// text at the error's span is replaced by a neutral one.
fn describe_syntax_error(message: &str, at_span: &str) -> String {
    let text = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(": ");
    let at_span = at_span.trim();
    let echoes = at_span.len() >= 4 && text.contains(at_span);
    if text.is_empty() || (echoes && !text.starts_with("duplicate key")) {
        "invalid TOML".to_string()
    } else {
        text
    }
}

/// The last segment of a dotted key without its index, and whether it had one.
fn leaf_of(key: &str) -> (&str, bool) {
    let last = key.rsplit('.').next().unwrap_or(key);
    match last.split_once('[') {
        Some((name, _)) => (name, true),
        None => (last, false),
    }
}

/// What a key of this name holds, when the schema's own words would be unhelpful
/// ("expected a duration" says nothing of the format).
fn expected_for_key(leaf: &str, indexed: bool) -> Option<&'static str> {
    match (leaf, indexed) {
        (
            "client_id" | "client_secret" | "refresh_token" | "username" | "password" | "pat" | "token" | "redis_url",
            false,
        )
        | ("keys" | "redis_sentinels" | "redis_cluster", true) => Some(SECRET_FORMS),
        ("connect_timeout" | "request_timeout" | "token_wait" | "refresh_before", false) => {
            Some("a duration such as \"30s\"")
        }
        ("max_request_body", false) => Some("a size such as \"10MiB\""),
        ("listen" | "admin_listen", false) => Some("an address such as \"127.0.0.1:8080\""),
        _ => None,
    }
}

/// serde's name for an expected type, in the words of the config file.
fn friendly_expected(schema: &str) -> String {
    match schema {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number (0 or more)".to_string(),
        "isize" | "i64" | "i32" | "i16" | "i8" => "a whole number".to_string(),
        "f64" | "f32" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a sequence" => "a list".to_string(),
        "a map" | "map" => "a table".to_string(),
        "a duration" => "a duration such as \"30s\"".to_string(),
        "parsable string" => "a size such as \"10MiB\"".to_string(),
        s if s.starts_with("struct ") => "a table".to_string(),
        s => s.to_string(),
    }
}

/// The kind of value serde found ("integer `5`" → "integer"): the words before the
/// quoted value, never the value.
fn found_kind(unexpected: &str) -> &'static str {
    let kind = unexpected.split(['`', '"', ',']).next().unwrap_or("").trim();
    match kind {
        "boolean" => "true/false",
        "integer" => "an integer",
        "floating point" => "a number",
        "string" | "char" | "character" => "a string",
        "sequence" => "a list",
        "map" => "a table",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{err, GOOD};
    use super::super::Config;
    use super::SECRET_FORMS;

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = err("[proxy]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n");
        assert!(e.starts_with("t.toml:3: proxy.listen_port: unknown key (allowed keys: listen, "), "{e}");
    }

    #[test]
    fn bad_duration_and_size_refused() {
        assert!(err("[proxy]\nrequest_timeout = \"soon\"\n").starts_with("t.toml:2:"));
        assert!(err("[proxy]\nmax_request_body = \"ten\"\n").starts_with("t.toml:2:"));
    }

    #[test]
    fn wrong_type_secret_names_key_line_and_forms_not_the_value() {
        for (line, value) in [
            ("password = [\"s3cr3t-xyz\"]", "s3cr3t-xyz"),
            ("password = 98765432101234", "98765432101234"),
            ("password = 9876543210.1234", "9876543210.1234"),
            ("password = { env = 5 }", "{ env = 5 }"),
            ("password = { value = \"s3cr3t-xyz\" }", "s3cr3t-xyz"),
            ("password = [\n  1,\n  \"s3cr3t-xyz\",\n]", "s3cr3t-xyz"),
        ] {
            let text = GOOD.replace("password = \"pw-literal-secret\"", line);
            let e = err(&text);
            let at = text.lines().position(|l| l.starts_with("password")).expect("replaced") + 1;
            assert!(e.starts_with(&format!("t.toml:{at}: credentials.g2a.password: invalid value: expected ")), "{e}");
            assert!(e.contains(SECRET_FORMS), "{e}");
            assert!(!e.contains(value), "{line}: {e}");
        }
        let e = err("[credentials.s]\ngrant = \"static\"\ntoken = [\"s3cr3t-xyz\"]\n");
        assert!(e.starts_with("t.toml:3: credentials.s.token: invalid value: expected a string, {"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e =
            err("[credentials.goto]\ngrant = \"client_credentials\"\nclient_id = \"c\"\nclient_secret = { env = 5 }\n");
        assert!(e.starts_with("t.toml:4: credentials.goto.client_secret: invalid value"), "{e}");
        let e = err("[inbound]\nkeys = [\"ok-key\", 98765432101234]\n");
        assert!(e.starts_with("t.toml:2: inbound.keys[1]: invalid value: expected a string, {"), "{e}");
        assert!(!e.contains("98765432101234"), "{e}");
    }

    /// Every key the schema has (and an unknown one), in every section, with a value of
    /// every shape: an error never contains the value. (`{ env }`/`{ file }` are left
    /// out: their errors name the variable or the path, on purpose; a string under a key
    /// that holds a name the user chose is quoted back, also on purpose.)
    #[test]
    fn no_error_echoes_a_value_whatever_the_key_section_or_shape() {
        let keys = super::super::echo_checked_keys().into_iter().chain(["bogus"]);
        // (`ca_file`, `client_cert` and `command` name files and programs, on purpose.)
        let sections = ["", "[proxy]", "[state]", "[inbound]", "[tls]", "[[notify]]", "[[routes]]", "[credentials.c]"];
        let (word, digits) = ("S3cr3tW0rd", "98765432101234");
        let shapes = [
            (format!("\"{word}\""), word),
            (format!("[\"{word}\"]"), word),
            (format!("[\"/\", \"{word}\"]"), word),
            (digits.to_string(), digits),
            (format!("{digits}.5"), digits),
            (format!("{{ value = \"{word}\" }}"), word),
            (format!("{{ env = [\"{word}\"] }}"), word),
            (format!("{{ env = \"X\", file = \"{word}\" }}"), word),
            (format!("\"\"\"\n{word}\"\"\""), word),
            (word.to_string(), word),
            (format!("\"{word}"), word),
            (format!("[1, \"{word}\", {{ a = \"{word}\" }}]"), word),
        ];
        let mut on_the_line = 0;
        for section in sections {
            for key in keys.clone() {
                for (value, hidden) in &shapes {
                    let text = format!("{section}\n{key} = {value}\n");
                    if let Err(e) = Config::parse("t.toml", &text) {
                        let e = e.to_string();
                        if super::super::is_quoted_name(key, value) && e.contains(&format!("\"{hidden}\"")) {
                            // A name the user chose, quoted back on purpose.
                            continue;
                        }
                        assert!(!e.contains(hidden), "{text:?} echoed: {e}");
                        on_the_line += usize::from(e.starts_with("t.toml:2:"));
                    }
                }
            }
        }
        assert!(on_the_line > 1500, "only {on_the_line} errors pointed at the value's line");
    }

    #[test]
    fn wrong_type_values_name_the_expected_type_only() {
        // (text, error start, text that must not appear)
        let cases = [
            (
                "[proxy]\nworkers = \"77x\"\n",
                "t.toml:2: proxy.workers: invalid value: expected a whole number (0 or more), found a string",
                "77x",
            ),
            ("[proxy]\nworkers = -77777\n", "t.toml:2: proxy.workers: invalid value: expected a whole number", "77777"),
            (
                "[proxy]\nrequest_timeout = \"soonish\"\n",
                "t.toml:2: proxy.request_timeout: invalid value: expected a duration such as \"30s\"",
                "soonish",
            ),
            (
                "[proxy]\nmax_request_body = \"tenXYZ\"\n",
                "t.toml:2: proxy.max_request_body: invalid value: expected a size such as \"10MiB\"",
                "tenXYZ",
            ),
            (
                "[proxy]\nlisten = \"1.2.3.4:99999\"\n",
                "t.toml:2: proxy.listen: invalid value: expected an address such as",
                "99999",
            ),
            (
                "[credentials.a]\ngrant = \"static\"\ntoken = \"t\"\nscope = 98765\n",
                "t.toml:4: credentials.a.scope: invalid value: expected a string, found an integer",
                "98765",
            ),
            (
                "[credentials.a]\ngrant = \"static\"\ntoken = \"t\"\nrefresh_before = \"later7\"\n",
                "t.toml:4: credentials.a.refresh_before: invalid value: expected a duration",
                "later7",
            ),
            (
                "[[routes]]\nprefix = \"/\"\nupstream = \"http://x\"\n[[routes]]\nprefix = 12345\n",
                "t.toml:5: routes[1].prefix: invalid value: expected a string, found an integer",
                "12345",
            ),
            (
                "[[routes]]\nprefix = \"/\"\nupstream = \"http://x\"\nmethods = [\"GET\",\n  7777]\n",
                "t.toml:5: routes[0].methods[1]: invalid value: expected a string",
                "7777",
            ),
            (
                "[[routes]]\nprefix = \"/\"\nupstream = \"http://x\"\nrate_limit = \"fast7\"\n",
                "t.toml:4: routes[0].rate_limit: invalid value: expected a number, found a string",
                "fast7",
            ),
            (
                "[[routes]]\nprefix = \"/\"\nupstream = \"http://x\"\nstrip_prefix = \"yes7\"\n",
                "t.toml:4: routes[0].strip_prefix: invalid value: expected true or false",
                "yes7",
            ),
            ("[[routes]]\nupstream = \"http://x\"\n", "t.toml:1: routes[0].prefix: is required", "http://x"),
            ("[credentials.a]\ntoken = \"t\"\n", "t.toml:1: credentials.a.grant: is required", "\"t\""),
            ("routes = 5\n", "t.toml:1: routes: invalid value: expected a list, found an integer", "5\n"),
            ("proxy = 98765\n", "t.toml:1: proxy: invalid value: expected a table", "98765"),
            ("[state]\nstore = \"s3cr3t\"\n", "t.toml:2: state.store: is not a store", "s3cr3t"),
            (
                "[credentials.a]\ngrant = \"static\"\ntoken = \"t\"\nbogus = \"s3cr3t\"\n",
                "t.toml:4: credentials.a.bogus: unknown key (allowed keys: grant, ",
                "s3cr3t",
            ),
            (
                "[inbound]\nallow_cidrs = [\"s3cr3t\"]\n",
                "t.toml:2: inbound.allow_cidrs[0]: is not an address or CIDR",
                "s3cr3t",
            ),
            (
                "[inbound]\ntls_cert = \"/s3cr3t/c.pem\"\ntls_key = \"/s3cr3t/k.pem\"\n",
                "t.toml:2: inbound.tls_cert: is not a readable file",
                "s3cr3t",
            ),
        ];
        for (text, start, hidden) in cases {
            let e = err(text);
            assert!(e.starts_with(start), "{text:?}:\n  {e}\n  expected: {start}");
            assert!(!e.contains(hidden), "{text:?} echoed {hidden:?}: {e}");
        }
    }

    #[test]
    fn syntax_errors_name_the_key_and_line() {
        let e = err("[proxy]\nlisten = 127.0.0.1:80\n");
        assert!(e.starts_with("t.toml:2: proxy.listen: "), "{e}");
        let e = err("[credentials.a]\ngrant = \"static\"\ntoken = s3cr3t-xyz\n");
        assert!(e.starts_with("t.toml:3: credentials.a.token: "), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = err("[proxy]\nlisten = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\n");
        assert!(e.starts_with("t.toml:3: proxy.listen: duplicate key"), "{e}");
        let e = err("[credentials.a]\ngrant = \"static\"\ntoken = \"s3cr3t-xyz\n");
        assert!(e.starts_with("t.toml:3: credentials.a.token: ") && !e.contains("s3cr3t"), "{e}");
    }
}
