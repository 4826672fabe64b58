# Sourced by the bench scripts (load.sh, scripts.sh, footprint.sh, soak.sh): free loopback
# ports for the servers they start.
#
#   free_port VAR    # a port nothing answers on, never handed out before in this run, into VAR
#
# Ports come from below the kernel's ephemeral range: a port that the load's own outgoing
# connections hold answers no probe but still cannot be bound. The result goes into a
# variable (not stdout) so the record of ports handed out survives: `$(free_port)` would
# run in a subshell and forget it, and two servers could be given one port.

EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
LOW_PORT=$((EPHEMERAL_LOW > 12000 ? 10000 : 1024))
declare -gA USED_PORTS=()

free_port() {
    local -n into=$1
    local p
    while :; do
        p=$((LOW_PORT + RANDOM % (EPHEMERAL_LOW - LOW_PORT)))
        [[ -n "${USED_PORTS[$p]:-}" ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            USED_PORTS[$p]=1
            into=$p
            return
        fi
    done
}
