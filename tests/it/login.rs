//! Authorization-code sign-in: browser flow through the admin listener, and the
//! `login` command with a pasted URL or code.

use std::process::Command;
use std::time::Duration;

use crate::support::*;
use goto_mock::{MockGoto, MockOptions};

async fn never_signed_in() -> Stack {
    stack(MockOptions::default(), |mock, dir| {
        config_text(dir, "", &format!("{}\n{}", code_cred("goto", mock, None), route("/", mock, Some("goto"))))
    })
    .await
}

/// A never-signed-in authorization-code credential with `redirect_uri`.
fn signed_out_config(mock: &MockGoto, dir: &std::path::Path, redirect_uri: &str) -> String {
    let cred = format!("{}redirect_uri = \"{redirect_uri}\"\n", code_cred("goto", mock, None));
    config_text(dir, "", &format!("{cred}{}", route("/", mock, Some("goto"))))
}

/// Follows redirects by hand and returns (status, final body, the Location chain).
async fn follow(http: &reqwest::Client, url: &str) -> (u16, String, Vec<String>) {
    let (status, page, chain, _) = follow_with_headers(http, url).await;
    (status, page, chain)
}

/// [`follow`], with the last answer's headers.
async fn follow_with_headers(
    http: &reqwest::Client,
    url: &str,
) -> (u16, String, Vec<String>, reqwest::header::HeaderMap) {
    let mut url = url.to_string();
    let mut chain = Vec::new();
    for _ in 0..5 {
        let r = http.get(&url).send().await.unwrap();
        if r.status().is_redirection() {
            url = r.headers()["location"].to_str().unwrap().to_string();
            chain.push(url.clone());
            continue;
        }
        let headers = r.headers().clone();
        return (r.status().as_u16(), r.text().await.unwrap(), chain, headers);
    }
    panic!("redirect loop: {chain:?}");
}

#[tokio::test]
async fn browser_sign_in_through_the_admin_listener() {
    let s = never_signed_in().await;
    assert_eq!(s.get("/G2W/rest/v2/x").await.status(), 503);
    let (status, page, chain) = follow(&s.http, &s.admin("/login/goto")).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("goto") && page.contains("signed in"), "{page}");
    // The authorize URL carried state and a PKCE challenge (the mock verified the verifier).
    let authorize = url::Url::parse(&chain[0]).unwrap();
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["state"].len() >= 20);
    assert_eq!(s.mock.stats().code_exchanges, 1);
    assert_eq!(s.get("/G2W/rest/v2/x").await.status(), 200);
    let tokens: serde_json::Value = s.http.get(s.admin("/tokens")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tokens["goto"]["organizer_key"], "8439885694023999999");
    assert!(std::fs::read_to_string(s.dir.path().join("state.json")).unwrap().contains("refresh_token"));

    // Replaying the callback: the state is spent, nothing is exchanged.
    let callback = chain.last().unwrap().clone();
    let r = s.http.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(s.mock.stats().code_exchanges, 1);
}

#[tokio::test]
async fn callback_with_unknown_state_is_refused() {
    let s = never_signed_in().await;
    // A real code from the mock, but a forged state.
    let login = s.http.get(s.admin("/login/goto")).send().await.unwrap();
    let authorize = login.headers()["location"].to_str().unwrap().to_string();
    let r = s.http.get(&authorize).send().await.unwrap();
    let callback = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let code = callback.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    let r = s.http.get(s.admin(&format!("/callback?code={code}&state=forged"))).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(s.mock.stats().token_calls, 0);
    // The real one still works, once.
    assert_eq!(s.http.get(callback.as_str()).send().await.unwrap().status(), 200);
    assert_eq!(s.http.get(callback.as_str()).send().await.unwrap().status(), 400);
    // Logins for grants that have none are refused clearly.
    assert_eq!(s.http.get(s.admin("/login/nope")).send().await.unwrap().status(), 404);
}

