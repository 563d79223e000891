#!/bin/bash
# The README's first command (`make demo`): boot the vmtest guest under the
# real vmd with a disk, a NIC and rng, show its console, then stop it
# gracefully through vmmci. Runs as root; everything lives in a network
# namespace and a temporary directory that are removed at the end.
set -euo pipefail

BIN=${1:-.build/debug}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
case "$BIN" in /*) ;; *) BIN="$ROOT/$BIN" ;; esac
ELF="$ROOT/build/vmtest.elf"
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (vmd needs /dev/kvm, taps and users)" >&2; exit 1; }
[ -e /dev/kvm ] || { echo "demo: /dev/kvm is missing: this machine cannot run VMs" >&2; exit 1; }

work=$(mktemp -d /tmp/vmd-demo.XXXXXX)
chmod 755 "$work"
ns="vmddemo$$"
tap="vmdemo0"
vmd_pid=""
cleanup() {
	[ -n "$vmd_pid" ] && kill "$vmd_pid" 2>/dev/null && wait "$vmd_pid" 2>/dev/null || true
	ip netns delete "$ns" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# A disk with the pattern vmtest checks: sector n begins with "vmdisk n\n".
python3 - "$work/disk.img" <<'PY'
import sys
with open(sys.argv[1], "wb") as f:
    for n in range(8192):
        s = b"vmdisk %d\n" % n
        f.write(s + b"\0" * (512 - len(s)))
PY

cat > "$work/vm.conf" <<CONF
# The demo VM: vmtest with 2 vCPUs, a disk, a NIC and (always) rng + vmmci.
vm "demo" {
	memory 64M
	cpus 2
	boot "$ELF"
	cmdline "ip=10.0.2.15/24 gw=10.0.2.2 stay"
	disk "$work/disk.img"
	interface "$tap"
}
CONF

echo "== vmd -n: checking the configuration"
"$BIN/vmd" -n -f "$work/vm.conf"

ip netns add "$ns"
ip -n "$ns" link set lo up
echo "== starting vmd in network namespace $ns"
ip netns exec "$ns" "$BIN/vmd" -d -vv -f "$work/vm.conf" -s "$work/vmd.sock" 2>"$work/vmd.log" &
vmd_pid=$!

# The tap appears when the VM starts; its host side is the guest's gateway.
for _ in $(seq 1 200); do
	ip -n "$ns" link show "$tap" >/dev/null 2>&1 && break
	sleep 0.05
done
ip -n "$ns" addr add 10.0.2.2/24 dev "$tap"
ip -n "$ns" link set "$tap" up

for _ in $(seq 1 600); do
	grep -q "vmtest: stay" "$work/vmd.log" && break
	kill -0 "$vmd_pid" 2>/dev/null || break
	sleep 0.1
done
echo "== the guest's console"
sed -n 's/^vm demo: console: //p' "$work/vmd.log"
echo "== vmctl status"
"$BIN/vmctl" -s "$work/vmd.sock" status
echo "== vmctl stop -w demo (graceful, through vmmci)"
"$BIN/vmctl" -s "$work/vmd.sock" stop -w demo
python3 - "$work/disk.img" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
for n in range(2048, 2176):
    s = data[n * 512:(n + 1) * 512]
    want = b"vmtest sector %d\n" % n
    if s != want + b"\0" * (512 - len(want)):
        sys.exit("demo: sector %d does not hold what the guest wrote" % n)
print("== host: sectors 2048..2175 hold what the guest wrote")
PY
if grep -q "vmtest summary: passed=[0-9]* failed=0" "$work/vmd.log"; then
	echo "== demo OK"
else
	echo "== demo FAILED; daemon log:"; cat "$work/vmd.log"; exit 1
fi
