#!/usr/bin/env bash
# `vdisk io` against qemu-io 7.2, and `vdisk bench` against qemu-img bench: the same commands
# on twin images (raw and qcow2) must print the same stdout and stderr (timing figures and
# program names filtered, as qemu-iotests filter them), exit with the same code, and leave
# images with the same contents.
. "$(dirname "$0")/../lib.sh"
vd_init

# qemu-iotests' _filter_qemu_io, plus the -C statistics line and the program name.
STATS_RE='[0-9]* ops; [0-9/:. sec]* ([0-9/.inf]* [EPTGMKiBbytes]*\/sec and [0-9/.inf]* ops\/sec)'
STATS_TO='X ops; XX:XX:XX.X (XXX YYY\/sec and XXX ops\/sec)'
filter_io() {
    sed -e "s/$STATS_RE/$STATS_TO/" \
        -e 's/^\([0-9]*\),\([0-9]*\),[0-9:.]*,[0-9.inf]*,[0-9.inf]*$/\1,\2,TIME,RATE,RATE/' \
        -e 's/^qemu-io: /PROG: /' -e 's/^vdisk: /PROG: /' \
        -e 's/twin-[qv]\./twin-X./g' -e 's/probe-[qv]\./probe-X./g'
}

# make_twins FMT SIZE [CREATE-OPTS]: twin-q.FMT (for qemu-io) and twin-v.FMT (for vdisk io).
# Each case starts from fresh twins made the same way (remembered here), unless
# KEEP_TWINS=1: one case's damage must not spread to the next.
make_twins() {
    local fmt=$1 size=$2 opts=${3:-}
    TWIN_ARGS=("$@")
    rm -f twin-q."$fmt" twin-v."$fmt"
    for t in q v; do
        "$QEMU_IMG" create -f "$fmt" ${opts:+-o "$opts"} twin-$t."$fmt" "$size" >/dev/null ||
            return 1
    done
}

# setup_twins FMT CMD...: the same qemu-io commands on both twins, so a case can start from
# a populated image whatever vdisk io can do.
setup_twins() {
    local fmt=$1 t args=()
    shift
    for c in "$@"; do
        args+=(-c "$c")
    done
    for t in q v; do
        "$QEMU_IO" -f "$fmt" "${args[@]}" twin-$t."$fmt" >/dev/null 2>&1
    done
}

# compare_runs NAME: compares q.out/q.err/q.rc with v.out/v.err/v.rc after filtering.
compare_runs() {
    local name=$1 f
    for f in q v; do
        filter_io <$f.out >$f.fout
        filter_io <$f.err >$f.ferr
    done
    # The usage text names vdisk and its own notes: only its stream and status must match.
    if [ -z "${SKIP_STDOUT:-}" ] && ! diff -u q.fout v.fout >diff.txt; then
        fail "$name" "stdout differs (- qemu-io, + vdisk io)" diff.txt
        return 1
    fi
    if ! diff -u q.ferr v.ferr >diff.txt; then
        fail "$name" "stderr differs (- qemu-io, + vdisk io)" diff.txt
        return 1
    fi
    if [ "$(cat q.rc)" != "$(cat v.rc)" ]; then
        fail "$name" "exit code: qemu-io $(cat q.rc), vdisk io $(cat v.rc)"
        return 1
    fi
    return 0
}

# compare_images NAME FMT: both twins hold the same guest data (and the vdisk one is clean).
compare_images() {
    local name=$1 fmt=$2
    if ! "$QEMU_IMG" compare -f "$fmt" -F "$fmt" twin-q."$fmt" twin-v."$fmt" >cmp.txt 2>&1; then
        fail "$name" "images differ after the commands" cmp.txt
        return 1
    fi
    if [ "$fmt" = qcow2 ] && ! "$QEMU_IMG" check twin-v.qcow2 >chk.txt 2>&1; then
        fail "$name" "qemu-img check finds errors in the image vdisk io wrote" chk.txt
        return 1
    fi
    return 0
}

