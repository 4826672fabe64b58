//! GoTo as it really is: keys from the identity endpoint (SCIM), GoTo Connect's account
//! key in the query string, and GoTo's quota of about 10 requests per second per API —
//! spaced by `rate_limit`, paused after a 429, and shared by replicas through Redis.

use std::time::{Duration, Instant};

use crate::support::*;
use goto_mock::MockOptions;

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

#[tokio::test]
async fn keys_come_from_the_admin_me_when_the_identity_endpoint_fails() {
    let s = standard(MockOptions { identity_unavailable: true, ..MockOptions::default() }).await;
    let r = s.get("/voice-admin/v1/phone-numbers?accountKey=%7BaccountKey%7D").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-mock-query"], format!("accountKey={ACCOUNT_KEY}").as_str());
    let r = s.get("/G2W/rest/v2/organizers/%7BorganizerKey%7D/webinars").await;
    assert_eq!(r.status(), 200, "the organizer key too");
}

// ===== GoTo's quota: rate_limit, the 429 pause, retry_429 =====

/// GoTo's quota in these tests: 50 requests per second per token and API (the real one
/// is about 10; 50 keeps each test to a couple of seconds, the arithmetic is the same).
const QUOTA: u32 = 50;

/// A mock enforcing [`QUOTA`], an OAuth credential, and `routes` (TOML) to it.
async fn quota_stack(token_wait: &str, routes: impl FnOnce(&goto_mock::MockGoto) -> String) -> Stack {
    let opts = MockOptions { api_quota: Some(QUOTA), ..MockOptions::default() };
    let wait = format!("token_wait = \"{token_wait}\"");
    stack(opts, |mock, dir| {
        config_text(
            dir,
            &wait,
            &format!("{}\n{}", code_cred("goto", mock, Some(&mock.mint_refresh_token())), routes(mock)),
        )
    })
    .await
}

