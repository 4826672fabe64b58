//! Inside a corporate network (issue #16): servers only a private CA vouches for, an
//! upstream that wants a client certificate, a real forward proxy (`tinyproxy`) that
//! every connection must take, the environment's `HTTPS_PROXY`/`NO_PROXY`, HTTP/2
//! through the tunnel, and Redis over TLS — for the data path, the token endpoint, the
//! store and the `[[notify]]` webhooks alike. Certificates are made here, for each test (rcgen).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use goto_auth_proxy::testing::RedisStore;
use goto_auth_proxy::testing::Secret;
use goto_auth_proxy::testing::{ConnInfo, Serve};
use goto_auth_proxy::Config;
use goto_mock::{MockGoto, MockOptions};
use http_body_util::Full;
use hyper::body::Incoming;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::support::*;

// ===== a throw-away PKI =====

/// A private CA, a server certificate it issued for `127.0.0.1`, `localhost` and
/// `api.corp.test`, and a client certificate it issued; the PEM files in `dir`.
struct Pki {
    /// Holds the PEM files.
    _dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    /// The CA certificate: what `tls.ca_file` names.
    ca_file: PathBuf,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
    server_cert_file: PathBuf,
    server_key_file: PathBuf,
    client_cert_file: PathBuf,
    client_key_file: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "goto-auth-proxy test corporate root");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: &[&str], usage: ExtendedKeyUsagePurpose| {
            let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            (p.signed_by(&key, &ca).unwrap(), key)
        };
        let (server, server_key) =
            leaf(&["127.0.0.1", "localhost", "api.corp.test"], ExtendedKeyUsagePurpose::ServerAuth);
        let (client, client_key) = leaf(&["goto-auth-proxy"], ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            ca: ca.der().clone(),
            ca_file: write("corp-root.pem", ca.pem()),
            server_cert: server.der().clone(),
            server_key: server_key.serialize_der(),
            server_cert_file: write("server.pem", server.pem()),
            server_key_file: write("server.key", server_key.serialize_pem()),
            client_cert_file: write("client.pem", client.pem()),
            client_key_file: write("client.key", client_key.serialize_pem()),
            _dir: dir,
        }
    }

    /// `[tls]` trusting the private CA, with the client certificate when `client`.
    fn tls_toml(&self, client: bool) -> String {
        let mut t = format!("[tls]\nca_file = {:?}\n", self.ca_file.display().to_string());
        if client {
            t.push_str(&format!(
                "client_cert = {:?}\nclient_key = {{ file = {:?} }}\n",
                self.client_cert_file.display().to_string(),
                self.client_key_file.display().to_string()
            ));
        }
        t
    }

    /// A server configuration with the server certificate, offering `alpn`; with
    /// `mutual`, a client certificate issued by the CA is required.
    fn server_config(&self, alpn: &[&[u8]], mutual: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if mutual {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(self.server_key.clone().into());
        let mut config = builder.with_single_cert(vec![self.server_cert.clone()], key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// The mock GoTo (token endpoint and API) over HTTPS with the private CA's certificate.
    async fn mock(&self, opts: MockOptions) -> MockGoto {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server_config(&[b"http/1.1"], false));
        MockGoto::start_tls(opts, acceptor).await.unwrap()
    }
}

/// A plain HTTPS server (HTTP/1.1) answering `200 hello` to everything, with `tls`.
async fn hello_server(tls: Arc<rustls::ServerConfig>, stop: CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Serve::new(stop).tls(Some(tokio_rustls::TlsAcceptor::from(tls)));
    tokio::spawn(serve.run(listener, |_req: http::Request<Incoming>, _conn: Arc<ConnInfo>| async {
        http::Response::new(Full::new(Bytes::from_static(b"hello")))
    }));
    addr
}

/// An HTTPS webhook receiver with `tls`: records every POSTed JSON body.
async fn hook_server(
    tls: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
) -> (SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let record = got.clone();
    let serve = Serve::new(stop).tls(Some(tokio_rustls::TlsAcceptor::from(tls)));
    tokio::spawn(serve.run(listener, move |req: http::Request<Incoming>, _conn: Arc<ConnInfo>| {
        let record = record.clone();
        async move {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            record.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or_default());
            http::Response::new(Full::new(Bytes::new()))
        }
    }));
    (addr, got)
}

/// An HTTPS server speaking HTTP/2 (ALPN `h2` only) that answers `"{version} {path}"`;
/// the counter counts its TCP connections.
async fn h2_server(tls: Arc<rustls::ServerConfig>) -> (SocketAddr, Arc<AtomicUsize>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let echo = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    let said = format!("{:?} {}", req.version(), req.uri().path());
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(said))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), echo)
                    .await;
            });
        }
    });
    (addr, connections)
}

