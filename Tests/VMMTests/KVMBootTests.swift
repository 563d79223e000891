import Foundation
import XCTest
@testable import VMM

/// Real guests under KVM: the Multiboot probe, vmtest (when built), Linux (VT-x only).
final class KVMBootTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipUnless(TestSupport.kvmAvailable, "/dev/kvm is missing: KVM boot tests skipped")
    }

    func testMultibootHelloPrintsTwoLinesAndPowersOff() throws {
        let kernel = try TestSupport.buildMultibootHello()
        let run = try GuestRun(spec: VMSpec(name: "hello", memoryBytes: 64 << 20, vcpus: 1, kernelPath: kernel))
        XCTAssertEqual(run.vm.boot.format, "Multiboot")
        let started = Date()
        let reason = try run.run(timeout: 60)
        XCTAssertEqual(reason, .powerOff, "console so far: \(run.console)")
        XCTAssertEqual(run.console, "vmtest: hello\nvmtest summary: passed=1 failed=0\n")
        XCTAssertEqual(String(decoding: run.vm.consoleReplay(), as: UTF8.self), run.console)
        print("multiboot_hello: power-off after \(String(format: "%.3f", Date().timeIntervalSince(started))) s")
    }
}

/// The project's test guest (guests/vmtest, built by `make -C guests/vmtest`).
final class VMTestGuestTests: XCTestCase {
    static var vmtestPath: String { TestSupport.repositoryRoot + "/build/vmtest.elf" }

    override func setUpWithError() throws {
        try XCTSkipUnless(TestSupport.kvmAvailable, "/dev/kvm is missing: vmtest boot skipped")
        try XCTSkipUnless(FileManager.default.fileExists(atPath: Self.vmtestPath),
                          "\(Self.vmtestPath) not built (make -C guests/vmtest): vmtest boot skipped")
    }

    private func boot(cpus: Int) throws -> (VMExitReason?, String) {
        // A private copy: the guest may be rebuilt while the test runs.
        let kernel = try TestSupport.writeFile(Array(try Data(contentsOf: URL(fileURLWithPath: Self.vmtestPath))),
                                               name: "vmtest.elf")
        let run = try GuestRun(spec: VMSpec(name: "vmtest\(cpus)", memoryBytes: 64 << 20, vcpus: cpus, kernelPath: kernel))
        let reason = try run.run(timeout: 120)
        print("vmtest cpus=\(cpus) console:\n\(run.console)")
        return (reason, run.console)
    }

    /// vmtest prints `vmtest: <check> ok|FAIL ...` lines, `vmtest: cpus ok count=N`
    /// and `vmtest summary: passed=N failed=M`, then powers off (issue 3).
    private func check(cpus: Int) throws {
        let (reason, console) = try boot(cpus: cpus)
        XCTAssertEqual(reason, .powerOff)
        let lines = console.split(whereSeparator: \.isNewline).map(String.init)  // the guest ends lines with \r\n
        XCTAssertTrue(lines.contains("vmtest: serial ok") || lines.contains { $0.hasPrefix("vmtest: serial ok ") },
                      "no 'vmtest: serial ok' line")
        XCTAssertTrue(lines.contains { $0.hasPrefix("vmtest: cpus ok count=\(cpus)") },
                      "no 'vmtest: cpus ok count=\(cpus)' line")
        XCTAssertTrue(lines.contains { $0.hasPrefix("vmtest: boot ok") }, "no 'vmtest: boot ok' line")
        XCTAssertTrue(lines.contains { $0.hasPrefix("vmtest summary: ") && $0.hasSuffix(" failed=0") },
                      "no summary line with failed=0")
    }

    func testVMTestOneCPU() throws { try check(cpus: 1) }
    func testVMTestTwoCPUs() throws { try check(cpus: 2) }
}
