#!/usr/bin/env bash
# Makes a realistic raw disk image for the compression benchmarks: a real ext4 filesystem
# holding real files from this machine's /usr (programs, shared libraries, Python, docs,
# man pages, locale data...), built without mounting by `mkfs.ext4 -d`.
# Usage: bench/mkfs-image.sh OUT SIZE            write the image to OUT (SIZE in bytes)
#        bench/mkfs-image.sh --cached DIR SIZE   make it in DIR once, print its path
# The files' data blocks fill 65% of SIZE; with the filesystem's own metadata (inode tables,
# journal) about 70% of the image is in use, and the rest is free space (zeros). The choice is
# deterministic: every regular file under /usr (not /usr/local, which holds site-specific
# blobs, and none over 16 MiB, so no single file dominates) ordered by a hash of its path,
# which samples every directory evenly; files are taken in that order while they fit the
# budget. Fixed UUID, hash seed and timestamps make reruns on this machine byte-identical.
# The cached name carries a hash of the file list, so a changed /usr makes a new image.
set -euo pipefail

VERSION=2  # bump when the layout changes, so cached images are regenerated
ROOT=${MKFS_IMAGE_ROOT:-/usr}
SHARE_PCT=65
MAX_FILE=$((16 << 20))
UUID=6b1d0c5e-3f7a-4c2b-9d1e-5a8f0b7c2e41
TIMESTAMP=1700000000

die() {
    echo "mkfs-image: $*" >&2
    exit 2
}

# Temporary files and directories, removed however the script ends.
cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT

# select_files SIZE: prints "size<TAB>path" lines of the chosen files, sorted by path.
select_files() {
    python3 - "$ROOT" "$1" "$SHARE_PCT" "$MAX_FILE" <<'EOF'
import hashlib, os, stat, sys
root, size, pct, max_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
skip = os.path.join(root, "local")
files = []
for d, dirs, names in os.walk(root):
    dirs[:] = sorted(x for x in dirs if os.path.join(d, x) != skip)
    for n in names:
        p = os.path.join(d, n)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and 0 < st.st_size <= max_file and os.access(p, os.R_OK):
            files.append((hashlib.sha256(p.encode("utf-8", "surrogateescape")).digest(), p,
                          st.st_size))
files.sort()
budget = size * pct // 100
chosen, total = [], 0
for _, p, n in files:
    blocks = (n + 4095) // 4096 * 4096  # what the file takes in the filesystem
    if total + blocks <= budget:
        chosen.append((p, n))
        total += blocks
    if budget - total < 65536:
        break
for p, n in sorted(chosen):
    sys.stdout.write("%d\t%s\n" % (n, p))
EOF
}

# summary LIST: file count, bytes, and a breakdown by directory and by kind of content.
summary() {
    python3 - "$1" <<'EOF'
import collections, sys
by_dir, by_kind = collections.Counter(), collections.Counter()
count_dir, count_kind = collections.Counter(), collections.Counter()
total = 0
with open(sys.argv[1]) as f:
    lines = [l.rstrip("\n").split("\t", 1) for l in f]
for n, p in lines:
    n = int(n)
    total += n
    top = "/".join(p.split("/")[:4]) if p.count("/") > 3 else p.rsplit("/", 1)[0]
    try:
        with open(p, "rb") as g:
            head = g.read(4)
    except OSError:
        head = b""
    if head == b"\x7fELF":
        kind = "ELF programs and libraries"
    elif head[:2] == b"\x1f\x8b" or p.endswith((".gz", ".xz", ".bz2", ".zst", ".zip", ".jar")):
        kind = "already compressed (.gz man pages, docs, archives)"
    elif p.endswith((".py", ".pyc", ".pyi")):
        kind = "Python sources and bytecode"
    elif p.endswith(".mo"):
        kind = "locale catalogs (.mo)"
    else:
        kind = "other (static libraries, sources, headers, data, text)"
    by_dir[top] += n
    count_dir[top] += 1
    by_kind[kind] += n
    count_kind[kind] += 1
mib = lambda n: n / 1048576.0
print("%d files, %.1f MiB" % (len(lines), mib(total)))
print("by kind:")
for k, n in by_kind.most_common():
    print("  %6.1f MiB %6d files  %s" % (mib(n), count_kind[k], k))
print("by directory (largest 12):")
rest, rest_count = total, len(lines)
for k, n in by_dir.most_common(12):
    print("  %6.1f MiB %6d files  %s" % (mib(n), count_dir[k], k))
    rest -= n
    rest_count -= count_dir[k]
if rest_count:
    print("  %6.1f MiB %6d files  (%d other directories)" % (mib(rest), rest_count,
                                                         len(by_dir) - 12))
EOF
}

