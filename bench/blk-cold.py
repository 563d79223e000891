#!/usr/bin/env python3
"""bench/blk-cold.py BIN_DIR [--image-mb 1024] [--runs 3] [--scale 100]: raw 4 KiB random
reads where they wait for the disk (issue 13): a big raw image (default 1 GiB of random
data, made here in a directory on disk and removed at the end), the host's page cache
dropped (`echo 3 > /proc/sys/vm/drop_caches`) before every measurement, and in each
round, in an order that rotates from round to round:

  ours io_uring   vmd's vioblk on its io_uring engine (the default)
  ours sync       vmd with VMD_BLOCK_IO=sync: every request served in turn (the old path)
  host fio        fio on the same file: psync QD1, then io_uring QD32, as many reads as
                  the guest makes (buffered, as vmd reads it)

The guest is build/vmtest.elf with `blkread`: blk_randread_qd1 (4000 x scale/100 reads)
then blk_randread_qd32 (16000 x scale/100), uniformly random over the whole disk.
Prints each run with the load average, then medians (min-max). Needs root.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)
import vmbench  # noqa: E402


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def load():
    return open("/proc/loadavg").read().split()[0]


def make_image(path, megabytes):
    """vmtest's blk check reads "vmdisk <n>" in the first 1 MiB; the rest is random data
    (written, so every read finds blocks on the disk, not holes)."""
    head = bytearray()
    for n in range(4096):
        s = b"vmdisk %d\n" % n
        head += s + b"\0" * (512 - len(s))
    with open(path, "wb") as f:
        f.write(head)
        left = megabytes * (1 << 20) - len(head)
        while left > 0:
            n = min(left, 4 << 20)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())
    return bytes(head)


def restore_head(path, head):
    """The guest's checks write sectors 2048..2175: put the first 2 MiB back."""
    with open(path, "r+b") as f:
        f.write(head)
        f.flush()
        os.fsync(f.fileno())


def run_ours(vmd, workdir, image, scale, sync):
    if sync:
        os.environ["VMD_BLOCK_IO"] = "sync"
    else:
        os.environ.pop("VMD_BLOCK_IO", None)
    try:
        r = vmbench.run_ours(vmd, workdir, image, timeout=600, guest_args=f"blkread bench_scale={scale}")
    finally:
        os.environ.pop("VMD_BLOCK_IO", None)
    b = r["bench"]
    if r["fails"] or "blk_randread_qd1" not in b:
        raise vmbench.RunFailed(f"guest: {r['fails'][:3] or 'no bench lines'}")
    qd = next((k for k in b if k.startswith("blk_randread_qd") and k != "blk_randread_qd1"), None)
    return {"qd1": float(b["blk_randread_qd1"]["iops"]), "qd32": float(b[qd]["iops"]) if qd else None}


def run_fio(image, megabytes, scale):
    out = {}
    for key, engine, depth, ios in (("qd1", "psync", 1, 4000), ("qd32", "io_uring", 32, 16000)):
        p = subprocess.run(["fio", f"--name={key}", f"--filename={image}", "--rw=randread", "--bs=4k",
                            f"--ioengine={engine}", f"--iodepth={depth}", f"--size={megabytes}M",
                            f"--number_ios={ios * scale // 100}", "--output-format=json"],
                           capture_output=True, text=True, timeout=900)
        out[key] = json.loads(p.stdout)["jobs"][0]["read"]["iops"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bin_dir")
    ap.add_argument("--image-mb", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=int, default=100, help="guest read counts in percent (default 100)")
    ap.add_argument("--dir", default="/var/tmp", help="where the image is made (a disk, not tmpfs)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("blk-cold: needs root (vmd, /dev/kvm, drop_caches)")
    vmd = os.path.join(os.path.abspath(args.bin_dir), "vmd")
    workdir = tempfile.mkdtemp(prefix="blk-cold.", dir=args.dir)
    os.chmod(workdir, 0o755)
    image = os.path.join(workdir, "disk.img")
    kinds = ["ours io_uring", "ours sync", "host fio"]
    results = {k: [] for k in kinds}
    try:
        vmbench.log(f"writing a {args.image_mb} MiB image in {workdir}")
        head = make_image(image, args.image_mb)
        for i in range(args.runs):
            for kind in kinds[i % 3:] + kinds[:i % 3]:
                restore_head(image, head)
                drop_caches()
                before = load()
                try:
                    if kind == "host fio":
                        r = run_fio(image, args.image_mb, args.scale)
                    else:
                        r = run_ours(vmd, workdir, image, args.scale, sync=kind == "ours sync")
                except (vmbench.RunFailed, subprocess.SubprocessError, ValueError, KeyError) as e:
                    vmbench.log(f"run {i + 1} {kind}: FAILED: {e}")
                    continue
                r["load"] = f"{before}->{load()}"
                results[kind].append(r)
                vmbench.log(f"run {i + 1} {kind}: QD1 {r['qd1']:,.0f} IOPS, QD32 {r['qd32']:,.0f} IOPS, load {r['load']}")
    finally:
        subprocess.run(["rm", "-rf", workdir])

    def cell(kind, key):
        v = [r[key] for r in results[kind] if r.get(key)]
        if not v:
            return None, "n/a"
        return statistics.median(v), f"{statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})"

    print(f"\nraw {args.image_mb} MiB image, page cache dropped before each run, {args.runs} runs each "
          f"(order rotated), reads per run: QD1 {4000 * args.scale // 100}, QD32 {16000 * args.scale // 100}")
    print(f"{'4 KiB random read':<20}{'ours io_uring':>28}{'ours sync (old)':>28}{'host fio':>28}")
    ratios = []
    for key, label in (("qd1", "QD1 IOPS"), ("qd32", "QD32 IOPS")):
        (u, us), (s, ss), (f, fs) = cell("ours io_uring", key), cell("ours sync", key), cell("host fio", key)
        print(f"{label:<20}{us:>28}{ss:>28}{fs:>28}")
        ratios.append((label, u / s if u and s else None, u / f if u and f else None))
    for label, us, uf in ratios:
        print(f"{label}: io_uring/sync {us:.2f}x, io_uring/host fio {uf:.2f}x" if us and uf else f"{label}: n/a")
    for kind in kinds:
        print(f"load average (1 min) per run, {kind}: {', '.join(r['load'] for r in results[kind])}")


if __name__ == "__main__":
    main()
