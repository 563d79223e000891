#!/usr/bin/env python3
"""vmbench.py: boot time and device throughput of our vmd against QEMU, same guest.

Called by bench/run.sh (see bench/README.md). Runs build/vmtest.elf
  1. boot:    no disk, no NIC; time to the guest's first console output
  2. devices: disk + NIC + rng, vmtest's `bench` mode; also gives boot times with devices
under our vmd (BIN_DIR/vmd -d -vv, one fresh daemon per run) and under
qemu-system-x86_64 -M pc -accel kvm, and prints medians side by side.

Timestamps: every line of vmd's stderr and every chunk of QEMU's serial output is
stamped with time.monotonic() the moment it is read from the pipe.
Networking stays inside two private network namespaces (one per VMM), deleted at the end.
"""

import argparse
import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.realpath(__file__))
ROOT = os.path.dirname(HERE)
ELF = os.path.join(ROOT, "build", "vmtest.elf")
MEMORY_MB = 64
GUEST_NET = "ip=10.0.2.15/24 gw=10.0.2.2 bench_rx=3"
HOST_ADDR = "10.0.2.2/24"
OUR_TAP = "vmbt0"
QEMU_TAP = "tap0"
BENCH_KEYS = [  # (label, bench name, key in its line, unit)
    ("blk_randread_qd1", "blk_randread_qd1", "iops", "IOPS"),
    ("blk_randread_qd32", "blk_randread_qd32", "iops", "IOPS"),
    ("blk_flush_lat median", "blk_flush_lat", "median_us", "us"),
    ("blk_flush_lat p99", "blk_flush_lat", "p99_us", "us"),
    ("blk_seqwrite64k", "blk_seqwrite64k", "kib_per_s", "KiB/s"),
    ("net_tx_1500", "net_tx_1500", "fps", "frames/s"),
    # issue 15: 64 KiB TCPv4 GSO frames (CSUM + HOST_TSO4), guest -> host
    ("net_tx_gso64k", "net_tx_gso64k", "mb_per_s", "MB/s"),
    # issue 14: the same QD1 work polled and by interrupt (MSI-X when offered), with latency
    ("blk QD1 polled", "blk_qd1_poll", "iops", "IOPS"),
    ("blk QD1 polled median", "blk_qd1_poll", "median_us", "us"),
    ("blk QD1 polled p99", "blk_qd1_poll", "p99_us", "us"),
    ("blk QD1 by interrupt", "blk_qd1_irq", "iops", "IOPS"),
    ("blk QD1 by interrupt median", "blk_qd1_irq", "median_us", "us"),
    ("blk QD1 by interrupt p99", "blk_qd1_irq", "p99_us", "us"),
    ("blk QD32 by interrupt", "blk_qd32_irq", "iops", "IOPS"),
    ("net tx 1500 by interrupt", "net_tx_irq", "fps", "frames/s"),
    ("net_rx_1500", "net_rx_1500", "fps", "frames/s"),
    ("net_rx_1500 device beside sender", "net_rx_1500_r2", "fps", "frames/s"),
    ("net_rx_1500 device beside vCPU", "net_rx_1500_r3", "fps", "frames/s"),
]
# Host limits for the same work (issue 14): (label, key in host_limits(), unit, bench key it bounds)
LIMIT_KEYS = [
    ("fio psync QD1 4k randread", "psync1_iops", "IOPS", ("blk_qd1_irq", "iops")),
    ("fio psync QD1 median", "psync1_median_us", "us", ("blk_qd1_irq", "median_us")),
    ("fio psync QD1 p99", "psync1_p99_us", "us", ("blk_qd1_irq", "p99_us")),
    ("fio io_uring QD1 4k randread", "uring1_iops", "IOPS", ("blk_qd1_irq", "iops")),
    ("fio io_uring QD32 4k randread", "uring32_iops", "IOPS", ("blk_qd32_irq", "iops")),
    ("tap readv loop, sender on the other CPU", "tapread_fps", "frames/s", ("net_rx_1500_r3", "fps")),
    ("tap readv loop CPU per frame", "tapread_ns_per_frame", "ns", None),
    ("eventfd round trip median (2 processes)", "eventfd_median_us", "us", None),
    ("eventfd round trip p99", "eventfd_p99_us", "us", None),
]

