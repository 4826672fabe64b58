//! The drop-in examples work as shipped: every config in `config/` passes `check`, the
//! shell and Python scripts and the Postman collection run against a demo proxy, the
//! Kubernetes manifests parse and carry their probes and hardening (their embedded
//! configs pass `check`, their probe commands answer), the systemd unit verifies, the
//! Dockerfile's health check answers, and the binary needs nothing the runtime image
//! lacks. The manual (the README and `docs/`) is held to the repository and the code:
//! every path it names exists, every link resolves, every command line running the
//! binary parses, every TOML example passes `check`, its pages are listed and chained in
//! reading order, and it names every config key, error code and only metrics that exist.
//!
//! Tools that may be missing on a developer's machine (newman, PyYAML, systemd-analyze)
//! make their test print a notice and pass; under CI (`CI` set), where
//! `scripts/install-test-deps.sh` installs them, a missing newman or PyYAML fails.

// Test and bench code may unwrap, expect and print (the house lints in Cargo.toml are
// for the product).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use goto_auth_proxy::testing::Demo;
use tokio::process::Command;

/// The binary under test, built by cargo for this test run.
const BIN: &str = env!("CARGO_BIN_EXE_goto-auth-proxy");
/// The organizer key of the demo's mock user: proof the proxy filled `{organizerKey}` in.
const ORGANIZER_KEY: &str = "8439885694023999999";
/// The config files `config/` must hold (more are welcome, and are checked too).
const EXPECTED_CONFIGS: &[&str] = &[
    "goto-auth-proxy.toml",
    "authorization-code.toml",
    "direct-login.toml",
    "personal-access-token.toml",
    "client-credentials.toml",
    "static.toml",
    "two-products.toml",
];
/// Longest any child process may take before the test gives up on it.
const CHILD_TIMEOUT: Duration = Duration::from_secs(180);

// ===== helpers =====

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The executable `name` on PATH, if any.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Whether a tool the test needs is there. Missing: a notice and `false` on a
/// developer's machine; a failure under CI, which installs it.
fn tool_available(name: &str, present: bool, install_hint: &str) -> bool {
    if present {
        return true;
    }
    assert!(!in_ci(), "{name} is required under CI but missing: {install_hint}");
    eprintln!("NOTICE: {name} is not installed; skipping this check ({install_hint})");
    false
}

/// Runs `cmd` to completion (stdin closed), panicking if it cannot start or hangs.
async fn run(mut cmd: Command, what: &str) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    match tokio::time::timeout(CHILD_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{what}: cannot run: {e}"),
        Err(_) => panic!("{what}: still running after {CHILD_TIMEOUT:?}"),
    }
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_success(out: &Output, what: &str) {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "{what} failed with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status);
}

/// A running demo proxy (mock GoTo behind it) that is ready: every credential holds a token.
struct RunningDemo {
    demo: Demo,
    _state: tempfile::TempDir,
}

