#!/usr/bin/env bash
# Profiles goto-auth-proxy (static credential) under wrk load, pinned as in load.sh's
# pinned mode: wrk on CPU 0; the nginx upstream and the proxy (1 worker) on CPU 1.
#
#   bash benches/profile.sh              # perf record -e cpu-clock (works without PMU counters)
#   PROFILER=callgrind bash benches/profile.sh   # valgrind --tool=callgrind, inclusive costs
#   PROFILER=syscalls bash benches/profile.sh    # perf trace -s: syscalls per request
#   PROXY=nginx PROFILER=syscalls bash benches/profile.sh   # the same for nginx as the proxy
#
# Environment: DURATION (8 s of load), CONNS (50), BENCH_OUT (target/bench), GAP_BIN. Needs nginx,
# wrk and perf or valgrind (apt-get: nginx wrk linux-perf valgrind); run load.sh once
# first, or install them by hand. Output: $BENCH_OUT/profile-<profiler>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILER=${PROFILER:-perf}
PROXY=${PROXY:-gap}
DURATION=${DURATION:-8}
CONNS=${CONNS:-50}
. benches/lib.sh # bench_work, start, stop_pids, free_port, nginx_common (trap: stops all at exit)
bench_work profile
PATH="$PATH:/usr/sbin:/sbin"

# GAP_BIN profiles another build (e.g. a baseline kept for an A/B) instead of this tree's.
if [[ -n ${GAP_BIN:-} ]]; then
    BIN=$GAP_BIN
else
    cargo build --release --locked --quiet --bin goto-auth-proxy
    BIN="${CARGO_TARGET_DIR:-target}/release/goto-auth-proxy"
fi

free_port UP
free_port PX
free_port AD