// ===== forward proxies =====

/// A real `tinyproxy` on a free loopback port, logging every request line (`CONNECT
/// host:port`, or an absolute-form `GET http://…`); killed on drop.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Starts one (with `BasicAuth user password` when given) and waits until it
    /// accepts. Without `tinyproxy` installed: panics when `CI` is set, else prints a
    /// notice and returns `None` (the test is skipped).
    async fn start(basic_auth: Option<(&str, &str)>) -> Option<Tinyproxy> {
        if Command::new("tinyproxy").arg("-v").output().is_err() {
            if std::env::var_os("CI").is_some() {
                panic!("tinyproxy is not installed (scripts/install-test-deps.sh installs it)");
            }
            eprintln!("NOTICE: tinyproxy not found; skipping this outbound proxy test (apt-get install tinyproxy)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("tinyproxy.log");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 64\nAllow 127.0.0.1\nDisableViaHeader Yes\n\
             LogLevel Connect\nLogFile \"{}\"\n",
            log.display()
        );
        if let Some((user, password)) = basic_auth {
            conf.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let conf_file = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf_file, conf).unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tinyproxy");
        let t = Tinyproxy { child, port, log, _dir: dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "tinyproxy did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(t)
    }

    /// `http://127.0.0.1:PORT`, with `user:password@` when given.
    fn url(&self, credentials: Option<&str>) -> String {
        let creds = credentials.map(|c| format!("{c}@")).unwrap_or_default();
        format!("http://{creds}127.0.0.1:{}", self.port)
    }

    /// How many tunnels it was asked for to `127.0.0.1:port`, once at least `min` (or
    /// 0 when `min` is 0) are in the log, within a few seconds.
    async fn connects_to(&self, port: u16, min: usize) -> usize {
        let needle = format!("CONNECT 127.0.0.1:{port} ");
        let count = || std::fs::read_to_string(&self.log).unwrap_or_default().matches(&needle).count();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while count() < min && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        count()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A forward proxy of a few lines that tunnels every `CONNECT host:port` to
/// `127.0.0.1:port`, so names that resolve nowhere (`api.corp.test`) reach this test's
/// servers, as a corporate proxy reaches the internet; it records each `CONNECT` target.
async fn mapping_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                let port: u16 = target.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                record.lock().unwrap().push(target);
                let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

// ===== helpers =====

/// The proxy-made error code of an answer.
fn error_code(r: &reqwest::Response) -> String {
    r.headers().get("x-goto-auth-proxy-error").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// A `[[routes]]` entry without a credential to `upstream`.
fn open_route(prefix: &str, upstream: &str) -> String {
    format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n")
}

// ===== the private CA =====

/// Only `ca_file` makes the HTTPS token endpoint and API trustworthy: without it the
/// answer is a proxy-made error and no token was issued; with it, a token and a 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_in_ca_file_makes_the_token_endpoint_and_the_upstream_trusted() {
    let pki = Pki::new();
    let mock = pki.mock(MockOptions::default()).await;
    let rest = |tls: &str| {
        format!(
            "{tls}\n{}\n{}\n{}",
            password_cred("g2a", &mock),
            route("/G2A/", &mock, Some("g2a")),
            open_route("/open/", &mock.url())
        )
    };
    let http = client();

    let dir = tempfile::tempdir().unwrap();
    let untrusting = start_proxy(&config_text(dir.path(), "token_wait = \"1s\"", &rest(""))).await;
    let r = http.get(format!("http://{}/G2A/rest/v1/sessions", untrusting.proxy_addr)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), error_code(&r)), (503, "token_unavailable".to_string()));
    let r = http.get(format!("http://{}/open/x", untrusting.proxy_addr)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), error_code(&r)), (502, "upstream_unreachable".to_string()));
    let body = r.text().await.unwrap();
    assert!(body.contains("TLS") && body.contains("UnknownIssuer"), "{body}");
    assert!(mock.issued().is_empty(), "no token was issued to a proxy that could not trust the endpoint");
    untrusting.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let trusting = start_proxy(&config_text(dir.path(), "", &rest(&pki.tls_toml(false)))).await;
    let r = http.get(format!("http://{}/G2A/rest/v1/sessions", trusting.proxy_addr)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(mock.issued().len(), 1);
    assert_eq!(mock.stats().api_ok, 1);
    trusting.stop().await;
}

