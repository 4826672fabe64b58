//! The mock GoTo as test equipment for many accounts: several users sign in through its
//! authorize and token endpoints, each token stays its user's through refreshes, and its
//! APIs refuse another user's keys with a permission 403, as GoTo does.

use goto_mock::{MockGoto, MockOptions, MockUser};
use serde_json::Value;

/// Where the sign-in redirects: nobody serves it (like GoTo's 404 page), the code is
/// read from the redirect's `Location`.
const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn bob() -> MockUser {
    MockUser {
        organizer_key: "1234567890123456789".into(),
        account_key: "2345678901234567890".into(),
        email: "bob@example.com".into(),
        first_name: "Bob".into(),
        last_name: "Builder".into(),
    }
}

/// Signs in at the authorize endpoint (with `login_hint` when given) and exchanges the
/// code: the token answer.
async fn sign_in(mock: &MockGoto, login_hint: Option<&str>) -> Value {
    let http = no_redirects();
    let mut url = url::Url::parse(&format!("{}/oauth/authorize", mock.url())).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", "demo-client-id")
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("state", "s1");
    if let Some(h) = login_hint {
        url.query_pairs_mut().append_pair("login_hint", h);
    }
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    let location = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let code = location.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
    token(mock, &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", REDIRECT_URI)]).await
}

async fn refresh(mock: &MockGoto, answer: &Value) -> Value {
    let rt = answer["refresh_token"].as_str().unwrap();
    token(mock, &[("grant_type", "refresh_token"), ("refresh_token", rt)]).await
}

async fn token(mock: &MockGoto, form: &[(&str, &str)]) -> Value {
    let r = no_redirects()
        .post(format!("{}/oauth/token", mock.url()))
        .basic_auth("demo-client-id", Some("demo-client-secret"))
        .form(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// `GET path` on the mock's API with the answer's access token: status and body.
async fn api(mock: &MockGoto, answer: &Value, path: &str) -> (u16, String) {
    let r = no_redirects()
        .get(format!("{}{path}", mock.url()))
        .bearer_auth(answer["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Asserts the token's identity answer and Admin `/me` name `user`.
async fn assert_identity(mock: &MockGoto, answer: &Value, user: &MockUser) {
    let (status, body) = api(mock, answer, "/identity/v1/Users/me").await;
    assert_eq!(status, 200, "{body}");
    let scim: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(scim["id"], user.organizer_key.as_str(), "{scim}");
    assert_eq!(scim["userName"], user.email.as_str(), "{scim}");
    assert_eq!(scim["urn:scim:schemas:extension:getgo:1.0"]["accounts"][0]["value"], user.account_key.as_str());
    let (status, body) = api(mock, answer, "/admin/rest/v1/me").await;
    assert_eq!(status, 200, "{body}");
    let me: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((me["key"].as_str(), me["accountKey"].as_str()), (Some(&*user.organizer_key), Some(&*user.account_key)));
    assert_eq!(me["email"], user.email.as_str());
}

/// Asserts `status` and `body` are a permission 403, not a rejected token.
fn assert_no_permission(status: u16, body: &str) {
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("InvalidToken"), "a permission error, not a dead token: {body}");
}

#[tokio::test]
async fn two_users_sign_in_refresh_and_each_reaches_only_their_own_keys() {
    let mock = MockGoto::start(MockOptions {
        keys_in_oauth_response: true,
        more_users: vec![bob()],
        ..MockOptions::default()
    })
    .await
    .unwrap();
    let alice = mock.options().users()[0].clone();
    let bob = bob();

    // One by organizer key, one by email (in another case).
    let a = sign_in(&mock, Some(&alice.organizer_key)).await;
    let b = sign_in(&mock, Some("BOB@example.com")).await;
    for answer in [a.clone(), refresh(&mock, &a).await] {
        assert_eq!(answer["principal"], alice.email.as_str(), "{answer}");
        assert_eq!(answer["organizer_key"], alice.organizer_key.as_str());
        assert_eq!(answer["account_key"], alice.account_key.as_str());
    }
    let b2 = refresh(&mock, &b).await;
    for answer in [&b, &b2] {
        assert_eq!(answer["principal"], "bob@example.com", "{answer}");
        assert_eq!(answer["organizer_key"], bob.organizer_key.as_str());
        assert_eq!(answer["account_key"], bob.account_key.as_str());
    }
    // Rotation: the refreshed tokens (and the refresh token after them) stay Bob's.
    let b3 = refresh(&mock, &b2).await;
    assert_eq!(b3["principal"], "bob@example.com");
    assert_identity(&mock, &b3, &bob).await;
    let a2 = refresh(&mock, &a).await;
    assert_identity(&mock, &a2, &alice).await;

    // Each reaches their own organizer and account keys, and only those.
    for (mine, theirs, user, other) in [(&a2, &b3, &alice, &bob), (&b3, &a2, &bob, &alice)] {
        let own = format!("/G2W/rest/v2/organizers/{}/webinars", user.organizer_key);
        let (status, body) = api(&mock, mine, &own).await;
        assert_eq!(status, 200, "{own}: {body}");
        assert!(body.contains(&format!("\"organizerKey\":{}", user.organizer_key)), "{body}");
        assert_eq!(api(&mock, theirs, &own).await.0, 403, "{own} with the other user's token");
        for path in [
            format!("/G2W/rest/v2/organizers/{}/webinars", other.organizer_key),
            format!("/G2W/rest/v2/accounts/{}/webinars", other.account_key),
            format!("/voice-admin/v1/phone-numbers?accountKey={}", other.account_key),
            format!("/G2W/rest/v2/webinars?accountKey={}", other.account_key),
        ] {
            let (status, body) = api(&mock, mine, &path).await;
            assert_no_permission(status, &body);
        }
        let connect = format!("/voice-admin/v1/phone-numbers?accountKey={}", user.account_key);
        assert_eq!(api(&mock, mine, &connect).await.0, 200, "{connect}");
    }
}

#[tokio::test]
async fn without_a_hint_the_session_user_signs_in_and_an_unknown_hint_is_refused() {
    let mock =
        MockGoto::start(MockOptions { more_users: vec![bob(), MockUser::numbered(7)], ..MockOptions::default() })
            .await
            .unwrap();
    let first = MockOptions::default().principal;
    assert_eq!(sign_in(&mock, None).await["principal"], first.as_str(), "the first user by default");
    assert!(mock.sign_in_as("user7@example.com"));
    let seven = sign_in(&mock, None).await;
    assert_eq!(seven["principal"], "user7@example.com");
    assert_identity(&mock, &seven, &MockUser::numbered(7)).await;
    assert_eq!(sign_in(&mock, Some("bob@example.com")).await["principal"], "bob@example.com", "the hint wins");
    assert!(!mock.sign_in_as("nobody@example.com"));

    let r = no_redirects()
        .get(format!(
            "{}/oauth/authorize?client_id=demo-client-id&response_type=code&redirect_uri={REDIRECT_URI}&login_hint=nobody",
            mock.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A minted refresh token is its user's too.
    let rt = mock.mint_refresh_token_for(&bob().organizer_key).unwrap();
    let b = token(&mock, &[("grant_type", "refresh_token"), ("refresh_token", &rt)]).await;
    assert_identity(&mock, &b, &bob()).await;
    assert_eq!(mock.options().more_users, vec![bob(), MockUser::numbered(7)], "options() still lists them");
}

#[tokio::test]
async fn the_one_user_mock_refuses_a_foreign_organizer_key_with_a_permission_403() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let rt = mock.mint_refresh_token();
    let answer = token(&mock, &[("grant_type", "refresh_token"), ("refresh_token", &rt)]).await;
    let (status, body) = api(&mock, &answer, "/G2W/rest/v2/organizers/1/webinars").await;
    assert_no_permission(status, &body);
    let (status, body) = api(&mock, &answer, "/call-history/v1/calls?accountKey=1").await;
    assert_no_permission(status, &body);
}
