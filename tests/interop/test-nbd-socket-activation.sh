#!/usr/bin/env bash
# Listening sockets handed over by the parent, beside QEMU's tools doing the same: `vdisk nbd`
# under systemd socket activation (LISTEN_PID/LISTEN_FDS, the socket on fd 3) serves on
# it, ends after its client without -t, and refuses -k/-p/-b with qemu-nbd's messages;
# vdiskd's --nbd-server addr.type=fd,addr.str=N serves on fd N and refuses an fd that is
# not a socket, as qemu-storage-daemon does.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool nbdinfo qemu-nbd qemu-storage-daemon
VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}
D=$VD_TESTDIR
A="$VD_TESTS/interop/nbd_socket_activate.py"
"$QEMU_IMG" create -q -f qcow2 img.qcow2 16M
"$QEMU_IO" -f qcow2 -c 'write -P 0x42 1M 1M' img.qcow2 >/dev/null

# activate [--no-env] ARGS...: nbd_socket_activate.py in the background on $D/act.sock; sets
# $act once the socket listens.
activate() {
    rm -f "$D/act.sock"
    "$PYTHON" "$A" "$@" >"$D/srv.log" 2>&1 &
    act=$!
    for _ in $(seq 200); do [ -S "$D/act.sock" ] && return 0; sleep 0.05; done
    fail activate "no socket" "$D/srv.log"
}

# gone NAME PID: the process exits 0 within 5 s.
gone() {
    local rc
    for _ in $(seq 100); do kill -0 "$2" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$2" 2>/dev/null; then
        fail "$1" "still running 5 s on" "$D/srv.log"
        kill "$2"
        wait "$2" 2>/dev/null
        return 1
    fi
    wait "$2"
    rc=$?
    [ $rc = 0 ] && pass "$1" || fail "$1" "exit status $rc" "$D/srv.log"
}

# refused NAME WANT CMD...: CMD exits 1 within 5 s saying WANT.
refused() {
    local name=$1 want=$2 p rc
    shift 2
    "$@" >"$D/srv.log" 2>&1 &
    p=$!
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$p" 2>/dev/null; then
        fail "$name" "it started serving" "$D/srv.log"
        kill "$p"
        wait "$p" 2>/dev/null
        return
    fi
    wait "$p"
    rc=$?
    if [ $rc = 1 ] && grep -q "$want" "$D/srv.log"; then
        pass "$name"
    else
        fail "$name" "exit $rc, expected 1 and '$want'" "$D/srv.log"
    fi
}

u="nbd+unix:///?socket=$D/act.sock"
for kind in qemu-nbd vdisk; do
    if [ "$kind" = qemu-nbd ]; then srv=(qemu-nbd); else srv=("$VDISK" nbd); fi
    # Without -t: one client reads the data through the inherited socket, then it ends.
    activate "$D/act.sock" "${srv[@]}" -f qcow2 img.qcow2
    check_ok "$kind-activated-read" timeout 20 "$QEMU_IO" -r -f raw -c 'read -P 0x42 1M 1M' \
        -c 'read -P 0 0 1M' "$u"
    gone "$kind-activated-exits-after-client" "$act"
    # With -t: several clients, then SIGTERM.
    activate "$D/act.sock" "${srv[@]}" -t -f qcow2 img.qcow2
    for n in 1 2; do
        [ "$(timeout 20 nbdinfo --size "$u" 2>&1)" = $((16 << 20)) ] &&
            pass "$kind-activated-persistent-client-$n" ||
            fail "$kind-activated-persistent-client-$n" "nbdinfo failed"
    done
    kill "$act"
    gone "$kind-activated-sigterm" "$act"
    refused "$kind-activated-no-k" "Unix socket can't be set when using socket activation" \
        "$PYTHON" "$A" "$D/act.sock" "${srv[@]}" -k "$D/other.sock" -f qcow2 img.qcow2
    refused "$kind-activated-no-p" "TCP port number can't be set when using socket activation" \
        "$PYTHON" "$A" "$D/act.sock" "${srv[@]}" -p 10810 -f qcow2 img.qcow2
    refused "$kind-activated-no-b" "The interface can't be set when using socket activation" \
        "$PYTHON" "$A" "$D/act.sock" "${srv[@]}" -b 127.0.0.1 -f qcow2 img.qcow2
done

ud="nbd+unix:///disk?socket=$D/act.sock"
for kind in qemu-storage-daemon vdiskd; do
    if [ "$kind" = vdiskd ]; then d=$VDISKD; else d=qemu-storage-daemon; fi
    activate --no-env "$D/act.sock" "$d" \
        --blockdev driver=file,node-name=f0,filename=img.qcow2 \
        --blockdev driver=qcow2,node-name=d0,file=f0 \
        --nbd-server addr.type=fd,addr.str=3 \
        --export type=nbd,id=e0,node-name=d0,name=disk
    check_ok "$kind-fd-read" timeout 20 "$QEMU_IO" -r -f raw -c 'read -P 0x42 1M 1M' "$ud"
    [ "$(timeout 20 nbdinfo --size "$ud" 2>&1)" = $((16 << 20)) ] && pass "$kind-fd-nbdinfo" ||
        fail "$kind-fd-nbdinfo" "nbdinfo failed"
    kill "$act"
    gone "$kind-fd-sigterm" "$act"
    refused "$kind-fd-not-a-socket" "File descriptor '0' is not a socket" \
        "$d" --nbd-server addr.type=fd,addr.str=0 </dev/null
    refused "$kind-fd-not-a-number" "Unable to parse FD number x" \
        "$d" --nbd-server addr.type=fd,addr.str=x
done
qemu_check_clean img.qcow2 check.out && pass activation-image-clean ||
    fail activation-image-clean "qemu-img check" check.out
vd_finish