impl RunningDemo {
    async fn start() -> RunningDemo {
        let state = tempfile::tempdir().expect("tempdir");
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let demo = goto_auth_proxy::testing::start_demo(any, any, state.path()).await.expect("demo starts");
        let ready = format!("http://{}/readyz", demo.running.admin_addr);
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        loop {
            match client.get(&ready).send().await {
                Ok(r) if r.status().is_success() => break,
                other => {
                    let why = match other {
                        Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                        Err(e) => e.to_string(),
                    };
                    assert!(Instant::now() < deadline, "demo proxy not ready after 20 s: {why}");
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
        RunningDemo { demo, _state: state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.demo.running.proxy_addr)
    }

    fn admin_port(&self) -> u16 {
        self.demo.running.admin_addr.port()
    }

    async fn stop(self) {
        self.demo.running.stop().await;
    }
}

// ===== configs and `check` =====

/// The part of a TOML line before a comment (a `#` outside double quotes).
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Every `{ KIND = "VALUE" }` secret reference (KIND `env` or `file`) in the active
/// (uncommented) lines, with the key it is assigned to.
fn secret_refs(toml: &str, kind: &str) -> Vec<(String, String)> {
    let needle = format!("{kind} = \"");
    let mut refs = Vec::new();
    for line in toml.lines() {
        let line = strip_comment(line);
        let Some(start) = line.find(&needle) else { continue };
        if !line[..start].trim_end().ends_with('{') {
            continue;
        }
        let rest = &line[start + needle.len()..];
        let Some(end) = rest.find('"') else { continue };
        let key = line.split('=').next().unwrap_or("").trim().to_string();
        refs.push((key, rest[..end].to_string()));
    }
    refs
}

/// The paths of the active `ca_file = "…"` and `client_cert = "…"` lines (`[tls]`).
fn tls_paths(toml: &str) -> Vec<String> {
    toml.lines()
        .map(strip_comment)
        .filter(|l| matches!(l.split('=').next().map(str::trim), Some("ca_file" | "client_cert")))
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .collect()
}

/// A dummy secret for `key` that `check` accepts, and the part of it that must never be
/// printed: a PEM key for `tls.client_key` (the certificate's, see [`check_config`]), a
/// proxy URL for `outbound_proxy` and a Redis URL for `redis_sentinels`/`redis_cluster`
/// (their password), else the dummy itself.
fn dummy_secret(key: &str, dummy: String, client_key: &str) -> (String, String) {
    match key {
        "client_key" => (client_key.to_string(), client_key.lines().nth(1).unwrap_or_default().to_string()),
        "outbound_proxy" => (format!("http://dummy-user:{dummy}@proxy.corp.example:3128"), dummy),
        "redis_sentinels" | "redis_cluster" => (format!("redis://:{dummy}@redis.example:26379/0"), dummy),
        _ => (dummy.clone(), dummy),
    }
}

/// Runs `goto-auth-proxy check` on `toml` (named `label` in messages) with every env
/// secret set to a recognisable dummy and every file secret pointed at a temp file
/// holding one, and `[tls]` files (`ca_file`, `client_cert`) pointed at a certificate
/// made here (whose key is the dummy `client_key`); asserts it passes and that no secret
/// value appears in its output.
async fn check_config(label: &str, toml: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut toml = toml.to_string();
    let mut secrets: Vec<String> = Vec::new();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path()).env_remove("GOTO_AUTH_PROXY_CONFIG").env_remove("RUST_LOG");
    for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"] {
        cmd.env_remove(var);
    }
    let tls_stand_in = rcgen::generate_simple_self_signed(vec!["corp".to_string()]).expect("certificate");
    let client_key = tls_stand_in.signing_key.serialize_pem();
    for (i, path) in tls_paths(&toml).into_iter().enumerate() {
        let file = dir.path().join(format!("tls-{i}.pem"));
        std::fs::write(&file, tls_stand_in.cert.pem()).expect("write certificate");
        toml = toml.replace(&format!("\"{path}\""), &format!("{:?}", file.display().to_string()));
    }

    for (key, var) in secret_refs(&toml, "env") {
        // A state encryption key must be base64 of 32 bytes to pass `check`.
        let (value, secret) = if key == "encryption_keys" || var.contains("STATE_KEY") {
            use base64::Engine as _;
            let k = base64::engine::general_purpose::STANDARD.encode([0xa5; 32]);
            (k.clone(), k)
        } else if key == "webhook" {
            // A `[[notify]]` webhook must be an http(s) URL to pass `check`.
            let url = format!("https://hooks.example/services/dummy-{}-5eCr3t", var.to_ascii_lowercase());
            (url.clone(), url)
        } else {
            dummy_secret(&key, format!("dummy-{}-5eCr3t", var.to_ascii_lowercase()), &client_key)
        };
        if key != "client_id" {
            secrets.push(secret);
        }
        cmd.env(var, value);
    }
    let file_refs = secret_refs(&toml, "file");
    for (i, (key, path)) in file_refs.into_iter().enumerate() {
        // A state encryption key must be base64 of 32 bytes to pass `check`.
        let (value, secret) = if key == "encryption_keys" {
            use base64::Engine as _;
            let k = base64::engine::general_purpose::STANDARD.encode([u8::try_from(i).unwrap_or(0) ^ 0x5e; 32]);
            (k.clone(), k)
        } else {
            dummy_secret(&key, format!("dummy-file-{i}-{key}-5eCr3t"), &client_key)
        };
        let file = dir.path().join(format!("secret-{i}"));
        std::fs::write(&file, format!("{value}\n")).expect("write secret file");
        toml = toml.replace(&format!("\"{path}\""), &format!("{:?}", file.display().to_string()));
        if key != "client_id" {
            secrets.push(secret);
        }
    }
    let config = dir.path().join("config.toml");
    std::fs::write(&config, &toml).expect("write config");
    cmd.arg("check").arg("--config").arg(&config);

    let out = run(cmd, &format!("check {label}")).await;
    assert_success(&out, &format!("goto-auth-proxy check on {label}"));
    let (stdout, stderr) = text(&out);
    for s in &secrets {
        assert!(!stdout.contains(s) && !stderr.contains(s), "check on {label} printed a secret value {s:?}:\n{stdout}");
    }
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_config_passes_check_without_leaking_secrets() {
    let dir = repo().join("config");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("config/ exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    for expected in EXPECTED_CONFIGS {
        assert!(names.iter().any(|n| n == expected), "config/{expected} is missing (found {names:?})");
    }
    for name in &names {
        let toml = read(&dir.join(name));
        assert!(toml.trim_start().starts_with('#'), "config/{name} should open with a comment saying what it is");
        assert!(
            secret_refs(&toml, "env").iter().any(|(k, _)| k != "client_id"),
            "config/{name} should take its secrets from the environment"
        );
        check_config(&format!("config/{name}"), &toml).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_config_path_is_the_two_product_example() {
    let toml = read(&repo().join("config/goto-auth-proxy.toml"));
    let mut cmd = Command::new(BIN);
    cmd.current_dir(repo()).env_remove("GOTO_AUTH_PROXY_CONFIG").arg("check");
    for (_, var) in secret_refs(&toml, "env") {
        cmd.env(&var, format!("dummy-{var}"));
    }
    let out = run(cmd, "check (default path)").await;
    assert_success(&out, "goto-auth-proxy check with no --config");
    let (stdout, _) = text(&out);
    assert!(stdout.contains("config/goto-auth-proxy.toml"), "{stdout}");
    for want in ["authorization_code", "password", "/G2A/"] {
        assert!(stdout.contains(want), "default config should show {want:?}:\n{stdout}");
    }
}

// ===== scripts =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_list_webinars_through_the_demo_proxy() {
    let demo = RunningDemo::start().await;
    let scripts = repo().join("examples/scripts");
    let mut runners: Vec<(&str, Vec<String>)> =
        vec![("list-webinars.sh", vec!["bash".into(), scripts.join("list-webinars.sh").display().to_string()])];
    if tool_available("python3", which("python3").is_some(), "apt-get install python3") {
        runners
            .push(("list_webinars.py", vec!["python3".into(), scripts.join("list_webinars.py").display().to_string()]));
    }
    for (name, argv) in &runners {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env("GOTO_AUTH_PROXY_URL", demo.url());
        let out = run(cmd, name).await;
        assert_success(&out, name);
        let (stdout, _) = text(&out);
        assert!(stdout.contains(ORGANIZER_KEY), "{name} printed no organizer key:\n{stdout}");
        let v: serde_json::Value =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{name} printed no JSON ({e}):\n{stdout}"));
        let path = v["path"].as_str().unwrap_or_default();
        assert!(path.contains(ORGANIZER_KEY) && !path.contains("organizerKey"), "{name}: path {path:?}");
        // Numbers pass through byte for byte: the key beyond 2^53 is printed exactly.
        assert!(stdout.contains(&format!("\"webinarKey\":{ORGANIZER_KEY}")), "{name}:\n{stdout}");

        // An HTTP error (a plain 403 from "GoTo") is a non-zero exit.
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env("GOTO_AUTH_PROXY_URL", format!("{}/forbidden", demo.url()));
        let out = run(cmd, name).await;
        assert!(!out.status.success(), "{name} exited 0 on a 403:\n{:?}", text(&out));
    }
    demo.stop().await;
}

// ===== Postman =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postman_collection_passes_under_newman() {
    let dir = repo().join("examples/postman");
    let collection_path = dir.join("goto-auth-proxy.postman_collection.json");
    let collection: serde_json::Value = serde_json::from_str(&read(&collection_path)).expect("collection is JSON");
    assert_eq!(
        collection["info"]["schema"], "https://schema.getpostman.com/json/collection/v2.1.0/collection.json",
        "collection must use the Postman v2.1 schema"
    );
    let raw = read(&collection_path);
    assert!(!raw.contains("\"auth\""), "the collection must carry no auth settings");
    for item in collection["item"].as_array().into_iter().flatten() {
        for h in item["request"]["header"].as_array().into_iter().flatten() {
            let name = h["key"].as_str().unwrap_or_default();
            assert!(!name.eq_ignore_ascii_case("authorization"), "{}: sends its own Authorization", item["name"]);
        }
    }
    let env: serde_json::Value = serde_json::from_str(&read(&dir.join("goto-auth-proxy.postman_environment.json")))
        .expect("environment is JSON");
    let var = |key: &str| env["values"].as_array().and_then(|v| v.iter().find(|x| x["key"] == key)).cloned();
    assert_eq!(var("baseUrl").map(|b| b["value"].clone()), Some("http://127.0.0.1:8080".into()));
    // Empty by default: the single-credential use is unchanged.
    assert_eq!(var("account").map(|b| b["value"].clone()), Some("".into()));
    for item in collection["item"].as_array().into_iter().flatten() {
        let headers = item["request"]["header"].as_array().cloned().unwrap_or_default();
        let account =
            headers.iter().find(|h| h["key"].as_str().is_some_and(|k| k.eq_ignore_ascii_case("x-goto-account")));
        assert_eq!(
            account.map(|h| h["value"].clone()),
            Some("{{account}}".into()),
            "{}: no X-GoTo-Account",
            item["name"]
        );
    }
    let requests = collection["item"].as_array().map(Vec::len).unwrap_or(0);
    assert!(requests >= 5, "expected at least 5 requests, found {requests}");

    if !tool_available("newman", which("newman").is_some(), "run scripts/install-test-deps.sh (npm install -g newman)")
    {
        return;
    }
    let demo = RunningDemo::start().await;
    let single = newman(&dir, &[format!("baseUrl={}", demo.url())]).await;
    // The demo's account credential, once per person: `account` picks who answers.
    let mut people = Vec::new();
    for (name, user) in goto_auth_proxy::testing::people() {
        let before = demo.demo.mock.api_targets().len();
        let vars = [format!("baseUrl={}/people", demo.url()), format!("account={name}")];
        let run = newman(&dir, &vars).await;
        people.push((name, user, run, demo.demo.mock.api_targets().split_off(before)));
    }
    demo.stop().await;
    for (what, (out, stats)) in
        std::iter::once(("newman run", &single)).chain(people.iter().map(|(name, _, run, _)| (*name, run)))
    {
        assert_success(out, what);
        let stats = &stats["run"]["stats"];
        assert_eq!(stats["requests"]["total"].as_u64(), Some(requests as u64), "{what}: {stats}");
        assert_eq!(stats["requests"]["failed"].as_u64(), Some(0), "{what}: {stats}");
        assert!(stats["assertions"]["total"].as_u64().unwrap_or(0) >= requests as u64, "{what}: {stats}");
        assert_eq!(stats["assertions"]["failed"].as_u64(), Some(0), "{what}: {stats}");
    }
    // The mock answers a token on another organizer's path 403, and the proxy fills in
    // `{organizerKey}` from the chosen account: the webinars call went out with this
    // person's key, and no other person's key went out during their run.
    for (name, user, _, targets) in &people {
        let webinars = format!("/G2W/rest/v2/organizers/{}/webinars", user.organizer_key);
        assert!(
            targets.iter().any(|t| t.starts_with(&webinars)),
            "{name}'s run did not list their webinars: {targets:?}"
        );
        for (other, them, _, _) in &people {
            if other != name {
                let theirs = format!("/{}/", them.organizer_key);
                assert!(!targets.iter().any(|t| t.contains(&theirs)), "{name}'s run reached {other}: {targets:?}");
            }
        }
    }
}

/// Runs the collection under newman with its environment and `vars` (`--env-var`); the
/// run's output and its JSON report.
async fn newman(dir: &Path, vars: &[String]) -> (Output, serde_json::Value) {
    let report_dir = tempfile::tempdir().expect("tempdir");
    let report = report_dir.path().join("newman.json");
    let mut cmd = Command::new("newman");
    cmd.current_dir(dir)
        .args(["run", "goto-auth-proxy.postman_collection.json"])
        .args(["--environment", "goto-auth-proxy.postman_environment.json"]);
    for v in vars {
        cmd.arg("--env-var").arg(v);
    }
    cmd.args(["--reporters", "cli,json", "--color", "off", "--disable-unicode", "--reporter-json-export"]).arg(&report);
    let out = run(cmd, "newman").await;
    let stats = std::fs::read_to_string(&report).ok().and_then(|r| serde_json::from_str(&r).ok());
    (out, stats.unwrap_or_default())
}

// ===== Kubernetes =====

async fn python_has_yaml() -> bool {
    if which("python3").is_none() {
        return false;
    }
    let mut cmd = Command::new("python3");
    cmd.args(["-c", "import yaml"]);
    run(cmd, "python3 -c 'import yaml'").await.status.success()
}

/// Parses the manifests with PyYAML and checks the proxy containers; prints JSON:
/// `{"errors": [...], "configs": [{"name", "toml"}], "probes": [{"name", "command"}]}`.
const K8S_CHECK: &str = r#"
import json, sys, yaml
out = {"errors": [], "configs": [], "probes": []}
def err(msg): out["errors"].append(msg)
for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    proxies = 0
    for d in docs:
        kind, name = d.get("kind"), (d.get("metadata") or {}).get("name")
        if kind == "ConfigMap":
            for k, v in (d.get("data") or {}).items():
                if k.endswith(".toml"):
                    out["configs"].append({"name": f"{path}: ConfigMap {name} {k}", "toml": v})
        if kind not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        pod = d["spec"]["template"]["spec"]
        psc = pod.get("securityContext") or {}
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
            if "goto-auth-proxy" not in c.get("image", ""):
                continue
            proxies += 1
            where = f"{path}: {kind} {name} container {c['name']}"
            sc = c.get("securityContext") or {}
            eff = lambda k: sc.get(k, psc.get(k))
            if eff("runAsNonRoot") is not True: err(f"{where}: runAsNonRoot is not true")
            if eff("runAsUser") != 10001: err(f"{where}: runAsUser is not 10001")
            if sc.get("readOnlyRootFilesystem") is not True: err(f"{where}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False: err(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []): err(f"{where}: capabilities not dropped")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}): err(f"{where}: no resources.{part}.{r}")
            for probe, want in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                p = c.get(probe)
                if not p:
                    err(f"{where}: no {probe}")
                elif "httpGet" in p:
                    if p["httpGet"].get("path") != want or p["httpGet"].get("port") not in (9901, "admin"):
                        err(f"{where}: {probe} is not GET {want} on 9901")
                elif "exec" in p:
                    cmd = p["exec"]["command"]
                    if want not in " ".join(cmd): err(f"{where}: {probe} does not ask {want}")
                    out["probes"].append({"name": f"{where} {probe}", "command": cmd})
                else:
                    err(f"{where}: {probe} is neither httpGet nor exec")
            mounted = {m["name"] for m in c.get("volumeMounts") or []}
            if not any("secret" in volumes.get(m, {}) for m in mounted):
                err(f"{where}: no Secret mounted as files")
    if proxies == 0:
        err(f"{path}: no goto-auth-proxy container")
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_manifests_parse_and_their_configs_and_probes_work() {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for want in ["sidecar.yaml", "redis-replicas.yaml"] {
        assert!(files.iter().any(|f| f.ends_with(want)), "deploy/kubernetes/{want} is missing");
    }
    for f in &files {
        let y = read(f);
        for needle in [
            "readinessProbe",
            "/readyz",
            "livenessProbe",
            "/healthz",
            "runAsNonRoot: true",
            "readOnlyRootFilesystem: true",
        ] {
            assert!(y.contains(needle), "{} lacks {needle:?}", f.display());
        }
        // Rotation relies on the file watch: never turned off, and no `subPath` mount
        // (the kubelet never updates one in a running pod).
        for banned in ["watch_files = false", "subPath"] {
            assert!(!y.contains(banned), "{} has {banned:?}: rotated secrets would not apply", f.display());
        }
    }
    let redis = read(&dir.join("redis-replicas.yaml"));
    assert!(redis.contains("store = \"redis\"") && redis.contains("redis_url"), "redis-replicas.yaml");

    if !tool_available(
        "python3 with PyYAML",
        python_has_yaml().await,
        "run scripts/install-test-deps.sh (python3-yaml)",
    ) {
        return;
    }
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(K8S_CHECK).args(&files);
    let out = run(cmd, "python3 manifest check").await;
    assert_success(&out, "parsing deploy/kubernetes/*.yaml with PyYAML");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("manifest check prints JSON");
    let errors = report["errors"].as_array().cloned().unwrap_or_default();
    assert!(errors.is_empty(), "manifest problems:\n{}", serde_json::to_string_pretty(&errors).unwrap_or_default());

    // The configs the ConfigMaps hold pass `check` (file secrets pointed at temp files).
    let configs = report["configs"].as_array().cloned().unwrap_or_default();
    assert!(configs.len() >= files.len(), "expected a ConfigMap config per manifest: {configs:?}");
    for c in &configs {
        let name = c["name"].as_str().unwrap_or("?");
        let toml = c["toml"].as_str().unwrap_or_default();
        assert!(!secret_refs(toml, "file").is_empty(), "{name}: secrets should come from mounted files");
        check_config(name, toml).await;
    }

    // Exec probes talk to the admin listener on loopback: run them against a demo proxy.
    let probes = report["probes"].as_array().cloned().unwrap_or_default();
    if probes.is_empty() {
        return;
    }
    let demo = RunningDemo::start().await;
    for p in &probes {
        let name = p["name"].as_str().unwrap_or("?");
        let argv: Vec<String> = p["command"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str())
                    .map(|s| s.replace("/9901", &format!("/{}", demo.admin_port())))
                    .collect()
            })
            .unwrap_or_default();
        assert!(!argv.is_empty(), "{name}: empty command");
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        let out = run(cmd, name).await;
        assert_success(&out, &format!("probe {name} against a ready proxy"));
    }
    // … and they fail when nothing answers there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let p = &probes[0];
    let argv: Vec<String> = p["command"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str()).map(|s| s.replace("/9901", &format!("/{closed}"))).collect())
        .unwrap_or_default();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let out = run(cmd, "probe against a closed port").await;
    assert!(!out.status.success(), "a probe passed with nothing listening");
    demo.stop().await;
}

