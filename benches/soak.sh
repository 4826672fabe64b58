#!/usr/bin/env bash
# Chaos soak: every fault at once, for as long as you like, and a verdict.
#
#   SOAK_SECONDS=600 bash benches/soak.sh      # ten minutes (the default)
#   SOAK_SECONDS=60 bash benches/soak.sh       # one round of every fault (what `cargo test` runs)
#
# Three replicas of goto-auth-proxy: `a` and `b` share one real Redis (`store = "redis"`:
# a master, its replica and three sentinels, `redis_sentinels`), `c` has the file store
# to itself. Each holds two short-lived refreshing credentials
# from its own mock GoTo (the shared mock, `crates/goto-mock/`, one process per
# group, since a Direct Login revokes every other token of its application): `goto`,
# authorization code with rotating refresh tokens (seeded once), and `g2a`, Direct
# Login (password). Tokens live 2 s, so each credential renews about once a second.
# A steady client (`soak_tool load`) sends a script's requests to every replica and
# records every answer, while this script repeats, until SOAK_SECONDS are over:
#
#   token endpoint down (503) 8 s: longer than a token's life and than token_wait (5 s)
#   token endpoint answering 500 for 1.5 s, then 429 with Retry-After for 2 s
#   upstream bodies broken off mid-way (reset) and slow answers, beside the steady load
#   the keep-alive race: an upstream closing kept-alive connections as requests arrive, 4 s
#   a black hole: the shared HTTP/2 connection to an upstream silently stops forwarding
#     (recovery within 20 s, while the rest of the round goes on)
#   every access token revoked at the mock
#   SIGHUP to every replica with a changed route (checked to serve)
#   the OAuth client secret rotated at the mocks and in its file (renamed into place), no
#     signal: each replica applies it by its file watch (checked from its reload count)
#   Redis killed (-9) and restarted empty; next round shut down and restarted with its data
#   the Redis master killed (-9): Sentinel promotes its replica, the old one rejoins
#     empty as a replica (tokens lengthened to 20 s meanwhile: a failover takes about 2 s,
#     and an outage must stay under a quarter of a token's life, docs/replicas.md "When Redis is down or slow")
#   kill -9 of replica b, restarted on the same state
#
# and reports (stdout and $BENCH_OUT/soak.md): requests; failures split by cause, where
# the ones the proxy could have avoided must be 0 (a request to the black-holed upstream
# is excused for 20 s, then it must be answered again); token calls of the Redis pair against
# the lone replica's; password logins (never two within a second); RSS and open fds per
# process after the warm-up, in the middle and at the end; refresh tokens lost (0: while
# the token endpoint is down, and at the end, the newest refresh token the mock issued
# must be in a store). Exit 1 when any of that fails, 77 when a tool it needs is missing
# and cannot be installed.
#
# Environment: SOAK_SECONDS (600, at least 60), SOAK_CONNS connections per replica (2),
# SOAK_PACE_MS pause after each answer per connection (40), BENCH_OUT (target/bench).
# SOAK_BIN and SOAK_TOOL name the goto-auth-proxy binary and the helper binary
# (default: both built with `cargo build --release`); SOAK_TOOL_ARG is a first argument
# the helper needs (tests/soak.rs passes its own binary and `soak-tool`). Everything
# listens on 127.0.0.1, on ports below the ephemeral range; the script stops everything
# it started, by pid, however it exits. Work files and logs: $BENCH_OUT/soak-work/.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECONDS=${SOAK_SECONDS:-600}
CONNS=${SOAK_CONNS:-2}
PACE_MS=${SOAK_PACE_MS:-40}
OUT=${BENCH_OUT:-target/bench}
TOKEN_LIFETIME_MS=2000
TOKEN_WAIT_S=5

if ((SOAK_SECONDS < 60)); then
    echo "SOAK_SECONDS must be at least 60 (one round of every fault takes about 50 s)" >&2
    exit 64
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK="$OUT/soak-work"
MD="$OUT/soak.md"

log() { printf '[soak.sh] %s\n' "$*" >&2; }
now_ms() { date +%s%3N; }

# ===== dependencies =====

