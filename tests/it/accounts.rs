//! Many accounts: several people signed in to one OAuth client through the proxy's own
//! sign-in, each chosen per request — by `X-GoTo-Account`, by a key in the path or
//! query, or by `default_account` — and each renewing on its own.

use goto_mock::{MockGoto, MockOptions, MockUser};
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

pub(crate) async fn get_as(s: &Stack, path: &str, account: Option<&str>) -> (u16, String) {
    let mut req = s.http.get(s.url(path));
    if let Some(a) = account {
        req = req.header("X-GoTo-Account", a);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub(crate) const WEBINARS: &str = "/G2W/rest/v2/organizers/{organizerKey}/webinars";

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

/// Two colleagues whose tokens share one account key (GoTo's accounts hold several
/// organizers).
fn colleagues() -> MockOptions {
    let mut two = MockUser::numbered(2);
    two.account_key = MockUser::numbered(1).account_key;
    MockOptions { more_users: vec![MockUser::numbered(1), two], ..MockOptions::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_two_accounts_share_or_a_stray_header_chooses_no_one() {
    let s = stack(colleagues(), |m, d| accounts_config(m, d, "")).await;
    let (one, two) = (MockUser::numbered(1), MockUser::numbered(2));
    sign_in(&s, Some("alice"), &one.email).await;
    sign_in(&s, Some("bob"), &two.email).await;
    let shared = format!("/G2W/rest/v2/accounts/{}/webinars", one.account_key);

    // The account key both share chooses neither, by path or by header.
    let (status, body) = get_as(&s, &shared, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "account_required");
    let (status, body) = get_as(&s, WEBINARS, Some(&one.account_key)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "unknown_account");
    // Each one's own organizer key still chooses them.
    let (status, body) = get_as(&s, WEBINARS, Some(&two.organizer_key)).await;
    assert_eq!(status, 200, "{body}");

    // A header that is not text, or is huge, names no one; nothing leaves.
    let api = |st: goto_mock::Stats| st.api_ok + st.api_rejected;
    let calls = api(s.mock.stats());
    let r = s
        .http
        .get(s.url(WEBINARS))
        .header("X-GoTo-Account", reqwest::header::HeaderValue::from_bytes(b"al\xffice").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, _) = get_as(&s, WEBINARS, Some(&"a".repeat(60_000))).await;
    assert!(status == 400 || status == 431, "{status}");
    assert_eq!(api(s.mock.stats()), calls, "a request without a chosen account reached GoTo");

    // The header is the client's explicit choice: Alice's token on Bob's organizer path
    // goes out as Alice's, and GoTo refuses it — it never becomes Bob's.
    let bobs = format!("/G2W/rest/v2/organizers/{}/webinars", two.organizer_key);
    let (status, body) = get_as(&s, &bobs, Some("alice")).await;
    assert_eq!(status, 403, "{body}");

    // Bob removed: the key is Alice's alone again, and chooses her.
    let r = s.http.post(s.admin("/accounts/goto/bob/remove")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, body) = get_as(&s, &shared, None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_under_a_name_outside_the_rule_is_refused() {
    let s = stack(two_users(), |m, d| accounts_config(m, d, "")).await;
    for bad in ["..%2Fx", "a%20b", "x%3Cscript%3E", "%0Aforged"] {
        let r = s.http.get(s.admin(&format!("/login/goto?account={bad}"))).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        // JSON, never a page a browser would render.
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
        let body = r.text().await.unwrap();
        assert!(body.contains("not an account name"), "{bad}: {body}");
        assert!(!body.trim_end().contains('\n'), "{body}");
    }
}

/// Two replicas sharing Redis: a person signed in on one serves on the other within a
/// second; removed on one, gone on the other, and not written back by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_take_up_and_forget_accounts() {
    let Some(redis) = RedisServer::start().await else { return };
    let mock = MockGoto::start(two_users()).await.unwrap();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntoken_wait = \"3s\"\n\n{}\n{}accounts = true\n\n{}",
        redis.state("people"),
        code_cred("goto", &mock, None),
        route("/", &mock, Some("goto"))
    );
    let dir = tempfile::tempdir().unwrap();
    let a = Stack { mock, proxy: start_proxy(&text).await, dir, http: client() };
    let b = start_proxy(&text).await;
    let on_b = |path: &str| format!("http://{}{path}", b.proxy_addr);
    let one = MockUser::numbered(1);
    sign_in(&a, Some("alice"), &one.email).await;

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let r = a.http.get(on_b(WEBINARS)).header("X-GoTo-Account", "alice").send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "replica B never served alice: {}", r.status());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let calls = a.mock.stats().token_calls;

    let r = a.http.post(a.admin("/accounts/goto/alice/remove")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let r = a.http.get(on_b(WEBINARS)).header("X-GoTo-Account", "alice").send().await.unwrap();
        if r.status() == 400 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "replica B still serves a removed account");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Past B's polls: nothing wrote the removed account back.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(redis.get("people:token:goto/alice").await.is_none(), "the removed account came back");
    assert_eq!(a.mock.stats().token_calls, calls, "B renewed instead of taking alice's token up");
    b.stop().await;
}

/// `token_rate` is one budget for every replica sharing Redis: two replicas each asked to
/// renew two accounts at the same moment make their four token calls at most one a
/// second between them (each alone would make two at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_share_token_rate() {
    let Some(redis) = RedisServer::start().await else { return };
    let users: Vec<MockUser> = (1..=4).map(MockUser::numbered).collect();
    let mock = MockGoto::start(MockOptions { more_users: users.clone(), ..MockOptions::default() }).await.unwrap();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n{}\n{}accounts = true\ntoken_rate = 1\n\n{}",
        redis.state("rate"),
        code_cred("goto", &mock, None),
        route("/", &mock, Some("goto"))
    );
    let dir = tempfile::tempdir().unwrap();
    let a = Stack { mock, proxy: start_proxy(&text).await, dir, http: client() };
    let b = start_proxy(&text).await;
    for (i, u) in users.iter().enumerate() {
        sign_in(&a, Some(&format!("p{i}")), &u.email).await;
    }
    let before = a.mock.issued().len();
    let refresh = |admin: std::net::SocketAddr, who: &'static str| {
        let http = a.http.clone();
        async move {
            let r = http.post(format!("http://{admin}/refresh/goto/{who}")).send().await.unwrap();
            assert!(r.status().is_success() || r.status().is_redirection(), "{who}: {}", r.status());
        }
    };
    tokio::join!(
        refresh(a.proxy.admin_addr, "p0"),
        refresh(a.proxy.admin_addr, "p1"),
        refresh(b.admin_addr, "p2"),
        refresh(b.admin_addr, "p3")
    );
    let calls: Vec<_> = a.mock.issued().into_iter().skip(before).map(|i| i.at).collect();
    assert_eq!(calls.len(), 4, "one renewal per account");
    for pair in calls.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= std::time::Duration::from_millis(950),
            "two token calls {gap:?} apart under token_rate = 1: {calls:?}"
        );
    }
    b.stop().await;
}