# net_rx_1500: once the guest says net_rx_ready, the host floods it with
# 1500-byte frames (1472-byte UDP datagrams to 10.0.2.15:9) from inside its
# namespace: bench/udpflood.c, 64 datagrams per sendmmsg(2), one sender,
# stopped when the guest prints the round's result. The guest runs three
# rounds (bench_rx=3). On these 2-CPU hosts three busy threads share two
# CPUs (the guest's vCPU, which spins on its ring; the device that feeds it;
# the sender), so what a round measures depends on where the scheduler puts
# them: round 1 leaves that to the scheduler; rounds 2 and 3 fix it, the same
# way for both VMMs (vCPU threads on CPU 0, the sender on CPU 1):
#   round 2: every other thread of the VMM (our vionet process; QEMU's main
#            loop and workers) on CPU 1, beside the sender;
#   round 3: those threads on CPU 0, beside the vCPU.
# Affinities are restored when round 3 ends.
FLOOD_EXE = None   # set by main(): udpflood compiled into the work directory
LIMIT_NETNS = None  # set by main(): the tap reader's namespace (host limits)
RX_ROUNDS = 3


def compiled(workdir, name):
    """bench/NAME.c compiled with cc into the work directory (once); its path."""
    exe = os.path.join(workdir, name)
    if not os.path.exists(exe):
        subprocess.run(["cc", "-O2", "-o", exe, os.path.join(HERE, name + ".c")], check=True,
                       capture_output=True, timeout=60)
    return exe


def build_flood(workdir):
    global FLOOD_EXE
    FLOOD_EXE = compiled(workdir, "udpflood")


def start_flood(netns, seconds, cpus=None):
    """udpflood at the guest's address from inside `netns`, on `cpus` if given."""
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, FLOOD_EXE, "10.0.2.15", str(seconds), "1472"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)


