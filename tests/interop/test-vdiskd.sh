#!/usr/bin/env bash
# vdiskd: the typical QMP session (two qcow2 nodes exported over NBD, a transaction snapshot
# of both, snapshots listed and one deleted, a resize, the exports and nodes removed, quit)
# run against vdiskd and against qemu-storage-daemon and compared field by field; malformed
# and hostile QMP input; socket permissions; SIGTERM; the graph of named nodes (shared
# children, permission conflicts, blockdev-snapshot onto an export); the command line's --blockdev,
# --nbd-server and --export forms with qemu-img reading the export; dirty bitmaps
# (qmp_bitmaps.py) against qemu-storage-daemon.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool qemu-storage-daemon

VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}
[ -x "$VDISKD" ] || { fail vdiskd-binary "$VDISKD is missing"; vd_finish; }
D=$VD_TESTDIR

"$PYTHON" "$VD_TESTS/interop/qmp_session.py" session "$VDISKD" qemu-storage-daemon "$D"
"$PYTHON" "$VD_TESTS/interop/qmp_session.py" bad "$VDISKD" "$D"
"$PYTHON" "$VD_TESTS/interop/qmp_session.py" external "$VDISKD" qemu-storage-daemon "$D"
"$PYTHON" "$VD_TESTS/interop/qmp_session.py" events "$VDISKD" qemu-storage-daemon "$D"
"$PYTHON" "$VD_TESTS/interop/qmp_graph.py" "$VDISKD" qemu-storage-daemon "$D"
"$PYTHON" "$VD_TESTS/interop/qmp_bitmaps.py" "$VDISKD" qemu-storage-daemon "$D"

# The command line alone: nodes, server and exports, as qemu-storage-daemon takes them.
"$QEMU_IMG" create -q -f qcow2 cl.qcow2 32M
"$QEMU_IO" -f qcow2 -c 'write -P 0x42 1M 1M' cl.qcow2 >/dev/null
"$VDISKD" --blockdev driver=file,node-name=f0,filename=cl.qcow2 \
    --blockdev '{"driver": "qcow2", "node-name": "d0", "file": "f0"}' \
    --nbd-server addr.type=unix,addr.path="$D/cl.nbd" \
    --export type=nbd,id=e0,node-name=d0,name=disk,writable=on \
    --chardev socket,id=m0,path="$D/cl.qmp",server=on,wait=off --monitor chardev=m0 \
    --pidfile "$D/cl.pid" --daemonize >cl.out 2>&1
rc=$?
[ $rc = 0 ] && pass cmdline-daemonize || fail cmdline-daemonize "exit $rc" cl.out
[ -s cl.pid ] && pass cmdline-pidfile || fail cmdline-pidfile "no pid file"
uri="nbd+unix:///disk?socket=$D/cl.nbd"
check_ok cmdline-qemu-img-info "$QEMU_IMG" info "$uri"
check_ok cmdline-compare "$QEMU_IMG" compare -f raw -F qcow2 "$uri" cl.qcow2
check_ok cmdline-qemu-io "$QEMU_IO" -f raw -c 'read -P 0x42 1M 1M' -c 'write -P 0x43 4M 64k' \
    "$uri"
if nbdinfo --list "nbd+unix:///?socket=$D/cl.nbd" >list.out 2>&1 && grep -q 'export="disk"' list.out
then
    pass cmdline-nbdinfo-list
else
    fail cmdline-nbdinfo-list "nbdinfo --list does not show the export" list.out
fi
pid=$(cat cl.pid 2>/dev/null)
[ -n "$pid" ] && kill -TERM "$pid"
for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && { fail cmdline-sigterm "still running"; kill -9 "$pid"; } ||
    pass cmdline-sigterm
[ ! -e cl.pid ] && pass cmdline-pidfile-removed || fail cmdline-pidfile-removed "left behind"
qemu_check_clean cl.qcow2 check.out && pass cmdline-image-clean ||
    fail cmdline-image-clean "qemu-img check" check.out
check_ok cmdline-write-durable "$QEMU_IO" -f qcow2 -c 'read -P 0x43 4M 64k' cl.qcow2

# Bad command lines: a clear message and exit 1.
bad_cl() {
    local name=$1 want=$2
    shift 2
    "$VDISKD" "$@" >bad.out 2>&1
    local rc=$?
    if [ $rc = 1 ] && grep -q "$want" bad.out; then
        pass "cmdline-bad-$name"
    else
        fail "cmdline-bad-$name" "exit $rc, expected 1 and '$want'" bad.out
    fi
}
bad_cl missing-file "No such file" --blockdev driver=qcow2,node-name=x,file.driver=file,file.filename=nosuch.qcow2
bad_cl bad-driver "does not accept value" --blockdev driver=vmdk,node-name=x,filename=a
bad_cl no-node-name "must be specified" --blockdev driver=file,filename=cl.qcow2
bad_cl export-no-server "NBD server not running" --blockdev driver=file,node-name=f,filename=cl.qcow2 --export type=nbd,id=e,node-name=f
bad_cl unknown-option "unrecognized option" --nosuch
bad_cl monitor-no-chardev "not found" --monitor chardev=zz
vd_finish
