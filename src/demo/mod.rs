//! `goto-auth-proxy demo`: the whole product with no set-up. Starts the mock GoTo
//! server (`demo::mock`) on loopback, a proxy configured for it with one OAuth
//! credential (seeded as if signed in) and one Direct Login credential, and builds a
//! banner of `curl` lines that work as printed.
//!
//! The mock lives here because the demo is the one part of the product that runs it;
//! the integration tests and benches use the same mock, so what the demo shows is what
//! the tests prove. It is not part of the proxy's API (see its module doc).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::app::{self, Running, StartError};
use crate::config::{Config, ConfigError};

// Hidden from the docs and not a supported API: public only so this crate's integration
// tests, benches and the `bench_mock_goto` example can run the one mock the demo runs.
#[doc(hidden)]
pub mod mock;

use mock::{MockGoto, MockOptions};

/// Why the demo could not start. Public: `cli` tells it apart from the proxy's own
/// start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The mock server could not bind.
    #[error("cannot start the mock GoTo server: {0}")]
    Mock(#[from] std::io::Error),
    /// The generated config was refused (a bug).
    #[error("demo config: {0}")]
    Config(#[from] ConfigError),
    /// The proxy could not start (a busy port, usually).
    #[error("{0}")]
    Start(#[from] StartError),
    /// `GOTO_AUTH_PROXY_DEMO_TOKEN_LIFETIME` is not a duration.
    #[error("{TOKEN_LIFETIME_ENV}={0:?} is not a duration such as \"2s\" or \"2m\"")]
    Lifetime(String),
}

/// Environment variable that shortens the mock's token lifetime (soak tests renew every
/// second or two); not a documented setting.
const TOKEN_LIFETIME_ENV: &str = "GOTO_AUTH_PROXY_DEMO_TOKEN_LIFETIME";

/// The demo's token lifetime: 2 minutes, or the environment's override.
fn token_lifetime(env: Option<&str>) -> Result<Duration, DemoError> {
    match env {
        None => Ok(Duration::from_secs(120)),
        Some(v) => match humantime::parse_duration(v.trim()) {
            Ok(d) if d >= Duration::from_secs(1) => Ok(d),
            _ => Err(DemoError::Lifetime(v.to_string())),
        },
    }
}

/// GoTo's documented quota, which the demo's mock enforces: requests per second per
/// token and API.
const DEMO_QUOTA: u32 = 10;

/// A running demo. Public: `cli` prints its banner and stops it; the examples tests run
/// the shipped scripts against it.
pub struct Demo {
    /// The proxy.
    pub running: Running,
    /// The mock GoTo server behind it.
    pub mock: MockGoto,
    /// What to print for the user.
    pub banner: String,
}

/// The demo's config: two credentials against the mock, state under `state_dir`.
fn config(
    mock: &MockGoto,
    seed_refresh_token: &str,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    state_dir: &Path,
) -> Result<Config, ConfigError> {
    let o = mock.options();
    let m = mock.url();
    let text = format!(
        r#"
[proxy]
listen = "{listen}"
admin_listen = "{admin_listen}"
token_wait = "5s"

[state]
path = {state:?}

[credentials.goto]
grant = "authorization_code"
client_id = "{client_id}"
client_secret = "{client_secret}"
refresh_token = "{seed_refresh_token}"
token_url = "{m}/oauth/token"
authorize_url = "{m}/oauth/authorize"
keys_url = "{m}/identity/v1/Users/me"
refresh_before = "30s"

[credentials.g2a]
grant = "password"
client_id = "{consumer_key}"
username = "{user_id}"
password = "{password}"
token_url = "{m}/oauth/access_token"
refresh_before = "30s"

[[routes]]
prefix = "/G2A/"
upstream = "{m}"
credential = "g2a"

[[routes]]
prefix = "/"
upstream = "{m}"
credential = "goto"
"#,
        state = state_dir.join("goto-auth-proxy-demo.json").display().to_string(),
        client_id = o.client_id,
        client_secret = o.client_secret,
        consumer_key = o.consumer_key,
        user_id = o.user_id,
        password = o.password,
    );
    Config::parse("(demo)", &text)
}

/// Starts the mock and the proxy, and builds the banner. Public: `cli`'s `demo` command
/// and the examples tests start the demo with it.
pub async fn start(listen: SocketAddr, admin_listen: SocketAddr, state_dir: &Path) -> Result<Demo, DemoError> {
    let lifetime = token_lifetime(std::env::var(TOKEN_LIFETIME_ENV).ok().as_deref())?;
    let mock = MockGoto::start(MockOptions {
        token_lifetime: lifetime,
        api_quota: Some(DEMO_QUOTA),
        ..MockOptions::default()
    })
    .await?;
    let seed = mock.mint_refresh_token();
    let cfg = config(&mock, &seed, listen, admin_listen, state_dir)?;
    let running = app::start(cfg).await?;
    let banner = banner(running.proxy_addr, running.admin_addr, &mock.url());
    Ok(Demo { running, mock, banner })
}

fn banner(proxy: SocketAddr, admin: SocketAddr, mock: &str) -> String {
    format!(
        r#"goto-auth-proxy demo: a mock GoTo API and token endpoint run at {mock}; no credentials needed.

  status page  http://{admin}/   open it in a browser: credentials, routes, Sign in, Refresh now
  data path    http://{proxy}   send plain requests; the proxy adds `Authorization: Bearer …`
  admin        http://{admin}   /tokens /readyz /metrics

Paste any of these into another terminal:

  curl -s http://{proxy}/admin/rest/v1/me
  curl -s http://{proxy}/G2W/rest/v2/organizers/%7BorganizerKey%7D/webinars
  curl -s 'http://{proxy}/voice-admin/v1/phone-numbers?accountKey=%7BaccountKey%7D'
  curl -s -X POST -H 'Content-Type: application/json' -d '{{"subject":"Weekly sync"}}' http://{proxy}/G2M/rest/meetings
  curl -s http://{proxy}/G2A/rest/v1/sessions
  curl -s http://{admin}/tokens
  curl -s -X POST {mock}/_mock/revoke
  curl -s http://{proxy}/admin/rest/v1/me
  curl -s http://{admin}/readyz
  curl -s http://{admin}/metrics
  curl -sL http://{admin}/login/goto

The first line calls "GoTo" with no auth; the second fills in the organizer key; the
third, a GoTo Connect call, the account key in the query string; the
POST body passes through byte for byte; /G2A/ uses a Direct Login credential. The
`_mock/revoke` line kills every token at "GoTo": the next request is rejected upstream,
and the proxy renews the token and retries it, so you still get a 200. The last line
runs the browser sign-in flow, auto-approved by the mock.

Ctrl-C stops the demo.
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_override() {
        assert_eq!(token_lifetime(None).unwrap(), Duration::from_secs(120));
        assert_eq!(token_lifetime(Some("2s")).unwrap(), Duration::from_secs(2));
        assert!(token_lifetime(Some("soon")).is_err());
        assert!(token_lifetime(Some("10ms")).is_err());
    }
}
