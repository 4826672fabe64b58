//! The binary's commands as a user runs them: `check`, `demo`, `token`, `keygen`, `--help`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:18080"

[credentials.g2a]
grant = "password"
client_id = "consumer-key"
username = { env = "IT_G2A_USER" }
password = { env = "IT_G2A_PASSWORD" }

[[routes]]
prefix = "/G2A/"
upstream = "https://api.getgo.com"
credential = "g2a"
"#;

#[test]
fn check_prints_routes_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "good.toml", GOOD);
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("IT_G2A_USER", "user-SECRETVALUE-1")
        .env("IT_G2A_PASSWORD", "pw-SECRETVALUE-2")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("/G2A/ -> https://api.getgo.com credential g2a"), "{stdout}");
    assert!(stdout.contains("password: [redacted]"), "{stdout}");
    assert!(!stdout.contains("SECRETVALUE") && !stderr.contains("SECRETVALUE"));
}

#[test]
fn check_refuses_bad_configs_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    // (config, what the error must name, a text on the line it must point at)
    let cases = [
        (GOOD.replace("credential = \"g2a\"", "credential = \"nope\""), "routes[0].credential", "\"nope\""),
        (GOOD.replace("listen = ", "lisen = "), "lisen", "lisen"),
        (GOOD.to_string(), "IT_G2A_PASSWORD", "IT_G2A_PASSWORD"),
    ];
    for (i, (text, key, on_line)) in cases.iter().enumerate() {
        let path = write_config(dir.path(), &format!("bad{i}.toml"), text);
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "--config"]).arg(&path).env("IT_G2A_USER", "u").env_remove("IT_G2A_PASSWORD");
        if i < 2 {
            cmd.env("IT_G2A_PASSWORD", "p");
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "case {i}: {stderr}");
        let line = text.lines().position(|l| l.contains(on_line)).expect("case text") + 1;
        assert!(stderr.contains(key), "case {i}: {stderr}");
        assert!(stderr.contains(&format!("{}:{line}:", path.display())), "case {i}: expected line {line}: {stderr}");
    }
    let out = Command::new(BIN).args(["check", "--config", "/nonexistent/x.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// SPEC "Configuration": a config error never echoes a value, however odd its type.
#[test]
fn check_errors_never_echo_a_value() {
    let dir = tempfile::tempdir().unwrap();
    // (replacement of the password line, text that must not appear)
    let cases = [
        ("password = [\"s3cr3t-xyz\"]", "s3cr3t-xyz"),
        ("password = 98765432101234", "98765432101234"),
        ("password = { env = 5 }", "env = 5"),
        ("password = s3cr3t-xyz", "s3cr3t-xyz"),
    ];
    for (i, (line, hidden)) in cases.iter().enumerate() {
        let text = GOOD.replace("password = { env = \"IT_G2A_PASSWORD\" }", line);
        let at = text.lines().position(|l| l == *line).expect("replaced") + 1;
        let path = write_config(dir.path(), &format!("wrong{i}.toml"), &text);
        let out = Command::new(BIN).args(["check", "--config"]).arg(&path).env("IT_G2A_USER", "u").output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(64), "case {i}: {stderr}");
        let named = format!("{}:{at}: credentials.g2a.password: ", path.display());
        assert!(stderr.contains(&named), "case {i}: expected {named:?} in {stderr}");
        assert!(!stderr.contains(hidden) && !stdout.contains(hidden), "case {i} echoed the value: {stderr}");
    }
}

/// SPEC "Configuration": user info and query of configured URLs are never printed.
#[test]
fn check_prints_urls_without_user_info_or_query() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD.replace(
        "password = { env = \"IT_G2A_PASSWORD\" }",
        "password = { env = \"IT_G2A_PASSWORD\" }\ntoken_url = \"https://user:pa55@host/token?client_secret=abc\"\nkeys_url = \"https://host/me?client_secret=abc\"",
    )
    .replace("upstream = \"https://api.getgo.com\"", "upstream = \"https://user:pa55@api.getgo.com\"");
    let path = write_config(dir.path(), "urls.toml", &text);
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("IT_G2A_USER", "u")
        .env("IT_G2A_PASSWORD", "p")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("token_url: https://[redacted]@host/token?[redacted]"), "{stdout}");
    assert!(stdout.contains("keys_url: https://host/me?[redacted]"), "{stdout}");
    assert!(stdout.contains("/G2A/ -> https://[redacted]@api.getgo.com credential g2a"), "{stdout}");
    for hidden in ["pa55", "abc", "client_secret="] {
        assert!(!stdout.contains(hidden) && !stderr.contains(hidden), "{hidden} printed: {stdout}{stderr}");
    }
}