install_deps() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v redis-cli >/dev/null || missing+=(redis-tools)
    command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        log "installing ${missing[*]} with apt-get"
        if ! { [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null &&
            apt-get update -qq </dev/null &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null; }; then
            log "SKIPPED: ${missing[*]} missing and not installable here (apt-get install redis-server curl)"
            exit 77
        fi
    fi
}

build() {
    if [[ -n ${SOAK_BIN:-} && -n ${SOAK_TOOL:-} ]]; then
        GAP_BIN=$SOAK_BIN
        TOOL=("$SOAK_TOOL" ${SOAK_TOOL_ARG:+"$SOAK_TOOL_ARG"})
        return
    fi
    log "building goto-auth-proxy and soak_tool (release)"
    # Two builds, so the product is built as users build it (the tool enables the mock's
    # test-only faults, which one build of both would give the product too).
    cargo build --release --locked --quiet --bin goto-auth-proxy
    cargo build --release --locked --quiet -p goto-bench-tools --bin soak_tool
    local dir=${CARGO_TARGET_DIR:-target}
    GAP_BIN=${SOAK_BIN:-$dir/release/goto-auth-proxy}
    TOOL=("${SOAK_TOOL:-$dir/release/soak_tool}" ${SOAK_TOOL_ARG:+"$SOAK_TOOL_ARG"})
}

tool() { "${TOOL[@]}" "$@"; }

# ===== processes =====

declare -A PID PORT ADMIN_PORT

# Stops what is still running, by the pids this script holds (a pid is dropped from
# PID once reaped, so a recycled one is never signalled).
cleanup() {
    local name
    for name in "${!PID[@]}"; do kill -TERM "${PID[$name]}" 2>/dev/null || true; done
    for name in "${!PID[@]}"; do stop "$name"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD... — runs CMD in the background, logs appended to $WORK/NAME.log.
start() {
    local name=$1
    shift
    "$@" >>"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
}

# stop NAME [SIGNAL] — signals NAME (TERM by default; KILL after 10 s) and reaps it.
# (stderr is silenced around the kill and the wait: bash would report "Killed".)
stop() {
    local name=$1 sig=${2:-TERM} pid=${PID[$1]:-}
    [[ -n $pid ]] || return 0
    {
        kill "-$sig" "$pid" || true
        for _ in $(seq 100); do kill -0 "$pid" || break; sleep 0.1; done
        kill -KILL "$pid" || true
        wait "$pid" || true
    } 2>/dev/null
    unset "PID[$name]"
}

. benches/ports.sh # free_port VAR

# wait_until SECONDS WHAT CMD... — polls CMD every 0.1 s; fails after SECONDS.
wait_until() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$(($(now_ms) + secs * 1000))
    until "$@" >/dev/null 2>&1; do
        if (($(now_ms) > deadline)); then
            log "timed out after ${secs}s waiting for $what"
            return 1
        fi
        sleep 0.1
    done
}

ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:${ADMIN_PORT[$1]}/readyz") == 200 ]]; }
# Redis for a and b: two servers, `redis` and `redis2`, one the master (MASTER) and the
# other its replica (REPLICA), watched by three sentinels as "soak".
MASTER=redis
REPLICA=redis2
redis_pings() { [[ $(redis-cli -p "${PORT[$1]}" ping 2>/dev/null) == PONG ]]; }
synced() { redis-cli -p "${PORT[$1]}" info replication 2>/dev/null | grep -q '^master_link_status:up'; }
sentinel_master_port() {
    redis-cli -p "${PORT[sentinel1]}" sentinel get-master-addr-by-name soak 2>/dev/null | sed -n 2p
}

# start_server NAME [MASTER_NAME] — a Redis server (with what its dump holds, if any),
# a replica of MASTER_NAME when given. A replica loads its master's data straight from
# the socket: no copy of the tokens on disk (the soak checks that nothing holds one).
start_server() {
    local name=$1 of=${2:-}
    mkdir -p "$WORK/$name"
    start "$name" redis-server --port "${PORT[$name]}" --bind 127.0.0.1 --save "" --appendonly no \
        --repl-diskless-sync-delay 0 --repl-diskless-load swapdb --dir "$WORK/$name" --dbfilename dump.rdb \
        ${of:+--replicaof 127.0.0.1 "${PORT[$of]}"}
    wait_until 10 "redis-server $name" redis_pings "$name"
}

