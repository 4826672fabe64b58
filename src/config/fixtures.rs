//! What the config tests share: a good file and a shortcut to its errors.

use super::Config;

/// A valid file with two credentials and two routes, which tests vary by replacing text.
pub(super) const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:18080"
request_timeout = "30s"
max_request_body = "1MiB"

[credentials.g2a]
grant = "password"
client_id = "consumer"
username = "user@example.com"
password = "pw-literal-secret"

[credentials.goto]
grant = "authorization_code"
client_id = "cid"
client_secret = "cs-literal-secret"
refresh_before = "2m"

[[routes]]
prefix = "/G2A/"
upstream = "https://api.getgo.com"
credential = "g2a"

[[routes]]
prefix = "/"
upstream = "https://api.getgo.com"
credential = "goto"
"#;

/// The error `text` is refused with, as printed.
pub(super) fn err(text: &str) -> String {
    Config::parse("t.toml", text).unwrap_err().to_string()
}
