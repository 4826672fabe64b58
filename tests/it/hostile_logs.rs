//! Hostile text against the log, the sign-in flow and secret blanking, through the real
//! binary (its stderr read as an operator's log collector would) and in-process proxies:
//! no outside text forges a log line or sends an escape sequence to a terminal, pending
//! sign-ins stay bounded, and a secret quoted back in another spelling stays hidden.

use std::time::Duration;

use crate::support::*;
use goto_mock::{MockGoto, MockOptions, TokenFault};

/// A forged access line: a newline, a fake event, a colour escape, CR, NUL, DEL and C1.
const FORGED: &str = "%0A2026-12-07T10:00:00.000000Z%20%20INFO%20goto_auth_proxy::access:%20method=GET%20status=200%1B[31m%0D%00%7F%C2%9B2J";

/// The same as [`FORGED`], decoded: what a token endpoint or upstream could send.
const FORGED_RAW: &str =
    "\n2026-12-07T10:00:00.000000Z  INFO goto_auth_proxy::access: method=GET status=200\u{1b}[31m\r\0\u{7f}\u{9b}2J";

/// A server that answers every request with a head whose reason phrase holds control
/// characters and a body that breaks off: a hostile upstream, or keys endpoint.
async fn hostile_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK{FORGED_RAW}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"x\":\"{FORGED_RAW}"
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

fn config(mock: &MockGoto, dir: &std::path::Path, hostile: std::net::SocketAddr) -> std::path::PathBuf {
    let hostile_keys = code_cred("keys", mock, Some(&mock.mint_refresh_token()))
        .replace(&format!("{}/identity", mock.url()), &format!("http://{hostile}/identity"));
    let text = config_text(
        dir,
        "",
        &format!(
            "{}\n{}\n{hostile_keys}\n{}\n[[routes]]\nprefix = \"/hostile/\"\nupstream = \"http://{hostile}\"\n{}",
            code_cred("goto", mock, Some(&mock.mint_refresh_token())),
            client_credentials_cred("cc", mock),
            route("/cc/", mock, Some("cc")),
            route("/", mock, Some("goto")),
        ),
    );
    write_config(dir, "hostile-logs.toml", &text)
}

