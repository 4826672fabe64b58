//! Criterion micro-benchmarks of the data path, piece by piece, and one whole proxied
//! round trip against the same client going direct.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo bench --bench hot_path            # all (about 4 minutes)
//! cargo bench --bench hot_path -- round_trip                   # a filter
//! ```
//!
//! `cargo test --all-targets` runs every benchmark once (criterion's test mode), which
//! keeps this file compiling and working without costing the test suite time.

// Test and bench code may unwrap, expect and print (the house lints in Cargo.toml are
// for the product); the hot-path bench measures an RwLock as its baseline.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::disallowed_types,
    missing_docs,
    unreachable_pub
)]

mod support;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use goto_auth_proxy::testing::strip_hop_by_hop;
use goto_auth_proxy::testing::Metrics;
use goto_auth_proxy::testing::Secret;
use goto_auth_proxy::testing::{normalize_path, Router};
use goto_auth_proxy::testing::{Credential, Token};
use goto_auth_proxy::Config;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

// ===== fixtures =====

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// The headers `wrk`/curl-like clients send, as the proxy holds them after routing.
fn typical_headers(with_connection: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
    h.insert(header::USER_AGENT, HeaderValue::from_static("curl/8.5.0"));
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, deflate"));
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer client-supplied-token"));
    h.insert("x-request-id", HeaderValue::from_static("7f3c2a9e-5b1d-4c8e-9a2f-0d6b3e1c4a57"));
    if with_connection {
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    h
}

fn token() -> Token {
    let now = SystemTime::now();
    Token::new(Secret::new(support::TOKEN), None, now + Duration::from_secs(3600), now).expect("a valid token")
}

/// A real `Credential` holding a `static` token, built the way `app::start` builds it.
fn static_credential(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Arc<Credential> {
    let text = format!(
        "[state]\npath = {:?}\n\n[credentials.bench]\ngrant = \"static\"\ntoken = \"{}\"\n\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:1\"\ncredential = \"bench\"\n",
        dir.join("state.json").display().to_string(),
        support::TOKEN
    );
    let config = Config::parse("bench.toml", &text).expect("the bench config is valid");
    let metrics = Metrics::new(prometheus::Registry::new()).expect("metrics register");
    let store = rt.block_on(goto_auth_proxy::testing::open_store(&config, &metrics)).expect("a file store");
    let creds: BTreeMap<String, Arc<Credential>> =
        goto_auth_proxy::testing::credentials(&config, &store, &metrics).expect("the outbound settings build");
    let cred = creds.get("bench").expect("the bench credential").clone();
    rt.block_on(cred.init());
    assert!(cred.valid_token().is_some(), "the static token is loaded");
    cred
}

// ===== token read + header insert =====

fn token_insert(c: &mut Criterion) {
    let rt = current_thread();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cred = static_credential(&rt, dir.path());
    let rwlock: RwLock<Arc<Token>> = RwLock::new(Arc::new(token()));
    let base = typical_headers(false);

    // One header map per benchmark, reused: each insert replaces (and drops) the value
    // the previous iteration put there, as each request drops its own.
    let mut g = c.benchmark_group("token_insert");
    token_reads(&mut g, &cred, &rwlock, &base);
    // What proxy::with_valid_token does: load, validity check against the clock, then
    // clone + insert under the guard (no reference count taken on the token).
    g.bench_function("arcswap_as_proxy_does", |b| {
        let mut h = base.clone();
        b.iter(|| {
            let guard = cred.load();
            match guard.as_ref() {
                Some(t) if t.is_valid_at(SystemTime::now()) => {
                    h.insert(header::AUTHORIZATION, t.bearer().clone());
                    black_box(t.generation);
                }
                _ => unreachable!("static tokens stay valid"),
            }
        })
    });
    g.finish();

    // The same two reads while another core reads the same token in a loop, as a second
    // worker thread does under load (the RwLock's reader count is one contended line).
    let mut g = c.benchmark_group("token_insert_contended");
    let stop = Arc::new(AtomicBool::new(false));
    let rwlock = Arc::new(rwlock);
    let background = {
        let (stop, cred, rwlock) = (stop.clone(), cred.clone(), rwlock.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    black_box(cred.load().as_ref().map(|t| t.bearer().clone()));
                    black_box(rwlock.read().unwrap_or_else(|e| e.into_inner()).bearer().clone());
                }
            }
        })
    };
    token_reads(&mut g, &cred, &rwlock, &base);
    g.finish();
    stop.store(true, Ordering::Relaxed);
    background.join().expect("the background reader stops");
}

/// The two token reads each group measures: an `ArcSwap` load (a guard, no refcount) and,
/// as the baseline, a std `RwLock` around the current token; each then clones the
/// header value and inserts it.
fn token_reads(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    cred: &Credential,
    rwlock: &RwLock<Arc<Token>>,
    base: &HeaderMap,
) {
    g.bench_function("arcswap_load", |b| {
        let mut h = base.clone();
        b.iter(|| {
            if let Some(t) = cred.load().as_ref() {
                h.insert(header::AUTHORIZATION, t.bearer().clone());
            }
        })
    });
    g.bench_function("rwlock_read", |b| {
        let mut h = base.clone();
        b.iter(|| {
            let t = rwlock.read().unwrap_or_else(|e| e.into_inner()).clone();
            h.insert(header::AUTHORIZATION, t.bearer().clone());
        })
    });
}

// ===== routing =====

