#!/usr/bin/env python3
"""Linux's own virtio drivers against our vhost-user backends.

usage: run.py VMD SCENARIO      (SCENARIO: devices, restart, badfrontend)

devices:     one QEMU TCG guest with our blk (run by the vmd daemon from a
             vm.conf vhost-user stanza), scsi (CD-ROM), rng and net
             backends: fio verify + discard + flush on a 256 MiB disk (the
             host checks the image), the ISO's checksum, 64 KiB of
             /dev/hwrng, ping and a 64 MiB TCP transfer into a test netns.
restart:     fio verify on blk (a qcow2 image) while the backend is SIGKILLed and respawned
             5 times (QEMU reconnect=1, inflight resubmission).
badfrontend: a hostile vhost-user client; the backend must answer with an
             error or close, never die, and serve the next frontend.

Exit status 0: passed; 77: skipped (what is missing is printed); else failed.
"""
import array, glob, hashlib, os, random, re, shutil, signal, socket, struct
import subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
QEMU = "qemu-system-x86_64"


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


def fail(why):
    print(f"FAIL: {why}")
    sys.exit(1)


def sha256_file(path, length=None):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left is None or left > 0:
            b = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not b:
                break
            h.update(b)
            if left is not None:
                left -= len(b)
    return h.hexdigest()


