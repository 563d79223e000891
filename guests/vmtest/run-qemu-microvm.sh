#!/bin/bash
# run-qemu-microvm.sh: boots build/vmtest-pvh.elf under QEMU -M microvm (PVH entry,
# no PCI) with virtio-blk, virtio-rng and virtio-net as virtio-mmio version 2 devices,
# found by the guest on the command line QEMU completes ("virtio_mmio.device=..."),
# and checks the result: the reference for our VMM's `virtio mmio` shape.
#
#   guests/vmtest/run-qemu-microvm.sh [--bench] [--accel kvm|tcg] [--timeout SEC]
#                                     [--append "extra options"] [--keep]
#
# As run-qemu.sh: a fresh disk whose sector n begins with "vmdisk <n>\n", a tap in a
# private network namespace (host 10.0.2.2/24, guest 10.0.2.15/24). microvm with
# acpi=off (so QEMU announces the devices on the command line and they sit on
# IOAPIC/PIC lines below 16) describes no CPUs: the guest is told `no_cpu_tables`.
# The guest powers off through an isa-debug-exit device on port 0x604 (QEMU then
# exits with status 1). Passes only if every check printed ok or the cpus skip, the
# summary says failed=0 and sectors 2048..2175 hold what the guest wrote.
# Needs root (network namespace, tap).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
root="$(cd "$here/../.." && pwd -P)"
bench=0 accel=tcg timeout_s=120 extra="" keep=0
while [ $# -gt 0 ]; do
    case "$1" in
    --bench) bench=1 ;;
    --accel) accel="$2"; shift ;;
    --timeout) timeout_s="$2"; shift ;;
    --append) extra="$2"; shift ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "run-qemu-microvm.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

fail() { echo "run-qemu-microvm.sh: FAIL $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (network namespace and tap device)"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 not installed"
command -v python3 >/dev/null || fail "python3 not installed"

make -s -C "$here" >/dev/null
elf="$root/build/vmtest-pvh.elf"
[ -f "$elf" ] || fail "$elf was not built"

work="$(mktemp -d /tmp/vmtest-microvm.XXXXXX)"
ns="vmtest-mvm-$$-$RANDOM"
cleanup() {
    ip netns del "$ns" 2>/dev/null || true
    if [ "$keep" = 1 ]; then echo "run-qemu-microvm.sh: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

image="$work/disk.raw"
python3 - "$image" <<'EOF'
import sys
with open(sys.argv[1], "wb") as f:
    for n in range(4096):
        s = b"vmdisk %d\n" % n
        f.write(s + b"\0" * (512 - len(s)))
EOF

ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" ip tuntap add dev tap0 mode tap
ip netns exec "$ns" ip addr add 10.0.2.2/24 dev tap0
ip netns exec "$ns" ip link set tap0 up

cmdline="ip=10.0.2.15/24 gw=10.0.2.2 no_cpu_tables"
[ "$bench" = 1 ] && cmdline="$cmdline bench"
[ -n "$extra" ] && cmdline="$cmdline $extra"
log="$work/serial.log"
started=$(date +%s.%N)
status=0
ip netns exec "$ns" timeout "$timeout_s" qemu-system-x86_64 \
    -M microvm,acpi=off,pit=on,pic=on,rtc=on -accel "$accel" -m 256 -nodefaults -display none -no-reboot \
    -global virtio-mmio.force-legacy=false \
    -kernel "$elf" -append "$cmdline" \
    -serial "file:$log" \
    -device isa-debug-exit,iobase=0x604,iosize=2 \
    -drive "file=$image,format=raw,if=none,id=disk0,cache=writeback" \
    -device virtio-blk-device,drive=disk0 \
    -device virtio-rng-device \
    -netdev tap,id=net0,ifname=tap0,script=no,downscript=no \
    -device virtio-net-device,netdev=net0,mac=52:54:00:12:34:56 \
    2>"$work/qemu.err" || status=$?
elapsed=$(echo "$(date +%s.%N) - $started" | bc 2>/dev/null || echo "?")
tr -d '\r' <"$log"
echo "run-qemu-microvm.sh: accel=$accel qemu_status=$status wall_s=$elapsed"

problems=()
[ "$status" = 124 ] && problems+=("QEMU did not exit within ${timeout_s}s (the guest did not power off)")
[ "$status" != 1 ] && [ "$status" != 124 ] && problems+=("QEMU exited with status $status, not 1 (isa-debug-exit): $(head -c 300 "$work/qemu.err")")
grep -q "^vmtest summary: passed=[0-9]* failed=0" <(tr -d '\r' <"$log") || problems+=("no 'vmtest summary: ... failed=0' line")
grep -q "FAIL" "$log" && problems+=("a check printed FAIL")
grep -q "^vmtest: pvh start_info" <(tr -d '\r' <"$log") || problems+=("the guest was not entered through PVH")
grep -q "^vmtest: pci devices=0 mmio devices=3 " <(tr -d '\r' <"$log") || problems+=("expected 3 virtio-mmio devices and no PCI")
for check in serial boot blk rng net; do
    grep -q "^vmtest: $check ok" <(tr -d '\r' <"$log") || problems+=("no 'vmtest: $check ok' line")
done
if [ "$bench" = 1 ]; then
    for b in blk_randread_qd1 blk_randread_qd32 blk_flush_lat net_tx_1500; do
        grep -q "^vmtest bench: $b [a-z_0-9]*=" <(tr -d '\r' <"$log") || problems+=("no bench line for $b")
    done
fi
verify=$(python3 - "$image" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
bad = []
for n in range(2048, 2176):
    want = b"vmtest sector %d\n" % n
    want += b"\0" * (512 - len(want))
    if data[n * 512:(n + 1) * 512] != want:
        bad.append(n)
for n in list(range(0, 2048)) + list(range(2176, 4096)):
    want = b"vmdisk %d\n" % n
    if data[n * 512:n * 512 + len(want)] != want:
        bad.append(n)
print("ok" if not bad else "sectors differ from the expected content: %s" % bad[:8])
EOF
)
[ "$verify" = ok ] || problems+=("image check: $verify")
if [ ${#problems[@]} -gt 0 ]; then
    for p in "${problems[@]}"; do echo "run-qemu-microvm.sh: FAIL $p" >&2; done
    exit 1
fi
echo "run-qemu-microvm.sh: PASS (PVH entry, virtio-mmio blk/rng/net, image sectors 2048..2175 verified)"
