#!/bin/sh
# Memory of vmd's processes: starts `VMD -d` with one vmtest VM (a disk, the
# default devices), waits until it runs, and prints each process's size,
# RSS, PSS and private dirty memory (/proc/PID/smaps_rollup, kB), then stops.
# Usage: bench/pss.sh path/to/vmd [guest.elf]   (root, /dev/kvm)
set -eu
vmd=$1
elf=${2:-$(dirname "$0")/../build/vmtest.elf}
elf=$(readlink -f "$elf")
dir=$(mktemp -d /tmp/vmd-pss.XXXXXX)
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
truncate -s 16M "$dir/disk.img"
cat > "$dir/vm.conf" <<EOF
vm "pss" {
	memory 64M
	boot "$elf"
	cmdline "stay"
	disk "$dir/disk.img"
}
EOF
"$vmd" -d -f "$dir/vm.conf" -s "$dir/sock" 2> "$dir/log" &
pid=$!
i=0
until grep -q "vm pss: started" "$dir/log"; do
	i=$((i + 1)); [ $i -lt 200 ] || { cat "$dir/log" >&2; exit 1; }
	sleep 0.1
done
sleep 1
echo "binary: $vmd ($(stat -c %s "$vmd") bytes)"
printf '%-22s %8s %8s %8s %8s\n' process VSZ RSS PSS PrivDirty
tree() { echo "$1"; for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do tree "$c"; done; }
for p in $(tree $pid); do
	name=$(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-22)
	awk -v n="$name" -v vsz="$(awk '/^VmSize/ {print $2}' /proc/$p/status)" '
		/^Rss:/ {r=$2} /^Pss:/ {s=$2} /^Private_Dirty:/ {d=$2}
		END {printf "%-22s %8s %8s %8s %8s\n", n, vsz, r, s, d}' /proc/$p/smaps_rollup
done