# io_case NAME FMT "OPTIONS" CMD...: runs CMDs (-c each) through both tools on the twins.
io_case() {
    local name=$1 fmt=$2 opts=$3 qargs=() vargs=()
    shift 3
    [ -n "${KEEP_TWINS:-}" ] || make_twins "${TWIN_ARGS[@]}" || return 1
    for c in "$@"; do
        qargs+=(-c "${c//twin-X/twin-q}")
        vargs+=(-c "${c//twin-X/twin-v}")
    done
    # The subshells keep bash's "Killed" notices (sigraise cases) out of the log.
    # shellcheck disable=SC2086
    ("$QEMU_IO" $opts "${qargs[@]}" twin-q."$fmt" >q.out 2>q.err </dev/null; exit $?) 2>/dev/null
    echo $? >q.rc
    # shellcheck disable=SC2086
    ("$VDISK" io $opts "${vargs[@]}" twin-v."$fmt" >v.out 2>v.err </dev/null; exit $?) 2>/dev/null
    echo $? >v.rc
    compare_runs "$name" && compare_images "$name" "$fmt" && pass "$name"
}

# stdin_case NAME FMT "OPTIONS" SCRIPT: commands read from standard input (the prompt mode).
stdin_case() {
    local name=$1 fmt=$2 opts=$3 script=$4
    # shellcheck disable=SC2086
    printf '%b' "$script" | "$QEMU_IO" $opts twin-q."$fmt" >q.out 2>q.err
    echo $? >q.rc
    # shellcheck disable=SC2086
    printf '%b' "$script" | "$VDISK" io $opts twin-v."$fmt" >v.out 2>v.err
    echo $? >v.rc
    compare_runs "$name" && compare_images "$name" "$fmt" && pass "$name"
}

# ---- cases common to raw and qcow2 -------------------------------------------------------

