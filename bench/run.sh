#!/bin/bash
# bench/run.sh [BIN_DIR] [vmbench.py options]: boot time and virtio device throughput of
# our vmd against QEMU, both running build/vmtest.elf; prints the tables (bench/README.md).
#
#   BIN_DIR   where our vmd is (default .build/debug; `make bench` passes .build/$(CONFIG))
#   options   --boot-runs N (7)  --bench-runs N (3)  --bench-scale PCT (1000)  --image-mb N (64)
#             --no-qemu  --no-tcg (skip QEMU's TCG boot reference)  --qemu-aio threads|io_uring
#             --no-qemu-pio (skip QEMU's second device run, with the notify window in an I/O BAR as ours)
#             --no-limits (skip the host limits: fio on the image, eventfd round trip, tap reader)
#             --no-qemu-vhost (skip the reference run of QEMU with vhost=on; needs /dev/vhost-net)
#
# Needs root (vmd, /dev/kvm, a network namespace with a tap); installs nothing (bench/eventfd-rtt.c,
# udpflood.c and tapread.c are compiled with cc into a temporary directory; fio is optional).
# All traffic stays inside private network namespaces (one per VMM, one for the tap reader),
# deleted on exit.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
root="$(cd "$here/.." && pwd -P)"
bin="$root/.build/debug"
case "${1:-}" in
-h|--help) sed -n '2,13p' "$0"; python3 "$here/vmbench.py" --help; exit 0 ;;
-*|"") ;;
*) bin="$1"; shift ;;
esac
# A relative BIN_DIR is taken from the current directory, else from the repository root.
case "$bin" in /*) ;; *) if [ -d "$bin" ]; then bin="$(cd "$bin" && pwd -P)"; else bin="$root/$bin"; fi ;; esac

fail() { echo "bench/run.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (vmd, /dev/kvm, network namespace and tap)"
[ -x "$bin/vmd" ] && [ -x "$bin/vmctl" ] || fail "$bin/vmd or vmctl not found (make build, or pass the directory holding them)"
[ -f "$root/build/vmtest.elf" ] || fail "$root/build/vmtest.elf not built (make guests)"
[ -c /dev/kvm ] || fail "/dev/kvm missing"
command -v python3 >/dev/null || fail "python3 not installed"
command -v ip >/dev/null || fail "ip (iproute2) not installed"

# vmbench.py deletes its two namespaces itself; the trap also covers a kill of vmbench.py.
ns="vmbench-$$"
trap 'for n in v q l; do ip netns del "$ns-$n" 2>/dev/null || true; done' EXIT
python3 "$here/vmbench.py" --netns "$ns" "$bin" "$@"
