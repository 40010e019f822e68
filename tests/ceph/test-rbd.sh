#!/usr/bin/env bash
# The rbd protocol driver against QEMU's (qemu-block-extra), on a one-node Ceph cluster this
# script starts (tests/ceph/ceph-cluster.sh) and stops:
# - data: images vdisk creates and writes read back through qemu-io with every pattern, and
#   the reverse; convert qcow2 -> RBD (raw and qcow2 on RBD) and RBD -> qcow2 in both
#   tools, compared; `map` output (allocated objects) equal to qemu-img's, in both forms;
#   resize; reading an RBD snapshot through rbd:pool/image@snap.
# - snapshots: made, listed, applied and deleted by either tool, seen by the other and by
#   `rbd snap ls`; a group snapshot over two RBD images and a qcow2 file is all or nothing.
# - errors: missing image, pool or snapshot, bad options, a bad conf or user, an existing
#   image, a bad object size: vdisk's message is qemu-img's (program name aside).
# - faults: the OSD stopped between writes fails the next one within rados_osd_op_timeout
#   with the cause (or, without it, the write waits and completes when the OSD is back).
# - the live layer (tests/ceph/rbd_live.py): vdiskd exports, fio verify, mirrors, locks.
# RBD_LONG=1 uses bigger images. Needs root, the Ceph packages and QEMU's rbd driver
# (exit 77 otherwise).
. "$(dirname "$0")/../lib.sh"
vd_init
. "$VD_TESTS/ceph/ceph-cluster.sh"
ceph_cluster_need_tests
# Ceph is installed, so a vdisk without the rbd driver is a broken build, not a skip.
if ! "$VDISK" create -f raw rbd:x/y:conf=/nonexistent 1M 2>&1 | grep -q 'conf file'; then
    fail rbd-driver-built "vdisk has no rbd driver: meson found no librbd/librados"
    vd_finish
fi

# The cluster lives beside the binaries under test (the build directory), one per build.
dir=${RBD_CLUSTER_DIR:-$(cd "$(dirname "$VDISK")" && pwd)/ceph-test-rbd}
rbd_exit() {
    local rc=$?
    [ -n "${osd_stopped:-}" ] && kill -CONT "$osd_stopped" 2>/dev/null
    ceph_cluster_stop "$dir" 2>/dev/null
    (exit $rc)
    _vd_cleanup
}
trap rbd_exit EXIT
if ! C=$(ceph_cluster_start "$dir" 2>start.err); then
    fail cluster-start "tests/ceph/ceph-cluster.sh start failed" start.err
    vd_finish
fi
export CEPH_CONF=$C
R() { printf 'rbd:rbd/%s:conf=%s' "$1" "$C"; }
big=${RBD_LONG:+256M}
big=${big:-64M}

# ---- data both ways ---------------------------------------------------------------------
ops=(-c 'write -P 0xa1 0 4k' -c 'write -P 0xa2 9M 1M' -c 'write -z 20M 64k'
     -c 'write -P 0xa3 32M 4M' -c 'discard 33M 1M' -c 'write -P 0xa4 40M 4M'
     -c 'discard 40M 4M' -c 'write -P 0xa5 48M 4M' -c 'write -z 49M 1M'
     -c 'write -P 0xa6 63M 512')
reads=(-c 'read -P 0xa1 0 4k' -c 'read -P 0xa2 9M 1M' -c 'read -P 0 20M 64k'
       -c 'read -P 0xa3 32M 1M' -c 'read -P 0 33M 1M' -c 'read -P 0xa3 34M 2M'
       -c 'read -P 0 40M 4M' -c 'read -P 0xa5 48M 1M' -c 'read -P 0 49M 1M'
       -c 'read -P 0xa5 50M 2M' -c 'read -P 0xa6 63M 512' -c 'read -P 0 4k 5M')
