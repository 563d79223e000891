#!/bin/sh
# Build the fuzz targets (virtqueue, viodev_msg, vhost-user, imsg, control payloads, qcow2, DHCP, NDP) with libFuzzer + AddressSanitizer and run
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
        -o "$BUILD/cvmdsys.o" >>"$BUILD/build.log" 2>&1 \
    || ! clang -c -O1 -I "$ROOT/Sources/CVMDSys/include" "$ROOT/Sources/CVMDSys/crash.c" \
        -o "$BUILD/crash.o" >>"$BUILD/build.log" 2>&1 \
    || ! clang -c -O1 -I "$ROOT/Sources/CVMDSys/include" "$ROOT/Sources/CVMDSys/sibling.c" \
        -o "$BUILD/sibling.o" >>"$BUILD/build.log" 2>&1; then
    tail -20 "$BUILD/build.log" >&2
    exit 2
fi
build -wmo -c -module-name VMDSystem -I "$BUILD/CVMDSys" -I "$ROOT/Sources/CLibseccomp" -emit-module \
    -emit-module-path "$BUILD/VMDSystem.swiftmodule" -o "$BUILD/VMDSystem.o" "$ROOT"/Sources/VMDSystem/*.swift
SYSTEM_OBJS="$BUILD/VMDSystem.o $BUILD/cvmdsys.o $BUILD/crash.o $BUILD/sibling.o -lbsd -lseccomp -levent_core"
build -wmo -c -module-name Virtio -emit-module -emit-module-path "$BUILD/Virtio.swiftmodule" \
    -o "$BUILD/Virtio.o" "$ROOT"/Sources/Virtio/*.swift
# qcow2 parsing and metadata updates (DiskImage, with zlib for compressed clusters;
# its files go through VMDSystem's FileIO).
build -wmo -c -module-name DiskImage -I "$BUILD" -I "$BUILD/CVMDSys" -I "$ROOT/Sources/CLibseccomp" -I "$ROOT/Sources/CZlib" -emit-module -emit-module-path "$BUILD/DiskImage.swiftmodule" \
    -o "$BUILD/DiskImage.o" "$ROOT"/Sources/DiskImage/*.swift
# vioblk's asynchronous I/O shim (liburing).
mkdir -p "$BUILD/CVMDAio"
printf 'module CVMDAio {\n    header "%s"\n    export *\n}\n' "$ROOT/Sources/CVMDAio/include/cvmd_aio.h" \
    >"$BUILD/CVMDAio/module.modulemap"
clang -c -O1 -I "$ROOT/Sources/CVMDAio/include" "$ROOT/Sources/CVMDAio/cvmd_aio.c" -o "$BUILD/cvmd_aio.o" >>"$BUILD/build.log" 2>&1 \
    || { tail -5 "$BUILD/build.log" >&2; exit 2; }
SYSTEM_OBJS="$SYSTEM_OBJS $BUILD/cvmd_aio.o -luring -lpthread"
build -wmo -c -module-name VirtioDevices -I "$BUILD/CVMDAio" -I "$BUILD" -I "$BUILD/CVMDSys" -I "$ROOT/Sources/CLibseccomp" -I "$ROOT/Sources/CZlib" \
    -emit-module -emit-module-path "$BUILD/VirtioDevices.swiftmodule" -o "$BUILD/VirtioDevices.o" "$ROOT"/Sources/VirtioDevices/*.swift
# shellcheck disable=SC2086
build -I "$BUILD" -I "$BUILD/CVMDAio" -I "$BUILD/CVMDSys" -I "$ROOT/Sources/CLibseccomp" -I "$ROOT/Sources/CZlib" "$HERE/FuzzVirtqueue.swift" \
    "$BUILD/Virtio.o" "$BUILD/VirtioDevices.o" "$BUILD/DiskImage.o" $SYSTEM_OBJS -lz -o "$BUILD/fuzz-virtqueue"
build -I "$BUILD" "$HERE/FuzzViodevMsg.swift" "$BUILD/Virtio.o" -o "$BUILD/fuzz-viodevmsg"
# vhost-user: the backend state machine over a fuzzed stream and guest memory.
mkdir -p "$BUILD/cvhostuser"
printf 'module CVhostUser {\n  header "%s"\n  export *\n}\n' "$ROOT/Sources/CVhostUser/include/cvhostuser.h" \
    >"$BUILD/cvhostuser/module.modulemap"
clang -O1 -fsanitize=fuzzer-no-link,address -I "$ROOT/Sources/CVhostUser/include" -c "$ROOT/Sources/CVhostUser/cvhostuser.c" -o "$BUILD/cvhostuser.o" \
    >>"$BUILD/build.log" 2>&1 || { tail -5 "$BUILD/build.log" >&2; exit 2; }
build -wmo -c -module-name VhostUser -I "$BUILD" -I "$BUILD/cvhostuser" -emit-module \
    -emit-module-path "$BUILD/VhostUser.swiftmodule" -o "$BUILD/VhostUser.o" "$ROOT"/Sources/VhostUser/*.swift
# shellcheck disable=SC2086
build -I "$BUILD" -I "$BUILD/cvhostuser" -I "$BUILD/CVMDAio" -I "$BUILD/CVMDSys" -I "$ROOT/Sources/CLibseccomp" -I "$ROOT/Sources/CZlib" "$HERE/FuzzVhostUser.swift" \
    "$BUILD/VhostUser.o" "$BUILD/cvhostuser.o" "$BUILD/Virtio.o" "$BUILD/VirtioDevices.o" "$BUILD/DiskImage.o" \
    $SYSTEM_OBJS -lz -o "$BUILD/fuzz-vhostuser"
# imsg framing and the control payloads are pure Swift: compiled with the harness.
build "$HERE/FuzzImsg.swift" "$ROOT/Sources/Imsg/ImsgFraming.swift" -o "$BUILD/fuzz-imsg"
build "$HERE/FuzzControl.swift" "$ROOT"/Sources/VMDControl/*.swift -o "$BUILD/fuzz-control"
# shellcheck disable=SC2086
build -I "$BUILD" -I "$BUILD/CVMDSys" -I "$ROOT/Sources/CLibseccomp" -I "$ROOT/Sources/CZlib" "$HERE/FuzzQcow2.swift" \
    "$BUILD/DiskImage.o" $SYSTEM_OBJS -lz -o "$BUILD/fuzz-qcow2"
# vionet's DHCP server for local interfaces (pure Swift, compiled with the harness).
build "$HERE/FuzzDHCP.swift" "$ROOT/Sources/VirtioDevices/DHCPServer.swift" -o "$BUILD/fuzz-dhcp"
# ... and its router advertisements for `local inet6` (RS/RA, NDP options).
build "$HERE/FuzzNDP.swift" "$ROOT/Sources/VirtioDevices/RouterAdvertisement.swift" \
    "$ROOT/Sources/VirtioDevices/DHCPServer.swift" -o "$BUILD/fuzz-ndp"
# Seeds: small images from qemu-img (512-byte clusters, every refcount width,
# v2 and v3, a backing name, compressed clusters), if it is installed.
seeds="$BUILD/corpus-fuzz-qcow2"
if command -v qemu-img >/dev/null && [ ! -e "$seeds/.seeded" ]; then
    mkdir -p "$seeds"
    tmp=$(mktemp -d)
    for opts in compat=0.10 compat=1.1,refcount_bits=1 compat=1.1,refcount_bits=4 compat=1.1,refcount_bits=64 \
            compat=1.1,backing_file=base.raw,backing_fmt=raw; do
        qemu-img create -q -f qcow2 -o "cluster_size=512,$opts" "$tmp/i.qcow2" 64K 2>/dev/null || continue
        qemu-io -f qcow2 -c "write -P 1 0 1k" -c "write -z 8k 1k" -c "write -P 2 40k 600" "$tmp/i.qcow2" >/dev/null 2>&1 || true
        cp "$tmp/i.qcow2" "$seeds/seed-$(echo "$opts" | tr ',=' '__')"
    done
    qemu-img create -q -f raw "$tmp/r.raw" 64K
    qemu-io -f raw -c "write -P 3 0 20k" -c "write -P 4 30k 2k" "$tmp/r.raw" >/dev/null 2>&1 || true
    qemu-img convert -c -O qcow2 -o cluster_size=512 "$tmp/r.raw" "$tmp/c.qcow2" 2>/dev/null && cp "$tmp/c.qcow2" "$seeds/seed-compressed" || true
    rm -rf "$tmp"
    touch "$seeds/.seeded"
fi

python3 "$HERE/dhcp-seed.py" "$BUILD/corpus-fuzz-dhcp"
python3 "$HERE/ndp-seed.py" "$BUILD/corpus-fuzz-ndp"
mkdir -p "$BUILD/corpus-fuzz-vhostuser"
python3 "$HERE/vhostuser-seed.py" "$BUILD/corpus-fuzz-vhostuser/seed-start-sequence"

status=0
for target in ${FUZZ_TARGETS:-fuzz-virtqueue fuzz-viodevmsg fuzz-vhostuser fuzz-imsg fuzz-control fuzz-qcow2 fuzz-dhcp fuzz-ndp}; do
    corpus="$BUILD/corpus-$target"
    mkdir -p "$corpus"
    echo "== $target: $SECONDS_EACH s"
    # FUZZ_RUNS=N: stop after N runs instead (e.g. 10000000 for fuzz-dhcp).
    if ! "$BUILD/$target" -max_total_time="$SECONDS_EACH" ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} -max_len=${FUZZ_MAX_LEN:-8192} -print_final_stats=1 \
            -artifact_prefix="$BUILD/findings/$target-" "$corpus" 2>"$BUILD/$target.log"; then
        status=1
        echo "!! $target found a problem; see $BUILD/$target.log and $BUILD/findings/"
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb|cov:" "$BUILD/$target.log" | tail -3
done
exit $status
