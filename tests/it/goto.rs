//! GoTo as it really is: keys from the identity endpoint (SCIM), GoTo Connect's account
//! key in the query string, and GoTo's quota of about 10 requests per second per API —
//! spaced by `rate_limit`, paused after a 429, and shared by replicas through Redis.

use std::time::{Duration, Instant};

use crate::support::*;
use goto_auth_proxy::demo::mock::MockOptions;

/// The mock user's account key (the first of the identity answer's two accounts).
const ACCOUNT_KEY: &str = "9999982253621659654";

#[tokio::test]
async fn goto_connect_gets_the_account_key_from_the_identity_endpoint_in_its_query() {
    let s = standard(MockOptions::default()).await;
    // The token answer carries no keys: they come from /identity/v1/Users/me (SCIM).
    for query in [
        "accountKey=%7BaccountKey%7D",
        "accountKey=%7baccountKey%7d",
        "accountKey={accountKey}",
        "pageSize=5&accountKey=%7BaccountKey%7D&q=a%20b+c",
    ] {
        let r = s.get(&format!("/voice-admin/v1/phone-numbers?{query}")).await;
        assert_eq!(r.status(), 200, "{query}");
        let forwarded = r.headers()["x-mock-query"].to_str().unwrap().to_string();
        assert_eq!(
            forwarded,
            query
                .replace("%7BaccountKey%7D", ACCOUNT_KEY)
                .replace("%7baccountKey%7d", ACCOUNT_KEY)
                .replace("{accountKey}", ACCOUNT_KEY)
        );
    }
    // GoTo Connect refuses a call without the key, as the real one does.
    assert_eq!(s.get("/voice-admin/v1/phone-numbers").await.status(), 400);
    // Everything else in a query stays byte for byte, including a placeholder's name.
    let r = s.get("/G2W/rest/v2/webinars?%7BaccountKey%7D=x&b=%7Bother%7D&c=%7b").await;
    assert_eq!(r.headers()["x-mock-query"], "%7BaccountKey%7D=x&b=%7Bother%7D&c=%7b");
    // Who signed in, from the token answer (or the SCIM userName), shows in /tokens.
    let tokens: serde_json::Value = s.http.get(s.admin("/tokens")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tokens["goto"]["principal"], "mister.jones@fakemail.com", "{tokens}");
    assert_eq!(s.mock.stats().api_rejected, 0);
}