/// An upstream that requires a client certificate refuses the proxy without
/// `client_cert`/`client_key` and serves it with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tls_upstream_needs_the_client_certificate() {
    let pki = Pki::new();
    let stop = CancellationToken::new();
    let upstream = hello_server(pki.server_config(&[b"http/1.1"], true), stop.clone()).await;
    let http = client();
    for (client_cert, expected) in [(false, 502), (true, 200)] {
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(
            dir.path(),
            "",
            &format!("{}\n{}", pki.tls_toml(client_cert), open_route("/m/", &format!("https://{upstream}"))),
        );
        let p = start_proxy(&text).await;
        let r = http.get(format!("http://{}/m/x", p.proxy_addr)).send().await.unwrap();
        assert_eq!(r.status(), expected, "client certificate {client_cert}");
        if expected == 502 {
            assert_eq!(error_code(&r), "upstream_unreachable");
        } else {
            assert_eq!(r.text().await.unwrap(), "hello");
        }
        p.stop().await;
    }
    stop.cancel();
}

/// A reload that adds `ca_file` rebuilds the outbound TLS configuration: the upstream
/// refused before is served after, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rebuilds_the_outbound_tls_configuration() {
    let pki = Pki::new();
    let stop = CancellationToken::new();
    let upstream = hello_server(pki.server_config(&[b"http/1.1"], false), stop.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let route = open_route("/r/", &format!("https://{upstream}"));
    let p = start_proxy(&config_text(dir.path(), "", &route)).await;
    let http = client();
    let url = format!("http://{}/r/x", p.proxy_addr);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 502);
    let text = config_text(dir.path(), "", &format!("{}\n{route}", pki.tls_toml(false)));
    p.core.reload(Config::parse("reload.toml", &text).unwrap(), goto_auth_proxy::ReloadTrigger::Signal).await.unwrap();
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    p.stop().await;
    stop.cancel();
}

// ===== a real forward proxy =====

/// `outbound_proxy` set to a real tinyproxy: its log shows one `CONNECT` for the token
/// call (before any request) and one for the data path, whose connection is then
/// reused; TLS to the private CA's server runs inside the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tinyproxy_carries_the_token_call_and_the_data_path_in_connect_tunnels() {
    let Some(tp) = Tinyproxy::start(None).await else { return };
    let pki = Pki::new();
    let mock = pki.mock(MockOptions::default()).await;
    let plain = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        &format!("outbound_proxy = \"{}\"", tp.url(None)),
        &format!(
            "{}\n{}\n{}\n{}",
            pki.tls_toml(false),
            password_cred("g2a", &mock),
            route("/G2A/", &mock, Some("g2a")),
            open_route("/plain/", &plain.url())
        ),
    );
    let p = start_proxy(&text).await;
    let http = client();
    wait_ready(&http, &format!("http://{}/readyz", p.admin_addr), Duration::from_secs(10)).await;
    let port = mock.addr().port();
    assert_eq!(tp.connects_to(port, 1).await, 1, "the token call went through the proxy:\n{}", tp.log_text());
    for _ in 0..3 {
        let r = http.get(format!("http://{}/G2A/rest/v1/sessions", p.proxy_addr)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // Read to the end, so the client's connection (and the upstream one it holds)
        // serves the next request; an unread body would make the client open another.
        r.bytes().await.unwrap();
    }
    assert_eq!(tp.connects_to(port, 2).await, 2, "one tunnel for the data path, reused:\n{}", tp.log_text());
    assert_eq!(mock.api_connections(), 1);
    // A plain-HTTP upstream: absolute-form requests to the proxy, no tunnel. The mock
    // answers (it refuses a request without a token), not the proxy.
    let r = http.get(format!("http://{}/plain/G2M/x", p.proxy_addr)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), error_code(&r)), (403, String::new()));
    let forwarded = format!("GET http://{}/plain/G2M/x ", plain.addr());
    assert!(tp.log_text().contains(&forwarded), "{forwarded:?} in\n{}", tp.log_text());
    let m = metrics_of(&p).await;
    assert!(m.contains("goto_auth_proxy_upstream_errors_total{kind=\"aborted\",route=\"/G2A/\"} 0"), "{m}");
    assert!(!m.lines().any(|l| l.starts_with("goto_auth_proxy_upstream_errors_total{") && !l.ends_with(" 0")), "{m}");
    p.stop().await;
}

