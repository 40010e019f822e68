#!/usr/bin/env bash
# `vdisk nbd -L` (--list) prints what `qemu-nbd -L` prints, byte for byte (program name
# aside), with the same exit status: pointed at a qemu-nbd server and at a vdisk server
# exporting the same image with various options, at scripted servers that answer oddly or
# wrongly (nbd_fake_server.py), at nothing, and with options list mode refuses.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool qemu-nbd
. "$VD_TESTS/interop/nbd_side_by_side.sh"
D=$VD_TESTDIR

"$QEMU_IMG" create -q -f qcow2 disk.qcow2 4M
"$QEMU_IMG" create -q -f raw disk.raw 1M

# lists NAME ARGS...: runs both listers with ARGS and compares output and status.
lists() {
    local name=$1 qrc vrc
    shift
    timeout 20 qemu-nbd -L "$@" >"$D/q.out" 2>&1
    qrc=$?
    timeout 20 "$VDISK" nbd -L "$@" >"$D/v.out" 2>&1
    vrc=$?
    sed -i 's/^qemu-nbd: //' "$D/q.out"
    sed -i 's/^vdisk: //' "$D/v.out"
    echo "exit $qrc" >>"$D/q.out"
    echo "exit $vrc" >>"$D/v.out"
    if [ "$qrc" != 124 ] && diff "$D/q.out" "$D/v.out" >"$D/diff.out"; then
        pass "$name ($(head -n 1 "$D/v.out"))"
    else
        fail "$name" "differs (< qemu-nbd, > vdisk)" "$D/diff.out"
    fi
}

# The same listing from each kind of server, serving the same image the same way.
for args in "disk.qcow2" "-A -x name -D description disk.qcow2" "-r -e 3 disk.qcow2" \
    "disk.raw" "-f raw -x '' disk.raw" "-A -o 512 -r disk.qcow2"; do
    for who in qemu-nbd vdisk; do
        # shellcheck disable=SC2086
        eval "set -- $args"
        if nbd_serve "$who" "$@"; then
            lists "list: $who server: $args" -k "$D/s.sock"
        else
            fail "list: $who server: $args" "server did not start" "$D/srv.log"
        fi
        nbd_stop
    done
done

# Servers that answer oddly or wrongly: the same output or the same complaint.
for sc in $("$PYTHON" -c "import sys; sys.path.insert(0, '$VD_TESTS/interop');
import nbd_fake_server as f; print(' '.join(f.SCENARIOS))"); do
    rm -f "$D/f.sock"
    "$PYTHON" "$VD_TESTS/interop/nbd_fake_server.py" "$D/f.sock" "$sc" &
    fp=$!
    for _ in $(seq 100); do [ -S "$D/f.sock" ] && break; sleep 0.05; done
    lists "list: fake server: $sc" -k "$D/f.sock"
    kill "$fp"
    wait "$fp" 2>/dev/null
done

# No server; options list mode refuses.
rm -f "$D/none.sock"
lists "list: no server (unix)" -k "$D/none.sock"
lists "list: no server (tcp)" -b 127.0.0.1 -p 1
for a in "disk.qcow2" "-x foo" "-D d" "-f raw" "-A" "-o 5" "-n" "--cache=none" \
    "--discard=unmap" "--aio=threads" "--fork"; do
    # shellcheck disable=SC2086
    lists "list: refuses: $a" $a -k "$D/none.sock"
done
for a in "-o 0" "-r" "-t" "-e 3" "--detect-zeroes=on"; do
    # shellcheck disable=SC2086
    lists "list: accepts: $a" $a -k "$D/none.sock"
done
vd_finish
