//! Shared fixtures: the mock GoTo server, in-process proxies on `127.0.0.1:0`, the real
//! binary as a child process, and small HTTP helpers.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use goto_auth_proxy::app::{self, Running};
use goto_auth_proxy::config::Config;
use goto_auth_proxy::mock::{MockGoto, MockOptions};

/// The compiled binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_goto-auth-proxy");

/// `[credentials.NAME]` for Direct Login against the mock.
pub fn password_cred(name: &str, mock: &MockGoto) -> String {
    let o = mock.options();
    format!(
        "[credentials.{name}]\ngrant = \"password\"\nclient_id = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\ntoken_url = \"{}/oauth/access_token\"\n",
        o.consumer_key,
        o.user_id,
        o.password,
        mock.url()
    )
}

/// `[credentials.NAME]` for the authorization-code grant, seeded with `seed` if given.
pub fn code_cred(name: &str, mock: &MockGoto, seed: Option<&str>) -> String {
    let o = mock.options();
    let m = mock.url();
    let mut s = format!(
        "[credentials.{name}]\ngrant = \"authorization_code\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\ntoken_url = \"{m}/oauth/token\"\nauthorize_url = \"{m}/oauth/authorize\"\nkeys_url = \"{m}/admin/rest/v1/me\"\n",
        o.client_id, o.client_secret
    );
    if let Some(seed) = seed {
        s.push_str(&format!("refresh_token = \"{seed}\"\n"));
    }
    s
}

/// A `[[routes]]` entry to the mock.
pub fn route(prefix: &str, mock: &MockGoto, credential: Option<&str>) -> String {
    let cred = credential.map(|c| format!("credential = \"{c}\"\n")).unwrap_or_default();
    format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{}\"\n{cred}", mock.url())
}

/// Config text: loopback port 0 listeners, state in `dir`, `proxy_extra` in `[proxy]`.
pub fn config_text(dir: &Path, proxy_extra: &str, rest: &str) -> String {
    let wait = if proxy_extra.contains("token_wait") { "" } else { "token_wait = \"3s\"\n" };
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{wait}{proxy_extra}\n\n[state]\npath = {:?}\n\n{rest}",
        dir.join("state.json").display().to_string()
    )
}

/// A mock and a proxy in front of it, in this process.
pub struct Stack {
    pub mock: MockGoto,
    pub proxy: Running,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Stack {
    /// `http://proxy/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.proxy_addr)
    }

    /// `http://admin/path`.
    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.admin_addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("proxy answers")
    }
}

/// A plain client: no env proxies, no redirects followed.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// Starts a mock with `opts` and a proxy whose config `make` writes.
pub async fn stack(opts: MockOptions, make: impl FnOnce(&MockGoto, &Path) -> String) -> Stack {
    let mock = MockGoto::start(opts).await.expect("mock starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = make(&mock, dir.path());
    let proxy = start_proxy(&text).await;
    Stack { mock, proxy, dir, http: client() }
}

/// Starts an in-process proxy for config text.
pub async fn start_proxy(text: &str) -> Running {
    let cfg = Config::parse("test.toml", text).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
    app::start(cfg).await.expect("proxy starts")
}

/// The usual set-up: Direct Login credential `g2a` on `/G2A/`, OAuth `goto` on `/`.
pub async fn standard(opts: MockOptions) -> Stack {
    stack(opts, |mock, dir| {
        let seed = mock.mint_refresh_token();
        config_text(
            dir,
            "",
            &format!(
                "{}\n{}\n{}\n{}",
                password_cred("g2a", mock),
                code_cred("goto", mock, Some(&seed)),
                route("/G2A/", mock, Some("g2a")),
                route("/", mock, Some("goto"))
            ),
        )
    })
    .await
}

/// Mock options with short-lived tokens.
pub fn short_tokens(secs: u64) -> MockOptions {
    MockOptions { token_lifetime: Duration::from_secs(secs), ..MockOptions::default() }
}

// ===== the real binary =====

/// A proxy running as a child process; killed on drop.
pub struct Proc {
    pub child: Child,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Everything it logged (JSON lines), for audits.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Runs `goto-auth-proxy run --config PATH --log-format json` and waits for its
    /// "serving" log line, which carries the bound addresses.
    pub fn spawn(config: &Path) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--log-format", "json", "--config"]).arg(config).env("RUST_LOG", "info");
        Proc::spawn_with(cmd)
    }

    /// Runs a prepared `run` command (either log format) and waits until it serves.
    pub fn spawn_with(mut cmd: Command) -> Proc {
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn proxy");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("goto-auth-proxy serving") {
                    let json = serde_json::from_str::<serde_json::Value>(&line).ok();
                    let addr = |k: &str| match &json {
                        Some(v) => v["fields"][k].as_str().and_then(|s| s.parse::<SocketAddr>().ok()),
                        None => line
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix(&format!("{k}=")))
                            .and_then(|s| s.parse::<SocketAddr>().ok()),
                    };
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((addr("proxy_addr"), addr("admin_addr")));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (p, a) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((Some(p), Some(a))) => (p, a),
            _ => {
                let _ = child.kill();
                panic!("proxy did not start; log:\n{}", log.lock().unwrap().join("\n"));
            }
        };
        Proc { child, proxy_addr: p, admin_addr: a, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy_addr)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// Sends a signal by number (9 = SIGKILL, 15 = SIGTERM).
    pub fn signal(&self, sig: i32) {
        let status = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status();
        assert!(status.map(|s| s.success()).unwrap_or(false), "kill -{sig} failed");
    }

    /// Waits for the process to exit (bounded).
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "process did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes config text to `dir/NAME` and returns the path.
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

/// Polls `url` until it answers 200, within `within`.
pub async fn wait_ready(http: &reqwest::Client, url: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} not ready within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of a Prometheus sample line `name{labels} value` (0 when absent).
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
