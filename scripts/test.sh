#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need (curl,
# redis-server, newman, python3-yaml) when missing, then format, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
