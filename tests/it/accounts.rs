//! Many accounts: several people signed in to one OAuth client through the proxy's own
//! sign-in, each chosen per request — by `X-GoTo-Account`, by a key in the path or
//! query, or by `default_account` — and each renewing on its own.

use goto_auth_proxy::demo::mock::{MockGoto, MockOptions, MockUser};
use serde_json::Value;

use crate::support::*;

pub(crate) fn two_users() -> MockOptions {
    MockOptions { more_users: vec![MockUser::numbered(1), MockUser::numbered(2)], ..MockOptions::default() }
}

pub(crate) fn accounts_config(mock: &MockGoto, dir: &std::path::Path, extra: &str) -> String {
    let cred = code_cred("goto", mock, None);
    config_text(dir, "", &format!("{cred}accounts = true\n{extra}\n{}", route("/", mock, Some("goto"))))
}

/// Signs `email` in through the admin listener's `/login/goto` (as `account` when given)
/// and the mock's authorize page; the callback page's text.
pub(crate) async fn sign_in(s: &Stack, account: Option<&str>, email: &str) -> String {
    let q = account.map(|a| format!("?account={a}")).unwrap_or_default();
    let r = s.http.get(s.admin(&format!("/login/goto{q}"))).send().await.unwrap();
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    let mut authorize = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    authorize.query_pairs_mut().append_pair("login_hint", email);
    let r = s.http.get(authorize).send().await.unwrap();
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    let callback = r.headers()["location"].to_str().unwrap().to_string();
    let r = s.http.get(callback).send().await.unwrap();
    let status = r.status();
    let page = r.text().await.unwrap();
    assert_eq!(status, 200, "{page}");
    page
}

async fn get_as(s: &Stack, path: &str, account: Option<&str>) -> (u16, String) {
    let mut req = s.http.get(s.url(path));
    if let Some(a) = account {
        req = req.header("X-GoTo-Account", a);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

const WEBINARS: &str = "/G2W/rest/v2/organizers/{organizerKey}/webinars";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_signed_in_are_chosen_per_request() {
    let s = stack(two_users(), |m, d| accounts_config(m, d, "")).await;
    let (one, two) = (MockUser::numbered(1), MockUser::numbered(2));
    let page = sign_in(&s, Some("alice"), &one.email).await;
    assert!(page.contains("alice"), "{page}");
    // Unnamed: named after the principal's email.
    let page = sign_in(&s, None, &two.email).await;
    assert!(page.contains("user2_example.com"), "{page}");

    // The mock refuses a token on another organizer's path (403), so a 200 proves the
    // chosen account's token and its organizer key went out together.
    for who in ["alice", one.email.as_str(), one.organizer_key.as_str(), one.account_key.as_str()] {
        let (status, body) = get_as(&s, WEBINARS, Some(who)).await;
        assert_eq!(status, 200, "X-GoTo-Account: {who}: {body}");
    }
    for who in ["user2_example.com", "USER2@example.com", two.organizer_key.as_str()] {
        let (status, body) = get_as(&s, WEBINARS, Some(who)).await;
        assert_eq!(status, 200, "X-GoTo-Account: {who}: {body}");
    }
    // The request's own organizer key or account key chooses, with no header.
    for path in [
        format!("/G2W/rest/v2/organizers/{}/webinars", two.organizer_key),
        format!("/G2W/rest/v2/organizers/{}/webinars", one.organizer_key),
        format!("/G2W/rest/v2/accounts/{}/webinars", one.account_key),
    ] {
        let (status, body) = get_as(&s, &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Nothing chooses: account_required, naming the header and no account.
    let (status, body) = get_as(&s, WEBINARS, None).await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "account_required");
    assert!(v["message"].as_str().unwrap().contains("X-GoTo-Account"));
    assert!(!body.contains("alice") && !body.contains("user2"), "{body}");
    let (status, body) = get_as(&s, WEBINARS, Some("mallory")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "unknown_account");

    // Admin: /tokens pages through the accounts; /readyz is ready; metrics count by state.
    let tokens: Value = s.http.get(s.admin("/tokens?limit=1")).send().await.unwrap().json().await.unwrap();
    let accounts = &tokens["goto"]["accounts"];
    assert_eq!(accounts["total"], 2, "{tokens}");
    assert_eq!(accounts["items"].as_array().unwrap().len(), 1);
    assert_eq!(accounts["items"][0]["name"], "alice");
    assert_eq!(accounts["items"][0]["principal"], one.email.as_str());
    let tokens: Value = s.http.get(s.admin("/tokens?offset=1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tokens["goto"]["accounts"]["items"][0]["name"], "user2_example.com");
    let ready = s.http.get(s.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = s.http.get(s.admin("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("goto_auth_proxy_accounts{credential=\"goto\",state=\"valid\"} 2"), "{metrics}");
    assert!(!metrics.contains("alice") && !metrics.contains("user2"), "an account's name in the metrics");

    // Renewing one account touches only it.
    let before = s.mock.stats().token_calls;
    let r = s.http.post(s.admin("/refresh/goto/alice")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.mock.stats().token_calls, before + 1);
    let (status, _) = get_as(&s, WEBINARS, Some("alice")).await;
    assert_eq!(status, 200);

    // Removing one: it is gone for requests, the other stays.
    let r = s.http.post(s.admin("/accounts/goto/alice/remove")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (status, body) = get_as(&s, WEBINARS, Some("alice")).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get_as(&s, WEBINARS, Some("user2_example.com")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_account_serves_requests_that_choose_none() {
    let s = stack(two_users(), |m, d| accounts_config(m, d, "default_account = \"bob\"")).await;
    let ready = s.http.get(s.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "ready before the default account signed in");
    sign_in(&s, Some("bob"), &MockUser::numbered(2).email).await;
    let (status, body) = get_as(&s, WEBINARS, None).await;
    assert_eq!(status, 200, "{body}");
    let ready = s.http.get(s.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_account_survives_a_restart_without_a_sign_in() {
    let s = stack(two_users(), |m, d| accounts_config(m, d, "")).await;
    sign_in(&s, Some("alice"), &MockUser::numbered(1).email).await;
    sign_in(&s, Some("bob"), &MockUser::numbered(2).email).await;
    let Stack { mock, proxy, dir, http } = s;
    proxy.stop().await;
    let calls = mock.stats().token_calls;

    let proxy = start_proxy(&accounts_config(&mock, dir.path(), "")).await;
    let s = Stack { mock, proxy, dir, http };
    for who in ["alice", "bob"] {
        let (status, body) = get_as(&s, WEBINARS, Some(who)).await;
        assert_eq!(status, 200, "{who}: {body}");
    }
    assert_eq!(s.mock.stats().token_calls, calls, "a stored, valid account token was renewed at start");

    // The `accounts` command reads the same store.
    let file = s.dir.path().join("goto.toml");
    std::fs::write(&file, accounts_config(&s.mock, s.dir.path(), "")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_goto-auth-proxy"))
        .args(["accounts", "--credential", "goto", "--json", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = lines.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(lines[1]["principal"], MockUser::numbered(2).email.as_str());
    assert_eq!(lines[1]["state"], "valid");
}