def prerequisites():
    if os.getuid() != 0:
        skip("needs root (network namespace, tap device, the _vmd user)")
    if not shutil.which(QEMU):
        skip("qemu-system-x86_64 is not installed (qemu-system-x86)")
    kernels = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    if not kernels:
        skip("no Debian cloud kernel (linux-image-cloud-amd64)")
    for tool in ("busybox", "fio", "xorriso"):
        if not shutil.which(tool):
            skip(f"{tool} is not installed")
    r = subprocess.run([os.path.join(HERE, "mkinitrd.sh"), os.path.join(ROOT, ".build/vhost-user-linux")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"mkinitrd: {r.stderr}")
    return kernels[-1], r.stdout.strip()


class Backend:
    """One `vmd -P vhost-user` process; restartable on the same socket."""

    def __init__(self, vmd, args, sock, log, netns=None):
        self.vmd, self.args, self.sock, self.log, self.netns = vmd, args, sock, log, netns
        self.proc = None
        self.start()

    def start(self, env=None):
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        cmd = [self.vmd, "-P", "vhost-user", "-d", "-S", self.sock] + self.args
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env)
        for _ in range(200):
            if os.path.exists(self.sock):
                return
            if self.proc.poll() is not None:
                fail(f"backend {self.args} exited with {self.proc.returncode}")
            time.sleep(0.02)
        fail(f"backend {self.args} did not create {self.sock}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def qemu_command(kernel, initrd, devices, append):
    cmd = [QEMU, "-M", "q35", "-accel", "tcg", "-m", "512", "-smp", "1",
           "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem",
           "-kernel", kernel, "-initrd", initrd,
           "-append", "console=ttyS0 quiet panic=-1 no_timer_check " + append,
           "-display", "none", "-serial", "stdio", "-no-reboot", "-nodefaults"]
    for d in devices:
        cmd += d
    return cmd


def run_guest(cmd, timeout, on_line=None):
    """Runs QEMU; returns (VHTEST lines, whole output)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    lines, out = [], []
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        for line in p.stdout:
            out.append(line)
            sys.stdout.write("guest: " + line)
            sys.stdout.flush()
            if line.startswith("VHTEST "):
                lines.append(line.split()[1:])
                if on_line:
                    on_line(lines[-1])
        p.wait()
    finally:
        timer.cancel()
    if p.returncode != 0:
        fail(f"QEMU exited with {p.returncode} (killed after {timeout} s?)")
    return lines, "".join(out)


def find(lines, *prefix):
    for l in lines:
        if l[:len(prefix)] == list(prefix):
            return l[len(prefix):]
    fail(f"the guest never said {' '.join(prefix)}")


def check_blk(lines, image, mib):
    size = os.path.getsize(image)
    if find(lines, "blk", "size") != [str(size)]:
        fail("guest disk size differs")
    rc = find(lines, "blk", "fio", "rc")
    if rc[0] != "0" or rc[2] != "0":
        fail(f"fio: {rc}")
    if find(lines, "blk", "discard") != ["ok"]:
        fail("blkdiscard failed")
    if find(lines, "blk", "sha256")[0] != sha256_file(image, mib << 20):
        fail("the image's checksum differs from what the guest wrote")
    with open(image, "rb") as f:
        f.seek(size - (1 << 20))
        if f.read(1 << 20).strip(b"\0"):
            fail("the discarded MiB does not read back as zeroes")
    print("blk: fio verify, discard, flush and the host's checksum agree")


class ManagedBackends:
    """The vmd daemon running vm.conf's `vhost-user` stanzas: the parent
    binds the sockets and opens the files, vmm spawns the backends."""

    def __init__(self, vmd, stanzas, socks, work, log):
        self.args = ["vmd -f vm.conf"]
        conf = os.path.join(work, "vm.conf")
        with open(conf, "w") as f:
            f.write(stanzas)
        self.proc = subprocess.Popen([vmd, "-d", "-v", "-f", conf, "-s", os.path.join(work, "vmd.sock")],
                                     stdout=log, stderr=log)
        for _ in range(500):
            if all(os.path.exists(s) for s in socks):
                return
            if self.proc.poll() is not None:
                fail(f"vmd exited with {self.proc.returncode}")
            time.sleep(0.02)
        fail(f"vmd did not create {socks}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def scenario_devices(vmd, kernel, initrd, work, log):
    image = os.path.join(work, "disk.img")
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    isodir = os.path.join(work, "iso")
    os.mkdir(isodir)
    with open(os.path.join(isodir, "data.bin"), "wb") as f:
        f.write(random.randbytes(4 << 20))
    iso = os.path.join(work, "cd.iso")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", iso, isodir], check=True)
    ns = f"vht{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    backends = []
    receiver = None
    try:
        # blk through vm.conf and the vmd daemon (its backend runs under
        # vmm's filter too), the others started directly.
        blk_sock = os.path.join(work, "blk.sock")
        backends.append(ManagedBackends(vmd, f'vhost-user "blk" {{\n\ttype blk\n\tdisk "{image}"\n'
                                             f'\tsocket "{blk_sock}"\n}}\n', [blk_sock], work, log))
        backends.append(Backend(vmd, ["-t", "scsi", "-i", iso], os.path.join(work, "scsi.sock"), log))
        backends.append(Backend(vmd, ["-t", "rnd"], os.path.join(work, "rng.sock"), log))
        mac = "52:54:00:12:34:56"
        # A local interface (issue 15): the tap's host side has the first
        # address of the /31, as vmd's priv gives it, and the backend's
        # vionet answers the guest's udhcpc with the second.
        # With `local inet6` (-6) it answers the guest's router solicitations
        # too: the kernel's SLAAC takes the /64 of the host side's address.
        backends.append(Backend(vmd, ["-t", "net", "-n", "vhtap0", "-m", mac, "-l", "100.64.1.2",
                                      "-6", HOST6], os.path.join(work, "net.sock"), log, netns=ns))
        for _ in range(100):
            if subprocess.run(["ip", "-n", ns, "link", "show", "vhtap0"], capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        subprocess.run(["ip", "-n", ns, "addr", "add", "100.64.1.2/31", "dev", "vhtap0"], check=True)
        # What vmd's priv does for local inet6: the host MAC (the guest's + 1),
        # vmd's /96, fe80::EUI-64(host MAC), the guest's EUI-64 SLAAC address
        # routed to the tap.
        for cmd in (["link", "set", "vhtap0", "address", "52:54:00:12:34:57"],
                    ["addr", "add", HOST6 + "/96", "dev", "vhtap0", "nodad"],
                    ["addr", "add", "fe80::5054:ff:fe12:3457/64", "dev", "vhtap0", "nodad"],
                    ["link", "set", "vhtap0", "up"],
                    ["route", "add", GUEST6 + "/128", "dev", "vhtap0"]):
            subprocess.run(["ip", "-n", ns] + cmd, check=True)
        receiver = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", RECEIVER],
                                    stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        # vectors=0: QEMU 7.2 segfaults in msix_set_vector_notifiers when a
        # vhost-user-net device with MSI-X starts under TCG (gdb, 2026-12).
        devices = [
            ["-chardev", f"socket,id=c0,path={work}/blk.sock", "-device", "vhost-user-blk-pci,chardev=c0"],
            ["-chardev", f"socket,id=c1,path={work}/scsi.sock", "-device", "vhost-user-scsi-pci,chardev=c1"],
            ["-chardev", f"socket,id=c2,path={work}/rng.sock", "-device", "vhost-user-rng-pci,chardev=c2"],
            ["-chardev", f"socket,id=c3,path={work}/net.sock", "-netdev", "vhost-user,id=n0,chardev=c3",
             "-device", f"virtio-net-pci,netdev=n0,mac={mac},vectors=0"],
        ]
        mib = 16
        lines, _ = run_guest(qemu_command(kernel, initrd, devices,
                                          f"vhtest=blk,scsi,rng,net fiomib={mib} guestip=dhcp netmib=64 hostip6={HOST6}"),
                             timeout=170)
        check_blk(lines, image, mib)
        if find(lines, "scsi", "sha256")[0] != sha256_file(iso):
            fail("the CD-ROM's checksum differs from the ISO's")
        print("scsi: /dev/sr0 reads back the ISO")
        if find(lines, "rng", "current") != ["virtio_rng.0"]:
            fail("virtio-rng is not the current hwrng")
        r = find(lines, "rng", "bytes")
        # bytes N nonzero N distinct N same yes|no
        if r[0] != "65536" or int(r[2]) < 60000 or int(r[4]) < 250 or r[6] != "no":
            fail(f"/dev/hwrng does not look random: {r}")
        print("rng: 64 KiB from /dev/hwrng, not constant")
        bits = find(lines, "net", "features")[0]
        # CSUM, GUEST_CSUM, GUEST_TSO4/6, HOST_TSO4/6, MRG_RXBUF (virtio 5.1.3).
        offloads = {0: "CSUM", 1: "GUEST_CSUM", 7: "GUEST_TSO4", 8: "GUEST_TSO6", 11: "HOST_TSO4",
                    12: "HOST_TSO6", 15: "MRG_RXBUF"}
        missing = [n for b, n in offloads.items() if len(bits) <= b or bits[b] != "1"]
        if missing:
            fail(f"the guest did not negotiate {missing} (features {bits})")
        print("net: negotiated " + ", ".join(offloads.values()))
        if find(lines, "net", "dhcp") != ["100.64.1.3", "100.64.1.2"]:
            fail(f"udhcpc did not get the local interface's lease: {find(lines, 'net', 'dhcp')}")
        print("net: busybox udhcpc got 100.64.1.3 (router 100.64.1.2) from vionet's DHCP server")
        if find(lines, "net", "ping") != ["ok"]:
            fail("ping from the guest failed")
        if find(lines, "net", "slaac") != [GUEST6 + "/64", "fe80::5054:ff:fe12:3457"]:
            fail(f"SLAAC from vionet's router advertisement: {find(lines, 'net', 'slaac')} "
                 f"(want {GUEST6}/64 via fe80::5054:ff:fe12:3457)")
        if find(lines, "net", "ping6") != ["ok"]:
            fail("ping -6 of the host side failed")
        print(f"net: the kernel's SLAAC took {GUEST6}/64 and its default router from vionet's RA; ping -6 ok")
        guest_sum = find(lines, "net", "sha256")[0]
        find(lines, "net", "sent")
        out, _ = receiver.communicate(timeout=30)
        got = out.split()
        if got != [str(64 << 20), guest_sum]:
            fail(f"TCP transfer: host received {got}, guest sent {guest_sum}")
        print("net: ping and a 64 MiB TCP transfer with matching checksums, offloads on")
    finally:
        if receiver and receiver.poll() is None:
            receiver.kill()
        for b in backends:
            rc = b.stop()
            if rc not in (0, -signal.SIGTERM):
                fail(f"backend {b.args} ended with {rc}")
        subprocess.run(["ip", "netns", "del", ns])


# local inet6 prefix fd00::/8, vm 1 interface 0: vmd's host side (guest
# 100.64.1.3 in bytes 8-11, 1 last); the guest's SLAAC address from its MAC.
HOST6 = "fd00::6440:103:0:1"
GUEST6 = "fd00::5054:ff:fe12:3456"


RECEIVER = r"""
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("100.64.1.2", 5000)); s.listen(1); s.settimeout(170)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest())
"""


def scenario_restart(vmd, kernel, initrd, work, log):
    """Five SIGKILLs during fio verify, each with a request in flight: the
    backend kills itself (VMD_VHOST_USER_SELFTEST=kill-inflight:N, N random)
    right after recording a request as taken, before serving it. The test
    respawns it on the same socket; QEMU reconnects and hands back the
    inflight region; the new instance must serve that request again.
    The disk is a qcow2 image (the format found by its magic, as for a VM's
    disk), so the qcow2 code serves Linux too; the host checks it converted
    to raw."""
    image = os.path.join(work, "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "256M"], check=True)
    sock = os.path.join(work, "blk.sock")
    rng = random.Random(7)

    def hooked_env():
        return dict(os.environ, VMD_VHOST_USER_SELFTEST=f"kill-inflight:{rng.randrange(100, 600)}")

    b = Backend(vmd, ["-t", "blk", "-i", image], sock, log)
    kills = []
    stop = threading.Event()

    def supervisor():
        # Like vmd's parent would: respawn the backend whenever it dies.
        while not stop.is_set():
            if b.proc.poll() is not None:
                if b.proc.returncode == -signal.SIGKILL:
                    kills.append(time.time())
                b.start(env=hooked_env() if len(kills) < 5 else None)
            time.sleep(0.05)

    def on_line(words):
        if words[:3] == ["blk", "fio", "start"] and not kills:
            # From now on each instance dies with a request in flight.
            b.kill()
            kills.append(None)   # this one is not an in-flight kill
            kills.clear()
            b.start(env=hooked_env())
            threading.Thread(target=supervisor, daemon=True).start()

    mib = 16
    try:
        devices = [["-chardev", f"socket,id=c0,path={sock},reconnect=1", "-device", "vhost-user-blk-pci,chardev=c0"]]
        lines, _ = run_guest(qemu_command(kernel, initrd, devices, f"vhtest=blk fiomib={mib}"), timeout=170, on_line=on_line)
        stop.set()
        if len(kills) < 5:
            fail(f"fio finished after {len(kills)} of 5 kills; the test proves nothing")
        raw = os.path.join(work, "disk.raw")
        # Each killed instance leaks the clusters it had reserved and not
        # used (exit status 3); an error (2) fails.
        chk = subprocess.run(["qemu-img", "check", image], capture_output=True, text=True)
        if chk.returncode not in (0, 3) or "ERROR" in chk.stdout:
            fail(f"qemu-img check {image}: {chk.returncode}\n{chk.stdout}{chk.stderr}")
        subprocess.run(["qemu-img", "convert", "-O", "raw", image, raw], check=True)
        check_blk(lines, raw, mib)
        log.flush()
        text = open(log.name).read()
        resubmitted = len(re.findall(r"resubmitting 1 requests in flight", text))
        if resubmitted < 5:
            fail(f"only {resubmitted} of {len(kills)} restarts resubmitted the request in flight")
        print(f"restart: {len(kills)} SIGKILLs with a request in flight during fio verify; "
              f"{resubmitted} resubmitted; no error")
    finally:
        stop.set()
        b.stop()


def check_sandboxed(pid):
    """The backend runs as _vmd, with no new privileges and a seccomp filter."""
    for _ in range(100):
        status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
        if status["Seccomp"].strip() == "2":
            break
        time.sleep(0.05)
    uid = int(status["Uid"].split()[0])
    if uid == 0 or status["NoNewPrivs"].strip() != "1" or status["Seccomp"].strip() != "2":
        fail(f"backend {pid} is not sandboxed: uid {uid}, NoNewPrivs {status['NoNewPrivs'].strip()}, Seccomp {status['Seccomp'].strip()}")
    print(f"backend {pid}: uid {uid}, no new privileges, seccomp filter")


def scenario_badfrontend(vmd, kernel, initrd, work, log):
    sock = os.path.join(work, "rng.sock")
    b = Backend(vmd, ["-t", "rnd"], sock, log)
    try:
        check_sandboxed(b.proc.pid)
        import badfrontend
        badfrontend.run(sock, b.proc)
    finally:
        rc = b.stop()
    if rc not in (0, -signal.SIGTERM):
        fail(f"backend ended with {rc}")
    print("badfrontend: every hostile frontend refused, the backend still serves")


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    vmd, scenario = os.path.abspath(sys.argv[1]), sys.argv[2]
    if not os.access(vmd, os.X_OK):
        fail(f"{vmd} is not executable")
    if scenario == "badfrontend":
        kernel = initrd = None
        if os.getuid() != 0:
            skip("needs root (the backend drops to _vmd)")
    else:
        kernel, initrd = prerequisites()
    sys.path.insert(0, HERE)
    # Backends drop to _vmd, as vmd's own device processes do.
    if subprocess.run(["getent", "passwd", "_vmd"], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "--comment", "vmd unprivileged user", "_vmd"], check=True)
    work = tempfile.mkdtemp(prefix="vhost-user-")
    os.chmod(work, 0o755)
    logpath = os.path.join(work, "backends.log")
    started = time.time()
    try:
        with open(logpath, "w") as log:
            {"devices": scenario_devices, "restart": scenario_restart,
             "badfrontend": scenario_badfrontend}[scenario](vmd, kernel, initrd, work, log)
    except SystemExit as e:
        if e.code not in (0, None):
            print(open(logpath).read())
        raise
    finally:
        with open(logpath) as f:
            sys.stdout.write("".join("backend: " + l for l in f))
        shutil.rmtree(work, ignore_errors=True)
    print(f"PASS ({time.time() - started:.1f} s)")


if __name__ == "__main__":
    main()
