//! The soak's clients. `load`: a few keep-alive connections per replica, each sending one
//! request at a time at a steady pace, the requests a script would send (a call with no
//! auth, a path whose `{organizerKey}` the proxy fills in, a Direct Login call, a POST
//! whose body must come back byte for byte, and calls to the hostile upstream, over
//! HTTP/1.1 and over HTTP/2, whose answers must be their own). `probe`: requests the mock answers with a
//! body broken off mid-way (`…/_mock/reset/N`) or slowly (`…/_mock/slow/MS`), sent
//! beside the steady load during the script's upstream-fault window.
//!
//! Every answer is one line of TSV:
//! `start_ms end_ms replica kind outcome status detail`, where `outcome` is `ok`
//! (the answer a user expects), `wrong` (200 with the wrong body), `http` (another
//! status; `detail` holds `x-goto-auth-proxy-error`), `connect`, `timeout`, `body` (the
//! body broke off), `request` (the connection failed mid-request) or `error`; a probe's
//! line says `expected` or `unexpected` instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use goto_mock::MockOptions;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::unix_ms;

/// One request longer than this is a failure (`timeout`): far beyond `token_wait`
/// plus `request_timeout`, so only a hang gets here.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// A replica to load, `NAME=http://127.0.0.1:PORT` (repeat).
    #[arg(long = "target", value_parser = parse_target, required = true)]
    targets: Vec<(String, String)>,
    /// Keep-alive connections per replica, each one request at a time.
    #[arg(long, default_value_t = 3)]
    conns: usize,
    /// Pause after each answer, per connection (milliseconds).
    #[arg(long, default_value_t = 20)]
    pace_ms: u64,
    /// Where the answers go (TSV, appended).
    #[arg(long)]
    out: std::path::PathBuf,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// A replica to probe, `NAME=http://127.0.0.1:PORT` (repeat).
    #[arg(long = "target", value_parser = parse_target, required = true)]
    targets: Vec<(String, String)>,
    /// What the upstream does to the probes.
    #[arg(long, value_enum)]
    kind: ProbeKind,
    /// How long to keep probing.
    #[arg(long)]
    seconds: u64,
    /// Where the answers go (TSV, appended).
    #[arg(long)]
    out: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProbeKind {
    /// The upstream sends the headers and part of the body, then drops the connection.
    Reset,
    /// The upstream answers after 1.5 s (well within `request_timeout`).
    Slow,
}

fn parse_target(s: &str) -> Result<(String, String), String> {
    let (name, url) = s.split_once('=').ok_or("expected NAME=URL")?;
    Ok((name.to_string(), url.trim_end_matches('/').to_string()))
}

/// The requests of the steady load, in turn.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Me,
    Webinars,
    DirectLogin,
    Post,
    /// Through the route to `soak_tool hostile` over HTTP/1.1 (the keep-alive race).
    Hostile,
    /// Through the route to it over HTTP/2, behind the relay (the black hole).
    HostileH2,
}

const KINDS: [Kind; 6] = [Kind::Me, Kind::Webinars, Kind::DirectLogin, Kind::Post, Kind::Hostile, Kind::HostileH2];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Me => "me",
            Kind::Webinars => "webinars",
            Kind::DirectLogin => "g2a",
            Kind::Post => "post",
            Kind::Hostile => "hostile",
            Kind::HostileH2 => "hostile-h2",
        }
    }
}

/// `load`: until SIGTERM or SIGINT.
pub async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let (tx, writer) = writer(&args.out).await?;
    let stop = CancellationToken::new();
    let seq = Arc::new(AtomicU64::new(0));
    let organizer_key = MockOptions::default().organizer_key;
    let mut tasks = Vec::new();
    for (name, url) in &args.targets {
        for c in 0..args.conns {
            let (name, url, tx, stop, seq, key) =
                (name.clone(), url.clone(), tx.clone(), stop.clone(), seq.clone(), organizer_key.clone());
            let pace = Duration::from_millis(args.pace_ms);
            tasks.push(tokio::spawn(async move {
                let http = client()?;
                let mut i = c;
                while !stop.is_cancelled() {
                    let kind = KINDS[i % KINDS.len()];
                    i += 1;
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let started = unix_ms();
                    let outcome = tokio::select! {
                        _ = stop.cancelled() => break,
                        o = steady(&http, &url, kind, n, &key) => o,
                    };
                    let line = format!("{started}\t{}\t{name}\t{}\t{outcome}\n", unix_ms(), kind.name());
                    if tx.send(line).is_err() {
                        break;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(pace) => {}
                    }
                }
                anyhow::Ok(())
            }));
        }
    }
    drop(tx);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    stop.cancel();
    for t in tasks {
        t.await??;
    }
    writer.await?
}

/// `probe`: for `seconds`, one probe at a time per replica.
pub async fn probe(args: ProbeArgs) -> anyhow::Result<()> {
    let (tx, writer) = writer(&args.out).await?;
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (name, url) in &args.targets {
        let (name, url, tx, kind) = (name.clone(), url.clone(), tx.clone(), args.kind);
        tasks.push(tokio::spawn(async move {
            let http = client()?;
            while Instant::now() < until {
                let started = unix_ms();
                let (what, outcome) = probe_once(&http, &url, kind).await;
                let line = format!("{started}\t{}\t{name}\t{what}\t{outcome}\n", unix_ms());
                if tx.send(line).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        }));
    }
    drop(tx);
    for t in tasks {
        t.await??;
    }
    writer.await?
}

/// A client as a script has one: no environment proxies, no redirects followed, one
/// keep-alive connection reused.
fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("HTTP client")
}

