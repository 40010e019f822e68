#!/bin/bash
# Internal snapshots between vdisk and QEMU, both ways. Random writes go in between the
# snapshots, a raw copy of the guest content is taken at each snapshot moment, and every
# snapshot is read back (qemu-img convert -l) and applied by both tools and compared with
# that copy; listing (snapshot -l, info human and json) must be byte-identical between the
# tools; deletes by both; `qemu-img check` must be clean (no errors, no leaks) after every
# step. Then the VM state: a blob saved with a snapshot through the library must show as
# qemu-img's vm-state-size, sit where QEMU keeps VM state, and read back through qemu-io, and
# QEMU's VM state must read back through the library. Last, vdisk snapshot's messages and
# exit codes against qemu-img snapshot's on error cases and a crafted snapshot table.
# SNAP_SEED=N reproduces a run.
. "$(dirname "$0")/../lib.sh"
vd_init

SEED=$(vd_seed SNAP_SEED)
echo "seed: $SEED (SNAP_SEED=$SEED reproduces this run)"
# The DATE column is local time: a zone off UTC by a half hour shows a wrong conversion.
export TZ=Asia/Kolkata
SIZE=$((32 << 20))
OPS_PER_STEP=40
DIFF_OPS="$VD_TESTS/interop/diff-ops.py"

# ---- helpers ----------------------------------------------------------------------------

# ops FILE SEED CLUSTER: a random operation list (writes, zero writes, discards, flushes).
ops() {
    "$PYTHON" "$DIFF_OPS" gen --seed "$2" --count "$OPS_PER_STEP" --size "$SIZE" \
        --cluster "$3" --max-len $((3 * $3)) >"$1"
}

# write_random TOOL IMG SEED CLUSTER: applies a fresh random list through vdisk io or qemu-io.
write_random() {
    local f=$VD_TESTDIR/ops.$3
    ops "$f" "$3" "$4"
    if ! apply_ops "$1" "$2" "$f" >"$f.out" 2>&1; then
        fail "writes-$1-$3" "random writes through $1 failed on $2" "$f.out"
        return 1
    fi
}

# clean STEP IMG: qemu-img check reports neither errors nor leaks.
clean() {
    local out=$VD_TESTDIR/check.out
    if qemu_check_clean "$2" "$out"; then
        pass "check-$1"
    else
        fail "check-$1" "qemu-img check of $2 is not clean" "$out"
    fi
}

# same STEP IMG RAW: the image's guest content equals the raw copy.
same() {
    local out=$VD_TESTDIR/compare.out
    if "$QEMU_IMG" compare -f qcow2 -F raw "$2" "$3" >"$out" 2>&1; then
        pass "content-$1"
    else
        fail "content-$1" "$2 differs from $3" "$out"
    fi
}

# snap_same STEP IMG SNAP RAW: the snapshot's content (read by qemu-img without applying it)
# equals the raw copy taken when it was made.
snap_same() {
    local out=$VD_TESTDIR/snapread.raw
    rm -f "$out"
    if ! "$QEMU_IMG" convert -f qcow2 -l "snapshot.name=$3" -O raw "$2" "$out" \
        >"$out.log" 2>&1; then
        fail "snapread-$1" "qemu-img convert -l snapshot.name=$3 failed" "$out.log"
    elif ! cmp -s "$out" "$4"; then
        fail "snapread-$1" "snapshot $3 of $2 differs from $4"
    else
        pass "snapread-$1"
    fi
}

# run_ok STEP CMD...: a command that must succeed (its output shown when it does not).
run_ok() {
    local name=$1 out=$VD_TESTDIR/run.out rc
    shift
    "$@" >"$out" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        pass "$name"
    else
        fail "$name" "'$*' exited $rc" "$out"
    fi
    return "$rc"
}

# run_both ARGS...: runs qemu-img ARGS and vdisk ARGS; outputs in $q, $q.err, $v, $v.err
# ("qemu-img" replaced by "vdisk" in qemu-img's), exit codes in $qrc and $vrc.
run_both() {
    q=$VD_TESTDIR/q.out v=$VD_TESTDIR/v.out
    "$QEMU_IMG" "$@" >"$q" 2>"$q.err"
    qrc=$?
    "$VDISK" "$@" >"$v" 2>"$v.err"
    vrc=$?
    sed -i 's/qemu-img/vdisk/g' "$q" "$q.err"
}

