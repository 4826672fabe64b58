//! The access log of the real binary: one line per request once its answer is sent,
//! in JSON and in text, with SPEC's fields — never a header value or a query string —
//! and none at all with `access_log = false`.

use std::time::Duration;

use crate::support::*;
use goto_mock::{MockGoto, MockOptions};

fn config(mock: &MockGoto, dir: &std::path::Path, proxy_extra: &str) -> std::path::PathBuf {
    let text = config_text(
        dir,
        proxy_extra,
        &format!(
            "{}\n{}\n{}\n{}",
            code_cred("goto", mock, Some(&mock.mint_refresh_token())),
            route("/G2A/", mock, None),
            route("/", mock, Some("goto")) + "retry_429 = true\n",
            route("/stripped/", mock, Some("goto")) + "strip_prefix = true\n"
        ),
    );
    write_config(dir, "access.toml", &text)
}

/// The access lines logged so far (JSON lines parsed; text lines as they are).
fn access_lines(p: &Proc) -> Vec<String> {
    p.log.lock().unwrap().iter().filter(|l| l.contains("goto_auth_proxy::access")).cloned().collect()
}

/// Waits until `n` access lines were logged.
async fn wait_lines(p: &Proc, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines = access_lines(p);
        if lines.len() >= n {
            return lines;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} access lines, not {n}:\n{}", lines.len(), p.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_hold_spec_fields_for_forwarded_retried_and_refused_requests() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::spawn(&config(&mock, dir.path(), ""));
    let http = client();
    wait_ready(&http, &p.admin("/readyz"), Duration::from_secs(10)).await;

    // Forwarded, with a query string and a header value that must stay out.
    let ok = http
        .post(p.url("/G2M/rest/meetings?secret=query-value"))
        .header("x-custom", "header-value-never-logged")
        .body("{\"subject\":\"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok_len = ok.bytes().await.unwrap().len() as u64;
    // Retried once after the upstream rejected the token.
    mock.revoke_access_tokens();
    assert_eq!(http.get(p.url("/admin/rest/v1/me")).send().await.unwrap().status(), 200);
    // Refused by the proxy itself.
    assert_eq!(http.get(p.url("/a/..;/b")).send().await.unwrap().status(), 400);
    // A pass-through route.
    http.get(p.url("/G2A/rest/v1/sessions")).send().await.unwrap();
    // GoTo's 429, and the GET resent once the pause ended (`retry_429`).
    mock.throttle_once("1");
    assert_eq!(http.get(p.url("/admin/rest/v1/me")).send().await.unwrap().status(), 200);

    // A route that strips its prefix: the path as forwarded.
    assert_eq!(http.get(p.url("/stripped/G2W/rest/v2/x")).send().await.unwrap().status(), 200);

    let lines = wait_lines(&p, 6).await;
    let all = lines.join("\n");
    assert!(!all.contains("query-value") && !all.contains("header-value-never-logged"), "{all}");
    let json: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();

    let post = &json[0];
    assert_eq!(post["target"], "goto_auth_proxy::access");
    assert_eq!(post["method"], "POST");
    assert_eq!(post["path"], "/G2M/rest/meetings");
    assert_eq!(post["route"], "/");
    assert_eq!(post["credential"], "goto");
    assert_eq!(post["status"], 200);
    assert_eq!(post["bytes_in"], 15);
    assert_eq!(post["bytes_out"], ok_len);
    assert_eq!(post["retried"], "none");
    assert!(post.get("error").is_none(), "{post}");
    assert!(post["duration_ms"].as_f64().unwrap() >= post["upstream_ms"].as_f64().unwrap(), "{post}");
    assert!(post["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{post}");

    assert_eq!(json[1]["retried"], "token", "{}", json[1]);
    assert_eq!(json[1]["status"], 200);

    let refused = &json[2];
    assert_eq!(refused["status"], 400);
    assert_eq!(refused["error"], "bad_request");
    assert!(refused.get("route").is_none() && refused.get("upstream_ms").is_none(), "{refused}");

    assert_eq!(json[3]["route"], "/G2A/");
    assert!(json[3].get("credential").is_none(), "a pass-through route has no credential: {}", json[3]);

    assert_eq!(json[4]["retried"], "429", "{}", json[4]);
    assert_eq!(json[4]["status"], 200);

    assert_eq!((json[5]["route"].as_str(), json[5]["path"].as_str()), (Some("/stripped/"), Some("/G2W/rest/v2/x")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_and_turning_it_off() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = client();

    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["run", "--log-format", "text", "--config"]).arg(config(&mock, dir.path(), "")).env("RUST_LOG", "info");
    let p = Proc::spawn_with(cmd);
    wait_ready(&http, &p.admin("/readyz"), Duration::from_secs(10)).await;
    assert_eq!(http.get(p.url("/admin/rest/v1/me?x=secret-query")).send().await.unwrap().status(), 200);
    let line = wait_lines(&p, 1).await.remove(0);
    for part in
        ["method=GET", "path=/admin/rest/v1/me ", "route=\"/\"", "credential=\"goto\"", "status=200", "retried=none"]
    {
        assert!(line.contains(part), "{part} in {line}");
    }
    assert!(!line.contains("secret-query"), "{line}");
    drop(p);

    let off = Proc::spawn(&config(&mock, dir.path(), "access_log = false"));
    wait_ready(&http, &off.admin("/readyz"), Duration::from_secs(10)).await;
    assert_eq!(http.get(off.url("/admin/rest/v1/me")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(off.url("/a/..;/b")).send().await.unwrap().status(), 400);
    // A renewal logged after both answers ended: the access lines would be before it.
    let renewals = || off.log_text().matches("token renewed").count();
    let before = renewals();
    assert_eq!(http.post(off.admin("/refresh/goto")).send().await.unwrap().status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while renewals() == before {
        assert!(tokio::time::Instant::now() < deadline, "{}", off.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(access_lines(&off).is_empty(), "{}", off.log_text());
}