# make_image OUT SIZE [LIST]: stages the files as hard links (copies when /usr is on another
# filesystem) next to OUT and builds the filesystem from them.
make_image() {
    local out=$1 size=$2 list=${3:-}
    command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found (Debian package e2fsprogs)"
    local dir stage
    dir=$(dirname "$out")
    mkdir -p "$dir"
    stage=$(mktemp -d "$dir/.mkfs-stage.XXXXXX")
    cleanup+=("$stage" "$out.tmp")
    if [ -z "$list" ]; then
        list=$stage/list
        select_files "$size" >"$list"
    fi
    python3 - "$list" "$stage/root" "$TIMESTAMP" <<'EOF'
import os, shutil, sys
stage, stamp = sys.argv[2], int(sys.argv[3])
dirs = set()
with open(sys.argv[1]) as f:
    for line in f:
        p = line.rstrip("\n").split("\t", 1)[1]
        dest = stage + p
        d = os.path.dirname(dest)
        if d not in dirs:
            os.makedirs(d, exist_ok=True)
            dirs.add(d)
        try:
            os.link(p, dest)
        except OSError:
            shutil.copy2(p, dest)
# Directory times would otherwise be "now", and end up in the image.
for d in sorted(dirs | {stage}, reverse=True):
    while d.startswith(stage):
        os.utime(d, (stamp, stamp))
        d = os.path.dirname(d)
EOF
    rm -f "$out.tmp"
    truncate -s "$size" "$out.tmp"
    E2FSPROGS_FAKE_TIME=$TIMESTAMP mkfs.ext4 -q -F -b 4096 -U "$UUID" \
        -E "root_owner=0:0,hash_seed=$UUID" -d "$stage/root" "$out.tmp" "$((size / 1024))k" ||
        die "mkfs.ext4 failed"
    # Linking or copying a file sets its change time to now, and reading it may set its access
    # time; both would end up in the image, so they are set to the fixed time afterwards.
    python3 - "$list" "$TIMESTAMP" >"$stage/times" <<'EOF'
import os, sys
stamp = sys.argv[2]
paths = {"/"}
with open(sys.argv[1]) as f:
    for line in f:
        p = line.rstrip("\n").split("\t", 1)[1]
        while p not in paths:
            paths.add(p)
            p = os.path.dirname(p)
for p in sorted(paths):
    if '"' not in p and "\\" not in p:
        for field in ("ctime", "atime"):
            print('sif "%s" %s @%s' % (p, field, stamp))
EOF
    E2FSPROGS_FAKE_TIME=$TIMESTAMP debugfs -w -f "$stage/times" "$out.tmp" >/dev/null 2>&1 ||
        die "debugfs failed to set the timestamps"
    summary "$list" >"$out.txt"
    mv "$out.tmp" "$out"
    cat "$out.txt" >&2
}

check_size() {
    if ! [[ $1 =~ ^[0-9]+$ ]] || [ "$1" -lt $((64 << 20)) ]; then
        die "SIZE must be a byte count of at least 64 MiB, not '$1'"
    fi
}

case ${1:-} in
    -h | --help | "")
        sed -n '5,6s/^# \{0,1\}//p' "$0"
        exit 0 ;;
    --cached)
        [ $# = 3 ] || die "usage: $0 --cached DIR SIZE"
        dir=$2 size=$3
        check_size "$size"
        mkdir -p "$dir"
        list=$(mktemp "$dir/.mkfs-list.XXXXXX")
        cleanup+=("$list")
        select_files "$size" >"$list"
        key=$(sha256sum <"$list" | cut -c1-12)
        img="$dir/fs-v$VERSION-$size-$key.raw"
        if [ ! -f "$img" ]; then
            # Images from other generator versions or file lists of this size are stale.
            find "$dir" -maxdepth 1 \( -name "fs-v*-$size-*.raw" -o -name "fs-v*-$size-*.txt" \
                \) ! -name "fs-v$VERSION-$size-$key.*" -delete
            echo "mkfs-image: generating $img (once; cached)" >&2
            make_image "$img" "$size" "$list" >&2
        fi
        echo "$img" ;;
    *)
        [ $# = 2 ] || die "usage: $0 OUT SIZE"
        check_size "$2"
        make_image "$1" "$2" ;;
esac
