#!/usr/bin/env bash
# `make run` must work: scripts/demo.sh starts vdiskd on a fresh default image, serves it over
# NBD (unix socket and loopback TCP) with QMP beside it, prints how to connect, and (with
# VDISK_DEMO_SECONDS) checks the export with qemu-img, stops cleanly and leaves an image
# that qemu-img finds clean and sockets removed.
. "$(dirname "$0")/../lib.sh"
vd_init

img=$VD_TESTDIR/var/default.qcow2
port=$((20000 + $$ % 20000))
if CI=true VDISK_DEMO_IMAGE=$img VDISK_DEMO_SECONDS=1 VDISK_DEMO_PORT=$port \
    vd_with_timeout 120 bash "$VD_REPO/scripts/demo.sh" "$VDISK" </dev/null >demo.out 2>&1; then
    pass demo/runs
else
    VD_DETAIL_LINES=60 fail demo/runs "scripts/demo.sh exited $?" demo.out
fi
if grep -q "nbd+unix:///disk0?socket=" demo.out && grep -q "127.0.0.1:$port" demo.out &&
    grep -q "qmp.sock" demo.out; then
    pass demo/prints-how-to-connect
else
    fail demo/prints-how-to-connect "no NBD/QMP connection lines" demo.out
fi
if grep -q "read 1048576/1048576 bytes at offset 0" demo.out; then
    pass demo/export-served
else
    fail demo/export-served "qemu-io could not read the pattern through the export" demo.out
fi
if [ -f "$img" ] && qemu_check_clean "$img" check.out; then
    pass demo/image-clean
else
    fail demo/image-clean "the demo image $img is missing or not clean" check.out
fi
if [ ! -e "$VD_TESTDIR/var/nbd.sock" ] && [ ! -e "$VD_TESTDIR/var/qmp.sock" ]; then
    pass demo/sockets-removed
else
    fail demo/sockets-removed "the daemon left its sockets behind"
fi
vd_finish
