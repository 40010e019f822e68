#!/usr/bin/env bash
# Case nbd: the NBD server beside qemu-storage-daemon, each serving the same image over a
# unix socket (started before and stopped after each timed run):
#   nbd-read   nbdcopy of a fully allocated 4 GiB qcow2 export to null:
#   nbd-write  nbdcopy of a 2 GiB raw file (random data, read into the page cache before
#              each run) into an empty qcow2 export of that size. 2 GiB, not 4: 4 GiB of
#              output passes this VM's dirty-page limits, and the disk's writeback
#              (~300 MB/s) then paces both servers alike instead of showing their own
#              speed. Not tmpfs either: QEMU writes to tmpfs at a third of its ext4 speed
#              (qemu-img convert of 2 GiB: 5.3 s into /dev/shm, 1.9 s into ext4)
#   fio-randwrite / fio-randread  fio's nbd engine, 4 KiB random writes into a fresh 1 GiB
#              qcow2 export, then random reads of that written image, iodepth 32
#   fio-direct-randwrite / fio-direct-randread  the same into and from a fully allocated
#              1 GiB qcow2 (preallocation=full) that both servers open with O_DIRECT
#              (vdisk nbd --cache=none; qsd cache.direct=on): a VM's disk in steady state
#   fio-bitmap-randwrite  the direct random writes again into a copy of that image that
#              holds an enabled persistent dirty bitmap (64 KiB granularity), which both
#              servers load and mark on every write: what an incremental backup's bitmap costs
# vdisk serves with `vdisk nbd -t -e 0` (multi-conn, as qsd's nbd-server-start default).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

QSD=${QSD:-qemu-storage-daemon}
command -v "$QSD" >/dev/null || bench_die "qemu-storage-daemon not found (qemu-system-common)"
command -v nbdcopy >/dev/null || bench_die "nbdcopy not found (libnbd-bin)"

size=$(bench_size $((4 << 30)) $((256 << 20)))
wsize=$(bench_size $((2 << 30)) $((256 << 20)))
fio_size=$(bench_size $((1 << 30)) $((64 << 20)))
fio_io=$(bench_size $((256 << 20)) $((16 << 20)))
have_fio=1
command -v fio >/dev/null && fio --enghelp=nbd >/dev/null 2>&1 || have_fio=0

sock="$BENCH_DIR/nbd.sock"
srv_pid=

# serve WHO IMAGE [direct]: starts the contender's server on $sock; sets $uri.
serve() {
    local who=$1 img=$2 direct=${3:-}
    rm -f "$sock"
    if [ "$who" = vdisk ]; then
        "$VDISK" nbd -t -e 0 -f qcow2 ${direct:+--cache=none} -k "$sock" "$img" &
        uri="nbd+unix:///?socket=$sock"
    else
        "$QSD" --blockdev "driver=file,node-name=f0,filename=$img${direct:+,cache.direct=on}" \
            --blockdev driver=qcow2,node-name=d0,file=f0 \
            --nbd-server "addr.type=unix,addr.path=$sock" \
            --export type=nbd,id=e0,node-name=d0,name=,writable=on &
        uri="nbd+unix:///?socket=$sock"
    fi
    srv_pid=$!
    local i
    for ((i = 0; i < 100; i++)); do
        [ -S "$sock" ] && return 0
        sleep 0.05
    done
    bench_die "$who did not create $sock"
}

stop() {
    if [ -n "$srv_pid" ]; then
        kill "$srv_pid" 2>/dev/null || true
        wait "$srv_pid" 2>/dev/null || true
        srv_pid=
    fi
    rm -f "$sock"
}
trap stop EXIT

mkdir -p "$BENCH_CACHE"
src_raw="$BENCH_CACHE/nbd-random-$wsize.raw"
if [ ! -f "$src_raw" ]; then
    echo "bench: generating $src_raw (once; cached)" >&2
    head -c "$wsize" /dev/urandom >"$src_raw"
fi
full="$BENCH_CACHE/nbd-full-$size.qcow2"
if [ ! -f "$full" ]; then
    echo "bench: generating $full (once; cached)" >&2
    head -c "$size" /dev/urandom >"$full.raw"
    "$QEMU_IMG" convert -f raw -O qcow2 "$full.raw" "$full"
    rm -f "$full.raw"
fi

mb=$((size >> 20))
bench_case nbd-read time vdisk qemu-storage-daemon 1.0 \
    "nbdcopy reading a $mb MiB allocated qcow2 export (unix socket)" "nbdcopy URI null:" "$size"
bench_case nbd-write time vdisk qemu-storage-daemon 2.0 \
    "nbdcopy writing $((wsize >> 20)) MiB into an empty qcow2 export" "nbdcopy FILE URI" \
    "$wsize"
