#!/usr/bin/env bash
# Script wall time: what a user of a legacy script feels. Each workload runs directly
# against a TLS upstream 20 ms away, and through goto-auth-proxy on loopback, in one
# alternating run.
#
#   bash benches/scripts.sh                          # 3 rounds, 10 ms each way (20 ms RTT), ≈ 3 min
#   ROUNDS=1 DELAY_MS=10 bash benches/scripts.sh     # a quick look
#
# The upstream is nginx over TLS (HTTP/2 offered by ALPN) with a certificate from a
# throw-away CA made here; between it and every client sits benches/tools/latency_relay.py,
# which delays every chunk by DELAY_MS each way (this kernel has no netem) and charges
# the TCP handshake's round trip on each new connection. The relay's own cost (curl
# straight to nginx against curl through a zero-delay relay) and its timing (curl's
# time_connect, time_appconnect, time_total at DELAY_MS) are measured and reported.
# Direct clients trust the CA
# (`curl --cacert`, an SSL context) and send the token themselves; proxied clients send
# plain HTTP to goto-auth-proxy, which trusts the CA through `[tls] ca_file` and keeps
# its upstream connection warm.
#
# Workloads (each direct and proxied, every round, order alternating):
#   curl      CURLS sequential `curl` processes (200)
#   urllib    one Python urllib loop of LOOP_N requests without connection reuse (100)
#   parallel  PAR such loops at once, PAR_N requests each (8 x 100)
#   newman    the example Postman collection, NEWMAN_N iterations (20)
#
# Environment: ROUNDS (3), DELAY_MS (10), WORKLOADS (all four, space-separated), CURLS, LOOP_N, PAR, PAR_N, NEWMAN_N, GAP_BIN (a
# built binary; default: cargo build --release), BENCH_OUT (target/bench). Installs
# nginx, curl, openssl and newman when missing. Loopback only; everything started is
# stopped by pid however the script exits.
#
# Output: a markdown table on stdout and in $BENCH_OUT/scripts.md (median wall time per
# workload, speed-up = median of per-round direct / proxied, the issue #21 target, the
# requests, new connections and full TLS handshakes the upstream's log shows).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DELAY_MS=${DELAY_MS:-10}
CURLS=${CURLS:-200}
LOOP_N=${LOOP_N:-100}
PAR=${PAR:-8}
PAR_N=${PAR_N:-$LOOP_N}
NEWMAN_N=${NEWMAN_N:-20}
. benches/lib.sh # bench_work, start, stop_pids, free_port, nginx_common (trap: stops all at exit)
bench_work scripts
MD="$OUT/scripts.md"
TOKEN="bench-static-token-0123456789abcdef0123456789abcdef"
REQ_PATH="/admin/rest/v1/me"

log() { printf '[scripts.sh] %s\n' "$*" >&2; }

# ===== dependencies =====
missing=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v newman >/dev/null; then
    log "installing newman with npm"
    npm install -g --no-audit --no-fund --loglevel=error newman >/dev/null
fi
PATH="$PATH:/usr/sbin:/sbin"

if [[ -z "${GAP_BIN:-}" ]]; then
    log "building goto-auth-proxy (release)"
    cargo build --release --locked --quiet --bin goto-auth-proxy
    GAP_BIN="${CARGO_TARGET_DIR:-target}/release/goto-auth-proxy"
fi

# ===== processes =====