check_ok vdisk-create "$VDISK" create -f raw "$(R v1)" 64M
check_ok vdisk-write "$VDISK" io -f raw "${ops[@]}" "$(R v1)"
check_ok qemu-reads-vdisk "$QEMU_IO" -f raw "${reads[@]}" "$(R v1)"
check_ok qemu-create "$QEMU_IMG" create -f raw "$(R q1)" 64M
check_ok qemu-write "$QEMU_IO" -f raw "${ops[@]}" "$(R q1)"
check_ok vdisk-reads-qemu "$VDISK" io -f raw "${reads[@]}" "$(R q1)"
out=$("$QEMU_IO" -f raw -c 'read -P 0xff 0 4k' "$(R v1)" 2>&1)
case $out in *"Pattern verification failed"*) pass reads-can-fail ;;
*) fail reads-can-fail "a wrong pattern was not noticed: $out" ;; esac
for img in v1 q1; do
    for form in json human; do
        "$VDISK" map -f raw --output=$form "$(R $img)" >map-v.$img.$form 2>&1
        "$QEMU_IMG" map -f raw --output=$form "$(R $img)" >map-q.$img.$form 2>&1
        # The human form names the file: qemu-img shows the node's options as json:{...}.
        sed -i 's/json:{.*}$/FILE/; s/rbd:rbd\/[^ ]*$/FILE/' map-v.$img.$form map-q.$img.$form
        same_files map-$form-$img map-q.$img.$form map-v.$img.$form
    done
done
# the image vdisk wrote has the objects the image qemu-io wrote (zeroes and discards
# included), and holes between them
same_files map-writers-equal map-q.q1.json map-v.v1.json
grep -q '"zero": true, "data": false' map-v.v1.json && pass map-has-holes ||
    fail map-has-holes "$(cat map-v.v1.json)"
check_ok images-equal "$QEMU_IMG" compare -f raw -F raw "$(R v1)" "$(R q1)"

# resize, and QEMU's refusal to shrink unasked
check_ok vdisk-resize "$VDISK" resize -f raw "$(R v1)" 80M
size=$(rbd info rbd/v1 --format json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["size"])')
[ "$size" = 83886080 ] && pass resize-size || fail resize-size "rbd says $size"
"$VDISK" resize -f raw "$(R v1)" 64M >shrink.v 2>&1
"$QEMU_IMG" resize -f raw "$(R v1)" 64M >shrink.q 2>&1
sed -i 's/^qemu-img:/vdisk:/' shrink.q
same_files resize-shrink-refused shrink.q shrink.v
check_ok vdisk-shrink "$VDISK" resize --shrink -f raw "$(R v1)" 64M
check_ok images-equal-after-resize "$QEMU_IMG" compare -f raw -F raw "$(R v1)" "$(R q1)"

# ---- convert both ways, both tools ------------------------------------------------------
# a source with random data, patterns, zeros and holes (made raw, then qcow2 by qemu-img)
"$QEMU_IMG" create -q -f raw src.raw "$big"
"$QEMU_IO" -f raw -c 'write -P 0x51 0 3M' -c 'write -P 0x52 17M 64k' -c 'write -z 30M 2M' \
    -c 'write -P 0x53 40M 5M' src.raw >/dev/null
head -c 8M /dev/urandom | dd of=src.raw bs=1M seek=52 conv=notrunc status=none
"$QEMU_IMG" convert -f raw -O qcow2 src.raw src.qcow2
rm -f src.raw
for tool in vdisk qemu; do
    if [ $tool = vdisk ]; then conv=("$VDISK" convert); else conv=("$QEMU_IMG" convert); fi
    check_ok convert-$tool-to-rbd-raw "${conv[@]}" -f qcow2 -O raw src.qcow2 "$(R c$tool)"
    check_ok convert-$tool-to-rbd-qcow2 "${conv[@]}" -f qcow2 -O qcow2 src.qcow2 "$(R cq$tool)"
    check_ok convert-$tool-from-rbd "${conv[@]}" -f raw -O qcow2 "$(R c$tool)" back-$tool.qcow2
    check_ok convert-$tool-from-rbd-qcow2 "${conv[@]}" -f qcow2 -O qcow2 "$(R cq$tool)" \
        backq-$tool.qcow2
