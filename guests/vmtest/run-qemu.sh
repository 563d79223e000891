#!/bin/bash
# run-qemu.sh: boots build/vmtest.elf under QEMU (-M pc, KVM, or TCG if KVM fails)
# with modern virtio-blk, virtio-rng and virtio-net devices, and checks the result.
#
#   guests/vmtest/run-qemu.sh [--bench] [--smp N[,topology]] [--accel kvm|tcg] [--timeout SEC]
#                             [--append "extra options"] [--pio-notify] [--scsi] [--keep]
#
# The disk is a fresh raw image whose sector n begins with "vmdisk <n>\n". The NIC is a
# tap inside a private network namespace (host side 10.0.2.2/24, guest 10.0.2.15/24);
# nothing is routed out of it and the namespace is deleted on exit. Passes (exit 0)
# only if every check printed ok, the summary says failed=0, sectors 2048..2175 of the
# image hold what the guest wrote, and QEMU exited by itself (guest power-off).
# --scsi adds QEMU's virtio-scsi with a scsi-cd holding 512 blocks of scsi.c's pattern
# (so --append scsi_verify=N works too) and requires 'vmtest: scsi ok'.
# Needs root (network namespace, tap).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
root="$(cd "$here/../.." && pwd -P)"
bench=0 smp=1 accel=kvm timeout_s=60 extra="" keep=0 devopt="" scsi=0
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
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "run-qemu.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

fail() { echo "run-qemu.sh: FAIL $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (network namespace and tap device)"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 not installed"
command -v python3 >/dev/null || fail "python3 not installed (used to write and verify the disk image)"

make -s -C "$here" >/dev/null
elf="$root/build/vmtest.elf"
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
[ "$bench" = 1 ] && cmdline="$cmdline bench"
[ -n "$extra" ] && cmdline="$cmdline $extra"
log="$work/serial.log"

run_qemu() {    # $1 = accelerator; returns QEMU's exit status (124 on timeout)
    : >"$log"
    local status=0
    ip netns exec "$ns" timeout "$timeout_s" qemu-system-x86_64 \
        -M pc -accel "$1" -m 256 -smp "$smp" -nodefaults -display none -no-reboot \
        -kernel "$elf" -append "$cmdline" \
        -serial "file:$log" \
        -drive "file=$image,format=raw,if=none,id=disk0,cache=writeback" \
        -device virtio-blk-pci,drive=disk0,disable-legacy=on$devopt \
        -device virtio-rng-pci,disable-legacy=on$devopt \
        -netdev tap,id=net0,ifname=tap0,script=no,downscript=no \
        -device virtio-net-pci,netdev=net0,disable-legacy=on,mac=52:54:00:12:34:56$devopt \
        ${scsiargs[@]+"${scsiargs[@]}"} \
        2>"$work/qemu.err" || status=$?
    return $status
}

started=$(date +%s.%N)
status=0
run_qemu "$accel" || status=$?
if [ "$accel" = kvm ] && [ "$status" != 0 ] && [ "$status" != 124 ] && ! grep -q "vmtest:" "$log"; then
    echo "run-qemu.sh: KVM failed ($(head -c 300 "$work/qemu.err" | tr '\n' ' ')), retrying with TCG" >&2
    accel=tcg
    status=0
    run_qemu tcg || status=$?
fi
elapsed=$(echo "$(date +%s.%N) - $started" | bc 2>/dev/null || echo "?")
tr -d '\r' <"$log"
echo "run-qemu.sh: accel=$accel smp=$smp qemu_status=$status wall_s=$elapsed"

problems=()
[ "$status" = 124 ] && problems+=("QEMU did not exit within ${timeout_s}s (the guest did not power off)")
[ "$status" != 0 ] && [ "$status" != 124 ] && problems+=("QEMU exited with status $status: $(head -c 300 "$work/qemu.err")")
grep -q "^vmtest summary: passed=[0-9]* failed=0" <(tr -d '\r' <"$log") || problems+=("no 'vmtest summary: ... failed=0' line")
grep -q "FAIL" "$log" && problems+=("a check printed FAIL")
for check in serial boot blk rng net cpus; do
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
echo "run-qemu.sh: PASS (image sectors 2048..2175 verified, guest powered off)"
