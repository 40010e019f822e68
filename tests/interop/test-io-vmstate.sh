#!/usr/bin/env bash
# `vdisk io` read -b / write -b (the VM state area instead of the disk) against qemu-io 7.2:
# the same commands on twin images print the same stdout and stderr (timings filtered), exit
# with the same code and leave the same image bytes; the state one tool writes, the other
# reads back. Covers raw (no VM state), sector alignment, conflicting flags, read-only
# images, positions far past the disk and the zero-length requests.
. "$(dirname "$0")/../lib.sh"
vd_init

# qemu-iotests' _filter_qemu_io, the -C statistics line and the program name.
STATS_RE='[0-9]* ops; [0-9/:. sec]* ([0-9/.inf]* [EPTGMKiBbytes]*\/sec and [0-9/.inf]* ops\/sec)'
STATS_TO='X ops; XX:XX:XX.X (XXX YYY\/sec and XXX ops\/sec)'
filter_io() {
    sed -e "s/$STATS_RE/$STATS_TO/" \
        -e 's/^\([0-9]*\),\([0-9]*\),[0-9:.]*,[0-9.inf]*,[0-9.inf]*$/\1,\2,TIME,RATE,RATE/' \
        -e 's/^qemu-io: /PROG: /' -e 's/^vdisk: /PROG: /' -e 's/twin-[qv]\./twin-X./g'
}

# same_image Q V: the files hold the same bytes once the shorter is padded with zeros. A qcow2
# file qemu writes ends at a whole cluster, where vdisk's library ends it after the last data
# written (its guest writes do the same); every byte before that must match.
same_image() {
    cmp -s "$1" "$2" && return 0
    "$PYTHON" -c '
import sys
a, b = (open(p, "rb").read() for p in sys.argv[1:3])
n = max(len(a), len(b))
sys.exit(0 if a.ljust(n, b"\0") == b.ljust(n, b"\0") else 1)' "$1" "$2"
}

# make_twins FMT: fresh twin-q.FMT (for qemu-io) and twin-v.FMT (for vdisk io) of 1 MiB, with
# the guest disk filled with 0x5a so that a VM state access landing on it would show.
make_twins() {
    local fmt=$1 t
    rm -f twin-q.* twin-v.*
    for t in q v; do
        "$QEMU_IMG" create -f "$fmt" twin-$t."$fmt" 1M >/dev/null &&
            "$QEMU_IO" -f "$fmt" -c 'write -P 0x5a 0 1M' twin-$t."$fmt" >/dev/null || return 1
    done
}

