# shellcheck shell=bash
# Two network namespaces joined by a veth pair, for the migration tests and benchmark: one
# "host" per namespace, an optional token-bucket cap on the link, ways to cut it, and a
# cleanup that stops what it started (by pid) and deletes the namespaces. Needs root.
#
# Sourced (tests/interop/test-migration.sh, bench/migration.sh):
#     . tests/interop/netns-pair.sh
#     np_up [ID]            namespaces vdnp-ID-a and vdnp-ID-b (ID defaults to $$, so runs
#                           never collide), veth-a 198.18.0.1/24 in A, veth-b 198.18.0.2/24
#                           in B, lo up in both
#     np_shape RATE [BURST [LATENCY]]   tbf on both ends (np_shape off: no cap)
#     np_spawn NS LOG CMD...          CMD in namespace NS in the background; its pid in
#                                     NP_LAST_PID, and killed by np_cleanup
#     np_cut / np_heal                both ends down / up again
#     np_drop                         the veth pair deleted (what deleting B's namespace does
#                                     once nothing runs in it); np_link makes it again
#     np_del_b                        B's namespace name deleted (ip netns del)
#     np_tx_bytes                     "A B": bytes each end has sent so far
#     np_cleanup                      idempotent; call it from the EXIT trap
# Run (for a driver in another language, on a pair another process made):
#     bash tests/interop/netns-pair.sh up|link|shape|cut|heal|drop|bytes|down ID [ARGS]
#
# Caps: tbf needs a bucket of at least one timer tick of traffic to reach its rate
# (rate / HZ: 500 KB at 1 Gbit/s and HZ=250, 100 KB at 200 Mbit/s) and of at least one GSO
# packet (64 KiB; veth hands tbf whole TSO segments). So 1 MiB up to 1 Gbit/s, 256 KiB up to
# 200 Mbit/s, else about 10 ms of traffic. LATENCY 50 ms bounds the queue (rate x 50 ms:
# 6 MB at 1 Gbit/s, 1.2 MB at 200 Mbit/s): deep enough that TCP's bursts are not dropped
# at the start of a transfer, shallow enough that a queue full of bulk data adds at most
# 50 ms to a round trip, which is what a loaded WAN link does.

NP_ADDR_A=198.18.0.1
NP_ADDR_B=198.18.0.2
NP_DEV_A=veth-a
NP_DEV_B=veth-b
NP_PIDS=()
NP_LAST_PID=
NP_ID=
NP_NS_A=
NP_NS_B=
NP_RATE=

np_die() {
    echo "netns-pair: $*" >&2
    return 1
}

# np_names ID: sets the names of pair ID without touching anything.
np_names() {
    NP_ID=$1
    NP_NS_A=vdnp-$1-a
    NP_NS_B=vdnp-$1-b
}

np_have_ns() {
    ip netns list 2>/dev/null | awk '{ print $1 }' | grep -qxF "$1"
}

# np_link: the veth pair between the two namespaces, addressed and up (again after np_drop),
# with the cap of the last np_shape.
np_link() {
    ip link add "$NP_DEV_A" netns "$NP_NS_A" type veth peer name "$NP_DEV_B" \
        netns "$NP_NS_B" || return 1
    ip -n "$NP_NS_A" addr add "$NP_ADDR_A/24" dev "$NP_DEV_A" &&
        ip -n "$NP_NS_B" addr add "$NP_ADDR_B/24" dev "$NP_DEV_B" &&
        ip -n "$NP_NS_A" link set "$NP_DEV_A" up &&
        ip -n "$NP_NS_B" link set "$NP_DEV_B" up || return 1
    if [ -n "$NP_RATE" ] && [ "$NP_RATE" != off ]; then
        np_shape "$NP_RATE"
    fi
}

np_up() {
    command -v ip >/dev/null || np_die "ip (iproute2) not found" || return 1
    [ "$(id -u)" = 0 ] || np_die "network namespaces need root" || return 1
    np_names "${1:-$$}"
    if np_have_ns "$NP_NS_A" || np_have_ns "$NP_NS_B"; then
        np_die "namespaces $NP_NS_A/$NP_NS_B already exist" || return 1
    fi
    ip netns add "$NP_NS_A" || return 1
    ip netns add "$NP_NS_B" || { ip netns del "$NP_NS_A"; return 1; }
    ip -n "$NP_NS_A" link set lo up && ip -n "$NP_NS_B" link set lo up && np_link || {
        np_cleanup
        return 1
    }
}

