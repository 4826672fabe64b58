//! The state file under hostile or damaged conditions (SPEC "Token lifecycle"): a
//! damaged record costs only its own credential and is kept in a numbered copy; a state
//! directory others can write to, or a symlinked state file, stops `run`, naming it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use goto_mock::{MockGoto, MockOptions};

/// Runs a proxy once so the state file holds a token for both credentials; returns
/// the file's bytes.
async fn first_life(dir: &Path, mock: &MockGoto) -> Vec<u8> {
    let proxy = start_proxy(&standard_config(dir, mock, &mock.mint_refresh_token())).await;
    let http = client();
    for path in ["/G2A/rest/v1/x", "/G2W/rest/v2/x"] {
        let r = http.get(format!("http://{}{path}", proxy.proxy_addr)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    proxy.stop().await;
    let bytes = std::fs::read(dir.join("state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert!(v["credentials"]["g2a"].is_object() && v["credentials"]["goto"].is_object(), "{v}");
    bytes
}

/// The record of `name` in the state file at `dir`.
fn record(dir: &Path, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    v["credentials"][name].clone()
}

#[tokio::test]
async fn a_damaged_record_costs_only_its_credential_and_is_kept_aside() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    first_life(dir.path(), &mock).await;
    let g2a_before = record(dir.path(), "g2a");

    // `goto`'s record: still JSON, no longer a token.
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    v["credentials"]["goto"] = serde_json::json!({"access_token": 5, "expires_at": "soon"});
    let damaged = serde_json::to_vec_pretty(&v).unwrap();
    std::fs::write(dir.path().join("state.json"), &damaged).unwrap();

    // Second life, as the real binary (its log is what an operator reads).
    let before = mock.stats();
    let config =
        write_config(dir.path(), "proxy.toml", &standard_config(dir.path(), &mock, &mock.mint_refresh_token()));
    let proc = Proc::spawn(&config);
    let http = client();
    let r = http.get(proc.url("/G2A/rest/v1/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "g2a serves its stored token");
    assert_eq!(mock.stats().password_logins, before.password_logins, "no new Direct Login for g2a");
    let r = http.get(proc.url("/G2W/rest/v2/x")).send().await.unwrap();
    assert_eq!(r.status(), 200, "goto started with no token and renewed");
    assert!(mock.stats().refreshes > before.refreshes, "goto renewed with its configured refresh token");

    // The damaged bytes are kept; the file now holds both credentials, g2a unchanged.
    let copy = dir.path().join("state.json.damaged.1");
    assert_eq!(std::fs::read(&copy).unwrap(), damaged);
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(record(dir.path(), "g2a"), g2a_before);
    assert!(record(dir.path(), "goto")["access_token"].is_string());

    let log = proc.log_text();
    let damage_line = log
        .lines()
        .find(|l| l.contains("\"level\":\"ERROR\"") && l.contains("\"credential\":\"goto\""))
        .unwrap_or_else(|| panic!("no error naming goto:\n{log}"));
    assert!(damage_line.contains("damaged"), "{damage_line}");
    assert!(log.contains("state.json.damaged.1"), "the copy is named in the log:\n{log}");
    assert!(!log.lines().any(|l| l.contains("ERROR") && l.contains("\"credential\":\"g2a\"")), "{log}");
}

#[tokio::test]
async fn a_truncated_state_file_keeps_the_records_before_the_cut() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bytes = first_life(dir.path(), &mock).await;
    let g2a_before = record(dir.path(), "g2a");

    // Records are in name order: cut in the middle of `goto`'s, after `g2a`'s.
    let text = String::from_utf8(bytes).unwrap();
    let cut = text.find("\"goto\"").unwrap() + 20;
    std::fs::write(dir.path().join("state.json"), &text[..cut]).unwrap();

    let before = mock.stats();
    let proxy = start_proxy(&standard_config(dir.path(), &mock, &mock.mint_refresh_token())).await;
    let http = client();
    for path in ["/G2A/rest/v1/x", "/G2W/rest/v2/x"] {
        let r = http.get(format!("http://{}{path}", proxy.proxy_addr)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    assert_eq!(mock.stats().password_logins, before.password_logins, "g2a's stored token was reused");
    assert_eq!(std::fs::read_to_string(dir.path().join("state.json.damaged.1")).unwrap(), &text[..cut]);
    assert_eq!(record(dir.path(), "g2a"), g2a_before);
    assert!(record(dir.path(), "goto")["access_token"].is_string());
    proxy.stop().await;
}

/// Runs `goto-auth-proxy run` on `config` and returns (exit success, stderr); the
/// process is killed if it is still running after 20 s (it should refuse at once).
fn run_expecting_refusal(config: &Path) -> (bool, String) {
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("run did not refuse the state file and kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.success(), stderr)
}

/// A config whose state file is `state_path` (no token endpoint is ever reached).
fn config_with_state(dir: &Path, state_path: &Path) -> std::path::PathBuf {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[state]\npath = {:?}\n\n\
         [credentials.g2a]\ngrant = \"password\"\nclient_id = \"c\"\nusername = \"u\"\npassword = \"p\"\n\
         token_url = \"http://127.0.0.1:9/oauth/access_token\"\n\n\
         [[routes]]\nprefix = \"/G2A/\"\nupstream = \"http://127.0.0.1:9\"\ncredential = \"g2a\"\n",
        state_path.display().to_string()
    );
    write_config(dir, "proxy.toml", &text)
}

#[test]
fn run_refuses_a_state_directory_others_can_write_to_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let config = config_with_state(dir.path(), &shared.join("state.json"));
    let (ok, stderr) = run_expecting_refusal(&config);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains(&shared.display().to_string()) && stderr.contains("chmod go-w"), "{stderr}");
    assert!(!shared.join("state.json").exists());
}

#[test]
fn run_refuses_a_symlinked_state_file_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.json");
    std::fs::write(&real, "{}").unwrap();
    let link = dir.path().join("state.json");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let config = config_with_state(dir.path(), &link);
    let (ok, stderr) = run_expecting_refusal(&config);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains(&link.display().to_string()) && stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "{}");
}

// ===== account records: a writer killed at any instant =====

/// Where [`account_writer_child`] writes, set only in the child process.
const CHILD_STATE: &str = "GOTO_AUTH_PROXY_TEST_ACCOUNT_WRITER_STATE";
/// The first token number the child writes (later rounds write larger numbers).
const CHILD_FIRST: &str = "GOTO_AUTH_PROXY_TEST_ACCOUNT_WRITER_FIRST";
const WRITER_ACCOUNTS: [&str; 4] = ["goto/alice", "goto/bob", "goto/carol", "other/dave"];

fn writer_sealer() -> Option<std::sync::Arc<goto_auth_proxy::testing::Sealer>> {
    use base64::Engine;
    let key = goto_auth_proxy::testing::Secret::new(base64::engine::general_purpose::STANDARD.encode([7u8; 32]));
    Some(std::sync::Arc::new(goto_auth_proxy::testing::Sealer::new(&[key]).unwrap()))
}

/// Not a test on its own (it returns at once): the child process of
/// [`account_records_survive_a_writer_killed_at_any_instant`], which saves account
/// records in a loop and prints `ack <key> <n>` once each save has returned.
#[test]
fn account_writer_child() {
    use goto_auth_proxy::testing::{FileStore, Saved, StoredToken, TokenStore};
    let Some(path) = std::env::var_os(CHILD_STATE) else { return };
    let first: u64 = std::env::var(CHILD_FIRST).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = FileStore::new(path).with_sealer(writer_sealer());
        for n in first.. {
            for key in WRITER_ACCOUNTS {
                let version = store.load(key).await.unwrap().map_or(0, |t| t.version);
                let token = StoredToken {
                    access_token: format!("at{n}"),
                    refresh_token: Some(format!("rt{n}")),
                    expires_at: 2_000_000_000,
                    expires_at_ms: None,
                    obtained_at_ms: n,
                    organizer_key: None,
                    account_key: None,
                    principal: None,
                    version,
                };
                let saved = store.save(key, &token).await.unwrap();
                assert!(matches!(saved, Saved::Stored(_)), "{saved:?}");
                println!("ack {key} {n}");
            }
        }
    });
}