/// A `[[notify]]` webhook behind the private CA and the forward proxy: the event arrives
/// over TLS that only `ca_file` makes trusted, through a `CONNECT` tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_behind_the_private_ca_is_told_through_the_tunnel() {
    let Some(tp) = Tinyproxy::start(None).await else { return };
    let pki = Pki::new();
    let stop = CancellationToken::new();
    let (hook, got) = hook_server(pki.server_config(&[b"http/1.1"], false), stop.clone()).await;
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        &format!("outbound_proxy = \"{}\"", tp.url(None)),
        &format!(
            // Never signed in: `needs_login` at once.
            "{}\n{}\n{}\n[[notify]]\nwebhook = \"https://{hook}/hook\"\nevents = [\"needs_login\"]\n",
            pki.tls_toml(false),
            code_cred("goto", &mock, None),
            route("/", &mock, Some("goto")),
        ),
    );
    let p = start_proxy(&text).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no event arrived; tinyproxy log:\n{}", tp.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let event = got.lock().unwrap()[0].clone();
    assert_eq!((event["event"].as_str(), event["credential"].as_str()), (Some("needs_login"), Some("goto")), "{event}");
    assert_eq!(tp.connects_to(hook.port(), 1).await, 1, "through the proxy:\n{}", tp.log_text());
    p.stop().await;
    stop.cancel();
}

/// A proxy refusing the tunnel (`407` without credentials, `401` to wrong ones): `502
/// upstream_unreachable` naming the proxy (credentials as `***`) and its answer,
/// counted as `kind="proxy"`, and no token; with the right credentials in the URL
/// (`Proxy-Authorization: Basic`), both paths work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_answering_407_is_a_502_naming_it_and_counted_as_kind_proxy() {
    let Some(tp) = Tinyproxy::start(Some(("alice", "SECRET-proxy-pass"))).await else { return };
    let pki = Pki::new();
    let mock = pki.mock(MockOptions::default()).await;
    let plain = MockGoto::start(MockOptions::default()).await.unwrap();
    let http = client();
    let start = |proxy: String| {
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(
            dir.path(),
            &format!("token_wait = \"1s\"\noutbound_proxy = \"{proxy}\""),
            &format!(
                "{}\n{}\n{}\n{}\n{}",
                pki.tls_toml(false),
                password_cred("g2a", &mock),
                route("/G2A/", &mock, Some("g2a")),
                open_route("/open/", &mock.url()),
                open_route("/plain/", &plain.url())
            ),
        );
        async move { (start_proxy(&text).await, dir) }
    };

    // tinyproxy answers 407 without credentials and 401 to wrong ones: the message
    // names whichever the proxy said.
    let masked = format!("http://***@127.0.0.1:{}", tp.port);
    for (creds, shown, answer) in
        [(None, tp.url(None), "407 Proxy Authentication Required"), (Some("alice:SECRET-wrong"), masked, "401 ")]
    {
        let (p, _dir) = start(tp.url(creds)).await;
        let r = http.get(format!("http://{}/open/x", p.proxy_addr)).send().await.unwrap();
        assert_eq!((r.status().as_u16(), error_code(&r)), (502, "upstream_unreachable".to_string()));
        let body = r.text().await.unwrap();
        assert!(body.contains(&format!("outbound proxy {shown} refused the tunnel")), "{body}");
        assert!(body.contains(answer) && !body.contains("SECRET"), "{body}");
        let r = http.get(format!("http://{}/G2A/x", p.proxy_addr)).send().await.unwrap();
        assert_eq!(error_code(&r), "token_unavailable");
        // A plain-HTTP upstream gets no tunnel: the proxy's 407 to the request itself is
        // its refusal too, not the upstream's answer.
        if creds.is_none() {
            let r = http.get(format!("http://{}/plain/x", p.proxy_addr)).send().await.unwrap();
            assert_eq!((r.status().as_u16(), error_code(&r)), (502, "upstream_unreachable".to_string()));
            let body = r.text().await.unwrap();
            assert!(
                body.contains(&format!("{shown} refused the request to http://")) && body.contains("407"),
                "{body}"
            );
        }
        let m = metrics_of(&p).await;
        assert_eq!(metric(&m, "goto_auth_proxy_upstream_errors_total{kind=\"proxy\",route=\"/open/\"}"), 1.0);
        assert!(!m.contains("SECRET"));
        p.stop().await;
    }
    assert!(mock.issued().is_empty(), "no token through a proxy that refused");

    let (p, _dir) = start(tp.url(Some("alice:SECRET-proxy-pass"))).await;
    let r = http.get(format!("http://{}/G2A/rest/v1/sessions", p.proxy_addr)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mock.issued().len(), 1);
    p.stop().await;
}