wait_http() { # URL [CURL ARGS...]
    local url=$1 deadline=$((SECONDS + 20))
    shift
    until curl -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; do
        if ((SECONDS > deadline)); then
            log "timed out waiting for $url"
            tail -n 20 "$WORK"/*.err >&2 || true
            return 1
        fi
        sleep 0.1
    done
}

# ===== a throw-away CA and the upstream's certificate =====
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=scripts.sh throw-away CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 2 -extfile "$WORK/san.ext" -out "$WORK/server.pem" 2>/dev/null

# ===== upstream: nginx over TLS, HTTP/2 by ALPN, a log line per request =====
free_port "UP_PORT"
free_port "RELAY_PORT"
free_port "RELAY0_PORT"
free_port "GAP_PORT"
free_port "GAP_ADMIN"
BODY='{"key":"8439885694023999999","accountKey":"9999982253621659654","email":"bench@example.com","firstName":"Bench","lastName":"User"}'
{
nginx_common nginx 1 4096
cat <<EOF
http {
  log_format conns '\$connection \$connection_requests \$ssl_session_reused \$server_protocol \$status';
  access_log $WORK/nginx/access.log conns;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
$(nginx_temp_paths nginx)
  server {
    listen 127.0.0.1:$UP_PORT ssl http2;
    ssl_certificate $WORK/server.pem;
    ssl_certificate_key $WORK/server.key;
    ssl_session_cache shared:SSL:1m;
    # TLS 1.3 (one round trip), as current servers offer it; nginx 1.22 defaults to 1.2 only,
    # whose two round trips would flatter the proxy.
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      if (\$http_authorization != "Bearer $TOKEN") { return 401; }
      default_type application/json;
      return 200 '$BODY';
    }
  }
}
EOF
} >"$WORK/nginx.conf"
start upstream nginx -p "$WORK/nginx" -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log"
start relay python3 benches/tools/latency_relay.py "$RELAY_PORT" "$UP_PORT" "$DELAY_MS" "$WORK/relay.log"
start relay0 python3 benches/tools/latency_relay.py "$RELAY0_PORT" "$UP_PORT" 0
mkdir -p "$WORK/state"
chmod 700 "$WORK/state"
cat >"$WORK/gap.toml" <<EOF
[proxy]
listen = "127.0.0.1:$GAP_PORT"
admin_listen = "127.0.0.1:$GAP_ADMIN"

[tls]
ca_file = "$WORK/ca.pem"

[state]
path = "$WORK/state/gap.json"

[credentials.bench]
grant = "static"
token = "$TOKEN"

[[routes]]
prefix = "/"
upstream = "https://127.0.0.1:$RELAY_PORT"
credential = "bench"
EOF
start gap "$GAP_BIN" run --config "$WORK/gap.toml"

DIRECT="https://127.0.0.1:$RELAY_PORT$REQ_PATH"
DIRECT0="https://127.0.0.1:$RELAY0_PORT$REQ_PATH"
PROXIED="http://127.0.0.1:$GAP_PORT$REQ_PATH"
wait_http "$DIRECT" --cacert "$WORK/ca.pem" -H "Authorization: Bearer $TOKEN"
wait_http "$PROXIED"
log "upstream https://127.0.0.1:$UP_PORT behind a ${DELAY_MS} ms/way relay on :$RELAY_PORT; proxy on :$GAP_PORT"

# newman: the example collection, pointed at the proxy or (with the token as collection
# auth) straight at the upstream; its own assertions target the demo's mock, so they are
# dropped here: only the wall time counts. The bench's `static` credential holds no
# organizer key, so the placeholder is written as a key (the proxy would answer a request
# that needs a missing key itself, 503, and the two sides would not do the same work).
python3 - "$WORK" "$TOKEN" <<'PY'
import json, sys
work, token = sys.argv[1], sys.argv[2]
text = open("examples/postman/goto-auth-proxy.postman_collection.json").read()
c = json.loads(text.replace("%7BorganizerKey%7D", "1234567890").replace("{organizerKey}", "1234567890"))
def strip(items):
    for i in items:
        i.pop("event", None)
        if "item" in i:
            strip(i["item"])
strip(c["item"])
c.pop("event", None)
json.dump(c, open(f"{work}/proxied.postman_collection.json", "w"))
c["auth"] = {"type": "bearer", "bearer": [{"key": "token", "value": token, "type": "string"}]}
json.dump(c, open(f"{work}/direct.postman_collection.json", "w"))
PY

# ===== workloads =====
# run_workload NAME MODE (direct | proxied | relay0): prints start and end times.
run_workload() {
    local name=$1 mode=$2 url base t0 t1 i
    case $mode in
    direct) url=$DIRECT base="https://127.0.0.1:$RELAY_PORT" ;;
    relay0) url=$DIRECT0 base="https://127.0.0.1:$RELAY0_PORT" ;;
    nginx) url="https://127.0.0.1:$UP_PORT$REQ_PATH" base="https://127.0.0.1:$UP_PORT" ;;
    proxied) url=$PROXIED base="http://127.0.0.1:$GAP_PORT" ;;
    esac
    local -a auth=() loop=()
    if [[ $mode != proxied ]]; then
        auth=(--cacert "$WORK/ca.pem" -H "Authorization: Bearer $TOKEN")
        loop=("$WORK/ca.pem" "$TOKEN")
    fi
    t0=$(date +%s.%N)
    case $name in
    curl)
        for ((i = 0; i < CURLS; i++)); do
            curl -fsS -o /dev/null "${auth[@]}" "$url"
        done
        ;;
    urllib)
        python3 benches/tools/script_loop.py "$url" "$LOOP_N" "${loop[@]}"
        ;;
    parallel)
        local -a pids=()
        for ((i = 0; i < PAR; i++)); do
            python3 benches/tools/script_loop.py "$url" "$PAR_N" "${loop[@]}" &
            pids+=($!)
        done
        for i in "${pids[@]}"; do wait "$i"; done
        ;;
    newman)
        local coll=proxied
        [[ $mode != proxied ]] && coll=direct
        NODE_EXTRA_CA_CERTS="$WORK/ca.pem" newman run "$WORK/$coll.postman_collection.json" \
            --env-var "baseUrl=$base" -n "$NEWMAN_N" --reporters cli --silent >/dev/null
        ;;
    esac
    t1=$(date +%s.%N)
    echo "$t0 $t1"
}

# The upstream's view of one window (nginx's log lines after byte FROM): requests,
# requests not answered 200, connections opened (a connection's first request is in the
# window), full TLS handshakes, resumed sessions.
upstream_view() { # FROM
    tail -c +"$(($1 + 1))" "$WORK/nginx/access.log" | awk '
        { reqs++; if ($5 != 200) bad++ }
        $2 == 1 { conns++; if ($3 == "r") resumed++; else full++ }
        END { printf "%d %d %d %d %d\n", reqs, bad, conns, full, resumed }'
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
TSV="$WORK/rows.tsv"
: >"$TSV"
read -ra WORKLOADS <<<"${WORKLOADS:-curl urllib parallel newman}"
for round in $(seq "$ROUNDS"); do
    for w in "${WORKLOADS[@]}"; do
        order=(direct proxied)
        ((round % 2 == 0)) && order=(proxied direct)
        for mode in "${order[@]}"; do
            sleep 0.2 # nginx writes its log line after the answer
            from=$(stat -c %s "$WORK/nginx/access.log")
            read -r t0 t1 < <(run_workload "$w" "$mode")
            sleep 0.2
            read -r reqs bad conns full resumed < <(upstream_view "$from")
            secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$w" "$mode" "$secs" "$reqs" "$conns" "$full" "$resumed" >>"$TSV"
            log "round $round $w $mode: ${secs}s; upstream saw $reqs requests on $conns new connections ($full full TLS handshakes, $resumed resumed)"
            if ((bad)); then
                log "round $round $w $mode: $bad of $reqs requests were not answered 200 by the upstream"
                exit 1
            fi
        done
    done
    # The relay's own cost, in the same rounds: curls straight to nginx and through a
    # zero-delay relay.
    n=$((CURLS / 4))
    for mode in nginx relay0; do
        read -r t0 t1 < <(CURLS=$n run_workload curl "$mode")
        printf '%s\t%s\tdirect\t%s\t0\t0\t0\t0\n' "$round" "$mode" "$(awk -v a="$t0" -v b="$t1" -v n=$n 'BEGIN { printf "%.5f", (b - a) / n }')" >>"$TSV"
    done
done

# ===== the relay, checked =====
# A link with RTT r gives a new TLS 1.3 connection: TCP connect r, TLS r more, the answer
# r more. The relay charges the TCP round trip to the first bytes (curl's time_connect
# stays ≈ 0 and the round trip shows in time_appconnect instead), so ≈ 0 / 2r / 3r,
# plus curl's own TLS work; a second request on the kept connection ≈ r.
RELAY_CHECK=$(for _ in 1 2 3 4 5; do
    curl -fsS -o /dev/null -o /dev/null --cacert "$WORK/ca.pem" -H "Authorization: Bearer $TOKEN" \
        -w '%{time_connect} %{time_appconnect} %{time_total}\n' "$DIRECT" "$DIRECT"
done | python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
first, again = rows[0::2], rows[1::2]
m = lambda rs, i: statistics.median(r[i] for r in rs) * 1000
print(f"connect {m(first, 0):.1f} ms, TLS done {m(first, 1):.1f} ms, answer {m(first, 2):.1f} ms; "
      f"a second request on the kept connection {m(again, 2):.1f} ms")')
log "relay check: $RELAY_CHECK"

# ===== report =====
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$TSV" "$MD" "$DELAY_MS" "$ROUNDS" "$CURLS" "$LOOP_N" "$PAR" "$PAR_N" "$NEWMAN_N" \
    "$LOAD_START" "$LOAD_END" "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" "$RELAY_CHECK" <<'PY'
import os, statistics, sys
tsv, md, delay, rounds, curls, loop_n, par, par_n, newman_n, load0, load1, commit, relay_check = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(tsv) if l.strip()]
what = {
    "curl": (f"{curls} sequential `curl` processes", 2.5),
    "urllib": (f"Python `urllib` loop, {loop_n} requests, no connection reuse", None),
    "parallel": (f"{par} such loops in parallel, {par_n} requests each", 2.5),
    "newman": (f"`newman`, the example collection × {newman_n}", 1.5),
}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
out = [
    f"Script wall time at {2 * float(delay):g} ms round trip to a TLS 1.3 upstream (nginx, HTTP/2 offered by ALPN), "
    f"direct and through goto-auth-proxy alternating; medians of {rounds} round(s). Commit {commit}, "
    f"{os.cpu_count()} × {cpu}, load average {load0} at the start and {load1} at the end.",
    "",
    "| workload | direct | through goto-auth-proxy | speed-up | target | upstream requests (direct / proxied) | new upstream connections (direct / proxied) | full TLS handshakes (direct / proxied) | proxied handshakes per minute |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
]
for w, (desc, target) in what.items():
    d = sorted((r for r in rows if r[1] == w and r[2] == "direct"), key=lambda r: int(r[0]))
    p = sorted((r for r in rows if r[1] == w and r[2] == "proxied"), key=lambda r: int(r[0]))
    if not d or not p:
        continue
    ratio = statistics.median(float(a[3]) / float(b[3]) for a, b in zip(d, p))
    med = lambda rs, i: statistics.median(float(r[i]) for r in rs)
    per_min = statistics.median((int(r[6]) + int(r[7])) / (float(r[3]) / 60) for r in p)
    goal = "—" if target is None else f"≥ {target}× {'✅' if ratio >= target else '❌'}"
    out.append(
        f"| {desc} | {med(d, 3):.2f} s | {med(p, 3):.2f} s | **{ratio:.2f}×** | {goal} "
        f"| {med(d, 4):.0f} / {med(p, 4):.0f} | {med(d, 5):.0f} / {med(p, 5):.0f} "
        f"| {med(d, 6):.0f} / {med(p, 6):.0f} | {per_min:.1f} |"
    )
nginx = [float(r[3]) for r in rows if r[1] == "nginx"]
relay = [float(r[3]) for r in rows if r[1] == "relay0"]
if nginx and relay:
    a, b = statistics.median(nginx) * 1000, statistics.median(relay) * 1000
    out += [
        "",
        f"The relay's own cost: a `curl` (new process, new TLS connection) takes {a:.1f} ms straight to nginx and "
        f"{b:.1f} ms through the relay with zero delay, so the relay adds {b - a:.1f} ms to a new TLS connection "
        "(to each direct call; a proxied call crosses it twice, not six times).",
    ]
out += [
    "",
    f"The relay at {float(delay):g} ms each way, checked with `curl` (medians of 5; a new connection should take "
    f"≈ 0 / {4 * float(delay):g} / {6 * float(delay):g} ms plus curl's own TLS work): {relay_check}.",
]
text = "\n".join(out) + "\n"
open(md, "w").write(text)
print(text)
PY
