#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/fuzz-*.c): libvdisk is compiled by meson into
# build-fuzz/ (or $FUZZ_BUILD, e.g. a /tmp directory for a run beside another) with clang,
# ASan+UBSan and coverage instrumentation, then each target is linked with
# -fsanitize=fuzzer. Prints the paths of the fuzzer binaries.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${FUZZ_BUILD:-$repo/build-fuzz}
cd "$repo"

if [ ! -f "$out/build.ninja" ]; then
    CC=clang meson setup "$out" -Db_sanitize=address,undefined -Db_lundef=false \
        -Dbuildtype=debugoptimized -Dc_args=-fsanitize=fuzzer-no-link >"$out.setup.log" 2>&1 ||
        { cat "$out.setup.log" >&2; exit 1; }
    rm -f "$out.setup.log"
else
    meson setup --reconfigure "$out" >/dev/null
fi
ninja -C "$out" libvdisk.a >/dev/null || ninja -C "$out" libvdisk.a >&2

# Link with the library's own dependencies as meson resolved them (minus test-only ones).
mapfile -t libs < <(meson introspect "$out" --dependencies | python3 -c '
import json, sys
for d in json.load(sys.stdin):
    if d["name"] != "cmocka":
        for a in d["link_args"]:
            print(a)')
# librbd and librados come from find_library (no pkg-config file), which the list above
# does not carry: link them when the library was built with the rbd driver.
if nm "$out/libvdisk.a" 2>/dev/null | grep ' U rbd_open$' >/dev/null; then
    libs+=(-lrbd -lrados)
fi

for src in tests/fuzz/fuzz-*.c; do
    name=$(basename "$src" .c)
    # A target may name more sources and libraries on a "FUZZ_EXTRA:" line (the QMP layer).
    # shellcheck disable=SC2207
    extra=($(sed -n 's/.*FUZZ_EXTRA: *\([^*]*\).*/\1/p' "$src"))
    clang -std=gnu11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror \
        -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        -Iinclude -Isrc "$src" "${extra[@]}" "$out/libvdisk.a" "${libs[@]}" -o "$out/$name"
    echo "$out/$name"
done