# same_exit_and_stdout STEP: after run_both, fails STEP (and returns 1) unless the exit codes
# and the standard outputs agree.
same_exit_and_stdout() {
    if [ "$qrc" != "$vrc" ]; then
        cat "$q.err" "$v.err" >"$v.diff"
        fail "$1" "exit code: qemu-img $qrc, vdisk $vrc" "$v.diff"
    elif ! cmp -s "$q" "$v"; then
        diff -u "$q" "$v" >"$v.diff"
        fail "$1" "stdout differs" "$v.diff"
    else
        return 0
    fi
    return 1
}

# same_output STEP ARGS...: qemu-img ARGS and vdisk ARGS print the same (stdout, stderr with
# "vdisk" for "qemu-img", exit code). Only for commands that do not change the image.
same_output() {
    local name=$1 q v qrc vrc
    shift
    run_both "$@"
    same_exit_and_stdout "$name" || return 0
    if ! cmp -s "$q.err" "$v.err"; then
        diff -u "$q.err" "$v.err" >"$v.diff"
        fail "$name" "stderr differs" "$v.diff"
    else
        pass "$name"
    fi
}

# same_status STEP REGEX ARGS...: same exit code and stdout as qemu-img; vdisk's stderr
# matches REGEX (where vdisk says more than qemu-img; README "Where output differs").
same_status() {
    local name=$1 re=$2 q v qrc vrc
    shift 2
    run_both "$@"
    same_exit_and_stdout "$name" || return 0
    if ! grep -Eq "$re" "$v.err"; then
        fail "$name" "vdisk's message does not match '$re'" "$v.err"
    else
        pass "$name"
    fi
}

# listings STEP IMG: snapshot -l, info and info --output=json agree between the tools.
listings() {
    same_output "list-$1" snapshot -l "$2"
    same_output "info-$1" info "$2"
    same_output "info-json-$1" info --output=json "$2"
}

# nsnaps IMG: how many snapshots qemu-img lists.
nsnaps() {
    "$QEMU_IMG" snapshot -l "$1" | awk 'NR > 2' | wc -l
}

raw_copy() {
    rm -f "$2"
    "$QEMU_IMG" convert -f qcow2 -O raw "$1" "$2"
}

# ---- 1. vdisk takes the snapshots; qemu-img reads, applies and deletes them too ----------
img=v.qcow2
"$VDISK" create -q -f qcow2 "$img" "$SIZE"
s=$((SEED * 16))
for k in 1 2 3 4; do
    write_random vdisk "$img" $((s + k)) 65536
    raw_copy "$img" "v.s$k.raw"
    run_ok "vdisk-create-s$k" "$VDISK" snapshot -c "s$k" "$img"
    clean "vdisk-create-s$k" "$img"
done
write_random vdisk "$img" $((s + 5)) 65536
raw_copy "$img" v.cur.raw
listings vdisk-made "$img"
for k in 1 2 3 4; do
    snap_same "vdisk-s$k" "$img" "s$k" "v.s$k.raw"
done
same vdisk-active "$img" v.cur.raw
n=6
for k in 3 1 4 2; do
    run_ok "qemu-apply-vdisk-s$k" "$QEMU_IMG" snapshot -a "s$k" "$img"
    same "qemu-apply-vdisk-s$k" "$img" "v.s$k.raw"
    clean "qemu-apply-vdisk-s$k" "$img"
    write_random qemu-io "$img" $((s + n)) 65536
    n=$((n + 1))
    clean "qemu-io-after-apply-s$k" "$img"
    run_ok "vdisk-apply-s$k" "$VDISK" snapshot -a "s$k" "$img"
    same "vdisk-apply-s$k" "$img" "v.s$k.raw"
    clean "vdisk-apply-s$k" "$img"
    write_random vdisk "$img" $((s + n)) 65536
    n=$((n + 1))
    clean "vdisk-io-after-apply-s$k" "$img"
