#!/bin/bash
# run-qemu.sh: boots build/vmtest.elf under QEMU (-M pc, KVM, or TCG if KVM fails)
# with modern virtio-blk, virtio-rng and virtio-net devices, and checks the result.
#
#   guests/vmtest/run-qemu.sh [--bench] [--smp N[,topology]] [--accel kvm|tcg] [--timeout SEC]
#                             [--append "extra options"] [--pio-notify] [--scsi] [--keep]
#   guests/vmtest/run-qemu.sh --microvm [--bench] [--accel kvm|tcg] [--timeout SEC]
#                             [--append "extra options"] [--keep]
#
# The disk is a fresh raw image whose sector n begins with "vmdisk <n>\n". The NIC is a
# tap inside a private network namespace (host side 10.0.2.2/24, guest 10.0.2.15/24);
# nothing is routed out of it and the namespace is deleted on exit. Passes (exit 0)
# only if every check printed ok, the summary says failed=0, sectors 2048..2175 of the
# image hold what the guest wrote, and QEMU exited by itself (guest power-off).
# --scsi adds QEMU's virtio-scsi with a scsi-cd holding 512 blocks of scsi.c's pattern
# (so --append scsi_verify=N works too) and requires 'vmtest: scsi ok'.
# --microvm boots build/vmtest-pvh.elf on -M microvm instead (PVH entry, no PCI; TCG and
# 120 s by default): blk, rng and net as virtio-mmio version 2 devices the guest finds on
# the command line QEMU completes ("virtio_mmio.device=..."), the reference for our
# VMM's `virtio mmio` shape. acpi=off (so QEMU announces the devices on the command line
# and they sit on IOAPIC/PIC lines below 16) describes no CPUs: the guest is told
# `no_cpu_tables` and the cpus check may skip. The guest powers off through an
# isa-debug-exit device on port 0x604 (QEMU then exits with status 1). It also requires
# the PVH line and 'pci devices=0 mmio devices=3'.
# Needs root (network namespace, tap).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
root="$(cd "$here/../.." && pwd -P)"
bench=0 smp=1 accel="" timeout_s="" extra="" keep=0 devopt="" scsi=0 microvm=0
while [ $# -gt 0 ]; do
    case "$1" in
    --bench) bench=1 ;;
    --smp) smp="$2"; shift ;;
    --accel) accel="$2"; shift ;;
    --timeout) timeout_s="$2"; shift ;;
    --append) extra="$2"; shift ;;
    --keep) keep=1 ;;
    --scsi) scsi=1 ;;
    --pio-notify) devopt=",modern-pio-notify=on" ;;   # notify through an I/O BAR, like our VMM
    --microvm) microvm=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "run-qemu.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$microvm" = 1 ]; then
    if [ "$smp" != 1 ] || [ "$scsi" = 1 ] || [ -n "$devopt" ]; then
        echo "run-qemu.sh: --microvm takes no --smp, --scsi or --pio-notify" >&2; exit 2
    fi
    accel="${accel:-tcg}" timeout_s="${timeout_s:-120}"
else
    accel="${accel:-kvm}" timeout_s="${timeout_s:-60}"
fi

