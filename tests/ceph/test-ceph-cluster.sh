#!/usr/bin/env bash
# The one-node Ceph test cluster (tests/ceph/ceph-cluster.sh) that the RBD tests will use:
# start reports ready and prints how long it took; status agrees and a second start reuses
# the running cluster; rbd create/info work; QEMU's rbd driver (qemu-img create, qemu-io
# write + read with a pattern check) works against it; the librbd async probe
# (build/tests/rbd-probe, when built) passes; stop leaves no daemon and no directory, and
# runs twice; a start killed halfway leaves nothing behind either.
# Needs root and the Ceph packages (exit 77 otherwise). The rbd driver's own tests are
# tests/ceph/test-rbd.sh.
. "$(dirname "$0")/../lib.sh"
vd_init
. "$VD_TESTS/ceph/ceph-cluster.sh"
ceph_cluster_need_tests
: "${RBD_PROBE:=$VD_REPO/build/tests/rbd-probe}"

dir=$VD_TESTDIR/ceph
dir2=$VD_TESTDIR/ceph-killed
cc_exit() {
    local rc=$?
    ceph_cluster_stop "$dir" 2>/dev/null
    ceph_cluster_stop "$dir2" 2>/dev/null
    (exit $rc)
    _vd_cleanup
}
trap cc_exit EXIT

t0=$(date +%s.%N)
conf=$(ceph_cluster_start "$dir" 2>"$VD_TESTDIR/start.err")
rc=$?
t1=$(date +%s.%N)
echo "ceph-cluster start took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
if [ $rc = 0 ] && [ "$conf" = "$dir/ceph.conf" ] && [ -f "$conf" ]; then
    pass cluster-start
else
    fail cluster-start "start exited $rc, printed '$conf'" "$VD_TESTDIR/start.err"
    vd_finish
fi
export CEPH_CONF=$conf
pids=$(cat "$dir"/run/*.pid)

check_ok cluster-status ceph_cluster_status "$dir"
conf2=$(ceph_cluster_start "$dir" 2>/dev/null)
[ "$conf2" = "$conf" ] && [ "$(cat "$dir"/run/*.pid)" = "$pids" ] &&
    pass cluster-start-again || fail cluster-start-again "printed '$conf2', pids $(cat "$dir"/run/*.pid) (were $pids)"

# Loopback only: every listening socket of the daemons is on 127.0.0.1.
binds=$(ss -Htlnp 2>/dev/null | grep -E "pid=($(echo $pids | tr ' ' '|'))," | awk '{ print $4 }')
if [ -n "$binds" ] && ! printf '%s\n' "$binds" | grep -qv '^127\.0\.0\.1:'; then
    pass cluster-loopback-only
else
    fail cluster-loopback-only "daemons listen on: $(echo $binds)"
fi

check_ok rbd-create rbd create --size 64M rbd/t0
rbd info rbd/t0 >info.out 2>&1
grep -q 'size 64 MiB' info.out && pass rbd-info || fail rbd-info "no 'size 64 MiB'" info.out

img="rbd:rbd/img0:conf=$conf"
check_ok qemu-img-create "$QEMU_IMG" create -q -f raw "$img" 64M
"$QEMU_IO" -f raw -c "write -P 0x5a 0 1M" -c "read -P 0x5a 0 1M" "$img" >qio.out 2>&1
if [ $? = 0 ] && grep -q '^read 1048576/1048576 bytes' qio.out &&
    ! grep -qi 'fail\|error' qio.out; then
    pass qemu-io-write-read
else
    fail qemu-io-write-read "qemu-io through the rbd driver" qio.out
fi
rbd info rbd/img0 >img0.out 2>&1
grep -q 'size 64 MiB' img0.out && pass qemu-img-size-in-rbd || fail qemu-img-size-in-rbd "" img0.out

if [ -x "$RBD_PROBE" ]; then
    check_ok rbd-probe-aio "$RBD_PROBE" "$conf"
else
    echo "note: $RBD_PROBE not built (no librbd-dev at configure time); probe case skipped"
fi

check_ok rbd-rm rbd rm --no-progress rbd/t0
check_ok rbd-rm-qemu-image rbd rm --no-progress rbd/img0
[ -z "$(rbd ls rbd)" ] && pass rbd-pool-empty || fail rbd-pool-empty "left: $(rbd ls rbd)"

t0=$(date +%s.%N)
check_ok cluster-stop ceph_cluster_stop "$dir"
t1=$(date +%s.%N)
echo "ceph-cluster stop took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
left=$(for p in $pids; do kill -0 "$p" 2>/dev/null && echo "$p"; done)
[ -z "$left" ] && [ ! -e "$dir" ] && pass cluster-stop-leaves-nothing ||
    fail cluster-stop-leaves-nothing "pids left: ${left:-none}; dir: $(ls -d "$dir" 2>&1)"
check_ok cluster-stop-again ceph_cluster_stop "$dir"
ceph_cluster_status "$dir" 2>/dev/null && fail cluster-status-stopped "status says running" ||
    pass cluster-status-stopped

# A start killed halfway (after the mon, during the OSD's bring-up) cleans up after itself.
bash "$VD_TESTS/ceph/ceph-cluster.sh" start "$dir2" >/dev/null 2>killed.err &
starter=$!
for _ in $(seq 1 100); do
    [ -f "$dir2/run/mon.a.pid" ] && break
    sleep 0.1
done
mon2=$(cat "$dir2/run/mon.a.pid" 2>/dev/null)
sleep 1
kill -TERM "$starter"
wait "$starter"
rc=$?
if [ -n "$mon2" ] && [ $rc != 0 ] && ! kill -0 "$mon2" 2>/dev/null && [ ! -e "$dir2" ]; then
    pass cluster-start-killed-cleans-up
else
    fail cluster-start-killed-cleans-up "exit $rc, mon pid '${mon2:-none}' $(kill -0 "$mon2" 2>/dev/null && echo alive), dir: $(ls -d "$dir2" 2>&1)" killed.err
fi

vd_finish
