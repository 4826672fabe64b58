//! A misbehaving token endpoint, table-driven (SPEC "Token lifecycle": a token answer
//! is data, not trust). For each hostile answer: the proxy stays up, keeps serving the
//! token it holds while that is valid, says why in `/tokens`, does not hammer the
//! endpoint (two calls never closer than 1 s), and renews by itself once the endpoint
//! behaves again. Lifetimes over a year are not failures (clamped to a year), and a
//! short real lifetime is honoured as given.
//!
//! The cases run concurrently, each against its own mock and proxy, and each reports
//! what failed instead of panicking, so one run names every case that does not hold.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::support::*;
use goto_mock::TokenFault;

/// Lifetime of the tokens the mock issues: the first renewal comes at about half of it,
/// which leaves the other half to watch the proxy serve its token through the fault.
const LIFETIME: Duration = Duration::from_secs(8);

/// A token counts as still valid until this long before the expiry `/tokens` shows: room
/// for the proxy's own margin and a request's way through a busy test runtime.
const VALID_MARGIN: Duration = Duration::from_secs(1);

/// The credential every case uses.
const CRED: &str = "t";

/// SPEC: two renewals of one credential are never closer than 1 second. What the mock
/// sees may be a little closer (both ends are scheduled on a busy test runtime).
const MIN_GAP: Duration = Duration::from_millis(750);

/// Token calls allowed while a fault lasts (a few seconds): a handful of backed-off
/// retries, never a loop.
const MAX_CALLS_IN_FAULT: usize = 10;

/// A year, as SPEC's clamp; `YEAR_SLACK` admits 365.25-day years and a slow test.
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
const YEAR_SLACK: Duration = Duration::from_secs(6 * 3600 + 60);

#[derive(Clone, Copy, Debug)]
enum Grant {
    /// Direct Login: for faults that issue no token (issuing one revokes the token served).
    Password,
    /// OAuth client credentials: issuing a token leaves the one served alive.
    ClientCredentials,
}

#[derive(Clone, Debug)]
enum Expect {
    /// A failed renewal; `/tokens` says why with one of these words (any case).
    Fails(&'static [&'static str]),
    /// An answer that never completes: the call stays in flight while the proxy serves.
    InFlight,
    /// A token served, living about this long.
    Lives(Duration),
    /// A token served, its lifetime clamped to a year.
    ClampedToAYear,
}

struct Case {
    name: &'static str,
    grant: Grant,
    fault: TokenFault,
    expect: Expect,
}

