#!/usr/bin/env bash
# Regenerates docs/status-page.png from the real page: starts `goto-auth-proxy demo` on
# free ports, takes a 1280×800 screenshot of its status page with headless Chromium,
# and stops the demo.
#
#   bash scripts/status-page-screenshot.sh [OUT.png]      # default: docs/status-page.png
#
# Builds the binary first (cargo build; CARGO_TARGET_DIR is honoured), unless
# GOTO_AUTH_PROXY names one. Needs chromium (scripts/install-test-deps.sh installs it).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/docs/status-page.png}
say() { printf 'status-page-screenshot: %s\n' "$*" >&2; }

command -v chromium >/dev/null || { say "chromium is not installed (bash scripts/install-test-deps.sh)"; exit 1; }
if [[ -n ${GOTO_AUTH_PROXY:-} ]]; then
  bin=$GOTO_AUTH_PROXY
else
  (cd "$root" && cargo build --quiet --bin goto-auth-proxy)
  bin=${CARGO_TARGET_DIR:-$root/target}/debug/goto-auth-proxy
fi

work=$(mktemp -d)
demo_pid=
stop() {
  if [[ -n $demo_pid ]]; then
    kill "$demo_pid" 2>/dev/null || true
    wait "$demo_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop EXIT

# Port 0: the system picks free ports, and the banner says which.
"$bin" demo --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"$work/banner" 2>"$work/log" &
demo_pid=$!

# The banner comes once the demo's people have signed in: the page then shows them.
url=
for _ in $(seq 300); do
  url=$(sed -n 's|^ *status page *\(http://[^ ]*/\).*|\1|p' "$work/banner" | head -n 1)
  [[ -n $url ]] && break
  kill -0 "$demo_pid" 2>/dev/null || { say "the demo stopped:"; cat "$work/log" >&2; exit 1; }
  sleep 0.1
done
[[ -n $url ]] || { say "the demo printed no status page address in 30 s"; cat "$work/log" >&2; exit 1; }

chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$work/profile" --window-size=1280,800 --screenshot="$out" "$url" \
  >"$work/chromium" 2>&1 || { cat "$work/chromium" >&2; exit 1; }
[[ -s $out ]] || { say "chromium wrote no screenshot"; cat "$work/chromium" >&2; exit 1; }
say "wrote $out from $url"
