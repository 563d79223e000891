import Foundation
import XCTest
import Glibc
import VMDControl

/// Issue 9's control-plane faults, tried as a vmd user would.
final class ControlPlaneFaultTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireVmctl()
    }

    func inode(_ path: String) -> UInt64? {
        var st = stat()
        return lstat(path, &st) == 0 ? UInt64(st.st_ino) : nil
    }

    /// A second vmd on a live socket refuses to start, says why, and
    /// leaves the first daemon's socket (and VMs) alone.
    func testSecondDaemonRefusesALiveSocket() throws {
        let d = try Daemon(config: "vm \"one\" {\n    disable\n    boot \"/dev/null\"\n}\n")
        try d.waitReady()
        let before = inode(d.socket)
        XCTAssertNotNil(before)
        let second = try runCommand(Repo.vmd, ["-d", "-f", d.config, "-s", d.socket], timeout: 20)
        XCTAssertEqual(second.status, 1, second.out)
        XCTAssertTrue(second.out.contains("control socket \(d.socket) is in use"), second.out)
        XCTAssertFalse(second.out.contains("startup complete"), second.out)
        XCTAssertEqual(inode(d.socket), before, "the live socket is not replaced or removed")
        let st = try d.vmctl(["status"])
        XCTAssertEqual(st.status, 0, st.out)
        XCTAssertTrue(st.out.contains(" one\n"), st.out)
        XCTAssertEqual(descendants(of: d.pid).filter { $0.args.hasPrefix("vmd: control") }.count, 1)
        XCTAssertEqual(d.stop(), 0)
        XCTAssertNil(inode(d.socket), "the daemon removes its own socket on exit")
    }

    /// On exit vmd removes the socket only if it is still the one it bound.
    func testExitLeavesSomeoneElsesSocket() throws {
        let d = try Daemon(config: "")
        try d.waitReady()
        // Someone replaced the socket (e.g. a daemon started after this one
        // lost its socket): it is theirs now.
        unlink(d.socket)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in d.socket.utf8.enumerated() where i < p.count - 1 { p[i] = b }
        }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        XCTAssertEqual(r, 0)
        let theirs = inode(d.socket)
        XCTAssertEqual(d.stop(), 0)
        XCTAssertEqual(inode(d.socket), theirs, "vmd must not unlink a socket it does not own")
    }

    /// vmd without a vm.conf warns and runs with no VMs.
    func testNoConfigFileRunsWithNoVMs() throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vmd-noconf-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let sock = dir.appendingPathComponent("vmd.sock").path
        let missing = dir.appendingPathComponent("missing.conf").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Repo.vmd)
        p.arguments = ["-d", "-f", missing, "-s", sock]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }
        let deadline = Date().addingTimeInterval(20)
        while inode(sock) == nil && p.isRunning && Date() < deadline { usleep(50_000) }
        XCTAssertTrue(p.isRunning, "vmd runs without a config file")
        let st = try runCommand(Repo.vmctl, ["-s", sock, "status"])
        XCTAssertTrue(st.out.hasPrefix("   ID   PID VCPUS"), st.out)
        XCTAssertEqual(st.out.split(separator: "\n").count, 1, "no VMs: \(st.out)")
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let log = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertTrue(log.contains("\(missing): failed to open: No such file or directory"), log)
    }

    /// A refused ad-hoc start leaves nothing in the table, also after a
    /// reload; a refused start with flags leaves a configured VM unchanged.
    func testRefusedAdHocStartLeavesNoGhost() throws {
        let d = try Daemon(config: "vm \"conf\" {\n    disable\n    memory 64M\n    boot \"/dev/null\"\n    owner :root\n}\n")
        try d.waitReady()
        let qcow = d.dir.appendingPathComponent("q.img").path
        FileManager.default.createFile(atPath: qcow, contents: Data([0x51, 0x46, 0x49, 0xfb] + [UInt8](repeating: 0, count: 508)))
        let raw = d.dir.appendingPathComponent("busy.img").path
        FileManager.default.createFile(atPath: raw, contents: Data(count: 1 << 20))
        let holder = open(raw, O_RDWR)
        XCTAssertEqual(flock(holder, LOCK_EX | LOCK_NB), 0)
        defer { close(holder) }

        let bad = try d.vmctl(["start", "-b", "/dev/null", "-d", qcow, "ghost1"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.out.contains("qcow2"), bad.out)
        let busy = try d.vmctl(["start", "-b", "/dev/null", "-d", raw, "ghost2"])
        XCTAssertEqual(busy.status, 1)
        XCTAssertTrue(busy.out.contains("in use"), busy.out)
        let missing = try d.vmctl(["start", "-b", "/nonexistent/kernel", "ghost3"])
        XCTAssertEqual(missing.status, 1)
        // The configured VM with a refused override keeps its own settings.
        let over = try d.vmctl(["start", "-m", "128M", "-d", qcow, "conf"])
        XCTAssertEqual(over.status, 1, over.out)

        func table() throws -> String { try d.vmctl(["status"]).out }
        var st = try table()
        for g in ["ghost1", "ghost2", "ghost3"] { XCTAssertFalse(st.contains(" \(g)\n"), st) }
        XCTAssertTrue(st.contains("64.0M") && st.contains(" conf\n"), st)
        XCTAssertFalse(st.contains("128"), "a refused start does not change the configured VM: \(st)")
        XCTAssertTrue(st.contains(" :root "), "a group-only owner shows as :group: \(st)")
        XCTAssertEqual(try d.vmctl(["reload"]).status, 0)
        usleep(500_000)
        st = try table()
        for g in ["ghost1", "ghost2", "ghost3"] { XCTAssertFalse(st.contains(" \(g)\n"), "reload boots no ghost: \(st)") }
        XCTAssertFalse(d.log.contains("vm ghost"), d.log)
        XCTAssertEqual(d.stop(), 0)
    }

    /// Reload reports missing files and unknown owners with file:line and
    /// changes nothing.
    func testReloadReportsMissingFilesAndUnknownOwners() throws {
        let d = try Daemon(config: "vm \"a\" {\n    disable\n    boot \"/dev/null\"\n}\n")
        try d.waitReady()
        try "socket owner root:nosuchgroup9\nvm \"a\" {\n    disable\n    boot \"/dev/null\"\n    disk \"/nonexistent/a.img\"\n    owner nosuchuser9\n}\n"
            .write(toFile: d.config, atomically: true, encoding: .utf8)
        let r = try d.vmctl(["reload"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.out.contains("vm.conf:1: failed to get group: nosuchgroup9"), r.out)
        XCTAssertTrue(r.out.contains("vm.conf:5: disk /nonexistent/a.img: No such file or directory"), r.out)
        XCTAssertTrue(r.out.contains("vm.conf:6: failed to get user: nosuchuser9"), r.out)
        let check = try runCommand(Repo.vmd, ["-n", "-f", d.config])
        XCTAssertEqual(check.status, 1)
        XCTAssertTrue(check.out.contains("vm.conf:1: failed to get group: nosuchgroup9"), check.out)
        // `vmctl load FILE` names a file: a missing one is an error (only the
        // configured vm.conf may be absent), and nothing changes.
        let load = try d.vmctl(["load", "/nonexistent/vm.conf"])
        XCTAssertEqual(load.status, 1)
        XCTAssertTrue(load.out.contains("/nonexistent/vm.conf: No such file or directory"), load.out)
        let raw = try RawControlClient(socket: d.socket, uid: 0, gid: 0)
        raw.send(.ctlReload, Array("/nonexistent/vm.conf".utf8))
        let reply = raw.receive()
        XCTAssertEqual(reply?.type, MessageType.ctlFail.rawValue)
        XCTAssertEqual(try reply.map { try Failure(decoding: $0.data) }?.message,
                       "/nonexistent/vm.conf: failed to open: No such file or directory")
        XCTAssertTrue(try d.vmctl(["status"]).out.contains(" a\n"))
        XCTAssertEqual(d.stop(), 0)
    }
}