# np_burst RATE: the bucket for a rate (see the header).
np_burst() {
    local bits
    bits=$(np_rate_bits "$1") || return 1
    if [ "$bits" -le 200000000 ]; then
        echo 256kb
    elif [ "$bits" -le 1000000000 ]; then
        echo 1mb
    else
        echo "$((bits / 8 / 100 / 1024 + 1))kb"
    fi
}

# np_rate_bits RATE: tc's rate spelling (200mbit, 1gbit, 500kbit, 1000000bit) in bits/s.
np_rate_bits() {
    local r=${1,,} n unit
    n=${r%%[a-z]*}
    unit=${r#"$n"}
    [[ $n =~ ^[0-9]+$ ]] || np_die "rate '$1': not a number of bits per second" || return 1
    case $unit in
        bit | "") echo "$n" ;;
        kbit) echo $((n * 1000)) ;;
        mbit) echo $((n * 1000000)) ;;
        gbit) echo $((n * 1000000000)) ;;
        *) np_die "rate '$1': use bit, kbit, mbit or gbit" ;;
    esac
}

np_shape() {
    local rate=$1 burst=${2:-} latency=${3:-50ms} ns dev
    NP_RATE=$rate
    for ns in "$NP_NS_A:$NP_DEV_A" "$NP_NS_B:$NP_DEV_B"; do
        dev=${ns#*:}
        ns=${ns%%:*}
        if [ "$rate" = off ]; then
            tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
            continue
        fi
        [ -n "$burst" ] || burst=$(np_burst "$rate") || return 1
        tc -n "$ns" qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" \
            latency "$latency" || return 1
    done
}

np_cut() {
    ip -n "$NP_NS_A" link set "$NP_DEV_A" down
    ip -n "$NP_NS_B" link set "$NP_DEV_B" down
}

np_heal() {
    ip -n "$NP_NS_A" link set "$NP_DEV_A" up
    ip -n "$NP_NS_B" link set "$NP_DEV_B" up
}

# Deleting one end deletes both.
np_drop() {
    ip -n "$NP_NS_A" link del "$NP_DEV_A" 2>/dev/null ||
        ip -n "$NP_NS_B" link del "$NP_DEV_B" 2>/dev/null || true
}

np_del_b() {
    ! np_have_ns "$NP_NS_B" || ip netns del "$NP_NS_B"
}

np_tx_bytes() {
    local a b
    a=$(ip -n "$NP_NS_A" -s -j link show dev "$NP_DEV_A" 2>/dev/null |
        sed -n 's/.*"tx":{"bytes":\([0-9]*\).*/\1/p')
    b=$(ip -n "$NP_NS_B" -s -j link show dev "$NP_DEV_B" 2>/dev/null |
        sed -n 's/.*"tx":{"bytes":\([0-9]*\).*/\1/p')
    echo "${a:-0} ${b:-0}"
}

# np_spawn NS LOG CMD...: ip netns exec enters the namespace and execs CMD, so $! is CMD's
# own pid.
np_spawn() {
    local ns=$1 log=$2
    shift 2
    ip netns exec "$ns" "$@" >"$log" 2>&1 </dev/null &
    NP_LAST_PID=$!
    NP_PIDS+=("$NP_LAST_PID")
}

# np_kill PID [SIGNAL]: one process this harness started; waits for it (5 s, then KILL).
np_kill() {
    local pid=$1 sig=${2:-TERM} i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -s "$sig" "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -s KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

# Stops what was started (by pid: ours, then anything still inside our own namespaces, which
# only this run's drivers can have started there), then deletes the namespaces. Safe to call
# twice, from a trap, or before np_up.
np_cleanup() {
    local pid ns
    for pid in "${NP_PIDS[@]}"; do
        np_kill "$pid"
    done
    NP_PIDS=()
    [ -n "$NP_ID" ] || return 0
    for ns in "$NP_NS_A" "$NP_NS_B"; do
        np_have_ns "$ns" || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            np_kill "$pid"
        done
        ip netns del "$ns" 2>/dev/null || true
    done
}

# Run as a script: one action on pair ID.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -u
    [ $# -ge 2 ] || { sed -n '2,30s/^# \{0,1\}//p' "$0"; exit 2; }
    action=$1
    np_names "$2"
    shift 2
    case $action in
        up) np_up "$NP_ID" ;;
        link) NP_RATE=${1:-}; np_link ;;
        shape) np_shape "$@" ;;
        cut) np_cut ;;
        heal) np_heal ;;
        drop) np_drop ;;
        del-b) np_del_b ;;
        bytes) np_tx_bytes ;;
        down) np_cleanup ;;
        *) np_die "unknown action '$action'"; exit 2 ;;
    esac
fi
