//! What an odd or careless config does to the real binary: credential names outside
//! the rule are refused by `check`, quoted; the names users chose are quoted back in
//! errors; key and secret files other users can read are warned about (by `check` and
//! at start) without being refused or shown; and the status page's links, encoded,
//! reach the credential the router decodes.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use goto_mock::{MockGoto, MockOptions};

use crate::support::*;

/// `goto-auth-proxy check --config PATH`: exit code, stdout, stderr.
fn check(path: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(["check", "--config"]).arg(path).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
}

#[tokio::test]
async fn check_refuses_credential_names_outside_the_rule_quoting_them() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, shown)) in [
        ("prod?x", "\"prod?x\""),
        ("a b", "\"a b\""),
        ("x<script>", "\"x<script>\""),
        ("a\\u001b[2J", "\"a\\u{1b}[2J\""),
    ]
    .into_iter()
    .enumerate()
    {
        let header = format!("[credentials.\"{name}\"]");
        let cred = password_cred("NAME", &mock).replace("[credentials.NAME]", &header);
        let text = config_text(dir.path(), "", &format!("{cred}\n{}", route("/", &mock, None)));
        let path = write_config(dir.path(), &format!("name{i}.toml"), &text);
        let (code, stdout, stderr) = check(&path);
        assert_eq!(code, Some(64), "{name:?}: {stdout}{stderr}");
        let says = format!(
            "{}:{}: credentials: {shown} is not a credential name: a name is 1 to 64 ASCII letters, digits, \"_\", \"-\" and \".\"",
            path.display(),
            line_of(&text, &header)
        );
        assert!(stderr.contains(&says), "{name:?}: expected {says:?} in {stderr}");
        assert!(!stderr.contains('\u{1b}'), "control characters are escaped: {stderr:?}");
    }
}

#[tokio::test]
async fn check_quotes_a_missing_credential_and_lists_those_that_exist() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        "",
        &format!(
            "{}\n{}\n{}",
            password_cred("g2a", &mock),
            code_cred("goto", &mock, None),
            route("/", &mock, Some("g2w_missing"))
        ),
    );
    let path = write_config(dir.path(), "missing.toml", &text);
    let (code, _, stderr) = check(&path);
    assert_eq!(code, Some(64), "{stderr}");
    let says = format!(
        "{}:{}: routes[0].credential: \"g2w_missing\" names no credential that exists (defined: \"g2a\", \"goto\")",
        path.display(),
        line_of(&text, "g2w_missing")
    );
    assert!(stderr.contains(&says), "expected {says:?} in {stderr}");
    // The values of secrets are still never shown.
    let o = mock.options();
    assert!(!stderr.contains(&o.password) && !stderr.contains(&o.client_secret), "{stderr}");
}

/// A `{ file = … }` secret readable by other users: `check` passes with a warning naming
/// the file (never its content), and `run` logs the same at start; mode 0600 silences it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_file_others_can_read_is_warned_about_by_check_and_at_start() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("g2a-password");
    std::fs::write(&secret, format!("{}\n", mock.options().password)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cred = password_cred("g2a", &mock).replace(
        &format!("password = \"{}\"", mock.options().password),
        &format!("password = {{ file = {:?} }}", secret.display().to_string()),
    );
    let text = config_text(dir.path(), "", &format!("{cred}\n{}", route("/G2A/", &mock, Some("g2a"))));
    let path = write_config(dir.path(), "readable.toml", &text);
    let warning = format!(
        "{}:{}: credentials.g2a.password: {} is readable by other users (mode 0644)",
        path.display(),
        line_of(&text, "password = {"),
        secret.display()
    );

    let (code, stdout, stderr) = check(&path);
    assert_eq!(code, Some(0), "a warning, not a refusal: {stderr}");
    assert!(stderr.contains(&format!("warning: {warning}")), "expected {warning:?} in {stderr}");
    assert!(stdout.ends_with("ok\n"), "{stdout}");
    let password = &mock.options().password;
    assert!(!stdout.contains(password.as_str()) && !stderr.contains(password.as_str()), "{stdout}{stderr}");

    let p = Proc::spawn(&path);
    let http = client();
    wait_ready(&http, &p.admin("/readyz"), Duration::from_secs(10)).await;
    let log = p.log_text();
    let logged = log.lines().find(|l| l.contains(&warning)).unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(logged.contains("\"level\":\"WARN\""), "{logged}");
    assert!(!log.contains(password.as_str()), "{log}");
    drop(p);

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, stderr) = check(&path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("readable by other users"), "{stderr}");

    // A secret rotated with looser permissions while the proxy runs: the reload warns.
    let p = Proc::spawn(&path);
    wait_ready(&http, &p.admin("/readyz"), Duration::from_secs(10)).await;
    assert!(!p.log_text().contains("readable by other users"), "{}", p.log_text());
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    p.signal(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p.log_text().contains("configuration reloaded") {
        assert!(std::time::Instant::now() < deadline, "no reload in:\n{}", p.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(p.log_text().contains(&warning), "no warning at reload in:\n{}", p.log_text());
}

/// The status page's links carry the name as one percent-encoded path segment, and the
/// admin router decodes it: an encoded link reaches its credential, and an encoded `?`
/// is part of a name (no credential here), not the start of a query that would press
/// another credential's button.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_links_are_encoded_and_the_router_decodes_them() {
    let s = stack(MockOptions::default(), |mock: &MockGoto, dir: &Path| {
        let seed = mock.mint_refresh_token();
        config_text(
            dir,
            "",
            &format!(
                "{}\n{}\n{}\n{}",
                code_cred("\"a.b-c_d\"", mock, Some(&seed)),
                code_cred("prod", mock, None),
                route("/P/", mock, Some("prod")),
                route("/", mock, Some("a.b-c_d")),
            ),
        )
    })
    .await;
    let page = s.http.get(s.admin("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("href=\"/login/a.b-c_d\"") && page.contains("action=\"/refresh/a.b-c_d\""), "{page}");

    // The name as the page writes it, and fully encoded: both reach `a.b-c_d`.
    for login in ["/login/a.b-c_d", "/login/a%2Eb%2Dc%5Fd"] {
        let r = s.http.get(s.admin(login)).send().await.unwrap();
        assert_eq!(r.status(), 302, "{login}");
    }
    let r = s.http.post(s.admin("/refresh/a%2Eb-c_d")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // `prod%3Fx` names "prod?x", which does not exist: it is not `prod`.
    let r = s.http.post(s.admin("/refresh/prod%3Fx")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unknown_credential");
    assert!(body["message"].as_str().unwrap().starts_with("no credential named \"prod?x\""), "{body}");
    let r = s.http.get(s.admin("/login/prod%3Fx")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}