done
for tool in vdisk qemu; do
    check_ok compare-rbd-raw-$tool "$QEMU_IMG" compare -f qcow2 -F raw src.qcow2 "$(R c$tool)"
    check_ok vdisk-compare-rbd-raw-$tool "$VDISK" compare -f qcow2 -F raw src.qcow2 "$(R c$tool)"
    check_ok compare-rbd-qcow2-$tool "$QEMU_IMG" compare -f qcow2 -F qcow2 src.qcow2 "$(R cq$tool)"
    check_ok check-rbd-qcow2-$tool "$QEMU_IMG" check -f qcow2 "$(R cq$tool)"
    check_ok compare-back-$tool "$QEMU_IMG" compare src.qcow2 back-$tool.qcow2
    check_ok compare-backq-$tool "$QEMU_IMG" compare src.qcow2 backq-$tool.qcow2
    check_ok check-back-$tool "$QEMU_IMG" check back-$tool.qcow2
done
for form in json; do
    "$VDISK" map -f raw --output=$form "$(R cvdisk)" >cm-v 2>&1
    "$QEMU_IMG" map -f raw --output=$form "$(R cqemu)" >cm-q 2>&1
    same_files convert-map-equal cm-q cm-v
done
# the target exists: both refuse (no -n)
"$VDISK" convert -f qcow2 -O raw src.qcow2 "$(R cvdisk)" >exists.v 2>&1
"$QEMU_IMG" convert -f qcow2 -O raw src.qcow2 "$(R cvdisk)" >exists.q 2>&1
sed -i 's/^qemu-img:/vdisk:/' exists.q
same_files convert-target-exists exists.q exists.v

# ---- snapshots ----------------------------------------------------------------------------
check_ok vdisk-snap-create "$VDISK" snapshot -c vs1 "$(R q1)"
check_ok qemu-snap-create "$QEMU_IMG" snapshot -c qs1 "$(R q1)"
"$VDISK" snapshot -l "$(R q1)" >snl.v 2>/dev/null
"$QEMU_IMG" snapshot -l "$(R q1)" >snl.q 2>/dev/null
same_files snap-list-equal snl.q snl.v
grep -q vs1 snl.q && grep -q qs1 snl.v && pass snap-seen-both-ways ||
    fail snap-seen-both-ways "$(cat snl.q snl.v)"
rbd snap ls rbd/q1 | grep -q vs1 && pass snap-seen-by-rbd || fail snap-seen-by-rbd "$(rbd snap ls rbd/q1)"
"$VDISK" info "$(R q1)" >info.v 2>/dev/null
"$QEMU_IMG" info "$(R q1)" >info.q 2>/dev/null
sed -i 's/^image: .*/image: X/' info.v info.q
same_files info-equal info.q info.v
check_ok write-after-snap "$QEMU_IO" -f raw -c 'write -P 0xee 0 8M' "$(R q1)"
check_ok snapshot-read-vdisk "$VDISK" io -f raw -r -c 'read -P 0xa1 0 4k' \
    "rbd:rbd/q1@vs1:conf=$C"
check_ok snapshot-read-qemu "$QEMU_IO" -f raw -r -c 'read -P 0xa1 0 4k' "rbd:rbd/q1@qs1:conf=$C"
check_ok vdisk-snap-apply "$VDISK" snapshot -a qs1 "$(R q1)"
check_ok applied-read-by-qemu "$QEMU_IO" -f raw "${reads[@]}" "$(R q1)"
check_ok qemu-snap-apply-vdisk-made "$QEMU_IMG" snapshot -a vs1 "$(R q1)"
check_ok vdisk-snap-delete-qemu-made "$VDISK" snapshot -d qs1 "$(R q1)"
check_ok qemu-snap-delete-vdisk-made "$QEMU_IMG" snapshot -d vs1 "$(R q1)"
[ -z "$(rbd snap ls rbd/q1)" ] && pass snaps-all-gone || fail snaps-all-gone "$(rbd snap ls rbd/q1)"
for verb in -a -d; do
    "$VDISK" snapshot $verb nosuch "$(R q1)" >sne.v 2>&1
    "$QEMU_IMG" snapshot $verb nosuch "$(R q1)" 2>&1 | grep -v '^WARNING\|^   ' >sne.q
    grep -v '^WARNING\|^   ' sne.v >sne.v2
    sed -i 's/^qemu-img:/vdisk:/' sne.q
    same_files snap-missing$verb sne.q sne.v2
