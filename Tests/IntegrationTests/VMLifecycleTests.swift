import Foundation
import XCTest
import Glibc

/// Issues "VM process" and "virtio devices": vmtest through the real vmd
/// process tree, with its devices in sandboxed processes.
final class VMLifecycleTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
    }

    func config(name: String, extra: String, cmdline: String = "", cpus: Int = 1) -> String {
        """
        vm "\(name)" {
            memory 64M
            cpus \(cpus)
            boot "\(Repo.vmtestELF)"
            cmdline "\(cmdline)"
        \(extra)
        }
        """
    }

    /// Boots, waits for the guest to power itself off, checks nothing is left.
    func bootToPowerOff(cpus: Int) throws -> String {
        let d = try Daemon(config: config(name: "boot\(cpus)", extra: "", cpus: cpus), extraArgs: ["-v"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vm boot\(cpus): stopped (guest powered off)", timeout: 60), d.log)
        let tree = descendants(of: d.pid)
        XCTAssertEqual(tree.filter { $0.args.hasPrefix("vmd: vm ") }.count, 0, "VM processes left: \(tree)")
        XCTAssertEqual(d.stop(), 0)
        return d.log
    }

    func testVmtestBootsAndPowersOff() throws {
        let log = try bootToPowerOff(cpus: 1)
        let r = Guest.results(log)
        XCTAssertEqual(r["serial"], true, log)
        XCTAssertEqual(r["boot"], true, log)
        XCTAssertTrue(log.contains("vmtest: cpus ok count=1"), log)
        XCTAssertTrue(log.contains("vmtest summary: passed="), log)
        XCTAssertFalse(log.contains("FAIL"), log)
    }

    func testTwoCPUs() throws {
        let log = try bootToPowerOff(cpus: 2)
        XCTAssertTrue(log.contains("vmtest: cpus ok count=2"), log)
        XCTAssertFalse(log.contains("FAIL"), log)
    }

    func testAllDevicesInSandboxedProcesses() throws {
        let ns = try NetNamespace()
        let dir = NSTemporaryDirectory() + "vmd-dev-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disk = dir + "/disk.img"
        try Guest.makeDisk(disk)
        let tap = "vmdt\(getpid() % 100000)"
        let conf = config(name: "devs", extra: """
                disk "\(disk)"
                interface "\(tap)"
            """, cmdline: "ip=10.0.2.15/24 gw=10.0.2.2 stay")
        let d = try Daemon(config: conf, extraArgs: ["-v"], netns: ns.name)
        try d.waitReady()
        XCTAssertTrue(ns.configureTap(tap, address: "10.0.2.2/24"), "tap \(tap) never appeared\n\(d.log)")
        XCTAssertTrue(d.waitLog("vmtest summary:", timeout: 60), d.log)
        let r = Guest.results(d.log)
        for check in ["serial", "boot", "cpus", "blk", "rng", "net", "vmmci"] {
            XCTAssertEqual(r[check], true, "\(check)\n\(d.log)")
        }
        XCTAssertTrue(d.log.contains("vmtest summary: passed=") && d.log.contains("failed=0"), d.log)

        // Each device is its own sandboxed process holding only its fds.
        let tree = descendants(of: d.pid)
        let devices = tree.filter { $0.args.hasPrefix("vmd: vm devs ") }
        XCTAssertEqual(Set(devices.map { String($0.args.split(separator: " ").last!) }),
                       ["vioblk0", "vionet0", "viornd", "vmmci"], "\(tree)")
        for dev in devices {
            let st = procStatus(dev.pid)
            XCTAssertEqual(st["Seccomp"], "2", dev.args)
            XCTAssertEqual(st["NoNewPrivs"], "1", dev.args)
            XCTAssertNotEqual(st["Uid"]?.split(separator: "\t").first, "0", dev.args)
            let fdDir = "/proc/\(dev.pid)/fd"
            let targets = try FileManager.default.contentsOfDirectory(atPath: fdDir).compactMap {
                try? FileManager.default.destinationOfSymbolicLink(atPath: fdDir + "/" + $0)
            }
            // stdio, 2 channels, libevent's epoll + signal pipe, and the backend.
            let sockets = targets.filter { $0.hasPrefix("socket:") }.count
            XCTAssertEqual(sockets, 2, "\(dev.args): \(targets)")
            let files = targets.filter { $0.hasPrefix("/") && !$0.hasPrefix("/dev/null") && !$0.hasPrefix("/dev/pts") && $0 != d.logPath }
            if dev.args.hasSuffix("vioblk0") { XCTAssertEqual(files, [disk], "\(targets)") }
            else if dev.args.hasSuffix("vionet0") { XCTAssertEqual(files, ["/dev/net/tun"], "\(targets)") }
            else { XCTAssertEqual(files, [], "\(dev.args): \(targets)") }
            // One kick eventfd per queue (KVM signals it; vmmci is legacy, no
            // queues), the INTx irqfd and its resamplefd, and on the modern
            // transport one MSI-X irqfd per queue plus the config vector.
            let queues = ["vioblk0": 1, "vionet0": 2, "viornd": 1, "vmmci": 0][String(dev.args.split(separator: " ").last!)] ?? -1
            // vioblk also holds its I/O engine: the restricted io_uring (where
            // the kernel allows it) and the eventfd its completions signal.
            let engine = dev.args.hasSuffix("vioblk0") ? 1 : 0
            let eventfds = queues + 2 + (queues > 0 ? queues + 1 : 0) + engine
            XCTAssertEqual(targets.filter { $0 == "anon_inode:[eventfd]" }.count, eventfds, "\(dev.args): \(targets)")
            let uringAllowed = (try? String(contentsOfFile: "/proc/sys/kernel/io_uring_disabled", encoding: .utf8))?.hasPrefix("0") ?? false
            XCTAssertEqual(targets.filter { $0 == "anon_inode:[io_uring]" }.count, uringAllowed ? engine : 0, "\(dev.args): \(targets)")
            XCTAssertLessThanOrEqual(targets.count, 9 + eventfds + engine, "\(dev.args): \(targets)")
        }
        let vm = try XCTUnwrap(tree.first { $0.args == "vmd: vm devs" })
        XCTAssertEqual(procStatus(vm.pid)["Seccomp"], "2")
        XCTAssertNotEqual(procStatus(vm.pid)["Uid"]?.split(separator: "\t").first, "0")

        // Graceful stop through vmmci: the guest acknowledges and powers off.
        let stop = try d.vmctl(["stop", "-w", "devs"], timeout: 60)
        XCTAssertEqual(stop.status, 0, stop.out)
        XCTAssertTrue(d.log.contains("vm devs: asked the guest to shut down (vmmci)"), d.log)
        XCTAssertTrue(d.log.contains("vm devs: stopped (guest powered off)"), d.log)
        XCTAssertNil(try Guest.verifyWrittenSectors(disk))
        XCTAssertEqual(d.stop(), 0)
        // A process that has just died may be a zombie for a moment
        // (kill(pid, 0) still finds it) until its new parent reaps it.
        let gone = Date().addingTimeInterval(3)
        while Date() < gone && tree.contains(where: { processExists($0.pid) }) { usleep(20_000) }
        for p in tree { XCTAssertFalse(processExists(p.pid), "\(p.args) survived") }
    }

    /// A device that dies is restarted (issue 12; DeviceRestartTests has
    /// the rest): the VM runs on and stops normally afterwards.
    func testDeviceDeathRestartsTheDevice() throws {
        let d = try Daemon(config: config(name: "crash", extra: "", cmdline: "stay"), extraArgs: ["-v"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vmtest summary:", timeout: 60), d.log)
        let rnd = try XCTUnwrap(descendants(of: d.pid).first { $0.args == "vmd: vm crash viornd" })
        kill(rnd.pid, SIGSYS)
        XCTAssertTrue(d.waitLog("viornd process killed by SIGSYS: restarting it (restart 1)", timeout: 20), d.log)
        XCTAssertTrue(d.waitLog("vm crash viornd: restarted (instance 2)", timeout: 20), d.log)
        XCTAssertFalse(d.log.contains("vmd: vm crash: stopped"), d.log)
        let stop = try d.vmctl(["stop", "-w", "crash"], timeout: 60)
        XCTAssertEqual(stop.status, 0, stop.out)
        XCTAssertTrue(d.log.contains("vm crash: stopped (guest powered off)"), d.log)
        usleep(300_000)
        XCTAssertTrue(descendants(of: d.pid).filter { $0.args.hasPrefix("vmd: vm ") || $0.args.contains("spawner") }.isEmpty,
                      "\(descendants(of: d.pid))")
        XCTAssertEqual(d.stop(), 0)
    }

    /// i8042 reset: the parent restarts the VM, and stops one that restarts
    /// three times within 6 s, as vmd does.
    func testRebootRestartsUntilTheLimit() throws {
        let d = try Daemon(config: config(name: "rb", extra: "", cmdline: "reboot"), extraArgs: ["-v"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vm rb: restarted 3 times in 6 s: stopped", timeout: 60), d.log)
        XCTAssertTrue(d.log.contains("vm rb: rebooting"), d.log)
        XCTAssertGreaterThanOrEqual(d.log.components(separatedBy: "vmtest: reboot: resetting").count - 1, 3, d.log)
        usleep(300_000)
        XCTAssertTrue(descendants(of: d.pid).filter { $0.args.hasPrefix("vmd: vm ") }.isEmpty)
        XCTAssertTrue((try d.vmctl(["status", "rb"])).out.contains("stopped rb"))
        XCTAssertEqual(d.stop(), 0)
    }

    /// The parent locks each disk image: a second VM cannot write it too.
    func testOneWriterPerDiskImage() throws {
        let disk = NSTemporaryDirectory() + "vmd-lock-\(getpid()).img"
        try Guest.makeDisk(disk)
        defer { unlink(disk) }
        let conf = config(name: "first", extra: "    disk \"\(disk)\"", cmdline: "stay")
            + "\n" + config(name: "second", extra: "    disk \"\(disk)\"\n    disable", cmdline: "stay")
        let d = try Daemon(config: conf)
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vm first: running", timeout: 30), d.log)
        let r = try d.vmctl(["start", "second"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.out.contains("vmctl: start second: disk \(disk): in use by another VM"), r.out)
        XCTAssertEqual(d.stop(), 0)
    }

    /// `staggered start parallel 1 delay 2`: the second VM starts 2 s later.
    func testStaggeredStart() throws {
        let conf = "staggered start parallel 1 delay 2\n" + config(name: "s1", extra: "", cmdline: "stay")
            + "\n" + config(name: "s2", extra: "", cmdline: "stay")
        let d = try Daemon(config: conf)
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vm s1: starting", timeout: 10), d.log)
        let first = Date()
        XCTAssertFalse(d.log.contains("vm s2: starting"), d.log)
        XCTAssertTrue(d.waitLog("vm s2: starting", timeout: 10), d.log)
        XCTAssertGreaterThan(Date().timeIntervalSince(first), 1.5)
        XCTAssertTrue(d.waitLog("vm s2: running", timeout: 20), d.log)
        // The guest reaches `stay` (its vmmci driver is up) in ~0.2 s on an
        // idle machine; give a loaded one time too.
        usleep(2_000_000)
        // SIGTERM stops the VMs gracefully: each guest is asked through vmmci
        // and powers itself off (the ack may race the power-off in the log).
        XCTAssertEqual(d.stop(), 0)
        for vm in ["s1", "s2"] {
            XCTAssertTrue(d.log.contains("vm \(vm): asked the guest to shut down (vmmci)"), d.log)
            XCTAssertTrue(d.log.contains("vm \(vm): stopped: guest powered off"), d.log)
        }
    }

    /// The guest moves every BAR itself (`pci_reassign`): the queue-notify
    /// eventfds follow BAR 0 (KVM_IOEVENTFD from the sandboxed VM process)
    /// and the devices keep working.
    func testGuestMovesBARs() throws {
        let disk = NSTemporaryDirectory() + "vmd-bar-\(getpid()).img"
        try Guest.makeDisk(disk)
        defer { unlink(disk) }
        let d = try Daemon(config: config(name: "bars", extra: "    disk \"\(disk)\"", cmdline: "pci_reassign"),
                           extraArgs: ["-v"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vmd: vm bars: stopped", timeout: 60), d.log)
        let r = Guest.results(d.log)
        XCTAssertEqual(r["blk"], true, d.log)
        XCTAssertEqual(r["rng"], true, d.log)
        XCTAssertTrue(d.log.contains("failed=0"), d.log)
        XCTAssertFalse(d.log.contains("notifies go through the VM process"), d.log)
        XCTAssertNil(try Guest.verifyWrittenSectors(disk))
        XCTAssertEqual(d.stop(), 0)
    }

    func testBadKernelIsAClearError() throws {
        let bogus = NSTemporaryDirectory() + "vmd-bogus-\(getpid())"
        try Data(repeating: 0x41, count: 20000).write(to: URL(fileURLWithPath: bogus))
        defer { unlink(bogus) }
        let d = try Daemon(config: "vm \"bad\" {\n memory 32M\n boot \"\(bogus)\"\n}\n")
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vm bad: failed to start", timeout: 20), d.log)
        XCTAssertTrue(d.log.contains(bogus), d.log)
        XCTAssertEqual(d.stop(), 0)
    }
}
