// Linux's own virtio drivers against our devices: Debian's kernel boots under
// QEMU TCG with our vhost-user backends (`vmd -P vhost-user`). The scenarios
// live in Tests/VhostUserLinux/run.py (it builds the initramfs, starts the
// backends and QEMU, and checks the results from the host); each test runs one.
import Foundation
import XCTest

final class VhostUserLinuxTests: XCTestCase {
    private func run(_ scenario: String, timeout: Double) throws {
        let script = Repo.root.appendingPathComponent("Tests/VhostUserLinux/run.py").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, Repo.vmd, scenario]
        process.currentDirectoryURL = Repo.root
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("vhost-user-\(scenario)-\(getpid()).log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: log) }
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(200_000) }
        if process.isRunning {
            process.terminate()
            XCTFail("\(scenario): no result after \(Int(timeout)) s")
        }
        process.waitUntilExit()
        try handle.close()
        let output = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        if process.terminationStatus == 77 {
            throw XCTSkip(output.split(separator: "\n").last(where: { $0.hasPrefix("SKIP") }).map(String.init) ?? "skipped")
        }
        XCTAssertEqual(process.terminationStatus, 0, "\(scenario) failed:\n\(output)")
        if let pass = output.split(separator: "\n").last(where: { $0.hasPrefix("PASS") }) {
            print("vhost-user \(scenario): \(pass)")
        }
    }

    /// blk (fio verify, discard, flush, image checksum), scsi CD-ROM, rng and
    /// net (ping, 64 MiB TCP) in one guest.
    func testLinuxDriversAgainstOurBackends() throws {
        try run("devices", timeout: 240)
    }

    /// The blk backend SIGKILLed and restarted 5 times during fio verify.
    func testBlockBackendRestartsUnderLoad() throws {
        try run("restart", timeout: 200)
    }

    /// A hostile frontend never crashes the backend.
    func testHostileFrontendIsRefused() throws {
        try run("badfrontend", timeout: 60)
    }
}