common_cases() {
    local fmt=$1 F="-f $1"

    make_twins "$fmt" 4M
    io_case "$fmt-write-read-pattern" "$fmt" "$F" \
        "write -P 0x41 0 4k" "read -P 0x41 0 4k" "write -P 0xcd 64k 64k" \
        "read -P 0xcd 64k 64k" "read -P 0 128k 64k" "write 1M 512" "read -P 0xcd 1M 512"
    io_case "$fmt-pattern-mismatch" "$fmt" "$F" \
        "read -P 0x42 512 1k" "read -P 0x41 -s 512 -l 1k 0 4k" "read -P 0x41 -s 4k -l 1 0 4k"
    io_case "$fmt-unaligned" "$fmt" "$F" \
        "write -P 7 100 3" "read -P 7 100 3" "write -P 8 4095 2" "read -v 4090 10" \
        "writev -P 9 70000 512 1 1k" "readv -P 9 70000 1 512 1k" "read -v 69990 40"
    io_case "$fmt-dump" "$fmt" "$F" \
        "write -P 0x61 0 20" "read -v 0 20" "read -v -q 0 20" "read -v 0 1" \
        "write -P 0x00 32 16" "write -P 0x7e 48 16" "read -v 0 80"
    io_case "$fmt-stats-C" "$fmt" "$F" \
        "read -C 0 512" "write -C 0 512" "discard -C 0 512" "readv -C 0 512 512" \
        "writev -C 0 512 512"
    io_case "$fmt-quiet" "$fmt" "$F" \
        "write -q -P 3 0 64k" "read -q -P 3 0 64k" "read -q -P 4 0 512" "writev -q 0 512" \
        "readv -q 0 512" "discard -q 0 512"
    io_case "$fmt-sizes" "$fmt" "$F" \
        "read 0 1.5k" "read 0x10 0x200" "read 1k 1.0k" "read 0 1." "read 0 1.k" \
        "read 0 512B" "read 0 010" "alloc 1.25k 0" "alloc 1.1k 0" "alloc 0.0001k 0" \
        "alloc +5 0" "alloc 1.999999999999999999k 0"
    io_case "$fmt-size-errors" "$fmt" "$F" \
        "read 0 1.5" "read 0 1e3" "read 0 .5k" "read 0 0x" "read 0 1.5b" "read 0 2k3" \
        "read 0 8E" "read 0 9223372036854775808" "read 0 99999999999999999999" \
        "read 0 18446744073709551616x" "read -l x -P 1 0 1" "read -s 1z -P 1 0 1" \
        "read 0x1.8k 1"
    io_case "$fmt-hex-suffix-warning" "$fmt" "$F" "read 0 0x1k" "alloc 0x10k"
    io_case "$fmt-bounds" "$fmt" "$F" \
        "read 4M 1" "read 4194303 2" "read 4M 0" "write 4M 512" "write 4194303 2" \
        "writev 4M 512" "readv 4194000 512" "discard 4M 1" "write -z 4M 1" "read 5M 0" \
        "read 0 3G" "read 0 2147483136" "discard 0 3G" "write 0 3G" "write -z 0 3G" \
        "write -z -u 0 3G"
    io_case "$fmt-zero-length" "$fmt" "$F" "read 0 0" "write 0 0" "write -z 0 0" \
        "discard 0 0" "readv 0 0" "alloc 0 0"
    io_case "$fmt-write-zeroes" "$fmt" "$F" \
        "write -P 5 0 256k" "write -z 0 4k" "read -P 0 0 4k" "read -P 5 4k 252k" \
        "write -z -u 64k 64k" "read -P 0 64k 64k" "write -z -n 128k 64k" \
        "read -P 0 128k 64k" "write -z 200000 1000" "read -P 0 200000 1000"
    io_case "$fmt-write-options" "$fmt" "$F" \
        "write -f -P 1 0 512" "read -P 1 0 512" "write -p 0 512" "write -u 0 512" \
        "write -n 0 512" "write -z -P 1 0 512" "write -s /nonexistent 0 512" \
        "write -b -z 0 512" "write -f -b 0 512" "write -f -c 0 512" "write -P 300 0 1" \
        "write -P abc 0 1" "write -P -1 0 1" "write -P 0x100 0 1" "write -P 0377 0 1" \
        "read -P 255 0 1" "write -b 100 512" "write -c 0 100" "read -b 0 100"
    printf 'abc' >pattern.bin
    : >empty.bin
    io_case "$fmt-write-source-file" "$fmt" "$F" \
        "write -s pattern.bin 0 10" "read -v 0 16" "write -s empty.bin 0 10" \
        "write -s pattern.bin -P 1 0 10"
    io_case "$fmt-usage-errors" "$fmt" "$F" \
        "read" "read 0" "read 0 1 2" "read -x 0 1" "read -1 5" "read 0 -5" "write" \
        "write 0" "readv 0" "writev 0" "discard 0" "discard 0 1 2" "alloc" "alloc 0 1 2" \
        "length x" "map x" "info x" "flush x" "truncate" "sigraise" "sleep" "help a b" \
        "read -s 1 0 512" "read -l 1 0 512" "read -P 1 -s 600 0 512" \
        "read -P 1 -s 10 -l 600 0 512" "discard -x 0 1" "readv -x 0 1" "writev -x 0 1" \
        "aio_read 0" "aio_write 0" "truncate -x 1M" "truncate 1M 2M"
    io_case "$fmt-unknown-command" "$fmt" "$F" "bogus" "read 0 1" "  " "" "read  0   1"
    io_case "$fmt-alloc-map" "$fmt" "$F" \
        "write -P 1 64k 64k" "write -z 256k 64k" "write 1M 4k" "map" "alloc 0 4M" \
        "alloc 64k" "alloc 70000" "alloc 1M 100k" "alloc 4M" "alloc 4194000 1k" "alloc 5M" \
        "alloc 0"
    io_case "$fmt-discard" "$fmt" "$F" \
        "write -P 9 0 256k" "discard 0 64k" "discard 100 1" "discard 64k 128k" "map" \
        "read -P 9 192k 64k"
    io_case "$fmt-length-info" "$fmt" "$F" "length" "info" "l" "i"
    io_case "$fmt-altnames" "$fmt" "$F" \
        "w -P 2 0 512" "r -P 2 0 512" "a 0" "f" "d 0 512" "l" "? read"
    io_case "$fmt-aio" "$fmt" "$F" \
        "aio_write -P 0x5a 0 512" "aio_flush" "aio_read -P 0x5a 0 512" "aio_flush" \
        "aio_read -v -P 0x5a 0 17" "aio_flush" "aio_write -P 1 4k 1k 1k" "aio_flush" \
        "aio_read -P 1 4k 2k" "aio_flush" "aio_read -P 2 4k 2k" "aio_flush" \
        "aio_write -i 0 512" "aio_read -i 0 512" "aio_write -z -P 1 0 512" "aio_flush" \
        "aio_write -u 0 512" "aio_write -z 0 512 512" "aio_read 4M 512" "aio_flush"
    io_case "$fmt-readv-writev" "$fmt" "$F" \
        "writev -P 3 0 512 1k 2k" "readv -P 3 0 1k 1k 1k 512" "readv -v 0 16 16" \
        "writev -P 4 8k 1 2 3" "readv -P 4 8k 6" "readv 0 3G" "readv 0 1G 1G 1G" \
        "writev 0 1x"
    io_case "$fmt-flush" "$fmt" "$F" "write 0 512" "flush" "aio_flush"
    io_case "$fmt-sleep-sigraise-args" "$fmt" "$F" \
        "sleep 10" "sleep x" "sleep -1" "sigraise 0" "sigraise 1k" "sigraise x"
    io_case "$fmt-help" "$fmt" "$F" "help" "help read" "help r" "help write" "help readv" \
        "help writev" "help aio_read" "help aio_write" "help discard" "help sigraise" \
        "help open" "help reopen" "help map" "help quit" "help bogus" "help alloc" \
        "help truncate" "help sleep" "help abort" "help help"
    io_case "$fmt-blkdebug" "$fmt" "$F" "break write_aio A" "remove_break A" "resume A"
    io_case "$fmt-quit" "$fmt" "$F" "write -P 6 0 512" "quit" "read 0 1"
    io_case "$fmt-quit-args" "$fmt" "$F" "q now" "read 0 1"
    io_case "$fmt-close-open" "$fmt" "$F" \
        "close" "read 0 1" "info" "length" "close" "open -o driver=$fmt twin-X.$fmt" \
        "open twin-X.$fmt" "help"
    io_case "$fmt-readonly" "$fmt" "$F -r" \
        "write 0 512" "writev 0 512" "discard 0 512" "aio_write 0 512" "truncate 1M" \
        "read 0 512" "write -x 0 1"
    io_case "$fmt-truncate" "$fmt" "$F" \
        "truncate 8M" "length" "write -P 1 7M 1M" "read -P 1 7M 1M" "truncate 2M" "length" \
        "read 2M 1" "truncate -m bogus 1M" "truncate -m full 3M" "length" "read -P 0 2M 1M"
    io_case "$fmt-cache-modes" "$fmt" "$F -t writeback" "write -P 1 0 64k" "read -P 1 0 64k"
    io_case "$fmt-nocache" "$fmt" "$F -n" "write -P 2 0 64k" "read -P 2 0 64k" \
        "read -P 2 512 512"
    io_case "$fmt-discard-ignore" "$fmt" "$F -d ignore" "write -P 1 0 64k" "discard 0 64k"
    io_case "$fmt-snapshot" "$fmt" "$F -s" "write -P 1 0 64k" "read -P 1 0 64k" "map" "info" \
        "length"

    make_twins "$fmt" 4M
    stdin_case "$fmt-stdin" "$fmt" "$F" \
        'write -P 0xcd 0 512\nread -P 0xcd 0 512\n\nbogus\nread\nread -P 1 0 512\n'
    stdin_case "$fmt-stdin-quit" "$fmt" "$F" 'write 0 512\nquit\nread 0 512\n'
    stdin_case "$fmt-stdin-no-newline" "$fmt" "$F" 'write 0 512\nalloc 0'
    stdin_case "$fmt-stdin-empty" "$fmt" "$F" ''
    stdin_case "$fmt-stdin-long-line" "$fmt" "$F" \
        "read 0 512$(printf ' %.0s' $(seq 1 1100))512\n"
}

