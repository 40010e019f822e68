#!/usr/bin/env bash
# Crash consistency: every workload (random allocating writes and overwrites, discard and
# write zeroes, internal snapshots, compressed writes, resize up and down, backing-file COW,
# refcount width changes (amend), persistent bitmaps added, removed, changed and stored at
# close (bitmaps), the target of a mirror job while the guest writes its source (mirror:
# any sector may hold the source's data of any moment, and after job-complete exactly the
# source's), a backup job's source and target (backup: the copy-before-write rule), an
# intermediate commit's chain base <- mid <- top (commit: the chain reads what the guest
# wrote, and the commit run again from the crash state finishes it) and COLO block
# replication's secondary disk <- hidden <- active under the primary's and the secondary's
# writes, checkpoints and a failover under writes (replication: the secondary disk keeps
# the primary's flushed writes, the chain reads the secondary's view as copy-before-write
# and flushes allow, the failover's commit run again gives the secondary disk that view,
# and once the failover returned the secondary disk alone holds it), the destination of a
# live migration under a writer on the source (migration: what each READY promised is
# durable, and from the switchover's READY on exactly the source's final contents;
# tests/crash/check-mig.c); lazy refcounts off
# and on; clusters of 512 B, 64 KiB and 2 MiB) is recorded through the logwrites filter
# and replayed into crash states that crash-test checks (tests/crash/crash.h). Then proofs
# that the harness can fail: a test-only switch that writes L2 entries before the refcounts
# they depend on must be caught as corruption, and a replay that forgets what flushes made
# durable must be caught losing flushed writes, on a guest's workload and on a migration's
# READYs. Ends with
#   crash states: N, corruptions: 0, leaks: L, lost flushed writes: 0
#
#   CRASH_LONG=1        the long mode: ~2,800 states per workload, 100,000+ in all
#   CRASH_STATES=N      states per workload (default 60; 2800 with CRASH_LONG)
#   CRASH_OPS=N         guest operations per workload (default 80; 200 with CRASH_LONG)
#   CRASH_JOBS=N        workloads run at once (default 1)
#   CRASH_SEED=S        the seed (default 1); every workload's line names it
#   CRASH_KEEP=DIR      keep the first failing states of each workload there
. "$(dirname "$0")/../lib.sh"
vd_init

bin=$(dirname "$VDISK")/tests/crash-test
bin_asan=$(dirname "$VDISK_ASAN")/tests/crash-test
if [ "${CRASH_LONG:-}" = 1 ]; then
    : "${CRASH_STATES:=2800}" "${CRASH_OPS:=200}"
fi
states=${CRASH_STATES:-60}
ops=${CRASH_OPS:-80}
seed=${CRASH_SEED:-1}
jobs=${CRASH_JOBS:-1}
keep=${CRASH_KEEP:-$VD_TESTDIR/failures}
mkdir -p "$keep"
# Crash states are written and checked in memory when /dev/shm can hold them: thousands of
# rewritten image files cost the disk far more than the checks.
state_dir=$VD_TESTDIR
if shm=$(mktemp -d /dev/shm/vdisk-crash.XXXXXX 2>/dev/null); then
    state_dir=$shm
    trap 'rm -rf "$shm"; _vd_cleanup' EXIT
fi

if [ ! -x "$bin" ]; then
    fail crash/build "$bin is missing (make build)"
    vd_finish
fi