// ===== systemd =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_unit_is_hardened_and_verifies() {
    let dir = repo().join("deploy/systemd");
    let unit = read(&dir.join("goto-auth-proxy.service"));
    let lines: Vec<&str> = unit.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for want in [
        "DynamicUser=yes",
        "StateDirectory=goto-auth-proxy",
        "ConfigurationDirectory=goto-auth-proxy",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ExecStart=/usr/local/bin/goto-auth-proxy run --config /etc/goto-auth-proxy/goto-auth-proxy.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartPreventExitStatus=64",
    ] {
        assert!(lines.contains(&want), "the unit lacks {want:?}");
    }

    // Every LoadCredential= is read by the config, and every credential file the config
    // reads is loaded.
    let toml = read(&dir.join("goto-auth-proxy.toml"));
    let loaded: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .map(|l| l.split(':').next().unwrap_or("").to_string())
        .collect();
    assert!(!loaded.is_empty(), "the unit loads no credentials");
    let read_files: Vec<String> = secret_refs(&toml, "file").into_iter().map(|(_, p)| p).collect();
    for name in &loaded {
        let want = format!("/run/credentials/goto-auth-proxy.service/{name}");
        assert!(read_files.contains(&want), "the config does not read credential {name} ({want})");
    }
    for f in &read_files {
        let name = f.strip_prefix("/run/credentials/goto-auth-proxy.service/").unwrap_or(f);
        assert!(loaded.iter().any(|l| l == name), "the config reads {f}, which no LoadCredential= provides");
    }
    check_config("deploy/systemd/goto-auth-proxy.toml", &toml).await;

    if which("systemd-analyze").is_none() {
        eprintln!("NOTICE: systemd-analyze is not installed; the unit was not verified");
        return;
    }
    // Verify a copy whose ExecStart names a binary that exists here.
    let exec = if BIN.contains(char::is_whitespace) { "/bin/true" } else { BIN };
    let tmp = tempfile::tempdir().expect("tempdir");
    let copy = tmp.path().join("goto-auth-proxy.service");
    std::fs::write(&copy, unit.replace("ExecStart=/usr/local/bin/goto-auth-proxy", &format!("ExecStart={exec}")))
        .expect("write unit copy");
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").arg(&copy);
    let out = run(cmd, "systemd-analyze verify").await;
    assert_success(&out, "systemd-analyze verify");
    let (stdout, stderr) = text(&out);
    for bad in ["Unknown", "ignoring", "Invalid", "Failed", "not executable"] {
        assert!(!stderr.contains(bad) && !stdout.contains(bad), "systemd-analyze verify complained:\n{stdout}{stderr}");
    }
}

