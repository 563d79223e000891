#!/usr/bin/env python3
"""mmio.py: the same device workloads over virtio-pci and virtio-mmio, ours and QEMU's.

Called by bench/run-mmio.sh (see bench/README.md). vmtest's `bench` mode with a disk,
a NIC and rng, four ways:
  ours pci      build/vmtest.elf (Multiboot) under our vmd, devices on PCI (the default)
  ours mmio     build/vmtest-pvh.elf (PVH) under our vmd with `virtio mmio`
  QEMU pci      build/vmtest.elf, qemu-system-x86_64 -M pc, virtio-*-pci (modern only)
  QEMU mmio     build/vmtest-pvh.elf, qemu-system-x86_64 -M microvm,acpi=off,
                virtio-*-device (virtio-mmio version 2)
and prints the medians side by side. Uses vmbench.py's runners and helpers.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import vmbench as vb

PVH_ELF = os.path.join(vb.ROOT, "build", "vmtest-pvh.elf")


def run_qemu_microvm(accel, workdir, disk, netns, timeout=180, scale=100):
    """QEMU -M microvm with virtio-mmio devices; the guest exits through isa-debug-exit (status 1)."""
    cmdline = f"bench bench_scale={scale} no_cpu_tables " + vb.GUEST_NET
    argv = ["qemu-system-x86_64", "-M", "microvm,acpi=off,pit=on,pic=on,rtc=on", "-accel", accel,
            "-m", str(vb.MEMORY_MB), "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
            "-global", "virtio-mmio.force-legacy=false",
            "-kernel", PVH_ELF, "-append", cmdline, "-serial", "stdio",
            "-device", "isa-debug-exit,iobase=0x604,iosize=2",
            "-drive", f"file={disk},format=raw,if=none,id=disk0,cache=writeback,aio={vb.QEMU_AIO}",
            "-device", "virtio-blk-device,drive=disk0",
            "-device", "virtio-rng-device",
            "-netdev", f"tap,id=net0,ifname={vb.QEMU_TAP},script=no,downscript=no",
            "-device", "virtio-net-device,netdev=net0,mac=52:54:00:12:34:56"]
    argv = ["ip", "netns", "exec", netns] + argv
    errpath = os.path.join(workdir, "qemu.err")
    with open(errpath, "w") as err:
        t_spawn = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    out = bytearray()
    timed_out = False
    try:
        vb.pump(proc.stdout, lambda data, t: out.extend(data), t_spawn + timeout, lambda: False)
    except vb.RunFailed:
        timed_out = True
    finally:
        if timed_out:
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            timed_out = True
    if timed_out or proc.returncode != 1:
        why = open(errpath).read()[:300]
        raise vb.RunFailed(f"qemu microvm ({accel}): {'timed out' if timed_out else 'exit status %d' % proc.returncode} {why}")
    console = out.decode("utf-8", "replace").replace("\r", "").splitlines()
    bench, entry_us, summary, fails = vb.guest_results(console)
    # The cpus check skips on microvm (no tables); a skip is not a failure.
    return {"first_line_ms": None, "bench": bench, "summary": summary, "fails": fails, "console": console,
            "guest_wall_ms": (time.monotonic() - t_spawn) * 1e3}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bin_dir", help="directory holding our vmd binary")
    ap.add_argument("--runs", type=int, default=3, help="device bench runs per column (default 3)")
    ap.add_argument("--bench-scale", type=int, default=1000, help="vmtest bench_scale (default 1000)")
    ap.add_argument("--image-mb", type=int, default=64, help="disk image size in MiB (default 64)")
    ap.add_argument("--no-qemu", action="store_true", help="our vmd only")
    ap.add_argument("--qemu-accel", default="kvm", choices=["kvm", "tcg"], help="QEMU's accelerator (default kvm)")
    ap.add_argument("--netns", default=f"vmbench-mmio-{os.getpid()}", help="prefix of the two network namespaces")
    args = ap.parse_args()
    vmd = os.path.join(args.bin_dir, "vmd")
    for f in (vmd, vb.ELF, PVH_ELF):
        if not os.path.exists(f):
            sys.exit(f"bench mmio: {f} missing (make build guests)")
    if os.geteuid() != 0:
        sys.exit("bench mmio: needs root")
    started = time.monotonic()
    load_before = open("/proc/loadavg").read().split()[:3]
    workdir = tempfile.mkdtemp(prefix="vmbench-mmio.")
    ns_ours, ns_qemu = args.netns + "-v", args.netns + "-q"
    image = os.path.join(workdir, "disk.img")
    columns = ["ours pci", "ours mmio"] + ([] if args.no_qemu else ["QEMU pci", "QEMU mmio"])
    results = {c: [] for c in columns}
    failures = []
    runners = {
        "ours pci": lambda: vb.run_ours(vmd, workdir, image, ns_ours, scale=args.bench_scale),
        "ours mmio": lambda: vb.run_ours(vmd, workdir, image, ns_ours, scale=args.bench_scale,
                                         elf=PVH_ELF, extra=("virtio mmio",)),
        "QEMU pci": lambda: vb.run_qemu(args.qemu_accel, workdir, image, ns_qemu, scale=args.bench_scale),
        "QEMU mmio": lambda: run_qemu_microvm(args.qemu_accel, workdir, image, ns_qemu, scale=args.bench_scale),
    }
    try:
        for ns in (ns_ours, ns_qemu):
            vb.ip("netns", "add", ns)
            vb.ip("-n", ns, "link", "set", "lo", "up")
        vb.ip("-n", ns_qemu, "tuntap", "add", "dev", vb.QEMU_TAP, "mode", "tap")
        vb.ip("-n", ns_qemu, "addr", "add", vb.HOST_ADDR, "dev", vb.QEMU_TAP)
        vb.ip("-n", ns_qemu, "link", "set", vb.QEMU_TAP, "up")
        for i in range(args.runs):
            for c in columns:
                vb.write_image(image, args.image_mb)
                try:
                    r = runners[c]()
                    vb.check_guest(f"{c} #{i + 1}", r, True)
                    results[c].append(r)
                    vb.log(f"{c} #{i + 1}: " + " ".join(f"{b}:{r['bench'][b].get(k)}" for _, b, k, _ in vb.BENCH_KEYS))
                except vb.RunFailed as e:
                    failures.append(f"{c} #{i + 1}: {e}")
                    vb.log(f"{c} #{i + 1}: FAILED: {e}")
    finally:
        for ns in (ns_ours, ns_qemu):
            vb.ip("netns", "del", ns, check=False)
        subprocess.run(["rm", "-rf", workdir])
    load_after = open("/proc/loadavg").read().split()[:3]
    print(f"vmtest (pci: vmtest.elf, mmio: vmtest-pvh.elf), {vb.MEMORY_MB} MiB, 1 vCPU; {os.cpu_count()} host CPUs; "
          f"load average {' '.join(load_before)} before, {' '.join(load_after)} after; medians (min-max) of {args.runs} runs")
    if os.path.exists("/sys/module/kvm_pvm"):
        print("/dev/kvm is PVM (kvm_pvm): guest ring 0 is emulated, ring 3 (where vmtest drives the devices) runs natively")
    rows = []
    for label, b, key, unit in vb.BENCH_KEYS:
        row = [label, unit]
        meds = {}
        for c in columns:
            vals = [float(r["bench"][b][key]) for r in results[c] if key in r["bench"].get(b, {})]
            meds[c] = vb.med(vals)
            row.append(f"{vb.fmt(meds[c], unit)}{vb.spread(vals)}" if vals else "n/a")
        o, m = meds.get("ours pci"), meds.get("ours mmio")
        row.append(f"{m / o:.2f}x" if o and m else "n/a")
        if not args.no_qemu:
            q = meds.get("QEMU mmio")
            row.append(f"{m / q:.2f}x" if m and q else "n/a")
        rows.append(row)
    header = ["device workload", "unit"] + columns + ["ours mmio/pci"] + ([] if args.no_qemu else ["ours/QEMU mmio"])
    vb.table(f"Devices over virtio-pci and virtio-mmio: vmtest bench mode, bench_scale={args.bench_scale}, "
             f"{args.image_mb} MiB raw image, QEMU accel={args.qemu_accel}; IOPS and frames/s: higher is better, "
             "latency: lower is better", header, rows)
    print(f"\nwall time: {time.monotonic() - started:.0f} s")
    if failures:
        print("\nFAILED runs (not counted):")
        for f in failures:
            print("  " + f)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
