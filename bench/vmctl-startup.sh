#!/bin/bash
# bench/vmctl-startup.sh [BIN_DIR] [--runs N] [--rounds R]: issue 14 item 4, measured as ratios in one run.
#
#   1. vmctl's start-up: `vmctl -s /nonexistent status` (exec, runtime start-up, argument
#      parsing, a failed connect) against a minimal C program (`int main(void){return 0;}`,
#      cc -O2, dynamically linked as usual), alternating: median wall time from spawn to exit
#      and median CPU time (user + system) of the child. vmctl is installed into a temporary
#      directory first (as install(1) or dpkg would); the linker's own file in BIN_DIR is
#      measured too.
#   2. The daemon's share of `vmctl status`: on one open control connection, request ->
#      last reply (vmdInfoVMEnd), median over N requests (bench/statusrtt.c), with 1 VM
#      and with 100 VMs configured (disabled, so nothing boots); the rows are counted.
#      Both daemons run at once, measured alternately in R rounds (11); the median of the
#      rounds' medians is printed with each round's.
#
# BIN_DIR holds vmd and vmctl (default .build/debug). Part 2 needs root (vmd); without root
# only part 1 runs. Needs cc and python3. Prints the load averages before and after.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
root="$(cd "$here/.." && pwd -P)"
bin="$root/.build/debug"
runs=200
rounds=11
while [ $# -gt 0 ]; do
	case "$1" in
	-h|--help) sed -n '2,17p' "$0"; exit 0 ;;
	--runs) runs="$2"; shift 2 ;;
	--rounds) rounds="$2"; shift 2 ;;
	*) bin="$1"; shift ;;
	esac
done
case "$bin" in /*) ;; *) bin="$(cd "$bin" && pwd -P)" ;; esac
fail() { echo "bench/vmctl-startup.sh: $*" >&2; exit 1; }
[ -x "$bin/vmctl" ] || fail "$bin/vmctl not found"
command -v cc >/dev/null || fail "cc not installed"
command -v python3 >/dev/null || fail "python3 not installed"

tmp="$(mktemp -d)"
vmd_pids=()
cleanup() { rm -rf "$tmp"; }
trap 'cleanup' EXIT
cc -O2 -o "$tmp/spawntime" "$here/spawntime.c"
cc -O2 -o "$tmp/statusrtt" "$here/statusrtt.c"
echo 'int main(void){return 0;}' > "$tmp/minimal.c"
cc -O2 -o "$tmp/minimal" "$tmp/minimal.c"

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "vmctl: $bin/vmctl ($(ldd "$bin/vmctl" 2>&1 | grep -c '=>' || true) shared libraries)"
# vmctl as installed (install(1) and dpkg write it front to back) and as the linker left it
# in BIN_DIR: the same bytes start measurably slower from the linker's output file (its page
# cache is filled differently; 15-20% more CPU here), so the ratio is the installed copy's.
install -m 755 "$bin/vmctl" "$tmp/vmctl"
{ read -r c_ms c_cpu; read -r vmctl_ms vmctl_cpu; read -r built_ms built_cpu; } < <("$tmp/spawntime" "$runs" "$tmp/minimal" \
	-- "$tmp/vmctl" -s "$tmp/none.sock" status -- "$bin/vmctl" -s "$tmp/none.sock" status)
printf '%-44s %8s ms wall %8s ms CPU\n' "minimal C program (median of $runs)" "$c_ms" "$c_cpu" \
	"vmctl -s missing.sock status (installed)" "$vmctl_ms" "$vmctl_cpu" \
	"the same, run from BIN_DIR (linker's file)" "$built_ms" "$built_cpu"
python3 -c "import sys; a = [float(x) for x in sys.argv[1:]]; print('start-up ratio vmctl / C: %.2fx wall, %.2fx CPU (target <= 3x; from BIN_DIR %.2fx, %.2fx)' % (a[2] / a[0], a[3] / a[1], a[4] / a[0], a[5] / a[1]))" \
	"$c_ms" "$c_cpu" "$vmctl_ms" "$vmctl_cpu" "$built_ms" "$built_cpu"

if [ "$(id -u)" != 0 ] || [ ! -x "$bin/vmd" ]; then
	echo "daemon share: skipped (needs root and $bin/vmd)"
	echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
	exit 0
fi

# The daemon's share: request received -> last reply, on an open connection.
# Both daemons run at once and are measured alternately, ROUNDS rounds of N
# requests each: the two medians come from the same minutes of load.
vmd_pids=()
cleanup() { for p in "${vmd_pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
start_vmd() { # start_vmd COUNT
	local n="$1" conf="$tmp/vm$1.conf" log="$tmp/vmd$1.log"
	: > "$conf"
	for i in $(seq 1 "$n"); do printf 'vm "b%d" {\n    disable\n    memory 64M\n    boot "/dev/null"\n}\n' "$i" >> "$conf"; done
	"$bin/vmd" -d -f "$conf" -s "$tmp/vmd$n.sock" > "$log" 2>&1 &
	vmd_pids+=($!)
	for _ in $(seq 1 200); do grep -q "startup complete" "$log" 2>/dev/null && break; sleep 0.05; done
	grep -q "startup complete" "$log" || { cat "$log" >&2; fail "vmd did not start"; }
}
start_vmd 1
start_vmd 100
ones=(); hundreds=()
for _ in $(seq 1 "$rounds"); do
	read -r ms one_rows < <("$tmp/statusrtt" "$tmp/vmd1.sock" "$runs"); ones+=("$ms")
	read -r ms hundred_rows < <("$tmp/statusrtt" "$tmp/vmd100.sock" "$runs"); hundreds+=("$ms")
done
python3 - "$one_rows" "$hundred_rows" "${ones[*]}" "${hundreds[*]}" <<'PY'
import statistics, sys
one_rows, hundred_rows = sys.argv[1], sys.argv[2]
ones = [float(x) for x in sys.argv[3].split()]
hundreds = [float(x) for x in sys.argv[4].split()]
def show(label, rows, v):
    print('%-44s %8.3f ms (%s rows; rounds %s)' % (label, statistics.median(v), rows, ' '.join('%.3f' % x for x in v)))
show('daemon share of status, 1 VM', one_rows, ones)
show('daemon share of status, 100 VMs', hundred_rows, hundreds)
print('daemon share ratio 100 VMs / 1 VM: %.2fx (median of rounds; target <= 3x)'
      % (statistics.median(hundreds) / statistics.median(ones)))
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
