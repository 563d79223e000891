import Foundation
import XCTest
import Glibc

/// Issue 9, item 5: a real trap in a sandboxed process is reported as what it
/// was (signal and fault address), not as the sandbox's SIGSYS.
final class CrashReportTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
    }

    func testSegfaultInADeviceProcessIsReportedAsSIGSEGV() throws {
        let d = try Daemon(config: """
            vm "segv" {
                memory 64M
                boot "\(Repo.vmtestELF)"
                cmdline "stay"
            }
            """, env: ["VMD_SANDBOX_SELFTEST": "viornd@running:segv"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vmd: vm segv: stopped", timeout: 60), d.log)
        XCTAssertTrue(d.log.contains("vm segv viornd: crashed: SIGSEGV at address 0xdead0000"), d.log)
        XCTAssertTrue(d.log.contains("vm segv: viornd process killed by SIGSEGV: stopping the VM"), d.log)
        XCTAssertTrue(d.log.contains("vmd: vm segv: stopped: viornd process killed by SIGSEGV"), d.log)
        XCTAssertFalse(d.log.contains("SIGSYS"), d.log)
        XCTAssertEqual(d.stop(), 0)
    }

    /// A Swift runtime trap (failed precondition) in a device: its message,
    /// then SIGILL with the trapping address, not SIGSYS.
    func testSwiftTrapInADeviceProcessIsReportedAsSIGILL() throws {
        let d = try Daemon(config: """
            vm "trap" {
                memory 64M
                boot "\(Repo.vmtestELF)"
                cmdline "stay"
            }
            """, env: ["VMD_SANDBOX_SELFTEST": "viornd@running:trap"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vmd: vm trap: stopped", timeout: 60), d.log)
        XCTAssertTrue(d.log.contains("Precondition failed: self-test: Swift trap inside the sandbox"), d.log)
        XCTAssertTrue(d.log.contains("vm trap viornd: crashed: SIGILL at address 0x"), d.log)
        XCTAssertTrue(d.log.contains("viornd process killed by SIGILL"), d.log)
        XCTAssertFalse(d.log.contains("SIGSYS"), d.log)
        XCTAssertEqual(d.stop(), 0)
    }

    /// The same through syslog (vmd without -d): the handler writes to the
    /// syslog socket the process already holds.
    func testSegfaultIsReportedThroughSyslog() throws {
        let dir = NSTemporaryDirectory() + "vmd-crash-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let server = try SyslogServer(path: dir + "/log")
        let config = dir + "/vm.conf"
        try "vm \"sl\" {\n memory 64M\n boot \"\(Repo.vmtestELF)\"\n cmdline \"stay\"\n}\n"
            .write(toFile: config, atomically: true, encoding: .utf8)
        let launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:], stdin=subprocess.DEVNULL))"
        let r = try runCommand("/usr/bin/python3", ["-c", launcher, Repo.vmd, "-f", config, "-s", dir + "/vmd.sock"],
                               env: ["VMD_SYSLOG_SOCKET": dir + "/log", "VMD_SANDBOX_SELFTEST": "vmmci@running:segv"])
        XCTAssertEqual(r.status, 0, r.out)
        XCTAssertTrue(server.wait(for: "vmd: vm sl: stopped", timeout: 60), server.text)
        XCTAssertTrue(server.text.contains(": vm sl vmmci: crashed: SIGSEGV at address 0xdead0000"), server.text)
        XCTAssertTrue(server.text.contains("vmmci process killed by SIGSEGV"), server.text)
        XCTAssertFalse(server.text.contains("SIGSYS"), server.text)
        if let pid = server.pid(of: "vmd: vm sl: stopped"), pid > 1 { kill(pid, SIGTERM) }
        XCTAssertTrue(server.wait(for: "vmd: exiting", timeout: 30), server.text)
    }
}