done
raw_copy "$img" v.cur.raw
run_ok "qemu-delete-vdisk-s2" "$QEMU_IMG" snapshot -d s2 "$img"
clean "qemu-delete-vdisk-s2" "$img"
run_ok "vdisk-delete-s4" "$VDISK" snapshot -d s4 "$img"
clean "vdisk-delete-s4" "$img"
listings vdisk-after-deletes "$img"
snap_same "vdisk-s1-after-deletes" "$img" s1 v.s1.raw
snap_same "vdisk-s3-after-deletes" "$img" s3 v.s3.raw
same "vdisk-active-after-deletes" "$img" v.cur.raw
run_ok "vdisk-delete-s1" "$VDISK" snapshot -d s1 "$img"
run_ok "qemu-delete-vdisk-s3" "$QEMU_IMG" snapshot -d s3 "$img"
clean "all-deleted-vdisk-made" "$img"
same "vdisk-active-all-deleted" "$img" v.cur.raw
if [ "$(nsnaps "$img")" = 0 ] && [ -z "$("$VDISK" snapshot -l "$img")" ]; then
    pass "vdisk-made-none-left"
else
    fail "vdisk-made-none-left" "snapshots remain after deleting all four"
fi

# ---- 2. QEMU takes the snapshots (16 KiB clusters); vdisk reads, applies and deletes ------
img=q.qcow2
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=16k "$img" "$SIZE"
s=$((SEED * 16 + 100))
for k in 1 2 3 4; do
    write_random qemu-io "$img" $((s + k)) 16384
    raw_copy "$img" "q.t$k.raw"
    "$QEMU_IMG" snapshot -c "t$k" "$img"
done
write_random qemu-io "$img" $((s + 5)) 16384
listings qemu-made "$img"
n=6
for k in 2 4 1 3; do
    run_ok "vdisk-apply-qemu-t$k" "$VDISK" snapshot -a "t$k" "$img"
    same "vdisk-apply-qemu-t$k" "$img" "q.t$k.raw"
    clean "vdisk-apply-qemu-t$k" "$img"
    write_random vdisk "$img" $((s + n)) 16384
    n=$((n + 1))
    clean "vdisk-io-after-apply-t$k" "$img"
    run_ok "qemu-apply-t$k" "$QEMU_IMG" snapshot -a "t$k" "$img"
    same "qemu-apply-t$k" "$img" "q.t$k.raw"
    write_random qemu-io "$img" $((s + n)) 16384
    n=$((n + 1))
done
# vdisk adds a snapshot to QEMU's table; QEMU reads and applies it.
raw_copy "$img" q.t5.raw
run_ok "vdisk-create-on-qemu-table" "$VDISK" snapshot -c t5 "$img"
clean "vdisk-create-on-qemu-table" "$img"
write_random vdisk "$img" $((s + n)) 16384
snap_same "vdisk-t5-on-qemu-table" "$img" t5 q.t5.raw
run_ok "qemu-apply-vdisk-t5" "$QEMU_IMG" snapshot -a t5 "$img"
same "qemu-apply-vdisk-t5" "$img" q.t5.raw
raw_copy "$img" q.cur.raw
listings mixed "$img"
for k in 1 3; do
    run_ok "vdisk-delete-qemu-t$k" "$VDISK" snapshot -d "t$k" "$img"
    clean "vdisk-delete-qemu-t$k" "$img"
done
run_ok "qemu-delete-t2" "$QEMU_IMG" snapshot -d t2 "$img"
clean "qemu-delete-t2" "$img"
listings qemu-after-deletes "$img"
snap_same "qemu-t4-after-deletes" "$img" t4 q.t4.raw
snap_same "vdisk-t5-after-deletes" "$img" t5 q.t5.raw
same "qemu-active-after-deletes" "$img" q.cur.raw
run_ok "vdisk-apply-t4-after-deletes" "$VDISK" snapshot -a t4 "$img"
same "vdisk-apply-t4-after-deletes" "$img" q.t4.raw
run_ok "vdisk-delete-t4" "$VDISK" snapshot -d t4 "$img"
run_ok "vdisk-delete-t5" "$VDISK" snapshot -d t5 "$img"
clean "all-deleted-qemu-made" "$img"
same "active-after-all-deleted" "$img" q.t4.raw

