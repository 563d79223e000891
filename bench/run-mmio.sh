#!/bin/bash
# bench/run-mmio.sh [BIN_DIR] [mmio.py options]: the same vmtest device workloads over
# virtio-pci and virtio-mmio, under our vmd and under QEMU (-M pc / -M microvm); prints
# one table (bench/README.md).
#
#   BIN_DIR   where our vmd is (default .build/debug)
#   options   --runs N (3)  --bench-scale PCT (1000)  --image-mb N (64)  --no-qemu
#             --qemu-accel kvm|tcg (kvm)
#
# Needs root (vmd, /dev/kvm, network namespaces with taps); builds and installs nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
root="$(cd "$here/.." && pwd -P)"
bin="$root/.build/debug"
case "${1:-}" in
-h|--help) sed -n '2,10p' "$0"; exit 0 ;;
-*|"") ;;
*) bin="$1"; shift ;;
esac
case "$bin" in /*) ;; *) if [ -d "$bin" ]; then bin="$(cd "$bin" && pwd -P)"; else bin="$root/$bin"; fi ;; esac
[ "$(id -u)" = 0 ] || { echo "bench/run-mmio.sh: needs root" >&2; exit 1; }
[ -f "$root/build/vmtest-pvh.elf" ] || { echo "bench/run-mmio.sh: build/vmtest-pvh.elf not built (make guests)" >&2; exit 1; }
ns="vmbench-mmio-$$"
trap 'ip netns del "$ns-v" 2>/dev/null || true; ip netns del "$ns-q" 2>/dev/null || true' EXIT
cd "$here" && python3 "$here/mmio.py" --netns "$ns" "$bin" "$@"
