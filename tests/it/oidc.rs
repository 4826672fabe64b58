//! Interoperability with a certified OpenID provider, panva's `oidc-provider` (npm,
//! installed into tests/oidc by scripts/install-test-deps.sh, run by
//! tests/oidc/provider.mjs): PKCE required, refresh tokens rotated on every use (a
//! replayed one revokes the grant), 4-second access tokens. The upstream is a loopback
//! server that checks every bearer token at the provider's introspection endpoint. The
//! proxy is the real binary. Without node or the package: skipped with a notice, except
//! on CI (`CI` set), where it fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// Access token lifetime at the provider.
const ACCESS_TTL: u64 = 4;

/// A client secret with every character RFC 6749's Basic encoding changes (a client
/// secret is printable ASCII, RFC 6749 Appendix A; the unit tests cover non-ASCII).
const SECRET: &str = "p+ss/w%rd:x=y&z a==";

/// The introspecting upstream's own client at the provider.
const RS_ID: &str = "resource-server";
const RS_SECRET: &str = "rs-secret";

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// One oidc-provider process; killed on drop.
struct Provider {
    child: Child,
    issuer: String,
    _dir: tempfile::TempDir,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Provider {
    /// Starts the provider with `clients` (plus the upstream's own). `None` (skip) when
    /// node or the package is missing and this is not CI.
    fn start(clients: Vec<Value>) -> Option<Provider> {
        let installed = oidc_dir().join("node_modules/oidc-provider/package.json").is_file();
        let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
        if !installed || !node {
            let why = if node { "oidc-provider is not installed in tests/oidc" } else { "node is not installed" };
            if std::env::var_os("CI").is_some() {
                panic!("{why} (scripts/install-test-deps.sh installs it)");
            }
            eprintln!("NOTICE: {why}; skipping this OpenID interoperability test (run scripts/install-test-deps.sh)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut clients = clients;
        clients.push(json!({
            "client_id": RS_ID, "client_secret": RS_SECRET, "redirect_uris": [],
            "grant_types": [], "response_types": [], "token_endpoint_auth_method": "client_secret_basic",
        }));
        let setup = dir.path().join("setup.json");
        std::fs::write(&setup, json!({ "access_ttl": ACCESS_TTL, "clients": clients }).to_string()).unwrap();
        let mut child = Command::new("node")
            .arg(oidc_dir().join("provider.mjs"))
            .arg(&setup)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("provider.log")).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let issuer = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["issuer"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("provider did not start: {line:?}"));
        Some(Provider { child, issuer, _dir: dir })
    }

    /// What the provider said on stderr (why it refused what it refused).
    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("provider.log")).unwrap_or_default()
    }

    /// Every token endpoint request so far: `{client, grant_type, status, error}`.
    async fn token_calls(&self, client_id: &str) -> Vec<Value> {
        let stats: Value =
            client().get(format!("{}/_test/stats", self.issuer)).send().await.unwrap().json().await.unwrap();
        stats["token_calls"].as_array().unwrap().iter().filter(|c| c["client"] == client_id).cloned().collect()
    }

    /// The provider's verdict on a token, as a resource server asks it.
    async fn introspect(&self, token: &str) -> Value {
        introspect(&client(), &self.issuer, token).await
    }
}

