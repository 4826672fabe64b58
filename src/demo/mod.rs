//! `goto-auth-proxy demo`: the whole product with no set-up. Starts the mock GoTo
//! server (the `goto-mock` crate) on loopback, a proxy configured for it with one OAuth
//! credential (seeded as if signed in), one Direct Login credential and one account
//! credential (`people`, under `/people/`) that two mock people sign in to through the
//! proxy's own `/login`, and builds a banner of `curl` lines that work as printed.
//!
//! The integration tests and benches use the same mock (with its `faults` feature), so
//! what the demo shows is what the tests prove.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::app::{self, Running, StartError};
use crate::config::{Config, ConfigError};

use goto_mock::{MockGoto, MockOptions, MockUser};

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
    #[error(transparent)]
    Start(#[from] StartError),
    /// `GOTO_AUTH_PROXY_DEMO_TOKEN_LIFETIME` is not a duration.
    #[error("{TOKEN_LIFETIME_ENV}={0:?} is not a duration such as \"2s\" or \"2m\"")]
    Lifetime(String),
    /// Signing the demo's people in through `/login` failed (a bug).
    #[error("cannot sign the demo's people in: {0}")]
    SignIn(String),
}

/// The demo's account credential: many people sign in to it, each request picks one.
const PEOPLE: &str = "people";

/// The people signed in to the [`PEOPLE`] credential when the demo starts: each
/// account's name and the mock GoTo user behind it (organizer keys
/// `7000000000000000001` and `…002`). Public: the tests check each answer is the right
/// person's.
pub fn people() -> Vec<(&'static str, MockUser)> {
    let person = |n: u32, name: &'static str, first: &str| {
        let user = MockUser {
            email: format!("{name}@example.com"),
            first_name: first.into(),
            last_name: "Example".into(),
            ..MockUser::numbered(n)
        };
        (name, user)
    };
    vec![person(1, "alice", "Alice"), person(2, "bob", "Bob")]
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

/// The demo's config: three credentials against the mock, state under `state_dir`,
/// written there too (0600: it holds the mock's client secret) so that a user can read
/// it, `check` it, and copy from it.
fn config(
    mock: &MockGoto,
    seed_refresh_token: &str,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    state_dir: &Path,
) -> Result<(Config, Option<std::path::PathBuf>), ConfigError> {
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

[credentials.{PEOPLE}]
grant = "authorization_code"
client_id = "{client_id}"
client_secret = "{client_secret}"
accounts = true
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
prefix = "/{PEOPLE}/"
upstream = "{m}"
credential = "{PEOPLE}"
strip_prefix = true

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
    let path = state_dir.join("goto-auth-proxy-demo.toml");
    let written = {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&path).and_then(|mut f| f.write_all(text.as_bytes()))
    };
    match written {
        Ok(()) => Config::parse(&path.display().to_string(), &text).map(|c| (c, Some(path))),
        // Nowhere to show it: the demo runs all the same.
        Err(_) => Config::parse("(demo)", &text).map(|c| (c, None)),
    }
}

/// Starts the mock and the proxy, and builds the banner. Public: `cli`'s `demo` command
/// and the examples tests start the demo with it.
pub async fn start(listen: SocketAddr, admin_listen: SocketAddr, state_dir: &Path) -> Result<Demo, DemoError> {
    let lifetime = token_lifetime(std::env::var(TOKEN_LIFETIME_ENV).ok().as_deref())?;
    let mock = MockGoto::start(MockOptions {
        token_lifetime: lifetime,
        api_quota: Some(DEMO_QUOTA),
        known_paths_only: true,
        more_users: people().into_iter().map(|(_, user)| user).collect(),
        ..MockOptions::default()
    })
    .await?;
    let seed = mock.mint_refresh_token();
    let (cfg, cfg_file) = config(&mock, &seed, listen, admin_listen, state_dir)?;
    let running = app::start(cfg).await?;
    for (name, user) in people() {
        if let Err(e) = sign_in(running.admin_addr, name, &user.email).await {
            running.stop().await;
            return Err(e);
        }
    }
    let banner = banner(running.proxy_addr, running.admin_addr, &mock.url(), &people(), cfg_file.as_deref());
    Ok(Demo { running, mock, banner })
}