// ===== container image =====

/// The Dockerfile with `\`-continued lines joined.
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_is_small_non_root_and_its_healthcheck_answers() {
    let text = read(&repo().join("deploy/Dockerfile"));
    let ins = dockerfile_instructions(&text);
    let has = |prefix: &str| ins.iter().any(|i| i.starts_with(prefix));
    assert!(has("FROM rust:1-bookworm AS build"), "builder stage");
    assert!(ins.iter().any(|i| i.starts_with("RUN") && i.contains("cargo build --release --locked")), "release build");
    assert!(has("FROM debian:bookworm-slim"), "runtime stage");
    assert!(has("USER 10001"), "non-root fixed uid");
    assert!(has("EXPOSE 8080 9901"), "ports");
    assert!(
        has("VOLUME") && text.contains("/etc/goto-auth-proxy") && text.contains("/var/lib/goto-auth-proxy"),
        "volumes"
    );
    assert!(has("ENTRYPOINT [\"/usr/local/bin/goto-auth-proxy\""), "entrypoint");
    assert!(
        ins.iter().any(|i| i.contains("\"run\", \"--config\", \"/etc/goto-auth-proxy/goto-auth-proxy.toml\"")),
        "runs with the config under /etc"
    );
    let ignore = read(&repo().join(".dockerignore"));
    for want in ["target/", "state/", ".git"] {
        assert!(ignore.lines().any(|l| l.trim() == want), ".dockerignore lacks {want}");
    }

    // The HEALTHCHECK command (exec form) answers against a live admin listener.
    let hc = ins.iter().find(|i| i.starts_with("HEALTHCHECK")).expect("a HEALTHCHECK");
    let json = &hc[hc.find("CMD [").expect("exec-form CMD") + 4..];
    let argv: Vec<String> = serde_json::from_str(json).expect("HEALTHCHECK CMD is a JSON array");
    assert!(argv.join(" ").contains("/healthz"), "the health check asks /healthz");
    let demo = RunningDemo::start().await;
    let port = demo.admin_port();
    let argv: Vec<String> = argv.iter().map(|a| a.replace("/9901", &format!("/{port}"))).collect();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let out = run(cmd, "HEALTHCHECK command").await;
    demo.stop().await;
    assert_success(&out, "the Dockerfile's HEALTHCHECK against a running proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_needs_only_what_the_runtime_image_has() {
    if which("ldd").is_none() {
        eprintln!("NOTICE: ldd is not installed; runtime dependencies not checked");
        return;
    }
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("deploy/check-runtime-deps.sh")).arg(BIN);
    let out = run(cmd, "check-runtime-deps.sh").await;
    assert_success(&out, "deploy/check-runtime-deps.sh");
    let (stdout, _) = text(&out);
    assert!(stdout.contains("libc.so.6") && stdout.contains("ok:"), "{stdout}");
}

