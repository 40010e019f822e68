#!/usr/bin/env bash
# `amend -o compat=...` with snapshots and compression: vdisk refuses what qemu-img refuses
# (in its words, changing no byte) and does what it does. A v2 snapshot table has no disk
# size, so a snapshot taken at another size would become unusable after a downgrade; a v2
# image reads compressed clusters as zlib; a v3 table needs extra data an old v2 one lacks.
. "$(dirname "$0")/../lib.sh"
vd_init

# The snapshot table's first entry: offset of its extra data, and that data's size.
snap_py() {
    "$PYTHON" - "$VD_TESTS" "$@" <<'EOF'
import struct, sys
sys.path.insert(0, sys.argv[1])
import qcow2img as q
cmd, path = sys.argv[2], sys.argv[3]
img = q.Image(path)
with open(path, 'rb') as f:
    hdr = f.read(72)
nb, tab = struct.unpack('>IQ', hdr[60:72])
e = img.read(tab, 40)
id_len, name_len = struct.unpack('>HH', e[12:16])
extra = struct.unpack('>I', e[36:40])[0]
if cmd == 'strip-extra':
    # Rewrite the single entry without extra data, as a v2 writer before QEMU 1.1 did.
    ids = img.read(tab + 40 + extra, id_len + name_len)
    ent = e[:36] + struct.pack('>I', 0) + ids
    ent += b'\0' * (-len(ent) % 8)
    q.poke(path, tab, ent)
elif cmd == 'set-vmstate-large':
    q.poke_be64(path, tab + 40, int(sys.argv[4]))
elif cmd == 'extra-size':
    print(extra)
EOF
}

# refused NAME MESSAGE SETUP...: SETUP builds a.qcow2 through the tool given as $1; both
# tools must refuse `amend -o compat=0.10` with MESSAGE and leave every byte as it was.
refused() {
    local name=$1 msg=$2 tool
    shift 2
    for tool in vdisk qemu; do
        rm -f a.qcow2
        "$@" "$tool"
        sha256sum a.qcow2 >before.sum
        if [ "$tool" = vdisk ]; then
            "$VDISK" amend -o compat=0.10 a.qcow2 >out.txt 2>&1
        else
            "$QEMU_IMG" amend -o compat=0.10 a.qcow2 >out.txt 2>&1
        fi
        rc=$?
        if [ "$rc" -ne 0 ] && grep -q "^[a-z-]*: $msg\$" out.txt; then
            pass "$name/$tool-refuses"
        else
            fail "$name/$tool-refuses" "exit $rc, want 1 and '$msg'" out.txt
        fi
        sha256sum -c --quiet before.sum >/dev/null 2>&1 && pass "$name/$tool-unchanged" ||
            fail "$name/$tool-unchanged" "the image changed"
    done
    qemu_check_clean a.qcow2 chk.txt && pass "$name/check-clean" ||
        fail "$name/check-clean" "qemu-img check is not clean" chk.txt
}

# ---- a snapshot taken at another size -----------------------------------------------------
other_size() {
    "$QEMU_IMG" create -q -f qcow2 a.qcow2 64M
    "$QEMU_IO" -c 'write -P 0x5a 0 1M' a.qcow2 >/dev/null
    "$QEMU_IMG" snapshot -c s1 a.qcow2
    "$QEMU_IMG" resize -q a.qcow2 128M
}
refused snapshot-other-size "Internal snapshots prevent downgrade of image" other_size
"$VDISK" amend -o compat=0.10 a.qcow2 >/dev/null 2>&1
"$QEMU_IMG" snapshot -a s1 a.qcow2 >out.txt 2>&1 && pass "snapshot-other-size/still-applies" ||
    fail "snapshot-other-size/still-applies" "qemu-img cannot apply the snapshot" out.txt

# ---- a VM state of 4 GiB or more (v2 keeps 32 bits of it) ---------------------------------
big_vmstate() {
    "$QEMU_IMG" create -q -f qcow2 a.qcow2 64M
    "$QEMU_IMG" snapshot -c s1 a.qcow2
    snap_py set-vmstate-large a.qcow2 $((5 << 30))
}
refused vmstate-over-4g "Internal snapshots prevent downgrade of image" big_vmstate

