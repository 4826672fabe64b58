//! `accounts_bench`: many accounts in one proxy, measured (`benches/accounts.sh` runs it).
//!
//! ```text
//! accounts_bench --bin target/release/goto-auth-proxy [--accounts 10000] [--seconds 600]
//!                [--token-secs 300] [--token-rate 50] [--workers 8] [--out target/bench]
//! ```
//!
//! In this process: the crate's mock GoTo with one user per account. As a child: the
//! proxy (release binary), with the file store, an account credential (`people`,
//! `accounts = true`, `token_rate`) and, for comparison in the same run, a one-token
//! credential (`one`, client credentials). The tool signs every account in through the
//! real flow (the proxy's `/login`, the mock's authorize page with `login_hint`,
//! `/callback`), as fast as the proxy takes them (all within a minute at 10,000), then
//! sends traffic for `--seconds`: workers alternate a request as a random account
//! (`X-GoTo-Account`) with one through the single credential, so both latencies come
//! from the same moments. It reports, and exits 1 when a target is missed:
//!
//! * renewals: all successful and on time (no request refused for want of a token,
//!   every account valid at the end);
//! * token endpoint calls in any one second (sliding) against `token_rate`;
//! * p50/p99 of the two kinds of request (target: accounts within 10 % of one);
//! * resident memory before and after the sign-ins and at the end (target ≤ 64 MiB),
//!   bytes per account;
//! * bytes the proxy wrote per renewal (`/proc/PID/io`);
//! * `/tokens?limit=50` and the status page (target < 200 ms);
//! * start to ready with every account stored, and until all are loaded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs, unreachable_pub)]

use std::fmt::Write as _;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goto_mock::{MockGoto, MockOptions, MockUser};

struct Args {
    bin: String,
    accounts: u32,
    seconds: u64,
    token_secs: u64,
    token_rate: u32,
    workers: usize,
    out: String,
}

