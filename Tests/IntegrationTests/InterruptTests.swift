import Foundation
import XCTest
import Glibc

/// Issue 14: interrupts straight from device processes to KVM. vmtest's
/// `msix` check drives vioblk0 through MSI-X (the queue's vector fires, not
/// the config vector nor INTx; a masked vector stays pending in the PBA
/// until unmasked) and then INTx again with MSI-X disabled; its `blk` check
/// uses INTx (irqfd + resamplefd, the ISR answered by the VM process).
final class InterruptTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
    }

    func testMSIXVectorsMaskingAndINTxWithMSIXOff() throws {
        let dir = NSTemporaryDirectory() + "vmd-irq-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disk = dir + "/disk.img"
        try Guest.makeDisk(disk)
        let conf = """
            vm "irq" {
                memory 64M
                boot "\(Repo.vmtestELF)"
                disk "\(disk)"
            }
            """
        let d = try Daemon(config: conf, extraArgs: ["-v"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vm irq: stopped (guest powered off)", timeout: 60), d.log)
        let log = d.log
        XCTAssertEqual(d.stop(), 0)
        let r = Guest.results(log)
        XCTAssertEqual(r["blk"], true, log)
        XCTAssertEqual(r["msix"], true, log)
        let line = try XCTUnwrap(log.split(separator: "\n").first { $0.contains("vmtest: msix ok") }, log)
        func value(_ key: String) -> String? {
            line.split(separator: " ").first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
        }
        XCTAssertGreaterThanOrEqual(Int(value("queue_irqs") ?? "") ?? 0, 1, String(line))
        XCTAssertEqual(value("config_irqs"), "0", String(line))
        XCTAssertEqual(value("masked_pending"), "yes", String(line))
        XCTAssertEqual(value("intx_after"), "yes", String(line))
        // INTx went through KVM_IRQFD, not relayed by the VM process.
        XCTAssertFalse(log.contains("interrupts go through the VM process"), log)
        XCTAssertFalse(log.contains("KVM_SET_GSI_ROUTING"), log)
    }
}
