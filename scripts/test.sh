#!/usr/bin/env bash
# The whole test suite, on a fresh machine too (the README's second command; CI runs
# exactly this through .ci/run): installs what the tests need (curl, python3-yaml,
# redis-server, redis-sentinel, tinyproxy, chromium + chromium-driver, newman,
# oidc-provider) when missing, then format, lints and every test target (a 60-second
# chaos soak among them).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --all-targets --locked
