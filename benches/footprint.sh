#!/usr/bin/env bash
# The sidecar's footprint, multiplied by every pod it runs in: resident memory when idle
# with two credentials, time from start to ready with stored valid tokens, and the
# release binary's size. (Peak RSS under 256 connections is `benches/load.sh`'s, beside
# nginx's in the same run.)
#
#   bash benches/footprint.sh              # 20 starts
#   STARTS=5 bash benches/footprint.sh     # a quick look
#
# Two `client_credentials` credentials get their tokens (one hour) from the crate's mock
# token endpoint (crates/bench-tools/src/mock_goto.rs) and store them in the state file. Then:
#   idle RSS       the proxy after its first tokens and a few requests on each route,
#                  left alone IDLE_SECS (3): VmRSS and VmHWM from /proc, and the anonymous
#                  (heap, stacks) and file-backed (binary, libc) parts
#   start to ready STARTS (20) starts with the stored tokens: from exec to the first
#                  `200` from /readyz (polled every 0.5 ms), median and spread; the
#                  state file, unchanged, shows no start asked for a token
#   binary size    the release binary as built, and stripped
#   for scale      nginx (when installed) idle as a proxy_pass to the same upstream
#
# Environment: STARTS, IDLE_SECS, GAP_BIN and MOCK_BIN (built binaries; default: cargo
# build --release), MALLOC_CONF_TRY (a jemalloc option string to measure in the same run
# through `_RJEM_MALLOC_CONF`, e.g. "narenas:1"), GAP_STATIC_BIN (another build of the
# proxy, e.g. the static musl one, measured idle in the same run; docs/performance.md "Footprint"
# says how to build it), BENCH_OUT (target/bench). Loopback only; everything started is
# stopped by pid however the script exits.
#
# Output: a markdown table on stdout and in $BENCH_OUT/footprint.md.
set -euo pipefail
cd "$(dirname "$0")/.."

STARTS=${STARTS:-20}
IDLE_SECS=${IDLE_SECS:-3}
. benches/lib.sh # bench_work, start, stop_pids, free_port, nginx_common (trap: stops all at exit)
bench_work footprint
MD="$OUT/footprint.md"

log() { printf '[footprint.sh] %s\n' "$*" >&2; }

if [[ -z "${GAP_BIN:-}" || -z "${MOCK_BIN:-}" ]]; then
    log "building goto-auth-proxy and the mock token endpoint (release)"
    # Two builds, so the product is built as users build it (the tool enables the mock's
    # test-only faults, which one build of both would give the product too).
    cargo build --release --locked --quiet --bin goto-auth-proxy
    cargo build --release --locked --quiet -p goto-bench-tools --bin bench_mock_goto
    dir="${CARGO_TARGET_DIR:-target}"
    GAP_BIN=${GAP_BIN:-$dir/release/goto-auth-proxy}
    MOCK_BIN=${MOCK_BIN:-$dir/release/bench_mock_goto}
fi

start mock "$MOCK_BIN" --token-lifetime-ms 3600000
deadline=$((SECONDS + 20))
until grep -q '^http://' "$WORK/mock.out" 2>/dev/null; do
    ((SECONDS < deadline)) || { log "the mock token endpoint did not start"; exit 1; }
    sleep 0.1
done
MOCK_URL=$(head -n1 "$WORK/mock.out")

free_port "DATA_PORT"
free_port "ADMIN_PORT"
mkdir -p "$WORK/state"
chmod 700 "$WORK/state"
cat >"$WORK/gap.toml" <<EOF
[proxy]
listen = "127.0.0.1:$DATA_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"

[state]
path = "$WORK/state/gap.json"

[credentials.admin]
grant = "client_credentials"
client_id = "demo-client-id"
client_secret = "demo-client-secret"
token_url = "$MOCK_URL/oauth/token"

[credentials.meetings]
grant = "client_credentials"
client_id = "demo-client-id"
client_secret = "demo-client-secret"
token_url = "$MOCK_URL/oauth/token"

[[routes]]
prefix = "/admin/"
upstream = "$MOCK_URL"
credential = "admin"

[[routes]]
prefix = "/G2M/"
upstream = "$MOCK_URL"
credential = "meetings"
EOF

# The measurements, in one Python process: it starts the binary, polls /readyz, reads /proc.
python3 - "$GAP_BIN" "$WORK" "$STARTS" "$IDLE_SECS" "$DATA_PORT" "$ADMIN_PORT" "${MALLOC_CONF_TRY:-}" "${GAP_STATIC_BIN:-}" <<'PY' >"$WORK/results.tsv"
import http.client, os, subprocess, sys, time

gap, work, starts, idle_secs, data, admin, try_conf, static_bin = sys.argv[1:]
starts, idle_secs, data, admin = int(starts), float(idle_secs), int(data), int(admin)
conf = f"{work}/gap.toml"


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    except OSError:
        return None
    finally:
        c.close()


def start(env_extra=None, binary=None):
    env = dict(os.environ, RUST_LOG="warn")
    env.update(env_extra or {})
    t0 = time.perf_counter()
    p = subprocess.Popen([binary or gap, "run", "--config", conf], stdout=subprocess.DEVNULL,
                         stderr=open(f"{work}/gap.err", "a"), env=env)
    deadline = t0 + 20
    while time.perf_counter() < deadline:
        if get(admin, "/readyz") == 200:
            return p, time.perf_counter() - t0
        time.sleep(0.0005)
    p.kill()
    sys.exit("the proxy did not get ready in 20 s; see gap.err")


