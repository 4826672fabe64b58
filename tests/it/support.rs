//! Shared fixtures: the mock GoTo server, in-process proxies on `127.0.0.1:0`, the real
//! binary as a child process, and small HTTP helpers.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use goto_auth_proxy::Config;
use goto_auth_proxy::{self as app, Running};
use goto_mock::{MockGoto, MockOptions};

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
        "[credentials.{name}]\ngrant = \"authorization_code\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\ntoken_url = \"{m}/oauth/token\"\nauthorize_url = \"{m}/oauth/authorize\"\nkeys_url = \"{m}/identity/v1/Users/me\"\n",
        o.client_id, o.client_secret
    );
    if let Some(seed) = seed {
        s.push_str(&format!("refresh_token = \"{seed}\"\n"));
    }
    s
}

/// `[credentials.NAME]` for OAuth client credentials against the mock.
pub fn client_credentials_cred(name: &str, mock: &MockGoto) -> String {
    let o = mock.options();
    format!(
        "[credentials.{name}]\ngrant = \"client_credentials\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\ntoken_url = \"{}/oauth/token\"\n",
        o.client_id,
        o.client_secret,
        mock.url()
    )
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

/// The usual config: Direct Login credential `g2a` on `/G2A/`, OAuth `goto` (seeded
/// with `seed`) on `/`, state in `dir`.
pub fn standard_config(dir: &Path, mock: &MockGoto, seed: &str) -> String {
    config_text(
        dir,
        "",
        &format!(
            "{}\n{}\n{}\n{}",
            password_cred("g2a", mock),
            code_cred("goto", mock, Some(seed)),
            route("/G2A/", mock, Some("g2a")),
            route("/", mock, Some("goto"))
        ),
    )
}

/// The usual set-up ([`standard_config`]) with a fresh seed.
pub async fn standard(opts: MockOptions) -> Stack {
    stack(opts, |mock, dir| standard_config(dir, mock, &mock.mint_refresh_token())).await
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
    let mut last = String::new();
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status() == 200 {
                return;
            }
            last = format!("{} {}", r.status(), r.text().await.unwrap_or_default());
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} not ready within {within:?}: {last}");
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

/// `goto_auth_proxy_config_reloads_total` for one trigger (`signal`, `file`, `admin`)
/// and outcome (`applied`, `refused`), whatever order the labels are printed in.
pub fn reloads(text: &str, trigger: &str, outcome: &str) -> f64 {
    let (t, o) = (format!("trigger=\"{trigger}\""), format!("outcome=\"{outcome}\""));
    text.lines()
        .filter(|l| l.starts_with("goto_auth_proxy_config_reloads_total{") && l.contains(&t) && l.contains(&o))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

// ===== a real redis-server =====

/// A `redis-server` of its own on a free loopback port, no persistence; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// A second port speaking TLS ([`RedisServer::start_tls`]), and its arguments.
    tls: Option<(u16, Vec<String>)>,
}

/// A free loopback port (bound and let go: the caller binds it next).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr").port()
}

impl RedisServer {
    /// Starts one and waits for `PING`. Without `redis-server` on the PATH: panics when
    /// `CI` is set, else prints a notice and returns `None` (the test is skipped).
    pub async fn start() -> Option<RedisServer> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            if std::env::var_os("CI").is_some() {
                panic!("redis-server is not installed (scripts/install-test-deps.sh installs it)");
            }
            eprintln!("NOTICE: redis-server not found; skipping this Redis test (apt-get install redis-server)");
            return None;
        }
        let mut r =
            RedisServer { child: None, port: free_port(), dir: tempfile::tempdir().expect("tempdir"), tls: None };
        r.spawn().await;
        Some(r)
    }

    /// [`RedisServer::start`], also speaking TLS on [`RedisServer::tls_url`]'s port with
    /// `cert`/`key` (PEM), and requiring clients to present a certificate issued by `ca`.
    pub async fn start_tls(cert: &Path, key: &Path, ca: &Path) -> Option<RedisServer> {
        let mut r = RedisServer::start().await?;
        let tls_port = free_port();
        let mut args = vec!["--tls-port".to_string(), tls_port.to_string(), "--tls-auth-clients".into(), "yes".into()];
        for (flag, file) in [("--tls-cert-file", cert), ("--tls-key-file", key), ("--tls-ca-cert-file", ca)] {
            args.push(flag.to_string());
            args.push(file.display().to_string());
        }
        r.tls = Some((tls_port, args));
        r.restart().await;
        Some(r)
    }

    /// `rediss://127.0.0.1:TLS_PORT/0` of a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.tls.as_ref().expect("started with start_tls").0)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(self.tls.iter().flat_map(|(_, args)| args))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.pings().await {
            assert!(tokio::time::Instant::now() < deadline, "redis-server on port {} did not answer PING", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True when it answers `PING` with `PONG`.
    pub async fn pings(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
            s.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).await.ok()?;
            Some(buf[..n].starts_with(b"+PONG"))
        };
        matches!(tokio::time::timeout(Duration::from_millis(500), attempt).await, Ok(Some(true)))
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `[state]` for proxies sharing this server under `prefix`.
    pub fn state(&self, prefix: &str) -> String {
        format!("[state]\nstore = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"{prefix}\"\n", self.url())
    }

    /// SIGKILL, as a crash would (nothing saved: it comes back empty).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// SIGSTOP: it still accepts connections but answers nothing (a very slow Redis).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// A client for looking at what the proxies stored.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).expect("url").get_multiplexed_async_connection().await.expect("connect")
    }

    /// The raw value under `key`, if any.
    pub async fn get(&self, key: &str) -> Option<String> {
        let mut c = self.conn().await;
        redis::cmd("GET").arg(key).query_async(&mut c).await.expect("GET")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused server ignores SIGKILL only until it is continued; be sure.
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
    }
}

