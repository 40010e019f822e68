#!/usr/bin/env bash
# vdiskd's --blockdev / blockdev-add with QEMU's JSON for the drivers the library opens from
# options: raw with offset and size, qcow2 with its options and a nested blkdebug, null-co,
# and nbd (a client of qemu-nbd, exported again: a proxy). The same arguments are given to
# qemu-storage-daemon; each export is read with qemu-img and must hold the same bytes as the
# other daemon's export of the same node, and query-named-block-nodes must show the same
# graph.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool qemu-storage-daemon qemu-nbd

VDISKD=${VDISKD:-$(dirname "$VDISK")/vdiskd}
[ -x "$VDISKD" ] || { fail vdiskd-binary "$VDISKD is missing"; vd_finish; }
D=$VD_TESTDIR

"$QEMU_IMG" create -q -f qcow2 src.qcow2 8M
"$QEMU_IO" -c 'write -P 0x42 1M 1M' -c 'write -z 3M 64k' -c 'write -P 0x43 5M 64k' \
    src.qcow2 >/dev/null
head -c 4M /dev/urandom >r.img

# The NBD server the nbd nodes connect to (both daemons at once: -e 4).
qemu-nbd -t -r -e 4 -f qcow2 -x up -k "$D/up.sock" src.qcow2 >up.log 2>&1 &
up=$!
for _ in $(seq 100); do [ -S "$D/up.sock" ] && break; sleep 0.05; done

nodes=(
    "{\"driver\": \"raw\", \"node-name\": \"n1\", \"offset\": 65536, \"size\": 1048576, \"file\": {\"driver\": \"file\", \"filename\": \"$D/r.img\"}, \"read-only\": true}"
    "{\"driver\": \"qcow2\", \"node-name\": \"n2\", \"lazy-refcounts\": true, \"cache-size\": 1048576, \"read-only\": true, \"file\": {\"driver\": \"blkdebug\", \"image\": {\"driver\": \"file\", \"filename\": \"$D/src.qcow2\"}}}"
    "{\"driver\": \"null-co\", \"node-name\": \"n3\", \"size\": 2097152, \"read-zeroes\": true}"
    "{\"driver\": \"nbd\", \"node-name\": \"n4\", \"server\": {\"type\": \"unix\", \"path\": \"$D/up.sock\"}, \"export\": \"up\", \"read-only\": true}"
)

# start DAEMON SOCKET: both daemons with the same nodes, each node exported as eN.
start() {
    local args=()
    for n in "${nodes[@]}"; do
        args+=(--blockdev "$n")
    done
    args+=(--nbd-server addr.type=unix,addr.path="$2")
    for i in 1 2 3 4; do
        args+=(--export "type=nbd,id=x$i,node-name=n$i,name=e$i")
    done
    args+=(--chardev "socket,id=m0,path=$2.qmp,server=on,wait=off" --monitor chardev=m0)
    "$1" "${args[@]}" >"$2.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do [ -S "$2" ] && break; sleep 0.05; done
}
pids=()
start "$VDISKD" "$D/v.sock"
start qemu-storage-daemon "$D/q.sock"

for i in 1 2 3 4; do
    v="nbd+unix:///e$i?socket=$D/v.sock"
    q="nbd+unix:///e$i?socket=$D/q.sock"
    if "$QEMU_IMG" compare -f raw -F raw "$q" "$v" >cmp.txt 2>&1; then
        pass "node$i/same-bytes-as-qsd"
    else
        cat "$D/v.sock.log" >>cmp.txt
        fail "node$i/same-bytes-as-qsd" "the exports differ" cmp.txt
    fi
    "$QEMU_IMG" info --output=json -f raw "$v" | grep virtual-size >v.size
    "$QEMU_IMG" info --output=json -f raw "$q" | grep virtual-size >q.size
    [ -s q.size ] && same_files "node$i/size" q.size v.size ||
        fail "node$i/size" "qemu-storage-daemon's export has no size"
done
# The same graph: every node (the children the options nest too), its driver, mode and
# size, as query-named-block-nodes lists them (automatic names aside). The "file" member
# is left out: for nodes with options QEMU shows json:{...} in its own key order, or
# blkdebug::PATH (README, "Where output differs").
for t in v q; do
    "$PYTHON" -c '
import json, sys
sys.path.insert(0, sys.argv[1])
from qmp_session import Client
c = Client(sys.argv[2])
c.cmd("qmp_capabilities")
for n in sorted(c.cmd("query-named-block-nodes")["return"],
                key=lambda n: ("#" if n["node-name"][0] == "#" else n["node-name"],
                               n["drv"], n["image"].get("virtual-size", 0))):
    name = "#" if n["node-name"].startswith("#") else n["node-name"]
    print(name, n["drv"], n["ro"], n["image"].get("virtual-size"))
c.close()
' "$VD_TESTS/interop" "$D/$t.sock.qmp" >"graph-$t.txt" 2>&1
done
[ "$(grep -c '^n[1-4] ' graph-q.txt)" = 4 ] && same_files graph-as-qsd graph-q.txt graph-v.txt ||
    fail graph-as-qsd "no node list from qemu-storage-daemon" graph-q.txt

# The proxy (n4) serves what qemu-nbd serves: the qcow2 image's guest data.
check_ok proxy/compare-with-image "$QEMU_IMG" compare -f raw -F qcow2 \
    "nbd+unix:///e4?socket=$D/v.sock" src.qcow2

# Bad arguments: the library's refusal, named as QEMU names it.
"$VDISKD" --blockdev '{"driver": "raw", "node-name": "b", "size": 1000, "file": {"driver": "file", "filename": "r.img"}}' >bad.out 2>&1
grep -q "Specified size is not multiple of 512" bad.out && pass bad/raw-size ||
    fail bad/raw-size "no QEMU message" bad.out
"$VDISKD" --blockdev '{"driver": "qcow2", "node-name": "b", "foo": 1, "file": {"driver": "file", "filename": "src.qcow2"}}' >bad.out 2>&1
grep -q "does not support the option 'foo'" bad.out && pass bad/unknown-option ||
    fail bad/unknown-option "no QEMU message" bad.out

for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null
    wait "$p" 2>/dev/null
done
kill "$up" 2>/dev/null
wait "$up" 2>/dev/null
vd_finish