# ---- 3. VM state --------------------------------------------------------------------------
# The vdisk command has no way to pass VM state (neither has qemu-img), so a small program
# calls the library: vd_snapshot_create with a blob, vd_snapshot_apply + vd_vmstate_read.
# Built with the image tools (tests/meson.build), next to the vdisk binary under test.
helper=$(dirname "$VDISK")/tests/snapshot-vmstate
vmstate_ok=0
if [ -x "$helper" ]; then
    vmstate_ok=1
else
    fail vmstate-helper "$helper is missing (it is built with vdisk: ninja -C $(dirname "$VDISK"))"
fi

# layout IMG NAME OUT: the VM state of snapshot NAME read straight from the file, as QEMU
# lays it out: guest data at l1_vm_state_index * cluster_size * l2_entries of the snapshot's
# L1 table; prints the snapshot's vm_state_size.
layout() {
    "$PYTHON" - "$@" <<'EOF'
import struct, sys
path, name, out = sys.argv[1:4]
f = open(path, "rb")
def rd(off, n):
    f.seek(off)
    return f.read(n)
h = rd(0, 104)
cbits = struct.unpack(">I", h[20:24])[0]
size = struct.unpack(">Q", h[24:32])[0]
nb, toff = struct.unpack(">IQ", h[60:72])
incompat = struct.unpack(">Q", h[72:80])[0] if struct.unpack(">I", h[4:8])[0] >= 3 else 0
cs = 1 << cbits
esize = 16 if incompat & 16 else 8
per_l1 = cs * (cs // esize)
vm_base = (size + per_l1 - 1) // per_l1 * per_l1
pos = toff
for _ in range(nb):
    e = rd(pos, 40)
    l1off, l1n, idn, nmn, _, _, _, vms32, exn = struct.unpack(">QIHHIIQII", e)
    extra = rd(pos + 40, exn)
    sname = rd(pos + 40 + exn + idn, nmn).decode()
    vms = struct.unpack(">Q", extra[0:8])[0] if exn >= 8 else vms32
    if sname == name:
        break
    pos = (pos + 40 + exn + idn + nmn + 7) & ~7
else:
    sys.exit("no snapshot " + name)
l1 = struct.unpack(">%dQ" % l1n, rd(l1off, 8 * l1n))
mask = 0x00fffffffffffe00
data = bytearray()
while len(data) < vms:
    g = vm_base + len(data)
    i, j, o = g // per_l1, (g % per_l1) // cs, g % cs
    n = min(cs - o, vms - len(data))
    chunk = bytes(n)
    if i < l1n and l1[i] & mask:
        l2e = struct.unpack(">Q", rd((l1[i] & mask) + j * esize, 8))[0]
        if l2e & (1 << 62):
            sys.exit("VM state cluster is compressed")
        if l2e & mask and not l2e & 1:
            chunk = rd((l2e & mask) + o, n)
    data += chunk
open(out, "wb").write(data)
print(vms)
EOF
}

# qemu_vmstate IMG LEN OUT: the active image's VM state as qemu-io reads it (read -b -v).
qemu_vmstate() {
    local len=$(( ($2 + 511) / 512 * 512 ))
    "$QEMU_IO" -f qcow2 -c "read -b -v 0 $len" "$1" | "$PYTHON" -c '
import sys
out = bytearray()
for ln in sys.stdin:
    if len(ln) > 10 and ln[8] == ":":
        out += bytes.fromhex(ln[10:58].replace(" ", ""))
open(sys.argv[2], "wb").write(out[: int(sys.argv[1])])' "$2" "$3"
}

if [ "$vmstate_ok" = 1 ]; then
    # vdisk saves, QEMU reads. An odd length checks the size is kept to the byte.
    blob_len=$((200 * 1024 + 123))
    "$PYTHON" -c 'import random, sys; r = random.Random(int(sys.argv[1]))
open("blob", "wb").write(bytes(r.getrandbits(8) for _ in range(int(sys.argv[2]))))' \
        "$SEED" "$blob_len"
    "$QEMU_IMG" create -q -f qcow2 vm.qcow2 "$SIZE"
    write_random vdisk vm.qcow2 $((SEED * 16 + 200)) 65536
    raw_copy vm.qcow2 vm.raw
    run_ok vmstate-save "$helper" save vm.qcow2 vm1 blob
    clean vmstate-save vm.qcow2
    got=$(qemu_info_field vm.qcow2 snapshots | "$PYTHON" -c '
import json, sys
print(json.load(sys.stdin)[0]["vm-state-size"])' 2>/dev/null)
    if [ "$got" = "$blob_len" ]; then
        pass vmstate-size-qemu-info
    else
        fail vmstate-size-qemu-info "qemu-img info says vm-state-size $got, expected $blob_len"
    fi
    listings vmstate vm.qcow2
    if [ "$(layout vm.qcow2 vm1 layout.bin)" = "$blob_len" ] && cmp -s layout.bin blob; then
        pass vmstate-byte-layout
    else
        fail vmstate-byte-layout "the VM state is not where QEMU keeps it (or differs)"
    fi
    cp vm.qcow2 vmq.qcow2
    "$QEMU_IMG" snapshot -a vm1 vmq.qcow2
    qemu_vmstate vmq.qcow2 "$blob_len" qemu-read.bin
    if cmp -s qemu-read.bin blob; then
        pass vmstate-qemu-io-reads-vdisk-blob
    else
        fail vmstate-qemu-io-reads-vdisk-blob "qemu-io read -b after applying differs"
    fi
    same vmstate-qemu-apply vmq.qcow2 vm.raw
    cp vm.qcow2 vmv.qcow2
    run_ok vmstate-load-own "$helper" load vmv.qcow2 vm1 own.bin "$blob_len"
    cmp -s own.bin blob && pass vmstate-own-roundtrip ||
        fail vmstate-own-roundtrip "vdisk reads back a different VM state"
    # Later writes and deletes leave it consistent; the VM state clusters go with the snapshot.
    write_random vdisk vm.qcow2 $((SEED * 16 + 201)) 65536
    run_ok vmstate-delete "$VDISK" snapshot -d vm1 vm.qcow2
    clean vmstate-delete vm.qcow2

    # QEMU saves (qemu-io write -b, then qemu-img snapshot -c, which records no size: the
    # size is then set in the table as savevm would have), vdisk reads.
    qlen=$((96 * 1024))
    head -c "$qlen" blob >qblob
    "$QEMU_IMG" create -q -f qcow2 vq.qcow2 "$SIZE"
    "$QEMU_IO" -f qcow2 -c "write -P 7 0 1M" -c "write -b -s qblob 0 $qlen" vq.qcow2 >/dev/null
    "$QEMU_IMG" snapshot -c q1 vq.qcow2
    "$PYTHON" - vq.qcow2 "$qlen" <<'EOF'
import struct, sys
path, vms = sys.argv[1], int(sys.argv[2])
f = open(path, "r+b")
h = f.read(72)
nb, off = struct.unpack(">IQ", h[60:72])
f.seek(off + 32)
f.write(struct.pack(">I", vms))
if struct.unpack(">I", (f.seek(off + 36), f.read(4))[1])[0] >= 8:
    f.seek(off + 40)
    f.write(struct.pack(">Q", vms))
EOF
    clean vmstate-qemu-made vq.qcow2
    listings vmstate-qemu-made vq.qcow2
    run_ok vmstate-load-qemu "$helper" load vq.qcow2 q1 fromqemu.bin "$qlen"
    cmp -s fromqemu.bin qblob && pass vmstate-vdisk-reads-qemu-blob ||
        fail vmstate-vdisk-reads-qemu-blob "vdisk reads a different VM state than qemu-io wrote"
    clean vmstate-after-load vq.qcow2
else
    echo "SKIP vmstate: could not build the library helper (needs cc and $libdir/libvdisk.a)"
    [ -s helper.log ] && vd_detail <helper.log
fi

# ---- 4. messages and exit codes against qemu-img ----------------------------------------
"$QEMU_IMG" create -q -f qcow2 m.qcow2 16M
"$QEMU_IMG" create -q -f raw m.raw 1M
"$QEMU_IMG" snapshot -c one m.qcow2
"$QEMU_IMG" snapshot -c two m.qcow2
same_output msg-delete-missing snapshot -d nosuch m.qcow2
same_output msg-delete-by-id snapshot -d 1 m.qcow2
same_output msg-delete-empty snapshot -d '' m.qcow2
same_output msg-apply-missing snapshot -a nosuch m.qcow2
same_output msg-apply-empty snapshot -a '' m.qcow2
same_output msg-list-raw snapshot -l m.raw
same_output msg-create-raw snapshot -c x m.raw
same_status msg-apply-raw "Could not apply snapshot 'x': Block format 'raw' does not support internal snapshots" snapshot -a x m.raw
same_status msg-delete-raw "Could not delete snapshot 'x': Block format 'raw' does not support internal snapshots" snapshot -d x m.raw
same_output msg-list-missing-file snapshot -l nosuch.qcow2
same_output msg-create-missing-file snapshot -c x nosuch.qcow2
same_output msg-no-args snapshot
same_output msg-no-file snapshot -l
same_output msg-two-files-list snapshot -l m.qcow2 m.raw
same_output msg-two-files-apply snapshot -a one m.qcow2 m.raw
same_output msg-mix snapshot -l -c x m.qcow2
same_output msg-mix-twice snapshot -c x -c y m.qcow2
same_output msg-bad-option snapshot -z m.qcow2
same_output msg-bad-long-option snapshot --foo m.qcow2
same_output msg-missing-arg snapshot -c
same_output msg-force-share-create snapshot -U -c x m.qcow2
same_output msg-force-share-list snapshot -U -q -l m.qcow2
same_output msg-no-action snapshot m.qcow2
same_output msg-object snapshot --object secret,id=s0,data=x -l m.qcow2
asnobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
chmod 755 "$VD_TESTDIR"
if command -v setpriv >/dev/null && [ "$(id -u)" = 0 ] && asnobody "$VDISK" --version >/dev/null 2>&1
then
    # A file the user may read but not write (root ignores permissions, so run as nobody).
    mkdir ro && cp m.qcow2 ro/m.qcow2 && chmod 755 ro && chmod 644 ro/m.qcow2
    for a in "-c x" "-a one" "-d one" "-l"; do
        # shellcheck disable=SC2086
        { asnobody "$QEMU_IMG" snapshot $a ro/m.qcow2 >q.ro 2>&1; echo "rc=$?" >>q.ro; }
        # shellcheck disable=SC2086
        { asnobody "$VDISK" snapshot $a ro/m.qcow2 >v.ro 2>&1; echo "rc=$?" >>v.ro; }
        sed -i 's/qemu-img/vdisk/g' q.ro
        if cmp -s q.ro v.ro; then
            pass "msg-read-only-file${a%% *}"
        else
            diff -u q.ro v.ro >ro.diff
            fail "msg-read-only-file${a%% *}" "output differs" ro.diff
        fi
    done
else
    echo "SKIP msg-read-only-file: needs root and setpriv to run as an unprivileged user"
fi

# A crafted table: vm clock past 99 hours and at its maximum, icount absent (-1) and large,
# VM state sizes (32-bit and 64-bit fields), a name longer than the TAG column, the epoch.
"$QEMU_IMG" create -q -f qcow2 craft.qcow2 16M
"$QEMU_IMG" snapshot -c one craft.qcow2
"$QEMU_IMG" snapshot -c "a-name-longer-than-sixteen-characters" craft.qcow2
"$QEMU_IMG" snapshot -c three craft.qcow2
"$PYTHON" - craft.qcow2 <<'EOF'
import struct, sys
f = open(sys.argv[1], "r+b")
nb, off = struct.unpack(">IQ", f.read(72)[60:72])
edits = [
    {24: (">Q", 2**64 - 1), 56: (">Q", 2**64 - 1), 32: (">I", 4096), 40: (">Q", 4096)},
    {24: (">Q", 360000 * 10**9 + 1234567890), 40: (">Q", 3 * 2**20 + 5), 56: (">Q", 123456789)},
    {24: (">Q", (99 * 3600 + 59 * 60) * 10**9 + 999999999), 40: (">Q", 5 << 40), 16: (">I", 0)},
]
pos = off
for i in range(nb):
    f.seek(pos)
    _, _, ids, ns, _, _, _, _, exs = struct.unpack(">QIHHIIQII", f.read(40))
    for at, (fmt, v) in edits[i].items():
        f.seek(pos + at)
        f.write(struct.pack(fmt, v))
    pos = (pos + 40 + exs + ids + ns + 7) & ~7
EOF
listings crafted craft.qcow2

# Names longer than 255 bytes are cut there (qemu-img does it silently); twins compared.
long=$(printf 'n%.0s' $(seq 300))
"$QEMU_IMG" create -q -f qcow2 long-q.qcow2 1M
"$QEMU_IMG" create -q -f qcow2 long-v.qcow2 1M
"$QEMU_IMG" snapshot -c "$long" long-q.qcow2
run_ok create-long-name "$VDISK" snapshot -c "$long" long-v.qcow2
name_of() { qemu_info_field "$1" snapshots | "$PYTHON" -c '
import json, sys; print(json.load(sys.stdin)[0]["name"])'; }
if [ "$(name_of long-q.qcow2)" = "$(name_of long-v.qcow2)" ]; then
    pass long-name-truncated
else
    fail long-name-truncated "vdisk kept a different name than qemu-img for a 300-byte name"
fi
# A snapshot made by vdisk -c lists like one made by qemu-img -c (ICOUNT, VM SIZE, clock),
# apart from the ID/date columns.
"$QEMU_IMG" snapshot -c same long-q.qcow2
"$VDISK" snapshot -c same long-v.qcow2
strip_dates() { "$QEMU_IMG" info --output=json "$1" | "$PYTHON" -c '
import json, sys
for s in json.load(sys.stdin)["snapshots"]:
    s.pop("date-sec"); s.pop("date-nsec"); print(json.dumps(s, sort_keys=True))'; }
if [ "$(strip_dates long-q.qcow2)" = "$(strip_dates long-v.qcow2)" ]; then
    pass snapshot-fields-like-qemu-img
else
    strip_dates long-q.qcow2 >fields.diff
    strip_dates long-v.qcow2 >>fields.diff
    fail snapshot-fields-like-qemu-img "the entries differ beyond the date" fields.diff
fi

# ---- 5. image kinds: compressed clusters, extended L2, small clusters, v2, refcount widths,
# a resize between snapshots, many snapshots -------------------------------------------------
# kind NAME CREATE_OPTS: vdisk snapshots around writes (incl. compressed ones) on such an
# image; qemu-img applies the first, vdisk the second; then vdisk deletes the first.
kind() {
    local k=$1 opts=$2 img=kind-$1.qcow2 cs=${3:-65536}
    "$QEMU_IMG" create -q -f qcow2 -o "$opts" "$img" 8M
    "$QEMU_IO" -f qcow2 -c "write -P 0x11 0 300k" -c "write -c -P 0x22 $((4 * cs)) $cs" \
        -c "write -z 1M 128k" "$img" >/dev/null
    raw_copy "$img" "$k.a.raw"
    run_ok "kind-$k-create-a" "$VDISK" snapshot -c a "$img" || return
    clean "kind-$k-create-a" "$img"
    "$VDISK" io -f qcow2 -c "write -P 0x33 100k 200k" -c "write -c -P 0x44 0 $cs" \
        -c "write -z 2M 64k" "$img" >/dev/null
    raw_copy "$img" "$k.b.raw"
    run_ok "kind-$k-create-b" "$VDISK" snapshot -c b "$img" || return
    "$QEMU_IO" -f qcow2 -c "write -P 0x55 0 1M" "$img" >/dev/null
    run_ok "kind-$k-qemu-apply-a" "$QEMU_IMG" snapshot -a a "$img"
    same "kind-$k-qemu-apply-a" "$img" "$k.a.raw"
    run_ok "kind-$k-vdisk-apply-b" "$VDISK" snapshot -a b "$img"
    same "kind-$k-vdisk-apply-b" "$img" "$k.b.raw"
    clean "kind-$k-apply" "$img"
    run_ok "kind-$k-vdisk-delete-a" "$VDISK" snapshot -d a "$img"
    clean "kind-$k-delete" "$img"
    snap_same "kind-$k-b-after-delete" "$img" b "$k.b.raw"
}
kind extl2 extended_l2=on
kind c4k cluster_size=4096 4096
kind c512 cluster_size=512 512
kind v2 compat=0.10
kind lazy lazy_refcounts=on
kind rc4 refcount_bits=4
kind zstd compression_type=zstd

# refcount_bits=1 holds no second reference; 2 bits hold two snapshots. A snapshot that does
# not fit fails before anything changes: no leak (qemu-img leaks the new L1 there).
"$QEMU_IMG" create -q -f qcow2 -o refcount_bits=1 rc1.qcow2 4M
"$QEMU_IO" -f qcow2 -c "write -P 1 0 256k" rc1.qcow2 >/dev/null
if "$VDISK" snapshot -c x rc1.qcow2 >rc1.out 2>&1; then
    fail rc1-refused "a snapshot with refcount_bits=1 succeeded"
else
    pass rc1-refused
fi
clean rc1-after-refusal rc1.qcow2
[ "$(nsnaps rc1.qcow2)" = 0 ] && pass rc1-no-snapshot || fail rc1-no-snapshot "a snapshot appeared"
"$QEMU_IMG" create -q -f qcow2 -o refcount_bits=2 rc2.qcow2 4M
"$QEMU_IO" -f qcow2 -c "write -P 1 0 256k" rc2.qcow2 >/dev/null
run_ok rc2-first "$VDISK" snapshot -c one rc2.qcow2
run_ok rc2-second "$VDISK" snapshot -c two rc2.qcow2
if "$VDISK" snapshot -c three rc2.qcow2 >rc2.out 2>&1; then
    fail rc2-third-refused "a third snapshot fit in 2-bit refcounts"
else
    pass rc2-third-refused
fi
clean rc2-after-refusal rc2.qcow2
[ "$(nsnaps rc2.qcow2)" = 2 ] && pass rc2-two-left || fail rc2-two-left "$(nsnaps rc2.qcow2) snapshots"

# Resize between snapshots: applying restores the size the snapshot was taken at (v3).
"$QEMU_IMG" create -q -f qcow2 rs.qcow2 16M
"$QEMU_IO" -f qcow2 -c "write -P 0x61 15M 1M" rs.qcow2 >/dev/null
raw_copy rs.qcow2 rs.small.raw
run_ok resize-snap-small "$VDISK" snapshot -c small rs.qcow2
"$VDISK" resize rs.qcow2 40M >/dev/null
"$QEMU_IO" -f qcow2 -c "write -P 0x62 30M 2M" rs.qcow2 >/dev/null
raw_copy rs.qcow2 rs.big.raw
run_ok resize-snap-big "$VDISK" snapshot -c big rs.qcow2
run_ok resize-apply-small "$VDISK" snapshot -a small rs.qcow2
same resize-apply-small rs.qcow2 rs.small.raw
clean resize-apply-small rs.qcow2
run_ok resize-qemu-apply-big "$QEMU_IMG" snapshot -a big rs.qcow2
same resize-qemu-apply-big rs.qcow2 rs.big.raw
run_ok resize-vdisk-apply-big "$VDISK" snapshot -a big rs.qcow2
same resize-vdisk-apply-big rs.qcow2 rs.big.raw
clean resize-apply-big rs.qcow2

# 50 snapshots, then every other one deleted by each tool; listings agree throughout.
"$QEMU_IMG" create -q -f qcow2 many.qcow2 8M
for i in $(seq 1 50); do
    "$QEMU_IO" -f qcow2 -c "write -P $((i % 250 + 1)) $(((i % 8) << 20)) 64k" many.qcow2 \
        >/dev/null
    "$VDISK" snapshot -c "m$i" many.qcow2 || { fail many-create "snapshot m$i failed"; break; }
done
[ "$(nsnaps many.qcow2)" = 50 ] && pass many-50 || fail many-50 "$(nsnaps many.qcow2) snapshots"
clean many-50 many.qcow2
listings many many.qcow2
for i in $(seq 1 2 49); do
    "$QEMU_IMG" snapshot -d "m$i" many.qcow2
    "$VDISK" snapshot -d "m$((i + 1))" many.qcow2 || fail many-delete "vdisk -d m$((i + 1))"
done
[ "$(nsnaps many.qcow2)" = 0 ] && pass many-all-deleted || fail many-all-deleted "some left"
clean many-deleted many.qcow2

vd_finish
