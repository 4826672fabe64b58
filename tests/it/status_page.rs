//! The status page at the admin listener's `/`: served self-contained under a strict
//! CSP, its buttons usable from the page itself and from nowhere else, and — in a real
//! headless Chromium driven over WebDriver — rows that show each credential's state,
//! a **Refresh now** that renews, and a **Sign in** that turns a credential valid.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use fantoccini::{Client, ClientBuilder, Locator};
use goto_mock::{MockGoto, MockOptions, MockUser};

use crate::support::*;

/// `goto` (seeded: valid), `signin` (never signed in: needs a person), `g2a` (Direct
/// Login), each on its own route.
async fn three_credentials() -> Stack {
    stack(MockOptions::default(), |mock: &MockGoto, dir: &Path| {
        let seed = mock.mint_refresh_token();
        config_text(
            dir,
            "",
            &format!(
                "{}\n{}\n{}\n{}\n{}\n{}",
                code_cred("goto", mock, Some(&seed)),
                code_cred("signin", mock, None),
                password_cred("g2a", mock),
                route("/G2A/", mock, Some("g2a")),
                route("/S/", mock, Some("signin")),
                route("/", mock, Some("goto")),
            ),
        )
    })
    .await
}

async fn tokens(s: &Stack) -> serde_json::Value {
    s.http.get(s.admin("/tokens")).send().await.unwrap().json().await.unwrap()
}