/// `goto-auth-proxy login` with the redirected URL pasted on stdin, or only the code;
/// then `goto-auth-proxy token` prints a token the API accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_command_accepts_pasted_url_or_bare_code() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The redirect URI points at a port nobody serves: like GoTo's 404 page.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = signed_out_config(&mock, dir.path(), "https://app.example.com/oauth/done")
        .replace("127.0.0.1:0\"\ntoken_wait", &format!("{nobody}\"\ntoken_wait"));
    let path = write_config(dir.path(), "login.toml", &text);
    let http = client();

    for bare_code in [false, true] {
        let (child, stdout, url) = spawn_login(&path, &["login", "--credential", "goto"], true);
        // The person signs in; the browser lands on the redirect URI with the code.
        let r = http.get(url.trim()).send().await.unwrap();
        let landed = r.headers()["location"].to_str().unwrap().to_string();
        assert!(landed.starts_with("https://app.example.com/oauth/done?"), "{landed}");
        let pasted = if bare_code {
            url::Url::parse(&landed).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned()
        } else {
            landed
        };
        let (status, rest) = paste_login(child, stdout, &pasted);
        assert!(status.success(), "{status:?} {rest}");
        assert!(rest.contains("Signed in"), "{rest}");
    }
    assert_eq!(mock.stats().code_exchanges, 2);

    let out = Command::new(BIN).args(["token", "--credential", "goto", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(mock.is_valid(&token), "`token` printed a token GoTo does not accept");
}

/// `login` with the redirect URI on its own loopback port: the browser's callback
/// completes it, no pasting needed; a running proxy then picks the token up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_command_takes_the_browser_callback() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = signed_out_config(&mock, dir.path(), &format!("http://{free}/callback"));
    let path = write_config(dir.path(), "login.toml", &text);
    let (child, _stdout, url) = spawn_login(&path, &["login"], false);
    let http = client();
    // The login command binds the callback port right after printing the URL.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, page, headers) = loop {
        let (status, page, _, headers) = follow_with_headers(&http, url.trim()).await;
        if status == 200 || tokio::time::Instant::now() > deadline {
            break (status, page, headers);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 200, "{page}");
    // Its page is locked down like the admin listener's: no script, not framed, not stored.
    for (name, value) in
        [("x-frame-options", "DENY"), ("cache-control", "no-store"), ("x-content-type-options", "nosniff")]
    {
        assert_eq!(headers.get(name).map(|v| v.to_str().unwrap()), Some(value), "{name}");
    }
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let out = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
    assert!(out.status.success());
    assert_eq!(mock.stats().code_exchanges, 1);

    // A proxy started now uses the stored sign-in.
    let p = Proc::spawn(&path);
    wait_ready(&http, &p.admin("/readyz"), Duration::from_secs(10)).await;
    assert_eq!(http.get(p.url("/G2W/rest/v2/x")).send().await.unwrap().status(), 200);
    assert_eq!(mock.stats().code_exchanges, 1);
}

/// `login` while a proxy already serves the admin port: the URL is pasted, the tokens
/// stored, and the running proxy is told to pick them up — no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_while_the_proxy_runs_is_picked_up_without_restart() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = config_text(
        dir.path(),
        "",
        &format!("{}\n{}", code_cred("goto", &mock, None), route("/", &mock, Some("goto"))),
    )
    .replace("admin_listen = \"127.0.0.1:0\"", &format!("admin_listen = \"{admin}\""));
    let path = write_config(dir.path(), "running.toml", &text);
    let p = Proc::spawn(&path);
    let http = client();
    assert_eq!(http.get(p.url("/G2W/x")).send().await.unwrap().status(), 503);

    let (child, stdout, url) = spawn_login(&path, &["login"], true);
    // The browser is sent to the running proxy's /callback, which does not know this
    // sign-in's state; the person pastes the address instead.
    let r = http.get(url.trim()).send().await.unwrap();
    let landed = r.headers()["location"].to_str().unwrap().to_string();
    assert!(landed.starts_with(&format!("http://{admin}/callback?")), "{landed}");
    let (status, rest) = paste_login(child, stdout, &landed);
    assert!(status.success(), "{rest}");
    assert!(rest.contains("picked up"), "{rest}");
    assert_eq!(http.get(p.url("/G2W/x")).send().await.unwrap().status(), 200);
    let ready = http.get(p.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
