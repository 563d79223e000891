// QEMUVmtestTests: the vmtest guest (guests/vmtest) must pass every check against
// QEMU's own virtio devices before it may judge ours. Each test runs
// guests/vmtest/run-qemu.sh, which builds build/vmtest.elf, boots it under
// qemu-system-x86_64 -M pc (KVM, else TCG) in a private network namespace, and
// verifies the disk image and the guest's power-off from the host.
import Foundation
import XCTest

final class QEMUVmtestTests: XCTestCase {
    /// Tests/IntegrationTests/QEMUVmtestTests.swift -> repository root.
    private static let repoRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    private var script: URL { Self.repoRoot.appendingPathComponent("guests/vmtest/run-qemu.sh") }

    private func requireQEMU() throws {
        guard getuid() == 0 else {
            throw XCTSkip("run-qemu.sh needs root: it creates a network namespace and a tap device")
        }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let found = path.split(separator: ":").contains {
            FileManager.default.isExecutableFile(atPath: "\($0)/qemu-system-x86_64")
        }
        guard found else {
            throw XCTSkip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")
        }
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: script.path), "\(script.path) missing")
    }

    /// Runs the script; returns its exit status and stdout+stderr together.
    private func runScript(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [script.path] + arguments
        process.currentDirectoryURL = Self.repoRoot
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    private func lines(_ output: String) -> [String] {
        output.split(separator: "\n").map { String($0).trimmingCharacters(in: .whitespaces) }
    }

    func testEveryCheckPassesWithTwoCPUs() throws {
        try requireQEMU()
        let (status, output) = try runScript(["--smp", "2"])
        let all = lines(output)
        XCTAssertEqual(status, 0, "run-qemu.sh failed:\n\(output)")
        for check in ["serial", "boot", "cpus", "rng", "blk", "net"] {
            XCTAssertTrue(all.contains { $0.hasPrefix("vmtest: \(check) ok") }, "no '\(check) ok' line:\n\(output)")
        }
        XCTAssertTrue(all.contains { $0.hasPrefix("vmtest: cpus ok count=2") }, "expected two CPUs:\n\(output)")
        XCTAssertFalse(output.contains(" FAIL"), "a check failed:\n\(output)")
        let summary = all.first { $0.hasPrefix("vmtest summary:") }
        XCTAssertNotNil(summary, "no summary line:\n\(output)")
        XCTAssertTrue(summary?.hasSuffix("failed=0") ?? false, "summary: \(summary ?? "none")")
        // The script verified sectors 2048..2175 and the guest's own power-off.
        XCTAssertTrue(output.contains("run-qemu.sh: PASS (image sectors 2048..2175 verified, guest powered off)"), output)
        // Completions were seen through the interrupt handler, not only by polling.
        let blk = all.first { $0.hasPrefix("vmtest: blk ok") } ?? ""
        XCTAssertFalse(blk.contains(" irqs=0 "), "no interrupt-driven completion: \(blk)")
    }

    func testBenchModePrintsMachineReadableResults() throws {
        try requireQEMU()
        let (status, output) = try runScript(["--bench"])
        XCTAssertEqual(status, 0, "run-qemu.sh --bench failed:\n\(output)")
        let expected = [
            ("blk_randread_qd1", "iops"), ("blk_randread_qd32", "iops"),
            ("blk_flush_lat", "median_us"), ("net_tx_1500", "fps"),
        ]
        for (name, key) in expected {
            guard let line = lines(output).first(where: { $0.hasPrefix("vmtest bench: \(name) ") }) else {
                XCTFail("no bench line for \(name):\n\(output)")
                continue
            }
            let value = line.split(separator: " ").first { $0.hasPrefix("\(key)=") }
                .flatMap { Double($0.dropFirst(key.count + 1)) }
            XCTAssertNotNil(value, "\(name): no numeric \(key)= in '\(line)'")
            XCTAssertGreaterThan(value ?? 0, 0, "\(name): \(line)")
        }
    }

    /// The harness must notice a failing check: a gateway outside the guest's subnet.
    func testAFailingCheckFailsTheRun() throws {
        try requireQEMU()
        let (status, output) = try runScript(["--append", "gw=192.168.77.1"])
        XCTAssertNotEqual(status, 0, "run-qemu.sh passed although the net check must fail:\n\(output)")
        XCTAssertTrue(lines(output).contains { $0.hasPrefix("vmtest: net FAIL") }, output)
        XCTAssertTrue(output.contains("failed=1"), output)
    }
}