/// The environment's `HTTPS_PROXY` (on the real binary) carries destinations that are
/// not loopback — the token call and the data path to `api.corp.test` — and never a
/// loopback one, which goes direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_from_the_environment_carries_names_but_never_loopback() {
    let pki = Pki::new();
    let mock = pki.mock(MockOptions::default()).await;
    let (proxy_addr, seen) = mapping_proxy().await;
    let port = mock.addr().port();
    let corp = format!("https://api.corp.test:{port}");
    let o = mock.options();
    let dir = tempfile::tempdir().unwrap();
    let cred = format!(
        "[credentials.g2a]\ngrant = \"password\"\nclient_id = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\ntoken_url = \"{corp}/oauth/access_token\"\n",
        o.consumer_key, o.user_id, o.password
    );
    let text = config_text(
        dir.path(),
        "",
        &format!(
            "{}\n{cred}\n[[routes]]\nprefix = \"/G2A/\"\nupstream = \"{corp}\"\ncredential = \"g2a\"\n\n[[routes]]\nprefix = \"/local/\"\nupstream = \"{}\"\ncredential = \"g2a\"\n",
            pki.tls_toml(false),
            mock.url()
        ),
    );
    let path = write_config(dir.path(), "env.toml", &text);
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--log-format", "json", "--config"]).arg(&path).env("RUST_LOG", "info");
    for var in ["NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "https_proxy"] {
        cmd.env_remove(var);
    }
    cmd.env("HTTPS_PROXY", format!("http://{proxy_addr}"));
    let p = Proc::spawn_with(cmd);
    let http = client();
    wait_ready(&http, &p.admin("/readyz"), Duration::from_secs(10)).await;
    let tunnel = format!("api.corp.test:{port}");
    assert_eq!(seen.lock().unwrap().clone(), vec![tunnel.clone()], "the token call took HTTPS_PROXY");
    assert_eq!(http.get(p.url("/G2A/rest/v1/sessions")).send().await.unwrap().status(), 200);
    assert_eq!(seen.lock().unwrap().clone(), vec![tunnel.clone(), tunnel.clone()], "so did the data path");
    assert_eq!(http.get(p.url("/local/rest/v1/sessions")).send().await.unwrap().status(), 200);
    assert_eq!(seen.lock().unwrap().len(), 2, "127.0.0.1 went direct: the environment's proxy never takes loopback");
}

/// `NO_PROXY` (on the real binary) sends what it lists direct even past an explicit
/// `outbound_proxy`: the same set-up as the tinyproxy test, and the proxy sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_sends_listed_destinations_direct() {
    let Some(tp) = Tinyproxy::start(None).await else { return };
    let pki = Pki::new();
    let mock = pki.mock(MockOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        &format!("outbound_proxy = \"{}\"", tp.url(None)),
        &format!("{}\n{}\n{}", pki.tls_toml(false), password_cred("g2a", &mock), route("/G2A/", &mock, Some("g2a"))),
    );
    let path = write_config(dir.path(), "no-proxy.toml", &text);
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--log-format", "json", "--config"]).arg(&path).env("RUST_LOG", "info");
    cmd.env_remove("no_proxy").env("NO_PROXY", "localhost, 127.0.0.0/8");
    let p = Proc::spawn_with(cmd);
    let http = client();
    wait_ready(&http, &p.admin("/readyz"), Duration::from_secs(10)).await;
    assert_eq!(http.get(p.url("/G2A/rest/v1/sessions")).send().await.unwrap().status(), 200);
    assert_eq!(tp.connects_to(mock.addr().port(), 0).await, 0, "{}", tp.log_text());
    assert!(!tp.log_text().contains("Request"), "nothing went through the proxy:\n{}", tp.log_text());
}

/// A `NO_PROXY` entry with a port (`127.0.0.1:PORT`) sends that port direct and only
/// that port: two plain-HTTP mocks on one address, past an explicit `outbound_proxy`
/// (a real tinyproxy); the listed one is never seen by the proxy, the other goes
/// through it as an absolute-form request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_proxy_entry_with_a_port_covers_that_port_only() {
    let Some(tp) = Tinyproxy::start(None).await else { return };
    let listed = MockGoto::start(MockOptions::default()).await.unwrap();
    let other = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        &format!("outbound_proxy = \"{}\"", tp.url(None)),
        &format!(
            "{}\n{}\n{}",
            password_cred("g2a", &listed),
            route("/G2A/", &listed, Some("g2a")),
            open_route("/other/", &other.url())
        ),
    );
    let path = write_config(dir.path(), "no-proxy-port.toml", &text);
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--log-format", "json", "--config"]).arg(&path).env("RUST_LOG", "info");
    cmd.env_remove("no_proxy").env("NO_PROXY", format!("127.0.0.1:{}", listed.addr().port()));
    let p = Proc::spawn_with(cmd);
    let http = client();
    wait_ready(&http, &p.admin("/readyz"), Duration::from_secs(10)).await;
    assert_eq!(http.get(p.url("/G2A/rest/v1/sessions")).send().await.unwrap().status(), 200);
    // The other port answers through the proxy (the mock refuses a request without a token).
    assert_eq!(http.get(p.url("/other/G2M/x")).send().await.unwrap().status(), 403);
    let log = tp.log_text();
    assert!(log.contains(&format!("GET http://{}/other/G2M/x ", other.addr())), "{log}");
    assert!(!log.contains(&format!("127.0.0.1:{}/", listed.addr().port())), "the listed port went direct:\n{log}");
}