/// Waits until `/tokens` says `credential` is in `state`.
async fn wait_state(s: &Stack, credential: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let t = tokens(s).await;
        if t[credential]["state"] == state {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{credential} never became {state}: {t}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_page_is_self_contained_readable_without_javascript_and_shows_no_secret() {
    let s = three_credentials().await;
    wait_state(&s, "goto", "valid").await;
    wait_state(&s, "signin", "needs_login").await;
    assert_eq!(s.get("/G2A/rest/v1/sessions").await.status(), 200);

    let res = s.http.get(s.admin("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    let csp = res.headers()["content-security-policy"].to_str().unwrap().to_string();
    let page = res.text().await.unwrap();

    // One nonce allows the page's own style and script; nothing else may load or run.
    let nonce = csp.split("'nonce-").nth(1).and_then(|r| r.split('\'').next()).expect("a nonce in the CSP").to_string();
    assert!(
        csp.starts_with("default-src 'none';")
            && csp.contains("connect-src 'self'")
            && csp.contains("form-action 'self'"),
        "{csp}"
    );
    assert!(
        page.contains(&format!("<style nonce=\"{nonce}\">")) && page.contains(&format!("<script nonce=\"{nonce}\">")),
        "{page}"
    );
    assert_eq!(page.matches("<script").count(), 1, "one inline script");
    for outside in [" src=", "<link", "@import", "url("] {
        assert!(!page.contains(outside), "the page loads something ({outside}): {page}");
    }
    // A second load has a fresh nonce.
    let again = s.http.get(s.admin("/")).send().await.unwrap();
    assert!(!again.headers()["content-security-policy"].to_str().unwrap().contains(&nonce));

    // Without JavaScript, the rows are in the HTML: states in words, the buttons, routes.
    assert!(page.contains(r#"<span class="state state-valid">valid</span>"#), "{page}");
    assert!(page.contains(r#"<span class="state state-needs_login">needs_login</span>"#), "{page}");
    assert!(page.contains(r#"href="/login/goto""#) && page.contains(r#"href="/login/signin""#));
    assert!(!page.contains(r#"href="/login/g2a""#), "Direct Login has no sign-in page");
    for name in ["goto", "signin", "g2a"] {
        assert!(page.contains(&format!(r#"<form method="post" action="/refresh/{name}">"#)), "{name}: {page}");
    }
    assert!(page.contains("<code>/G2A/</code>") && page.contains(&s.mock.url()), "{page}");
    assert!(page.contains("8439885694023999999"), "the organizer key: {page}");
    // Every row counts its failed renewals in a row, 0 included.
    let counted = ["0 failed renewals<", "1 renewal failed<", " renewals in a row failed<"];
    assert_eq!(counted.iter().map(|c| page.matches(c).count()).sum::<usize>(), 3, "{page}");
    assert!(page.contains(r#"<div class="failures">0 failed renewals</div>"#), "{page}");

    // Never a token: the mock's access and refresh tokens look like these.
    let o = s.mock.options();
    for secret in ["mock-at-", "mock-rt-", o.client_secret.as_str(), o.password.as_str()] {
        assert!(!page.contains(secret), "{secret} on the page");
    }
}

#[tokio::test]
async fn refresh_now_redirects_a_form_post_refuses_other_sites_and_keeps_json_for_scripts() {
    let s = three_credentials().await;
    wait_state(&s, "goto", "valid").await;
    let form = |origin: &str, site: &str| {
        s.http
            .post(s.admin("/refresh/goto"))
            .header("origin", origin)
            .header("sec-fetch-site", site)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "text/html,application/xhtml+xml")
            .send()
    };

    // The page's own button, as Chromium sends it: same origin, answered by a redirect.
    let calls = s.mock.stats().token_calls;
    let own = form(&format!("http://{}", s.proxy.admin_addr), "same-origin").await.unwrap();
    assert_eq!(own.status(), 303);
    assert_eq!(own.headers()["location"], "/");
    assert_eq!(s.mock.stats().token_calls, calls + 1, "the button renewed");

    // Another site's page posting the same form: refused before anything renews.
    for (origin, site) in [("http://evil.example", "cross-site"), ("http://localhost:1", "same-site")] {
        let other = form(origin, site).await.unwrap();
        assert_eq!(other.status(), 403, "{origin} {site}");
    }
    assert_eq!(s.mock.stats().token_calls, calls + 1, "no renewal for another site");

    // curl and scripts still get JSON.
    let api = s.http.post(s.admin("/refresh/goto")).send().await.unwrap();
    assert_eq!(api.status(), 200);
    let body: serde_json::Value = api.json().await.unwrap();
    assert_eq!(body["state"], "valid");
}

// ===== in a real browser =====

/// chromedriver on a free port, and a headless Chromium session through it.
struct Browser {
    driver: Child,
    client: Client,
    /// Chromium's fresh profile, removed when the session is over.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (after saying why) when Chromium or chromedriver is not installed.
    async fn start() -> Option<Browser> {
        let chromium = which("chromium");
        let driver = which("chromedriver");
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            println!(
                "SKIPPED: chromium and chromedriver are not installed (scripts/install-test-deps.sh installs them)"
            );
            return None;
        };
        let port = free_port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        }))
        .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let client = loop {
            match ClientBuilder::rustls().unwrap().capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "no WebDriver session: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Some(Browser { driver, client, _profile: profile })
    }

    /// Ends the session (Chromium exits); chromedriver is stopped on drop.
    async fn stop(self) {
        let _ = self.client.clone().close().await;
    }

    /// The text of the first element `css` finds.
    async fn text(&self, css: &str) -> String {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
    }

    /// `attr` of the first element `css` finds.
    /// (`None` also while the page is being replaced).
    async fn attr(&self, css: &str, attr: &str) -> Option<String> {
        self.client.find(Locator::Css(css)).await.ok()?.attr(attr).await.ok()?
    }
}

impl Drop for Browser {
    /// Also when a test fails half-way: no chromedriver is left running.
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn which(program: &str) -> Option<String> {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !path.is_empty()).then_some(path)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    l.local_addr().unwrap().port()
}

/// Waits until the wall clock is in a later second than `rfc3339` (the page shows
/// renewals to the second, so a new one must be in another second to be seen).
async fn wait_past_second(rfc3339: &str) {
    let t = humantime::parse_rfc3339(rfc3339).unwrap();
    while SystemTime::now() < t + Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_rows_refresh_now_and_sign_in_work() {
    let s = three_credentials().await;
    wait_state(&s, "goto", "valid").await;
    wait_state(&s, "g2a", "valid").await;
    wait_state(&s, "signin", "needs_login").await;
    assert_eq!(s.get("/admin/rest/v1/me").await.status(), 200);
    let Some(b) = Browser::start().await else { return };
    b.client.set_window_size(1280, 800).await.unwrap();
    b.client.goto(&s.admin("/")).await.unwrap();

    // The rows, as a person reads them.
    let row = |name: &str, cell: &str| format!(r#"tr[data-credential="{name}"] {cell}"#);
    assert_eq!(b.text(&row("goto", ".state")).await, "valid");
    assert_eq!(b.text(&row("g2a", ".state")).await, "valid");
    assert_eq!(b.text(&row("signin", ".state")).await, "needs_login");
    assert_eq!(b.text(&row("goto", ".grant")).await, "authorization_code");
    let keys = b.text(&row("goto", "td.keys")).await;
    assert!(keys.contains("organizer 8439885694023999999") && keys.contains("account 9999982253621659654"), "{keys}");
    assert_eq!(b.text(&row("goto", "a.button")).await, "Sign in");
    assert!(b.client.find(Locator::Css(&row("g2a", "a.button"))).await.is_err(), "no Sign in for Direct Login");
    let routes = b.text("#routes").await;
    assert!(routes.contains("/G2A/") && routes.contains("/S/") && routes.contains(&s.mock.url()), "{routes}");
    // Routes in file order: `/` is the last row, and it served the request above.
    let served = b.text(r#"#routes tbody tr:last-child td[data-label="Requests served"]"#).await;
    assert!(served.parse::<u64>().unwrap() >= 1, "requests served: {served}");

    // Refresh now: a renewal at the mock, and the page back with a new "last renewal".
    let goto_last = row("goto", "td.last-renewal time");
    let before = b.attr(&goto_last, "datetime").await.unwrap();
    wait_past_second(&before).await;
    let calls = s.mock.stats().token_calls;
    b.client.find(Locator::Css(&row("goto", "form button"))).await.unwrap().click().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let now = b.attr(&goto_last, "datetime").await.unwrap_or_default();
        if !now.is_empty() && now != before {
            break now;
        }
        if tokio::time::Instant::now() > deadline {
            let url = b.client.current_url().await.unwrap();
            panic!(
                "last renewal stayed {before} (at {url}: {}, {} token calls)",
                b.client.source().await.unwrap(),
                s.mock.stats().token_calls - calls
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(after > before, "{after} after {before}");
    assert_eq!(s.mock.stats().token_calls, calls + 1, "one renewal at the mock");
    assert_eq!(b.client.current_url().await.unwrap().path(), "/", "redirected back to the page");
    assert_eq!(b.text(&row("goto", ".state")).await, "valid");

    // The inline script (allowed by the CSP's nonce) redraws the rows in place: a renewal
    // made elsewhere shows up without a reload.
    let g2a_before = b.attr(&row("g2a", "td.last-renewal time"), "datetime").await.unwrap();
    wait_past_second(&g2a_before).await;
    assert_eq!(s.http.post(s.admin("/refresh/g2a")).send().await.unwrap().status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while b.attr(&row("g2a", "td.last-renewal time"), "datetime").await.unwrap_or_default() == g2a_before {
        assert!(tokio::time::Instant::now() < deadline, "the script never redrew the rows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Sign in: through the mock's (auto-approving) authorize page back to /callback.
    b.client.find(Locator::Css(&row("signin", "a.button"))).await.unwrap().click().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.client.current_url().await.unwrap().path() != "/callback" {
        assert!(tokio::time::Instant::now() < deadline, "never came back to /callback");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let said = b.text("body").await;
    assert!(said.contains("signed in"), "{said}");
    assert_eq!(s.mock.stats().code_exchanges, 1);
    // In the status page's look (its style ran: the page's background), with a way back.
    let look: serde_json::Value =
        b.client.execute("return getComputedStyle(document.body).backgroundColor", vec![]).await.unwrap();
    assert_eq!(look, "rgb(247, 248, 250)", "the callback page is unstyled");
    b.client.find(Locator::LinkText("Back to the status page")).await.unwrap().click().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.client.current_url().await.unwrap().path() != "/" {
        assert!(tokio::time::Instant::now() < deadline, "the link never led back to the status page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.text(&row("signin", ".state")).await, "valid");
    assert_eq!(s.get("/S/admin/rest/v1/me").await.status(), 200, "the signed-in credential serves");

    // At phone width the page still reads: one labelled block per cell, no sideways scroll.
    b.client.set_window_size(390, 844).await.unwrap();
    let width: serde_json::Value =
        b.client.execute("return document.documentElement.scrollWidth", vec![]).await.unwrap();
    assert!(width.as_u64().unwrap() <= 400, "the page is {width}px wide on a phone");
    b.stop().await;
}

/// An account credential `goto` with two people signed in — one with a long account
/// name, email and keys, and `bob`, whose renewal was refused since — beside a credential
/// with a long name that was never signed in, on a route whose prefix and upstream are
/// long: what overflows a narrow table.
async fn long_values() -> (Stack, MockUser) {
    let long = MockUser {
        organizer_key: "7123456789012345678901234567".into(),
        account_key: "5123456789012345678901234567".into(),
        email: "maximiliane.oberhauser-wittgenstein@customer-success.emea.example-company.com".into(),
        first_name: "Maximiliane".into(),
        last_name: "Oberhauser-Wittgenstein".into(),
    };
    let opts = MockOptions { more_users: vec![long.clone(), MockUser::numbered(2)], ..MockOptions::default() };
    let s = stack(opts, |mock, dir| {
        let never = code_cred(LONG_CREDENTIAL, mock, None);
        let route = format!(
            "[[routes]]\nprefix = \"/regional-webinars-and-customer-success-calls/\"\nupstream = \"{}/api/gateway/v2/tenants/emea-production-01/\"\ncredential = \"{LONG_CREDENTIAL}\"\n",
            mock.url()
        );
        crate::accounts::accounts_config(mock, dir, &format!("\n{never}\n{route}"))
    })
    .await;
    crate::accounts::sign_in(&s, Some(LONG_ACCOUNT), &long.email).await;
    crate::accounts::sign_in(&s, Some("bob"), &MockUser::numbered(2).email).await;
    wait_state(&s, LONG_CREDENTIAL, "needs_login").await;
    // Bob revoked the app: his renewal is refused, and only he can sign in again.
    assert!(s.mock.revoke_refresh_tokens_of(&MockUser::numbered(2).email));
    assert_eq!(s.http.post(s.admin("/refresh/goto/bob")).send().await.unwrap().status(), 502);
    let t = tokens(&s).await;
    let bob = t["goto"]["accounts"]["items"].as_array().unwrap().iter().find(|a| a["name"] == "bob").unwrap();
    assert_eq!(bob["state"], "needs_login", "{t}");
    (s, long)
}

const LONG_CREDENTIAL: &str = "warehouse-eu-west-1-production-goto-connect-webinars-and-calls";
const LONG_ACCOUNT: &str = "regional-customer-success-team-emea-webinar-organizer-account-01";

/// The row `<tr ATTR="NAME">` of a page's HTML.
fn row_html<'p>(page: &'p str, attr: &str, name: &str) -> &'p str {
    let start = page.find(&format!(r#"<tr {attr}="{name}">"#)).unwrap_or_else(|| panic!("no row {name}: {page}"));
    let row = &page[start..];
    &row[..row.find("</tr>").unwrap_or(row.len())]
}

/// A credential or an account that only a person can renew points at its row's sign-in
/// button, with the `login` command (naming the config the proxy runs with) as the other
/// way; keys say which is which; the page after a sign-in, failed or not, has the status
/// page's look and a link back to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_needs_a_person_is_pointed_at_the_button_keys_are_labelled_and_callback_pages_lead_back() {
    let (s, long) = long_values().await;
    let page = s.http.get(s.admin("/")).send().await.unwrap().text().await.unwrap();

    let never = row_html(&page, "data-credential", LONG_CREDENTIAL);
    assert!(never.contains(r#"<span class="state state-needs_login">needs_login</span>"#), "{never}");
    assert!(never.contains("has never been signed in</div>"), "the reason, without the command: {never}");
    assert!(never.contains(r#"Sign in with the <strong>Sign in</strong> button on this row."#), "{never}");
    let command = format!("goto-auth-proxy login --config test.toml --credential {LONG_CREDENTIAL}");
    assert!(never.contains(&format!("Or run <code>{command}</code>")), "the command, second: {never}");
    assert!(!never.contains("run `"), "{never}");

    let bob = row_html(&page, "data-account", "bob");
    assert!(bob.contains(r#"<span class="state state-needs_login">needs_login</span>"#), "{bob}");
    assert!(bob.contains("the refresh token is dead</div>"), "the reason, without the command: {bob}");
    assert!(bob.contains(r#"Sign in with the <strong>Sign in again</strong> button on this row."#), "{bob}");
    assert!(bob.contains("<code>goto-auth-proxy login --config test.toml --credential goto --account bob</code>"));
    // A valid row says nothing of the sort.
    let fine = row_html(&page, "data-account", LONG_ACCOUNT);
    assert!(!fine.contains("Sign in with") && !fine.contains("Or run"), "{fine}");

    // Keys, labelled.
    for (label, key) in [("organizer", &long.organizer_key), ("account", &long.account_key)] {
        assert!(fine.contains(&format!(r#"<span class="key-label">{label}</span> {key}"#)), "{label}: {fine}");
    }

    // The page after a sign-in that failed: the status page's style, allowed by the
    // answer's nonce, and the way back.
    let r = s.http.get(s.admin("/callback?error=access_denied")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    let said = r.text().await.unwrap();
    let nonce = csp.split("style-src 'nonce-").nth(1).and_then(|r| r.split('\'').next()).expect("a style nonce");
    assert!(csp.starts_with("default-src 'none';") && !csp.contains("script-src 'unsafe"), "{csp}");
    assert!(said.contains(&format!("<style nonce=\"{nonce}\">")) && said.contains("td.actions"), "{said}");
    assert!(said.contains("Sign-in failed") && said.contains("access_denied"), "{said}");
    assert!(said.contains(r#"<a class="button primary" href="./">Back to the status page</a>"#), "{said}");
}

/// What of the page a person cannot see without scrolling sideways: each row button out
/// of its table's or the window's view, a table or the page wider than its box.
const OUT_OF_VIEW: &str = r#"
    const width = window.innerWidth, out = [];
    const buttons = [...document.querySelectorAll("td.actions a, td.actions button, td.actions label")];
    for (const el of buttons) {
      const r = el.getBoundingClientRect(), table = el.closest(".scroll").getBoundingClientRect();
      const row = el.closest("tr").dataset;
      if (r.left < table.left || r.right > Math.min(width, table.right)) {
        out.push(`${el.textContent.trim()} of ${row.credential || row.account}: ${r.left}-${r.right}, table ${table.left}-${table.right}`);
      }
    }
    for (const t of document.querySelectorAll(".scroll")) {
      if (t.scrollWidth > t.clientWidth) out.push(`a table scrolls sideways: ${t.scrollWidth} > ${t.clientWidth}`);
    }
    const page = document.documentElement.scrollWidth;
    if (page > width) out.push(`the page is ${page}px wide`);
    return { width, buttons: buttons.length, out };
"#;

/// At 1,280 × 800, a laptop's window, every row's buttons are in view without scrolling
/// sideways — the page's or a table's — even with long names, emails, keys and URLs; and
/// still at 1,024 × 768, where the page keeps its tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_every_button_is_in_view_at_1280_px_with_long_values() {
    let (s, long) = long_values().await;
    let Some(b) = Browser::start().await else { return };
    b.client.set_window_size(1280, 800).await.unwrap();
    b.client.goto(&s.admin("/")).await.unwrap();
    let shown = b.text(&format!(r#"tr[data-account="{LONG_ACCOUNT}"] td[data-label="Signed in as"]"#)).await;
    assert_eq!(shown, long.email);

    for (width, height) in [(1280u64, 800u64), (1024, 768)] {
        b.client.set_window_size(u32::try_from(width).unwrap(), u32::try_from(height).unwrap()).await.unwrap();
        let seen: serde_json::Value = b.client.execute(OUT_OF_VIEW, vec![]).await.unwrap();
        let inner = seen["width"].as_u64().unwrap();
        assert!((width - 80..=width).contains(&inner), "the window is {inner}px wide, not a {width}px one: {seen}");
        // Sign in + Refresh now on two credential rows; Sign in again, Refresh now, the
        // "yes, remove" box and Remove on two account rows.
        assert_eq!(seen["buttons"], 12, "{seen}");
        assert_eq!(seen["out"], serde_json::json!([]), "out of view at {inner}px: {seen}");
    }
    b.stop().await;
}

// ===== account credentials =====

mod accounts {
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use fantoccini::Locator;
    use goto_auth_proxy::testing::{account_key, FileStore, StoredToken, TokenStore};
    use goto_mock::{MockOptions, MockUser};

    use super::Browser;
    use crate::accounts::{accounts_config, sign_in, two_users};
    use crate::support::*;

    /// The status page's HTML at `path` (`/?…`).
    async fn page(s: &Stack, path: &str) -> String {
        let r = s.http.get(s.admin(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.text().await.unwrap()
    }

    /// The names of the accounts a page lists, in order.
    fn listed(page: &str) -> Vec<String> {
        page.split(r#"<tr data-account=""#).skip(1).map(|r| r.split('"').next().unwrap().to_string()).collect()
    }

    async fn account_names(s: &Stack) -> Vec<String> {
        let t: serde_json::Value = s.http.get(s.admin("/tokens")).send().await.unwrap().json().await.unwrap();
        t["goto"]["accounts"]["items"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().into()).collect()
    }

    /// A form post as the page's own form sends it.
    async fn post_form(s: &Stack, path: &str, body: &str) -> reqwest::Response {
        s.http
            .post(s.admin(path))
            .header("origin", format!("http://{}", s.proxy.admin_addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_javascript_accounts_are_listed_searched_renewed_and_removed_only_when_confirmed() {
        let s = stack(two_users(), |m, d| accounts_config(m, d, "")).await;
        let (one, two) = (MockUser::numbered(1), MockUser::numbered(2));
        sign_in(&s, Some("alice"), &one.email).await;
        sign_in(&s, None, &two.email).await;

        // Connect an account is a form that ends at the sign-in page: the CSP lets it go there.
        let r = s.http.get(s.admin("/")).send().await.unwrap();
        let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains(&format!("form-action 'self' {};", s.mock.url())), "{csp}");
        let all = page(&s, "/").await;
        assert_eq!(listed(&all), ["alice", "user2_example.com"], "{all}");
        assert!(all.contains(r#"<tr class="accounts" data-accounts="goto">"#), "{all}");
        assert!(all.contains(r#"data-state="valid">valid 2</span>"#), "{all}");
        assert!(all.contains(r#"data-state="needs_login">needs_login 0</span>"#), "{all}");
        assert!(all.contains(&one.email) && all.contains(&two.organizer_key) && all.contains(&two.account_key));
        // Each row's own buttons, and the Connect form.
        assert!(all.contains(r#"href="/login/goto?account=alice""#), "{all}");
        assert!(all.contains(r#"<form class="refresh" method="post" action="/refresh/goto/alice">"#), "{all}");
        assert!(all.contains(r#"action="/accounts/goto/user2_example.com/remove""#), "{all}");
        assert!(all.contains(r#"<input type="checkbox" name="confirm" value="yes" required>"#), "{all}");
        assert!(all.contains(r#"<form class="connect" method="get" action="/login/goto">"#), "{all}");
        assert!(all.contains(r#"<form class="search" method="get" action="/" role="search">"#), "{all}");

        // The search box: name, email, keys, any case.
        for (q, found) in [
            ("ALI", vec!["alice"]),
            ("user2@EXAMPLE", vec!["user2_example.com"]),
            (one.organizer_key.as_str(), vec!["alice"]),
            (two.account_key.as_str(), vec!["user2_example.com"]),
            ("example.com", vec!["alice", "user2_example.com"]),
            ("nobody", vec![]),
        ] {
            let p = page(
                &s,
                &format!(
                    "/?credential=goto&q={}",
                    url::form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
                ),
            )
            .await;
            assert_eq!(listed(&p), found, "q={q}");
        }
        let none = page(&s, "/?credential=goto&q=%3Cscript%3E").await;
        assert!(none.contains("No account matches") && none.contains("&lt;script&gt;") && !none.contains("<script>x"));

        // Refresh now: renews that account only, back to the same search.
        let calls = s.mock.stats().token_calls;
        let r = post_form(&s, "/refresh/goto/alice", "credential=goto&q=ali").await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/?credential=goto&q=ali");
        assert_eq!(s.mock.stats().token_calls, calls + 1);

        // Remove without "yes, remove": nothing happens, and the page says so.
        let r = post_form(&s, "/accounts/goto/alice/remove", "credential=goto").await;
        assert_eq!(r.status(), 400);
        assert!(r.headers()["content-security-policy"].to_str().unwrap().starts_with("default-src 'none'"));
        let said = r.text().await.unwrap();
        assert!(said.contains("Nothing was removed") && said.contains(r#"href="/?credential=goto""#), "{said}");
        assert_eq!(account_names(&s).await, ["alice", "user2_example.com"]);
        // Confirmed: gone, and back to the page.
        let r = post_form(&s, "/accounts/goto/alice/remove", "credential=goto&confirm=yes").await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/?credential=goto");
        assert_eq!(account_names(&s).await, ["user2_example.com"]);
        assert_eq!(listed(&page(&s, "/").await), ["user2_example.com"]);

        // Connect an account with the name left empty: a sign-in named after the person.
        let r = s.http.get(s.admin("/login/goto?account=")).send().await.unwrap();
        assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
        assert!(r.headers()["location"].to_str().unwrap().starts_with(&format!("{}/oauth/authorize", s.mock.url())));
    }

    /// 10,000 accounts in the store (written as the proxy writes them): the page answers
    /// a page of 50, searches and pages through them in under 200 ms.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_accounts_page_and_search() {
        const N: u64 = 10_000;
        let s = stack(MockOptions::default(), |mock, dir| {
            let store = FileStore::open(dir.join("state.json")).unwrap();
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let expires = now.as_secs() + 3600;
            let rt = tokio::runtime::Handle::current();
            tokio::task::block_in_place(|| {
                rt.block_on(async {
                    for i in 1..=N {
                        let user = MockUser::numbered(u32::try_from(i).unwrap());
                        let record = StoredToken {
                            access_token: format!("mock-at-{i}"),
                            refresh_token: Some(format!("mock-rt-{i}")),
                            expires_at: expires,
                            expires_at_ms: Some(expires * 1000),
                            obtained_at_ms: u64::try_from(now.as_millis()).unwrap(),
                            organizer_key: Some(user.organizer_key),
                            account_key: Some(user.account_key),
                            principal: Some(user.email),
                            version: 0,
                        };
                        store.save(&account_key("goto", &format!("person{i:05}")), &record).await.unwrap();
                    }
                })
            });
            accounts_config(mock, dir, "")
        })
        .await;
        let t: serde_json::Value = s.http.get(s.admin("/tokens?limit=1")).send().await.unwrap().json().await.unwrap();
        assert_eq!(t["goto"]["accounts"]["total"], N, "{t}");

        let mut slowest = Duration::ZERO;
        let timed = |path: &'static str| {
            let s = &s;
            async move {
                let started = Instant::now();
                let p = page(s, path).await;
                let took = started.elapsed();
                println!("GET {path} at {N} accounts: {} ms, {} KiB", took.as_millis(), p.len() / 1024);
                (p, took)
            }
        };
        let mut pages = Vec::new();
        for path in [
            "/",
            "/?credential=goto&offset=5000",
            "/?credential=goto&q=user9999%40",
            "/?credential=goto&q=example&offset=9950",
        ] {
            // The first of each warms nothing the second would not: take the better of two.
            let (p, a) = timed(path).await;
            let (_, b) = timed(path).await;
            slowest = slowest.max(a.min(b));
            pages.push(p);
        }
        assert_eq!(listed(&pages[0]).len(), 50);
        assert_eq!(listed(&pages[0])[0], "person00001");
        assert!(pages[0].contains(&format!("data-state=\"valid\">valid {N}</span>")), "the counts cover every account");
        assert!(pages[0].contains(r#"<a class="button" rel="next" href="/?credential=goto&amp;offset=50">"#));
        assert!(!pages[0].contains(r#"rel="prev""#));
        assert_eq!(listed(&pages[1])[0], "person05001");
        assert!(pages[1].contains(r#"rel="prev" href="/?credential=goto&amp;offset=4950""#));
        assert_eq!(listed(&pages[2]), ["person09999"]);
        assert_eq!(listed(&pages[3]).len(), 50);
        assert_eq!(listed(&pages[3]).last().unwrap(), "person10000");
        assert!(
            pages[3].contains(r#"rel="prev" href="/?credential=goto&amp;q=example&amp;offset=9900""#),
            "previous keeps q"
        );
        assert!(!pages[3].contains(r#"rel="next""#));
        for secret in ["mock-at-", "mock-rt-"] {
            assert!(!pages.iter().any(|p| p.contains(secret)), "{secret} on the page");
        }
        println!("slowest page at {N} accounts: {} ms", slowest.as_millis());
        // The 200 ms target is measured by `benches/accounts.sh` on a quiet machine; here,
        // on a runner shared with the whole suite, only a page slow enough for anyone to
        // notice (a scan per row, a page of every account) fails.
        assert!(slowest < Duration::from_secs(2), "the page took {} ms at {N} accounts", slowest.as_millis());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_chromium_accounts_are_searched_renewed_removed_after_asking_and_connected() {
        let s = stack(two_users(), |m, d| accounts_config(m, d, "")).await;
        let (one, two) = (MockUser::numbered(1), MockUser::numbered(2));
        sign_in(&s, Some("alice"), &one.email).await;
        sign_in(&s, Some("bob"), &two.email).await;
        let Some(b) = Browser::start().await else { return };
        b.client.set_window_size(1280, 800).await.unwrap();
        b.client.goto(&s.admin("/")).await.unwrap();

        // Both people under the credential, with the counts.
        let rows = |b: &Browser| {
            let b = b.client.clone();
            async move {
                let mut names = Vec::new();
                for row in b.find_all(Locator::Css(r#"tr[data-accounts="goto"] tr[data-account]"#)).await.unwrap() {
                    names.push(row.attr("data-account").await.unwrap().unwrap());
                }
                names
            }
        };
        assert_eq!(rows(&b).await, ["alice", "bob"]);
        assert_eq!(b.text(r#"tr[data-account="bob"] td[data-label="Signed in as"]"#).await, two.email);
        assert_eq!(b.text(r#"tr[data-accounts="goto"] .count[data-state="valid"]"#).await, "valid 2");

        // The search box narrows to one; the address keeps the search.
        let search = b.client.find(Locator::Css(r#"form.search input[name="q"]"#)).await.unwrap();
        search.send_keys(&two.organizer_key).await.unwrap();
        b.client.find(Locator::Css("form.search button")).await.unwrap().click().await.unwrap();
        wait_until(&b, "the search", |url: &url::Url| url.query().unwrap_or("").contains("q=")).await;
        assert_eq!(rows(&b).await, ["bob"]);

        // Refresh now on bob's row: one renewal at the mock, back on the same search.
        let calls = s.mock.stats().token_calls;
        b.client
            .find(Locator::Css(r#"tr[data-account="bob"] form.refresh button"#))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while s.mock.stats().token_calls == calls {
            assert!(tokio::time::Instant::now() < deadline, "Refresh now never renewed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(s.mock.stats().token_calls, calls + 1);
        wait_until(&b, "back from Refresh now", |url: &url::Url| url.path() == "/").await;
        assert!(b.client.current_url().await.unwrap().query().unwrap().contains(&two.organizer_key));
        assert_eq!(rows(&b).await, ["bob"]);

        // Remove: the box must be ticked, and the browser asks once more.
        b.client.goto(&s.admin("/")).await.unwrap();
        b.client
            .find(Locator::Css(r#"tr[data-account="alice"] form.remove button"#))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        assert_eq!(rows(&b).await, ["alice", "bob"], "removed without the box ticked");
        b.client
            .find(Locator::Css(r#"tr[data-account="alice"] form.remove input[name="confirm"]"#))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.client
            .find(Locator::Css(r#"tr[data-account="alice"] form.remove button"#))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let asked = b.client.get_alert_text().await.unwrap();
        assert!(asked.contains("Remove the account alice?"), "{asked}");
        b.client.dismiss_alert().await.unwrap();
        assert_eq!(rows(&b).await, ["alice", "bob"], "removed although the question was answered no");
        b.client
            .find(Locator::Css(r#"tr[data-account="alice"] form.remove button"#))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.client.accept_alert().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while account_names(&s).await.contains(&"alice".to_string()) {
            assert!(tokio::time::Instant::now() < deadline, "alice was never removed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(account_names(&s).await, ["bob"]);
        wait_until(&b, "back from Remove", |url: &url::Url| url.path() == "/").await;
        assert_eq!(rows(&b).await, ["bob"]);

        // Connect an account: to the mock's authorize page, and back signed in as carol.
        let name = b.client.find(Locator::Css(r#"form.connect input[name="account"]"#)).await.unwrap();
        name.send_keys("carol").await.unwrap();
        b.client.find(Locator::Css("form.connect button")).await.unwrap().click().await.unwrap();
        wait_until(&b, "the sign-in", |url: &url::Url| url.path() == "/callback").await;
        assert_eq!(s.mock.stats().code_exchanges, 3, "carol's code, from the mock's authorize page, was exchanged");
        assert!(b.text("body").await.contains("signed in"));
        b.client.goto(&s.admin("/")).await.unwrap();
        assert_eq!(rows(&b).await, ["bob", "carol"]);
        b.stop().await;
    }

    /// Waits until the browser's address satisfies `ok`.
    async fn wait_until(b: &Browser, what: &str, ok: impl Fn(&url::Url) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let url = b.client.current_url().await.unwrap();
            if ok(&url) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: still at {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
