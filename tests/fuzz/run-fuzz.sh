#!/usr/bin/env bash
# Builds the fuzz targets. The image opener: replays its seed corpus (the corrupt-image
# corpus plus valid images made by qemu-img), then fuzzes for FUZZ_TIME seconds (default
# 40). The cluster decoders (zlib, zstd): replay tests/fuzz/seeds-decompress-*, then fuzz
# for FUZZ_DECODER_TIME seconds each (default 10). The NBD server, the QMP wire layer, the
# header parser and the snapshot table: replay tests/fuzz/seeds-{nbd,qmp,qcow2-header,
# snapshot-table}, then FUZZ_PROTOCOL_TIME seconds each (default 10).
# Crashing inputs are kept in build-fuzz/artifacts/ and named in the FAIL line.
. "$(dirname "$0")/../lib.sh"
vd_init
need_tool clang

fuzz_time=${FUZZ_TIME:-40}
decoder_time=${FUZZ_DECODER_TIME:-10}
artifacts=${FUZZ_ARTIFACTS:-$VD_REPO/build-fuzz/artifacts}
unset ASAN_OPTIONS UBSAN_OPTIONS  # libFuzzer sets its own; keep leak detection on
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

if bash "$VD_TESTS/fuzz/build.sh" >build.out 2>&1; then
    pass fuzz/build
else
    fail fuzz/build "building the fuzz targets failed" build.out
    fail fuzz/seeds "not run: build failed"
    fail fuzz/run "not run: build failed"
    fail fuzz/decompress "not run: build failed"
    vd_finish
fi
fuzzer=$(grep '/fuzz-qcow2-open$' build.out | tail -n 1)