/// The manual: the README and every page of `docs/`, each with its repository path.
fn manual_pages() -> Vec<(String, String)> {
    let mut pages = vec![("README.md".to_string(), read(&repo().join("README.md")))];
    let mut docs: Vec<_> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    for p in docs {
        let name = format!("docs/{}", p.file_name().unwrap().to_string_lossy());
        pages.push((name, read(&p)));
    }
    pages
}

/// Every TOML example in the README is a config `check` accepts (file secrets and TLS
/// files pointed at temporary stand-ins), so the manual cannot drift from the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_toml_examples_pass_check() {
    let pages = manual_pages();
    let blocks: Vec<(&str, &str)> = pages
        .iter()
        .flat_map(|(name, text)| {
            text.split("```toml\n").skip(1).filter_map(|rest| rest.split("```").next()).map(move |b| (name.as_str(), b))
        })
        .collect();
    assert!(blocks.len() >= 4, "the manual has {} TOML examples", blocks.len());
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("cert");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("key");
    for (i, (page, block)) in blocks.iter().enumerate() {
        let toml = block
            .replace("/etc/goto-auth-proxy/tls/cert.pem", &cert_file.display().to_string())
            .replace("/etc/goto-auth-proxy/tls/key.pem", &key_file.display().to_string());
        check_config(&format!("{page} example {i}"), &toml).await;
    }
}

// ===== the README against the repository and the CLI =====

/// The lines of `text` inside fenced code blocks (`code`) or outside them, each with its
/// line number (1-based).
fn fenced_lines(text: &str, code: bool) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
        } else if inside == code {
            out.push((i + 1, line));
        }
    }
    out
}

/// Repository paths the README names: words starting with one of the top-level
/// directories (not inside a longer path or a URL), trailing punctuation dropped.
fn readme_repo_paths(readme: &str) -> Vec<(usize, String)> {
    const ROOTS: &[&str] =
        &["benches/", "crates/", "deploy/", "config/", "examples/", "scripts/", "docs/", "tests/", "src/", ".ci/"];
    let path_char = |c: char| c.is_ascii_alphanumeric() || "_.-/*".contains(c);
    let mut out = Vec::new();
    for (n, line) in readme.lines().enumerate() {
        for (i, _) in line.char_indices() {
            let rest = &line[i..];
            let Some(root) = ROOTS.iter().find(|r| rest.starts_with(*r)) else { continue };
            let before = line[..i].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || "_.-/$".contains(c)) {
                continue;
            }
            let end = rest.find(|c: char| !path_char(c)).unwrap_or(rest.len());
            let path = rest[..end].trim_end_matches(['.', ',', ':', ';']);
            if path.len() > root.len() || path == *root {
                out.push((n + 1, path.to_string()));
            }
        }
    }
    out
}

/// Whether `pattern` (a path, `*` matching within one name) names something in `repo`.
fn exists_in_repo(repo: &Path, pattern: &str) -> bool {
    if !pattern.contains('*') {
        return repo.join(pattern).exists();
    }
    let (dir, name) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    let (head, tail) = name.split_once('*').unwrap_or((name, ""));
    std::fs::read_dir(repo.join(dir)).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.len() >= head.len() + tail.len() && n.starts_with(head) && n.ends_with(tail)
        })
    })
}

