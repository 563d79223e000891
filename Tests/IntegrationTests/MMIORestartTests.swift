import Foundation
import XCTest
import Glibc

/// Issues 12 and 17 together: the microVM shape (`virtio mmio`, the PVH
/// vmtest guest) with its block device process SIGKILLed every 500 ms while
/// the guest writes and reads back every sector of its disk (blk_verify).
/// The restarted device continues from the saved virtio-mmio registers
/// (driver features, selects, config generation, QueueReady and the ring
/// addresses of each queue): no I/O error, every read matches, and the
/// image holds exactly what the guest last wrote.
final class MMIORestartTests: XCTestCase {
    private static var pvhELF: String { Repo.root.appendingPathComponent("build/vmtest-pvh.elf").path }

    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        guard FileManager.default.fileExists(atPath: Self.pvhELF) else {
            throw XCTSkip("build/vmtest-pvh.elf is missing: run `make guests` first")
        }
    }

    private func devicePID(_ d: Daemon, vm: String, device: String) -> Int32? {
        descendants(of: d.pid).first { $0.args == "vmd: vm \(vm) \(device)" }?.pid
    }

    func testBlkVerifyOverMMIOWhileTheDeviceIsKilledEvery500ms() throws {
        let dir = NSTemporaryDirectory() + "vmd-mmiorestart-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disk = dir + "/disk.img"
        let sectors: UInt64 = 8192
        try Guest.makeDisk(disk, sectors: Int(sectors))
        let d = try Daemon(config: """
            vm "mr" {
                memory 64M
                boot "\(Self.pvhELF)" format pvh
                virtio mmio
                cmdline "blk_verify=12"
                disk "\(disk)"
            }
            """, extraArgs: ["-v"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vmtest: blk ok", timeout: 60), d.log)
        var kills = 0
        var last: Int32 = 0
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline && !d.log.contains("vmtest summary:") {
            if let pid = devicePID(d, vm: "mr", device: "vioblk0"), pid != last {
                kill(pid, SIGKILL)
                kills += 1
                last = pid
            }
            usleep(500_000)
        }
        XCTAssertTrue(d.waitLog("vm mr: stopped (guest powered off)", timeout: 60), d.log)
        let log = d.log
        if ProcessInfo.processInfo.environment["SHOWLOG"] != nil { print(log) }
        XCTAssertTrue(log.contains("vmtest: pci devices=0 mmio devices="), log)
        XCTAssertGreaterThanOrEqual(kills, 15, log)
        XCTAssertTrue(log.contains("vioblk0 process killed by SIGKILL: restarting it"), log)
        XCTAssertTrue(log.contains("vmtest: verify ok"), log)
        XCTAssertTrue(log.contains("failed=0"), log)
        XCTAssertFalse(log.contains("FAIL"), log)
        XCTAssertFalse(log.contains("needs reset"), log)
        let line = try DeviceRestartTests.checkVerifiedImage(log: log, disk: disk, sectors: sectors)
        print("MMIORestartTests: \(kills) kills, \(line)")
        XCTAssertEqual(d.stop(), 0)
    }

    /// rng and net over virtio-mmio under load while both device
    /// processes are killed in turn every 500 ms (RngNetRestartScenario).
    func testRngAndNetOverMMIOCarryOnWhileTheirDevicesAreKilled() throws {
        try RngNetRestartScenario.run(.mmio, vm: "mn", tap: "vmdq\(getpid() % 100000)", label: "MMIORestartTests")
    }
}