/// Sends outside text with control characters through every entry that reaches the log:
/// `/callback`'s query, the data path's request line, a token endpoint's error text.
async fn drive_hostile_text(p: &Proc, mock: &MockGoto) {
    let http = client();
    // The sign-in callback: an authorization server's error, its description, a state.
    for query in [
        format!("error=access_denied{FORGED}&error_description=denied{FORGED}&state=s{FORGED}"),
        format!("code=c{FORGED}&state=s{FORGED}"),
        format!("error_description={FORGED}"),
    ] {
        let r = http.get(p.admin(&format!("/callback?{query}"))).send().await.unwrap();
        assert_eq!(r.status(), 400);
    }
    // The data path: a path (percent-encoded and raw bytes) and a method.
    let r = http.get(p.url(&format!("/admin/rest/v1/me{FORGED}"))).send().await.unwrap();
    assert!(r.status().as_u16() < 500, "{}", r.status());
    raw(p.proxy_addr, b"GET /a\x1b[31m/b HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    raw(p.proxy_addr, b"G\x1bT /admin/rest/v1/me HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    raw(p.proxy_addr, b"GET /a\x7f\xc2\x9b/b HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await;
    // A token endpoint's error text, logged when the renewal fails.
    let body = serde_json::json!({ "error": format!("invalid_grant{FORGED_RAW}"), "error_description": FORGED_RAW });
    mock.set_fault(Some(TokenFault::Body { status: 400, body: body.to_string().into() }));
    let r = http.post(p.admin("/refresh/cc")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    mock.set_fault(None);
    // A keys endpoint and an upstream that answer with control characters and break off.
    let r = http.post(p.admin("/refresh/keys")).send().await.unwrap();
    assert_eq!(r.status(), 200, "a renewal succeeds without keys");
    let r = http.get(p.url("/hostile/x")).send().await;
    if let Ok(r) = r {
        let _ = r.bytes().await;
    }
    // Something logged after all the above: every line before it was written.
    assert_eq!(http.post(p.admin("/refresh/goto")).send().await.unwrap().status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let waited_for = ["token renewed", "sign-in callback failed", "organizer/account key lookup failed", "/hostile/x"];
    while !waited_for.iter().all(|w| p.log_text().contains(w)) {
        assert!(tokio::time::Instant::now() < deadline, "{}", p.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// No raw control character (C0 but tab, DEL, C1) anywhere in `lines`.
fn assert_no_control_characters(lines: &[String]) {
    for line in lines {
        let bad = line.chars().find(|c| c.is_control());
        assert!(bad.is_none(), "raw {bad:?} in a log line: {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_lines_cannot_be_forged_or_carry_escape_sequences() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["run", "--log-format", "text", "--config"])
        .arg(config(&mock, dir.path(), hostile_server().await))
        .env("RUST_LOG", "info");
    let p = Proc::spawn_with(cmd);
    wait_ready(&client(), &p.admin("/readyz"), Duration::from_secs(10)).await;
    drive_hostile_text(&p, &mock).await;

    let lines = p.log.lock().unwrap().clone();
    // Every line is an event of its own: it begins with a timestamp and a level.
    for line in &lines {
        let (stamp, rest) = line.split_once(' ').unwrap_or_default();
        assert!(stamp.len() >= 20 && stamp.as_bytes()[4] == b'-' && stamp.contains('T'), "not an event: {line:?}");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].iter().any(|l| rest.trim_start().starts_with(l)),
            "{line:?}"
        );
    }
    assert_no_control_characters(&lines);
    let all = lines.join("\n");
    // The forged text arrived, escaped, in one line of its own event.
    let callback: Vec<&String> = lines.iter().filter(|l| l.contains("sign-in callback failed")).collect();
    assert!(callback.len() >= 2, "{all}");
    assert!(callback.iter().any(|l| l.contains("\\n2026-12-07T10:00:00") && l.contains("\\x1b[31m")), "{all}");
    let forged_access = lines.iter().filter(|l| l.starts_with("2026-12-07T10:00:00")).count();
    assert_eq!(forged_access, 0, "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_cannot_be_forged_or_carry_escape_sequences() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::spawn(&config(&mock, dir.path(), hostile_server().await));
    wait_ready(&client(), &p.admin("/readyz"), Duration::from_secs(10)).await;
    drive_hostile_text(&p, &mock).await;

    let lines = p.log.lock().unwrap().clone();
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not one JSON event: {l:?}")))
        .collect();
    assert_no_control_characters(&lines);
    // The text still arrives whole once the JSON is read (escaping is JSON's own).
    let callback = events.iter().find(|e| {
        e["fields"]["message"] == "sign-in callback failed"
            && e["fields"]["error"].as_str().is_some_and(|s| s.contains("\u{1b}[31m"))
    });
    assert!(callback.is_some(), "{}", lines.join("\n"));
    let access = events.iter().filter(|e| e["target"] == "goto_auth_proxy::access").count();
    assert!(access >= 1, "{}", lines.join("\n"));
}

#[tokio::test]
async fn pending_sign_ins_are_bounded_and_the_oldest_is_refused() {
    let s = stack(MockOptions::default(), |mock, dir| {
        config_text(dir, "", &format!("{}\n{}", code_cred("goto", mock, None), route("/", mock, Some("goto"))))
    })
    .await;
    let mut states = Vec::new();
    for _ in 0..1000 {
        let r = s.http.get(s.admin("/login/goto")).send().await.unwrap();
        assert_eq!(r.status(), 302);
        let location = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
        states.push(location.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned());
    }
    let callback = |state: &str| {
        let url = s.admin(&format!("/callback?code=not-a-code&state={state}"));
        let http = s.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // The state is checked before the code: an unknown one is 400, a pending one goes on
    // to the exchange, which the token endpoint refuses (502).
    let (status, page) = callback(&states[0]).await;
    assert_eq!(status, 400, "the first of 1,000 is long dropped: {page}");
    assert!(page.contains("unknown or already used sign-in state"), "{page}");
    assert_eq!(callback(&states[1000 - 33]).await.0, 400, "only the newest 32 are pending");
    assert_eq!(callback(&states[1000 - 32]).await.0, 502, "the 32nd newest is still pending");
    assert_eq!(callback(&states[999]).await.0, 502, "the newest is pending");
    assert_eq!(s.mock.stats().code_exchanges, 0);
}

#[tokio::test]
async fn the_callback_page_carries_the_status_pages_security_headers() {
    let s = stack(MockOptions::default(), |mock, dir| {
        config_text(dir, "", &format!("{}\n{}", code_cred("goto", mock, None), route("/", mock, Some("goto"))))
    })
    .await;
    let status_page = s.http.get(s.admin("/")).send().await.unwrap();
    for query in ["error=access_denied", "code=x&state=unknown"] {
        let r = s.http.get(s.admin(&format!("/callback?{query}"))).send().await.unwrap();
        assert_eq!(r.status(), 400);
        let h = r.headers();
        let csp = h.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{h:?}");
        for name in ["cache-control", "x-frame-options", "x-content-type-options", "referrer-policy"] {
            assert_eq!(h.get(name), status_page.headers().get(name), "{name} as on the status page");
        }
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-frame-options"], "DENY");
    }
}

#[tokio::test]
async fn a_client_secret_quoted_back_in_another_spelling_is_blanked_everywhere() {
    let s = stack(MockOptions::default(), |mock, dir| {
        config_text(dir, "", &format!("{}\n{}", client_credentials_cred("cc", mock), route("/", mock, Some("cc"))))
    })
    .await;
    let secret = s.mock.options().client_secret;
    let lower_hex: String = secret.bytes().map(|b| format!("%{b:02x}")).collect();
    let upper = secret.to_ascii_uppercase();
    let description = format!("client secret {lower_hex} is not {upper}");
    let body = serde_json::json!({ "error": "invalid_client", "error_description": description });
    s.mock.set_fault(Some(TokenFault::Body { status: 401, body: body.to_string().into() }));

    let refused = s.http.post(s.admin("/refresh/cc")).send().await.unwrap().text().await.unwrap();
    let tokens = s.http.get(s.admin("/tokens")).send().await.unwrap().text().await.unwrap();
    let page = s.http.get(s.admin("/")).send().await.unwrap().text().await.unwrap();
    for (what, text) in [("refresh answer", &refused), ("/tokens", &tokens), ("status page", &page)] {
        assert!(text.contains("client secret *** is not ***"), "{what}: {text}");
        let lower = text.to_ascii_lowercase();
        assert!(!lower.contains(&lower_hex) && !lower.contains(&secret), "{what}: {text}");
    }

    // A 200 that is no token answer: the parser's complaint quotes the body back.
    let quoted = serde_json::Value::String(format!("your secret {upper}")).to_string();
    s.mock.set_fault(Some(TokenFault::Body { status: 200, body: quoted.into() }));
    let refused = s.http.post(s.admin("/refresh/cc")).send().await.unwrap().text().await.unwrap();
    let tokens = s.http.get(s.admin("/tokens")).send().await.unwrap().text().await.unwrap();
    for (what, text) in [("refresh answer", &refused), ("/tokens", &tokens)] {
        assert!(text.contains("your secret ***"), "{what}: {text}");
        assert!(!text.to_ascii_lowercase().contains(&secret), "{what}: {text}");
    }
}

/// A Redis server that answers every command with an error whose text holds ESC, NUL,
/// DEL and C1 (a RESP error line can hold anything but CR and LF): the store's error
/// reaches the log escaped, in one JSON event per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_error_text_cannot_forge_log_lines() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redis = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    // One error per command of a pipeline (each starts a line with `*`).
                    let commands = (0..n).filter(|&i| buf[i] == b'*' && (i == 0 || buf[i - 1] == b'\n')).count();
                    let answer = b"-ERR evil\x1b[31m\x00\x7f\xc2\x9b2J red\r\n".repeat(commands.max(1));
                    if n == 0 || tcp.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text =
        config_text(dir.path(), "", &format!("{}\n{}", password_cred("g2a", &mock), route("/", &mock, Some("g2a"))))
            .replace("[state]\n", &format!("[state]\nstore = \"redis\"\nredis_url = \"redis://{redis}/0\"\n"));
    let p = Proc::spawn(&write_config(dir.path(), "redis.toml", &text));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !p.log_text().contains("evil") {
        assert!(tokio::time::Instant::now() < deadline, "no Redis error logged:\n{}", p.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = p.log.lock().unwrap().clone();
    for l in &lines {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: not one JSON event: {l:?}"));
    }
    assert_no_control_characters(&lines);
}