/// Outcome of a load run: requests sent, and the failures with what they answered.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub requests: u64,
    pub failures: Vec<String>,
    /// Every request's time to its whole answer (or its failure), in the order sent.
    pub latencies: Vec<Duration>,
}

impl LoadReport {
    /// The `q` quantile (0.0 to 1.0) of the requests' latencies.
    pub fn latency(&self, q: f64) -> Duration {
        let mut all = self.latencies.clone();
        all.sort();
        let i = ((all.len() as f64 - 1.0) * q).round() as usize;
        all.get(i).copied().unwrap_or_default()
    }

    /// Fails the test, listing every failed request, unless all succeeded.
    pub fn assert_no_failures(&self) {
        assert!(self.failures.is_empty(), "{} of {} failed: {:#?}", self.failures.len(), self.requests, self.failures);
    }
}

/// Sends GETs to `urls` round-robin from `workers` tasks until `stop` is cancelled,
/// pausing `pace` between requests per task; every answer but 200 is a failure.
pub async fn load(
    urls: Vec<String>,
    workers: usize,
    pace: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> LoadReport {
    let urls = Arc::new(urls);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (urls, stop, http) = (urls.clone(), stop.clone(), client());
        tasks.push(tokio::spawn(async move {
            let mut report = LoadReport::default();
            let mut i = w;
            while !stop.is_cancelled() {
                let url = &urls[i % urls.len()];
                i += 1;
                report.requests += 1;
                let sent = tokio::time::Instant::now();
                match http.get(url).timeout(Duration::from_secs(10)).send().await {
                    Ok(r) if r.status() == 200 => {
                        // Read the body: a truncated answer is a failure too.
                        if let Err(e) = r.bytes().await {
                            report.failures.push(format!("{url}: body: {e}"));
                        }
                    }
                    Ok(r) => {
                        let status = r.status();
                        report.failures.push(format!("{url}: {status} {}", r.text().await.unwrap_or_default()));
                    }
                    Err(e) => report.failures.push(format!("{url}: {e}")),
                }
                report.latencies.push(sent.elapsed());
                tokio::time::sleep(pace).await;
            }
            report
        }));
    }
    let mut total = LoadReport::default();
    for t in tasks {
        let r = t.await.expect("load task");
        total.requests += r.requests;
        total.failures.extend(r.failures);
        total.latencies.extend(r.latencies);
    }
    total
}

/// `/metrics` of an in-process proxy.
pub async fn metrics_of(p: &Running) -> String {
    client().get(format!("http://{}/metrics", p.admin_addr)).send().await.unwrap().text().await.unwrap()
}

/// Sends raw bytes (odd request lines a client library would refuse to send) and
/// returns the raw answer.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts `goto-auth-proxy ARGS --config PATH` (a `login`) and reads the authorize URL it
/// prints first; stdin is a pipe for pasting when `paste` is set.
pub fn spawn_login(
    path: &std::path::Path,
    args: &[&str],
    paste: bool,
) -> (std::process::Child, BufReader<std::process::ChildStdout>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(path)
        .stdin(if paste { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    stdout.read_line(&mut url).unwrap();
    (child, stdout, url)
}

/// Pastes `text` (where the browser landed, or the bare code) into a `login` started by
/// [`spawn_login`] and waits for it: its exit status and the rest of what it printed.
pub fn paste_login(
    mut child: std::process::Child,
    mut stdout: BufReader<std::process::ChildStdout>,
    text: &str,
) -> (std::process::ExitStatus, String) {
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, format!("{text}\n").as_bytes()).unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    (status, rest)
}

/// One HTTP/1.1 client connection, for tests whose requests must share it: a pooled
/// client (reqwest) opens a second connection whenever the first is not back in its pool
/// yet, which a loaded machine makes likely.
pub struct OneConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    host: String,
}

impl OneConnection {
    /// Connects to the host and port of `url` (`http://127.0.0.1:PORT/…`).
    pub async fn open(url: &str) -> OneConnection {
        let u = url::Url::parse(url).unwrap();
        let host = format!("{}:{}", u.host_str().unwrap(), u.port_or_known_default().unwrap());
        let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        OneConnection { sender, host }
    }

    /// `method path` with `body` on this connection: status and body text.
    pub async fn send(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        use http_body_util::BodyExt;
        self.sender.ready().await.unwrap();
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.host.as_str())
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
            .unwrap();
        let res = self.sender.send_request(req).await.unwrap();
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}