#[test]
fn config_path_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "env.toml", "");
    let out = Command::new(BIN).arg("check").env("GOTO_AUTH_PROXY_CONFIG", &path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&path.display().to_string()));
}

#[test]
fn a_missing_default_config_says_it_is_the_default_and_how_to_name_another() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).current_dir(dir.path()).env_remove("GOTO_AUTH_PROXY_CONFIG").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("cannot read config file config/goto-auth-proxy.toml"), "{stderr}");
    assert!(stderr.contains("is the default config file") && stderr.contains("--config FILE"), "{stderr}");
    // A path the user named gets no such hint: they know where it is.
    let out = Command::new(BIN).args(["check", "--config", "elsewhere.toml"]).current_dir(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("elsewhere.toml") && !stderr.contains("default config file"), "{stderr}");
}

#[test]
fn a_busy_port_is_one_line_naming_the_address_and_the_flag_to_change() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "busy.toml", "");
    for (args, flag) in [
        (vec!["run", "--config", path.to_str().unwrap(), "--listen", &addr], "--listen ADDR or proxy.listen"),
        (vec!["run", "--config", path.to_str().unwrap(), "--admin-listen", &addr], "--admin-listen ADDR"),
        (vec!["demo", "--listen", &addr], "--listen ADDR"),
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].contains(&addr) && errors[0].contains(flag), "{args:?}: {stderr}");
        assert_eq!(errors[0].matches("in use").count(), 2, "{args:?}: the OS error once, the hint once: {stderr}");
        assert_ne!(out.status.code(), Some(0), "{args:?}");
    }
}

#[test]
fn help_on_every_command() {
    for cmd in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["demo", "--help"],
        vec!["check", "--help"],
        vec!["login", "--help"],
        vec!["token", "--help"],
        vec!["keygen", "--help"],
    ] {
        let out = Command::new(BIN).args(&cmd).output().unwrap();
        assert!(out.status.success(), "{cmd:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Example"), "{cmd:?} has no example");
    }
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// The exit codes scripts and supervisors act on: 0 success, 1 a runtime failure, 64 bad
/// usage or a bad config, 69 could not start.
#[test]
fn exit_codes_say_what_went_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let code = |args: &[&str]| {
        let out = Command::new(BIN).args(args).env("IT_G2A_USER", "u").env("IT_G2A_PASSWORD", "p").output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // 0: help and version, on stdout.
    for args in [&["--help"][..], &["--version"], &["run", "--help"]] {
        let (status, stdout, _) = code(args);
        assert_eq!(status, Some(0), "{args:?}");
        assert!(!stdout.is_empty(), "{args:?}");
    }

    // 64: what clap refuses, with clap's own message; and a configuration that does not validate.
    let good = write_config(
        dir.path(),
        "good.toml",
        &format!("{GOOD}\n[state]\npath = {:?}\n", dir.path().join("state.json")),
    );
    let good = good.to_str().unwrap();
    for args in [&["--no-such-flag"][..], &["run", "--listen", "not-an-address"], &["no-such-command"]] {
        let (status, _, stderr) = code(args);
        assert_eq!(status, Some(64), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:") && stderr.contains("--help"), "{args:?}: clap's message: {stderr}");
    }
    let bad = write_config(dir.path(), "bad.toml", &GOOD.replace("credential = \"g2a\"", "credential = \"nope\""));
    for cmd in ["run", "check"] {
        let (status, _, stderr) = code(&[cmd, "--config", bad.to_str().unwrap()]);
        assert_eq!(status, Some(64), "{cmd}: {stderr}");
        assert!(stderr.contains("routes[0].credential"), "{cmd}: {stderr}");
    }

    // 69: a port in use, a listen address that is not loopback.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    for listen in [busy.as_str(), "192.0.2.1:8080"] {
        let (status, _, stderr) = code(&["run", "--config", good, "--listen", listen]);
        assert_eq!(status, Some(69), "{listen}: {stderr}");
        assert!(stderr.contains(listen), "{listen}: {stderr}");
    }

    // 1: a command that ran and failed: no token is stored yet.
    let (status, stdout, stderr) = code(&["token", "--config", good]);
    assert_eq!(status, Some(1), "{stderr}");
    assert!(stdout.is_empty() && stderr.contains("no token stored"), "{stdout}{stderr}");
}