# Seeds: every corrupt image, plus small valid images of many kinds.
mkdir seeds work
"$PYTHON" "$VD_TESTS/corrupt/make-corpus.py" corpus >/dev/null
for d in corpus/*/; do
    cp "$d/image.qcow2" "seeds/$(basename "$d").qcow2"
done
rm -rf corpus
n=0
for o in cluster_size=512 cluster_size=4096 compat=0.10,cluster_size=4096 \
    extended_l2=on,cluster_size=16384 lazy_refcounts=on,cluster_size=4096 \
    refcount_bits=1,cluster_size=4096 refcount_bits=64,cluster_size=1024 \
    compression_type=zstd,cluster_size=4096; do
    n=$((n + 1))
    "$QEMU_IMG" create -f qcow2 -o "$o" "seeds/valid-$n.qcow2" 4M >/dev/null
    "$QEMU_IO" -f qcow2 -c 'write -P 0x41 0 5k' -c 'write -z 64k 8k' -c 'write -P 0x42 1M 1k' \
        -c 'discard 0 4k' "seeds/valid-$n.qcow2" >/dev/null
done
"$QEMU_IMG" create -f qcow2 -o cluster_size=4096 -b valid-2.qcow2 -F qcow2 \
    seeds/valid-overlay.qcow2 >/dev/null
head -c 65536 /dev/urandom | tr -d '\000' | head -c 20000 >seeds/raw.bin
"$QEMU_IMG" convert -c -f raw -O qcow2 -o cluster_size=4096 seeds/raw.bin \
    seeds/valid-compressed.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c s1 seeds/valid-2.qcow2

mkdir -p "$artifacts"
opts=(-rss_limit_mb=2048 -timeout=10 -max_len=1048576 "-artifact_prefix=$artifacts/")

# Replay: every seed once.
if timeout 600 "$fuzzer" "${opts[@]}" -runs=0 seeds >replay.out 2>&1; then
    pass fuzz/seeds
else
    tail -n 60 replay.out >replay.tail
    VD_DETAIL_LINES=60 fail fuzz/seeds "a seed image crashes the opener; see $artifacts" \
        replay.tail
fi

if timeout $((fuzz_time + 120)) "$fuzzer" "${opts[@]}" -max_total_time="$fuzz_time" \
    -print_final_stats=1 work seeds >fuzz.out 2>&1; then
    pass fuzz/run
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' fuzz.out | sed 's/^/    /'
else
    crash=$(grep -o "Test unit written to [^ ]*" fuzz.out | tail -n 1)
    tail -n 60 fuzz.out >fuzz.tail
    VD_DETAIL_LINES=60 fail fuzz/run "fuzzing found a problem (${crash:-no artifact})" fuzz.tail
fi

# The cluster decoders: seeds once, then a short run each.
for codec in zlib zstd; do
    dfuzzer=$(grep "/fuzz-decompress-$codec\$" build.out | tail -n 1)
    dopts=(-rss_limit_mb=2048 -timeout=10 -max_len=262144 "-artifact_prefix=$artifacts/")
    mkdir "work-$codec"
    if ! timeout 120 "$dfuzzer" "${dopts[@]}" -runs=0 "$VD_TESTS/fuzz/seeds-decompress-$codec" \
        >"replay-$codec.out" 2>&1; then
        tail -n 60 "replay-$codec.out" >"replay-$codec.tail"
        VD_DETAIL_LINES=60 fail "fuzz/decompress-$codec" "a seed crashes the $codec decoder" \
            "replay-$codec.tail"
    elif timeout $((decoder_time + 120)) "$dfuzzer" "${dopts[@]}" -max_total_time="$decoder_time" \
        -print_final_stats=1 "work-$codec" "$VD_TESTS/fuzz/seeds-decompress-$codec" \
        >"fuzz-$codec.out" 2>&1; then
        pass "fuzz/decompress-$codec"
        grep -E '^stat::number_of_executed_units' "fuzz-$codec.out" | sed 's/^/    /'
    else
        crash=$(grep -o "Test unit written to [^ ]*" "fuzz-$codec.out" | tail -n 1)
        tail -n 60 "fuzz-$codec.out" >"fuzz-$codec.tail"
        VD_DETAIL_LINES=60 fail "fuzz/decompress-$codec" \
            "fuzzing the $codec decoder found a problem (${crash:-no artifact})" "fuzz-$codec.tail"
    fi
done
# The daemon's protocol layers (the NBD server fed a client's byte stream, the QMP wire
# layer) and the parsers of the qcow2 header and snapshot table (each with an
# encode/decode round trip); seeds once, then a short run each.
protocol_time=${FUZZ_PROTOCOL_TIME:-10}
for target in nbd qmp qcow2-header snapshot-table; do
    pfuzzer=$(grep "/fuzz-$target\$" build.out | tail -n 1)
    popts=(-rss_limit_mb=2048 -timeout=10 -max_len=65536 "-artifact_prefix=$artifacts/")
    mkdir "work-$target"
    if ! timeout 120 "$pfuzzer" "${popts[@]}" -runs=0 "$VD_TESTS/fuzz/seeds-$target" \
        >"replay-$target.out" 2>&1; then
        tail -n 60 "replay-$target.out" >"replay-$target.tail"
        VD_DETAIL_LINES=60 fail "fuzz/$target" "a seed crashes the $target target" \
            "replay-$target.tail"
    elif timeout $((protocol_time + 120)) "$pfuzzer" "${popts[@]}" \
        -max_total_time="$protocol_time" -print_final_stats=1 "work-$target" \
        "$VD_TESTS/fuzz/seeds-$target" >"fuzz-$target.out" 2>&1; then
        pass "fuzz/$target"
        grep -E '^stat::number_of_executed_units' "fuzz-$target.out" | sed 's/^/    /'
    else
        crash=$(grep -o "Test unit written to [^ ]*" "fuzz-$target.out" | tail -n 1)
        tail -n 60 "fuzz-$target.out" >"fuzz-$target.tail"
        VD_DETAIL_LINES=60 fail "fuzz/$target" \
            "fuzzing the $target target found a problem (${crash:-no artifact})" "fuzz-$target.tail"
    fi
done
vd_finish
