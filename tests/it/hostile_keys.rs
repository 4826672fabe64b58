//! Organizer and account keys, and who signed in, are data from outside: a token answer
//! or a keys lookup that hands out a key built to reshape the forwarded request
//! (`../../../admin/rest/v1/users?evil=1#frag`) or a principal of a megabyte. The real
//! binary runs against the mock GoTo serving such values; the mock records every
//! request target it receives, so "never reshaped" is checked where it matters: at the
//! upstream.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;
use goto_mock::{MockGoto, MockOptions};

/// An organizer key that climbs out of `/organizers/`, adds a parameter and a fragment.
const HOSTILE_KEY: &str = "../../../admin/rest/v1/users?evil=1#frag";

/// An account key that would add a query parameter, or a path segment.
const HOSTILE_ACCOUNT_KEY: &str = "1&evil=2/x";

/// The mock's ordinary account key.
const ACCOUNT_KEY: &str = "9999982253621659654";

/// The binary in front of `mock`: Direct Login `g2a` (keys in its token answer) on
/// `/G2A/`, OAuth `goto` (keys from the identity endpoint) on `/`.
fn spawn(mock: &MockGoto, dir: &std::path::Path) -> Proc {
    let seed = mock.mint_refresh_token();
    let text = config_text(
        dir,
        "",
        &format!(
            "{}\n{}\n{}\n{}",
            password_cred("g2a", mock),
            code_cred("goto", mock, Some(&seed)),
            route("/G2A/", mock, Some("g2a")),
            route("/", mock, Some("goto"))
        ),
    );
    Proc::spawn(&write_config(dir, "proxy.toml", &text))
}

