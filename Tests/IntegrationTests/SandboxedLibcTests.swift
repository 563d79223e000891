import Foundation
import XCTest
import Glibc

/// Issue 9, item 2: libc calls that lazily open files (time zones, message
/// catalogs, syslog's reconnect) must not be reachable after a sandbox is
/// applied: each role is exercised under its real policy.
final class SandboxedLibcTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
    }

    /// A guest reading every CMOS register and the clock (as every Linux
    /// guest does at boot) keeps its VM running; gmtime_r/timegm used to
    /// open /etc/localtime inside the vm sandbox, which killed it (SIGSYS).
    func testGuestReadsEveryCMOSRegister() throws {
        let d = try Daemon(config: """
            vm "clock" {
                memory 64M
                boot "\(Repo.vmtestELF)"
            }
            """, extraArgs: ["-v"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vmd: vm clock: stopped", timeout: 60), d.log)
        XCTAssertTrue(d.log.contains("vm clock: stopped: guest powered off"), d.log)
        XCTAssertEqual(Guest.results(d.log)["rtc"], true, d.log)
        // The guest's date is the host's, in UTC.
        let f = DateFormatter()
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd"
        XCTAssertTrue(d.log.contains("vmtest: rtc ok time=\(f.string(from: Date()))")
                      || d.log.contains("vmtest: rtc ok time=\(f.string(from: Date().addingTimeInterval(-60)))"), d.log)
        XCTAssertFalse(d.log.contains("SIGSYS"), d.log)
        XCTAssertEqual(d.stop(), 0)
    }

    /// vmd without -d logs to syslog from every process, after each one
    /// restricted itself: messages (with errno texts) arrive, nothing dies.
    func testEveryRoleLogsToSyslogInsideItsSandbox() throws {
        let dir = NSTemporaryDirectory() + "vmd-syslog-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let logSocket = dir + "/log"
        let server = try SyslogServer(path: logSocket)
        let disk = dir + "/disk.img"
        try Guest.makeDisk(disk)
        let config = dir + "/vm.conf", socket = dir + "/vmd.sock"
        try """
            vm "sl" {
                memory 64M
                boot "\(Repo.vmtestELF)"
                disk "\(disk)"
                cmdline "stay"
            }
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let roles = ["control", "priv", "vmm", "vm", "vioblk0", "viornd", "vmmci"]
        // Through python's subprocess (close_fds): Foundation's Process leaves a
        // descriptor in the child whose closing it waits for, and the daemon
        // would hold it until it exits.
        let launcher = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:], stdin=subprocess.DEVNULL))"
        let r = try runCommand("/usr/bin/python3", ["-c", launcher, Repo.vmd, "-vv", "-f", config, "-s", socket], env: [
            "VMD_SYSLOG_SOCKET": logSocket,
            "VMD_SANDBOX_SELFTEST": roles.map { "\($0):errno" }.joined(separator: ","),
        ])
        XCTAssertEqual(r.status, 0, r.out)   // the daemon detached
        var daemonPID: Int32 = 0
        defer { if daemonPID > 0 { kill(daemonPID, SIGTERM) } }
        XCTAssertTrue(server.wait(for: "vmtest summary:", timeout: 60), server.text)
        XCTAssertTrue(server.wait(for: "vm sl vioblk0: self-test: errno", timeout: 10), server.text)
        let text = server.text
        daemonPID = server.pid(of: "vmd: startup complete") ?? 0
        XCTAssertGreaterThan(daemonPID, 1, text)
        for role in ["control", "priv", "vmm", "vm sl", "vm sl vioblk0", "vm sl viornd", "vm sl vmmci"] {
            XCTAssertTrue(text.contains("\(role): self-test: errno: read: Bad file descriptor; Input/output error; error 9999"),
                          "\(role)\n\(text)")
        }
        XCTAssertTrue(text.contains("<30>vmd["), "facility daemon, level info\n\(text)")
        XCTAssertEqual(Guest.results(text)["rtc"], true, text)
        XCTAssertEqual(Guest.results(text)["blk"], true, text)
        XCTAssertFalse(text.contains("killed"), text)
        XCTAssertFalse(text.contains("stopped"), text)
        // Every process still runs.
        let tree = descendants(of: daemonPID)
        for title in ["vmd: priv", "vmd: control", "vmd: vmm", "vmd: vm sl", "vmd: vm sl vioblk0", "vmd: vm sl viornd"] {
            XCTAssertTrue(tree.contains { $0.args == title }, "\(title) is gone: \(tree)\n\(text)")
        }
        kill(daemonPID, SIGTERM)
        XCTAssertTrue(server.wait(for: "vmd: exiting", timeout: 30), server.text)
        daemonPID = 0
    }
}

/// A datagram socket standing in for /dev/log.
final class SyslogServer: @unchecked Sendable {
    final class Lines: @unchecked Sendable {
        let lock = NSLock()
        var lines: [String] = []
    }
    let fd: Int32
    let path: String
    private let received = Lines()

    init(path: String) throws {
        self.path = path
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in path.utf8.enumerated() where i < p.count - 1 { p[i] = b }
        }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard r == 0 else { throw XCTSkip("cannot bind \(path)") }
        chmod(path, 0o666)   // sandboxed processes run as _vmd
        Thread.detachNewThread { [fd, received] in
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = recv(fd, &buf, buf.count, 0)
                if n <= 0 { return }
                let line = String(decoding: buf[0..<n], as: UTF8.self)
                received.lock.lock(); received.lines.append(line); received.lock.unlock()
            }
        }
    }

    var text: String {
        received.lock.lock(); defer { received.lock.unlock() }
        return received.lines.joined(separator: "\n")
    }

    func wait(for needle: String, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if text.contains(needle) { return true }
            usleep(50_000)
        }
        return false
    }

    /// The pid in `<PRI>vmd[PID]: ` of the first line containing `needle`.
    func pid(of needle: String) -> Int32? {
        guard let line = text.split(separator: "\n").first(where: { $0.contains(needle) }),
              let open = line.firstIndex(of: "["), let close = line.firstIndex(of: "]") else { return nil }
        return Int32(line[line.index(after: open)..<close])
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        unlink(path)
    }
}