/// `n` GETs of `urls` (round-robin), all at once: their statuses.
async fn burst(urls: &[String], n: usize) -> Vec<u16> {
    let http = client();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (http, url) = (http.clone(), urls[i % urls.len()].clone());
            tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Most arrivals GoTo may see in one second from a proxy pacing at [`QUOTA`]: timers
/// and schedulers bunch evenly spaced requests a little, by far less than one replica's
/// share would add.
const BUSIEST_ALLOWED: usize = QUOTA as usize * 11 / 10;

/// The most arrivals within any one second.
fn busiest_second(times: &[Instant]) -> usize {
    let mut times = times.to_vec();
    times.sort();
    (0..times.len())
        .map(|i| times[i..].iter().take_while(|t| t.duration_since(times[i]) < Duration::from_secs(1)).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn rate_limit_spends_a_burst_within_gotos_quota() {
    let s = quota_stack("5s", |m| {
        format!("{}rate_limit = {QUOTA}\n\n{}", route("/G2W/", m, Some("goto")), route("/G2M/", m, Some("goto")))
    })
    .await;
    assert_eq!(s.get("/G2W/rest/v2/warm-up").await.status(), 200, "a token and keys first");
    let before = s.mock.api_call_times().len();

    // 100 requests as fast as a client can send them, to a route with rate_limit = quota.
    let statuses = burst(&[s.url("/G2W/rest/v2/webinars")], 100).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(s.mock.stats().api_throttled, 0, "GoTo never answered 429");
    let seen = &s.mock.api_call_times()[before..];
    assert_eq!(seen.len(), 100);
    assert!(busiest_second(seen) <= BUSIEST_ALLOWED, "GoTo saw {} in one second", busiest_second(seen));

    // The same burst on a route without rate_limit spends the quota into 429s: the test
    // above could have failed.
    let statuses = burst(&[s.url("/G2M/rest/meetings")], 100).await;
    assert!(statuses.contains(&429), "{statuses:?}");
    let metrics = metrics_of(&s.proxy).await;
    assert!(metric(&metrics, r#"goto_auth_proxy_upstream_throttled_total{route="/G2M/"}"#) >= 1.0, "{metrics}");
    assert_eq!(metric(&metrics, r#"goto_auth_proxy_upstream_throttled_total{route="/G2W/"}"#), 0.0);
}

#[tokio::test]
async fn a_429_pauses_the_route_and_what_arrives_meanwhile_waits() {
    let s = quota_stack("4s", |m| route("/G2W/", m, Some("goto"))).await;
    assert_eq!(s.get("/G2W/rest/v2/warm-up").await.status(), 200);

    s.mock.throttle_once("2");
    let t0 = Instant::now();
    let r = s.get("/G2W/rest/v2/webinars").await;
    assert_eq!(r.status(), 429, "GoTo's 429 passes through");
    assert_eq!(r.headers()["retry-after"], "2");
    assert!(r.headers().get("x-goto-auth-proxy-error").is_none(), "it is GoTo's answer, not the proxy's");
    let before = s.mock.api_call_times().len();

    // Requests during the pause wait for it (within token_wait), then all go through.
    let statuses = burst(&[s.url("/G2W/rest/v2/webinars")], 5).await;
    assert_eq!(statuses, [200; 5]);
    let seen = &s.mock.api_call_times()[before..];
    assert_eq!(seen.len(), 5);
    for t in seen {
        assert!(
            t.duration_since(t0) >= Duration::from_millis(1990),
            "a request reached GoTo {:?} after its 429",
            t.duration_since(t0)
        );
    }
    let metrics = metrics_of(&s.proxy).await;
    assert_eq!(metric(&metrics, r#"goto_auth_proxy_upstream_throttled_total{route="/G2W/"}"#), 1.0);

    // A pause longer than token_wait: refused at once, with when to come back.
    s.mock.throttle_once("30");
    assert_eq!(s.get("/G2W/rest/v2/webinars").await.status(), 429);
    let before = s.mock.api_call_times().len();
    let t = Instant::now();
    let r = s.get("/G2W/rest/v2/webinars").await;
    assert!(t.elapsed() < Duration::from_secs(1), "refused without waiting");
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-goto-auth-proxy-error"], "rate_limited");
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((28..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(s.mock.api_call_times().len(), before, "nothing reached GoTo during the pause");
}

#[tokio::test]
async fn retry_429_resends_a_get_after_the_pause_but_never_a_post() {
    let s = quota_stack("4s", |m| format!("{}retry_429 = true\n", route("/G2W/", m, Some("goto")))).await;
    assert_eq!(s.get("/G2W/rest/v2/warm-up").await.status(), 200);

    s.mock.throttle_once("1");
    let t = Instant::now();
    let r = s.get("/G2W/rest/v2/webinars").await;
    assert_eq!(r.status(), 200, "resent once the pause ended");
    assert!(t.elapsed() >= Duration::from_secs(1), "not before the pause ended: {:?}", t.elapsed());
    assert_eq!(s.mock.stats().api_throttled, 1);

    s.mock.throttle_once("1");
    let before = s.mock.api_call_times().len();
    let r = s.http.post(s.url("/G2W/rest/v2/webinars")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 429, "a POST is never resent: GoTo's 429 passes through");
    assert_eq!(s.mock.api_call_times().len(), before + 1);
    let metrics = metrics_of(&s.proxy).await;
    assert_eq!(metric(&metrics, r#"goto_auth_proxy_upstream_throttled_total{route="/G2W/"}"#), 2.0);
}

#[tokio::test]
async fn three_replicas_on_one_redis_spend_one_quota() {
    let Some(mut redis) = RedisServer::start().await else { return };
    let mock =
        goto_mock::MockGoto::start(MockOptions { api_quota: Some(QUOTA), ..MockOptions::default() }).await.unwrap();
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntoken_wait = \"10s\"\n\n{}\n{}\n{}rate_limit = {QUOTA}\n\n{}",
        redis.state("quota"),
        code_cred("goto", &mock, Some(&mock.mint_refresh_token())),
        route("/G2W/", &mock, Some("goto")),
        route("/G2M/", &mock, Some("goto")),
    );
    let mut reps = Vec::new();
    for _ in 0..3 {
        reps.push(start_proxy(&config).await);
    }
    let urls: Vec<String> = reps.iter().map(|r| format!("http://{}/G2W/rest/v2/webinars", r.proxy_addr)).collect();
    // One token for all (the shared store), then the burst: 150 requests over 3 replicas.
    assert_eq!(burst(&urls, 3).await, [200; 3]);
    let before = mock.api_call_times().len();
    let t = Instant::now();
    let statuses = burst(&urls, 150).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(mock.stats().api_throttled, 0, "GoTo never answered 429");
    let seen = &mock.api_call_times()[before..];
    assert!(busiest_second(seen) <= BUSIEST_ALLOWED, "GoTo saw {} in one second", busiest_second(seen));
    // Each replica alone would have sent its 50 within a second.
    assert!(t.elapsed() >= Duration::from_millis(2900), "150 at {QUOTA}/s took {:?}", t.elapsed());

    // A 429 one replica got pauses the route (here one without rate_limit) for the others
    // too: they learn of it within PAUSE_POLL, and send nothing more until it ends.
    let g2m = |r: &goto_auth_proxy::Running| format!("http://{}/G2M/rest/meetings", r.proxy_addr);
    assert_eq!(burst(&[g2m(&reps[1])], 1).await, [200]);
    mock.throttle_once("2");
    let t0 = Instant::now();
    assert_eq!(burst(&[g2m(&reps[0])], 1).await, [429]);
    let before = mock.api_call_times().len();
    tokio::time::sleep_until((Instant::now() + goto_auth_proxy::testing::PAUSE_POLL).into()).await;
    // One at a time: a request that arrives while its replica is asking (one Redis round
    // trip) may still go; one per replica and PAUSE_POLL at most.
    for r in [&reps[1], &reps[2], &reps[1]] {
        assert_eq!(burst(&[g2m(r)], 1).await, [200], "it waited for the pause");
    }
    for t in &mock.api_call_times()[before..] {
        assert!(t.duration_since(t0) >= Duration::from_millis(1990), "another replica sent during the pause");
    }

    // Redis gone: each replica paces alone (at its full rate_limit), says so, and serves.
    redis.kill();
    assert_eq!(burst(&urls[..1], 5).await, [200; 5]);
    let metrics = metrics_of(&reps[0]).await;
    assert!(metric(&metrics, r#"goto_auth_proxy_rate_limit_local_total{route="/G2W/"}"#) >= 1.0, "{metrics}");
    for r in reps {
        r.stop().await;
    }
}