common_cases raw
common_cases qcow2

# ---- qcow2 specifics ----------------------------------------------------------------------

make_twins qcow2 4M
io_case qcow2-cluster-map qcow2 "-f qcow2" \
    "write -P 1 0 4k" "write -P 2 100k 4k" "write -z 300k 64k" "write -z -u 1M 128k" \
    "map" "alloc 0 512k" "discard 0 64k" "map" "read -P 0 0 64k" "read -P 2 100k 4k"

make_twins qcow2 4M compat=0.10
io_case qcow2-v2-info qcow2 "-f qcow2" "info" "write -z 0 64k" "map"

make_twins qcow2 100G extended_l2=on,cluster_size=128k
io_case qcow2-extended-l2-info qcow2 "-f qcow2" "info" "write -P 1 4k 4k" "map" "alloc 0 128k"

rm -f base.qcow2
"$QEMU_IMG" create -f qcow2 base.qcow2 1M >/dev/null
"$QEMU_IO" -f qcow2 -c "write -P 7 0 64k" base.qcow2 >/dev/null
make_twins qcow2 1M "backing_file=base.qcow2,backing_fmt=qcow2"
io_case qcow2-backing qcow2 "-f qcow2" \
    "read -P 7 0 64k" "write -P 8 128k 64k" "map" "alloc 0 256k" "alloc 0" \
    "read -P 0 64k 64k" "write -z 0 4k" "read -P 0 0 4k" "read -P 7 4k 60k" "map"

