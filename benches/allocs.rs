//! Heap allocations per proxied request, counted by a global allocator that wraps the
//! system one (`stats_alloc`).
//!
//! Client, proxy and upstream share one current-thread runtime in this process, so
//! `(client + proxy + upstream) − (client + upstream)` over the same number of requests
//! is what the proxy allocates per request. A few of the data path's building blocks are
//! counted on their own too, to say where the allocations come from.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo bench --bench allocs      # 20 000 requests each way
//! ```
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it makes 200 requests each
//! way and fails if the proxy's own allocations per request grew.

// Test and bench code may unwrap, expect and print (the house lints in Cargo.toml are
// for the product).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs, unreachable_pub)]

mod support;

use std::alloc::System;
use std::hint::black_box;

use goto_auth_proxy::testing::normalize_path;
use goto_auth_proxy::testing::strip_hop_by_hop;
use goto_auth_proxy::testing::Metrics;
use http::header::{self, HeaderMap, HeaderValue};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

// ===== the counting allocator =====

// `stats_alloc` wraps the system allocator and counts (the `unsafe` of a GlobalAlloc
// lives in that crate; this crate forbids its own).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations (realloc counted as one) and bytes allocated (a growing realloc counts
/// its growth).
#[derive(Clone, Copy)]
struct Count {
    allocs: u64,
    bytes: u64,
}

fn now() -> Count {
    let s = GLOBAL.stats();
    Count { allocs: (s.allocations + s.reallocations) as u64, bytes: s.bytes_allocated as u64 }
}

/// Allocations and bytes per unit since `before`, over `n` units.
fn per_unit_since(before: Count, n: u64) -> (f64, f64) {
    let after = now();
    ((after.allocs - before.allocs) as f64 / n as f64, (after.bytes - before.bytes) as f64 / n as f64)
}

/// Allocations per call of `f` over `n` calls.
fn per_call(n: u64, mut f: impl FnMut()) -> (f64, f64) {
    let before = now();
    for _ in 0..n {
        f();
    }
    per_unit_since(before, n)
}

async fn per_request(client: &support::BenchClient, uri: &http::Uri, n: u64) -> (f64, f64) {
    let before = now();
    for _ in 0..n {
        black_box(support::get(client, uri).await);
    }
    per_unit_since(before, n)
}

fn typical_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
    h.insert(header::USER_AGENT, HeaderValue::from_static("curl/8.5.0"));
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer client-supplied-token"));
    h
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u64 = if full { 20_000 } else { 200 };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");

    let (direct, proxied, raw, affine) = rt.block_on(async {
        let bench = support::Bench::start().await;
        // Warm both pools and every lazily built structure first.
        per_request(&bench.direct.0, &bench.direct.1, 100).await;
        per_request(&bench.proxied.0, &bench.proxied.1, 100).await;
        let direct = per_request(&bench.direct.0, &bench.direct.1, n).await;
        let proxied = per_request(&bench.proxied.0, &bench.proxied.1, n).await;
        // The same client requests on one hyper::client::conn::http1 connection, no pool.
        let upstream = bench.direct.1.authority().expect("an authority").as_str().parse().expect("an address");
        // (A macro: the two connection types share no trait.)
        macro_rules! per_get {
            ($conn:expr) => {{
                let mut conn = $conn;
                for _ in 0..100 {
                    conn.get().await;
                }
                let before = now();
                for _ in 0..n {
                    black_box(conn.get().await);
                }
                per_unit_since(before, n)
            }};
        }
        let raw = per_get!(support::RawConn::connect(upstream).await);
        // And driven inside this task.
        let affine = per_get!(support::AffineConn::connect(upstream).await);
        bench.stop().await;
        (direct, proxied, raw, affine)
    });

    println!("allocations per request ({n} requests each way, one current-thread runtime)");
    println!("{:<44} {:>10} {:>12}", "", "allocs", "bytes");
    println!("{:<44} {:>10.1} {:>12.0}", "client + upstream (direct)", direct.0, direct.1);
    println!("{:<44} {:>10.1} {:>12.0}", "client + proxy + upstream", proxied.0, proxied.1);
    println!("{:<44} {:>10.1} {:>12.0}", "the proxy's own (difference)", proxied.0 - direct.0, proxied.1 - direct.1);
    println!("{:<44} {:>10.1} {:>12.0}", "client (conn::http1, no pool) + upstream", raw.0, raw.1);
    println!("{:<44} {:>10.1} {:>12.0}", "hyper-util pool's share (difference)", direct.0 - raw.0, direct.1 - raw.1);
    println!("{:<44} {:>10.1} {:>12.0}", "client (conn::http1 in-task) + upstream", affine.0, affine.1);

    // Building blocks, each on its own.
    let m = Metrics::new(prometheus::Registry::new()).expect("metrics register");
    let base = typical_headers();
    let k = 1_000;
    let clone_alone = per_call(k, || drop(black_box(base.clone())));
    let clone_and_strip = per_call(k, || strip_hop_by_hop(&mut black_box(base.clone())));
    let rows: [(&str, (f64, f64)); 5] = [
        ("normalize_path (clean path)", per_call(k, || drop(black_box(normalize_path(black_box("/a/b/c")))))),
        ("normalize_path (dirty path)", per_call(k, || drop(black_box(normalize_path(black_box("/a/./b/%2e%2e/c")))))),
        ("HeaderMap clone (retry copy, 4 headers)", clone_alone),
        (
            "strip_hop_by_hop (no Connection header)",
            (clone_and_strip.0 - clone_alone.0, clone_and_strip.1 - clone_alone.1),
        ),
        (
            "requests_total.with_label_values(..).inc()",
            per_call(k, || m.requests_total.with_label_values(&["/", "GET", "200"]).inc()),
        ),
    ];
    println!();
    println!("{:<44} {:>10} {:>12}", "building block", "allocs", "bytes");
    for (name, (a, b)) in rows {
        println!("{name:<44} {a:>10.1} {b:>12.0}");
    }

    let own = proxied.0 - direct.0;
    assert!(own > 0.0, "the proxy allocates something per request ({own})");
    // 5 when this was written (docs/performance.md): hyper's four (the request's head
    // and header map, its client dispatch, the upstream read buffer) and the retry copy's `Vec`.
    // More means a new allocation on the hot path: find it (this bench's building blocks,
    // or heaptrack) before raising this.
    assert!(own <= 5.5, "the proxy allocates {own} times per proxied request, more than the 5 it did");
}