/// HTTP/2 upstreams through the whole stack: trusted by the private CA only, directly
/// and through tinyproxy's tunnel; every request, several at once among them, on one
/// multiplexed connection (one `CONNECT`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upstream_behind_the_private_ca_and_the_tunnel() {
    let Some(tp) = Tinyproxy::start(None).await else { return };
    let pki = Pki::new();
    let (upstream, connections) = h2_server(pki.server_config(&[b"h2"], false)).await;
    let http = client();
    for (n, proxy_extra) in [(1, String::new()), (2, format!("outbound_proxy = \"{}\"", tp.url(None)))] {
        let dir = tempfile::tempdir().unwrap();
        let text = config_text(
            dir.path(),
            &proxy_extra,
            &format!("{}\n{}", pki.tls_toml(false), open_route("/h2/", &format!("https://{upstream}"))),
        );
        let p = start_proxy(&text).await;
        let get = |path: String| {
            let (http, addr) = (&http, p.proxy_addr);
            async move { http.get(format!("http://{addr}{path}")).send().await.unwrap().text().await.unwrap() }
        };
        assert_eq!(get("/h2/first".to_string()).await, "HTTP/2.0 /h2/first");
        let answers = futures_util::future::join_all((0..8).map(|i| get(format!("/h2/at-once/{i}")))).await;
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(a, &format!("HTTP/2.0 /h2/at-once/{i}"));
        }
        assert_eq!(connections.load(Ordering::SeqCst), n, "one upstream connection per proxy");
        p.stop().await;
    }
    assert_eq!(tp.connects_to(upstream.port(), 1).await, 1, "{}", tp.log_text());
}

// ===== Redis over TLS =====

/// `rediss://` with the private CA and a client certificate (Redis requires one): the
/// proxy stores its token there; the Redis client's bundled roots alone cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_trusts_the_private_ca_and_presents_the_client_certificate() {
    let pki = Pki::new();
    let Some(redis) = RedisServer::start_tls(&pki.server_cert_file, &pki.server_key_file, &pki.ca_file).await else {
        return;
    };
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[state]\nstore = \"redis\"\nredis_url = \"{}\"\nredis_prefix = \"corp\"\n\n{}\n{}\n{}",
        redis.tls_url(),
        pki.tls_toml(true),
        password_cred("g2a", &mock),
        route("/G2A/", &mock, Some("g2a"))
    );
    let p = start_proxy(&text).await;
    let http = client();
    wait_ready(&http, &format!("http://{}/readyz", p.admin_addr), Duration::from_secs(10)).await;
    assert_eq!(http.get(format!("http://{}/G2A/x", p.proxy_addr)).send().await.unwrap().status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while redis.get("corp:token:g2a").await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the token was stored over rediss://");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.stop().await;
    let _ = dir;

    let bundled_only = RedisStore::connect(&Secret::new(redis.tls_url()), "corp", None).unwrap();
    assert!(bundled_only.ping().await.is_err(), "a private CA's server is not trusted by the bundled roots alone");
}

