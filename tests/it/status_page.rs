//! The status page at the admin listener's `/`: served self-contained under a strict
//! CSP, its buttons usable from the page itself and from nowhere else, and — in a real
//! headless Chromium driven over WebDriver — rows that show each credential's state,
//! a **Refresh now** that renews, and a **Sign in** that turns a credential valid.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use fantoccini::{Client, ClientBuilder, Locator};
use goto_auth_proxy::demo::mock::{MockGoto, MockOptions};

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
    b.client.set_window_size(1600, 900).await.unwrap();
    b.client.goto(&s.admin("/")).await.unwrap();

    // The rows, as a person reads them.
    let row = |name: &str, cell: &str| format!(r#"tr[data-credential="{name}"] {cell}"#);
    assert_eq!(b.text(&row("goto", ".state")).await, "valid");
    assert_eq!(b.text(&row("g2a", ".state")).await, "valid");
    assert_eq!(b.text(&row("signin", ".state")).await, "needs_login");
    assert_eq!(b.text(&row("goto", "td[data-label=Grant]")).await, "authorization_code");
    assert!(b.text(&row("goto", "td[data-label='Organizer / account key']")).await.contains("8439885694023999999"));
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

    if let Ok(path) = std::env::var("GOTO_AUTH_PROXY_SCREENSHOT") {
        std::fs::write(&path, b.client.screenshot().await.unwrap()).unwrap();
        println!("screenshot saved to {path}");
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
    b.client.goto(&s.admin("/")).await.unwrap();
    assert_eq!(b.text(&row("signin", ".state")).await, "valid");
    assert_eq!(s.get("/S/admin/rest/v1/me").await.status(), 200, "the signed-in credential serves");

    // At phone width the page still reads: one labelled block per cell, no sideways scroll.
    b.client.set_window_size(390, 844).await.unwrap();
    let width: serde_json::Value =
        b.client.execute("return document.documentElement.scrollWidth", vec![]).await.unwrap();
    assert!(width.as_u64().unwrap() <= 400, "the page is {width}px wide on a phone");
    b.stop().await;
}