# ---- command line and no-file behaviour ---------------------------------------------------

make_twins raw 1M
for t in q v; do cp twin-$t.raw probe-$t.img; done
run_both() {  # run_both NAME ARGS... (the image argument, if any, spelled twin-X.raw)
    local name=$1 a qa=() va=()
    shift
    for a in "$@"; do
        qa+=("${a//twin-X/twin-q}")
        va+=("${a//twin-X/twin-v}")
    done
    "$QEMU_IO" "${qa[@]}" >q.out 2>q.err </dev/null
    echo $? >q.rc
    "$VDISK" io "${va[@]}" >v.out 2>v.err </dev/null
    echo $? >v.rc
    compare_runs "$name" && pass "$name"
}
run_both cmdline-no-file -c "read 0 1"
run_both cmdline-no-file-help -c "help"
run_both cmdline-no-file-sleep -c "sleep 1" -c "sigraise 0"
run_both cmdline-missing-file -f raw -c "read 0 1" missing.raw
run_both cmdline-wrong-format -f qcow2 -c "read 0 1" twin-X.raw
run_both cmdline-bad-format -f bogus -c "read 0 1" twin-X.raw
run_both cmdline-bad-cache -f raw -t bogus -c "read 0 1" twin-X.raw
run_both cmdline-bad-discard -f raw -d bogus -c "read 0 1" twin-X.raw
run_both cmdline-bad-aio -f raw -i bogus -c "read 0 1" twin-X.raw
run_both cmdline-native-aio -f raw -i native -c "read 0 1" twin-X.raw
run_both cmdline-native-aio-nocache -f raw -i native -t none -c "read 0 512" twin-X.raw
run_both cmdline-probe-warning -c "write -P 1 0 512" -c "read -P 1 0 512" twin-X.raw
run_both cmdline-probe-readonly -r -c "read 0 512" twin-X.raw
run_both cmdline-long-options --format=raw --cache=writeback --cmd="read 0 512" twin-X.raw
run_both cmdline-ignored-options -f raw -C -m -k -t none -c "write 0 4k" -c "read 0 4k" \
    twin-X.raw
run_both cmdline-force-share-readonly -f raw -r -U -c "read 0 4k" twin-X.raw
run_both cmdline-force-share-rw -f raw -U -c "read 0 4k" twin-X.raw
SKIP_STDOUT=1 run_both cmdline-usage -f raw twin-X.raw twin-X.raw
SKIP_STDOUT=1 run_both cmdline-bad-option -x -f raw twin-X.raw
run_both cmdline-open-cmd -c "open -r -U -o driver=raw twin-X.raw" -c "read 0 1" \
    -c "open twin-X.raw" -c "close" -c "open -U twin-X.raw" -c "open -t bogus twin-X.raw" \
    -c "open -d bogus twin-X.raw" -c "open -i bogus twin-X.raw" -c "open -x" -c "open" \
    -c "open -n -t writeback -d unmap -i threads twin-X.raw" -c "write 0 512" -c "close" \
    -c "open -f raw twin-X.raw" -c "open -k twin-X.raw" -c "length"
run_both cmdline-reopen -f raw -c "reopen -r" -c "write 0 1" -c "reopen -w" -c "write 0 1" \
    -c "reopen -r -w" -c "reopen -c bogus" -c "reopen -c none" -c "read 0 512" -c "reopen x" \
    -c "reopen -x" twin-X.raw