/// A reload that changes `[tls]` under `rediss://` — the Redis server moved to a new
/// corporate CA and wants a client certificate from it — is applied, not refused: the
/// Redis connections are rebuilt with the new roots and client certificate, and the
/// next renewal is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_new_ca_and_client_certificate_reconnects_rediss() {
    let (old, new) = (Pki::new(), Pki::new());
    let Some(mut redis) = RedisServer::start_tls(&old.server_cert_file, &old.server_key_file, &old.ca_file).await
    else {
        return;
    };
    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let url = redis.tls_url();
    let config = |pki: &Pki| {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[state]\nstore = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"corp\"\n\n{}\n{}\n{}",
            pki.tls_toml(true),
            password_cred("g2a", &mock),
            route("/G2A/", &mock, Some("g2a"))
        )
    };
    let p = start_proxy(&config(&old)).await;
    let http = client();
    wait_ready(&http, &format!("http://{}/readyz", p.admin_addr), Duration::from_secs(10)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while redis.get("corp:token:g2a").await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the token was stored over rediss://");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The server moves to the new PKI (its files rewritten; it comes back empty).
    for (from, to) in [
        (&new.server_cert_file, &old.server_cert_file),
        (&new.server_key_file, &old.server_key_file),
        (&new.ca_file, &old.ca_file),
    ] {
        std::fs::copy(from, to).unwrap();
    }
    redis.restart().await;
    p.core
        .reload(Config::parse("reload.toml", &config(&new)).unwrap(), goto_auth_proxy::ReloadTrigger::Signal)
        .await
        .expect("a [tls] change under rediss:// is applied");
    let refreshed = http.post(format!("http://{}/refresh/g2a", p.admin_addr)).send().await.unwrap();
    assert_eq!(refreshed.status(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while redis.get("corp:token:g2a").await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewal was stored with the new CA and client certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.stop().await;
}

// ===== check =====

/// `check` counts the roots of each source, shows the client certificate and the proxy
/// (credentials as `***`); a bad PEM file or proxy variable stops it (exit 64) naming
/// the key, file and line, or the variable.
#[test]
fn check_counts_roots_per_source_and_hides_the_proxy_credentials() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let config = |proxy: &str, tls: &str| {
        let text =
            format!("[proxy]\n{proxy}\n\n{tls}\n[[routes]]\nprefix = \"/\"\nupstream = \"https://api.getgo.com\"\n");
        write_config(dir.path(), "check.toml", &text)
    };
    let check = |path: &Path, env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "--config"]).arg(path);
        for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        let out = cmd.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };

    let path = config("outbound_proxy = \"http://alice:SECRET-pw@proxy.corp.example:3128\"", &pki.tls_toml(true));
    let (code, out) = check(&path, &[("NO_PROXY", ".corp.example,10.0.0.0/8")]);
    assert_eq!(code, Some(0), "{out}");
    let ca = pki.ca_file.display();
    assert!(out.contains("outbound TLS roots: bundled ") && out.contains(&format!("ca_file {ca} 1")), "{out}");
    assert!(out.contains(&format!("client certificate: {} (key [redacted])", pki.client_cert_file.display())), "{out}");
    assert!(out.contains("outbound proxy: http://***@proxy.corp.example:3128 (proxy.outbound_proxy)"), "{out}");
    assert!(out.contains("NO_PROXY): corp.example and its subdomains, 10.0.0.0/8"), "{out}");
    let key = std::fs::read_to_string(&pki.client_key_file).unwrap();
    assert!(!out.contains("SECRET") && !out.contains(key.lines().nth(1).unwrap()), "{out}");

    let path = config("", "[tls]\nsystem_roots = false\n");
    let (code, out) = check(&path, &[("HTTPS_PROXY", "proxy.corp.example:3128")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("system off (tls.system_roots = false), ca_file none"), "{out}");
    assert!(out.contains("http://proxy.corp.example:3128 (HTTPS_PROXY) for https:// destinations except loopback"));

    let (code, out) = check(&path, &[("HTTPS_PROXY", "socks5://bob:SECRET-pw@proxy:1080")]);
    assert_eq!(code, Some(64), "{out}");
    assert!(out.contains("environment variable HTTPS_PROXY: must be an http:// URL") && !out.contains("SECRET"));

    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let path = config("", &format!("[tls]\nca_file = {:?}\n", bad.display().to_string()));
    let (code, out) = check(&path, &[]);
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains(&format!("check.toml:5: tls.ca_file: {}: is not a PEM certificate file", bad.display())),
        "{out}"
    );
}

// ===== Redis Sentinel over TLS =====

