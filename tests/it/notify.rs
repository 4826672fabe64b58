//! `[[notify]]`: a real HTTP receiver on loopback and a real child process are told,
//! once per change of state, when a credential needs a person and when it recovers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::support::*;
use goto_mock::{MockOptions, TokenFault};

/// A webhook receiver: records every POSTed JSON body and answers the statuses it is
/// given in turn (200 once they run out).
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start(statuses: &[u16]) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            got: Arc::default(),
            statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())),
        };
        let me = r.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let me = me.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            me.got.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or_default());
                            let status = me.statuses.lock().unwrap().pop_front().unwrap_or(200);
                            let mut res = hyper::Response::new(Full::new(Bytes::new()));
                            *res.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(res)
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        r
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn events(&self) -> Vec<String> {
        self.got.lock().unwrap().iter().map(|v| v["event"].as_str().unwrap_or("?").to_string()).collect()
    }

    fn attempts(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

/// A program (given as argv, no shell involved) that appends its stdin, one event per
/// line, to `out`.
fn recorder(dir: &Path) -> (PathBuf, PathBuf) {
    let script = dir.join("record-event.sh");
    let out = dir.join("events.jsonl");
    std::fs::write(&script, "#!/bin/sh\ncat >> \"$1\"\necho >> \"$1\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (script, out)
}

fn recorded(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls `f` until it holds (10 s at most).
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Follows the sign-in redirects (the mock approves at once) to the callback page.
async fn sign_in(s: &Stack, credential: &str) {
    let mut url = s.admin(&format!("/login/{credential}"));
    for _ in 0..5 {
        let r = s.http.get(&url).send().await.unwrap();
        if !r.status().is_redirection() {
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            return;
        }
        url = r.headers()["location"].to_str().unwrap().to_string();
    }
    panic!("sign-in redirect loop");
}

#[tokio::test]
async fn a_dead_refresh_token_pages_once_and_a_sign_in_recovers() {
    let hook = Receiver::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (script, out) = recorder(dir.path());
    let notify = format!(
        "[[notify]]\nwebhook = \"{}\"\n\n[[notify]]\ncommand = [{:?}, {:?}]\n",
        hook.url(),
        script.display().to_string(),
        out.display().to_string()
    );
    let s = stack(MockOptions::default(), |mock, state| {
        // A refresh token GoTo no longer knows: invalid_grant, only a person can help.
        let rest = format!(
            "{}\n{}\n{notify}",
            code_cred("goto", mock, Some("dead-refresh-token")),
            route("/", mock, Some("goto"))
        );
        config_text(state, "", &rest)
    })
    .await;

    until("needs_login at the webhook", || hook.events() == ["needs_login"]).await;
    until("needs_login at the command", || recorded(&out).len() == 1).await;
    let payload = hook.got.lock().unwrap()[0].clone();
    let keys: Vec<&str> = payload.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 6, "{payload}");
    assert_eq!(payload["credential"], "goto");
    assert_eq!(payload["grant"], "authorization_code");
    assert_eq!(payload["login_url"], s.admin("/login/goto"));
    assert!(payload["message"].as_str().unwrap().contains("/login/goto"), "{payload}");
    assert!(humantime::parse_rfc3339(payload["at"].as_str().unwrap()).is_ok(), "{payload}");
    assert_eq!(recorded(&out)[0], payload, "the command got the same event on stdin");
    assert!(
        !payload.to_string().contains("dead-refresh-token")
            && !payload.to_string().contains(&s.mock.options().client_secret)
    );

    // Still dead, and retried: an operator's Refresh now, twice, and the refresher's own
    // retries for a few seconds — no second page.
    for _ in 0..2 {
        assert_eq!(s.http.post(s.admin("/refresh/goto")).send().await.unwrap().status(), 502);
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // several of the refresher's retry periods
    assert_eq!(hook.events(), ["needs_login"]);
    assert_eq!(recorded(&out).len(), 1);

    // A person signs in: recovered, once, to both.
    sign_in(&s, "goto").await;
    until("recovered at the webhook", || hook.events() == ["needs_login", "recovered"]).await;
    until("recovered at the command", || recorded(&out).len() == 2).await;
    assert_eq!(recorded(&out)[1]["event"], "recovered");
    // A delivery is counted once its answer is in (the receiver saw it a moment earlier).
    let sent = |event: &str| format!(r#"goto_auth_proxy_notifications_total{{event="{event}",outcome="sent"}}"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = metrics_of(&s.proxy).await;
        let counted = (metric(&metrics, &sent("needs_login")), metric(&metrics, &sent("recovered")));
        if counted == (2.0, 2.0) || tokio::time::Instant::now() > deadline {
            assert_eq!(counted, (2.0, 2.0), "each event counted once per entry: {metrics}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A credential holding a refresh token, a webhook with `after_failures = 2`, and the
/// token endpoint answering `fault` from before the proxy starts.
async fn signed_in_with_a_hook(fault: Option<TokenFault>) -> (Receiver, Stack) {
    let hook = Receiver::start(&[]).await;
    let notify = format!("[[notify]]\nwebhook = \"{}\"\nafter_failures = 2\n", hook.url());
    let s = stack(MockOptions::default(), |mock, dir| {
        mock.set_fault(fault);
        let rest = format!(
            "{}\n{}\n{notify}",
            code_cred("goto", mock, Some(&mock.mint_refresh_token())),
            route("/", mock, Some("goto"))
        );
        config_text(dir, "", &rest)
    })
    .await;
    (hook, s)
}

#[tokio::test]
async fn a_token_endpoint_down_past_after_failures_pages_once_and_recovers() {
    let (hook, s) = signed_in_with_a_hook(None).await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(10)).await;

    s.mock.set_fault(Some(TokenFault::Status(500)));
    let refresh = || async { s.http.post(s.admin("/refresh/goto")).send().await.unwrap().status().as_u16() };
    assert_eq!(refresh().await, 502);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(hook.events().is_empty(), "one failure is not worth a page: {:?}", hook.events());
    for _ in 0..3 {
        assert_eq!(refresh().await, 502);
    }
    until("refresh_failing", || hook.events() == ["refresh_failing"]).await;
    let payload = hook.got.lock().unwrap()[0].clone();
    assert!(payload["message"].as_str().unwrap().contains("still served"), "{payload}");
    assert_eq!(s.get("/admin/rest/v1/me").await.status(), 200, "the current token is still served");

    s.mock.set_fault(None);
    assert_eq!(refresh().await, 200);
    until("recovered", || hook.events() == ["refresh_failing", "recovered"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.events(), ["refresh_failing", "recovered"]);
}

#[tokio::test]
async fn failures_with_no_token_served_are_no_refresh_failing() {
    // SPEC: `refresh_failing` warns while a token is still served. A credential that never
    // got one fails its renewals silently (the status page and metrics say so); once it
    // holds a token, the same failures are worth the page.
    let (hook, s) = signed_in_with_a_hook(Some(TokenFault::Status(500))).await;
    let refresh = || async { s.http.post(s.admin("/refresh/goto")).send().await.unwrap().status().as_u16() };
    for _ in 0..3 {
        assert_eq!(refresh().await, 502);
    }
    let tokens: serde_json::Value = s.http.get(s.admin("/tokens")).send().await.unwrap().json().await.unwrap();
    assert_ne!(tokens["goto"]["state"], "valid", "no token was ever served: {tokens}");

    s.mock.set_fault(None);
    assert_eq!(refresh().await, 200);
    s.mock.set_fault(Some(TokenFault::Status(500)));
    for _ in 0..2 {
        assert_eq!(refresh().await, 502);
    }
    // Events are sent in the order their changes happened: a page for the first failures
    // would be first in the list.
    until("refresh_failing", || !hook.events().is_empty()).await;
    assert_eq!(hook.events(), ["refresh_failing"], "only the failures while a token was served page");
    let payload = hook.got.lock().unwrap()[0].clone();
    assert!(payload["message"].as_str().unwrap().contains("still served"), "{payload}");
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_the_event_once() {
    let hook = Receiver::start(&[500, 500]).await;
    let notify = format!("[[notify]]\nwebhook = \"{}\"\nevents = [\"needs_login\"]\n", hook.url());
    let s = stack(MockOptions::default(), |mock, dir| {
        // Never signed in: needs_login at once.
        let rest = format!("{}\n{}\n{notify}", code_cred("goto", mock, None), route("/", mock, Some("goto")));
        config_text(dir, "", &rest)
    })
    .await;
    // 500, then 500 a second later, then 200 two seconds after that.
    until("three attempts", || hook.attempts() == 3).await;
    let metrics = metrics_of(&s.proxy).await;
    let sent = r#"goto_auth_proxy_notifications_total{event="needs_login",outcome="sent"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while metric(&metrics_of(&s.proxy).await, sent) < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = hook.got.lock().unwrap().clone();
    assert!(got.iter().all(|p| p == &got[0]), "the same event each time: {got:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.attempts(), 3, "delivered: no more attempts");
    let metrics = metrics_of(&s.proxy).await;
    assert_eq!(metric(&metrics, sent), 1.0);
    assert_eq!(metric(&metrics, r#"goto_auth_proxy_notifications_total{event="needs_login",outcome="failed"}"#), 0.0);
}

/// One account's refresh token dies: that account alone needs a sign-in, one
/// notification names it, the other account keeps serving and the proxy stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_accounts_dead_refresh_token_touches_no_other_account() {
    use crate::accounts::{accounts_config, get_as, sign_in, two_users, WEBINARS};
    use goto_mock::MockUser;
    let events_dir = tempfile::tempdir().unwrap();
    let (script, out) = recorder(events_dir.path());
    let notify =
        format!("[[notify]]\ncommand = [{:?}, {:?}]\n", script.display().to_string(), out.display().to_string());
    let s = stack(two_users(), |m, d| accounts_config(m, d, &format!("\n{notify}"))).await;
    let (one, two) = (MockUser::numbered(1), MockUser::numbered(2));
    sign_in(&s, Some("alice"), &one.email).await;
    sign_in(&s, Some("bob"), &two.email).await;

    assert!(s.mock.revoke_refresh_tokens_of(&one.email));
    let r = s.http.post(s.admin("/refresh/goto/alice")).send().await.unwrap();
    assert_eq!(r.status(), 502, "{}", r.text().await.unwrap());
    until("needs_login for alice", || recorded(&out).iter().any(|e| e["event"] == "needs_login")).await;
    let events = recorded(&out);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["credential"], "goto");
    assert_eq!(events[0]["account"], "alice");
    assert!(events[0]["login_url"].as_str().unwrap().ends_with("/login/goto?account=alice"), "{events:?}");

    let tokens: serde_json::Value = s.http.get(s.admin("/tokens")).send().await.unwrap().json().await.unwrap();
    let items = &tokens["goto"]["accounts"]["items"];
    assert_eq!(items[0]["name"], "alice");
    assert_eq!(items[0]["state"], "needs_login", "{tokens}");
    assert_eq!(items[1]["state"], "valid", "{tokens}");
    // Bob is untouched: renewed and served; the pod stays in service.
    let r = s.http.post(s.admin("/refresh/goto/bob")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, body) = get_as(&s, WEBINARS, Some("bob")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.http.get(s.admin("/readyz")).send().await.unwrap().status(), 200);
    let metrics = s.http.get(s.admin("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("goto_auth_proxy_accounts{credential=\"goto\",state=\"needs_login\"} 1"), "{metrics}");
}
