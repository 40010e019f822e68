#!/usr/bin/env bash
# `make run`: starts vdiskd on ./var/default.qcow2 (created on first run: 1 GiB qcow2), exported
# over NBD on a unix socket and on 127.0.0.1:10809, with the QMP control socket beside it,
# prints how to connect, and serves until Ctrl-C (which flushes and closes the image).
# With VDISK_DEMO_SECONDS=N (the tests, CI) it checks the export with qemu-img and stops
# after N seconds instead.
set -euo pipefail
VDISK=${1:-build/vdisk}
VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}
IMG=${VDISK_DEMO_IMAGE:-var/default.qcow2}
PORT=${VDISK_DEMO_PORT:-10809}
mkdir -p "$(dirname "$IMG")"
DIR=$(cd "$(dirname "$IMG")" && pwd)
IMG="$DIR/$(basename "$IMG")"
NBD="$DIR/nbd.sock"
QMP="$DIR/qmp.sock"

if [ ! -f "$IMG" ]; then
    echo "==> Creating $IMG (1 GiB qcow2, first run)"
    "$VDISK" create -q -f qcow2 "$IMG" 1G
    "$VDISK" io -c 'write -P 0xa5 0 1M' "$IMG" >/dev/null
fi

"$VDISKD" --blockdev "driver=file,node-name=file0,filename=$IMG" \
    --blockdev driver=qcow2,node-name=disk0,file=file0,discard=unmap \
    --nbd-server "addr.type=unix,addr.path=$NBD" \
    --nbd-server "addr.type=inet,addr.host=127.0.0.1,addr.port=$PORT" \
    --export type=nbd,id=export0,node-name=disk0,name=disk0,writable=on \
    --chardev "socket,id=qmp0,path=$QMP,server=on,wait=off" --monitor chardev=qmp0 &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid' EXIT
for _ in $(seq 100); do [ -S "$QMP" ] && [ -S "$NBD" ] && break; sleep 0.05; done

cat <<MSG

vdiskd is serving $IMG (node disk0, NBD export "disk0", writable).

  NBD over the unix socket and over TCP on 127.0.0.1:$PORT:
    nbdinfo 'nbd+unix:///disk0?socket=$NBD'
    nbdinfo nbd://127.0.0.1:$PORT/disk0
    qemu-img info 'nbd+unix:///disk0?socket=$NBD'
    qemu-io -f raw -c 'read -P 0xa5 0 1M' nbd://127.0.0.1:$PORT/disk0
  QMP (qemu-storage-daemon's commands), e.g. with socat:
    socat - UNIX-CONNECT:$QMP
    {"execute": "qmp_capabilities"}
    {"execute": "blockdev-snapshot-internal-sync", "arguments": {"device": "disk0", "name": "s1"}}
    {"execute": "query-named-block-nodes"}

Ctrl-C stops it (the image is flushed and closed).
MSG

if [ -n "${VDISK_DEMO_SECONDS:-}" ]; then
    qemu-img info "nbd+unix:///disk0?socket=$NBD"
    qemu-io -f raw -c 'read -P 0xa5 0 1M' "nbd://127.0.0.1:$PORT/disk0"
    sleep "$VDISK_DEMO_SECONDS"
    exit 0
fi
wait $pid