/// An inbound key limited to accounts uses those only — chosen by header, by key in the
/// path, or by falling back to the default account; an unlimited key uses any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_key_limited_to_accounts_uses_no_other() {
    let inbound =
        "default_account = \"bob\"\n\n[inbound]\nkeys = [\"open-k3y\", { key = \"team-a-k3y\", accounts = [\"alice\"] }]\n";
    let s = stack(two_users(), |m, d| accounts_config(m, d, inbound)).await;
    let (one, two) = (MockUser::numbered(1), MockUser::numbered(2));
    let key = |k: &'static str| move |r: reqwest::RequestBuilder| r.header("x-goto-auth-proxy-key", k);
    // Sign-ins go through the admin listener, which needs a key too.
    let with_key = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(
            [("x-goto-auth-proxy-key".parse().unwrap(), "open-k3y".parse().unwrap())].into_iter().collect(),
        )
        .build()
        .unwrap();
    let s = Stack { http: with_key, ..s };
    sign_in(&s, Some("alice"), &one.email).await;
    sign_in(&s, Some("bob"), &two.email).await;

    let plain = client();
    let send = |path: String, account: Option<&'static str>, k: &'static str| {
        let mut r = key(k)(plain.get(s.url(&path)));
        if let Some(a) = account {
            r = r.header("X-GoTo-Account", a);
        }
        r.send()
    };
    let bobs = format!("/G2W/rest/v2/organizers/{}/webinars", two.organizer_key);
    assert_eq!(send(WEBINARS.into(), Some("alice"), "team-a-k3y").await.unwrap().status(), 200);
    for (path, account) in [(WEBINARS.to_string(), Some("bob")), (bobs.clone(), None), (WEBINARS.to_string(), None)] {
        let r = send(path.clone(), account, "team-a-k3y").await.unwrap();
        assert_eq!(r.status(), 403, "{path} as {account:?}");
        assert_eq!(r.headers()["x-goto-auth-proxy-error"], "forbidden");
    }
    // The unlimited key uses anyone, the default included.
    assert_eq!(send(WEBINARS.into(), Some("alice"), "open-k3y").await.unwrap().status(), 200);
    assert_eq!(send(WEBINARS.into(), None, "open-k3y").await.unwrap().status(), 200);
    assert_eq!(send(bobs, None, "open-k3y").await.unwrap().status(), 200);
}