/// Signs `email` in as account `name` of [`PEOPLE`] the way a person does: the admin
/// listener's `/login/people?account=NAME`, GoTo's sign-in page (the mock's, told who
/// signs in by OpenID's `login_hint`), and its redirect back to `/callback`.
async fn sign_in(admin: SocketAddr, name: &str, email: &str) -> Result<(), DemoError> {
    let failed = |e: reqwest::Error| DemoError::SignIn(e.without_url().to_string());
    let http =
        reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().map_err(failed)?;
    let admin = if admin.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], admin.port())) } else { admin };
    let start = http.get(format!("http://{admin}/login/{PEOPLE}?account={name}")).send().await.map_err(failed)?;
    let mut authorize = location(&start, "/login")?;
    authorize.query_pairs_mut().append_pair("login_hint", email);
    let approved = http.get(authorize).send().await.map_err(failed)?;
    let callback = location(&approved, "the sign-in page")?;
    let done = http.get(callback).send().await.map_err(failed)?;
    if !done.status().is_success() {
        return Err(DemoError::SignIn(format!("/callback answered {} for {name:?}", done.status())));
    }
    Ok(())
}

/// Where a redirect answer points; an error naming `what` when it is no redirect.
fn location(res: &reqwest::Response, what: &str) -> Result<url::Url, DemoError> {
    res.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| url::Url::parse(v).ok())
        .ok_or_else(|| DemoError::SignIn(format!("{what} answered {} with no redirect", res.status())))
}

fn banner(
    proxy: SocketAddr,
    admin: SocketAddr,
    mock: &str,
    people: &[(&str, MockUser)],
    config_file: Option<&Path>,
) -> String {
    let config = config_file.map_or_else(String::new, |f| {
        let f = f.display();
        format!(
            "The config it runs is {f}; this prints it, secrets redacted:\n\n  goto-auth-proxy check --config {f}\n\n\
             Sign in the way you will with a real GoTo account (the mock approves at once): this\n\
             prints a sign-in URL; open it, then paste the address your browser ends on into the\n\
             same terminal.\n\n  \
             goto-auth-proxy login --config {f} --credential goto\n\n"
        )
    });
    let (first, second) = match people {
        [a, b, ..] => (a, b),
        _ => unreachable!("the demo signs two people in"),
    };
    let (alice, bob, bob_key) = (first.0, second.0, &second.1.organizer_key);
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

The first line calls "GoTo" with no auth; the second fills in the organizer key (the
answer shows the path and query "GoTo" received; a path no GoTo API serves answers a
JSON 404 naming it); the third, a GoTo Connect call, the account key in the query string; the
POST body passes through byte for byte; /G2A/ uses a Direct Login credential. The
`_mock/revoke` line kills every token at "GoTo": the next request is rejected upstream,
and the proxy renews the token and retries it, so you still get a 200. The last line
runs the browser sign-in flow, auto-approved by the mock.

Two people, {alice} and {bob}, are signed in to "{PEOPLE}", a credential that holds many
accounts (under /{PEOPLE}/). A request picks one with the X-GoTo-Account header, or by the
organizer key in its path; each answer's organizerKey is whose token served it:

  curl -s -H 'X-GoTo-Account: {alice}' http://{proxy}/{PEOPLE}/G2W/rest/v2/organizers/%7BorganizerKey%7D/webinars
  curl -s -H 'X-GoTo-Account: {bob}' http://{proxy}/{PEOPLE}/G2W/rest/v2/organizers/%7BorganizerKey%7D/webinars
  curl -s http://{proxy}/{PEOPLE}/G2W/rest/v2/organizers/{bob_key}/webinars
  curl -s 'http://{admin}/tokens?credential={PEOPLE}'

The status page http://{admin}/ lists them; its Connect an account form adds more.

{config}Ctrl-C stops the demo.
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