# run_io NAME FMT CMD...: the commands (each one -c) through both tools, each
# on its twin; IO_OPTS adds qemu-io options before them (-r, -t MODE).
run_io() {
    local name=$1 fmt=$2 args=() why=
    shift 2
    while [ $# -gt 0 ]; do
        args+=(-c "$1")
        shift
    done
    make_twins "$fmt" || { fail "$name" "could not make the twin images"; return; }
    # shellcheck disable=SC2086
    "$QEMU_IO" -f "$fmt" ${IO_OPTS:-} "${args[@]}" twin-q."$fmt" >q.out 2>q.err
    local qrc=$?
    # shellcheck disable=SC2086
    "$VDISK" io -f "$fmt" ${IO_OPTS:-} "${args[@]}" twin-v."$fmt" >v.out 2>v.err
    local vrc=$?
    filter_io <q.out >q.fout
    filter_io <v.out >v.fout
    filter_io <q.err >q.ferr
    filter_io <v.err >v.ferr
    if [ "$qrc" != "$vrc" ]; then
        cat v.out v.err >diff.txt
        why="exit code $vrc, qemu-io $qrc"
    elif ! diff -u q.fout v.fout >diff.txt; then
        why="stdout differs (- qemu-io, + vdisk io)"
    elif ! diff -u q.ferr v.ferr >diff.txt; then
        why="stderr differs (- qemu-io, + vdisk io)"
    elif ! same_image twin-q."$fmt" twin-v."$fmt"; then
        cmp twin-q."$fmt" twin-v."$fmt" >diff.txt 2>&1
        why="the images differ"
    fi
    if [ -z "$why" ]; then
        pass "$name"
    else
        fail "$name" "$why" diff.txt
    fi
}

# qcow2: writes, reads back, pattern checks and the dump.
run_io qcow2/write-read qcow2 'write -b -P 0x12 0 64k' 'read -b -P 0x12 0 64k' \
    'read -P 0x5a 0 1M'
run_io qcow2/pattern-mismatch qcow2 'write -b -P 0x12 0 64k' 'read -b -P 0x13 0 64k'
run_io qcow2/pattern-range qcow2 'write -b -P 0x12 512 1k' \
    'read -b -P 0x12 -s 512 -l 1k 0 2k' 'read -b -P 0 -s 0 -l 512 0 2k' \
    'read -b -P 0x12 -s 5 -l 10 0 512'
run_io qcow2/dump qcow2 'write -b -P 0xa5 1536 512' 'read -b -v 1k 2k'
run_io qcow2/unwritten-reads-zeros qcow2 'read -b -P 0 0 128k' 'read -b -P 0 10M 64k'
run_io qcow2/pattern-file qcow2 'write -b -s /etc/hostname 512 4k' 'read -b -v 512 512'
run_io qcow2/compressed-flag-ignored qcow2 'write -b -c -P 3 128k 4k' 'read -b -P 3 128k 4k'
run_io qcow2/stats-and-quiet qcow2 'write -b -C -P 7 0 4k' 'read -b -C -P 7 0 4k' \
    'write -b -q -P 8 4k 4k' 'read -b -q -P 8 4k 4k'
run_io qcow2/zero-length qcow2 'read -b 0 0' 'write -b 0 0' 'write -b 4P 0'
# The L1 table grows for the state: to 2, 3 and 5 entries, sizes qemu's growth steps reach
# too. (qemu grows the table by half again until it is big enough, the library to exactly
# what is needed: growing from 2 straight to 4 entries, say, gives different headers.)
run_io qcow2/grows-l1 qcow2 'write -b -P 1 0 64k' 'write -b -P 2 512M 4k' \
    'write -b -P 3 1536M 512' 'read -b -P 2 512M 4k' 'read -b -P 3 1536M 512' \
    'read -P 0x5a 0 1M'
run_io qcow2/far-positions qcow2 'read -b 4P 512' 'write -b 4P 512' \
    'read -b 9223372036854774784 512' 'write -b 9223372036854774784 512'
IO_OPTS='-t writethrough' run_io qcow2/writethrough qcow2 'write -b -P 9 0 8k' 'read -b -P 9 0 8k'

# Checks qemu-io makes before any I/O, in its order.
run_io qcow2/unaligned-offset qcow2 'read -b 1 512' 'write -b 1 512'
run_io qcow2/unaligned-count qcow2 'read -b 0 511' 'write -b 0 32'
run_io qcow2/with-z qcow2 'write -b -z 0 512'
run_io qcow2/with-f qcow2 'write -b -f 0 512'
run_io qcow2/with-u qcow2 'write -b -u 0 512'
run_io qcow2/with-P-and-s qcow2 'write -b -P 1 -s /etc/hostname 0 512'
run_io qcow2/too-long qcow2 'read -b 0 3G' 'write -b 0 3G'
run_io qcow2/missing-file qcow2 'write -b -s /nonexistent 0 512'
run_io qcow2/bad-option qcow2 'read -b -x 0 512' 'write -b -x 0 512'
run_io qcow2/missing-length qcow2 'read -b 0' 'write -b 0'
IO_OPTS=-r run_io qcow2/read-only qcow2 'write -b 0 512' 'read -b -P 0 0 512'

# raw keeps no VM state.
run_io raw/unsupported raw 'write -b 0 512' 'read -b 0 512' 'read -b 0 0' 'write -b 0 0' \
    'read -P 0x5a 0 1M'
run_io raw/unaligned-first raw 'read -b 1 512' 'write -b 0 511'
run_io raw/far-position raw 'read -b 9223372036854774784 512'
IO_OPTS=-r run_io raw/read-only raw 'write -b 0 512'

# The help text names the flag.
run_io help qcow2 'help read' 'help write'

# Across tools: the state one writes, the other reads, and qemu-img check is clean.
rm -f x.qcow2 y.qcow2
"$QEMU_IMG" create -f qcow2 x.qcow2 1M >/dev/null
"$QEMU_IO" -c 'write -b -P 0x21 0 96k' -c 'write -b -P 0x22 96k 32k' x.qcow2 >/dev/null 2>&1
"$VDISK" io -c 'read -b -P 0x21 0 96k' -c 'read -b -P 0x22 96k 32k' x.qcow2 >out.txt 2>&1 &&
    pass cross/vdisk-reads-qemu-state || fail cross/vdisk-reads-qemu-state "vdisk io" out.txt
"$QEMU_IMG" create -f qcow2 y.qcow2 1M >/dev/null
"$VDISK" io -c 'write -b -P 0x31 0 96k' -c 'write -b -P 0x32 96k 32k' y.qcow2 >/dev/null 2>&1
"$QEMU_IO" -c 'read -b -P 0x31 0 96k' -c 'read -b -P 0x32 96k 32k' -c 'read -P 0 0 1M' \
    y.qcow2 >out.txt 2>&1 && pass cross/qemu-reads-vdisk-state ||
    fail cross/qemu-reads-vdisk-state "qemu-io" out.txt
qemu_check_clean y.qcow2 out.txt && pass cross/check-clean ||
    fail cross/check-clean "qemu-img check" out.txt

vd_finish