# One workload: NAME KIND CLUSTER_SIZE LAZY(0|1) [BINARY [EXTRA ARGS...]]; writes NAME.out.
run_workload() {
    local name=$1 kind=$2 cs=$3 lazy=$4 exe=${5:-$bin} dir=$VD_TESTDIR/$1
    shift 5 2>/dev/null || shift $#
    mkdir -p "$dir"
    local args=(--dir "$dir" --kind "$kind" --cluster-size "$cs" --seed "$seed" --ops "$ops"
        --states "$states" --keep "$keep" --state-dir "$state_dir")
    [ "$lazy" = 1 ] && args+=(--lazy)
    # A backup's mode is the name's last part (backup-CS-lazy0-MODE); else by the seed.
    [[ $kind = backup && $name = *-lazy0-* ]] && args+=(--backup-mode "${name##*-lazy0-}")
    "$exe" "${args[@]}" "$@" >"$VD_TESTDIR/$name.out" 2>"$VD_TESTDIR/$name.err"
    echo $? >"$VD_TESTDIR/$name.rc"
    rm -f "$dir"/*.qcow2 "$dir"/writes.log
}

# The recording filter refuses what it cannot honour, naming the part that is wrong.
"$QEMU_IMG" create -q -f qcow2 "$VD_TESTDIR/lw.qcow2" 1M
for spec in "no-log|logwrites::$VD_TESTDIR/lw.qcow2|non-empty LOG" \
    "bad-log-dir|logwrites:$VD_TESTDIR/no/such/dir.log:$VD_TESTDIR/lw.qcow2|could not create log" \
    "no-image|logwrites:$VD_TESTDIR/x.log:|non-empty LOG and PATH"; do
    IFS='|' read -r name arg want <<<"$spec"
    if out=$("$VDISK" info "$arg" 2>&1); then
        fail "crash/logwrites-refuses-$name" "vdisk info '$arg' succeeded"
    elif grep -q "$want" <<<"$out"; then
        pass "crash/logwrites-refuses-$name"
    else
        fail "crash/logwrites-refuses-$name" "expected '$want' in: $out"
    fi
done

# A crash can leave a refcount block that counts clusters past the end of the file (the
# block reached the disk, the clusters did not). No check sees them, QEMU's included; a leak
# repair clears them, so that the next allocation does not turn them into leaks.
img=$VD_TESTDIR/past-eof.qcow2
"$QEMU_IMG" create -q -f qcow2 "$img" 64M
"$QEMU_IO" -c "write -P 1 0 64k" "$img" >/dev/null
"$PYTHON" - "$img" <<'PY'
import struct, sys, os
f = open(sys.argv[1], "r+b")
hdr = f.read(104)
cs = 1 << struct.unpack_from(">I", hdr, 20)[0]
rt = struct.unpack_from(">Q", hdr, 48)[0]
f.seek(rt); rb = struct.unpack(">Q", f.read(8))[0]
past = os.path.getsize(sys.argv[1]) // cs + 2
f.seek(rb + 2 * past); f.write(struct.pack(">H", 1))
PY
out=$("$VDISK" check -r leaks "$img" 2>&1)
"$QEMU_IO" -c "write -P 2 1M 64k" "$img" >/dev/null
if grep -q 'past the end of the file' <<<"$out" && "$QEMU_IMG" check -q "$img"; then
    pass crash/repair-refcount-past-eof
else
    fail crash/repair-refcount-past-eof "check -r leaks left a refcount past the end: $out"
fi

names=()
for kind in alloc snap compress resize cow mixed amend bitmaps; do
    for cs in 512 65536 2097152; do
        for lazy in 0 1; do
            names+=("$kind-$cs-lazy$lazy")
        done
    done
done
# The target of a mirror job (the job makes it without lazy refcounts), written by the
# job's workers while the guest writes the source; background and write-blocking copies
# alternate with the seed.
for cs in 512 65536 2097152; do
    names+=("mirror-$cs-lazy0")
done
# Jobs over several images recorded in one log, a crash state being one moment of them all:
# a backup (the copy-before-write filter on the source the guest writes; sync=full or
# bitmap, compressed or not) and an intermediate commit of base <- mid <- top while the
# guest writes top (then run again from each crash state to its end), and block
# replication's three images (tests/crash/check-repl.c). Images of 2 MiB clusters cost
# much more here (32 MiB images copied whole): the long mode only.
if [ "${CRASH_LONG:-}" = 1 ]; then
    for cs in 512 65536 2097152; do
        for mode in full bitmap full-compress bitmap-compress; do
            names+=("backup-$cs-lazy0-$mode")
        done
        names+=("commit-$cs-lazy0" "replication-$cs-lazy0")
    done
else
    names+=(backup-65536-lazy0-full-compress commit-65536-lazy0 replication-512-lazy0
        replication-65536-lazy0)
fi
# A live migration into a recorded destination while a writer writes the source (channels
# and codec by the seed and the cluster size: seed 1 gives 1 channel zlib at 512 B, 4
# channels zstd at 64 KiB, 1 channel zlib at 2 MiB).
for cs in 512 65536 2097152; do
    names+=("migration-$cs-lazy0")
done

running=0
for n in "${names[@]}"; do
    IFS=- read -r kind cs lz _ <<<"$n"
    run_workload "$n" "$kind" "$cs" "${lz#lazy}" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait

total_states=0 total_corrupt=0 total_leaks=0 total_lost=0 total_dirty=0
for n in "${names[@]}"; do
    line=$(grep '^crash states:' "$VD_TESTDIR/$n.out")
    rc=$(cat "$VD_TESTDIR/$n.rc")
    if [ -z "$line" ]; then
        fail "crash/$n" "crash-test did not finish (exit $rc, seed $seed)" "$VD_TESTDIR/$n.err"
        continue
    fi
    read -r s c l w < <(sed -E 's/[^0-9]+/ /g' <<<"$line")
    d=$(sed -nE 's/^dirty states repaired on open: ([0-9]+).*/\1/p' "$VD_TESTDIR/$n.out")
    total_states=$((total_states + s)) total_corrupt=$((total_corrupt + c))
    total_leaks=$((total_leaks + l)) total_lost=$((total_lost + w))
    total_dirty=$((total_dirty + ${d:-0}))
    if [ "$rc" = 0 ] && [ "$c" = 0 ] && [ "$w" = 0 ]; then
        pass "crash/$n: $line"
    else
        fail "crash/$n" "$line (seed $seed; CRASH_KEEP=DIR keeps the failing states)" \
            "$VD_TESTDIR/$n.err"
    fi
done

# The harness must be able to fail: L2 entries written before their refcounts...
# (The proofs use fixed sizes, whatever CRASH_STATES and CRASH_OPS say.)
states=60 ops=80 VDISK_TEST_BREAK_ORDERING=1 run_workload broken-order alloc 65536 0 "$bin" \
    --expect-failure
if [ "$(cat "$VD_TESTDIR/broken-order.rc")" = 0 ]; then
    pass "crash/broken-ordering-is-caught: $(grep '^crash states:' "$VD_TESTDIR/broken-order.out")"
else
    fail crash/broken-ordering "writing L2 before refcounts went unnoticed" \
        "$VD_TESTDIR/broken-order.out"
fi
# ...and a replay that ignores flushes, which must lose flushed writes.
states=60 ops=80 run_workload ignore-flushes alloc 65536 0 "$bin" --ignore-flushes \
    --expect-failure
if [ "$(cat "$VD_TESTDIR/ignore-flushes.rc")" = 0 ] &&
    ! grep -q 'lost flushed writes: 0$' "$VD_TESTDIR/ignore-flushes.out"; then
    pass "crash/lost-writes-are-caught: $(grep '^crash states:' "$VD_TESTDIR/ignore-flushes.out")"
else
    fail crash/lost-writes-are-caught "dropping flushed writes went unnoticed" \
        "$VD_TESTDIR/ignore-flushes.out"
fi
# ...and the same replay of a migration, whose READYs then promise what a crash can lose.
states=60 run_workload ignore-flushes-migration migration 65536 0 "$bin" --ignore-flushes \
    --expect-failure
if [ "$(cat "$VD_TESTDIR/ignore-flushes-migration.rc")" = 0 ] &&
    ! grep -q 'lost flushed writes: 0$' "$VD_TESTDIR/ignore-flushes-migration.out"; then
    pass "crash/migration-lost-writes-are-caught: $(grep '^crash states:' \
        "$VD_TESTDIR/ignore-flushes-migration.out")"
else
    fail crash/migration-lost-writes-are-caught \
        "a migration's lost durable writes went unnoticed" \
        "$VD_TESTDIR/ignore-flushes-migration.out"
fi

# The harness itself under ASan+UBSan, on the workload that touches every path and on
# the mirror's, the backup's, replication's and the migration's (a job's threads and the
# copy-before-write filter beside the guest's writes; seed 1: write-blocking, and
# sync=bitmap; a failover beside a writer thread; both sides of a migration, 4 channels).
if [ -x "$bin_asan" ] && [ "${CRASH_LONG:-}" != 1 ]; then
    for kind in mixed mirror backup replication migration; do
        states=20 run_workload "asan-$kind" "$kind" 65536 0 "$bin_asan"
        if [ "$(cat "$VD_TESTDIR/asan-$kind.rc")" = 0 ]; then
            pass "crash/asan-$kind: $(grep '^crash states:' "$VD_TESTDIR/asan-$kind.out")"
        else
            fail "crash/asan-$kind" "crash-test under ASan+UBSan failed" \
                "$VD_TESTDIR/asan-$kind.err"
        fi
    done
fi

echo "dirty states repaired on open (lazy_refcounts, snapshot windows): $total_dirty"
echo "crash states: $total_states, corruptions: $total_corrupt, leaks: $total_leaks," \
    "lost flushed writes: $total_lost"
vd_finish