def stop(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def status(pid):
    d = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            d[k] = int(v.split()[0])
    return d


def idle(env_extra, label, binary=None):
    p, _ = start(env_extra, binary)
    for _ in range(5):
        for path in ("/admin/rest/v1/me", "/G2M/rest/upcomingMeetings"):
            get(data, path)
    time.sleep(idle_secs)
    s = status(p.pid)
    stop(p)
    print(f"idle\t{label}\t{s['VmRSS']}\t{s['VmHWM']}\t{s['RssAnon']}\t{s['RssFile']}\t{s['Threads']}")


def stored_tokens():
    # A start that asked for a token would have stored a new one.
    return open(f"{work}/state/gap.json", "rb").read()


# First start: both credentials get their tokens and store them.
p, _ = start()
stop(p)
stored = stored_tokens()

idle({}, "default")
if try_conf:
    idle({"_RJEM_MALLOC_CONF": try_conf}, try_conf)
if static_bin:
    idle({}, "static", static_bin)

times = []
for _ in range(starts):
    p, t = start()
    times.append(t)
    stop(p)
for t in times:
    print(f"start\t{t * 1000:.2f}")
print(f"same_tokens\t{int(stored_tokens() == stored)}")
PY

# For scale: nginx (when installed) doing the same job idle, one worker, proxy_pass with
# a keep-alive pool to the same upstream, after the same few requests; master and worker
# summed, as benches/load.sh sums them.
PATH="$PATH:/usr/sbin:/sbin"
if command -v nginx >/dev/null; then
    free_port "NGINX_PORT"
    {
        nginx_common nginx 1 1024
        cat <<NGINX
http {
  access_log off;
$(nginx_temp_paths nginx)
  upstream goto { server ${MOCK_URL#http://}; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://goto;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-static-token";
    }
  }
}
NGINX
    } >"$WORK/nginx.conf"
    start nginx nginx -p "$WORK/nginx" -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log"
    NGINX_PID=${PID[nginx]}
    for _ in $(seq 100); do curl -sS -o /dev/null "http://127.0.0.1:$NGINX_PORT/" 2>/dev/null && break || sleep 0.1; done
    for _ in 1 2 3 4 5; do curl -sS -o /dev/null "http://127.0.0.1:$NGINX_PORT/admin/rest/v1/me" || true; done
    sleep "$IDLE_SECS"
    kb=0
    for p in $NGINX_PID $(pgrep -P "$NGINX_PID" || true); do
        kb=$((kb + $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status")))
    done
    printf 'nginx\t%s\n' "$kb" >>"$WORK/results.tsv"
fi

size=$(stat -c %s "$GAP_BIN")
strip -o "$WORK/gap.stripped" "$GAP_BIN"
stripped=$(stat -c %s "$WORK/gap.stripped")
if [[ -n ${GAP_STATIC_BIN:-} ]]; then
    strip -o "$WORK/static.stripped" "$GAP_STATIC_BIN"
    export STATIC_SIZES="$(stat -c %s "$GAP_STATIC_BIN") $(stat -c %s "$WORK/static.stripped")"
fi

python3 - "$WORK/results.tsv" "$MD" "$size" "$stripped" "$STARTS" "$IDLE_SECS" "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" <<'PY'
import os, statistics, sys
tsv, md, size, stripped, starts, idle_secs, commit = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(tsv) if l.strip()]
mib = lambda kb: f"{int(kb) / 1024:.1f} MiB"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
out = [f"Footprint, commit {commit}, {os.cpu_count()} × {cpu}, load average {open('/proc/loadavg').read().split()[0]} at the end.", ""]
out += ["| what | value | target |", "|---|---:|---:|"]
for r in rows:
    if r[0] == "idle":
        label = {"default": "", "static": " (GAP_STATIC_BIN: the static musl build)"}.get(r[1], f" with `_RJEM_MALLOC_CONF={r[1]}`")
        ok = "✅" if int(r[2]) <= 6 * 1024 else "❌"
        out.append(f"| idle RSS, two credentials{label} (after {idle_secs} s idle) | {mib(r[2])} "
                   f"(heap and stacks {mib(r[4])}, binary and libraries {mib(r[5])}; peak {mib(r[3])}; {r[6]} threads) | ≤ 6 MiB {ok} |")
for r in rows:
    if r[0] == "nginx":
        out.append(f"| for scale: nginx idle, one worker, `proxy_pass` with a keep-alive pool (master and worker summed) | {mib(r[1])} | — |")
starts_ms = sorted(float(r[1]) for r in rows if r[0] == "start")
med = statistics.median(starts_ms)
same = next(r[1] for r in rows if r[0] == "same_tokens") == "1"
out.append(f"| start to ready with stored valid tokens, median of {len(starts_ms)} | {med:.1f} ms "
           f"(min {starts_ms[0]:.1f}, max {starts_ms[-1]:.1f}){'' if same else ' — the stored tokens changed: a start asked for a token'} "
           f"| ≤ 30 ms {'✅' if med <= 30 and same else '❌'} |")
out.append(f"| release binary | {int(size) / 2**20:.1f} MiB ({int(stripped) / 2**20:.1f} MiB stripped) | — |")
if os.environ.get("STATIC_SIZES"):
    ssize, sstripped = os.environ["STATIC_SIZES"].split()
    out.append(f"| static musl binary (GAP_STATIC_BIN) | {int(ssize) / 2**20:.1f} MiB ({int(sstripped) / 2**20:.1f} MiB stripped) | — |")
text = "\n".join(out) + "\n"
open(md, "w").write(text)
print(text)
PY