# Each sentinel knows the other two and the replica, and they all name one master that
# says it is one, its replica synced to it: a failover can happen, and MASTER is known.
sentinels_settled() {
    local s port
    for s in sentinel1 sentinel2 sentinel3; do
        [[ $(redis-cli -p "${PORT[$s]}" sentinel sentinels soak 2>/dev/null | grep -c '^name$') == 2 ]] || return 1
        [[ $(redis-cli -p "${PORT[$s]}" sentinel replicas soak 2>/dev/null | grep -c '^name$') -ge 1 ]] || return 1
        [[ $(redis-cli -p "${PORT[$s]}" sentinel get-master-addr-by-name soak 2>/dev/null | sed -n 2p) == \
            "$(sentinel_master_port)" ]] || return 1
    done
    port=$(sentinel_master_port)
    if [[ $port == "${PORT[redis2]}" ]]; then MASTER=redis2 REPLICA=redis; else MASTER=redis REPLICA=redis2; fi
    redis-cli -p "$port" info replication | grep -q '^role:master' && synced "$REPLICA"
}

start_redis() {
    start_server "$MASTER" && start_server "$REPLICA" "$MASTER" || return 1
    local i
    for i in 1 2 3; do
        mkdir -p "$WORK/sentinel$i"
        printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor soak 127.0.0.1 %s 2\n%s\n%s\n' \
            "${PORT[sentinel$i]}" "$WORK/sentinel$i" "${PORT[$MASTER]}" \
            "sentinel down-after-milliseconds soak 2000" "sentinel failover-timeout soak 5000" \
            >"$WORK/sentinel$i/sentinel.conf"
        start "sentinel$i" redis-sentinel "$WORK/sentinel$i/sentinel.conf"
    done
    wait_until 30 "the sentinels to find each other and the replica" sentinels_settled
}

start_mock() { # NAME
    local name=$1
    start "$name" "${TOOL[@]}" mock --listen "127.0.0.1:${PORT[$name]}" --token-lifetime-ms "$TOKEN_LIFETIME_MS"
    wait_until 20 "$name" curl -fs --max-time 1 "http://127.0.0.1:${PORT[$name]}/_mock/stats"
}

# The replicas' mock and store.
declare -A MOCK_OF=([a]=mock-redis [b]=mock-redis [c]=mock-file)
declare -A SEED

