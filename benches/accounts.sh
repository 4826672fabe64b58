#!/usr/bin/env bash
# Many accounts in one proxy, measured: sign-ins, renewals under token_rate, latency with
# a random account against one credential in the same run, memory, bytes written per
# renewal, /tokens and the status page, start to ready. Loopback only, bounded in time.
#
#   bash benches/accounts.sh                                   # 10,000 accounts, 10 minutes
#   ACCOUNTS=100 DURATION=60 bash benches/accounts.sh           # a quick look
#
# Environment: ACCOUNTS (10000), DURATION (600 seconds of traffic), TOKEN_SECS (300: five-minute tokens),
# TOKEN_RATE (50), WORKERS (8 client connections), BENCH_OUT (target/bench),
# GAP_BIN (default: built with `cargo build --release`). Writes $BENCH_OUT/accounts-N.md;
# exits 1 when a target is missed. Needs nothing beyond cargo: the mock GoTo runs inside
# the bench tool.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-target/bench}
if [ -z "${GAP_BIN:-}" ]; then
    cargo build --release --bin goto-auth-proxy
    GAP_BIN=target/release/goto-auth-proxy
fi
cargo build --release -p goto-bench-tools --bin accounts_bench
exec target/release/accounts_bench --bin "$GAP_BIN" \
    --accounts "${ACCOUNTS:-10000}" --seconds "${DURATION:-600}" \
    --token-secs "${TOKEN_SECS:-300}" --token-rate "${TOKEN_RATE:-50}" \
    --workers "${WORKERS:-8}" --out "$OUT"
