#!/usr/bin/env bash
# RBD: vdisk's rbd driver beside QEMU's, on a one-node Ceph cluster (tests/ceph/
# ceph-cluster.sh) that this script starts under $BENCH_DIR and stops however it ends.
# Usage: bench/rbd.sh [--quick]   (a case of its own, not part of run.sh's set)
#   convert-rbd  `convert -f raw -O raw SRC rbd:rbd/IMG:conf=CONF` of a 1 GiB ext4 image of
#              real files (bench/mkfs-image.sh, in the page cache) into a new RBD image:
#              vdisk against qemu-img with its defaults, and qemu-img -m 16 -W for
#              reference; `rbd bench --io-type write --io-size 4M --io-threads 16` of as
#              many bytes into a fresh image is the cluster's own pace
#   nbd-rbd-*  vdiskd and qemu-storage-daemon in turn export a prefilled 1 GiB RBD image
#              over NBD (the same command line); fio's nbd engine: 4 KiB randrw at iodepth
#              32 for 30 s (IOPS), 4 MiB sequential writes, then reads, iodepth 8 (MB/s)
# --quick (or BENCH_QUICK=1): 256 MiB, 5 s of randrw, one round, about a minute. Variables:
# BENCH_ROUNDS (3), RBD_SIZE (1G), RBD_RUNTIME (30), VDISK, VDISKD, QSD, QEMU_IMG,
# BENCH_DIR, BENCH_STRICT. Writes bench/results-rbd.md (quick or resized runs:
# $BENCH_DIR/results-rbd*.md).
set -euo pipefail

for arg in "$@"; do
    case $arg in
        -h | --help) sed -n '2,17s/^# \{0,1\}//p' "$0"; exit 0 ;;
        --quick) BENCH_QUICK=1 ;;
        *) echo "bench: unknown argument '$arg' (--quick)" >&2; exit 2 ;;
    esac
done
# Three rounds by default (one when quick), and records of our own, so that a run of this
# case never mixes with run.sh's runs.tsv.
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    : "${BENCH_ROUNDS:=1}"
else
    : "${BENCH_ROUNDS:=3}"
fi
: "${BENCH_RUNS:=${BENCH_DIR:-/var/tmp/vdisk-bench}/runs-rbd.tsv}"
. "$(dirname "$0")/lib.sh"
. "$REPO/tests/ceph/ceph-cluster.sh"

QSD=${QSD:-qemu-storage-daemon}
: "${VDISKD:=$(dirname "$VDISK")/vdiskd}"
if [ -n "${RBD_SIZE:-}" ]; then
    size=$(numfmt --from=iec "$RBD_SIZE") || bench_die "RBD_SIZE=$RBD_SIZE: not a size"
else
    size=$(bench_size $((1 << 30)) $((256 << 20)))
fi
[ $((size % (4 << 20))) = 0 ] || bench_die "the size must be a multiple of 4 MiB"
runtime=${RBD_RUNTIME:-$(bench_size 30 5)}

command -v python3 >/dev/null || bench_die "python3 is needed (make deps)"
command -v "$QEMU_IMG" >/dev/null || bench_die "$QEMU_IMG not found (qemu-utils)"
command -v "$QSD" >/dev/null || bench_die "$QSD not found (qemu-system-common)"
command -v "$VDISK" >/dev/null || bench_die "$VDISK not found: run 'make build' (or set VDISK)"
command -v "$VDISKD" >/dev/null || bench_die "$VDISKD not found: run 'make build' (or set VDISKD)"
for t in ceph-mon ceph-osd ceph rbd ceph-authtool monmaptool; do
    command -v "$t" >/dev/null || bench_die "$t not found (ceph-mon, ceph-osd, ceph-common)"