# write_config REPLICA GENERATION — its config; the generation names a route that a
# SIGHUP swaps for the next one (the "changed route").
write_config() {
    local r=$1 gen=$2 mock="http://127.0.0.1:${PORT[${MOCK_OF[$1]}]}" state
    if [[ $r == c ]]; then
        state="path = \"$WORK/c/state.json\""
    else
        state="store = \"redis\"
redis_sentinels = [\"redis://127.0.0.1:${PORT[sentinel1]}\", \"redis://127.0.0.1:${PORT[sentinel2]}\", \"redis://127.0.0.1:${PORT[sentinel3]}\"]
redis_master = \"soak\"
redis_prefix = \"soak\""
    fi
    cat >"$WORK/$r.toml.tmp" <<EOF
# replica $r, route generation $gen (written by benches/soak.sh)
[proxy]
listen = "127.0.0.1:${PORT[$r]}"
admin_listen = "127.0.0.1:${ADMIN_PORT[$r]}"
token_wait = "${TOKEN_WAIT_S}s"
request_timeout = "5s"

[state]
$state

[tls]
ca_file = "$WORK/hostile-ca.pem"

[credentials.goto]
grant = "authorization_code"
client_id = "demo-client-id"
client_secret = { file = "$WORK/secrets/client_secret" }
refresh_token = { env = "SOAK_SEED" }
token_url = "$mock/oauth/token?replica=$r"
authorize_url = "$mock/oauth/authorize"
keys_url = "$mock/admin/rest/v1/me"

[credentials.g2a]
grant = "password"
client_id = "demo-consumer-key"
username = "api-manager@example.com"
password = "demo-password"
token_url = "$mock/oauth/access_token?replica=$r"

[[routes]]
prefix = "/G2A/"
upstream = "$mock"
credential = "g2a"

[[routes]]
prefix = "/soak-reload-$gen/"
upstream = "$mock"
credential = "goto"
strip_prefix = true

[[routes]]
prefix = "/hostile/"
upstream = "http://127.0.0.1:${PORT[hostile]}"
credential = "goto"

[[routes]]
prefix = "/hostile-h2/"
upstream = "https://127.0.0.1:${PORT[relay]}"
credential = "goto"

[[routes]]
prefix = "/"
upstream = "$mock"
credential = "goto"
EOF
    mv "$WORK/$r.toml.tmp" "$WORK/$r.toml"
}

# The hostile upstream (`soak_tool hostile`): `/hostile/` reaches it over HTTP/1.1, and
# `/hostile-h2/` over TLS and HTTP/2 through its relay (the certificate it made is in
# hostile-ca.pem); the script's controls go to the HTTP/1.1 port.
start_hostile() {
    start hostile "${TOOL[@]}" hostile --listen "127.0.0.1:${PORT[hostile]}" --relay "127.0.0.1:${PORT[relay]}" \
        --ca-out "$WORK/hostile-ca.pem"
    wait_until 20 "the hostile upstream" curl -fs --max-time 1 "http://127.0.0.1:${PORT[hostile]}/_hostile/stats"
}

hostile_post() { # PATH
    curl -fsS -o /dev/null --max-time 5 -X POST "http://127.0.0.1:${PORT[hostile]}$1"
}

start_replica() { # REPLICA
    local r=$1
    start "$r" env RUST_LOG=info SOAK_SEED="${SEED[${MOCK_OF[$r]}]}" "$GAP_BIN" run --config "$WORK/$r.toml"
    wait_until 20 "replica $r to be ready" ready "$r"
}

# ===== what the report reads (see crates/bench-tools/src/soak/report.rs) =====

window() { # KIND REPLICA START_MS END_MS LONG DESCRIPTION
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$WORK/windows.tsv"
}

check() { # NAME ok|fail DETAIL
    printf '%s\t%s\t%s\t%s\n' "$(now_ms)" "$1" "$2" "$3" >>"$WORK/checks.tsv"
    [[ $2 == ok ]] || log "check failed: $1: $3"
}

sample() { # PHASE
    local name pid rss fds t
    t=$(now_ms)
    for name in a b c mock-redis mock-file redis; do
        pid=${PID[$name]:-}
        [[ -n $pid ]] || continue
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        # What the fds are, to tell a leak from an idle pool should the counts differ.
        [[ $1 == round ]] || ls -l "/proc/$pid/fd" >"$WORK/fds-$1-$name.txt" 2>/dev/null || true
        fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$1" "$name" "$pid" "${rss:-0}" "$fds" >>"$WORK/samples.tsv"
    done
}

check_refresh() { # — both groups: is the newest refresh token of each chain stored?
    local out group args chains held
    for group in redis file; do
        if [[ $group == redis ]]; then
            sentinels_settled || true # MASTER as the sentinels name it
            args=(--redis-url "redis://127.0.0.1:${PORT[$MASTER]}/0" --redis-prefix soak)
        else
            args=(--state-file "$WORK/c/state.json")
        fi
        if out=$(tool check-refresh --mock "http://127.0.0.1:${PORT[mock-$group]}" \
            --credential goto --credential g2a "${args[@]}" 2>>"$WORK/check-refresh.log"); then
            read -r chains held < <(sed -E 's/chains=([0-9]+) held=([0-9]+)/\1 \2/' <<<"$out")
            printf '%s\t%s\t%s\t%s\n' "$(now_ms)" "$group" "$chains" "$held" >>"$WORK/refresh.tsv"
            ((chains == held)) || log "refresh tokens lost at the $group store: $held of $chains chains held"
        else
            check "refresh tokens readable" fail "check-refresh of the $group store failed (see check-refresh.log)"
        fi
    done
}

mocks_post() { # PATH — to both mocks
    local m
    for m in mock-redis mock-file; do
        curl -fsS -o /dev/null --max-time 5 -X POST "http://127.0.0.1:${PORT[$m]}$1"
    done
}

# ===== the faults =====

# token_fault KIND QUERY SECONDS LONG DESCRIPTION — the token endpoints of both mocks
# answer the fault for SECONDS; during a long one the refresh tokens are checked.
token_fault() {
    local kind=$1 query=$2 secs=$3 long=$4 desc=$5 t0
    t0=$(now_ms)
    mocks_post "/_mock/fault?$query"
    if ((long)); then
        # Nothing new can be issued now; what was answered before has been stored by then.
        sleep 3
        check_refresh
        sleep "$(awk -v s="$secs" 'BEGIN {print s - 3}')"
    else
        sleep "$secs"
    fi
    mocks_post "/_mock/fault"
    window "$kind" "*" "$t0" "$(now_ms)" "$long" "$desc"
}

upstream_faults() {
    local t0 targets=() r
    t0=$(now_ms)
    for r in a b c; do targets+=(--target "$r=http://127.0.0.1:${PORT[$r]}"); done
    tool probe "${targets[@]}" --kind reset --seconds 5 --out "$WORK/probes.tsv" &
    local reset=$!
    tool probe "${targets[@]}" --kind slow --seconds 5 --out "$WORK/probes.tsv" &
    local slow=$!
    wait "$reset" || check "upstream probes ran" fail "the reset probe exited non-zero"
    wait "$slow" || check "upstream probes ran" fail "the slow probe exited non-zero"
    window upstream "*" "$t0" "$(now_ms)" 0 "upstream breaks bodies off mid-way and answers slowly (probes beside the load, 5 s)"
}

keepalive_race() {
    local t0
    t0=$(now_ms)
    hostile_post "/_hostile/race?on=1"
    sleep 4
    hostile_post "/_hostile/race?on=0"
    window keepalive-race "*" "$t0" "$(now_ms)" 0 "the upstream closes kept-alive connections as requests arrive (one in three, 4 s)"
}

blackhole() {
    local t0
    t0=$(now_ms)
    hostile_post "/_hostile/freeze"
    window blackhole "*" "$t0" "$t0" 0 "the network black-holes the HTTP/2 connections to the upstream of \`/hostile-h2/\` (open and silent; failures excused for 20 s)"
}

revoke_all() {
    local t0
    t0=$(now_ms)
    mocks_post "/_mock/revoke"
    window revoke "*" "$t0" "$((t0 + 2000))" 0 "every access token revoked at the mock"
}

# serves REPLICA PREFIX PATH — a request under /PREFIX reaches the mock as PATH: stripped
# by the route of that generation, or whole through the catch-all once it is gone.
serves() {
    curl -fs --max-time 2 "http://127.0.0.1:${PORT[$1]}/$2/G2M/rest/v1/soak" | grep -qF "\"path\":\"$3\""
}

GEN=1
reload_all() {
    local t0 r old=$GEN
    t0=$(now_ms)
    GEN=$((GEN + 1))
    for r in a b c; do
        write_config "$r" "$GEN"
        kill -HUP "${PID[$r]}"
    done
    for r in a b c; do
        if wait_until 5 "replica $r to serve the reloaded route" serves "$r" "soak-reload-$GEN" /G2M/rest/v1/soak &&
            serves "$r" "soak-reload-$old" "/soak-reload-$old/G2M/rest/v1/soak"; then
            check "SIGHUP with a changed route: the new route serves, the old one is gone" ok "$r"
        else
            check "SIGHUP with a changed route: the new route serves, the old one is gone" fail "replica $r"
        fi
    done
    window reload "*" "$t0" "$(now_ms)" 0 "SIGHUP to every replica with a changed route"
}

# file_reloads REPLICA — its count of reloads a watched file's change applied.
file_reloads() {
    curl -fs --max-time 2 "http://127.0.0.1:${ADMIN_PORT[$1]}/metrics" |
        awk '/^goto_auth_proxy_config_reloads_total\{/ && /trigger="file"/ && /outcome="applied"/ {n = $2} END {print n + 0}'
}
file_reloaded() { (($(file_reloads "$1") > $2)); } # REPLICA COUNT_BEFORE

# write_secret VALUE — the client secret file every replica's `goto` reads, replaced by a
# rename as secrets tools write it.
write_secret() {
    printf '%s\n' "$1" >"$WORK/secrets/client_secret.tmp"
    mv "$WORK/secrets/client_secret.tmp" "$WORK/secrets/client_secret"
}

SECRET_ROUND=0
# rotate_secret — the client secret rotated at both mocks (the old one refused from then
# on), then in its file at once; no signal. Each replica applies the file by its watch; a
# token call refused in between reads the file again.
rotate_secret() {
    local t0 r m secret
    local -A before
    t0=$(now_ms)
    SECRET_ROUND=$((SECRET_ROUND + 1))
    secret="soak-client-secret-$SECRET_ROUND-$RANDOM$RANDOM"
    for r in a b c; do before[$r]=$(file_reloads "$r"); done
    for m in mock-redis mock-file; do
        curl -fsS -o /dev/null --max-time 5 -X POST --data-binary "$secret" "http://127.0.0.1:${PORT[$m]}/_mock/client_secret"
    done
    write_secret "$secret"
    for r in a b c; do
        if wait_until 3 "replica $r to apply the rotated client secret" file_reloaded "$r" "${before[$r]}"; then
            check "client secret rotated in its file, no signal: applied by the watch" ok "$r"
        else
            check "client secret rotated in its file, no signal: applied by the watch" fail "replica $r"
        fi
    done
    window rotate "*" "$t0" "$(now_ms)" 0 "client secret rotated at the mock and in its file, no signal"
}

REDIS_ROUND=0
restart_redis() {
    local t0 kind desc
    t0=$(now_ms)
    REDIS_ROUND=$((REDIS_ROUND + 1))
    local back=true
    if ((REDIS_ROUND % 2)); then
        kind=redis-crash
        desc="Redis (master and replica) killed (-9) and restarted empty"
        stop "$MASTER" KILL
        stop "$REPLICA" KILL
        rm -f "$WORK/$MASTER/dump.rdb" "$WORK/$REPLICA/dump.rdb"
        start_server "$MASTER" && start_server "$REPLICA" "$MASTER" || back=false
    else
        kind=redis-restart
        desc="the Redis master shut down and restarted with its data"
        redis-cli -p "${PORT[$MASTER]}" shutdown save >/dev/null 2>&1 || true
        stop "$MASTER"
        start_server "$MASTER" || back=false
    fi
    # (A restart slower than down-after-milliseconds may have been a failover too.)
    if $back && wait_until 20 "the sentinels to settle" sentinels_settled; then
        check "Redis back after a restart" ok "$kind"
    else
        check "Redis back after a restart" fail "$kind"
    fi
    window "$kind" "*" "$t0" "$(now_ms)" 0 "$desc"
}

# The master dies; Sentinel promotes the replica, and the proxies follow it. Tokens are
# lengthened first (to 20 s: the failover takes about 2 s, longer than a quarter of a
# 2-second token's life, the most an outage may last without replicas renewing alone)
# and shortened again after, with a renewal forced so the next fault meets 2-s tokens.
failover_redis() {
    local t0 old=$MASTER ok=ok detail
    curl -fsS -o /dev/null --max-time 5 -X POST "http://127.0.0.1:${PORT[mock-redis]}/_mock/token_lifetime?ms=20000"
    sleep 2.5 # every 2-s token renewed by now, to a 20-s one
    t0=$(now_ms)
    stop "$old" KILL
    if wait_until 15 "Sentinel to promote the replica" sentinel_named_other "$old"; then
        detail="promoted in $(($(now_ms) - t0)) ms"
    else
        ok=fail detail="no promotion within 15 s"
    fi
    rm -f "$WORK/$old/dump.rdb"
    MASTER=$REPLICA REPLICA=$old
    if ! { start_server "$old" "$MASTER" && wait_until 20 "the sentinels to settle" sentinels_settled; }; then
        ok=fail detail="$detail; the old master did not rejoin as a replica"
    fi
    check "Redis master killed: Sentinel promoted the replica, the old master rejoined as its replica" "$ok" "$detail"
    curl -fsS -o /dev/null --max-time 5 -X POST "http://127.0.0.1:${PORT[mock-redis]}/_mock/token_lifetime?ms=$TOKEN_LIFETIME_MS"
    local cred
    for cred in goto g2a; do
        curl -fsS -o /dev/null --max-time 10 -X POST "http://127.0.0.1:${ADMIN_PORT[a]}/refresh/$cred" ||
            log "forced renewal of $cred after the failover failed"
    done
    window redis-failover "*" "$t0" "$(now_ms)" 0 "Redis master killed (-9): Sentinel promotes its replica, the old one rejoins empty as a replica"
}
sentinel_named_other() { # OLD — the sentinels name a master other than OLD, and it is one
    local port
    port=$(sentinel_master_port)
    [[ -n $port && $port != "${PORT[$1]}" ]] && redis-cli -p "$port" info replication | grep -q '^role:master'
}

kill_replica() { # REPLICA
    local r=$1 t0 t1
    t0=$(now_ms)
    stop "$r" KILL
    if start_replica "$r"; then
        t1=$(now_ms)
        check "kill -9 of replica $r, restarted on the same state: ready again" ok "in $((t1 - t0)) ms"
    else
        t1=$(now_ms)
        check "kill -9 of replica $r, restarted on the same state: ready again" fail "not ready within 20 s"
    fi
    window kill "$r" "$t0" "$t1" 0 "\`kill -9\` of replica $r (Redis), restarted on the same state"
}

# ===== the schedule =====

token_down() {
    token_fault token-down status=503 8 1 "token endpoint down (503) for 8 s: longer than a token's life and than \`token_wait\`"
}
token_500() { token_fault token-500 status=500 1.5 0 "token endpoint answers 500 for 1.5 s"; }
token_429() { token_fault token-429 retry_after=1 2 0 "token endpoint answers 429 with \`Retry-After: 1\` for 2 s"; }

# Each step: about how long it takes (seconds), then what it runs. The black hole takes
# no time of its own: its 20 s of recovery run beside the steps after it, and end before
# the keep-alive race (whose failures it would otherwise excuse). The run is made of
# whole rounds (the samples at their boundaries are taken at the same point of the
# schedule); what SOAK_SECONDS leaves over is load without faults before the first.
STEPS=(
    "2 quiet 2"
    "9 token_down"
    "9 quiet 9"
    "0 blackhole"
    "2 token_500"
    "3 quiet 3"
    "2 token_429"
    "3 quiet 3"
    "6 upstream_faults"
    "2 quiet 2"
    "0 revoke_all"
    "2 quiet 2"
    "1 reload_all"
    "1 quiet 1"
    "1 rotate_secret"
    "1 restart_redis"
    "1 quiet 1"
    "6 failover_redis"
    "4 keepalive_race"
    "1 kill_replica b"
    "3 quiet 3"
)

quiet() { sleep "$1"; }

ROUND_S=0
for step in "${STEPS[@]}"; do ROUND_S=$((ROUND_S + ${step%% *})); done
ROUNDS=$(((SOAK_SECONDS - 5) / ROUND_S))
((ROUNDS >= 1)) || ROUNDS=1
WARMUP_S=$((SOAK_SECONDS - ROUNDS * ROUND_S))
((WARMUP_S >= 5)) || WARMUP_S=5
# With three rounds or more, the first is the warm-up (every kind of connection and
# allocation has happened once); with fewer, the load without faults before the first.
if ((ROUNDS >= 3)); then START_AFTER=1; else START_AFTER=0; fi
MIDDLE_AFTER=$(((ROUNDS + START_AFTER + 1) / 2))

run_schedule() {
    local round step fn args
    for ((round = 1; round <= ROUNDS; round++)); do
        log "round $round of $ROUNDS"
        for step in "${STEPS[@]}"; do
            read -r _ fn args <<<"$step"
            # shellcheck disable=SC2086
            $fn $args
        done
        if ((round == ROUNDS)); then
            sample end
        elif ((round == START_AFTER)); then
            sample start
        elif ((round == MIDDLE_AFTER)); then
            sample middle
        else
            sample round
        fi
    done
}

# ===== main =====

main() {
    install_deps
    build
    rm -rf "$WORK"
    mkdir -p "$WORK"
    mkdir -m 700 -p "$WORK/c" "$WORK/secrets"
    write_secret demo-client-secret # what the mocks accept until the first rotation
    : >"$WORK/windows.tsv"
    : >"$WORK/checks.tsv"
    : >"$WORK/refresh.tsv"
    : >"$WORK/samples.tsv"

    local r
    for r in redis redis2 sentinel1 sentinel2 sentinel3 mock-redis mock-file hostile relay a b c; do
        free_port "PORT[$r]"
    done
    for r in a b c; do free_port "ADMIN_PORT[$r]"; done

    start_redis
    start_mock mock-redis
    start_mock mock-file
    start_hostile
    local m
    for m in mock-redis mock-file; do
        # A refresh token "someone signed in" with: each group's seed (env, never printed).
        SEED[$m]=$(curl -fsS -X POST "http://127.0.0.1:${PORT[$m]}/_mock/refresh_tokens/mint" |
            sed -E 's/.*"refresh_token":"([^"]+)".*/\1/')
    done
    for r in a b c; do
        write_config "$r" "$GEN"
        start_replica "$r"
    done
    log "replicas a, b (Redis Sentinel 127.0.0.1:${PORT[sentinel1]}, master 127.0.0.1:${PORT[$MASTER]}) and c (file store) ready; load for ${SOAK_SECONDS}s"

    local targets=()
    for r in a b c; do targets+=(--target "$r=http://127.0.0.1:${PORT[$r]}"); done
    : >"$WORK/answers.tsv"
    : >"$WORK/probes.tsv"
    start load "${TOOL[@]}" load "${targets[@]}" --conns "$CONNS" --pace-ms "$PACE_MS" --out "$WORK/answers.tsv"
    local load_started
    load_started=$(now_ms)
    log "load without faults for ${WARMUP_S}s, then $ROUNDS round(s) of every fault (${ROUND_S}s each)"
    sleep "$WARMUP_S"
    if ((START_AFTER == 0)); then sample start; else sample round; fi

    run_schedule

    for r in a b c mock-redis mock-file hostile redis redis2 sentinel1 sentinel2 sentinel3 load; do
        if kill -0 "${PID[$r]:-0}" 2>/dev/null; then
            check "every process still running at the end" ok "$r"
        else
            check "every process still running at the end" fail "$r exited (see $WORK/$r.log)"
        fi
    done
    stop load
    local seconds
    seconds=$(awk -v ms=$(($(now_ms) - load_started)) 'BEGIN {printf "%.1f", ms / 1000}')
    # The last look at the refresh tokens, with nothing issued meanwhile.
    mocks_post "/_mock/fault?status=503"
    sleep 2
    check_refresh
    for m in redis file; do
        curl -fsS --max-time 10 "http://127.0.0.1:${PORT[mock-$m]}/_mock/token_calls" >"$WORK/calls-$m.json"
    done
    curl -fsS --max-time 10 "http://127.0.0.1:${PORT[hostile]}/_hostile/stats" >"$WORK/hostile.json" ||
        check "the hostile upstream's stats readable" fail "GET /_hostile/stats failed"
    cleanup

    local machine commit fd_slack=2 warm="the first round"
    if ((START_AFTER == 0)); then
        # Compared with the load before any fault: connections the faults opened may
        # still sit idle in a pool (upstream: closed after 50 s; token endpoint: 90 s).
        fd_slack=10
        warm="${WARMUP_S} s of load before the first fault (so open fds may differ by up to $fd_slack: idle pooled connections)"
    fi
    machine=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
    tool report --dir "$WORK" --out "$MD" --seconds "$seconds" \
        --group redis=a,b --group file=c --shared a --shared b --alone c --long-lived a --long-lived c \
        --header "$(date -u +%Y-%m-%dT%H:%MZ), commit $commit; $(nproc) cores, $machine, Linux $(uname -r)." \
        --fd-slack "$fd_slack" \
        --header "${ROUNDS} round(s) of every fault in ${seconds} s of load: replicas a and b on Redis Sentinel (a master and its replica), c on the file store; 2-second tokens (rotating refresh tokens, and Direct Login), \`token_wait\` ${TOKEN_WAIT_S} s; ${CONNS} keep-alive connection(s) per replica, one request at a time, ${PACE_MS} ms apart. Warm-up (\"start\"): $warm." \
        --command "SOAK_SECONDS=$SOAK_SECONDS bash benches/soak.sh"
}

main "$@"