{
nginx_common up 1 4096
cat <<EOF
http {
  access_log off; keepalive_requests 10000000;
$(nginx_temp_paths up)
  server { listen 127.0.0.1:$UP; location / { default_type application/json;
    return 200 '{"key":"8439885694023999999","accountKey":"9999982253621659654","email":"bench@example.com","firstName":"Bench","lastName":"User","locale":"en_US","timeZone":"Europe/Berlin","products":["G2M","G2W","G2T"],"createTime":1700000000000}'; } }
}
EOF
} >"$WORK/up.conf"
cat >"$WORK/gap.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PX"
admin_listen = "127.0.0.1:$AD"
workers = 1
[state]
path = "$WORK/state.json"
[credentials.bench]
grant = "static"
token = "bench-static-token-0123456789abcdef0123456789abcdef"
[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:$UP"
credential = "bench"
EOF
{
nginx_common px 1 4096
cat <<EOF
http {
  access_log off; keepalive_requests 10000000;
$(nginx_temp_paths px)
  upstream up { server 127.0.0.1:$UP; keepalive 512; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$PX; location / { proxy_pass http://up; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_set_header Authorization "Bearer bench-static-token"; } }
}
EOF
} >"$WORK/px.conf"

start upstream taskset -c 1 nginx -p "$WORK/up" -c "$WORK/up.conf" -e "$WORK/up/error.log"
case $PROXY/$PROFILER in
nginx/callgrind) echo "callgrind profiles goto-auth-proxy only" >&2; exit 64 ;;
nginx/*)
    start gap taskset -c 1 nginx -p "$WORK/px" -c "$WORK/px.conf" -e "$WORK/px/error.log"
    ;;
gap/perf | gap/syscalls)
    start gap env RUST_LOG=warn taskset -c 1 "$BIN" run --config "$WORK/gap.toml"
    ;;
gap/callgrind)
    # Collection starts after the warm-up (callgrind_control below), so start-up, the
    # pools' first connections and shutdown are left out of the per-request figure.
    start gap env RUST_LOG=warn taskset -c 1 valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$WORK/callgrind.out" "$BIN" run --config "$WORK/gap.toml"
    ;;
*) echo "PROXY must be gap or nginx; PROFILER perf, callgrind or syscalls" >&2; exit 64 ;;
esac
GAP=${PID[gap]}
deadline=$((SECONDS + 60))
until curl -fsS -o /dev/null "http://127.0.0.1:$PX/x" 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "the proxy did not come up" >&2; cat "$WORK/gap.err" >&2; exit 1; }
    sleep 0.2
done
wrk_load() { taskset -c 0 wrk -t1 -c "$CONNS" -d "${1}s" -H "Authorization: Bearer client" "http://127.0.0.1:$PX/admin/rest/v1/me"; }
wrk_load 2 >"$WORK/warm.txt" # warm the pools
if [[ $PROXY == nginx ]]; then
    # The worker, not the master, serves.
    for f in /proc/[0-9]*/stat; do
        if [[ $(sed -E 's/.*\) [A-Za-z] ([0-9]+) .*/\1/' "$f" 2>/dev/null) == "$GAP" ]]; then GAP=${f//[^0-9]/}; fi
    done
fi

case $PROFILER in
perf)
    # PERF_CALLGRAPH=dwarf (or fp, lbr) records call stacks too: `perf report -g` on the data.
    perf record -e cpu-clock -F 1999 ${PERF_CALLGRAPH:+--call-graph "$PERF_CALLGRAPH"} -p "$GAP" -o "$WORK/perf.data" -- sleep "$DURATION" 2>/dev/null &
    rec=$!
    wrk_load "$DURATION" | tee "$WORK/wrk.txt"
    wait "$rec"
    reqs=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
    {
        echo "# $PROXY: $reqs requests in ${DURATION}s while sampled"
        perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol --percent-limit 0.5 -q 2>/dev/null |
            sed -E 's/ +/ /g; s/ - - *$//' | grep -v '^ *$'
        perf report -i "$WORK/perf.data" --stdio --no-children --sort dso 2>/dev/null |
            grep -E 'Event count|^ +[0-9.]+%' | sed -E 's/ +/ /g'
        # cpu-clock counts nanoseconds: CPU time of the process per request.
        perf report -i "$WORK/perf.data" --stdio --sort dso 2>/dev/null |
            awk -v n="$reqs" '/Event count/ {printf "# CPU per request: %.1f us\n", $NF / 1000 / n}'
    } >"$OUT/profile-perf.txt"
    # User-space time of the proxy binary by crate (the symbol's first path segment;
    # generic code is attributed to the crate it was instantiated in as rustc names it).
    {
        echo "# by crate ($PROXY binary only, % of all samples)"
        perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol --percent-limit 0 -q 2>/dev/null |
            awk '$2 != "[kernel.kallsyms]" && $2 != "libc.so.6" && $2 != "[vdso]" && $3 == "[.]" {
                sym = $4; for (i = 5; i <= NF; i++) sym = sym " " $i
                sub(/^</, "", sym); split(sym, parts, "::"); c = parts[1]; sub(/ .*/, "", c)
                pct = $1; sub(/%/, "", pct); by[c] += pct
            } END { for (c in by) printf "%7.2f%%  %s\n", by[c], c }' | sort -rn | sed -n "1,25p"
    } >>"$OUT/profile-perf.txt"
    ;;
syscalls)
    perf trace -s -p "$GAP" -o "$WORK/trace.txt" -- sleep "$DURATION" 2>/dev/null &
    rec=$!
    wrk_load "$DURATION" | tee "$WORK/wrk.txt"
    wait "$rec" || true
    reqs=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
    {
        echo "$PROXY: $reqs requests in ${DURATION}s; syscalls per request:"
        awk -v n="$reqs" '$2 ~ /^[0-9]+$/ && NF >= 8 && $1 !~ /^-/ {printf "  %-16s %8.3f\n", $1, $2 / n; t += $2} END {printf "  %-16s %8.3f\n", "total", t / n}' "$WORK/trace.txt"
        grep -E 'events|\(' "$WORK/trace.txt" | sed -n "1,20p"
    } >"$OUT/profile-syscalls-$PROXY.txt"
    cat "$OUT/profile-syscalls-$PROXY.txt"
    ;;
callgrind)
    callgrind_control --instr=on "$GAP" >/dev/null
    wrk_load "$DURATION" | tee "$WORK/wrk.txt"
    callgrind_control --instr=off "$GAP" >/dev/null
    kill -TERM "$GAP"
    wait "$GAP" || true
    reqs=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
    {
        callgrind_annotate "$WORK/callgrind.out" 2>/dev/null |
            awk -v n="$reqs" '/PROGRAM TOTALS/ {gsub(/,/, "", $1); printf "%d requests; %.0f instructions per request\n", n, $1 / n}'
        callgrind_annotate --inclusive=yes --threshold=99.8 "$WORK/callgrind.out" 2>/dev/null | sed -n "1,120p"
        callgrind_annotate --threshold=95 "$WORK/callgrind.out" 2>/dev/null | sed -n "1,60p"
    } >"$OUT/profile-callgrind.txt"
    ;;
esac
echo "done: $OUT/profile-*.txt"