/// Every repository path the README mentions exists (a removed script, a renamed
/// example or deploy file would otherwise go on being recommended).
#[test]
fn manual_paths_exist() {
    let mut found = 0;
    let mut missing: Vec<String> = Vec::new();
    for (page, text) in manual_pages() {
        let paths = readme_repo_paths(&text);
        found += paths.len();
        missing
            .extend(paths.iter().filter(|(_, p)| !exists_in_repo(&repo(), p)).map(|(n, p)| format!("{page}:{n}: {p}")));
    }
    assert!(found >= 20, "found only {found} paths in the manual");
    assert!(missing.is_empty(), "the manual names paths that do not exist:\n{}", missing.join("\n"));
}

/// Every repository path the code's comments, the manifests, the scripts and the deploy
/// and config examples name exists: a file moved in a restructuring leaves no comment or
/// `Cargo.toml` pointing at where it used to be.
#[test]
fn code_and_manifests_name_paths_that_exist() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                if !p.ends_with("target") && !p.ends_with("node_modules") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| ["rs", "toml", "sh", "yaml", "yml", "py"].iter().any(|k| x == *k))
                || p.file_name().is_some_and(|n| n == "run" || n == "Dockerfile")
            {
                out.push(p);
            }
        }
    }
    let repo = repo();
    let mut files = vec![repo.join("Cargo.toml"), repo.join(".ci/run")];
    for dir in ["src", "crates", "benches", "scripts", "deploy", "config", "tests"] {
        walk(&repo.join(dir), &mut files);
    }
    let (mut found, mut missing) = (0, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (n, p) in readme_repo_paths(&text) {
            found += 1;
            // Not checked: a path with a placeholder, and what the install script fetches.
            // A crate's own files name paths from that crate's directory.
            let home = file.ancestors().find(|d| d.join("Cargo.toml").exists()).unwrap_or(&repo);
            let installed = p.contains("node_modules");
            if !exists_in_repo(&repo, &p) && !exists_in_repo(home, &p) && !p.contains('{') && !installed {
                missing.push(format!("{}:{n}: {p}", file.strip_prefix(&repo).unwrap_or(file).display()));
            }
        }
    }
    assert!(found >= 50, "found only {found} paths");
    assert!(missing.is_empty(), "these name paths that do not exist:\n{}", missing.join("\n"));
}

/// Shell words of `line`, and the operators that separate commands (`;`, `&&`, `|`,
/// `&`, `(`, `)`) as words of their own; quotes kept out of the words, a `#` comment and
/// redirections dropped. Enough shell for the README's command lines.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    let flush = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(std::mem::take(word));
        }
    };
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => quote = Some(c),
            (None, '#') if word.is_empty() => break,
            (None, c) if c.is_whitespace() => flush(&mut word, &mut words),
            (None, ';' | '|' | '&' | '(' | ')') => {
                flush(&mut word, &mut words);
                while chars.peek().is_some_and(|n| "|&".contains(*n)) {
                    chars.next();
                }
                words.push(";".into());
            }
            (None, '>' | '<') => {
                // A redirection: drop it and its target (`2>` included).
                if word.chars().all(|d| d.is_ascii_digit()) {
                    word.clear();
                }
                flush(&mut word, &mut words);
                while chars.peek().is_some_and(|n| "&>".contains(*n)) {
                    chars.next();
                }
                while chars.peek().is_some_and(|n| n.is_whitespace()) {
                    chars.next();
                }
                while chars.peek().is_some_and(|n| !n.is_whitespace() && !";|&)".contains(*n)) {
                    chars.next();
                }
            }
            (None, c) => word.push(c),
        }
    }
    flush(&mut word, &mut words);
    words
}

/// The argument lists `line` runs `goto-auth-proxy` with: as a command (after a `$ `
/// prompt, variable assignments or a path to the binary), through `cargo run … --`, or
/// inside `$(…)`.
fn binary_invocations(line: &str) -> Vec<Vec<String>> {
    let mut lines = vec![line.trim_start().trim_start_matches("$ ").to_string()];
    let mut rest = line;
    while let Some(i) = rest.find("$(") {
        rest = &rest[i + 2..];
        lines.push(rest.split(')').next().unwrap_or("").to_string());
    }
    let mut out = Vec::new();
    for l in lines {
        for command in shell_words(&l).split(|w| w == ";") {
            let mut words = command.iter().skip_while(|w| w.contains('=') && !w.starts_with('-')).peekable();
            let Some(first) = words.next() else { continue };
            let args: Vec<String> = if first == "goto-auth-proxy" || first.ends_with("/goto-auth-proxy") {
                words.cloned().collect()
            } else if first == "cargo" && command.iter().any(|w| w == "run") {
                command.iter().skip_while(|w| *w != "--").skip(1).cloned().collect()
            } else {
                continue;
            };
            out.push(args);
        }
    }
    out
}

