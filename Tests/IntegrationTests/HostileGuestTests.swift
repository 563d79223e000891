import Foundation
import XCTest
import Glibc

/// Issue 9, proof: vmtest's `hostile` mode acts as a broken or malicious
/// driver (malformed rings, chains, indirect tables and requests, odd config
/// accesses, BAR moves, unclaimed ports, RTC abuse). The device and VM
/// processes must survive, the device must report DEVICE_NEEDS_RESET for a
/// ring it cannot trust, and a reset must bring it back (a normal read after
/// every case).
final class HostileGuestTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
    }

    func testDevicesAndVMSurviveAHostileGuest() throws {
        let disk = NSTemporaryDirectory() + "vmd-hostile-\(getpid()).img"
        try Guest.makeDisk(disk)
        defer { unlink(disk) }
        let d = try Daemon(config: """
            vm "hostile" {
                memory 64M
                boot "\(Repo.vmtestELF)"
                disk "\(disk)"
                cmdline "hostile"
            }
            """, extraArgs: ["-v"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vmd: vm hostile: stopped", timeout: 120), d.log)
        let log = d.log
        // The guest powered itself off after every case: nothing died, nothing rebooted.
        XCTAssertTrue(log.contains("vm hostile: stopped: guest powered off"), log)
        XCTAssertFalse(log.contains("killed"), log)
        XCTAssertFalse(log.contains("rebooting"), log)
        XCTAssertTrue(log.contains("vmtest: hostile done cases=28 needs_reset=16"), log)
        let results = Guest.results(log)
        let hostile = results.filter { $0.key.hasPrefix("hostile_") }
        XCTAssertEqual(hostile.count, 28, "\(hostile.keys.sorted())")
        XCTAssertEqual(hostile.filter { !$0.value }.map(\.key), [], log)
        for ring in ["avail_idx_jump", "desc_loop", "indirect_nested", "indirect_oversized", "ring_outside_ram"] {
            XCTAssertTrue(log.contains("vmtest: hostile_\(ring) ok needs_reset recovered=yes"), ring)
        }
        // The device said why, once per failure, and kept serving after each reset.
        XCTAssertTrue(log.contains("vioblk0: queue 0: descriptor chain longer than 64 (a loop?); device needs reset"), log)
        XCTAssertTrue(log.contains("vioblk0: queue 0: indirect descriptor inside an indirect table; device needs reset"), log)
        XCTAssertTrue(log.contains("vmtest: hostile_blk_bad_type ok status=2"), log)
        XCTAssertTrue(log.contains("vmtest summary: passed=") && log.contains("failed=0"), log)
        // The disk outside what the guest wrote on purpose is untouched.
        let data = try Data(contentsOf: URL(fileURLWithPath: disk))
        XCTAssertEqual(data.count, 8192 * 512)
        XCTAssertEqual(String(decoding: data[0..<9], as: UTF8.self), "vmdisk 0\n")
        XCTAssertEqual(d.stop(), 0)
    }
}