#[tokio::test]
async fn account_records_survive_a_writer_killed_at_any_instant() {
    use goto_auth_proxy::testing::{FileStore, TokenStore};
    use std::collections::BTreeMap;
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut first = 1u64;
    for round in 0..40u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "state_files::account_writer_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_STATE, &path)
            .env(CHILD_FIRST, first.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        // Read acks on a thread of its own; kill after a random number of them plus a
        // random pause, so the kill lands anywhere in a save (temp file, fsync, rename).
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ack ") && tx.send(line).is_err() {
                    break;
                }
            }
        });
        let wanted = 1 + rand::random::<u64>() % 12;
        let mut lines = Vec::new();
        while (lines.len() as u64) < wanted {
            lines.push(rx.recv_timeout(Duration::from_secs(20)).expect("the writer acknowledges saves"));
        }
        std::thread::sleep(Duration::from_micros(rand::random::<u64>() % 3000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        for line in &lines {
            let mut parts = line.split(' ').skip(1);
            let (key, n) = (parts.next().unwrap(), parts.next().unwrap().parse::<u64>().unwrap());
            let last = acked.entry(key.to_string()).or_default();
            assert!(n > *last, "round {round}: {line} after {last}");
            *last = n;
            first = first.max(n + 1);
        }
        // Every acknowledged record opens, at least as new as its last acknowledgement.
        let store = FileStore::open(&path).unwrap().with_sealer(writer_sealer());
        for (key, last) in &acked {
            let held = store.load(key).await.unwrap().unwrap_or_else(|| panic!("round {round}: {key} lost"));
            let n: u64 = held.access_token.strip_prefix("at").unwrap().parse().unwrap();
            assert!(n >= *last, "round {round}: {key} holds {n}, {last} was acknowledged");
            assert_eq!(held.refresh_token.as_deref(), Some(format!("rt{n}").as_str()));
        }
    }
    assert_eq!(acked.len(), WRITER_ACCOUNTS.len(), "every account was written: {acked:?}");
    // The next start clears what killed writers left and every record still opens.
    let store = FileStore::open(&path).unwrap().with_sealer(writer_sealer());
    store.prepare(&[]).await.unwrap();
    for credential in ["goto", "other"] {
        let names = store.accounts(credential).await.unwrap();
        let cred_dir = dir.path().join("state.json.accounts").join(credential);
        let files: Vec<String> =
            std::fs::read_dir(&cred_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(!files.iter().any(|f| f.contains(".tmp.")), "{files:?}");
        for a in names {
            assert!(store.load(&format!("{credential}/{a}")).await.unwrap().is_some());
        }
    }
}