done

# group: two RBD images and a qcow2 file, all or nothing
"$QEMU_IMG" create -q -f qcow2 g.qcow2 16M
check_ok group-create "$VDISK" snapshot -c grp "$(R v1)" "$(R q1)" g.qcow2
n=$( (rbd snap ls rbd/v1; rbd snap ls rbd/q1; "$QEMU_IMG" snapshot -l g.qcow2) | grep -c grp)
[ "$n" = 3 ] && pass group-on-all || fail group-on-all "grp on $n of 3"
check_ok clash-on-one "$QEMU_IMG" snapshot -c g2 "$(R q1)"
if "$VDISK" snapshot -c g2 "$(R v1)" "$(R q1)" g.qcow2 >grp2.out 2>&1; then
    fail group-clash-refused "a group with a clash on one member succeeded"
else
    n=$( (rbd snap ls rbd/v1; "$QEMU_IMG" snapshot -l g.qcow2) | grep -c g2)
    [ "$n" = 0 ] && pass group-clash-refused || fail group-clash-refused "g2 made on $n" grp2.out
fi
check_ok group-delete "$VDISK" snapshot -d grp "$(R v1)" "$(R q1)" g.qcow2
n=$( (rbd snap ls rbd/v1; rbd snap ls rbd/q1; "$QEMU_IMG" snapshot -l g.qcow2) | grep -c grp)
[ "$n" = 0 ] && pass group-deleted || fail group-deleted "grp left on $n"
rbd snap ls rbd/v1 | grep -q vdisk-deleting && fail group-no-parked "$(rbd snap ls rbd/v1)" ||
    pass group-no-parked

# ---- errors as QEMU's ---------------------------------------------------------------------
errcase() {
    local name=$1
    shift
    "$VDISK" "$@" >err.v 2>&1
    local vr=$?
    "$QEMU_IMG" "$@" >err.q 2>&1
    local qr=$?
    sed -i 's/^qemu-img:/vdisk:/' err.q
    if [ $vr = 0 ] || [ $qr = 0 ]; then
        fail "$name" "exit codes: vdisk $vr, qemu-img $qr" err.v
    else
        same_files "$name" err.q err.v
    fi
}
errcase err-missing-image info "$(R nosuch)"
errcase err-missing-pool info "rbd:nopool/x:conf=$C"
errcase err-no-pool info "rbd:foo"
errcase err-missing-snap info "rbd:rbd/q1@nosnap:conf=$C"
errcase err-bad-key info "$(R q1):bogus_key=1"
errcase err-key-no-value info "$(R q1):bogus_key"
errcase err-bad-conf info "rbd:rbd/q1:conf=/nonexistent"
errcase err-bad-user info "$(R q1):id=nobody"
errcase err-json-no-image info "json:{\"driver\":\"rbd\",\"pool\":\"rbd\",\"conf\":\"$C\"}"
errcase err-json-no-pool info "json:{\"driver\":\"rbd\",\"image\":\"q1\",\"conf\":\"$C\"}"
errcase err-json-unknown info "json:{\"driver\":\"rbd\",\"pool\":\"rbd\",\"image\":\"q1\",\"conf\":\"$C\",\"bogus\":1}"
errcase err-create-exists create -f raw "$(R q1)" 64M
errcase err-create-no-pool create -f raw "rbd:nopool/x:conf=$C" 64M
errcase err-create-obj-size create -f raw -o cluster_size=3M "$(R cs)" 16M
errcase err-create-obj-small create -f raw -o cluster_size=2048 "$(R cs)" 16M
"$VDISK" io -f raw -c 'write 0 512' "rbd:rbd/q1@x:conf=$C" >err.v 2>&1
grep -q 'rbd snapshots are read-only' err.v && pass err-snapshot-rw || fail err-snapshot-rw "$(cat err.v)"
check_ok create-obj-size "$VDISK" create -f raw -o cluster_size=1M "$(R cs1)" 16M
rbd info rbd/cs1 | grep -q 'order 20' && pass create-obj-size-used || fail create-obj-size-used "$(rbd info rbd/cs1)"

