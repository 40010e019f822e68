# Helpers for tests that run qemu-nbd and `vdisk nbd` side by side on the same image and
# compare what clients see: sourced after lib.sh and vd_init, never run.
# shellcheck shell=bash

# nbd_serve WHO ARGS...: starts WHO (qemu-nbd or vdisk) with -t on $VD_TESTDIR/s.sock and
# ARGS, waits until it listens, and sets NBD_PID (0 when it never listened) and NBD_URI.
nbd_serve() {
    local who=$1
    shift
    rm -f "$VD_TESTDIR/s.sock" "$VD_TESTDIR/s.pid"
    if [ "$who" = qemu-nbd ]; then
        qemu-nbd -t -k "$VD_TESTDIR/s.sock" --pid-file "$VD_TESTDIR/s.pid" "$@" \
            >"$VD_TESTDIR/srv.log" 2>&1 &
    else
        "$VDISK" nbd -t -k "$VD_TESTDIR/s.sock" --pid-file "$VD_TESTDIR/s.pid" "$@" \
            >"$VD_TESTDIR/srv.log" 2>&1 &
    fi
    NBD_PID=$!
    NBD_URI="nbd+unix:///?socket=$VD_TESTDIR/s.sock"
    for _ in $(seq 200); do
        [ -e "$VD_TESTDIR/s.pid" ] && [ -S "$VD_TESTDIR/s.sock" ] && return 0
        kill -0 "$NBD_PID" 2>/dev/null || break
        sleep 0.05
    done
    kill "$NBD_PID" 2>/dev/null
    wait "$NBD_PID" 2>/dev/null
    NBD_PID=0
    return 1
}

# Stops the server nbd_serve started, by its pid.
nbd_stop() {
    if [ "${NBD_PID:-0}" != 0 ]; then
        kill "$NBD_PID" 2>/dev/null
        wait "$NBD_PID" 2>/dev/null
    fi
    NBD_PID=0
}

# nbd_compare NAME PROBE ARGS...: serves ARGS with each server in turn, runs the shell
# function PROBE (which reads $NBD_URI and prints what a client sees), and passes when both
# printed the same, non-empty, text.
nbd_compare() {
    local name=$1 probe=$2 who
    shift 2
    for who in qemu-nbd vdisk; do
        if nbd_serve "$who" "$@"; then
            "$probe" >"$VD_TESTDIR/$who.out" 2>&1
        else
            { echo "server did not start:"; cat "$VD_TESTDIR/srv.log"; } >"$VD_TESTDIR/$who.out"
        fi
        nbd_stop
    done
    if [ -s "$VD_TESTDIR/qemu-nbd.out" ] &&
        diff "$VD_TESTDIR/qemu-nbd.out" "$VD_TESTDIR/vdisk.out" >"$VD_TESTDIR/diff.out"; then
        pass "$name"
    else
        fail "$name" "differs (< qemu-nbd, > vdisk)" "$VD_TESTDIR/diff.out"
    fi
}
