#!/usr/bin/env python3
"""bench/vhost-user.py VMD [--secs N]: one TCG guest (Debian's kernel, the
initramfs of Tests/VhostUserLinux) runs fio against /dev/vda three times:
served by our vhost-user-blk backend (`vmd -P vhost-user -t blk`), by
`qemu-storage-daemon --export type=vhost-user-blk`, and by QEMU's built-in
virtio-blk (aio=threads, cache=none). Jobs: 4 KiB random read at QD1 and
QD32 (libaio), 64 KiB sequential write. Same raw image (256 MiB, written
once before), same guest. Prints a table; asserts nothing.

The guest runs under TCG, so every number is bounded by emulated guest CPU:
the table also shows the guest's CPU time per I/O (fio usr+sys), which is
most of the time each I/O takes."""
import json, os, re, subprocess, sys, tempfile, time, shutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "Tests/VhostUserLinux"))
import run as harness  # noqa: E402


def guest(kernel, initrd, devices, secs):
    cmd = harness.qemu_command(kernel, initrd, devices, f"vhtest=bench benchsecs={secs}")
    out = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=60 + 6 * secs).stdout
    results = {}
    for m in re.finditer(r"VHBENCH-BEGIN (\S+)\r?\n(.*?)VHBENCH-END \1", out, re.S):
        text = m.group(2)
        text = text[text.index("{"):text.rindex("}") + 1]
        job = json.loads(text)["jobs"][0]
        side = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
        ios = side["total_ios"]
        runtime_s = side["runtime"] / 1000
        cpu_us = (job["usr_cpu"] + job["sys_cpu"]) / 100 * runtime_s / ios * 1e6 if ios else 0
        results[m.group(1)] = (side["iops"], side["bw"] / 1024, cpu_us, side["clat_ns"]["mean"] / 1000)
    if len(results) != 3:
        sys.stderr.write(out[-3000:])
        raise SystemExit("bench: the guest did not report all three jobs")
    return results


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    vmd = os.path.abspath(sys.argv[1])
    secs = int(sys.argv[sys.argv.index("--secs") + 1]) if "--secs" in sys.argv else 10
    kernel, initrd = harness.prerequisites()
    work = tempfile.mkdtemp(prefix="vhost-bench-")
    image = os.path.join(work, "disk.img")
    subprocess.run(["dd", "if=/dev/urandom", f"of={image}", "bs=1M", "count=256", "status=none"], check=True)
    rows = {}
    log = open(os.path.join(work, "log"), "w")
    try:
        sock = os.path.join(work, "ours.sock")
        b = harness.Backend(vmd, ["-t", "blk", "-i", image], sock, log)
        try:
            rows["ours (vmd vhost-user-blk)"] = guest(kernel, initrd, [["-chardev", f"socket,id=c0,path={sock}",
                                                                      "-device", "vhost-user-blk-pci,chardev=c0"]], secs)
        finally:
            b.stop()
        if shutil.which("qemu-storage-daemon"):
            qsock = os.path.join(work, "qsd.sock")
            qsd = subprocess.Popen(["qemu-storage-daemon",
                                    "--blockdev", f"driver=file,node-name=f0,filename={image},cache.direct=on,aio=threads",
                                    "--blockdev", "driver=raw,node-name=d0,file=f0",
                                    "--export", f"type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path={qsock},writable=on"],
                                   stdout=log, stderr=log)
            for _ in range(100):
                if os.path.exists(qsock):
                    break
                time.sleep(0.05)
            try:
                rows["qemu-storage-daemon"] = guest(kernel, initrd, [["-chardev", f"socket,id=c0,path={qsock}",
                                                                       "-device", "vhost-user-blk-pci,chardev=c0"]], secs)
            finally:
                qsd.terminate()
                qsd.wait()
        rows["QEMU built-in virtio-blk"] = guest(kernel, initrd, [["-drive", f"file={image},if=none,id=d0,format=raw,cache=none,aio=threads",
                                                                   "-device", "virtio-blk-pci,drive=d0"]], secs)
    finally:
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nfio in a TCG guest, {secs} s per job; IOPS, MiB/s, guest CPU µs per I/O, mean completion latency µs")
    print(f"{'backend':28} {'4k randread QD1':>30} {'4k randread QD32':>30} {'64k seq write':>30}")
    for name, r in rows.items():
        cells = []
        for job in ("randread4k-qd1", "randread4k-qd32", "write64k-seq"):
            iops, mib, cpu, lat = r[job]
            cells.append(f"{iops:8.0f} {mib:6.1f} {cpu:6.0f} {lat:7.0f}")
        print(f"{name:28} " + " ".join(f"{c:>30}" for c in cells))


if __name__ == "__main__":
    main()