if [ $have_fio = 1 ]; then
    bench_case fio-randwrite time vdisk qemu-storage-daemon 1.0 \
        "fio nbd engine: $((fio_io >> 20)) MiB of 4 KiB random writes, iodepth 32, into a fresh $((fio_size >> 20)) MiB qcow2" \
        "fio --ioengine=nbd --rw=randwrite --bs=4k --iodepth=32" "$fio_io"
    bench_case fio-randread time vdisk qemu-storage-daemon 1.0 \
        "fio nbd engine: $((fio_io >> 20)) MiB of 4 KiB random reads, iodepth 32, of that image" \
        "fio --ioengine=nbd --rw=randread --bs=4k --iodepth=32" "$fio_io"
    bench_case fio-direct-randwrite time vdisk qemu-storage-daemon 1.0 \
        "fio nbd engine: $((fio_io >> 20)) MiB of 4 KiB random writes, iodepth 32, into an allocated $((fio_size >> 20)) MiB qcow2, O_DIRECT" \
        "fio --ioengine=nbd --rw=randwrite --bs=4k --iodepth=32 (servers: cache=none)" "$fio_io"
    bench_case fio-direct-randread time vdisk qemu-storage-daemon 1.0 \
        "fio nbd engine: $((fio_io >> 20)) MiB of 4 KiB random reads, iodepth 32, of that image, O_DIRECT" \
        "fio --ioengine=nbd --rw=randread --bs=4k --iodepth=32 (servers: cache=none)" "$fio_io"
    bench_case fio-bitmap-randwrite time vdisk qemu-storage-daemon 1.0 \
        "fio nbd engine: $((fio_io >> 20)) MiB of 4 KiB random writes, iodepth 32, into an allocated $((fio_size >> 20)) MiB qcow2 with an enabled persistent dirty bitmap, O_DIRECT" \
        "fio --ioengine=nbd --rw=randwrite --bs=4k --iodepth=32 (servers: cache=none)" "$fio_io"
    allocated="$BENCH_CACHE/fio-allocated-$fio_size.qcow2"
    if [ ! -f "$allocated" ]; then
        echo "bench: generating $allocated (once; cached)" >&2
        "$QEMU_IMG" create -q -f qcow2 -o preallocation=full "$allocated" "$fio_size"
    fi
    with_bitmap="$BENCH_CACHE/fio-allocated-bitmap-$fio_size.qcow2"
    if [ ! -f "$with_bitmap" ]; then
        echo "bench: generating $with_bitmap (once; cached)" >&2
        "$QEMU_IMG" create -q -f qcow2 -o preallocation=full "$with_bitmap" "$fio_size"
        "$QEMU_IMG" bitmap --add "$with_bitmap" b0
    fi
else
    bench_note fio-randwrite "fio with the nbd engine is not installed; fio cases skipped"
fi

fio_job() {
    fio --name=nbd --ioengine=nbd --uri="$uri" --rw="$1" --bs=4k --iodepth=32 \
        --size="$fio_size" --io_size="$fio_io" --randrepeat=1 --randseed=20261122 \
        --norandommap --output=/dev/null
}
export -f fio_job 2>/dev/null || true

for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for who in $(bench_order "$round" vdisk qemu-storage-daemon); do
        out="$BENCH_DIR/nbd-write.$who.qcow2"
        rm -f "$out"
        "$QEMU_IMG" create -q -f qcow2 "$out" "$wsize"
        bench_drop_caches
        # Read twice: pages read once are the first the kernel reclaims when the output
        # needs room, and the source would then come from the disk mid-copy.
        cat "$src_raw" >/dev/null
        cat "$src_raw" >/dev/null
        serve "$who" "$out"
        bench_run nbd-write "$who" "$round" nbdcopy "$src_raw" "$uri" || true
        stop
        if [ "$round" = 1 ]; then
            bench_check nbd-write "$who" "$out" || true
            bench_compare nbd-write "written data" "$src_raw" "$out" || true
        fi
        rm -f "$out"
        bench_drop_caches

        # Read: the same allocated image for both, from the page cache.
        cat "$full" >/dev/null
        serve "$who" "$full"
        bench_run nbd-read "$who" "$round" nbdcopy "$uri" null: || true
        stop

        if [ $have_fio = 1 ]; then
            out="$BENCH_DIR/fio.$who.qcow2"
            rm -f "$out"
            "$QEMU_IMG" create -q -f qcow2 "$out" "$fio_size"
            bench_drop_caches
            serve "$who" "$out"
            bench_run fio-randwrite "$who" "$round" env uri="$uri" fio_size="$fio_size" \
                fio_io="$fio_io" bash -c "$(declare -f fio_job); fio_job randwrite" || true
            bench_run fio-randread "$who" "$round" env uri="$uri" fio_size="$fio_size" \
                fio_io="$fio_io" bash -c "$(declare -f fio_job); fio_job randread" || true
            stop
            [ "$round" = 1 ] && { bench_check fio-randwrite "$who" "$out" || true; }
            rm -f "$out"
            bench_settle

            serve "$who" "$allocated" direct
            bench_run fio-direct-randwrite "$who" "$round" env uri="$uri" \
                fio_size="$fio_size" fio_io="$fio_io" \
                bash -c "$(declare -f fio_job); fio_job randwrite" || true
            bench_run fio-direct-randread "$who" "$round" env uri="$uri" \
                fio_size="$fio_size" fio_io="$fio_io" \
                bash -c "$(declare -f fio_job); fio_job randread" || true
            stop
            [ "$round" = 1 ] && { bench_check fio-direct-randwrite "$who" "$allocated" || true; }
            bench_settle

            serve "$who" "$with_bitmap" direct
            bench_run fio-bitmap-randwrite "$who" "$round" env uri="$uri" \
                fio_size="$fio_size" fio_io="$fio_io" \
                bash -c "$(declare -f fio_job); fio_job randwrite" || true
            stop
            [ "$round" = 1 ] && { bench_check fio-bitmap-randwrite "$who" "$with_bitmap" || true; }
            bench_settle
        fi
    done
done