/// A task that appends the lines sent to it to `path`; ends when every sender is gone.
async fn writer(
    path: &std::path::Path,
) -> anyhow::Result<(mpsc::UnboundedSender<String>, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .with_context(|| format!("open {}", path.display()))?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let task = tokio::spawn(async move {
        let mut out = tokio::io::BufWriter::new(file);
        while let Some(line) = rx.recv().await {
            out.write_all(line.as_bytes()).await?;
        }
        out.flush().await?;
        anyhow::Ok(())
    });
    Ok((tx, task))
}

/// One steady request and its verdict: `outcome status detail`.
async fn steady(http: &reqwest::Client, base: &str, kind: Kind, n: u64, organizer_key: &str) -> String {
    let body = format!(r#"{{"seq":{n},"note":"soak: this body must come back byte for byte"}}"#);
    let (req, expect) = match kind {
        Kind::Me => (http.get(format!("{base}/admin/rest/v1/me")), format!(r#""key":"{organizer_key}""#)),
        Kind::Webinars => (
            http.get(format!("{base}/G2W/rest/v2/organizers/%7BorganizerKey%7D/webinars")),
            format!("/G2W/rest/v2/organizers/{organizer_key}/webinars"),
        ),
        Kind::DirectLogin => (http.get(format!("{base}/G2A/rest/v1/sessions")), r#""/G2A/rest/v1/sessions""#.into()),
        Kind::Post => (
            http.post(format!("{base}/G2T/rest/v1/soak")).header("content-type", "application/json").body(body.clone()),
            body.clone(),
        ),
        Kind::Hostile => (http.get(format!("{base}/hostile/echo/{n}")), format!("own:/hostile/echo/{n}")),
        Kind::HostileH2 => (http.get(format!("{base}/hostile-h2/echo/{n}")), format!("own:/hostile-h2/echo/{n}")),
    };
    let res = match req.send().await {
        Ok(r) => r,
        Err(e) => return failure(&e),
    };
    let status = res.status().as_u16();
    let code = res.headers().get("x-goto-auth-proxy-error").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    let text = match res.text().await {
        Ok(t) => t,
        Err(e) => return failure(&e),
    };
    if status != 200 {
        return format!("http\t{status}\t{code} {}", clean(&text));
    }
    let right = match kind {
        Kind::Post | Kind::Hostile | Kind::HostileH2 => text == expect,
        _ => text.contains(&expect),
    };
    if right {
        "ok\t200\t-".into()
    } else {
        format!("wrong\t200\t{}", clean(&text))
    }
}

/// One probe: `(kind, "expected|unexpected status detail")`. A broken-off body must reach
/// the client as broken off (never as a complete answer); a slow answer must arrive whole.
async fn probe_once(http: &reqwest::Client, base: &str, kind: ProbeKind) -> (&'static str, String) {
    match kind {
        ProbeKind::Reset => {
            let verdict = match http.get(format!("{base}/G2M/rest/v1/_mock/reset/65536")).send().await {
                Ok(r) if r.status() == 200 => match r.bytes().await {
                    Err(_) => "expected\t200\tbroken off".to_string(),
                    Ok(b) => format!("unexpected\t200\ta complete-looking body of {} bytes", b.len()),
                },
                // The proxy may learn of the reset before it sent the head: a 502 is honest too.
                Ok(r) if r.status() == 502 => "expected\t502\tupstream_unreachable".to_string(),
                Ok(r) => format!("unexpected\t{}\t{}", r.status().as_u16(), clean(&r.text().await.unwrap_or_default())),
                Err(e) => format!("unexpected\t0\t{}", clean(&format!("{e:#}"))),
            };
            ("reset", verdict)
        }
        ProbeKind::Slow => {
            let t = Instant::now();
            let verdict = match http.get(format!("{base}/G2M/rest/v1/_mock/slow/1500")).send().await {
                Ok(r) if r.status() == 200 => match r.text().await {
                    Ok(b) if b.contains("_mock/slow/1500") && t.elapsed() >= Duration::from_millis(1500) => {
                        "expected\t200\tslow".to_string()
                    }
                    Ok(b) => format!("unexpected\t200\t{}", clean(&b)),
                    Err(e) => format!("unexpected\t200\t{}", clean(&format!("{e:#}"))),
                },
                Ok(r) => format!("unexpected\t{}\t{}", r.status().as_u16(), clean(&r.text().await.unwrap_or_default())),
                Err(e) => format!("unexpected\t0\t{}", clean(&format!("{e:#}"))),
            };
            ("slow", verdict)
        }
    }
}

/// A transport failure's `outcome status detail`.
fn failure(e: &reqwest::Error) -> String {
    let outcome = if e.is_connect() {
        "connect"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else if e.is_request() {
        "request"
    } else {
        "error"
    };
    // The whole chain: reqwest's own message rarely says what the socket did.
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    format!("{outcome}\t0\t{}", clean(&detail))
}

/// One line of at most 200 characters, without tabs.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect()
}