async fn introspect(http: &reqwest::Client, issuer: &str, token: &str) -> Value {
    http.post(format!("{issuer}/token/introspection"))
        .basic_auth(RS_ID, Some(RS_SECRET))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An authorization-code client at the provider, redirecting to `admin`'s `/callback`.
fn code_client(id: &str, method: &str, redirect: &str) -> Value {
    json!({
        "client_id": id, "client_secret": SECRET, "redirect_uris": [redirect],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": method,
    })
}

fn service_client(id: &str, method: &str) -> Value {
    json!({
        "client_id": id, "client_secret": SECRET, "redirect_uris": [], "response_types": [],
        "grant_types": ["client_credentials"], "token_endpoint_auth_method": method,
    })
}

/// The upstream: 200 for a bearer token the provider says is active, else 401. Counts
/// what it refused.
async fn upstream(issuer: String) -> (SocketAddr, Arc<AtomicU64>) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicU64::new(0));
    let counter = refused.clone();
    let http = client();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (issuer, http, counter) = (issuer.clone(), http.clone(), counter.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (issuer, http, counter) = (issuer.clone(), http.clone(), counter.clone());
                    async move {
                        let bearer = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "))
                            .map(str::to_string);
                        let active = match bearer {
                            Some(t) => introspect(&http, &issuer, &t).await["active"] == true,
                            None => false,
                        };
                        let res = if active {
                            hyper::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                        } else {
                            counter.fetch_add(1, Ordering::Relaxed);
                            let mut r =
                                hyper::Response::new(Full::new(Bytes::from_static(b"{\"error\":\"invalid_token\"}")));
                            *r.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                            r.headers_mut().insert(
                                "www-authenticate",
                                hyper::header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
                            );
                            r
                        };
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (addr, refused)
}

/// A loopback port free now (for an admin listener the provider must know beforehand).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// An authorization-code credential as a standard provider needs it.
fn code_cred(name: &str, p: &Provider, client_id: &str, client_auth: &str, redirect: &str) -> String {
    let iss = &p.issuer;
    format!(
        "[credentials.{name}]\ngrant = \"authorization_code\"\nclient_id = \"{client_id}\"\nclient_secret = {SECRET:?}\n\
         token_url = \"{iss}/token\"\nauthorize_url = \"{iss}/auth\"\nredirect_uri = \"{redirect}\"\n\
         scope = \"openid offline_access email\"\nauthorize_params = {{ prompt = \"consent\" }}\nclient_auth = \"{client_auth}\"\n"
    )
}

fn service_cred(name: &str, p: &Provider, client_id: &str, client_auth: &str) -> String {
    format!(
        "[credentials.{name}]\ngrant = \"client_credentials\"\nclient_id = \"{client_id}\"\nclient_secret = {SECRET:?}\n\
         token_url = \"{}/token\"\nclient_auth = \"{client_auth}\"\n",
        p.issuer
    )
}

fn route_to(prefix: &str, upstream: SocketAddr, credential: &str) -> String {
    format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{upstream}\"\ncredential = \"{credential}\"\nstrip_prefix = true\n")
}

fn proxy_config(dir: &Path, admin: SocketAddr, rest: &str) -> PathBuf {
    let text =
        config_text(dir, "", rest).replace("admin_listen = \"127.0.0.1:0\"", &format!("admin_listen = \"{admin}\""));
    write_config(dir, "oidc.toml", &text)
}

/// A browser without a person: follows redirects by hand from `url`, keeping the
/// provider's cookies, until an answer that is not a redirect, or a redirect to
/// `stop_at` (not followed). Returns the status, body and every URL visited.
async fn browse(url: &str, cookie_host: &str, stop_at: Option<&str>) -> (u16, String, Vec<String>) {
    let http = client();
    let mut jar: HashMap<String, String> = HashMap::new();
    let mut url = url.to_string();
    let mut visited = vec![url.clone()];
    for _ in 0..15 {
        let mut req = http.get(&url);
        if url.starts_with(cookie_host) && !jar.is_empty() {
            let cookies: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header("cookie", cookies.join("; "));
        }
        let r = req.send().await.unwrap();
        for c in r.headers().get_all("set-cookie") {
            let pair = c.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = pair.split_once('=') {
                if v.is_empty() {
                    jar.remove(k);
                } else {
                    jar.insert(k.to_string(), v.to_string());
                }
            }
        }
        if !r.status().is_redirection() {
            return (r.status().as_u16(), r.text().await.unwrap(), visited);
        }
        let location = r.headers()["location"].to_str().unwrap();
        url = url::Url::parse(&url).unwrap().join(location).unwrap().to_string();
        visited.push(url.clone());
        if stop_at.is_some_and(|s| url.starts_with(s)) {
            return (r.status().as_u16(), String::new(), visited);
        }
    }
    panic!("redirect loop: {visited:?}");
}

async fn tokens(http: &reqwest::Client, p: &Proc) -> Value {
    http.get(p.admin("/tokens")).send().await.unwrap().json().await.unwrap()
}

