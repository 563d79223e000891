#!/bin/sh
# Build the fuzz targets (virtqueue, viodev_msg, imsg, control payloads) with libFuzzer + AddressSanitizer and run
# each for N seconds (default 60). Usage: Tests/Fuzz/run.sh [seconds]
# Findings (crash-*, leak-*, timeout-*) land in $FUZZ_BUILD_DIR/findings/
# (default /tmp/vmd-virtio-fuzz); the corpus is kept there between runs.
set -eu
SECONDS_EACH=${1:-60}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${FUZZ_BUILD_DIR:-/tmp/vmd-virtio-fuzz}
export PATH=/opt/swift/usr/bin:$PATH
mkdir -p "$BUILD/findings"
FLAGS="-O -sanitize=fuzzer,address -parse-as-library -swift-version 5"

build() {
    # ld.gold warns about every ASan helper symbol; keep that out of sight.
    if ! swiftc $FLAGS "$@" >>"$BUILD/build.log" 2>&1; then
        grep -E "error" "$BUILD/build.log" >&2 || tail -20 "$BUILD/build.log" >&2
        exit 2
    fi
}
: >"$BUILD/build.log"
# VMDSystem (the libc wrapper layer the devices' backends use) and its C shim.
mkdir -p "$BUILD/CVMDSys"
printf 'module CVMDSys {\n    header "%s"\n    export *\n}\n' "$ROOT/Sources/CVMDSys/include/cvmdsys.h" \
    >"$BUILD/CVMDSys/module.modulemap"
if ! clang -c -O1 -I "$ROOT/Sources/CVMDSys/include" "$ROOT/Sources/CVMDSys/cvmdsys.c" \
        -o "$BUILD/cvmdsys.o" >>"$BUILD/build.log" 2>&1; then
    tail -20 "$BUILD/build.log" >&2
    exit 2
fi
build -wmo -c -module-name VMDSystem -I "$BUILD/CVMDSys" -I "$ROOT/Sources/CLibseccomp" -emit-module \
    -emit-module-path "$BUILD/VMDSystem.swiftmodule" -o "$BUILD/VMDSystem.o" "$ROOT"/Sources/VMDSystem/*.swift
SYSTEM_OBJS="$BUILD/VMDSystem.o $BUILD/cvmdsys.o -lbsd -lseccomp -levent_core"
build -wmo -c -module-name Virtio -emit-module -emit-module-path "$BUILD/Virtio.swiftmodule" \
    -o "$BUILD/Virtio.o" "$ROOT"/Sources/Virtio/*.swift
build -wmo -c -module-name VirtioDevices -I "$BUILD" -I "$BUILD/CVMDSys" -I "$ROOT/Sources/CLibseccomp" -emit-module \
    -emit-module-path "$BUILD/VirtioDevices.swiftmodule" -o "$BUILD/VirtioDevices.o" "$ROOT"/Sources/VirtioDevices/*.swift
# shellcheck disable=SC2086
build -I "$BUILD" -I "$BUILD/CVMDSys" -I "$ROOT/Sources/CLibseccomp" "$HERE/FuzzVirtqueue.swift" "$BUILD/Virtio.o" "$BUILD/VirtioDevices.o" \
    $SYSTEM_OBJS -o "$BUILD/fuzz-virtqueue"
build -I "$BUILD" "$HERE/FuzzViodevMsg.swift" "$BUILD/Virtio.o" -o "$BUILD/fuzz-viodevmsg"
# imsg framing and the control payloads are pure Swift: compiled with the harness.
build "$HERE/FuzzImsg.swift" "$ROOT/Sources/Imsg/ImsgFraming.swift" -o "$BUILD/fuzz-imsg"
build "$HERE/FuzzControl.swift" "$ROOT"/Sources/VMDControl/*.swift -o "$BUILD/fuzz-control"

status=0
for target in fuzz-virtqueue fuzz-viodevmsg fuzz-imsg fuzz-control; do
    corpus="$BUILD/corpus-$target"
    mkdir -p "$corpus"
    echo "== $target: $SECONDS_EACH s"
    if ! "$BUILD/$target" -max_total_time="$SECONDS_EACH" -max_len=8192 -print_final_stats=1 \
            -artifact_prefix="$BUILD/findings/$target-" "$corpus" 2>"$BUILD/$target.log"; then
        status=1
        echo "!! $target found a problem; see $BUILD/$target.log and $BUILD/findings/"
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb|cov:" "$BUILD/$target.log" | tail -3
done
exit $status