# ---- zstd with compressed clusters: v2 would read them as zlib ----------------------------
zstd_compressed() {
    "$QEMU_IMG" create -q -f qcow2 -o compression_type=zstd a.qcow2 1M
    "$QEMU_IO" -c 'write -c -P 0x33 0 64k' a.qcow2 >/dev/null
}
refused zstd-compressed "Cannot downgrade an image with zstd compression type and existing compressed clusters" zstd_compressed

# ---- what both tools do: same-size snapshot, zstd without compressed clusters ------------
# downgraded NAME SETUP: both tools downgrade; the results agree in header and guest data.
downgraded() {
    local name=$1 setup=$2
    rm -f a.qcow2 b.qcow2
    "$setup" a.qcow2
    "$setup" b.qcow2
    "$VDISK" amend -o compat=0.10 a.qcow2 >out.txt 2>&1 && pass "$name/vdisk-downgrades" ||
        fail "$name/vdisk-downgrades" "vdisk amend failed" out.txt
    "$QEMU_IMG" amend -o compat=0.10 b.qcow2
    [ "$(qemu_info_summary a.qcow2)" = "$(qemu_info_summary b.qcow2)" ] &&
        pass "$name/same-header-as-qemu" ||
        fail "$name/same-header-as-qemu" "$(qemu_info_summary a.qcow2) vs $(qemu_info_summary b.qcow2)"
    "$QEMU_IMG" compare -q a.qcow2 b.qcow2 >cmp.txt 2>&1 && pass "$name/same-data" ||
        fail "$name/same-data" "guest data differs from qemu-img's" cmp.txt
    qemu_check_clean a.qcow2 chk.txt && pass "$name/check-clean" ||
        fail "$name/check-clean" "qemu-img check is not clean" chk.txt
}
same_size() {
    "$QEMU_IMG" create -q -f qcow2 "$1" 64M
    "$QEMU_IO" -c 'write -P 0x5a 0 1M' "$1" >/dev/null
    "$QEMU_IMG" snapshot -c s1 "$1"
    "$QEMU_IO" -c 'write -P 0x6b 0 64k' "$1" >/dev/null
}
downgraded snapshot-same-size same_size
"$QEMU_IMG" snapshot -a s1 a.qcow2 && "$QEMU_IO" -c 'read -P 0x5a 0 1M' a.qcow2 >out.txt 2>&1 &&
    pass "snapshot-same-size/applies-after" ||
    fail "snapshot-same-size/applies-after" "the snapshot does not read back" out.txt
zstd_plain() {
    "$QEMU_IMG" create -q -f qcow2 -o compression_type=zstd "$1" 1M
    "$QEMU_IO" -c 'write -P 0x44 0 64k' "$1" >/dev/null
}
downgraded zstd-uncompressed zstd_plain

# ---- upgrade: a v2 snapshot without extra data gets the v3 fields --------------------------
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 u.qcow2 64M
"$QEMU_IO" -c 'write -P 0x71 0 128k' u.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c old u.qcow2
"$QEMU_IO" -c 'write -P 0x72 0 64k' u.qcow2 >/dev/null
snap_py strip-extra u.qcow2
[ "$(snap_py extra-size u.qcow2)" = 0 ] || fail upgrade/setup "could not strip the extra data"
"$VDISK" amend -o compat=1.1 u.qcow2 >out.txt 2>&1 && pass "upgrade/vdisk-upgrades" ||
    fail "upgrade/vdisk-upgrades" "vdisk amend failed" out.txt
[ "$(qemu_info_field u.qcow2 format-specific data compat)" = '"1.1"' ] &&
    pass "upgrade/is-v3" || fail "upgrade/is-v3" "compat is $(qemu_info_field u.qcow2 format-specific data compat)"
x=$(snap_py extra-size u.qcow2)
[ "$x" -ge 16 ] && pass "upgrade/extra-data-written" ||
    fail "upgrade/extra-data-written" "the entry has $x bytes of extra data"
qemu_check_clean u.qcow2 chk.txt && pass "upgrade/check-clean" ||
    fail "upgrade/check-clean" "qemu-img check is not clean" chk.txt
"$QEMU_IMG" snapshot -l u.qcow2 | grep -q ' old ' && "$QEMU_IMG" snapshot -a old u.qcow2 &&
    "$QEMU_IO" -c 'read -P 0x71 0 128k' u.qcow2 >out.txt 2>&1 && pass "upgrade/snapshot-applies" ||
    fail "upgrade/snapshot-applies" "the snapshot does not read back" out.txt

vd_finish
