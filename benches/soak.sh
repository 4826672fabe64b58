#!/usr/bin/env bash
# Soak test: the demo (mock GoTo + proxy) with 2-second tokens, so the refresher renews
# both credentials every second, under steady load for SOAK_SECONDS (default 600).
# Reports requests, failures (must be 0), token calls (from the mock's /_mock/stats) and
# the proxy's RSS at start and end. Loopback only; bounded in time; stops by itself.
#
#   SOAK_SECONDS=30 bash benches/soak.sh
#
# Settings (environment):
#   SOAK_SECONDS      how long to drive load (default 600)
#   SOAK_PARALLEL     concurrent requests per batch (default 8)
#   SOAK_BATCH        requests per curl batch (default 200)
#   SOAK_PROFILE      cargo profile to build and run: release (default) or dev
#   CARGO_TARGET_DIR  honoured, as cargo does
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_TO_RUN="${SOAK_SECONDS:-600}"
PARALLEL="${SOAK_PARALLEL:-8}"
BATCH="${SOAK_BATCH:-200}"
PROFILE="${SOAK_PROFILE:-release}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"

command -v curl >/dev/null || { echo "soak: curl is required" >&2; exit 2; }

if [ "$PROFILE" = "release" ]; then
    cargo build --release --bin goto-auth-proxy
    BIN="$TARGET_DIR/release/goto-auth-proxy"
else
    cargo build --bin goto-auth-proxy
    BIN="$TARGET_DIR/debug/goto-auth-proxy"
fi

WORK="$(mktemp -d)"
PROXY_PID=""
cleanup() {
    if [ -n "$PROXY_PID" ] && kill -0 "$PROXY_PID" 2>/dev/null; then
        kill -TERM "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Port 0: the banner tells where everything listens.
GOTO_AUTH_PROXY_DEMO_TOKEN_LIFETIME=2s RUST_LOG=warn \
    "$BIN" demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"$WORK/banner" 2>"$WORK/log" &
PROXY_PID=$!

for _ in $(seq 1 200); do
    grep -q "Ctrl-C stops the demo" "$WORK/banner" 2>/dev/null && break
    kill -0 "$PROXY_PID" 2>/dev/null || { echo "soak: demo exited:" >&2; cat "$WORK/log" >&2; exit 1; }
    sleep 0.05
done
PROXY="$(sed -n 's/^ *data path *\(http:\/\/[0-9.:]*\).*/\1/p' "$WORK/banner" | head -1)"
ADMIN="$(sed -n 's/^ *admin *\(http:\/\/[0-9.:]*\).*/\1/p' "$WORK/banner" | head -1)"
MOCK="$(sed -n 's/.*token endpoint run at \(http:\/\/[0-9.:]*\).*/\1/p' "$WORK/banner" | head -1)"
if [ -z "$PROXY" ] || [ -z "$ADMIN" ] || [ -z "$MOCK" ]; then
    echo "soak: could not read the demo banner:" >&2
    cat "$WORK/banner" >&2
    exit 1
fi
for url in "$PROXY" "$ADMIN" "$MOCK"; do
    case "$url" in http://127.*) ;; *) echo "soak: refusing non-loopback $url" >&2; exit 1 ;; esac
done

for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/readyz")" = "200" ] && break
    sleep 0.1
done

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$PROXY_PID/status"; }
token_calls() { curl -s "$MOCK/_mock/stats" | sed -n 's/.*"token_calls":\([0-9]*\).*/\1/p'; }

RSS_START="$(rss_kib)"
CALLS_START="$(token_calls)"
echo "soak: proxy $PROXY (pid $PROXY_PID), admin $ADMIN, mock $MOCK; ${SECONDS_TO_RUN}s, $PARALLEL in parallel"

requests=0
failures=0
start=$(date +%s)
deadline=$((start + SECONDS_TO_RUN))
batch=0
while [ "$(date +%s)" -lt "$deadline" ]; do
    batch=$((batch + 1))
    # Both credentials: OAuth on /, Direct Login on /G2A/; one organizer-key substitution.
    case $((batch % 3)) in
        0) path="/admin/rest/v1/me" ;;
        1) path="/G2A/rest/v1/sessions" ;;
        *) path="/G2W/rest/v2/organizers/%7BorganizerKey%7D/webinars" ;;
    esac
    codes="$(curl -s --no-progress-meter --parallel --parallel-max "$PARALLEL" --max-time 10 \
        -o /dev/null -w '%{http_code}\n' "$PROXY$path?n=[1-$BATCH]" || true)"
    n=$(printf '%s\n' "$codes" | grep -c . || true)
    ok=$(printf '%s\n' "$codes" | grep -c '^200$' || true)
    requests=$((requests + n))
    failures=$((failures + n - ok))
    if [ "$ok" -ne "$n" ]; then
        echo "soak: batch $batch on $path: $((n - ok)) of $n failed ($(printf '%s\n' "$codes" | grep -v '^200$' | sort | uniq -c | tr '\n' ' '))" >&2
    fi
    kill -0 "$PROXY_PID" 2>/dev/null || { echo "soak: the proxy died" >&2; cat "$WORK/log" >&2; exit 1; }
done
elapsed=$(( $(date +%s) - start ))

RSS_END="$(rss_kib)"
CALLS_END="$(token_calls)"
calls=$((CALLS_END - CALLS_START))
# One renewal per credential per half life (1 s), minus up to 10 % jitter: at most ~2.2/s.
expected_max=$(( (elapsed * 22 + 9) / 10 + 2 ))

echo "soak: ${elapsed}s, $requests requests, $failures failures"
echo "soak: token calls $calls (two credentials, 2 s tokens: expect at most ~$expected_max)"
echo "soak: proxy RSS ${RSS_START} KiB at start, ${RSS_END} KiB at end"
if grep -Eq 'mock-at-|mock-rt-|demo-password' "$WORK/log"; then
    echo "soak: FAIL: a secret appeared in the log" >&2
    exit 1
fi
if [ "$failures" -ne 0 ] || [ "$requests" -eq 0 ]; then
    echo "soak: FAIL" >&2
    exit 1
fi
if [ "$calls" -gt "$expected_max" ]; then
    echo "soak: FAIL: more token calls than the refresh schedule explains" >&2
    exit 1
fi
echo "soak: ok"