fn cases() -> Vec<Case> {
    use Expect::*;
    use Grant::*;
    let body = |status: u16, b: &'static [u8]| TokenFault::Body { status, body: Bytes::from_static(b) };
    let lifetime = |v: Value| TokenFault::ExpiresIn(v);
    // 10 MB of spaces, then a token that would parse: only a size cap refuses it.
    let mut huge = vec![b' '; 10 * 1024 * 1024];
    huge.extend_from_slice(br#"{"access_token":"mock-at-huge","token_type":"Bearer","expires_in":3600}"#);
    let not_a_token: &[&str] = &["not a token", "json", "malformed", "expected"];
    let expires_in: &[&str] = &["expires_in"];
    vec![
        Case {
            name: "html_200",
            grant: Password,
            fault: body(200, b"<!DOCTYPE html><html><body>Sign in to the corporate Wi-Fi</body></html>"),
            expect: Fails(not_a_token),
        },
        Case {
            name: "json_without_access_token",
            grant: Password,
            fault: body(200, br#"{"token_type":"Bearer","expires_in":3600}"#),
            expect: Fails(&["access_token"]),
        },
        Case { name: "expires_in_0", grant: ClientCredentials, fault: lifetime(json!(0)), expect: Fails(expires_in) },
        Case {
            name: "expires_in_negative",
            grant: ClientCredentials,
            fault: lifetime(json!(-5)),
            expect: Fails(expires_in),
        },
        Case {
            name: "expires_in_not_a_number",
            grant: ClientCredentials,
            fault: lifetime(json!("soon")),
            expect: Fails(expires_in),
        },
        Case {
            name: "expires_in_1e20",
            grant: ClientCredentials,
            fault: lifetime(json!(1e20)),
            expect: ClampedToAYear,
        },
        Case {
            name: "expires_in_u64_max",
            grant: ClientCredentials,
            fault: lifetime(json!(u64::MAX)),
            expect: ClampedToAYear,
        },
        Case {
            name: "expires_in_string_7",
            grant: ClientCredentials,
            fault: lifetime(json!("7")),
            expect: Lives(Duration::from_secs(7)),
        },
        Case {
            name: "body_10_mb",
            grant: Password,
            fault: TokenFault::Body { status: 200, body: Bytes::from(huge) },
            expect: Fails(&["too large", "larger than", "1 mib", "1024 kib", "1048576"]),
        },
        Case { name: "slow_drip", grant: Password, fault: TokenFault::Drip, expect: InFlight },
        Case {
            name: "redirect_302",
            grant: Password,
            fault: TokenFault::Redirect(302),
            expect: Fails(&["redirects are never followed"]),
        },
        Case {
            name: "redirect_307",
            grant: Password,
            fault: TokenFault::Redirect(307),
            expect: Fails(&["redirects are never followed"]),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misbehaving_token_endpoint() {
    let runs = cases().into_iter().map(|case| {
        let name = case.name;
        let run = tokio::spawn(async move {
            let stack = start(case.grant).await;
            let outcome = run_case(&stack, &case).await;
            stack.proxy.stop().await;
            outcome
        });
        async move { (name, run.await.unwrap_or_else(|e| Err(format!("panicked: {e}")))) }
    });
    let failed: Vec<String> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .filter_map(|(name, outcome)| outcome.err().map(|why| format!("{name}: {why}")))
        .collect();
    assert!(failed.is_empty(), "{} case(s) failed:\n{}", failed.len(), failed.join("\n"));
}

/// Returns `Err(message)` from the case when `cond` does not hold.
macro_rules! check {
    ($cond:expr, $($why:tt)+) => {
        let holds: bool = $cond;
        if !holds {
            return Err(format!($($why)+));
        }
    };
}

/// A mock with short-lived tokens and a proxy with credential `t` on `/`, ready.
async fn start(grant: Grant) -> Stack {
    let s = stack(short_tokens(LIFETIME.as_secs()), |mock, dir| {
        let cred = match grant {
            Grant::Password => password_cred(CRED, mock),
            Grant::ClientCredentials => client_credentials_cred(CRED, mock),
        };
        config_text(dir, "", &format!("{cred}\n{}", route("/", mock, Some(CRED))))
    })
    .await;
    wait_ready(&s.http, &s.admin("/readyz"), Duration::from_secs(10)).await;
    s
}

async fn run_case(s: &Stack, case: &Case) -> Result<(), String> {
    let before = Snapshot::take(s).await?;
    let issued_before = s.mock.issued().len();
    let fault_at = Instant::now();
    s.mock.set_fault(Some(case.fault.clone()));
    match &case.expect {
        Expect::Fails(words) => {
            let info = watch_until(s, &before, LIFETIME + Duration::from_secs(3), |t| failures(t) >= 1).await?;
            let why = info["last_error"].as_str().unwrap_or_default().to_ascii_lowercase();
            check!(!why.is_empty(), "/tokens names no last_error: {info}");
            check!(words.iter().any(|w| why.contains(w)), "last_error {why:?} names none of {words:?}");
            still_serving(s, &before).await?;
        }
        Expect::InFlight => {
            let deadline = Instant::now() + LIFETIME;
            while s.mock.token_call_times().len() == before.calls {
                check!(Instant::now() < deadline, "no token call within {LIFETIME:?}");
                still_serving(s, &before).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // A couple of seconds with the answer trickling in: the proxy serves on.
            let watch_until_at = Instant::now() + Duration::from_secs(2);
            while Instant::now() < watch_until_at {
                still_serving(s, &before).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let calls = s.mock.token_call_times().len() - before.calls;
            check!(calls == 1, "{calls} token calls while one answer was still arriving");
        }
        Expect::Lives(life) => {
            let info = watch_until(s, &before, LIFETIME, |t| renewed(t, &before)).await?;
            let left = expires_in_secs(&info)?;
            let want = life.as_secs_f64();
            check!(left > want - 2.0 && left <= want + 1.0, "expires in {left:.0}s, not the {want}s the answer gave");
            check!(failures(&info) == 0, "a {want}s lifetime counted as a failure: {info}");
            check!(serves(s).await?, "the new token is not served");
            // Honoured: the next renewal is planned from those seconds (half-life), not
            // from an hour or a year.
            let first = Snapshot::take(s).await?;
            watch_until(s, &first, *life, |t| renewed(t, &first)).await?;
        }
        Expect::ClampedToAYear => {
            let info = watch_until(s, &before, LIFETIME, |t| renewed(t, &before)).await?;
            let left = Duration::from_secs_f64(expires_in_secs(&info)?.max(0.0));
            check!(
                left > YEAR - Duration::from_secs(86_400) && left <= YEAR + YEAR_SLACK,
                "expires in {left:?}, not clamped to a year: {info}"
            );
            check!(failures(&info) == 0, "a long lifetime counted as a failure: {info}");
            check!(serves(s).await?, "the new token is not served");
        }
    }

    let clear_at = Instant::now();
    if matches!(case.fault, TokenFault::Redirect(_)) {
        check!(s.mock.issued().len() == issued_before, "the redirect was followed: a token was issued behind it");
    }
    s.mock.set_fault(None);
    let in_fault = s.mock.token_call_times().iter().filter(|t| **t >= fault_at && **t <= clear_at).count();
    check!(in_fault < MAX_CALLS_IN_FAULT, "{in_fault} token calls in {:?} of fault", clear_at - fault_at);

    if matches!(case.expect, Expect::Fails(_) | Expect::InFlight) {
        let recovered = Snapshot::take(s).await?;
        let info = watch_until(s, &recovered, Duration::from_secs(10), |t| {
            failures(t) == 0 && renewed(t, &before) && t["last_error"].is_null()
        })
        .await?;
        check!(serves(s).await?, "no token served after recovering: {info}");
        if matches!(case.expect, Expect::InFlight) {
            // The broken-off answer was a failure, counted.
            let m = metrics_of(&s.proxy).await;
            let failed: f64 = m
                .lines()
                .filter(|l| l.starts_with(&format!("goto_auth_proxy_token_refreshes_total{{credential=\"{CRED}\"")))
                .filter(|l| {
                    let not_failures = ["success", "adopted", "written_back", "uncoordinated", "rejection_passed"];
                    !not_failures.iter().any(|o| l.contains(&format!("outcome=\"{o}\"")))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            check!(failed >= 1.0, "the broken-off answer was not counted as a failed renewal:\n{m}");
        }
    }

    let times = s.mock.token_call_times();
    let closest = times.windows(2).map(|w| w[1] - w[0]).min();
    check!(
        closest.is_none_or(|g| g >= MIN_GAP),
        "token calls {closest:?} apart (SPEC: never closer than 1 s); all: {:?}",
        times.iter().map(|t| t.duration_since(times[0])).collect::<Vec<_>>()
    );
    Ok(())
}

/// What the case started from: the served token's expiry and the calls so far.
struct Snapshot {
    expires_at: SystemTime,
    /// Before this instant (less a margin) the token held at the snapshot is valid.
    valid_until: Instant,
    calls: usize,
}

impl Snapshot {
    async fn take(s: &Stack) -> Result<Snapshot, String> {
        let info = token_info(s).await?;
        let expires_at = expires_at(&info)?;
        let left = expires_at.duration_since(SystemTime::now()).unwrap_or_default();
        Ok(Snapshot {
            expires_at,
            valid_until: Instant::now() + left.saturating_sub(VALID_MARGIN),
            calls: s.mock.token_call_times().len(),
        })
    }
}

/// Polls `/tokens` until `done` holds, checking on every round that the proxy is up and
/// serves the token it held at `from` while that is valid.
async fn watch_until(
    s: &Stack,
    from: &Snapshot,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let deadline = Instant::now() + within;
    loop {
        still_serving(s, from).await?;
        let info = token_info(s).await?;
        if done(&info) {
            return Ok(info);
        }
        check!(Instant::now() < deadline, "not within {within:?}; /tokens: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The proxy answers `/healthz`, and while the token held at `from` is valid a request
/// through it gets the mock's 200.
async fn still_serving(s: &Stack, from: &Snapshot) -> Result<(), String> {
    let health = status(s, &s.admin("/healthz")).await?;
    check!(health == 200, "/healthz answered {health}");
    if Instant::now() < from.valid_until {
        check!(serves(s).await?, "the token held (still valid) is no longer served");
    }
    Ok(())
}

/// True when a request through the proxy gets the mock's 200 (a token it accepts).
async fn serves(s: &Stack) -> Result<bool, String> {
    Ok(status(s, &s.url("/x")).await? == 200)
}

async fn status(s: &Stack, url: &str) -> Result<u16, String> {
    let r = s.http.get(url).timeout(Duration::from_secs(5)).send().await.map_err(|e| format!("{url}: {e}"))?;
    Ok(r.status().as_u16())
}

/// `/tokens` for the case's credential.
async fn token_info(s: &Stack) -> Result<Value, String> {
    let url = s.admin("/tokens");
    let r = s.http.get(&url).timeout(Duration::from_secs(5)).send().await.map_err(|e| format!("{url}: {e}"))?;
    let all: Value = r.json().await.map_err(|e| format!("{url}: {e}"))?;
    Ok(all[CRED].clone())
}

fn failures(info: &Value) -> u64 {
    info["consecutive_failures"].as_u64().unwrap_or(0)
}

/// True once the token held is a newer one than at `from` (a later expiry).
fn renewed(info: &Value, from: &Snapshot) -> bool {
    expires_at(info).is_ok_and(|e| e > from.expires_at)
}

fn expires_at(info: &Value) -> Result<SystemTime, String> {
    let text = info["expires_at"].as_str().ok_or_else(|| format!("no expires_at in {info}"))?;
    humantime::parse_rfc3339(text).map_err(|e| format!("expires_at {text:?}: {e}"))
}

/// Seconds from now to the held token's expiry (negative once expired).
fn expires_in_secs(info: &Value) -> Result<f64, String> {
    let at = expires_at(info)?;
    Ok(match at.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    })
}

/// A token endpoint that quotes back what it was sent ("refresh token X is revoked", the
/// client secret in its error text): the secrets are blanked out of everything the
/// proxy shows — its log, `/tokens`, the status page — and the rest of the reason stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_quoted_back_by_the_token_endpoint_are_never_shown() {
    let mock = goto_mock::MockGoto::start(goto_mock::MockOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seed = mock.mint_refresh_token();
    let client_secret = mock.options().client_secret;
    let description = format!("refresh token {seed} is revoked; client secret {client_secret} was checked");
    let body = json!({ "error": "invalid_grant", "error_description": description }).to_string();
    mock.set_fault(Some(TokenFault::Body { status: 400, body: Bytes::from(body) }));
    let text = config_text(
        dir.path(),
        "",
        &format!("{}\n{}", code_cred(CRED, &mock, Some(&seed)), route("/", &mock, Some(CRED))),
    );
    let p = Proc::spawn(&write_config(dir.path(), "quoting.toml", &text));
    let http = client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let tokens = loop {
        let t: Value = http.get(p.admin("/tokens")).send().await.unwrap().json().await.unwrap();
        if t[CRED]["last_error"].is_string() {
            break t;
        }
        assert!(tokio::time::Instant::now() < deadline, "no renewal failure shown: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = tokens[CRED]["last_error"].as_str().unwrap();
    assert!(reason.contains("refresh token *** is revoked; client secret *** was checked"), "{reason}");
    let page = http.get(p.admin("/")).send().await.unwrap().text().await.unwrap();
    let shown = [tokens.to_string(), page, p.log_text()];
    for (what, secret) in [("refresh token", &seed), ("client secret", &client_secret)] {
        for out in &shown {
            assert!(!out.contains(secret.as_str()), "the {what} was shown:\n{out}");
        }
    }
}