# Exit status of a crash: sigraise 9 kills both the same way, after flushing stdout.
make_twins raw 1M
io_case raw-sigraise-kill raw "-f raw" "write -P 3 0 512" "sigraise 9" "write -P 4 0 512"
make_twins qcow2 1M
io_case qcow2-sigraise-kill qcow2 "-f qcow2" "write -P 3 0 64k" "sigraise 9" "read 0 1"

# ---- vdisk bench against qemu-img bench ----------------------------------------------------

# bench_case NAME ARGS...: same lines (the run time filtered) and exit code; the image argument
# is spelled bench-X.raw.
bench_case() {
    local name=$1 a qa=() va=() t
    shift
    for t in q v; do
        "$QEMU_IMG" create -f raw bench-$t.raw 1M >/dev/null
    done
    for a in "$@"; do
        qa+=("${a//bench-X/bench-q}")
        va+=("${a//bench-X/bench-v}")
    done
    "$QEMU_IMG" bench "${qa[@]}" >q.out 2>q.err </dev/null
    echo $? >q.rc
    "$VDISK" bench "${va[@]}" >v.out 2>v.err </dev/null
    echo $? >v.rc
    for t in q v; do
        sed -i -e 's/Run completed in [0-9.]* seconds/Run completed in T seconds/' \
            -e 's/^qemu-img: /PROG: /' -e 's/^vdisk: /PROG: /' -e 's/bench-[qv]\./bench-X./g' \
            -e "s/'qemu-img --help'/'PROG --help'/" -e "s/'vdisk --help'/'PROG --help'/" \
            $t.out $t.err
    done
    compare_runs "$name" || return 1
    if ! cmp -s bench-q.raw bench-v.raw; then
        fail "$name" "the images differ after the run"
        return 1
    fi
    pass "$name"
}
bench_case bench-read -c 100 -d 4 -f raw bench-X.raw
bench_case bench-write -w -c 100 -d 8 --pattern=0x5a -S 8k -f raw bench-X.raw
bench_case bench-write-wrap -w -c 300 -s 1k -S 5k -o 3k --pattern=7 -f raw bench-X.raw
bench_case bench-flush -w -c 100 -d 8 --flush-interval=16 -f raw bench-X.raw
bench_case bench-flush-no-drain -w -c 100 -d 8 --flush-interval=16 --no-drain -f raw \
    bench-X.raw
bench_case bench-options -c 10 -d 2 -q -U -i threads -t writeback -n -i io_uring -f raw \
    bench-X.raw
bench_case bench-zero-count -c 0 -f raw bench-X.raw
bench_case bench-zero-size -c 3 -s 0 -f raw bench-X.raw
bench_case bench-hex-count -c 0x10 -s 1.5k -f raw bench-X.raw
bench_case bench-past-end -c 10 -d 4 -o 1M -f raw bench-X.raw
bench_case bench-bad-count -c abc -f raw bench-X.raw
bench_case bench-bad-count2 -c 2147483648 -f raw bench-X.raw
bench_case bench-bad-depth -d x -f raw bench-X.raw
bench_case bench-bad-size -s 1x -f raw bench-X.raw
bench_case bench-big-size -s 3G -f raw bench-X.raw
bench_case bench-big-step -S 3G -f raw bench-X.raw
bench_case bench-big-offset -o 9E -f raw bench-X.raw
bench_case bench-bad-pattern --pattern=300 -f raw bench-X.raw
bench_case bench-bad-interval --flush-interval=x -w -f raw bench-X.raw
bench_case bench-interval-read --flush-interval=64 -f raw bench-X.raw
bench_case bench-interval-depth -w --flush-interval=2 -d 4 -f raw bench-X.raw
bench_case bench-bad-cache -t bogus -f raw bench-X.raw
bench_case bench-bad-aio -i bogus -f raw bench-X.raw
bench_case bench-native -n -c 3 -f raw bench-X.raw
bench_case bench-native-direct -i native -t none -c 3 -f raw bench-X.raw
bench_case bench-missing -c 3 -f raw missing.raw
bench_case bench-wrong-format -c 3 -f qcow2 bench-X.raw
bench_case bench-two-files -f raw bench-X.raw bench-X.raw
bench_case bench-bad-option -x -f raw bench-X.raw
bench_case bench-probe-warning -w -c 3 bench-X.raw

vd_finish
