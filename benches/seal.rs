//! The cost of encrypting token records at rest (`state.encryption_keys`, issue #18):
//! AES-256-GCM seal and open of one record the size the stores write (about 600 bytes
//! of JSON: a GoTo access token, a refresh token, keys and times). Sealing happens once
//! per renewal and opening once per read of the store — never per proxied request.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo bench --bench seal
//! ```
//!
//! `cargo test --all-targets` runs each benchmark once (criterion's test mode).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs, unreachable_pub)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use goto_auth_proxy::testing::Secret;
use goto_auth_proxy::testing::{generate_key, Sealer};
use serde_json::{json, Value};

/// A record shaped like the stores' `StoredToken`: a JWT-sized access token and a
/// refresh token, expiry, obtained time and the GoTo keys.
fn record() -> Vec<u8> {
    let access_token = format!("eyJraWQiOiI2MjAiLCJhbGciOiJSUzUxMiJ9.{}.{}", "a".repeat(300), "s".repeat(86));
    serde_json::to_vec(&json!({
        "access_token": access_token,
        "refresh_token": "eyJraWQiOiJvYXV0aHYyLmxtaS5jb20uMDIxOSIsImFsZyI6IlJTNTEyIn0.rt-0123456789abcdef",
        "expires_at": 1_767_225_600u64,
        "expires_at_ms": 1_767_225_600_000u64,
        "obtained_at_ms": 1_767_222_000_000u64,
        "organizer_key": "1234567890123456789",
        "account_key": "9876543210987654321",
    }))
    .unwrap()
}

fn bench_seal(c: &mut Criterion) {
    let sealer = Sealer::new(&[Secret::new(generate_key()), Secret::new(generate_key())]).unwrap();
    let plain = record();
    let public = [("obtained_at_ms", Value::from(1_767_222_000_000u64))];
    let envelope = sealer.seal("redis:goto-auth-proxy:goto", &plain, &public);
    let parsed: Value = serde_json::from_slice(&envelope).unwrap();
    assert_eq!(sealer.open("redis:goto-auth-proxy:goto", &envelope).unwrap().0, plain);

    let mut group = c.benchmark_group("seal");
    group.throughput(Throughput::Bytes(plain.len() as u64));
    group.bench_function("seal_record", |b| {
        b.iter(|| sealer.seal(black_box("redis:goto-auth-proxy:goto"), black_box(&plain), black_box(&public)))
    });
    group.bench_function("open_record", |b| {
        b.iter(|| sealer.open(black_box("redis:goto-auth-proxy:goto"), black_box(&envelope)).unwrap())
    });
    group.bench_function("open_parsed_record", |b| {
        b.iter(|| sealer.open_value(black_box("redis:goto-auth-proxy:goto"), black_box(&parsed)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_seal);
criterion_main!(benches);