/// Every command line of the README that runs the binary (in code blocks, and inline
/// `goto-auth-proxy …` spans without placeholders) names subcommands and flags the CLI
/// accepts: run with `--help` appended, clap parses what comes before it and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_command_lines_parse() {
    let mut lines: Vec<(String, usize, String)> = Vec::new();
    for (page, text) in manual_pages() {
        lines.extend(fenced_lines(&text, true).into_iter().map(|(n, l)| (page.clone(), n, l.to_string())));
        for (n, line) in text.lines().enumerate() {
            for span in line.split('`').skip(1).step_by(2) {
                if span.starts_with("goto-auth-proxy ") && !span.contains(['[', '…', '<']) {
                    lines.push((page.clone(), n + 1, span.to_string()));
                }
            }
        }
    }
    let mut checked = 0;
    for (page, n, line) in &lines {
        for args in binary_invocations(line) {
            let mut cmd = Command::new(BIN);
            cmd.args(&args).arg("--help").env_remove("GOTO_AUTH_PROXY_CONFIG");
            let out = run(cmd, &format!("{page}:{n}")).await;
            let (_, stderr) = text(&out);
            assert!(
                out.status.success(),
                "{page}:{n}: `goto-auth-proxy {}` is not accepted by the CLI ({}):\n{stderr}",
                args.join(" "),
                out.status
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "found only {checked} command lines running the binary in the manual");
}

#[test]
fn shell_words_split_commands_and_drop_redirections() {
    assert_eq!(
        binary_invocations("(umask 077; goto-auth-proxy keygen > /etc/goto-auth-proxy/state.key)   # 32 random bytes"),
        vec![vec!["keygen".to_string()]]
    );
    assert_eq!(
        binary_invocations("$ goto-auth-proxy check --config bad.toml"),
        vec![vec!["check", "--config", "bad.toml"].into_iter().map(String::from).collect::<Vec<_>>()]
    );
    assert_eq!(binary_invocations("cargo run --release -- demo      # try it"), vec![vec!["demo".to_string()]]);
    assert_eq!(
        binary_invocations(r#"curl -H "Authorization: Bearer $(goto-auth-proxy token --credential goto)" https://x"#),
        vec![vec!["token", "--credential", "goto"].into_iter().map(String::from).collect::<Vec<_>>()]
    );
    assert_eq!(
        binary_invocations("GOTO_X=1 goto-auth-proxy run --config g2a.toml 2>&1 &"),
        vec![vec!["run", "--config", "g2a.toml"].into_iter().map(String::from).collect::<Vec<_>>()]
    );
    assert!(binary_invocations("systemctl reload goto-auth-proxy").is_empty());
    assert!(binary_invocations("docker build -f deploy/Dockerfile -t goto-auth-proxy .").is_empty());
    assert_eq!(
        readme_repo_paths("see `benches/load.sh`, deploy/kubernetes/*.yaml and https://x/docs/a, /etc/config/x."),
        vec![(1, "benches/load.sh".to_string()), (1, "deploy/kubernetes/*.yaml".to_string())]
    );
}

// ===== the manual: order, links, and what it must name =====

/// The anchor GitHub gives a heading: lower case, spaces to `-`, every character but
/// letters, digits, `-` and `_` dropped (`GoTo's quota` → `gotos-quota`).
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of `text`'s headings (outside code blocks).
fn anchors(text: &str) -> Vec<String> {
    fenced_lines(text, false)
        .into_iter()
        .filter_map(|(_, l)| l.strip_prefix('#').map(|h| heading_anchor(h.trim_start_matches('#'))))
        .collect()
}

/// Markdown link targets `[text](target)` in `text`'s prose, with their line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in fenced_lines(text, false) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            if let Some(end) = rest.find(')') {
                out.push((n, rest[..end].to_string()));
            }
        }
    }
    out
}

/// The README's "Manual" section: the numbered list of `docs/` pages, in reading order.
fn manual_order(readme: &str) -> Vec<String> {
    let section = readme.split("\n## Manual\n").nth(1).expect("the README has a \"## Manual\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut pages = Vec::new();
    for line in section.lines() {
        let Some((number, rest)) = line.split_once(". [") else { continue };
        assert_eq!(number, (pages.len() + 1).to_string(), "the Manual list is numbered 1, 2, 3…: {line:?}");
        let target = rest.split("](").nth(1).and_then(|t| t.split(')').next()).expect("a link");
        pages.push(target.to_string());
    }
    pages
}

/// Every page of `docs/` is in the README's numbered Manual list exactly once, and each
/// page but the last ends by pointing at the next one, so the manual reads in order.
#[test]
fn manual_lists_every_page_in_reading_order() {
    let pages = manual_pages();
    let readme = &pages[0].1;
    let order = manual_order(readme);
    let docs: Vec<&str> = pages[1..].iter().map(|(name, _)| name.as_str()).collect();
    for page in &docs {
        let times = order.iter().filter(|o| o == page).count();
        assert_eq!(times, 1, "{page} is listed {times} times in the README's Manual list (want once)");
    }
    for listed in &order {
        assert!(docs.contains(&listed.as_str()), "the Manual lists {listed}, which is not a page of docs/");
    }
    for pair in order.windows(2) {
        let text = &pages.iter().find(|(name, _)| *name == pair[0]).expect("listed page").1;
        let next = format!("]({})", pair[1].trim_start_matches("docs/"));
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(
            last.starts_with("Next: [") && last.ends_with(&next),
            "{} should end with \"Next: [...]{next}\" (the next page of the Manual), not {last:?}",
            pair[0]
        );
    }
}

/// Every relative link of the manual leads to a file of the repository, and every
/// `#anchor` to a heading of its page.
#[test]
fn manual_links_resolve() {
    let pages = manual_pages();
    let mut checked = 0;
    let mut broken = Vec::new();
    for (page, text) in &pages {
        let dir = Path::new(page).parent().unwrap_or(Path::new(""));
        for (n, target) in link_targets(text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let path = if file.is_empty() { PathBuf::from(page) } else { dir.join(file) };
            let Ok(resolved) = repo().join(&path).canonicalize() else {
                broken.push(format!("{page}:{n}: {target} (no file {})", path.display()));
                continue;
            };
            if !anchor.is_empty()
                && resolved.extension().is_some_and(|e| e == "md")
                && !anchors(&read(&resolved)).iter().any(|a| a == anchor)
            {
                broken.push(format!("{page}:{n}: {target} (no heading #{anchor} there)"));
            }
        }
    }
    assert!(checked >= 40, "found only {checked} relative links in the manual");
    assert!(broken.is_empty(), "broken links in the manual:\n{}", broken.join("\n"));
}

/// The codes the proxy answers with, as `src/error.rs` spells them (`ErrorCode::X => "code"`).
fn error_codes() -> Vec<String> {
    let src = read(&repo().join("src/error.rs"));
    let codes: Vec<String> = src
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ErrorCode::"))
        .filter_map(|l| l.split_once("=> \"").map(|(_, code)| code.trim_end_matches(['"', ','])))
        .map(str::to_string)
        .collect();
    assert!(codes.len() >= 10, "found only {} error codes in src/error.rs: {codes:?}", codes.len());
    codes
}

/// Every error code the proxy can answer with has a section of its own in the
/// troubleshooting page (cause and fix) and a row in its table: a new code cannot ship
/// undocumented.
#[test]
fn troubleshooting_explains_every_error_code() {
    let page = read(&repo().join("docs/troubleshooting.md"));
    let mut missing = Vec::new();
    for code in error_codes() {
        let section = format!("### `{code}`\n");
        let row = format!("| [`{code}`](#{code}) |");
        if !page.contains(&section) || !page.contains(&row) {
            missing.push(code.clone());
            continue;
        }
        let body = page.split(&section).nth(1).unwrap_or("").split("\n### ").next().unwrap_or("");
        assert!(
            body.contains("**Cause**") && body.contains("**Fix**"),
            "docs/troubleshooting.md: the section of `{code}` should give its **Cause** and its **Fix**"
        );
    }
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md lacks a row in its table and a \"### `code`\" section for: {}",
        missing.join(", ")
    );
    let data_path = read(&repo().join("docs/data-path.md"));
    for code in error_codes() {
        assert!(data_path.contains(&format!("| `{code}` |")), "docs/data-path.md's error table lacks `{code}`");
    }
}

