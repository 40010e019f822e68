#!/usr/bin/env bash
# When `vdisk nbd` without -t/--persistent exits, checked beside qemu-nbd with the same
# steps: a port probe (connect and close, with or without reading the greeting) does not
# end the server; the last client that finished the handshake does, and a client after that
# is refused; with -e 2, a client leaving while another one is still in transmission does
# not end it either.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool nbdinfo qemu-nbd
D=$VD_TESTDIR
C="$VD_TESTS/interop/nbd_client.py"
"$QEMU_IMG" create -q -f qcow2 img.qcow2 16M

# start KIND ARGS...: qemu-nbd or vdisk nbd, without -t, on $D/s.sock; sets $srv.
start() {
    local kind=$1
    shift
    rm -f "$D/s.sock"
    if [ "$kind" = qemu-nbd ]; then
        qemu-nbd "$@" -f qcow2 -k "$D/s.sock" img.qcow2 >"$D/srv.log" 2>&1 &
    else
        "$VDISK" nbd "$@" -f qcow2 -k "$D/s.sock" img.qcow2 >"$D/srv.log" 2>&1 &
    fi
    srv=$!
    for _ in $(seq 200); do [ -S "$D/s.sock" ] && return 0; sleep 0.05; done
    fail "$kind-start" "no socket" "$D/srv.log"
}

# alive NAME: the server is still running half a second on (it would exit at once).
alive() {
    for _ in $(seq 10); do
        if ! kill -0 "$srv" 2>/dev/null; then
            fail "$1" "the server exited" "$D/srv.log"
            return 1
        fi
        sleep 0.05
    done
    pass "$1"
}

# gone NAME: the server exits 0 within 5 s.
gone() {
    local rc
    for _ in $(seq 100); do kill -0 "$srv" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$srv" 2>/dev/null; then
        fail "$1" "still running 5 s on" "$D/srv.log"
        kill "$srv"
        wait "$srv" 2>/dev/null
        return 1
    fi
    wait "$srv"
    rc=$?
    [ $rc = 0 ] && pass "$1" || fail "$1" "exit status $rc" "$D/srv.log"
}

size_ok() {
    [ "$(nbdinfo --size "nbd+unix:///?socket=$D/s.sock" 2>"$D/client.err")" = $((16 << 20)) ]
}

for kind in qemu-nbd vdisk; do
    # One client at a time (the default): probes, then a real client, then a late one.
    start "$kind"
    "$PYTHON" "$C" probe "$D/s.sock"
    "$PYTHON" "$C" probe "$D/s.sock" greeting
    alive "$kind-port-probe-does-not-end-server"
    size_ok && pass "$kind-client-after-probe-served" ||
        fail "$kind-client-after-probe-served" "nbdinfo failed" "$D/client.err"
    gone "$kind-exits-after-first-client"
    size_ok && fail "$kind-late-client-refused" "a client after the exit was served" ||
        pass "$kind-late-client-refused"

    # -e 2: the server ends only when the last client in transmission leaves.
    start "$kind" -e 2
    rm -f "$D/ready"
    "$PYTHON" "$C" hold "$D/s.sock" "$D/ready" &
    holder=$!
    for _ in $(seq 200); do [ -e "$D/ready" ] && break; sleep 0.05; done
    [ -e "$D/ready" ] || fail "$kind-holder" "the holding client did not get in"
    size_ok && pass "$kind-second-client-served" ||
        fail "$kind-second-client-served" "nbdinfo failed" "$D/client.err"
    alive "$kind-client-leaving-while-another-stays-does-not-end-server"
    "$PYTHON" "$C" probe "$D/s.sock" greeting
    alive "$kind-probe-while-client-stays-does-not-end-server"
    kill "$holder"
    wait "$holder" || fail "$kind-holder-disconnect" "the holding client failed"
    gone "$kind-exits-after-last-client"
    size_ok && fail "$kind-late-client-refused-e2" "a client after the exit was served" ||
        pass "$kind-late-client-refused-e2"
done
qemu_check_clean img.qcow2 check.out && pass nbd-exit-image-clean ||
    fail nbd-exit-image-clean "qemu-img check" check.out
vd_finish