done
ls /usr/lib/*/qemu/block-rbd.so >/dev/null 2>&1 ||
    bench_die "QEMU's rbd driver is not installed (qemu-block-extra)"
if ! { command -v fio >/dev/null && fio --enghelp=nbd >/dev/null 2>&1; }; then
    bench_die "fio with the nbd engine is needed"
fi
# Built without librbd, vdisk does not know the protocol and never reads the conf file.
probe=$("$VDISK" create -f raw rbd:x/y:conf=/nonexistent 1M 2>&1) || true
[[ $probe == *"conf file"* ]] || bench_die "$VDISK was built without librbd"
VDISK=$(command -v "$VDISK")
VDISKD=$(command -v "$VDISKD")
QSD=$(command -v "$QSD")

if [ "$BENCH_QUICK" = 1 ]; then
    : "${BENCH_OUT:=$BENCH_DIR/results-rbd-quick.md}"
elif [ -n "${RBD_SIZE:-}${RBD_RUNTIME:-}" ]; then
    : "${BENCH_OUT:=$BENCH_DIR/results-rbd.md}"
else
    : "${BENCH_OUT:=$BENCH_SRC/results-rbd.md}"
fi

mkdir -p "$BENCH_DIR" "$BENCH_CACHE" "$BENCH_DIR/logs" "$BENCH_DIR/bin"
fstype=$(df -PT "$BENCH_DIR" | awk 'NR == 2 { print $2 }')
[ "$fstype" != tmpfs ] || bench_die "$BENCH_DIR is on tmpfs; set BENCH_DIR to a disk filesystem"
# The OSD's BlueStore file (sparse) takes the objects of the three images that can exist at
# once, and freed space is not given back to the file system; the source is cached.
need=$((6 * size + (1 << 30)))
avail=$(($(df -Pk "$BENCH_DIR" | awk 'NR == 2 { print $4 }') * 1024))
[ "$avail" -ge "$need" ] ||
    bench_die "$BENCH_DIR has $((avail >> 30)) GiB free; this needs $(((need >> 30) + 1)) GiB"

src=$("$BENCH_SRC/mkfs-image.sh" --cached "$BENCH_CACHE" "$size")
alloc=$(python3 "$BENCH_SRC/rbd.py" allocated "$src")

rm -f "$BENCH_RUNS" "$BENCH_DIR"/failed.*convert-rbd* "$BENCH_DIR"/failed.*nbd-rbd-* \
    "$BENCH_DIR"/logs/convert-rbd.* "$BENCH_DIR"/logs/nbd-rbd-*
# Run copies, so that a rebuild in the middle of the run cannot change or remove them.
cp "$VDISK" "$BENCH_DIR/bin/vdisk-rbd"
cp "$VDISKD" "$BENCH_DIR/bin/vdiskd-rbd"
vdisk_src=$VDISK vdiskd_src=$VDISKD
VDISK=$BENCH_DIR/bin/vdisk-rbd
VDISKD=$BENCH_DIR/bin/vdiskd-rbd

cluster=$BENCH_DIR/ceph-rbd
sock=$BENCH_DIR/rbd-nbd.sock
json=$BENCH_DIR/rbd-fio.json
srv_pid=

# stop_server: SIGTERM to the daemon that serves, then wait for it (SIGKILL after 60 s).
stop_server() {
    [ -n "$srv_pid" ] || return 0
    local pid=$srv_pid rc=0
    srv_pid=
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "bench: daemon $pid ignored SIGTERM for 60 s; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    return "$rc"
}

rbd_exit() {
    local rc=$?
    stop_server || true
    ceph_cluster_stop "$cluster" || true
    rm -f "$sock" "$json"
    exit "$rc"
}
trap rbd_exit EXIT
trap 'exit 130' INT TERM HUP

: >"$BENCH_RUNS"
bench_meta_contender vdisk "$vdisk_src" qemu-img
bench_meta_contender vdiskd "$vdiskd_src" qemu-storage-daemon
meta qemu-img "$("$QEMU_IMG" --version | head -1)"
meta qemu-storage-daemon "$("$QSD" --version | head -1)"
meta fio "$(fio --version)"
meta ceph "$(ceph --version | sed 's/ ([0-9a-f]*)//')"
bench_meta_machine
meta cluster "tests/ceph/ceph-cluster.sh: 1 mon + 1 BlueStore OSD on a sparse file in $cluster (nice 19, ionice idle), one replica, pool rbd with 8 PGs, cephx, loopback; images with the default features and 4 MiB objects"
meta source "bench/mkfs-image.sh's ext4 of /usr, $((size >> 20)) MiB, $((alloc >> 20)) MiB allocated ($(head -1 "$src.txt"))"
meta "before every run" "sync; echo 1 > /proc/sys/vm/drop_caches (when root); convert: the source read again into the page cache; targets deleted with rbd rm after every run (untimed)"
rerun="bash bench/rbd.sh"
[ "$BENCH_QUICK" = 1 ] && rerun="$rerun --quick"
[ -z "${RBD_SIZE:-}" ] || rerun="RBD_SIZE=$RBD_SIZE $rerun"
[ -z "${RBD_RUNTIME:-}" ] || rerun="RBD_RUNTIME=$RBD_RUNTIME $rerun"
meta rerun "\`$rerun\` (as root, on an idle machine; needs the Ceph packages)"
bench_meta_load
start=$SECONDS

mb=$((size >> 20))
conv="convert -f raw -O raw SRC rbd:rbd/IMG:conf=CONF"
bench_case convert-rbd time vdisk qemu-img 1.5 \
    "convert of the $mb MiB ext4 image into a new RBD image (MB/s of the image size)" \
    "$conv" "$size"
bench_case convert-rbd time vdisk qemu-img-m16W - \
    "the same against qemu-img -m 16 -W (16 requests in flight, out of order)" \
    "qemu-img convert -m 16 -W -f raw -O raw SRC rbd:rbd/IMG:conf=CONF" "$size"
bench_case convert-rbd mbps vdisk rbd-bench - \
    "MB/s: vdisk convert's $((alloc >> 20)) MiB allocated against rbd bench writing $mb MiB" \
    "rbd bench --io-type write --io-size 4M --io-total $size --io-threads 16 rbd/benchimg"
bench_case nbd-rbd-randrw iops vdiskd qemu-storage-daemon 1.0 \
    "fio nbd: 4 KiB random reads and writes (50/50), iodepth 32, $runtime s, prefilled $mb MiB RBD image" \
    "fio --thread --ioengine=nbd --rw=randrw --bs=4k --iodepth=32 --time_based --runtime=$runtime --size=$size"
bench_case nbd-rbd-seqwrite bw vdiskd qemu-storage-daemon 1.0 \
    "fio nbd: $mb MiB of 4 MiB sequential writes, iodepth 8" \
    "fio --thread --ioengine=nbd --rw=write --bs=4M --iodepth=8 --size=$size"
bench_case nbd-rbd-seqread bw vdiskd qemu-storage-daemon 1.0 \
    "fio nbd: $mb MiB of 4 MiB sequential reads, iodepth 8" \
    "fio --thread --ioengine=nbd --rw=read --bs=4M --iodepth=8 --size=$size"
{
    printf 'param\tbytes.convert-rbd.vdisk\t%s\n' "$alloc"
    printf 'param\tbytes.convert-rbd.rbd-bench\t%s\n' "$size"
    printf 'param\trbd-bench io size\t%s\n' $((4 << 20))
} >>"$BENCH_RUNS"

echo "bench: starting the Ceph cluster in $cluster" >&2
conf=$(ceph_cluster_start "$cluster" 2>"$BENCH_DIR/logs/rbd-cluster.log") || {
    cat "$BENCH_DIR/logs/rbd-cluster.log" >&2
    bench_die "the Ceph cluster did not start (log: $BENCH_DIR/logs/rbd-cluster.log)"
}
osd_pid=$(cat "$cluster/run/osd.0.pid")

R() { printf 'rbd:rbd/%s:conf=%s' "$1" "$conf"; }
rbdc() { timeout -k 5 300 rbd -c "$conf" "$@"; }

# rbd_rm IMG: deletes an image (untimed), then gives the OSD a moment to finish with the
# deleted objects before the next run starts.
rbd_rm() {
    rbdc rm --no-progress "rbd/$1" >/dev/null 2>&1 || return 1
    sleep "${RBD_SETTLE:-2}"
}

# A fresh cluster is slow for its first gigabyte whoever writes it (every contender took
# about twice as long in round 1 as later): one untimed write of that size first.
echo "bench: warming the cluster up (untimed)" >&2
rbdc create --size "$((size >> 20))M" rbd/warmup >/dev/null 2>&1 &&
    rbdc bench --io-type write --io-size 4M --io-threads 16 --io-total "$size" rbd/warmup \
        >/dev/null 2>&1
rbd_rm warmup || true

# ---- convert-rbd --------------------------------------------------------------------------
for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for who in $(bench_order "$round" vdisk qemu-img qemu-img-m16W rbd-bench); do
        bench_failed convert-rbd "$who" && continue
        img=conv-$who-r$round
        case $who in
            vdisk) cmd=("$VDISK" convert -f raw -O raw "$src" "$(R "$img")") ;;
            qemu-img) cmd=("$QEMU_IMG" convert -f raw -O raw "$src" "$(R "$img")") ;;
            qemu-img-m16W) cmd=("$QEMU_IMG" convert -m 16 -W -f raw -O raw "$src" "$(R "$img")") ;;
            rbd-bench)
                img=benchimg
                rbdc create --size "$((size >> 20))M" "rbd/$img"
                cmd=(rbd -c "$conf" bench --io-type write --io-size 4M --io-total "$size"
                    --io-threads 16 "rbd/$img") ;;
        esac
        bench_drop_caches
        cat "$src" >/dev/null
        if bench_run convert-rbd "$who" "$round" "${cmd[@]}"; then
            used=$(rbdc du --format json "rbd/$img" | python3 -c \
                'import json, sys; print(json.load(sys.stdin)["images"][0]["used_size"])') ||
                used=
            [ -z "$used" ] ||
                printf 'du\tconvert-rbd\t%s\t%d\t%s\n' "$who" "$round" "$used" >>"$BENCH_RUNS"
            if [ "$round" = 1 ] && [ "$who" = vdisk ]; then
                out=$("$QEMU_IMG" compare -f raw -F raw "$src" "$(R "$img")" 2>&1) || true
                if [[ $out == *"Images are identical"* ]]; then
                    meta check "qemu-img compare -f raw -F raw SRC vdisk's image of round 1: identical"
                else
                    out=$(echo "$out" | head -2 | tr '\n' ' ')
                    bench_note convert-rbd "qemu-img compare of SRC and vdisk's image: $out"
                    : >"$BENCH_DIR/failed.check.convert-rbd"
                fi
            fi
            rbd_rm "$img" || bench_note convert-rbd "rbd rm $img failed after $who's run"
        else
            rbd_rm "$img" || true
        fi
    done
done

# ---- nbd-rbd -------------------------------------------------------------------------------
# Reads of objects never written are answered by librbd without the OSD, so the image is
# written whole first.
nimg=nbdimg
rbdc create --size "$((size >> 20))M" "rbd/$nimg"
echo "bench: prefilling rbd/$nimg" >&2
rbdc bench --io-type write --io-size 4M --io-total "$size" "rbd/$nimg" \
    >"$BENCH_DIR/logs/nbd-rbd-prefill.log" 2>&1 ||
    bench_die "prefilling rbd/$nimg failed (log: $BENCH_DIR/logs/nbd-rbd-prefill.log)"
uri="nbd+unix:///r0?socket=$sock"
daemon_args=(--blockdev "driver=rbd,node-name=r0,pool=rbd,image=$nimg,conf=$conf"
    --nbd-server "addr.type=unix,addr.path=$sock"
    --export "type=nbd,id=e0,node-name=r0,writable=on")

# serve WHO LOG: starts WHO's daemon on the image and waits for its socket.
serve() {
    local bin=$QSD
    [ "$1" = vdiskd ] && bin=$VDISKD
    rm -f "$sock"
    echo "\$ $bin ${daemon_args[*]}" >>"$2"
    "$bin" "${daemon_args[@]}" >>"$2.daemon" 2>&1 &
    srv_pid=$!
    for _ in $(seq 1 300); do
        [ -S "$sock" ] && return 0
        kill -0 "$srv_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "no NBD socket after 30 s: $(tail -2 "$2.daemon" | tr '\n' ' ')" >>"$2"
    stop_server || true
    return 1
}

# fio_args JOB: sets fio_cmd to the fio command line of JOB.
fio_args() {
    fio_cmd=(fio --thread --ioengine=nbd --uri="$uri" --size="$size" --output-format=json
        --output="$json" --name="$1")
    case $1 in
        randrw) fio_cmd+=(--rw=randrw --bs=4k --iodepth=32 --time_based --runtime="$runtime"
            --norandommap --randseed=20261207) ;;
        seqwrite) fio_cmd+=(--rw=write --bs=4M --iodepth=8) ;;
        seqread) fio_cmd+=(--rw=read --bs=4M --iodepth=8) ;;
    esac
}

for ((round = 1; round <= BENCH_ROUNDS; round++)); do
    for job in randrw seqwrite seqread; do
        case=nbd-rbd-$job
        for who in $(bench_order "$round" vdiskd qemu-storage-daemon); do
            bench_failed "$case" "$who" && continue
            log="$BENCH_DIR/logs/$case.$who.r$round.log"
            : >"$log"
            rm -f "$json" "$log.daemon"
            bench_drop_caches
            if ! serve "$who" "$log"; then
                bench_mark_failed "$case" "$who" "$round"
                continue
            fi
            fio_args "$job"
            python3 "$BENCH_SRC/rbd.py" fio --runs "$BENCH_RUNS" --case "$case" --who "$who" \
                --round "$round" --log "$log" --json "$json" --daemon-pid "$srv_pid" \
                --osd-pid "$osd_pid" --timeout $((runtime + 600)) -- "${fio_cmd[@]}" ||
                bench_mark_failed "$case" "$who" "$round"
            rc=0
            stop_server || rc=$?
            # 143: ended by the SIGTERM itself, without a handler of its own.
            [ "$rc" = 0 ] || [ "$rc" = 143 ] ||
                bench_note "$case" "$who exited with status $rc after SIGTERM (log: $log.daemon)"
        done
    done
done

t_stop=$SECONDS
ceph_cluster_stop "$cluster" || bench_die "could not stop the Ceph cluster in $cluster"
echo "bench: the Ceph cluster stopped ($((SECONDS - t_stop)) s)" >&2
meta "load average at end" "$(cut -d' ' -f1-3 /proc/loadavg)"
meta "total time" "$((SECONDS - start)) s (the cluster's start and stop included)"

quick=()
[ "$BENCH_QUICK" = 1 ] && quick=(--quick)
status=0
python3 "$BENCH_SRC/rbd.py" report "$BENCH_RUNS" --out "$BENCH_OUT" "${quick[@]}" || status=$?
echo "bench: results written to $BENCH_OUT" >&2
# Exit 1 when a run or a check failed, or (BENCH_STRICT=1) a target was missed.
for f in "$BENCH_DIR"/failed.*convert-rbd* "$BENCH_DIR"/failed.*nbd-rbd-*; do
    if [ -e "$f" ]; then
        echo "bench: some runs or checks failed (see Notes)" >&2
        exit 1
    fi
done
[ "$status" = 0 ] || [ "$status" = 3 ] || exit 1
[ "$status" = 0 ] || [ "${BENCH_STRICT:-0}" = 0 ] || exit 1