/// `redis-cli --tls` against `port`, trusting the test CA: one command's answer.
fn tls_cli(pki: &Pki, port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert", &pki.ca_file.display().to_string(), "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sentinels, master and replica that speak TLS only (`rediss://`, the private CA in
/// `[tls]`): the proxy finds the master through the sentinels, stores there, follows a
/// failover (master killed), and a replica started afterwards takes the token stored on
/// the new master up without a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_is_followed_through_a_failover() {
    for p in ["redis-server", "redis-sentinel", "redis-cli"] {
        if std::process::Command::new(p).arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "{p} is not installed");
            return;
        }
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let tls = |port: u16| -> Vec<String> {
        let mut a: Vec<String> = ["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (flag, f) in [
            ("--tls-cert-file", &pki.server_cert_file),
            ("--tls-key-file", &pki.server_key_file),
            ("--tls-ca-cert-file", &pki.ca_file),
        ] {
            a.push(flag.into());
            a.push(f.display().to_string());
        }
        a.extend(
            ["--tls-auth-clients", "no", "--tls-replication", "yes", "--save", "", "--appendonly", "no"]
                .map(String::from),
        );
        a.extend(["--repl-diskless-sync-delay", "0"].map(String::from));
        a
    };
    let spawn = |program: &str, args: &[String], sub: &str| {
        let d = dir.path().join(sub);
        std::fs::create_dir_all(&d).unwrap();
        std::process::Command::new(program)
            .args(args)
            .current_dir(&d)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    struct Killed(Vec<std::process::Child>);
    impl Drop for Killed {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let (mport, rport) = (free_port(), free_port());
    let mut procs = Killed(vec![spawn("redis-server", &tls(mport), "master")]);
    let mut replica_args = tls(rport);
    replica_args.extend(["--replicaof".into(), "127.0.0.1".into(), mport.to_string()]);
    procs.0.push(spawn("redis-server", &replica_args, "replica"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !tls_cli(&pki, rport, &["INFO", "replication"]).contains("master_link_status:up") {
        assert!(tokio::time::Instant::now() < deadline, "the replica did not sync over TLS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sentinel_ports = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let d = dir.path().join(format!("s{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let conf = d.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port 0\ntls-port {port}\nbind 127.0.0.1\ndir {}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-auth-clients no\ntls-replication yes\nsentinel monitor gapmaster 127.0.0.1 {mport} 2\n\
                 sentinel down-after-milliseconds gapmaster 2000\nsentinel failover-timeout gapmaster 5000\n",
                d.display(),
                pki.server_cert_file.display(),
                pki.server_key_file.display(),
                pki.ca_file.display()
            ),
        )
        .unwrap();
        procs.0.push(spawn("redis-sentinel", &[conf.display().to_string()], &format!("s{i}")));
        sentinel_ports.push(port);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = sentinel_ports.iter().all(|p| {
            let replicas = tls_cli(&pki, *p, &["SENTINEL", "REPLICAS", "gapmaster"]);
            let peers = tls_cli(&pki, *p, &["SENTINEL", "SENTINELS", "gapmaster"]);
            replicas.contains(&rport.to_string()) && peers.matches("name").count() == 2
        });
        if ready {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the sentinels did not find each other over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mock = MockGoto::start(MockOptions::default()).await.unwrap();
    let urls: Vec<String> = sentinel_ports.iter().map(|p| format!("\"rediss://127.0.0.1:{p}\"")).collect();
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntoken_wait = \"5s\"\n\n[state]\nstore = \"redis\"\nredis_sentinels = [{}]\nredis_master = \"gapmaster\"\nredis_prefix = \"tls\"\n\n{}\n{}\n{}",
        urls.join(", "),
        pki.tls_toml(false),
        password_cred("g2a", &mock),
        route("/", &mock, Some("g2a"))
    );
    let http = client();
    let a = start_proxy(&text).await;
    wait_ready(&http, &format!("http://{}/readyz", a.admin_addr), Duration::from_secs(10)).await;
    assert_eq!(http.get(format!("http://{}/x", a.proxy_addr)).send().await.unwrap().status(), 200);
    let stored = |port: u16| tls_cli(&pki, port, &["EXISTS", "tls:token:g2a"]).trim() == "1";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !stored(mport) {
        assert!(tokio::time::Instant::now() < deadline, "the token was not stored on the master over TLS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The master dies; the sentinels promote the replica.
    let _ = procs.0[0].kill();
    let _ = procs.0[0].wait();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !tls_cli(&pki, sentinel_ports[0], &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "gapmaster"])
        .contains(&rport.to_string())
    {
        assert!(tokio::time::Instant::now() < deadline, "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A renewal now goes to the new master, over TLS.
    let logins = mock.stats().password_logins;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http.post(format!("http://{}/refresh/g2a", a.admin_addr)).send().await.unwrap();
        if r.status().is_success() || r.status().is_redirection() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no renewal after the failover: {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stored(rport), "the renewal was not stored on the new master");
    // A reload that changes `[tls]` (now with a client certificate) is applied, not
    // refused, and the connections it rebuilds reach the new master.
    let with_client = text.replace(&pki.tls_toml(false), &pki.tls_toml(true));
    a.core
        .reload(Config::parse("reload.toml", &with_client).unwrap(), goto_auth_proxy::ReloadTrigger::Signal)
        .await
        .expect("a [tls] change under Sentinel is applied");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let version = tls_cli(&pki, rport, &["GET", "tls:token:g2a"]);
    loop {
        let r = http.post(format!("http://{}/refresh/g2a", a.admin_addr)).send().await.unwrap();
        if (r.status().is_success() || r.status().is_redirection())
            && tls_cli(&pki, rport, &["GET", "tls:token:g2a"]) != version
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no renewal stored after the [tls] reload: {}", r.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let calls = mock.stats().token_calls;
    let b = start_proxy(&text).await;
    wait_ready(&http, &format!("http://{}/readyz", b.admin_addr), Duration::from_secs(10)).await;
    assert_eq!(http.get(format!("http://{}/x", b.proxy_addr)).send().await.unwrap().status(), 200);
    assert_eq!(mock.stats().token_calls, calls, "the replica started after the failover called the token endpoint");
    assert!(mock.stats().password_logins <= logins + 1, "more than one login for the failover");
    b.stop().await;
    a.stop().await;
}