fail() { echo "run-qemu.sh: FAIL $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (network namespace and tap device)"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 not installed"
command -v python3 >/dev/null || fail "python3 not installed (used to write and verify the disk image)"

make -s -C "$here" >/dev/null
elf="$root/build/vmtest.elf"
[ "$microvm" = 1 ] && elf="$root/build/vmtest-pvh.elf"
[ -f "$elf" ] || fail "$elf was not built"

work="$(mktemp -d /tmp/vmtest-qemu.XXXXXX)"
ns="vmtest-$$-$RANDOM"
cleanup() {
    ip netns del "$ns" 2>/dev/null || true
    if [ "$keep" = 1 ]; then echo "run-qemu.sh: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

image="$work/disk.raw"
python3 - "$image" <<'EOF'
import sys
sectors = 4096                      # 2 MiB: the pattern (1 MiB) + the write area at 1 MiB
with open(sys.argv[1], "wb") as f:
    for n in range(sectors):
        s = b"vmdisk %d\n" % n
        f.write(s + b"\0" * (512 - len(s)))
EOF

scsiargs=()
if [ "$scsi" = 1 ]; then
    python3 - "$work/cd.iso" <<'EOF'
import struct, sys
with open(sys.argv[1], "wb") as f:
    for b in range(512):            # scsi.c's block pattern
        out = bytearray(struct.pack("<I", b))
        x = (b * 2654435761 ^ 0x5c5c5c5c) & 0xffffffff
        for _ in range(2044):
            x = (x * 1103515245 + 12345) & 0xffffffff
            out.append((x >> 16) & 0xff)
        f.write(out)
EOF
    scsiargs=(-device "virtio-scsi-pci,id=scsi0,disable-legacy=on$devopt"
              -drive "file=$work/cd.iso,format=raw,if=none,id=cd0,media=cdrom,readonly=on"
              -device scsi-cd,drive=cd0,bus=scsi0.0)
fi

ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" ip tuntap add dev tap0 mode tap
ip netns exec "$ns" ip addr add 10.0.2.2/24 dev tap0
ip netns exec "$ns" ip link set tap0 up

cmdline="ip=10.0.2.15/24 gw=10.0.2.2"
[ "$microvm" = 1 ] && cmdline="$cmdline no_cpu_tables"
[ "$bench" = 1 ] && cmdline="$cmdline bench"
[ -n "$extra" ] && cmdline="$cmdline $extra"
log="$work/serial.log"

if [ "$microvm" = 1 ]; then
    machine=(-M microvm,acpi=off,pit=on,pic=on,rtc=on)
    devices=(-global virtio-mmio.force-legacy=false
             -device isa-debug-exit,iobase=0x604,iosize=2
             -device virtio-blk-device,drive=disk0
             -device virtio-rng-device
             -device virtio-net-device,netdev=net0,mac=52:54:00:12:34:56)
    powered_off=1       # isa-debug-exit: (0 << 1) | 1
else
    machine=(-M pc -smp "$smp")
    devices=(-device "virtio-blk-pci,drive=disk0,disable-legacy=on$devopt"
             -device "virtio-rng-pci,disable-legacy=on$devopt"
             -device "virtio-net-pci,netdev=net0,disable-legacy=on,mac=52:54:00:12:34:56$devopt"
             ${scsiargs[@]+"${scsiargs[@]}"})
    powered_off=0
fi

run_qemu() {    # $1 = accelerator; returns QEMU's exit status (124 on timeout)
    : >"$log"
    local status=0
    ip netns exec "$ns" timeout "$timeout_s" qemu-system-x86_64 \
        "${machine[@]}" -accel "$1" -m 256 -nodefaults -display none -no-reboot \
        -kernel "$elf" -append "$cmdline" \
        -serial "file:$log" \
        -drive "file=$image,format=raw,if=none,id=disk0,cache=writeback" \
        -netdev tap,id=net0,ifname=tap0,script=no,downscript=no \
        "${devices[@]}" \
        2>"$work/qemu.err" || status=$?
    return $status
}

started=$(date +%s.%N)
status=0
run_qemu "$accel" || status=$?
if [ "$accel" = kvm ] && [ "$status" != "$powered_off" ] && [ "$status" != 124 ] && ! grep -q "vmtest:" "$log"; then
    echo "run-qemu.sh: KVM failed ($(head -c 300 "$work/qemu.err" | tr '\n' ' ')), retrying with TCG" >&2
    accel=tcg
    status=0
    run_qemu tcg || status=$?
fi
elapsed=$(echo "$(date +%s.%N) - $started" | bc 2>/dev/null || echo "?")
tr -d '\r' <"$log"
echo "run-qemu.sh: $([ "$microvm" = 1 ] && echo "machine=microvm ")accel=$accel smp=$smp qemu_status=$status wall_s=$elapsed"

problems=()
[ "$status" = 124 ] && problems+=("QEMU did not exit within ${timeout_s}s (the guest did not power off)")
[ "$status" != "$powered_off" ] && [ "$status" != 124 ] && problems+=("QEMU exited with status $status, not $powered_off: $(head -c 300 "$work/qemu.err")")
grep -q "^vmtest summary: passed=[0-9]* failed=0" <(tr -d '\r' <"$log") || problems+=("no 'vmtest summary: ... failed=0' line")
grep -q "FAIL" "$log" && problems+=("a check printed FAIL")
checks="serial boot blk rng net cpus"
if [ "$microvm" = 1 ]; then
    checks="serial boot blk rng net"       # cpus may skip: acpi=off describes no CPUs
    grep -q "^vmtest: pvh start_info" <(tr -d '\r' <"$log") || problems+=("the guest was not entered through PVH")
    grep -q "^vmtest: pci devices=0 mmio devices=3 " <(tr -d '\r' <"$log") || problems+=("expected 3 virtio-mmio devices and no PCI")
fi
for check in $checks; do
    grep -q "^vmtest: $check ok" <(tr -d '\r' <"$log") || problems+=("no 'vmtest: $check ok' line")
done
if [ "$scsi" = 1 ]; then
    grep -q "^vmtest: scsi ok" <(tr -d '\r' <"$log") || problems+=("no 'vmtest: scsi ok' line")
fi
ncpus="${smp%%,*}"     # --smp also takes QEMU's topology syntax, e.g. 2,sockets=2
if [ "$ncpus" -gt 1 ]; then
    grep -q "^vmtest: cpus ok count=$ncpus" <(tr -d '\r' <"$log") || problems+=("expected 'cpus ok count=$ncpus'")
fi
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
    for p in "${problems[@]}"; do echo "run-qemu.sh: FAIL $p" >&2; done
    exit 1
fi
if [ "$microvm" = 1 ]; then
    echo "run-qemu.sh: PASS (microvm: PVH entry, virtio-mmio blk/rng/net, image sectors 2048..2175 verified)"
else
    echo "run-qemu.sh: PASS (image sectors 2048..2175 verified, guest powered off)"
fi