/// Every metric name the manual mentions (alert rules included) is one the proxy
/// registers in `src/metrics.rs`: a renamed metric would otherwise leave alerts that
/// never fire.
#[test]
fn manual_metric_names_exist() {
    let src = read(&repo().join("src/metrics.rs"));
    let mut names = Vec::new();
    for (page, text) in manual_pages() {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("goto_auth_proxy_") {
            let name: String =
                rest[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            rest = &rest[i + name.len()..];
            let base = ["_bucket", "_sum", "_count"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
            names.push((page.clone(), name.clone(), base.to_string()));
        }
    }
    assert!(names.len() >= 15, "found only {} metric names in the manual", names.len());
    let unknown: Vec<String> = names
        .iter()
        .filter(|(_, _, base)| !src.contains(&format!("\"{base}\"")))
        .map(|(page, name, _)| format!("{page}: {name}"))
        .collect();
    assert!(unknown.is_empty(), "the manual names metrics src/metrics.rs does not register:\n{}", unknown.join("\n"));
}

/// The keys of each table of the config file, as `src/config/raw.rs` declares them
/// (`pub(super) NAME:` fields of the `Raw*` structs), with the prefix the reference
/// writes them under.
fn config_keys() -> Vec<String> {
    let src = read(&repo().join("src/config/raw.rs"));
    let tables = [
        ("RawProxy", "proxy."),
        ("RawInbound", "inbound."),
        ("RawTls", "tls."),
        ("RawState", "state."),
        ("RawCredential", "credentials.NAME."),
        ("RawRoute", "routes[]."),
        ("RawNotify", "notify[]."),
    ];
    let mut keys = Vec::new();
    for (strukt, prefix) in tables {
        let body = src
            .split(&format!("struct {strukt} {{"))
            .nth(1)
            .and_then(|b| b.split("\n}").next())
            .unwrap_or_else(|| panic!("src/config/raw.rs has no struct {strukt}"));
        for line in body.lines() {
            if let Some(field) = line.trim().strip_prefix("pub(super) ").and_then(|f| f.split(':').next()) {
                keys.push(format!("{prefix}{field}"));
            }
        }
    }
    assert!(keys.len() >= 50, "found only {} config keys in src/config/raw.rs", keys.len());
    keys
}

/// The configuration reference has a row for every key the config file takes, each
/// with a default and an example.
#[test]
fn configuration_reference_has_every_key() {
    let page = read(&repo().join("docs/configuration.md"));
    let mut missing = Vec::new();
    for key in config_keys() {
        let Some(row) = page.lines().find(|l| l.starts_with(&format!("| `{key}` |"))) else {
            missing.push(key);
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        assert!(
            cells.len() >= 4 && cells[1..3].iter().all(|c| !c.trim().is_empty()),
            "docs/configuration.md: the row of `{key}` needs a default and an example: {row}"
        );
    }
    assert!(missing.is_empty(), "docs/configuration.md has no row for: {}", missing.join(", "));
}

/// The manual's YAML (the Prometheus alert rules) parses, and every rule has a name and
/// an expression.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_yaml_examples_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (page, text) in manual_pages() {
        for (i, block) in text.split("```yaml\n").skip(1).filter_map(|r| r.split("```").next()).enumerate() {
            let file = dir.path().join(format!("{}-{i}.yaml", page.replace('/', "_")));
            std::fs::write(&file, block).expect("write yaml");
            files.push(file);
        }
    }
    assert!(!files.is_empty(), "the manual has no YAML example (the alert rules of docs/operations.md)");
    if !tool_available(
        "python3 with PyYAML",
        python_has_yaml().await,
        "run scripts/install-test-deps.sh (python3-yaml)",
    ) {
        return;
    }
    const CHECK: &str = r#"
import sys, yaml
rules = 0
for path in sys.argv[1:]:
    doc = yaml.safe_load(open(path))
    for group in (doc or {}).get("groups", []):
        for rule in group["rules"]:
            assert rule.get("alert") and rule.get("expr"), f"{path}: a rule without alert or expr: {rule}"
            rules += 1
assert rules >= 4, f"only {rules} alert rules"
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(CHECK).args(&files);
    let out = run(cmd, "python3 yaml check").await;
    assert_success(&out, "parsing the manual's YAML with PyYAML");
}

/// The README stays a front page (at most 400 lines, the rest in `docs/`), and no page
/// of the manual cites what a reader does not have: a document outside the repository
/// or an issue number.
#[test]
fn manual_speaks_of_the_product_only() {
    let pages = manual_pages();
    let readme_lines = pages[0].1.lines().count();
    assert!(readme_lines <= 400, "README.md has {readme_lines} lines; keep it a front page (at most 400)");
    for (page, text) in &pages {
        for (n, line) in text.lines().enumerate() {
            let words: Vec<&str> = line.split(|c: char| !c.is_ascii_alphanumeric() && c != '#').collect();
            assert!(!words.contains(&"SPEC"), "{page}:{}: cites a document outside the repository: {line}", n + 1);
            let issue = words.windows(2).any(|w| {
                matches!(w[0].to_ascii_lowercase().as_str(), "issue" | "issues" | "pr")
                    && w[1].strip_prefix('#').is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            });
            assert!(!issue, "{page}:{}: cites an issue number: {line}", n + 1);
        }
    }
}

#[test]
fn headings_and_links_are_read_as_github_does() {
    assert_eq!(heading_anchor(" GoTo's quota"), "gotos-quota");
    assert_eq!(heading_anchor("Telling a person: `[[notify]]`"), "telling-a-person-notify");
    assert_eq!(heading_anchor("`no_route`"), "no_route");
    assert_eq!(anchors("# A\n```toml\n# not a heading\n```\n## B, c\n"), vec!["a".to_string(), "b-c".to_string()]);
    assert_eq!(link_targets("see [x](a.md#b) and [y](../c.md)."), vec![(1, "a.md#b".into()), (1, "../c.md".into())]);
}
