# Sourced by the bench scripts (load.sh, scripts.sh, footprint.sh, profile.sh) after they
# cd to the repository: their output folders, the processes they start (stopped however
# the script exits), free ports (benches/ports.sh) and nginx's config boilerplate.
#
#   bench_work NAME     # OUT=$BENCH_OUT (default target/bench, made absolute) and a fresh,
#                       # empty WORK=$OUT/NAME-work
#   start NAME CMD...   # CMD in the background, stdout and stderr in $WORK/NAME.out and
#                       # $WORK/NAME.err (an earlier one's removed first); pid in PID[NAME]
#   stop_pids PID...    # SIGTERM, up to 5 s to exit, then SIGKILL; reaps its own children
#   free_port VAR       # see benches/ports.sh
#   nginx_common NAME WORKERS [CONNECTIONS]   # nginx.conf's top level for a server kept in
#                       # $WORK/NAME; worker_connections 8192 unless given (idle figures
#                       # want nginx's default-sized table: each slot is touched at start)
#   nginx_temp_paths NAME       # the http block's temp paths under $WORK/NAME/tmp
#
# Sourcing it sets the EXIT trap that stops everything `start` began, and makes INT and
# TERM exit 130 through that trap. soak.sh keeps its own process handling: it restarts
# processes under one name and appends to their logs.

. benches/ports.sh

bench_work() {
    OUT=${BENCH_OUT:-target/bench}
    mkdir -p "$OUT"
    OUT=$(cd "$OUT" && pwd)
    WORK="$OUT/$1-work"
    rm -rf "$WORK"
    mkdir -p "$WORK"
}

declare -gA PID=()
declare -ga STARTED=()

stop_pids() {
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

start() {
    local name=$1
    shift
    # Removed here, not by the child's redirection: a reader must never see an earlier
    # process's output under this name.
    rm -f "$WORK/$name.out" "$WORK/$name.err"
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PID[$name]=$!
    STARTED+=($!)
}

trap 'stop_pids "${STARTED[@]}"' EXIT
trap 'exit 130' INT TERM

nginx_common() {
    local d="$WORK/$1"
    mkdir -p "$d/tmp"
    cat <<NGINX
worker_processes $2;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections ${3:-8192}; }
NGINX
}

nginx_temp_paths() {
    local d="$WORK/$1/tmp"
    cat <<NGINX
  client_body_temp_path $d/body;
  proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/fastcgi;
  uwsgi_temp_path $d/uwsgi;
  scgi_temp_path $d/scgi;
NGINX
}
