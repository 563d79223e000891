import Foundation
import XCTest
import Glibc

/// Issue 17, proof: the microVM shape. build/vmtest-pvh.elf (PVH note, no
/// Multiboot header) with its virtio-mmio driver passes every check first on
/// QEMU -M microvm (virtio-mmio version 2 blk, rng and net), then on our VMM
/// with `virtio mmio`: no PCI host bridge, each device a slot in its own
/// sandboxed process, found by the guest on the command line.
final class MMIOTests: XCTestCase {
    private static var pvhELF: String { Repo.root.appendingPathComponent("build/vmtest-pvh.elf").path }
    private static var qemuScript: String { Repo.root.appendingPathComponent("guests/vmtest/run-qemu.sh").path }

    private func requirePVHGuest() throws {
        guard FileManager.default.fileExists(atPath: Self.pvhELF) else {
            throw XCTSkip("build/vmtest-pvh.elf is missing: run `make guests` first")
        }
    }

    func testQEMUMicrovmPassesEveryCheckOverMMIO() throws {
        try requireRoot()
        try requirePVHGuest()
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        guard path.split(separator: ":").contains(where: { FileManager.default.isExecutableFile(atPath: "\($0)/qemu-system-x86_64") }) else {
            throw XCTSkip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")
        }
        let (status, output) = try runCommand("/bin/bash", [Self.qemuScript, "--microvm"], timeout: 180)
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("run-qemu.sh: PASS (microvm: PVH entry, virtio-mmio blk/rng/net"), output)
        XCTAssertTrue(output.contains("vmtest: pvh start_info at"), output)
        XCTAssertTrue(output.contains("vmtest: pci devices=0 mmio devices=3 blk=yes rng=yes net=yes"), output)
        let results = Guest.results(output)
        for check in ["serial", "boot", "blk", "rng", "net"] {
            XCTAssertEqual(results[check], true, "\(check)\n\(output)")
        }
        let blk = output.split(separator: "\n").first { $0.hasPrefix("vmtest: blk ok") } ?? ""
        XCTAssertFalse(blk.contains(" irqs=0 "), "no interrupt-driven completion over mmio: \(blk)")
    }

    func testOurVMMInMMIOModePassesEveryCheck() throws {
        try requireRoot()
        try requireKVM()
        try requirePVHGuest()
        let ns = try NetNamespace()
        let dir = NSTemporaryDirectory() + "vmd-mmio-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disk = dir + "/disk.img"
        try Guest.makeDisk(disk)
        let tap = "vmdm\(getpid() % 100000)"
        let d = try Daemon(config: """
            vm "micro" {
                memory 64M
                boot "\(Self.pvhELF)" format pvh
                virtio mmio
                cmdline "ip=10.0.2.15/24 gw=10.0.2.2"
                disk "\(disk)"
                interface "\(tap)"
            }
            """, extraArgs: ["-vv"], netns: ns.name)
        try d.waitReady()
        XCTAssertTrue(ns.configureTap(tap, address: "10.0.2.2/24"), "tap \(tap) never appeared\n\(d.log)")
        XCTAssertTrue(d.waitLog("vm micro: stopped (guest powered off)", timeout: 120), d.log)
        let log = d.log
        XCTAssertTrue(log.contains("vmtest: pvh start_info at 0x7000 version 1"), log)
        // No PCI: the guest found four slots (blk, net, rnd, vmmci) on its command line.
        XCTAssertTrue(log.contains("vmtest: pci devices=0 mmio devices=4 blk=yes rng=yes net=yes"), log)
        XCTAssertTrue(log.contains("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:9"), log)
        let results = Guest.results(log)
        for check in ["serial", "boot", "cpus", "rtc", "blk", "rng", "net"] {
            XCTAssertEqual(results[check], true, "\(check)\n\(log)")
        }
        XCTAssertFalse(log.contains(" FAIL"), log)
        XCTAssertTrue(log.contains("vmtest summary: passed=") && log.contains("failed=0"), log)
        let blk = log.split(separator: "\n").first { $0.contains("vmtest: blk ok") } ?? ""
        XCTAssertFalse(blk.contains(" irqs=0 "), "no interrupt-driven completion over mmio: \(blk)")
        XCTAssertNil(try Guest.verifyWrittenSectors(disk))
        XCTAssertEqual(d.stop(), 0)
    }

    func testHostileGuestOnMMIORegisters() throws {
        try requireRoot()
        try requireKVM()
        try requirePVHGuest()
        let disk = NSTemporaryDirectory() + "vmd-mmio-hostile-\(getpid()).img"
        try Guest.makeDisk(disk)
        defer { unlink(disk) }
        let d = try Daemon(config: """
            vm "mhostile" {
                memory 64M
                boot "\(Self.pvhELF)"
                virtio mmio
                disk "\(disk)"
                cmdline "hostile"
            }
            """, extraArgs: ["-vv"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vm mhostile: stopped (guest powered off)", timeout: 120), d.log)
        let log = d.log
        XCTAssertFalse(log.contains("killed"), log)
        XCTAssertTrue(log.contains("vmtest: hostile done cases=5 mmio=yes"), log)
        let hostile = Guest.results(log).filter { $0.key.hasPrefix("hostile_mmio_") }
        XCTAssertEqual(hostile.count, 5, "\(hostile.keys.sorted())\n\(log)")
        XCTAssertEqual(hostile.filter { !$0.value }.map(\.key), [], log)
        // The device said why (its log lines may trail the VM's stop).
        XCTAssertTrue(d.waitLog("vioblk0: queue 0: QueueReady before FEATURES_OK; device needs reset", timeout: 10), d.log)
        XCTAssertEqual(d.stop(), 0)
    }
}
