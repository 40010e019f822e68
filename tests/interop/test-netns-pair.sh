#!/usr/bin/env bash
# The two-namespace harness of the migration tests (tests/interop/netns-pair.sh): the link
# carries TCP both ways; a 200 Mbit/s and a 1 Gbit/s cap give within 15% of the asked rate
# (and an uncapped link more than either); cut, heal, drop and relink do what they say; the
# cleanup stops a process it started and leaves no namespace behind, and can run twice.
# Needs root (exit 77 otherwise).
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool ip tc
[ "$(id -u)" = 0 ] || { echo "SKIP: network namespaces need root"; exit 77; }
. "$VD_TESTS/interop/netns-pair.sh"
np_exit() {
    local rc=$?
    np_cleanup
    (exit $rc)
    _vd_cleanup
}
trap np_exit EXIT
rate_py=$VD_TESTS/interop/net_rate.py
secs=${NP_TEST_SECONDS:-3}

# measure SECONDS: bits per second from A to B over one TCP connection (0 when none).
measure() {
    local out=$VD_TESTDIR/rate.out
    ip netns exec "$NP_NS_B" "$PYTHON" "$rate_py" sink "$NP_ADDR_B" 5201 >"$out" 2>&1 &
    local sink=$!
    ip netns exec "$NP_NS_A" "$PYTHON" "$rate_py" send "$NP_ADDR_B" 5201 "$1" \
        >/dev/null 2>&1
    local rc=$?
    wait "$sink"
    [ $rc = 0 ] && awk '{ print $3 }' "$out" || echo 0
}

# reach: a TCP connection from A to B opens within 2 s.
reach() {
    ip netns exec "$NP_NS_B" timeout 4 "$PYTHON" -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5202)); s.listen(1); s.settimeout(3)
try:
    s.accept()
except OSError:
    pass' "$NP_ADDR_B" 2>/dev/null &
    local srv=$! rc
    sleep 0.3
    ip netns exec "$NP_NS_A" "$PYTHON" -c '
import socket, sys
socket.create_connection((sys.argv[1], 5202), timeout=2).close()' "$NP_ADDR_B" 2>/dev/null
    rc=$?
    wait "$srv" 2>/dev/null
    return $rc
}

if np_up; then pass netns-up; else fail netns-up "np_up failed"; vd_finish; fi
[ -n "$(ip -n "$NP_NS_A" -br addr show dev "$NP_DEV_A" | grep -F "$NP_ADDR_A/24")" ] &&
    [ -n "$(ip -n "$NP_NS_B" -br addr show dev "$NP_DEV_B" | grep -F "$NP_ADDR_B/24")" ] &&
    ip -n "$NP_NS_A" link show lo | grep -q 'UP' &&
    pass netns-addresses || fail netns-addresses "$(ip -n "$NP_NS_A" -br addr)"
if reach; then pass netns-tcp; else fail netns-tcp "no TCP connection from A to B"; fi

free_rate=$(measure "$secs")
echo "uncapped: $((${free_rate%.*} / 1000000)) Mbit/s"
for rate in 200mbit 1gbit; do
    np_shape "$rate"
    want=$(np_rate_bits "$rate")
    got=$(measure "$secs")
    echo "capped at $rate ($(tc -n "$NP_NS_A" qdisc show dev "$NP_DEV_A" | head -1)):" \
        "$((${got%.*} / 1000000)) Mbit/s"
    if awk -v g="$got" -v w="$want" 'BEGIN { exit !(g > 0.85 * w && g < 1.15 * w) }'; then
        pass "netns-cap-$rate"
    else
        fail "netns-cap-$rate" "$got bit/s, asked $want"
    fi
done
if awk -v f="$free_rate" 'BEGIN { exit !(f > 1.15e9) }'; then
    pass netns-uncapped-faster
else
    fail netns-uncapped-faster "the uncapped link gave only $free_rate bit/s"
fi
read -r txa txb < <(np_tx_bytes)
[ "$txa" -gt $((200000000 / 8)) ] && [ "$txb" -gt 0 ] && pass netns-tx-bytes ||
    fail netns-tx-bytes "tx bytes A=$txa B=$txb"

np_cut
if reach; then fail netns-cut "connected across a cut link"; else pass netns-cut; fi
np_heal
sleep 0.5
if reach; then pass netns-heal; else fail netns-heal "no connection after np_heal"; fi
np_drop
if ip -n "$NP_NS_A" link show "$NP_DEV_A" >/dev/null 2>&1 || reach; then
    fail netns-drop "the veth pair is still there"
else
    pass netns-drop
fi
np_link && sleep 0.5
if reach && tc -n "$NP_NS_A" qdisc show dev "$NP_DEV_A" | grep -q 'tbf.*rate 1Gbit'; then
    pass netns-relink
else
    fail netns-relink "$(tc -n "$NP_NS_A" qdisc show dev "$NP_DEV_A")"
fi

np_spawn "$NP_NS_B" "$VD_TESTDIR/sleep.log" sleep 300
pid=$NP_LAST_PID
sleep 0.2
[ "$(readlink "/proc/$pid/ns/net")" = "$(ip netns exec "$NP_NS_B" readlink /proc/self/ns/net)" ] &&
    pass netns-spawn-in-namespace || fail netns-spawn-in-namespace "pid $pid is elsewhere"
a=$NP_NS_A b=$NP_NS_B
np_cleanup
np_cleanup
if kill -0 "$pid" 2>/dev/null || ip netns list | grep -qE "^($a|$b)( |$)"; then
    fail netns-cleanup "pid $pid alive or namespaces left: $(ip netns list | tr '\n' ' ')"
else
    pass netns-cleanup
fi
vd_finish