/// `keygen`: one line on stdout, standard base64 of 32 bytes, a new one each time;
/// its help says where the key goes.
#[test]
fn keygen_prints_one_fresh_key_and_nothing_else() {
    use base64::Engine as _;
    let run = || {
        let out = Command::new(BIN).arg("keygen").output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(text.ends_with('\n'), "{text:?}");
        let key = text.trim_end().to_string();
        let bytes = base64::engine::general_purpose::STANDARD.decode(&key).unwrap();
        assert_eq!(bytes.len(), 32);
        key
    };
    assert_ne!(run(), run());
    let help = Command::new(BIN).args(["keygen", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("encryption_keys"));
}

/// The `demo` binary, started on free ports, and the `curl` lines of its banner (read up
/// to its last line, `Ctrl-C …`). The caller kills the child.
fn start_demo() -> (std::process::Child, Vec<String>) {
    let (child, curls, _) = start_demo_lines();
    (child, curls)
}

/// [`start_demo`], with the `goto-auth-proxy …` command lines of the banner too.
fn start_demo_lines() -> (std::process::Child, Vec<String>, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut curls, mut commands) = (Vec::new(), Vec::new());
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        if let Some(c) = line.trim_start().strip_prefix("curl ") {
            curls.push(format!("curl {c}"));
        }
        if let Some(c) = line.trim_start().strip_prefix("goto-auth-proxy ") {
            commands.push(c.to_string());
        }
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    (child, curls, commands)
}

/// Runs a curl line through `sh` as a user pastes it: the status and the body.
fn curl(line: &str) -> (String, String) {
    let out = Command::new("sh").arg("-c").arg(format!("{line} -w '\\n%{{http_code}}'")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

/// The README's first command: every curl line the banner prints works as printed.
#[test]
fn demo_banner_curl_lines_work() {
    let (mut child, curls) = start_demo();
    assert!(curls.len() >= 8, "banner: {curls:?}");
    for c in &curls {
        let out = Command::new("sh").arg("-c").arg(format!("{c} -o /dev/null -w '%{{http_code}}'")).output().unwrap();
        let code = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(code, "200", "{c} answered {code}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The demo prints where its config is and a `check` line that works as printed: the
/// config a newcomer can read and copy from.
#[test]
fn demo_prints_its_config_and_a_check_line_that_works() {
    let (mut child, _, commands) = start_demo_lines();
    let check = commands.iter().find(|c| c.starts_with("check --config ")).expect("a check line in the banner");
    let out = Command::new(BIN).args(check.split_whitespace()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{check}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("people") && stdout.ends_with("ok\n"), "{stdout}");
    let file = check.trim_start_matches("check --config ");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} holds the mock's client secret");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The demo signs two people in to its account credential through the real sign-in, and
/// its account lines pick each: by `X-GoTo-Account` or by the organizer key in the path.
/// The mock answers 403 to a token on another organizer's path, and its answer's
/// `organizerKey` is the token's owner: a 200 naming the right key is the right person.
#[test]
fn demo_account_lines_each_reach_the_right_person() {
    let (mut child, curls) = start_demo();
    let people = goto_auth_proxy::demo::people();
    let lines: Vec<&String> = curls.iter().filter(|c| c.contains("/people/")).collect();
    let by_header = |name: &str| lines.iter().find(|c| c.contains(&format!("X-GoTo-Account: {name}'"))).copied();
    let mut served = Vec::new();
    for (name, user) in &people {
        let line = by_header(name).unwrap_or_else(|| panic!("no line picks {name} by X-GoTo-Account: {curls:?}"));
        served.push((line.clone(), user.organizer_key.clone()));
    }
    let (_, last) = people.last().unwrap();
    let by_path = lines
        .iter()
        .find(|c| !c.contains("X-GoTo-Account") && c.contains(&format!("/organizers/{}/", last.organizer_key)))
        .unwrap_or_else(|| panic!("no line picks by an organizer key in the path: {curls:?}"));
    served.push((by_path.to_string(), last.organizer_key.clone()));
    // An empty header (what Postman sends for an unset variable) chooses nothing: the
    // path's key still does.
    served.push((by_path.replace("curl -s ", "curl -s -H 'X-GoTo-Account;' "), last.organizer_key.clone()));
    for (line, key) in &served {
        let (code, body) = curl(line);
        assert_eq!(code, "200", "{line} answered {code}: {body}");
        assert!(body.contains(&format!("\"organizerKey\":{key}")), "{line}: not {key}'s answer: {body}");
    }
    let tokens = curls.iter().find(|c| c.contains("/tokens?credential=people")).expect("a /tokens line for people");
    let (code, body) = curl(tokens);
    assert_eq!(code, "200", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v["people"]["accounts"]["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, people.iter().map(|(n, _)| *n).collect::<Vec<_>>(), "{body}");
    let _ = child.kill();
    let _ = child.wait();
}