/// The refresh token the state file holds for `name` (plaintext store).
fn stored_refresh_token(dir: &Path, name: &str) -> String {
    let state: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    fn find(v: &Value, name: &str) -> Option<String> {
        match v {
            Value::Object(m) => m
                .get(name)
                .and_then(|c| c["refresh_token"].as_str().map(str::to_string))
                .or_else(|| m.values().find_map(|x| find(x, name))),
            _ => None,
        }
    }
    find(&state, name).unwrap_or_else(|| panic!("no refresh token for {name} in {state}"))
}

async fn wait_for(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Browser sign-in with PKCE through `/login`; a request loop across more than five
/// access-token lifetimes, every refresh rotating the refresh token; a restart that
/// needs no sign-in; an old refresh token replayed (the provider refuses it and revokes
/// the grant) → `needs_login`, and no further token calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_rotation_restart_and_a_revoked_grant() {
    let admin = free_port();
    let redirect = format!("http://{admin}/callback");
    let Some(provider) = Provider::start(vec![code_client("proxy-app", "client_secret_basic", &redirect)]) else {
        return;
    };
    let (up, refused) = upstream(provider.issuer.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let rest = format!(
        "{}\n{}",
        code_cred("app", &provider, "proxy-app", "basic_rfc6749", &redirect),
        route_to("/", up, "app")
    );
    let config = proxy_config(dir.path(), admin, &rest);
    let mut proxy = Proc::spawn(&config);
    let http = client();
    assert_eq!(http.get(proxy.url("/x")).send().await.unwrap().status(), 503, "not signed in yet");

    // The browser: /login → the provider (login, consent) → /callback.
    let (status, page, visited) = browse(&proxy.admin("/login/app"), &provider.issuer, None).await;
    assert_eq!(status, 200, "{page}\n{visited:#?}\n{}", provider.log());
    assert!(page.contains("signed in"), "{page}");
    let authorize = url::Url::parse(&visited[1]).unwrap();
    assert!(authorize.as_str().starts_with(&format!("{}/auth?", provider.issuer)), "{visited:?}");
    let q: HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!((q["code_challenge_method"].as_str(), q["prompt"].as_str()), ("S256", "consent"));
    let t = tokens(&http, &proxy).await;
    assert_eq!(t["app"]["state"], "valid", "{t}");
    assert_eq!(t["app"]["principal"], "jane@example.com", "the id_token's email: {t}");
    let first_refresh_token = stored_refresh_token(dir.path(), "app");

    // More than five access-token lifetimes of requests: every one answered 200.
    let until = tokio::time::Instant::now() + Duration::from_secs(5 * ACCESS_TTL + 1);
    let mut served = 0;
    while tokio::time::Instant::now() < until {
        let r = http.get(proxy.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200, "after {served} requests: {}", r.text().await.unwrap());
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused.load(Ordering::Relaxed), 0);
    let calls = provider.token_calls("proxy-app").await;
    let refreshes: Vec<&Value> = calls.iter().filter(|c| c["grant_type"] == "refresh_token").collect();
    assert!(refreshes.len() >= 5, "{calls:#?}");
    // Rotation on every use and no refusal: each refresh sent the newest refresh token
    // (a used one is refused, and would have revoked the grant).
    assert!(calls.iter().all(|c| c["status"] == 200), "{calls:#?}");
    // The proxy keeps renewing meanwhile: a rotation can fall between reading the store
    // and asking the provider (the provider has revoked the old token a moment before the
    // new one is written), so the stored token must be the live one again within moments.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let newest = loop {
        let stored = stored_refresh_token(dir.path(), "app");
        if provider.introspect(&stored).await["active"] == true {
            break stored;
        }
        assert!(tokio::time::Instant::now() < deadline, "the stored refresh token is not the live one");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(newest, first_refresh_token);
    assert_eq!(provider.introspect(&first_refresh_token).await["active"], false);

    // Restart: the stored tokens serve, no sign-in (no second code exchange).
    drop(proxy);
    proxy = Proc::spawn(&config);
    assert_eq!(http.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    let exchanges = |calls: &[Value]| calls.iter().filter(|c| c["grant_type"] == "authorization_code").count();
    assert_eq!(exchanges(&provider.token_calls("proxy-app").await), 1);

    // An old refresh token replayed (as a thief would): refused, and the provider
    // revokes the whole grant, the proxy's tokens with it.
    let replay = http
        .post(format!("{}/token", provider.issuer))
        .basic_auth("proxy-app", Some(url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>()))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", &first_refresh_token)])
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    assert_eq!(replay.json::<Value>().await.unwrap()["error"], "invalid_grant");
    let p = &proxy;
    wait_for("needs_login after the revocation", Duration::from_secs(15), async || {
        let _ = http.get(p.url("/x")).send().await;
        tokens(&http, p).await["app"]["state"] == "needs_login"
    })
    .await;
    let ready = http.get(proxy.admin("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("login"));
    let before = provider.token_calls("proxy-app").await.len();
    // Several retry periods with requests: not one more token call.
    for _ in 0..12 {
        let status = http.get(proxy.url("/x")).send().await.unwrap().status();
        assert!(status == 503 || status == 401, "{status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(provider.token_calls("proxy-app").await.len(), before, "token calls while waiting for a sign-in");
}

/// `goto-auth-proxy login` with the redirected address pasted (nobody serves the
/// redirect URI), `client_auth = "post"`; then `token` prints a token the provider
/// says is active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_command_with_a_pasted_redirect_url() {
    let nobody = free_port();
    let redirect = format!("http://{nobody}/done");
    let Some(provider) = Provider::start(vec![code_client("proxy-post", "client_secret_post", &redirect)]) else {
        return;
    };
    let (up, _) = upstream(provider.issuer.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let rest =
        format!("{}\n{}", code_cred("app", &provider, "proxy-post", "post", &redirect), route_to("/", up, "app"));
    let config = proxy_config(dir.path(), free_port(), &rest);
    let (child, stdout, url) = spawn_login(&config, &["login", "--credential", "app"], true);
    let (_, _, visited) = browse(url.trim(), &provider.issuer, Some(&redirect)).await;
    let landed = visited.last().unwrap();
    assert!(landed.starts_with(&redirect) && landed.contains("code="), "{visited:#?}\n{}", provider.log());
    let (status, rest) = paste_login(child, stdout, landed);
    assert!(status.success() && rest.contains("Signed in"), "{status:?} {rest}");

    let out = Command::new(BIN).args(["token", "--credential", "app", "--config"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(provider.introspect(&token).await["active"], true);
    let calls = provider.token_calls("proxy-post").await;
    assert!(calls.len() == 1 && calls[0]["status"] == 200, "{calls:#?}");
}

/// Client credentials, and the three `client_auth` modes with a secret full of special
/// characters: GoTo's raw Basic is refused by a standard server, RFC 6749's Basic and
/// the form body work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_in_each_client_auth_mode() {
    let Some(provider) = Provider::start(vec![
        service_client("svc-basic", "client_secret_basic"),
        service_client("svc-post", "client_secret_post"),
    ]) else {
        return;
    };
    let (up, _) = upstream(provider.issuer.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let rest = [
        service_cred("raw", &provider, "svc-basic", "basic"),
        service_cred("rfc", &provider, "svc-basic", "basic_rfc6749"),
        service_cred("post", &provider, "svc-post", "post"),
        route_to("/raw/", up, "raw"),
        route_to("/rfc/", up, "rfc"),
        route_to("/post/", up, "post"),
    ]
    .join("\n");
    let proxy = Proc::spawn(&proxy_config(dir.path(), free_port(), &rest));
    let http = client();
    for prefix in ["/rfc/", "/post/"] {
        let p = &proxy;
        let url = proxy.url(&format!("{prefix}x"));
        let ok = async || http.get(&url).send().await.unwrap().status() == 200;
        wait_for(&format!("{prefix}\n{}\n{}", provider.log(), tokens(&http, p).await), Duration::from_secs(10), ok)
            .await;
    }
    let r = http.get(proxy.url("/raw/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let t = tokens(&http, &proxy).await;
    assert_eq!(t["rfc"]["state"], "valid", "{t}");
    let raw = t["raw"]["last_error"].as_str().unwrap_or_default();
    assert!(raw.contains("invalid_client") || raw.contains("invalid_request"), "{t}");
    let raw_calls = provider.token_calls("svc-basic").await;
    assert!(raw_calls.iter().any(|c| c["status"] == 200), "{raw_calls:#?}");
    assert!(raw_calls.iter().any(|c| c["status"] != 200), "{raw_calls:#?}");
    assert!(!proxy.log_text().contains("w%rd"), "the secret never shows in the log");
}
