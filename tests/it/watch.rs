//! Files are watched: the config file and the files it names are applied without a
//! signal — an edit in place, a rename over the file, Kubernetes' `..data` symlink swap —
//! within 2 s; a burst of writes makes one reload; a broken edit is refused while the old
//! configuration serves; `watch_files = false` turns it off; `POST /reload` is the same
//! reload on demand. And a client secret or password rotated in its file is used at the
//! next token call even when no reload brought it (`invalid_client` reads the file again).
//! All against the real binary.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;
use goto_mock::{MockGoto, MockOptions};

/// SPEC's bound: a change is applied within 2 s of the write.
const WITHIN: Duration = Duration::from_secs(2);

/// Polls until `url` answers `status` (with `key` in `x-goto-auth-proxy-key` when
/// given); the time it took. Fails after `within`.
async fn until_status(url: &str, key: Option<&str>, status: u16, within: Duration) -> Duration {
    let http = client();
    let start = Instant::now();
    loop {
        let mut req = http.get(url);
        if let Some(k) = key {
            req = req.header("x-goto-auth-proxy-key", k);
        }
        let got = req.send().await.unwrap().status().as_u16();
        if got == status {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{url} still answers {got}, not {status}, after {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the proxy's metrics until `trigger`'s `outcome` count is `n`.
async fn until_reloads(p: &Proc, trigger: &str, outcome: &str, n: f64, within: Duration) {
    let http = client();
    let start = Instant::now();
    loop {
        let m = http.get(p.admin("/metrics")).send().await.unwrap().text().await.unwrap();
        if reloads(&m, trigger, outcome) == n {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{trigger}/{outcome} reloads: {} after {within:?}, not {n}\n{}",
            reloads(&m, trigger, outcome),
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn metrics(p: &Proc) -> String {
    client().get(p.admin("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// A config serving `routes` (prefixes to the mock, Direct Login `g2a` on each).
fn config_with(dir: &Path, mock: &MockGoto, proxy_extra: &str, routes: &[&str]) -> String {
    let routes: Vec<String> = routes.iter().map(|r| route(r, mock, Some("g2a"))).collect();
    config_text(dir, proxy_extra, &format!("{}\n{}", password_cred("g2a", mock), routes.join("\n")))
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`, as
/// editors and config-management tools do.
fn replace_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_in_place_and_a_rename_are_applied_within_two_seconds_keeping_tokens() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "proxy.toml", &config_with(dir.path(), &mock, "", &["/A/"]));
    let p = Proc::spawn(&path);
    wait_ready(&client(), &p.admin("/readyz"), Duration::from_secs(10)).await;
    assert_eq!(client().get(p.url("/A/x")).send().await.unwrap().status(), 200);
    let logins = mock.stats().password_logins;

    // Edited in place (truncate and write, as `>` in a shell does).
    std::fs::write(&path, config_with(dir.path(), &mock, "", &["/A/", "/B/"])).unwrap();
    let in_place = until_status(&p.url("/B/x"), None, 200, WITHIN).await;

    // Replaced by a rename.
    replace_by_rename(&path, &config_with(dir.path(), &mock, "", &["/A/", "/C/"]));
    let renamed = until_status(&p.url("/C/x"), None, 200, WITHIN).await;
    until_status(&p.url("/B/x"), None, 404, WITHIN).await;
    println!("applied after: in place {in_place:?}, by rename {renamed:?}");

    until_reloads(&p, "file", "applied", 2.0, WITHIN).await;
    let m = metrics(&p).await;
    assert_eq!(reloads(&m, "signal", "applied") + reloads(&m, "admin", "applied"), 0.0, "no signal, no admin");
    assert_eq!(mock.stats().password_logins, logins, "an unchanged credential keeps its token, as SIGHUP keeps it");
    let log = p.log_text();
    let line = log.lines().find(|l| l.contains("configuration reloaded")).expect("a reload line");
    assert!(line.contains("\"trigger\":\"file\"") && line.contains("routes"), "{line}");
}

/// A Kubernetes Secret volume: `name -> ..data/name`, `..data -> ..2026_…`; the kubelet
/// writes a new `..2026_…` directory and swaps `..data` to it with one rename.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn new(dir: PathBuf, files: &[(&str, &str)]) -> SecretVolume {
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = SecretVolume { dir, generation: 0 };
        v.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), v.dir.join(name)).unwrap();
        }
        v
    }

    /// The kubelet's update: a new timestamped directory, `..data_tmp` pointing at it,
    /// renamed over `..data` (atomic), then the old directory removed.
    fn swap(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let old = self.dir.join(format!("..2026_01_01_00_00_00.{}", self.generation - 1));
        let new_name = format!("..2026_01_01_00_00_00.{}", self.generation);
        let new = self.dir.join(&new_name);
        std::fs::create_dir(&new).unwrap();
        for (name, value) in files {
            std::fs::write(new.join(name), value).unwrap();
        }
        std::os::unix::fs::symlink(&new_name, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        let _ = std::fs::remove_dir_all(old);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_swapped_by_the_kubelet_changes_the_inbound_key_within_two_seconds() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut volume = SecretVolume::new(dir.path().join("secrets"), &[("inbound_key", "old-inbound-key\n")]);
    let inbound =
        format!("[inbound]\nkeys = [{{ file = {:?} }}]\n", volume.dir.join("inbound_key").display().to_string());
    let text = format!("{}\n{inbound}", config_with(dir.path(), &mock, "", &["/A/"]));
    let path = write_config(dir.path(), "proxy.toml", &text);
    let p = Proc::spawn(&path);
    let url = p.url("/A/x");
    until_status(&url, Some("old-inbound-key"), 200, Duration::from_secs(10)).await;
    until_status(&url, Some("new-inbound-key"), 401, WITHIN).await;

    volume.swap(&[("inbound_key", "new-inbound-key\n")]);
    let swapped = Instant::now();
    until_status(&url, Some("new-inbound-key"), 200, WITHIN).await;
    until_status(&url, Some("old-inbound-key"), 401, WITHIN).await;
    println!("the new key was accepted and the old refused {:?} after the swap", swapped.elapsed());
    assert!(swapped.elapsed() < WITHIN);
    let log = p.log_text();
    assert!(log.contains("\"trigger\":\"file\"") && log.contains("[inbound]"), "{log}");
    assert!(!log.contains("new-inbound-key") && !log.contains("old-inbound-key"), "a key in the log:\n{log}");

    // The volume's next swap is seen too: the watch follows the new `..data` directory.
    volume.swap(&[("inbound_key", "third-inbound-key\n")]);
    until_status(&url, Some("third-inbound-key"), 200, WITHIN).await;
}

/// `[credentials.cc]` (client credentials) whose client secret is the file `secret`.
fn client_secret_cred(mock: &MockGoto, secret: &Path) -> String {
    format!(
        "[credentials.cc]\ngrant = \"client_credentials\"\nclient_id = \"{}\"\nclient_secret = {{ file = {:?} }}\ntoken_url = \"{}/oauth/token\"\n{}",
        mock.options().client_id,
        secret.display().to_string(),
        mock.url(),
        route("/CC/", mock, Some("cc"))
    )
}

/// `POST /refresh/{name}`: the status of an immediate renewal.
async fn refresh_now(p: &Proc, name: &str) -> u16 {
    client().post(p.admin(&format!("/refresh/{name}"))).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_secret_is_used_at_the_next_token_call_without_a_signal() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client_secret");
    std::fs::write(&secret, format!("{}\n", mock.options().client_secret)).unwrap();
    let path =
        write_config(dir.path(), "proxy.toml", &config_text(dir.path(), "", &client_secret_cred(&mock, &secret)));
    let p = Proc::spawn(&path);
    wait_ready(&client(), &p.admin("/readyz"), Duration::from_secs(10)).await;

    // Rotated at GoTo and in the file (by rename, as a secrets tool writes it).
    mock.set_client_secret("rotated-client-secret-1");
    replace_by_rename(&secret, "rotated-client-secret-1\n");
    until_reloads(&p, "file", "applied", 1.0, WITHIN).await;
    let calls = mock.stats().token_calls;
    assert_eq!(refresh_now(&p, "cc").await, 200, "the next token call uses the new secret\n{}", p.log_text());
    assert_eq!(mock.stats().token_calls, calls + 1, "one call, no refusal first");
    assert_eq!(client().get(p.url("/CC/x")).send().await.unwrap().status(), 200);

    // The config now names a secret file in another directory: watched from then on.
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().join("client_secret");
    std::fs::write(&moved, "rotated-client-secret-1\n").unwrap();
    replace_by_rename(&path, &config_text(dir.path(), "", &client_secret_cred(&mock, &moved)));
    until_reloads(&p, "file", "applied", 2.0, WITHIN).await;
    mock.set_client_secret("rotated-client-secret-2");
    std::fs::write(&moved, "rotated-client-secret-2\n").unwrap();
    until_reloads(&p, "file", "applied", 3.0, WITHIN).await;
    let calls = mock.stats().token_calls;
    assert_eq!(refresh_now(&p, "cc").await, 200, "{}", p.log_text());
    assert_eq!(mock.stats().token_calls, calls + 1, "the file in the new directory was applied before the call");
    for s in ["rotated-client-secret-1", "rotated-client-secret-2"] {
        assert!(!p.log_text().contains(s), "{}", p.log_text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_secret_or_password_reads_its_file_again_when_nothing_reloaded() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (secret, password) = (dir.path().join("client_secret"), dir.path().join("password"));
    std::fs::write(&secret, format!("{}\n", mock.options().client_secret)).unwrap();
    std::fs::write(&password, format!("{}\n", mock.options().password)).unwrap();
    let o = mock.options();
    let g2a = format!(
        "[credentials.g2a]\ngrant = \"password\"\nclient_id = \"{}\"\nusername = \"{}\"\npassword = {{ file = {:?} }}\ntoken_url = \"{}/oauth/access_token\"\n{}",
        o.consumer_key,
        o.user_id,
        password.display().to_string(),
        mock.url(),
        route("/G2A/", &mock, Some("g2a"))
    );
    // No watch: the rotation reaches the proxy only through the refusal.
    let text =
        config_text(dir.path(), "watch_files = false\n", &format!("{}\n{g2a}", client_secret_cred(&mock, &secret)));
    let path = write_config(dir.path(), "proxy.toml", &text);
    let p = Proc::spawn(&path);
    wait_ready(&client(), &p.admin("/readyz"), Duration::from_secs(10)).await;

    mock.set_client_secret("rotated-client-secret-2");
    std::fs::write(&secret, "rotated-client-secret-2\n").unwrap();
    let calls = mock.stats().token_calls;
    assert_eq!(refresh_now(&p, "cc").await, 200, "refused, read again, called again\n{}", p.log_text());
    assert_eq!(mock.stats().token_calls, calls + 2, "the refused call and its one retry");
    // The new value stays in use: the next call is not refused first.
    assert_eq!(refresh_now(&p, "cc").await, 200);
    assert_eq!(mock.stats().token_calls, calls + 3);

    // Direct Login: the refresh token is dead, so the password logs in — refused until
    // the rotated password file is read again.
    mock.set_password("rotated-password-2");
    std::fs::write(&password, "rotated-password-2\n").unwrap();
    mock.revoke_refresh_tokens();
    let logins = mock.stats().password_logins;
    assert_eq!(refresh_now(&p, "g2a").await, 200, "{}", p.log_text());
    assert_eq!(mock.stats().password_logins, logins + 1);
    assert_eq!(client().get(p.url("/G2A/x")).send().await.unwrap().status(), 200);

    // A refusal whose file did not change stands: one call, no retry.
    mock.set_client_secret("rotated-client-secret-3");
    let calls = mock.stats().token_calls;
    assert_eq!(refresh_now(&p, "cc").await, 502);
    assert_eq!(mock.stats().token_calls, calls + 1, "nothing new in the file: no second call");

    let m = metrics(&p).await;
    assert_eq!(reloads(&m, "file", "applied"), 0.0, "watch_files = false: nothing reloaded");
    let log = p.log_text();
    assert_eq!(log.matches("a secret file holds a new value").count(), 2, "{log}");
    for s in ["rotated-client-secret-2", "rotated-password-2"] {
        assert!(!log.contains(s), "{s} in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_edit_is_refused_and_the_running_config_keeps_serving() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = config_with(dir.path(), &mock, "", &["/A/"]);
    let path = write_config(dir.path(), "proxy.toml", &good);
    let p = Proc::spawn(&path);
    wait_ready(&client(), &p.admin("/readyz"), Duration::from_secs(10)).await;

    std::fs::write(&path, good.replace("[proxy]\n", "[proxy]\nbogus_key = 1\n")).unwrap();
    until_reloads(&p, "file", "refused", 1.0, WITHIN).await;
    assert_eq!(client().get(p.url("/A/x")).send().await.unwrap().status(), 200, "the old config serves");
    let log = p.log_text();
    let line = log.lines().find(|l| l.contains("configuration reload refused")).expect("a refusal line");
    assert!(line.contains("bogus_key") && line.contains("\"trigger\":\"file\""), "{line}");

    // Fixed: applied.
    std::fs::write(&path, config_with(dir.path(), &mock, "", &["/A/", "/B/"])).unwrap();
    until_status(&p.url("/B/x"), None, 200, WITHIN).await;
    until_reloads(&p, "file", "applied", 1.0, WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_writes_in_one_second_make_one_reload() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "proxy.toml", &config_with(dir.path(), &mock, "", &["/A/"]));
    let p = Proc::spawn(&path);
    wait_ready(&client(), &p.admin("/readyz"), Duration::from_secs(10)).await;

    let start = Instant::now();
    for i in 0..100u32 {
        // Each write a different file (a route named after the write), every other one
        // by a rename.
        let text = config_with(dir.path(), &mock, "", &["/A/", &format!("/W{i}/")]);
        if i % 2 == 0 {
            std::fs::write(&path, text).unwrap();
        } else {
            replace_by_rename(&path, &text);
        }
        tokio::time::sleep_until((start + Duration::from_millis(10) * (i + 1)).into()).await;
    }
    let burst = start.elapsed();
    until_status(&p.url("/W99/x"), None, 200, WITHIN).await;
    until_reloads(&p, "file", "applied", 1.0, WITHIN).await;
    // No second reload comes later: watched for longer than the debounce and settle
    // windows together (0.5 s) with margin.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = metrics(&p).await;
    assert_eq!(reloads(&m, "file", "applied"), 1.0, "100 writes in {burst:?}: one reload");
    assert_eq!(reloads(&m, "file", "refused"), 0.0, "no half-written file was read");
    assert_eq!(client().get(p.url("/W98/x")).send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_files_false_ignores_changes_and_post_reload_applies_them() {
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let off = "watch_files = false\n";
    let path = write_config(dir.path(), "proxy.toml", &config_with(dir.path(), &mock, off, &["/A/"]));
    let p = Proc::spawn(&path);
    let http = client();
    wait_ready(&http, &p.admin("/readyz"), Duration::from_secs(10)).await;

    std::fs::write(&path, config_with(dir.path(), &mock, off, &["/A/", "/B/"])).unwrap();
    // Longer than SPEC's bound for a watched change: nothing may have happened.
    tokio::time::sleep(WITHIN).await;
    assert_eq!(http.get(p.url("/B/x")).send().await.unwrap().status(), 404, "watch_files = false");
    assert_eq!(reloads(&metrics(&p).await, "file", "applied"), 0.0);

    // A web page cannot press it (the browser rules of every admin form).
    let cross = http.post(p.admin("/reload")).header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(cross.status(), 403);
    assert_eq!(http.get(p.admin("/reload")).send().await.unwrap().status(), 405);

    let res = http.post(p.admin("/reload")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "outcome": "applied", "changed": ["routes"] }));
    assert_eq!(http.get(p.url("/B/x")).send().await.unwrap().status(), 200);

    // Refused, with why; the running config stays.
    std::fs::write(&path, "[proxy]\nbogus_key = 1\n").unwrap();
    let res = http.post(p.admin("/reload")).send().await.unwrap();
    assert_eq!(res.status(), 409);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["outcome"], "refused");
    assert!(body["message"].as_str().unwrap().contains("bogus_key"), "{body}");
    assert_eq!(http.get(p.url("/B/x")).send().await.unwrap().status(), 200);

    let m = metrics(&p).await;
    assert_eq!((reloads(&m, "admin", "applied"), reloads(&m, "admin", "refused")), (1.0, 1.0), "{m}");
    assert_eq!(reloads(&m, "file", "applied") + reloads(&m, "file", "refused"), 0.0);
}