fn router_find(c: &mut Criterion) {
    let mut g = c.benchmark_group("router_find");
    for n in [1usize, 10, 100] {
        // n - 1 product prefixes plus the catch-all `/`, as a two-product config has.
        let mut entries: Vec<(String, usize)> = (1..n).map(|i| (format!("/api{i}/rest/v{}/", i % 3 + 1), i)).collect();
        entries.push(("/".to_string(), 0));
        let router = Router::new(entries);
        // Worst case: every specific prefix is tried before the catch-all answers.
        g.bench_with_input(BenchmarkId::new("catch_all", n), &router, |b, r| {
            b.iter(|| r.find(black_box("/admin/rest/v1/me")))
        });
        let hit = format!("/api{}/rest/v{}/x", n.saturating_sub(1).max(1), (n.saturating_sub(1).max(1)) % 3 + 1);
        g.bench_with_input(BenchmarkId::new("specific", n), &router, |b, r| b.iter(|| r.find(black_box(&hit))));
    }
    g.finish();
}

fn normalize(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize_path");
    g.bench_function("clean", |b| {
        b.iter(|| normalize_path(black_box("/G2W/rest/v2/organizers/8439885694023999999/webinars")).map(|p| p.len()))
    });
    g.bench_function("dirty", |b| {
        b.iter(|| {
            normalize_path(black_box(
                "/G2W/rest/./v2//organizers/%2e%2e/organizers/8439885694023999999/x/..%2Fwebinars",
            ))
            .map(|p| p.len())
        })
    });
    g.finish();
}

// ===== header work =====

fn headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    for (name, with_conn) in [("strip_hop_by_hop", false), ("strip_hop_by_hop_with_connection", true)] {
        let base = typical_headers(with_conn);
        g.bench_function(name, |b| b.iter_batched_ref(|| base.clone(), strip_hop_by_hop, BatchSize::SmallInput));
    }
    // forward_on keeps a copy of the request headers for a possible retry: this clone.
    let base = typical_headers(false);
    g.bench_function("clone_for_retry", |b| b.iter(|| black_box(&base).clone()));
    g.finish();
}

/// Mirrors `proxy::upstream_uri` (private): one String, then PathAndQuery and Uri parse.
fn upstream_uri(c: &mut Criterion) {
    let scheme = Scheme::HTTP;
    let authority = Authority::from_static("127.0.0.1:8081");
    c.bench_function("upstream_uri_build", |b| {
        b.iter(|| {
            let (path, query) = (black_box("/G2W/rest/v2/organizers/8439885694023999999/webinars"), Some("page=2"));
            let mut pq = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
            pq.push_str(path);
            if let Some(q) = query {
                pq.push('?');
                pq.push_str(q);
            }
            let pq = PathAndQuery::try_from(pq).expect("a valid path");
            Uri::builder().scheme(scheme.clone()).authority(authority.clone()).path_and_query(pq).build()
        })
    });
}

// ===== metrics =====

fn metrics(c: &mut Criterion) {
    let m = Metrics::new(prometheus::Registry::new()).expect("metrics register");
    let resolved = m.requests_total.with_label_values(&["/", "GET", "200"]);
    let hist = m.request_duration.with_label_values(&["/"]);
    let mut g = c.benchmark_group("metrics");
    // What Proxy::serve does per request: hash three labels, read-lock the map, clone.
    g.bench_function("requests_total_with_label_values", |b| {
        b.iter(|| m.requests_total.with_label_values(&[black_box("/"), "GET", "200"]).inc())
    });
    g.bench_function("requests_total_pre_resolved", |b| b.iter(|| black_box(&resolved).inc()));
    g.bench_function("duration_observe_with_clock", |b| {
        b.iter(|| {
            let start = Instant::now();
            hist.observe(start.elapsed().as_secs_f64())
        })
    });
    g.finish();
}

// ===== whole round trip =====

fn round_trip(c: &mut Criterion) {
    // One thread runs client, proxy and upstream: the time per request is their summed
    // CPU plus loopback syscalls, so proxied − direct is what the proxy adds.
    let rt = current_thread();
    let bench = rt.block_on(support::Bench::start());
    let mut g = c.benchmark_group("round_trip");
    g.measurement_time(Duration::from_secs(6));
    g.bench_function("direct", |b| b.to_async(&rt).iter(|| support::get(&bench.direct.0, &bench.direct.1)));
    g.bench_function("proxied_static", |b| b.to_async(&rt).iter(|| support::get(&bench.proxied.0, &bench.proxied.1)));
    // The client side without hyper-util's pool (hyper::client::conn::http1 on one
    // connection): direct − direct_conn_http1 estimates what the proxy's upstream side
    // would save with connection-affine upstream connections.
    let upstream = bench.direct.1.authority().expect("an authority").as_str().parse().expect("an address");
    let raw = tokio::sync::Mutex::new(rt.block_on(support::RawConn::connect(upstream)));
    g.bench_function("direct_conn_http1", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let raw = &raw;
            async move {
                let mut conn = raw.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(conn.get().await);
                }
                start.elapsed()
            }
        })
    });
    // The same, with the connection polled inside the requesting task: no spawned
    // driver, so no cross-task wake-ups per request.
    let affine = tokio::sync::Mutex::new(rt.block_on(support::AffineConn::connect(upstream)));
    g.bench_function("direct_conn_http1_same_task", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let affine = &affine;
            async move {
                let mut conn = affine.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(conn.get().await);
                }
                start.elapsed()
            }
        })
    });
    g.finish();
    drop(raw);
    drop(affine);
    rt.block_on(bench.stop());
}

criterion_group!(benches, token_insert, router_find, normalize, headers, upstream_uri, metrics, round_trip);
criterion_main!(benches);