fn args() -> Args {
    let mut a = Args {
        bin: "target/release/goto-auth-proxy".into(),
        accounts: 10_000,
        seconds: 600,
        token_secs: 300,
        token_rate: 50,
        workers: 8,
        out: "target/bench".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--bin" => a.bin = v,
            "--accounts" => a.accounts = v.parse().unwrap(),
            "--seconds" => a.seconds = v.parse().unwrap(),
            "--token-secs" => a.token_secs = v.parse().unwrap(),
            "--token-rate" => a.token_rate = v.parse().unwrap(),
            "--workers" => a.workers = v.parse().unwrap(),
            "--out" => a.out = v,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn proc_value(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    proc_value(pid, "status", "VmRSS:")
}

fn write_bytes(pid: u32) -> u64 {
    proc_value(pid, "io", "write_bytes:")
}

struct Proxy {
    child: Child,
    data: String,
    admin: String,
}

impl Proxy {
    fn start(bin: &str, config: &std::path::Path, log: &std::path::Path, data: u16, admin: u16) -> Proxy {
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start the proxy");
        Proxy { child, data: format!("http://127.0.0.1:{data}"), admin: format!("http://127.0.0.1:{admin}") }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

async fn sign_in(http: &reqwest::Client, admin: &str, name: &str, email: &str) {
    let r = http.get(format!("{admin}/login/people?account={name}")).send().await.unwrap();
    assert_eq!(r.status(), 302, "login {name}");
    let mut authorize = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    authorize.query_pairs_mut().append_pair("login_hint", email);
    let r = http.get(authorize).send().await.unwrap();
    assert_eq!(r.status(), 302, "authorize {name}");
    let callback = r.headers()["location"].to_str().unwrap().to_string();
    let r = http.get(callback).send().await.unwrap();
    assert_eq!(r.status(), 200, "callback {name}");
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// Most calls within any one second (a sliding window over the call times).
fn busiest_second(times: &[Instant]) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi].duration_since(times[lo]) >= Duration::from_secs(1) {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

async fn timed_get(http: &reqwest::Client, url: &str, times: usize) -> (f64, f64) {
    let mut ms = Vec::new();
    for _ in 0..times {
        let t = Instant::now();
        let r = http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let _ = r.bytes().await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() - 1])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let a = args();
    let users: Vec<MockUser> = (1..=a.accounts).map(MockUser::numbered).collect();
    let opts = MockOptions {
        token_lifetime: Duration::from_secs(a.token_secs),
        more_users: users.clone(),
        ..MockOptions::default()
    };
    let mock = MockGoto::start(opts).await.expect("mock");
    // The one-token credential has a mock of its own: the accounts' mock then counts
    // only the accounts' token calls.
    let single = MockGoto::start(MockOptions {
        token_lifetime: Duration::from_secs(a.token_secs),
        more_users: vec![users[0].clone()],
        ..MockOptions::default()
    })
    .await
    .expect("mock");
    let o = mock.options();
    let (m, s1) = (mock.url(), single.url());
    let dir = tempfile::tempdir().unwrap();
    let (data_port, admin_port) = (free_port(), free_port());
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:{data_port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\naccess_log = false\ntoken_wait = \"5s\"\n\n\
         [state]\npath = {state:?}\n\n\
         [credentials.people]\ngrant = \"authorization_code\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\n\
         token_url = \"{m}/oauth/token\"\nauthorize_url = \"{m}/oauth/authorize\"\nkeys_url = \"{m}/identity/v1/Users/me\"\n\
         accounts = true\ntoken_rate = {rate}\nrefresh_before = \"15s\"\n\n\
         [credentials.one]\ngrant = \"client_credentials\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\n\
         token_url = \"{s1}/oauth/token\"\nkeys_url = \"{s1}/identity/v1/Users/me\"\nrefresh_before = \"15s\"\n\n\
         [[routes]]\nprefix = \"/one/\"\nupstream = \"{s1}\"\ncredential = \"one\"\nstrip_prefix = true\n\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"{m}\"\ncredential = \"people\"\n",
        state = dir.path().join("state.json").display().to_string(),
        id = o.client_id,
        secret = o.client_secret,
        rate = a.token_rate,
    );
    let config_path = dir.path().join("bench.toml");
    std::fs::write(&config_path, &config).unwrap();
    std::fs::create_dir_all(&a.out).unwrap();
    let log = std::path::Path::new(&a.out).join("accounts-proxy.log");
    let http = client();
    let mut proxy = Proxy::start(&a.bin, &config_path, &log, data_port, admin_port);
    let admin = proxy.admin.clone();
    wait_for("proxy up", Duration::from_secs(10), async || {
        http.get(format!("{admin}/healthz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let rss_empty = rss_kib(proxy.pid());

    // Every account signs in, 32 at a time.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (next, users, http, admin) = (next.clone(), users.clone(), http.clone(), admin.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(u) = users.get(i) else { return };
                sign_in(&http, &admin, &format!("u{}", i + 1), &u.email).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sign_in_secs = started.elapsed().as_secs_f64();
    let rss_signed = rss_kib(proxy.pid());
    let signed_calls = mock.issued().len();

    // Traffic: each worker alternates a random account and the one credential.
    let load_start = Instant::now();
    let writes_before = write_bytes(proxy.pid());
    let refreshes_before = mock.stats().refreshes;
    let until = load_start + Duration::from_secs(a.seconds);
    let lat = Arc::new(Mutex::new((Vec::<u32>::new(), Vec::<u32>::new(), Vec::<String>::new())));
    let mut tasks = Vec::new();
    for w in 0..a.workers {
        let (http, data, lat) = (http.clone(), proxy.data.clone(), lat.clone());
        let n = a.accounts;
        tasks.push(tokio::spawn(async move {
            let mut i: u64 = w as u64;
            while Instant::now() < until {
                i += 1;
                let many = i.is_multiple_of(2);
                let req = if many {
                    let who = format!("u{}", rand::random_range(1..=n));
                    http.get(format!("{data}/G2W/rest/v2/organizers/{{organizerKey}}/webinars"))
                        .header("X-GoTo-Account", who)
                } else {
                    http.get(format!("{data}/one/G2W/rest/v2/organizers/{{organizerKey}}/webinars"))
                };
                let t = Instant::now();
                let r = req.send().await;
                let micros = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
                let mut l = lat.lock().unwrap();
                match r {
                    Ok(r) if r.status() == 200 => {
                        if many {
                            l.0.push(micros)
                        } else {
                            l.1.push(micros)
                        }
                    }
                    Ok(r) => l.2.push(format!("{} {}", if many { "account" } else { "one" }, r.status())),
                    Err(e) => l.2.push(format!("error {e}")),
                }
            }
        }));
    }
    let mut rss_max = 0;
    while Instant::now() < until {
        rss_max = rss_max.max(rss_kib(proxy.pid()));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let renewals = mock.stats().refreshes - refreshes_before;
    let written = write_bytes(proxy.pid()) - writes_before;
    let rss_end = rss_kib(proxy.pid());

    // Every account valid at the end.
    let mut not_valid = 0;
    let mut offset = 0;
    loop {
        let page: serde_json::Value = http
            .get(format!("{admin}/tokens?credential=people&offset={offset}&limit=500"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = page["people"]["accounts"]["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        // "renewing" at this instant is fine; anything else is a renewal that went wrong.
        not_valid += items.iter().filter(|i| i["state"] != "valid" && i["state"] != "renewing").count();
        offset += items.len();
    }
    let tokens_ms = timed_get(&http, &format!("{admin}/tokens?limit=50"), 20).await;
    let page_ms = timed_get(&http, &format!("{admin}/"), 20).await;
    let search_ms = timed_get(&http, &format!("{admin}/?credential=people&q=user9999"), 20).await;

    // The busiest second of the token endpoint, over the whole run after the sign-ins.
    let calls: Vec<Instant> = mock.issued().iter().skip(signed_calls).map(|i| i.at).collect();
    let busiest = busiest_second(&calls);
    let stats = mock.stats();

    // Start to ready with every account stored.
    proxy.stop();
    let restarted = Instant::now();
    let mut proxy = Proxy::start(&a.bin, &config_path, &log, data_port, admin_port);
    let ready = wait_for("ready again", Duration::from_secs(120), async || {
        http.get(format!("{admin}/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let all_loaded = wait_for("all accounts loaded", Duration::from_secs(120), async || {
        let Ok(r) = http.get(format!("{admin}/tokens?credential=people&limit=1")).send().await else { return false };
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        v["people"]["accounts"]["total"] == a.accounts
    })
    .await
    .max(ready);
    let _ = restarted;
    proxy.stop();

    let (mut many, mut one, failures) = std::mem::take(&mut *lat.lock().unwrap());
    many.sort_unstable();
    one.sort_unstable();
    let (m50, m99, o50, o99) =
        (percentile(&many, 0.5), percentile(&many, 0.99), percentile(&one, 0.5), percentile(&one, 0.99));
    let per_account = (rss_signed.saturating_sub(rss_empty) * 1024) / u64::from(a.accounts.max(1));
    let mut r = String::new();
    let _ = writeln!(r, "## Many accounts: {} accounts, {} s of traffic\n", a.accounts, a.seconds);
    let _ = writeln!(
        r,
        "`benches/accounts.sh` (ACCOUNTS={} SECONDS={} TOKEN_SECS={} TOKEN_RATE={} WORKERS={})\n",
        a.accounts, a.seconds, a.token_secs, a.token_rate, a.workers
    );
    let _ = writeln!(r, "| measure | value | target |\n|---|---|---|");
    let _ = writeln!(r, "| sign-ins (real flow, 32 at a time) | {sign_in_secs:.1} s | |");
    let _ = writeln!(r, "| renewals during the run | {renewals} ({:.1}/s) | |", renewals as f64 / a.seconds as f64);
    let _ = writeln!(r, "| token calls in the busiest second | {busiest} | ≤ {} |", a.token_rate);
    let _ = writeln!(r, "| requests answered 200 | {} accounts + {} one | |", many.len(), one.len());
    let _ = writeln!(r, "| requests failed | {} | 0 |", failures.len());
    let _ = writeln!(
        r,
        "| old tokens the mock rejected (a renewal in flight; retried, the client saw 200) | {} | |",
        stats.api_rejected
    );
    let _ = writeln!(r, "| accounts not valid at the end | {not_valid} | 0 |");
    let _ = writeln!(r, "| p50 / p99, random account | {m50:.2} / {m99:.2} ms | within 10 % of one |");
    let _ = writeln!(r, "| p50 / p99, one credential | {o50:.2} / {o99:.2} ms | |");
    let _ = writeln!(
        r,
        "| RSS empty / signed in / max in run / end | {} / {} / {} / {} MiB | ≤ 64 MiB |",
        rss_empty / 1024,
        rss_signed / 1024,
        rss_max / 1024,
        rss_end / 1024
    );
    let _ = writeln!(r, "| memory per account | {per_account} bytes | |");
    let _ = writeln!(r, "| bytes written per renewal | {} | same at 100 and 10,000 |", written / renewals.max(1));
    let _ = writeln!(r, "| `/tokens?limit=50` p50 / max | {:.1} / {:.1} ms | < 200 ms |", tokens_ms.0, tokens_ms.1);
    let _ = writeln!(r, "| status page p50 / max | {:.1} / {:.1} ms | < 200 ms |", page_ms.0, page_ms.1);
    let _ = writeln!(r, "| status page search p50 / max | {:.1} / {:.1} ms | < 200 ms |", search_ms.0, search_ms.1);
    let _ = writeln!(
        r,
        "| start to ready / all {} loaded | {:.2} / {:.2} s | |",
        a.accounts,
        ready.as_secs_f64(),
        all_loaded.as_secs_f64()
    );
    if !failures.is_empty() {
        let _ = writeln!(r, "\nfirst failures: {:?}", &failures[..failures.len().min(10)]);
    }
    print!("{r}");
    std::fs::write(std::path::Path::new(&a.out).join(format!("accounts-{}.md", a.accounts)), &r).unwrap();
    let within = m50 <= o50 * 1.1 + 0.05 && m99 <= o99 * 1.1 + 0.2;
    let ok = failures.is_empty()
        && not_valid == 0
        && busiest <= a.token_rate as usize
        && rss_max <= 64 * 1024
        && tokens_ms.1 < 200.0
        && page_ms.1 < 200.0
        && within;
    if ok {
        ExitCode::SUCCESS
    } else {
        println!("\nMISSED: a target above");
        ExitCode::FAILURE
    }
}