/// The JSON log lines at WARN that name `credential` and `field`, waiting (bounded) for
/// the first: the log is read from the child's stderr on another thread.
async fn warnings(p: &Proc, credential: &str, field: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Value> = p
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["level"] == "WARN" && v["fields"]["credential"] == credential && v["fields"]["field"] == field
            })
            .collect();
        if !found.is_empty() || tokio::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET path` through the proxy: status, the proxy's error code (if it made the answer)
/// and the body.
async fn get(p: &Proc, path: &str) -> (u16, Option<String>, String) {
    let r = client().get(p.url(path)).send().await.expect("proxy answers");
    let status = r.status().as_u16();
    let code = r.headers().get("x-goto-auth-proxy-error").map(|v| v.to_str().unwrap().to_string());
    (status, code, r.text().await.unwrap())
}

/// Nothing the upstream received was reshaped by a key: no climb, no added parameter.
fn assert_never_reshaped(mock: &MockGoto) {
    for target in mock.api_targets() {
        for bad in ["..", "evil", "#", "/admin/rest/v1/users", "/x?"] {
            assert!(!target.contains(bad), "the upstream received {target:?}, which holds {bad:?}");
        }
    }
}

#[tokio::test]
async fn a_hostile_organizer_key_in_the_token_answer_is_dropped_and_never_reaches_a_path() {
    let mock =
        MockGoto::start(MockOptions { organizer_key: HOSTILE_KEY.into(), ..MockOptions::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(&mock, dir.path());

    for path in ["/G2A/rest/v2/organizers/{organizerKey}/webinars", "/G2A/rest/v2/organizers/%7BorganizerKey%7D/x"] {
        let (status, code, body) = get(&p, path).await;
        assert_eq!((status, code.as_deref()), (503, Some("token_unavailable")), "{path}: {body}");
        assert!(body.contains("organizer key") && body.contains("g2a"), "the answer says which key: {body}");
        assert!(!body.contains("evil"), "{body}");
    }
    assert_never_reshaped(&mock);
    // The account key of the same answer is fine, and still fills its placeholder.
    let r = client().get(p.url("/G2A/rest/v2/accounts/{accountKey}/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mock-path"], format!("/G2A/rest/v2/accounts/{ACCOUNT_KEY}/x").as_str());

    let warned = warnings(&p, "g2a", "organizer_key").await;
    assert!(!warned.is_empty(), "a warning names the credential and the field:\n{}", p.log_text());
    assert!(!p.log_text().contains("evil=1"), "the hostile value is never logged raw");
    let tokens: Value = client().get(p.admin("/tokens")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tokens["g2a"]["organizer_key"], Value::Null, "{tokens}");
    assert_eq!(tokens["g2a"]["account_key"], ACCOUNT_KEY, "{tokens}");
}

#[tokio::test]
async fn a_hostile_key_from_the_keys_lookup_is_dropped_and_never_reaches_a_path_or_a_query() {
    let mock = MockGoto::start(MockOptions {
        organizer_key: HOSTILE_KEY.into(),
        account_key: HOSTILE_ACCOUNT_KEY.into(),
        ..MockOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(&mock, dir.path());

    // `goto`'s token answer has no keys: the identity endpoint (SCIM) hands them out.
    let (status, code, body) = get(&p, "/G2W/rest/v2/organizers/%7BorganizerKey%7D/webinars?a=1").await;
    assert_eq!((status, code.as_deref()), (503, Some("token_unavailable")), "{body}");
    assert!(body.contains("organizer key") && body.contains("goto"), "{body}");
    for query in ["accountKey={accountKey}", "accountKey=%7BaccountKey%7D&b=2"] {
        let (status, code, body) = get(&p, &format!("/voice-admin/v1/phone-numbers?{query}")).await;
        assert_eq!((status, code.as_deref()), (503, Some("token_unavailable")), "{query}: {body}");
        assert!(body.contains("account key"), "{body}");
    }
    let (status, code, body) = get(&p, "/G2W/rest/v2/accounts/{accountKey}/webinars").await;
    assert_eq!((status, code.as_deref()), (503, Some("token_unavailable")), "{body}");
    assert_never_reshaped(&mock);

    // Each key is named: the SCIM `id` (the organizer key) and the account's `value`.
    assert!(!warnings(&p, "goto", "id").await.is_empty(), "{}", p.log_text());
    assert!(!warnings(&p, "goto", "accounts[0].value").await.is_empty(), "{}", p.log_text());
    assert!(!p.log_text().contains("evil"), "the hostile values are never logged raw");
    // A request that needs no key is untouched by all this.
    assert_eq!(get(&p, "/G2W/rest/v2/webinars").await.0, 200);
}

#[tokio::test]
async fn a_principal_of_a_megabyte_is_not_shown() {
    // Just under the 1 MiB cap on a token answer, so the answer itself is accepted.
    let huge = format!("{}@example.com", "a".repeat(1_000_000));
    let mock = MockGoto::start(MockOptions { principal: huge.clone(), ..MockOptions::default() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = spawn(&mock, dir.path());

    // A request through `goto` makes sure its token (and keys lookup) is in.
    let r = client().get(p.url("/G2W/rest/v2/organizers/{organizerKey}/webinars")).send().await.unwrap();
    assert_eq!(r.status(), 200, "keys are unaffected");
    let text = client().get(p.admin("/tokens")).send().await.unwrap().text().await.unwrap();
    assert!(text.len() < 10_000, "/tokens is {} bytes", text.len());
    let tokens: Value = serde_json::from_str(&text).unwrap();
    let shown = &tokens["goto"]["principal"];
    assert!(shown.is_null() || shown.as_str().unwrap().chars().count() <= 200, "{shown}");
    assert!(!warnings(&p, "goto", "principal").await.is_empty(), "{}", p.log_text());
    assert!(!p.log_text().contains(&"a".repeat(1000)), "nor logged");
}

/// A key planted in the state file (a record written before keys were checked, or by
/// someone with access to it) is dropped when read back, with a warning that names the
/// credential it belongs to.
#[tokio::test]
async fn a_hostile_key_in_a_stored_record_is_dropped_with_a_warning_naming_its_credential() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = spawn(&mock, dir.path());
    wait_ready(&client(), &first.admin("/readyz"), Duration::from_secs(10)).await;
    drop(first);
    let path = dir.path().join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(state["credentials"]["g2a"].is_object(), "{state}");
    state["credentials"]["g2a"]["organizer_key"] = HOSTILE_KEY.into();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();

    let p = spawn(&mock, dir.path());
    let warned = warnings(&p, "g2a", "organizer_key").await;
    assert!(
        warned.iter().any(|w| w["fields"]["source"] == "stored token"),
        "a warning names the credential of the stored record:\n{}",
        p.log_text()
    );
    let (status, code, body) = get(&p, "/G2A/rest/v2/organizers/{organizerKey}/webinars").await;
    assert_eq!((status, code.as_deref()), (503, Some("token_unavailable")), "{body}");
    assert_never_reshaped(&mock);
}
