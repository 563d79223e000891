#!/usr/bin/env python3
"""bench/bios-boot.py BIN_DIR [--runs N] [--timeout S]: BIOS boot time of a grub-mkrescue ISO,
ours (vmd: SeaBIOS from the virtio-scsi CD-ROM) against QEMU -M pc -accel kvm (same ISO, same
SeaBIOS, virtio-scsi CD). GRUB's grub.cfg loads build/vmtest.elf with `multiboot`. Prints, per
run, the seconds from start to the guest's first console line ("vmtest: serial ok") and to its
summary. Needs root, /dev/kvm, grub-mkrescue (grub-pc-bin, grub-common, xorriso, mtools)."""
import os, shutil, subprocess, sys, tempfile, threading, time, argparse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ELF = os.path.join(ROOT, "build", "vmtest.elf")


def make_iso(work):
    tree = os.path.join(work, "iso", "boot", "grub")
    os.makedirs(tree)
    shutil.copy(ELF, os.path.join(work, "iso", "boot", "vmtest.elf"))
    with open(os.path.join(tree, "grub.cfg"), "w") as f:
        f.write('set timeout=0\nmenuentry "vmtest" {\n    multiboot /boot/vmtest.elf\n    boot\n}\n')
    iso = os.path.join(work, "vmtest.iso")
    subprocess.run(["grub-mkrescue", "-o", iso, os.path.join(work, "iso")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return iso


def watch(proc, marks, timeout):
    """Seconds from now until each mark appears in a line of proc's output (None if it never did)."""
    start, found = time.monotonic(), {}

    def reader():
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            for m in marks:
                if m not in found and m in line:
                    found[m] = time.monotonic() - start
            if len(found) == len(marks):
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    return [found.get(m) for m in marks]


def ours(bindir, iso, work, timeout):
    conf, sock = os.path.join(work, "vm.conf"), os.path.join(work, "vmd.sock")
    with open(conf, "w") as f:
        f.write(f'vm "biosbench" {{\n    memory 128M\n    cdrom "{iso}"\n    boot device cdrom\n}}\n')
    proc = subprocess.Popen([os.path.join(bindir, "vmd"), "-d", "-vv", "-f", conf, "-s", sock],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        return watch(proc, ["vmtest: serial ok", "vmtest summary:"], timeout)
    finally:
        proc.terminate()
        proc.wait()


def qemu(iso, timeout):
    proc = subprocess.Popen(["qemu-system-x86_64", "-M", "pc", "-accel", "kvm", "-m", "128", "-nodefaults",
                             "-display", "none", "-no-reboot", "-serial", "stdio",
                             "-device", "virtio-scsi-pci,id=s0",
                             "-drive", f"file={iso},if=none,id=cd0,media=cdrom,readonly=on",
                             "-device", "scsi-cd,drive=cd0,bus=s0.0,bootindex=0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        return watch(proc, ["vmtest: serial ok", "vmtest summary:"], timeout)
    finally:
        proc.kill()
        proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("bindir")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300)
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="biosbench-")
    try:
        iso = make_iso(work)
        fmt = lambda v: "-" if v is None else f"{v:.1f}"
        print("| run | VMM | first console line (s) | summary (s) |\n|---|---|---|---|")
        for r in range(a.runs):
            for name, fn in (("vmd (ours)", lambda: ours(a.bindir, iso, work, a.timeout)),
                             ("QEMU -M pc", lambda: qemu(iso, a.timeout))):
                first, summary = fn()
                print(f"| {r + 1} | {name} | {fmt(first)} | {fmt(summary)} |", flush=True)
        print(f"load average: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