/// Accounts renew without a task each: the set's one task renews every account before
/// its token dies, under traffic that picks each account by the organizer key in its
/// path, and never calls the token endpoint more than `token_rate` times in a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_account_renews_on_time_under_token_rate() {
    let users = [MockUser::numbered(1), MockUser::numbered(2), MockUser::numbered(3)];
    let opts = MockOptions {
        token_lifetime: std::time::Duration::from_secs(3),
        more_users: users.to_vec(),
        ..MockOptions::default()
    };
    let s = stack(opts, |m, d| accounts_config(m, d, "refresh_before = \"1s\"\ntoken_rate = 2")).await;
    for u in &users {
        sign_in(&s, None, &u.email).await;
    }
    let signed_in = s.mock.issued().len();
    let urls: Vec<String> =
        users.iter().map(|u| s.url(&format!("/G2W/rest/v2/organizers/{}/webinars", u.organizer_key))).collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = tokio::spawn(load(urls, 3, std::time::Duration::from_millis(20), stop.clone()));
    // Three lifetimes of three accounts: each must renew at least twice.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.mock.issued().len() < signed_in + 6 {
        assert!(tokio::time::Instant::now() < deadline, "accounts did not renew: {:?}", s.mock.stats());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // And keep serving through one more lifetime.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    stop.cancel();
    traffic.await.unwrap().assert_no_failures();
    // (The mock kills a chain's access tokens at each refresh, as GoTo may: requests in
    // flight then are retried with the new token, so none failed above.)
    let tokens: Value = s.http.get(s.admin("/tokens?credential=goto")).send().await.unwrap().json().await.unwrap();
    let items = tokens["goto"]["accounts"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{tokens}");
    for a in items {
        assert_eq!(a["state"], "valid", "{tokens}");
    }
    let renewals: Vec<_> = s.mock.issued().into_iter().skip(signed_in).map(|i| i.at).collect();
    for (i, at) in renewals.iter().enumerate() {
        let in_second =
            renewals[i..].iter().take_while(|t| t.duration_since(*at) < std::time::Duration::from_secs(1)).count();
        assert!(in_second <= 2, "{in_second} token calls within one second, token_rate = 2: {renewals:?}");
    }
}