# ---- the live layer -----------------------------------------------------------------------
"$PYTHON" "$VD_TESTS/ceph/rbd_live.py" "${VDISKD:-$(dirname "$VDISK")/vdiskd}" "$C" \
    "$VD_TESTDIR" >live.out 2>&1
while read -r verdict rest; do
    case $verdict in
    PASS) pass "${rest}" ;;
    FAIL) fail "${rest%%:*}" "${rest#*: }" ;;
    esac
done <live.out
grep -q '^PASS\|^FAIL' live.out || fail live "rbd_live.py printed no result" live.out
grep -q 'Traceback' live.out && fail live-no-exception "rbd_live.py raised" live.out

# ---- faults: the OSD stops between two writes -------------------------------------------
# vdisk io writes and flushes, sleeps 2 s (the OSD is stopped then), writes and flushes
# again: with rados_osd_op_timeout the second write fails with the cause, in bounded time;
# without, it waits for the OSD and completes. Last, on a settled cluster: an OSD stopped
# while the cluster still publishes maps (just after start) can keep the timed-out
# client's requests queued for good, and what else touches those objects waits behind them.
osd=$(cat "$dir/run/osd.0.pid")
epoch() { ceph osd dump --format json 2>/dev/null | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["epoch"])'; }
for _ in $(seq 1 30); do
    e1=$(epoch); sleep 2; e2=$(epoch)
    [ -n "$e1" ] && [ "$e1" = "$e2" ] && break
done
fault_io() {
    "$VDISK" io -f raw -c 'write -P 0x61 0 4M' -c flush -c 'sleep 2000' \
        -c 'write -P 0x62 4M 16M' -c flush "$1" >"$2" 2>&1 &
    cp=$!
    sleep 1
    kill -STOP "$osd" && osd_stopped=$osd
}
"$VDISK" create -q -f raw "$(R ft)" 64M
fault_io "$(R ft):rados_osd_op_timeout=2" fault1.out
t0=$(date +%s)
wait $cp
rc=$?
t1=$(date +%s)
kill -CONT "$osd" && osd_stopped=
if [ $rc = 1 ] && grep -q '^write failed: Connection timed out' fault1.out &&
    [ $((t1 - t0)) -lt 60 ]; then
    pass osd-stopped-times-out
else
    fail osd-stopped-times-out "exit $rc after $((t1 - t0)) s" fault1.out
fi
grep -qi 'sanitizer\|core dumped\|Segmentation' fault1.out &&
    fail osd-stopped-no-crash "$(cat fault1.out)" || pass osd-stopped-no-crash
"$VDISK" create -q -f raw "$(R fw)" 64M
fault_io "$(R fw)" fault2.out
sleep 5
if kill -0 $cp 2>/dev/null; then pass osd-stopped-waits; else
    fail osd-stopped-waits "vdisk io ended while the OSD was stopped" fault2.out; fi
kill -CONT "$osd" && osd_stopped=
if vd_with_timeout 120 tail --pid=$cp -f /dev/null && wait $cp; then
    pass osd-back-completes
else
    fail osd-back-completes "the writes failed after the OSD came back" fault2.out
fi
check_ok osd-back-data vd_with_timeout 120 "$QEMU_IO" -f raw -c 'read -P 0x61 0 4M' \
    -c 'read -P 0x62 4M 16M' "$(R fw)"

vd_finish
