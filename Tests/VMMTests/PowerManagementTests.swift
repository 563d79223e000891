import Foundation
import XCTest
@testable import VMM

/// The PM1 registers (unit) and the power button answered by vmtest under KVM.
final class PowerManagementTests: XCTestCase {
    final class Recorder: InterruptController {
        var levels: [(UInt32, Bool)] = []
        func setIRQ(_ irq: UInt32, level: Bool) { levels.append((irq, level)) }
    }

    func make() -> (PowerManagement, Recorder, () -> Int) {
        let recorder = Recorder()
        let router = InterruptRouter(controller: recorder)
        var offs = 0
        let pm = PowerManagement(sci: router.line(irq: 9), onPowerOff: { offs += 1 })
        return (pm, recorder, { offs })
    }

    func testS5WritePowersOffAndOtherSleepTypesDoNot() {
        let (pm, _, offs) = make()
        XCTAssertEqual(pm.read(offset: 4, size: 2) & 1, 1, "SCI_EN reads 1: always in ACPI mode")
        pm.write(offset: 4, size: 2, value: 1 << 10 | 0x2000)   // SLP_TYP 1 (S1): not offered
        XCTAssertEqual(offs(), 0)
        pm.write(offset: 4, size: 2, value: 0x0001)              // no SLP_EN
        XCTAssertEqual(offs(), 0)
        pm.write(offset: 5, size: 1, value: 0x20)                // byte write of the high half: SLP_EN, type 0
        XCTAssertEqual(offs(), 1)
        pm.write(offset: 4, size: 2, value: 0x2000)              // the multiboot_hello / old vmd value
        XCTAssertEqual(offs(), 2)
        XCTAssertEqual(pm.read(offset: 4, size: 2) & 0x2000, 0, "SLP_EN is write-only")
    }

    func testPowerButtonStatusEnableAndSCI() {
        let (pm, recorder, _) = make()
        XCTAssertFalse(pm.pressPowerButton(), "nobody enabled the event")
        XCTAssertEqual(pm.read(offset: 0, size: 2) & 0x100, 0x100)
        XCTAssertFalse(recorder.levels.contains { $0.1 }, "no SCI while PWRBTN_EN is clear")
        pm.write(offset: 2, size: 2, value: 0xFFFF)              // only PWRBTN_EN sticks
        XCTAssertEqual(pm.read(offset: 2, size: 2), 0x100)
        XCTAssertEqual(recorder.levels.last?.0, 9)
        XCTAssertEqual(recorder.levels.last?.1, true, "the pending press raises the SCI once enabled")
        pm.write(offset: 0, size: 2, value: 0x0001)              // writing 0 to bit 8 leaves it
        XCTAssertEqual(pm.read(offset: 0, size: 2) & 0x100, 0x100)
        pm.write(offset: 0, size: 2, value: 0x0100)              // write 1 to clear
        XCTAssertEqual(pm.read(offset: 0, size: 2) & 0x100, 0)
        XCTAssertEqual(recorder.levels.last?.1, false)
        XCTAssertTrue(pm.pressPowerButton())
        XCTAssertEqual(recorder.levels.last?.1, true)
        // A dword read at 0x600 sees status and enable.
        XCTAssertEqual(pm.read(offset: 0, size: 4), 0x0100_0100)
    }

    func testTimerCountsAndIsReadOnly() {
        let (pm, _, _) = make()
        let a = pm.read(offset: 8, size: 4)
        usleep(2000)
        let b = pm.read(offset: 8, size: 4)
        XCTAssertLessThan(a, 1 << 24)
        XCTAssertGreaterThan((b &- a) & 0xFF_FFFF, 3000, "3.58 MHz: ~7000 ticks in 2 ms")
        pm.write(offset: 8, size: 4, value: 0)
        XCTAssertEqual(pm.read(offset: 0, size: 2), 0)
    }
}

/// vmtest under our VMM: CPUs from our MADT, the power button answered with S5.
final class ACPIGuestTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipUnless(TestSupport.kvmAvailable, "/dev/kvm is missing: ACPI guest tests skipped")
        try XCTSkipUnless(FileManager.default.fileExists(atPath: VMTestGuestTests.vmtestPath),
                          "\(VMTestGuestTests.vmtestPath) not built (make -C guests/vmtest): skipped")
    }

    func kernel() throws -> String {
        try TestSupport.writeFile(Array(try Data(contentsOf: URL(fileURLWithPath: VMTestGuestTests.vmtestPath))),
                                  name: "vmtest.elf")
    }

    func testVMTestFindsCPUsInOurMADT() throws {
        for cpus in [1, 3] {
            let run = try GuestRun(spec: VMSpec(name: "madt\(cpus)", memoryBytes: 64 << 20, vcpus: cpus, kernelPath: try kernel()))
            XCTAssertEqual(try run.run(timeout: 120), .powerOff, run.console)
            let lines = run.console.split(whereSeparator: \.isNewline).map(String.init)
            XCTAssertTrue(lines.contains { $0.hasPrefix("vmtest: cpus ok count=\(cpus) source=madt") }, run.console)
            XCTAssertTrue(lines.contains { $0.hasPrefix("vmtest: acpi ok pm1a_evt=0x600 pm1a_cnt=0x604 sci=9 s5_type=0 sci_en=1 reset=0xcf9/0x6") }, run.console)
        }
    }

    /// The FADT's reset register (0xCF9 <- 0x06) resets the VM.
    func testResetRegisterReboots() throws {
        var spec = VMSpec(name: "acpireset", memoryBytes: 64 << 20, vcpus: 1, kernelPath: try kernel())
        spec.commandLine = "reboot=acpi"
        let run = try GuestRun(spec: spec)
        XCTAssertEqual(try run.run(timeout: 60), .reboot, run.console)
        XCTAssertTrue(run.console.contains("vmtest: reboot: resetting through the ACPI reset register 0xcf9"), run.console)
    }

    func testPowerButtonMakesVMTestEnterS5() throws {
        var spec = VMSpec(name: "pwrbtn", memoryBytes: 64 << 20, vcpus: 1, kernelPath: try kernel())
        spec.commandLine = "stay novmmci"
        let run = try GuestRun(spec: spec)
        XCTAssertFalse(run.vm.powerButtonEnabled)
        final class Box: @unchecked Sendable { var reason: VMExitReason? }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            box.reason = try? run.run(timeout: 90)
            done.signal()
        }
        let deadline = Date().addingTimeInterval(60)
        while !run.console.contains("waiting for a vmmci request or the ACPI power button"), Date() < deadline {
            usleep(20_000)
        }
        XCTAssertTrue(run.vm.powerButtonEnabled, run.console)
        XCTAssertTrue(run.vm.pressPowerButton())
        XCTAssertEqual(done.wait(timeout: .now() + 60), .success)
        XCTAssertEqual(box.reason, .powerOff, run.console)
        XCTAssertTrue(run.console.contains("vmtest: acpi power button pressed, entering S5"), run.console)
    }
}