def threads_of(pid):
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def thread_name(tid):
    try:
        with open(f"/proc/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def pin(tids, cpus):
    for t in tids:
        try:
            os.sched_setaffinity(t, cpus)
        except OSError:
            pass        # a thread that ended meanwhile


class RxRounds:
    """Drives the guest's net_rx_1500 rounds from its console lines.
    `placement()` returns (vCPU thread ids, device thread ids) of the VMM."""

    def __init__(self, netns, placement):
        self.netns, self.placement = netns, placement
        self.flood, self.pinned = None, []
        self.all_cpus = set(range(os.cpu_count() or 1))

    def line(self, line):
        m = re.search(r"vmtest bench: net_rx_ready round=(\d+)", line)
        if m:
            self.start(int(m.group(1)))
        elif re.search(r"vmtest bench: net_rx_1500(_r\d+)? ", line):
            self.stop_flood()
            if re.search(r"net_rx_1500_r%d " % RX_ROUNDS, line):
                self.unpin()

    def start(self, round_):
        self.stop_flood()
        sender_cpus = None
        if round_ >= 2 and len(self.all_cpus) >= 2:
            vcpus, device = self.placement()
            if not vcpus or not device:
                log(f"net_rx_1500 round {round_}: found {len(vcpus)} vCPU and {len(device)} device threads")
            pin(vcpus, {0})
            pin(device, {1} if round_ == 2 else {0})
            self.pinned = vcpus + device
            sender_cpus = {1}
        else:
            self.unpin()
        if not self.netns or not FLOOD_EXE:
            return
        self.flood = start_flood(self.netns, 5, sender_cpus)

    def stop_flood(self):
        if self.flood:
            self.flood.kill()
            self.flood.wait()
            self.flood = None

    def unpin(self):
        pin(self.pinned, self.all_cpus)
        self.pinned = []

    def close(self):
        self.stop_flood()
        self.unpin()


def descendants(pid):
    """Process ids below `pid` with their command lines."""
    parent, cmd = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd[int(d)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            pass
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p and c not in out:
                out[c] = cmd.get(c, "")
                todo.append(c)
    return out


def ours_placement(vmd_pid):
    """Our VM process ("vmd: vm bench": vCPU threads and its event loop) and
    its vionet0 process ("vmd: vm bench vionet0"), below our daemon."""
    procs = descendants(vmd_pid)
    vm = [t for p, c in procs.items() if c == "vmd: vm bench" for t in threads_of(p)]
    net = [t for p, c in procs.items() if c == "vmd: vm bench vionet0" for t in threads_of(p)]
    return vm, net


def qemu_placement(pid):
    """QEMU's vCPU threads ("CPU 0/KVM") and every other thread of it."""
    tids = threads_of(pid)
    vcpus = [t for t in tids if thread_name(t).startswith("CPU ")]
    return vcpus, [t for t in tids if t not in vcpus]


class RunFailed(Exception):
    pass


def log(msg):
    print("vmbench: " + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- helpers

def write_image(path, megabytes):
    """Sector n begins with "vmdisk <n>\\n" (vmtest's blk check reads the first 1 MiB)."""
    sectors = megabytes * 2048
    with open(path, "wb") as f:
        chunk = bytearray()
        for n in range(sectors):
            s = b"vmdisk %d\n" % n
            chunk += s + b"\0" * (512 - len(s))
            if len(chunk) >= 1 << 20:
                f.write(chunk)
                chunk = bytearray()
        f.write(chunk)
        # On disk before the guest starts: else the guest's first FLUSH pays for this write.
        f.flush()
        os.fsync(f.fileno())


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode


def parse_kv(line):
    return {k: v for k, v in re.findall(r"([a-z_0-9]+)=([^ ]+)", line)}


def guest_results(lines):
    """From the guest's console lines: bench numbers, entry_to_console_us, failures."""
    bench, entry_us, summary, fails = {}, None, None, []
    for line in lines:
        m = re.match(r"vmtest bench: (\S+) (.*)$", line)
        if m:
            if " FAIL" in " " + m.group(2) or m.group(2).startswith("skip"):
                fails.append(line)
            else:
                bench[m.group(1)] = parse_kv(m.group(2))
        if line.startswith("vmtest: boot ok"):
            kv = parse_kv(line)
            if "entry_to_console_us" in kv:
                entry_us = float(kv["entry_to_console_us"])
        if line.startswith("vmtest summary:"):
            summary = line
        if re.match(r"vmtest: \S+ FAIL", line):
            fails.append(line)
    return bench, entry_us, summary, fails


def pump(stream, on_chunk, deadline, stop):
    """Reads `stream` until EOF, `stop()` or the deadline; on_chunk(bytes, t)."""
    fd = stream.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RunFailed("timed out")
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not r:
            continue
        data = os.read(fd, 65536)
        t = time.monotonic()
        if not data:
            return
        on_chunk(data, t)
        if stop():
            return


# ---------------------------------------------------------------- our vmd

DISK_FORMAT = "raw"


def prepare_image(path, megabytes):
    """The bench image: raw, or (--disk-format qcow2) the same data converted to a
    fully allocated qcow2 (64 KiB clusters) by qemu-img. Returns its path."""
    write_image(path, megabytes)
    if DISK_FORMAT == "raw":
        return path
    q = path + ".qcow2"
    if DISK_FORMAT == "overlay":
        # An empty overlay of the raw image: reads go through to it, writes allocate.
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", path, "-F", "raw", q], check=True)
    else:
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", path, q], check=True)
    with open(q, "rb") as f:
        os.fsync(f.fileno())
    return q


def run_ours(vmd, workdir, disk=None, netns=None, timeout=120, scale=100, elf=None, extra=(), guest_args=None):
    """One fresh vmd daemon, one VM; returns a dict of timings and the console lines.

    The VM is configured `disable`d and started with `vmctl start` once the daemon
    says "startup complete", so the boot time does not include the daemon's own start
    (with autostart, vmd logs 'starting' while its vmm process is still initialising)."""
    vmctl = os.path.join(os.path.dirname(vmd), "vmctl")
    conf = os.path.join(workdir, "vm.conf")
    sock = os.path.join(workdir, "vmd.sock")
    cmdline = ""
    body = ["    disable", f"    memory {MEMORY_MB}M", f'    boot "{elf or ELF}"'] + [f"    {x}" for x in extra]
    if disk and guest_args is not None:
        # Another guest workload (bench/blk-cold.py): the disk only, no NIC.
        cmdline = guest_args
        body += [f'    disk "{disk}"']
    elif disk:
        cmdline = f"bench bench_scale={scale} " + GUEST_NET
        body += [f'    disk "{disk}"', f'    interface "{OUR_TAP}"']
    body.append(f'    cmdline "{cmdline}"')
    with open(conf, "w") as f:
        f.write('vm "bench" {\n' + "\n".join(body) + "\n}\n")

    argv = [vmd, "-d", "-vv", "-f", conf, "-s", sock]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    t_spawn = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    tap_thread = None
    if netns:
        tap_thread = threading.Thread(target=configure_tap_when_it_appears,
                                      args=(netns, OUR_TAP, t_spawn + 30), daemon=True)
        tap_thread.start()
    stamps, console, log_lines = {}, [], []
    partial = [b""]
    starter = []
    rx = RxRounds(netns, lambda: ours_placement(proc.pid))

    def on_chunk(data, t):
        buf = partial[0] + data
        *lines, partial[0] = buf.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            log_lines.append(line)
            if line.startswith("vmd: startup complete") and not starter:
                stamps["vmctl"] = time.monotonic()
                starter.append(subprocess.Popen([vmctl, "-s", sock, "start", "bench"], stdin=subprocess.DEVNULL,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            elif "vmd: vm bench: starting" in line:
                stamps.setdefault("starting", t)
            elif line.startswith("vm bench: pci slot") and "vmproc" not in stamps:
                stamps["vmproc"] = t     # "pci slot 1": VM built, first device process spawned
            if line.startswith("vm bench: started:"):
                stamps.setdefault("started", t)
            elif line.startswith("vm bench: console: "):
                stamps.setdefault("console", t)
                console.append(line[len("vm bench: console: "):])
                rx.line(line)
            elif "vmd: vm bench: stopped" in line:
                stamps["stopped"] = t
                stamps["stop_line"] = line

    try:
        pump(proc.stderr, on_chunk, t_spawn + timeout, lambda: "stopped" in stamps)
    except RunFailed:
        pass
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if tap_thread:
            tap_thread.join(timeout=1)
        rx.close()
        for c in starter:
            try:
                _, err = c.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                c.kill()
                _, err = c.communicate()
            if c.returncode != 0:
                raise RunFailed(f"vmctl start bench: exit {c.returncode}: {err.decode(errors='replace').strip()}")
    if "stopped" not in stamps or "guest powered off" not in stamps.get("stop_line", ""):
        tail = "\n    ".join(log_lines[-12:])
        raise RunFailed(f"vmd: the guest did not power off within {timeout}s; log tail:\n    {tail}")
    if "console" not in stamps or "starting" not in stamps:
        raise RunFailed("vmd: no 'starting' or no console line in the log (is -vv supported?)")
    bench, entry_us, summary, fails = guest_results(console)
    return {
        "daemon_to_ready_ms": (stamps["vmctl"] - t_spawn) * 1e3,
        "vmctl_to_first_line_ms": (stamps["console"] - stamps["vmctl"]) * 1e3,
        "starting_to_started_ms": (stamps["started"] - stamps["starting"]) * 1e3 if "started" in stamps else None,
        "starting_to_vmproc_ms": (stamps["vmproc"] - stamps["starting"]) * 1e3 if "vmproc" in stamps else None,
        "first_line_ms": (stamps["console"] - stamps["starting"]) * 1e3,
        "entry_to_console_us": entry_us,
        "guest_wall_ms": (stamps["stopped"] - stamps["starting"]) * 1e3,
        "bench": bench, "summary": summary, "fails": fails, "console": console, "log": log_lines,
    }


def configure_tap_when_it_appears(netns, tap, deadline):
    """vmd's priv process creates the tap in the namespace; give it the gateway address."""
    while time.monotonic() < deadline:
        if ip("-n", netns, "link", "show", tap, check=False) == 0:
            ip("-n", netns, "addr", "add", HOST_ADDR, "dev", tap, check=False)
            ip("-n", netns, "link", "set", tap, "up", check=False)
            return
        time.sleep(0.005)


# ---------------------------------------------------------------- QEMU

QEMU_AIO = "threads"   # QEMU's default; --qemu-aio io_uring changes it


def run_qemu(accel, workdir, disk=None, netns=None, pio_notify=False, timeout=120, scale=100, vhost=False):
    """QEMU -M pc -kernel vmtest.elf with the serial port on a pipe (vhost: the
    NIC's data path in the host kernel's vhost-net, the reference column)."""
    cmdline = (f"bench bench_scale={scale} " + GUEST_NET) if disk else ""
    argv = ["qemu-system-x86_64", "-M", "pc", "-accel", accel, "-m", str(MEMORY_MB),
            "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
            "-name", "bench,debug-threads=on",   # vCPU threads named "CPU 0/KVM" (net_rx_1500 rounds)
            "-kernel", ELF, "-append", cmdline, "-serial", "stdio"]
    if disk:
        dev = ",modern-pio-notify=on" if pio_notify else ""
        argv += ["-drive", f"file={disk},format={'raw' if DISK_FORMAT == 'raw' else 'qcow2'},if=none,id=disk0,cache=writeback,aio={QEMU_AIO}",
                 "-device", f"virtio-blk-pci,drive=disk0,disable-legacy=on{dev}",
                 "-device", f"virtio-rng-pci,disable-legacy=on{dev}",
                 "-netdev", f"tap,id=net0,ifname={QEMU_TAP},script=no,downscript=no,vhost={'on' if vhost else 'off'}",
                 "-device", f"virtio-net-pci,netdev=net0,disable-legacy=on,mac=52:54:00:12:34:56{dev}"]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    errpath = os.path.join(workdir, "qemu.err")
    with open(errpath, "w") as err:
        t_spawn = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    stamps, out = {}, bytearray()
    rx = RxRounds(netns, lambda: qemu_placement(proc.pid))
    partial = [b""]

    def on_chunk(data, t):
        stamps.setdefault("byte", t)
        out.extend(data)
        if b"\n" in out:
            stamps.setdefault("line", t)
        *lines, partial[0] = (partial[0] + data).split(b"\n")
        for raw in lines:
            rx.line(raw.decode("utf-8", "replace"))

    timed_out = False
    try:
        pump(proc.stdout, on_chunk, t_spawn + timeout, lambda: False)
    except RunFailed:
        timed_out = True
    finally:
        if timed_out:
            proc.kill()
        rx.close()
        try:
            proc.wait(timeout=10)   # serial EOF comes a moment before the exit status
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            timed_out = True
    t_exit = time.monotonic()
    if timed_out or proc.returncode != 0:
        why = open(errpath).read()[:300]
        raise RunFailed(f"qemu ({accel}): {'timed out' if timed_out else 'exit status %d' % proc.returncode} {why}")
    if "byte" not in stamps:
        raise RunFailed(f"qemu ({accel}): no serial output")
    console = out.decode("utf-8", "replace").replace("\r", "").splitlines()
    bench, entry_us, summary, fails = guest_results(console)
    return {
        "first_byte_ms": (stamps["byte"] - t_spawn) * 1e3,
        "first_line_ms": (stamps.get("line", stamps["byte"]) - t_spawn) * 1e3,
        "entry_to_console_us": entry_us,
        "guest_wall_ms": (t_exit - t_spawn) * 1e3,
        "bench": bench, "summary": summary, "fails": fails, "console": console,
    }


# ---------------------------------------------------------------- report

def host_limits(workdir, image, image_mb):
    """fio on the same image file (page-cached, as the devices read it) and an
    eventfd wake-up round trip between two processes: this machine's floor for
    the work the guest's bench lines measure, taken between the VM runs."""
    out = {}
    for name, engine, depth in (("psync1", "psync", 1), ("uring1", "io_uring", 1), ("uring32", "io_uring", 32)):
        try:
            p = subprocess.run(["fio", f"--name={name}", f"--filename={image}", "--rw=randread", "--bs=4k",
                                f"--ioengine={engine}", f"--iodepth={depth}", "--runtime=2", "--time_based",
                                f"--size={image_mb}M", "--output-format=json"],
                               capture_output=True, text=True, timeout=60)
            job = json.loads(p.stdout)["jobs"][0]["read"]
            out[name + "_iops"] = job["iops"]
            pct = job.get("clat_ns", {}).get("percentile", {})
            if "50.000000" in pct:
                out[name + "_median_us"] = pct["50.000000"] / 1e3
                out[name + "_p99_us"] = pct["99.000000"] / 1e3
        except (OSError, ValueError, KeyError, IndexError, subprocess.TimeoutExpired) as e:
            log(f"host limits: fio {name}: {e}")
    tap_limit(workdir, out)
    try:
        exe = compiled(workdir, "eventfd-rtt")
        kv = parse_kv(subprocess.run([exe, "20000"], capture_output=True, text=True, timeout=60).stdout)
        out["eventfd_median_us"] = float(kv["median_us"])
        out["eventfd_p99_us"] = float(kv["p99_us"])
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
        log(f"host limits: eventfd round trip: {e}")
    return out


def tap_limit(workdir, out):
    """net_rx_1500's work without a guest: bench/tapread.c reads the frames
    udpflood sends, on CPU 0 with the sender on CPU 1 (as round 3 places the
    sender), in a namespace of its own."""
    if not FLOOD_EXE or (os.cpu_count() or 1) < 2:
        return
    ns = LIMIT_NETNS
    reader = None
    try:
        exe = compiled(workdir, "tapread")
        ip("netns", "add", ns)
        reader = subprocess.Popen(["ip", "netns", "exec", ns, exe, "vmbl0", "1"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True,
                                  preexec_fn=lambda: os.sched_setaffinity(0, {0}))
        if reader.stdout.readline().strip() != "tapread ready":
            raise RunFailed("tapread did not start")
        ip("-n", ns, "addr", "add", HOST_ADDR, "dev", "vmbl0")
        ip("-n", ns, "link", "set", "vmbl0", "up")
        ip("-n", ns, "neigh", "add", "10.0.2.15", "lladdr", "52:54:00:12:34:56", "dev", "vmbl0")
        flood = start_flood(ns, 3, {1})
        try:
            kv = parse_kv(reader.communicate(timeout=20)[0])
        finally:
            flood.kill()
            flood.wait()
        out["tapread_fps"] = float(kv["fps"])
        out["tapread_ns_per_frame"] = float(kv["cpu_ns_per_frame"])
    except (OSError, ValueError, KeyError, RunFailed, subprocess.SubprocessError) as e:
        log(f"host limits: tap readv loop: {e}")
    finally:
        if reader and reader.poll() is None:
            reader.kill()
            reader.wait()
        ip("netns", "del", ns, check=False)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if unit in ("IOPS", "frames/s"):
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def spread(values):
    values = [v for v in values if v is not None]
    if len(values) < 2:
        return ""
    lo, hi = min(values), max(values)
    if hi < 100:
        return f" ({lo:,.1f}-{hi:,.1f})"
    return f" ({lo:,.0f}-{hi:,.0f})"


def table(title, header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join(str(h).ljust(widths[i]) if i == 0 else str(h).rjust(widths[i]) for i, h in enumerate(header))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(r)))


def check_guest(name, r, want_bench):
    """A run counts only if every vmtest check passed."""
    if r["fails"] or not r["summary"] or "failed=0" not in r["summary"]:
        raise RunFailed(f"{name}: guest checks failed: {r['fails'][:3] or r['summary']}")
    if want_bench:
        for _, b, key, _ in BENCH_KEYS:
            if key not in r["bench"].get(b, {}):
                raise RunFailed(f"{name}: no '{b} {key}=' bench line")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bin_dir", help="directory holding our vmd binary")
    ap.add_argument("--boot-runs", type=int, default=7, help="boot-only runs per VMM (default 7)")
    ap.add_argument("--bench-runs", type=int, default=3, help="device bench runs per VMM (default 3)")
    ap.add_argument("--bench-scale", type=int, default=1000,
                    help="vmtest bench_scale: op counts in percent of vmtest's defaults (default 1000)")
    ap.add_argument("--image-mb", type=int, default=64, help="disk image size in MiB (default 64)")
    ap.add_argument("--disk-format", default="raw", choices=["raw", "qcow2", "overlay"],
                    help="bench image: raw; qcow2 (the raw image converted by qemu-img, fully "
                         "allocated); overlay (an empty qcow2 overlay of the raw image)")
    ap.add_argument("--no-qemu", action="store_true", help="our vmd only")
    ap.add_argument("--no-qemu-pio", action="store_true",
                    help="skip the second QEMU device run with modern-pio-notify=on (notify through an I/O BAR, like ours)")
    ap.add_argument("--no-tcg", action="store_true", help="skip the QEMU TCG boot reference")
    ap.add_argument("--no-qemu-vhost", action="store_true",
                    help="skip the reference device run of QEMU with vhost=on (it needs /dev/vhost-net)")
    ap.add_argument("--no-limits", action="store_true",
                    help="skip the host limits (fio on the image, eventfd round trip) between device runs")
    ap.add_argument("--qemu-aio", default="threads", choices=["threads", "io_uring"],
                    help="QEMU's -drive aio= (default threads, QEMU's own default and run-qemu.sh's)")
    ap.add_argument("--netns", default=f"vmbench-{os.getpid()}",
                    help="prefix of the two private network namespaces (PREFIX-v for ours, PREFIX-q for QEMU)")
    args = ap.parse_args()

    global QEMU_AIO, DISK_FORMAT
    QEMU_AIO = args.qemu_aio
    DISK_FORMAT = args.disk_format
    vmd = os.path.join(args.bin_dir, "vmd")
    for exe in (vmd, os.path.join(args.bin_dir, "vmctl")):
        if not os.access(exe, os.X_OK):
            sys.exit(f"vmbench: {exe}: no such executable (build first: make build)")
    if not os.path.isfile(ELF):
        sys.exit(f"vmbench: {ELF}: not built (make -C guests/vmtest)")
    if os.geteuid() != 0:
        sys.exit("vmbench: needs root (vmd, /dev/kvm, network namespace, tap)")
    qemu = not args.no_qemu
    if qemu and subprocess.run(["sh", "-c", "command -v qemu-system-x86_64"], stdout=subprocess.DEVNULL).returncode != 0:
        log("qemu-system-x86_64 not installed: our vmd only")
        qemu = False

    started = time.monotonic()
    load_before = open("/proc/loadavg").read().split()[:3]
    workdir = tempfile.mkdtemp(prefix="vmbench.")
    # One namespace per VMM: both taps carry 10.0.2.2/24, and with both in one
    # namespace the replies to one guest could leave through the other's tap.
    ns_ours, ns_qemu = args.netns + "-v", args.netns + "-q"
    global LIMIT_NETNS
    LIMIT_NETNS = args.netns + "-l"
    for ns in (ns_ours, ns_qemu, LIMIT_NETNS):
        if ip("netns", "pids", ns, check=False) == 0:
            sys.exit(f"vmbench: network namespace {ns} exists already")
    image = os.path.join(workdir, "disk.img")
    try:
        build_flood(workdir)
    except (OSError, subprocess.SubprocessError) as e:
        log(f"bench/udpflood.c did not compile ({e}): no net_rx_1500 row")
    results = {"ours_boot": [], "qemu_boot": [], "tcg_boot": [], "ours_dev": [], "qemu_dev": [], "qemu_pio": [],
               "qemu_vhost": [], "limits": []}
    vhost = qemu and not args.no_qemu_vhost and args.bench_runs > 0
    if vhost and not os.path.exists("/dev/vhost-net"):
        log("no /dev/vhost-net on this host (vhost_net not loaded or not built): the QEMU vhost=on column is skipped")
        vhost = False
    results["vhost_note"] = None if vhost else ("not run: no /dev/vhost-net on this host" if qemu and not args.no_qemu_vhost else "not run")
    failures = []

    def attempt(key, name, fn):
        try:
            r = fn()
            check_guest(name, r, key in ("ours_dev", "qemu_dev", "qemu_pio", "qemu_vhost"))
            results[key].append(r)
            extra = ""
            if r["bench"]:
                extra = " " + " ".join(f"{b}:{r['bench'][b].get(k)}" for _, b, k, _ in BENCH_KEYS[:1] + BENCH_KEYS[2:3])
            log(f"{name}: first console line {r['first_line_ms']:.1f} ms{extra}")
        except RunFailed as e:
            failures.append(f"{name}: {e}")
            log(f"{name}: FAILED: {e}")

    try:
        for ns in (ns_ours, ns_qemu):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        if qemu:
            ip("-n", ns_qemu, "tuntap", "add", "dev", QEMU_TAP, "mode", "tap")
            ip("-n", ns_qemu, "addr", "add", HOST_ADDR, "dev", QEMU_TAP)
            ip("-n", ns_qemu, "link", "set", QEMU_TAP, "up")

        # 1. boot time, no disk and no NIC
        for i in range(args.boot_runs):
            attempt("ours_boot", f"boot ours #{i + 1}", lambda: run_ours(vmd, workdir))
            if qemu:
                attempt("qemu_boot", f"boot qemu-kvm #{i + 1}", lambda: run_qemu("kvm", workdir))
            if qemu and not args.no_tcg:
                attempt("tcg_boot", f"boot qemu-tcg #{i + 1}", lambda: run_qemu("tcg", workdir))

        # 2. devices: a fresh image per run (the guest writes sectors 2048..2175)
        for i in range(args.bench_runs):
            disk = prepare_image(image, args.image_mb)
            attempt("ours_dev", f"devices ours #{i + 1}", lambda: run_ours(vmd, workdir, disk, ns_ours, scale=args.bench_scale))
            if qemu:
                disk = prepare_image(image, args.image_mb)
                attempt("qemu_dev", f"devices qemu #{i + 1}", lambda: run_qemu("kvm", workdir, disk, ns_qemu, scale=args.bench_scale))
            if qemu and not args.no_qemu_pio:
                disk = prepare_image(image, args.image_mb)
                attempt("qemu_pio", f"devices qemu-pio #{i + 1}",
                        lambda: run_qemu("kvm", workdir, disk, ns_qemu, pio_notify=True, scale=args.bench_scale))
            if vhost:
                disk = prepare_image(image, args.image_mb)
                attempt("qemu_vhost", f"devices qemu-vhost #{i + 1}",
                        lambda: run_qemu("kvm", workdir, disk, ns_qemu, vhost=True, scale=args.bench_scale))
            if not args.no_limits:
                results["limits"].append(host_limits(workdir, image, args.image_mb))
    finally:
        for ns in (ns_ours, ns_qemu):
            ip("netns", "del", ns, check=False)
        subprocess.run(["rm", "-rf", workdir])

    load_after = open("/proc/loadavg").read().split()[:3]
    R = results

    def col(key, field):
        return [r[field] for r in R[key]]

    print(f"vmtest.elf, {MEMORY_MB} MiB, 1 vCPU; {os.cpu_count()} host CPUs; "
          f"load average {' '.join(load_before)} before, {' '.join(load_after)} after; "
          f"medians (min-max) of {args.boot_runs} boot and {args.bench_runs} device runs")
    if os.path.exists("/sys/module/kvm_pvm"):
        print("/dev/kvm is PVM (kvm_pvm): guest ring 0 and real mode are emulated, ring 3 runs natively")

    # ---- boot table
    if args.boot_runs > 0:
        print_boot_tables(R, col)
    if args.bench_runs > 0:
        print_device_table(R, args)
    print(f"\nwall time of the whole bench: {time.monotonic() - started:.0f} s")
    if failures:
        print("\nFAILED runs (not counted):")
        for f in failures:
            print("  " + f)
        return 1
    return 0


def print_boot_tables(R, col):
    header = ["boot, no disk/NIC (ms)", "ours vmd", "QEMU kvm", "QEMU tcg"]
    rows = []

    def row(label, ours, qk, qt):
        rows.append([label, f"{fmt(med(ours))}{spread(ours)}" if ours else "n/a",
                     f"{fmt(med(qk))}{spread(qk)}" if qk else "n/a",
                     f"{fmt(med(qt))}{spread(qt)}" if qt else "n/a"])

    row("launch -> first console byte", None, col("qemu_boot", "first_byte_ms"), col("tcg_boot", "first_byte_ms"))
    row("launch -> first console line", col("ours_boot", "first_line_ms"),
        col("qemu_boot", "first_line_ms"), col("tcg_boot", "first_line_ms"))
    row("  'starting' -> 1st 'pci slot' line (VM built)", col("ours_boot", "starting_to_vmproc_ms"), None, None)
    row("  'starting' -> 'started:' (devices ready)", col("ours_boot", "starting_to_started_ms"), None, None)
    row("guest entry -> console (guest's us/1000)",
        [v / 1e3 if v else None for v in col("ours_boot", "entry_to_console_us")],
        [v / 1e3 if v else None for v in col("qemu_boot", "entry_to_console_us")],
        [v / 1e3 if v else None for v in col("tcg_boot", "entry_to_console_us")])
    row("launch -> guest powered off", col("ours_boot", "guest_wall_ms"),
        col("qemu_boot", "guest_wall_ms"), col("tcg_boot", "guest_wall_ms"))
    row("'vmctl start' spawned -> first console line", col("ours_boot", "vmctl_to_first_line_ms"), None, None)
    row("(vmd spawned -> 'startup complete')", col("ours_boot", "daemon_to_ready_ms"), None, None)
    table("Boot time (issue 4). launch = ours: the daemon's 'vm bench: starting' log line (launch sent to "
          "the idle vmm process, which spawns the VM process); QEMU: spawning qemu-system-x86_64", header, rows)

    rows = []
    row("launch -> first console line", col("ours_dev", "first_line_ms"), col("qemu_dev", "first_line_ms"), None)
    row("  'starting' -> 1st 'pci slot' line (VM built)", col("ours_dev", "starting_to_vmproc_ms"), None, None)
    row("  'starting' -> 'started:' (devices ready)", col("ours_dev", "starting_to_started_ms"), None, None)
    if R["ours_dev"] or R["qemu_dev"]:
        table("Boot time with disk + NIC + rng (from the device runs)",
              ["boot, disk + NIC + rng (ms)"] + header[1:3], [r[:3] for r in rows])


def print_device_table(R, args):
    header = ["device workload", "unit", "ours vmd", "QEMU kvm"]
    if R["qemu_pio"]:
        header.append("QEMU pio-notify")
    header.append("ours/QEMU")
    if R["qemu_pio"]:
        header.append("ours/QEMU-pio")
    if R["qemu_vhost"]:
        header.append("QEMU vhost=on (ref)")
    rows = []
    for label, b, key, unit in BENCH_KEYS:
        def vals(k):
            return [float(r["bench"][b][key]) for r in R[k] if key in r["bench"].get(b, {})]
        o, q = med(vals("ours_dev")), med(vals("qemu_dev"))
        r = [label, unit, f"{fmt(o, unit)}{spread(vals('ours_dev'))}",
             f"{fmt(q, unit)}{spread(vals('qemu_dev'))}" if q is not None else "n/a"]
        p = med(vals("qemu_pio"))
        if R["qemu_pio"]:
            r.append(f"{fmt(p, unit)}{spread(vals('qemu_pio'))}")
        r.append(f"{o / q:.2f}x" if o and q else "n/a")
        if R["qemu_pio"]:
            r.append(f"{o / p:.2f}x" if o and p else "n/a")
        if R["qemu_vhost"]:
            v = med(vals("qemu_vhost"))
            r.append(f"{fmt(v, unit)}{spread(vals('qemu_vhost'))}" if v is not None else "n/a")
        rows.append(r)
    table(f"Devices (issue 5): vmtest bench mode, bench_scale={args.bench_scale}, "
          f"{args.image_mb} MiB {DISK_FORMAT} image (page-cached), QEMU aio={QEMU_AIO}, tap in a private netns per VMM; "
          "IOPS and frames/s: higher is better, latency: lower is better", header, rows)
    if not R["qemu_vhost"] and R.get("vhost_note"):
        print(f"QEMU vhost=on (reference for the net rows): {R['vhost_note']}")
    if R["limits"]:
        rows = []
        for label, key, unit, bound in LIMIT_KEYS:
            vals = [r[key] for r in R["limits"] if key in r]
            lim = med(vals)
            o = None
            if bound:
                o = med([float(r["bench"][bound[0]][bound[1]]) for r in R["ours_dev"] if bound[1] in r["bench"].get(bound[0], {})])
            rows.append([label, unit, f"{fmt(lim, unit)}{spread(vals)}",
                         f"{bound[0]} {bound[1]}" if bound else "",
                         f"{o / lim:.2f}x" if o and lim else ""])
        table("Host limits of this machine for the same work, measured between the VM runs "
              "(fio on the same image file, page-cached; an eventfd wake-up round trip between two processes; "
              "a process reading udpflood's frames from a tap, as vionet does, with no guest)",
              ["host limit", "unit", "host", "ours compared", "ours/host"], rows)


if __name__ == "__main__":
    sys.exit(main())
