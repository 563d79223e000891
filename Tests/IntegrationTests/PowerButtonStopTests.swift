import Foundation
import XCTest
import Glibc

/// `vmctl stop` of a guest without a vmmci driver: the VM process sends the
/// vmmci request and presses the ACPI power button (the guest enabled its
/// event); vmtest (`novmmci`) answers the button by entering S5 through PM1a_CNT.
final class PowerButtonStopTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
        try requireVmctl()
    }

    func config(_ name: String, cmdline: String) -> String {
        """
        vm "\(name)" {
            memory 64M
            boot "\(Repo.vmtestELF)"
            cmdline "\(cmdline)"
        }

        """
    }

    func testStopPressesThePowerButtonForAGuestWithoutVMMCI() throws {
        let d = try Daemon(config: config("pb", cmdline: "stay novmmci"), extraArgs: ["-v"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("waiting for a vmmci request or the ACPI power button", timeout: 30), d.log)
        XCTAssertTrue(d.log.contains("vmtest: acpi ok pm1a_evt=0x600"), d.log)
        let started = Date()
        let stop = try d.vmctl(["stop", "-w", "pb"])
        XCTAssertEqual(stop.status, 0, stop.out)
        XCTAssertTrue(d.waitLog("vmd: vm pb: stopped", timeout: 20), d.log)
        let took = Date().timeIntervalSince(started)
        XCTAssertTrue(d.log.contains("pressed the ACPI power button"), d.log)
        XCTAssertTrue(d.log.contains("vmtest: acpi power button pressed, entering S5"), d.log)
        XCTAssertTrue(d.log.contains("guest powered off"), d.log)
        XCTAssertFalse(d.log.contains("powered off after the guest did not acknowledge"), d.log)
        XCTAssertLessThan(took, 3, "the guest's S5, before the 3 s acknowledgement time")
        print("power-button stop took \(String(format: "%.2f", took)) s")
        XCTAssertEqual(d.stop(), 0)
    }

    /// A guest with a vmmci driver takes the vmmci path (vmtest ignores the
    /// button then, as a vmmci-aware OS may).
    func testStopKeepsVMMCIForAGuestThatAcknowledges() throws {
        let d = try Daemon(config: config("vm", cmdline: "stay"), extraArgs: ["-v"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("waiting for a vmmci request or the ACPI power button", timeout: 30), d.log)
        let stop = try d.vmctl(["stop", "-w", "vm"])
        XCTAssertEqual(stop.status, 0, stop.out)
        XCTAssertTrue(d.waitLog("vmd: vm vm: stopped", timeout: 20), d.log)
        XCTAssertTrue(d.log.contains("guest acknowledged vmmci command"), d.log)
        XCTAssertFalse(d.log.contains("the guest took the ACPI power button"), d.log)
        XCTAssertFalse(d.log.contains("acpi power button pressed"), d.log)
        XCTAssertEqual(d.stop(), 0)
    }
}
