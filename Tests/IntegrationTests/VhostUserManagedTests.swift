import Foundation
import XCTest
import Glibc

/// vm.conf's `vhost-user` stanza run by the real vmd: the parent binds the
/// socket with the stanza's owner, the backend serves a frontend, vmctl
/// status shows it connected with the frontend's pid, a SIGKILLed backend
/// is started again on the same socket, and reload removes it.
final class VhostUserManagedTests: XCTestCase {
    /// A frontend (Tests/VhostUserLinux/getfeatures.py) that has asked
    /// GET_FEATURES and holds the connection until `finish()`.
    final class Frontend {
        let process = Process()
        let input = Pipe()
        let output = Pipe()
        var pid: Int32 = 0

        init(socket: String) throws {
            let script = Repo.root.appendingPathComponent("Tests/VhostUserLinux/getfeatures.py").path
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", script, socket]
            process.standardInput = input
            process.standardOutput = output
            process.standardError = output
            try process.run()
            // "pid N features 0x..." once the backend answered.
            var line = Data()
            while !line.contains(UInt8(ascii: "\n")) {
                let chunk = output.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                line += chunk
            }
            let text = String(decoding: line, as: UTF8.self)
            let words = text.split(separator: " ")
            guard words.count >= 4, words[0] == "pid", let pid = Int32(words[1]), words[2] == "features" else {
                throw Failure(text: "the frontend was not served: \(text)")
            }
            self.pid = pid
            XCTAssertEqual(pid, process.processIdentifier)
        }

        func finish() {
            try? input.fileHandleForWriting.close()
            process.waitUntilExit()
        }

        struct Failure: Error { var text: String }
    }

    func backendPIDs(_ name: String) -> [Int32] {
        vmdProcesses().filter { $0.args == "vmd: vhost-user \(name)" }.map(\.pid)
    }

    /// The backend table's row for `name`, split into its columns.
    func row(_ d: Daemon, _ name: String) throws -> [String] {
        let out = try d.vmctl(["status"]).out
        let line = out.split(separator: "\n").first { $0.hasPrefix(name + " ") }
        return line.map { $0.split(separator: " ").map(String.init) } ?? []
    }

    func waitFor(_ what: String, timeout: Double = 10, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try condition() { return }
            usleep(50_000)
        }
        XCTFail("timed out waiting for \(what)")
    }

    func testManagedBlockBackend() throws {
        try requireRoot()
        guard getpwnam("nobody") != nil, getgrnam("nogroup") != nil else {
            throw XCTSkip("needs the user nobody and the group nogroup to own the socket")
        }
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vhost-managed-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = dir.appendingPathComponent("disk0.img").path
        XCTAssertTrue(FileManager.default.createFile(atPath: image, contents: Data(count: 1 << 20)))
        let socket = dir.appendingPathComponent("disk0.sock").path
        let stanza = """
            vhost-user "disk0" {
            \ttype blk
            \tdisk "\(image)"
            \tsocket "\(socket)"
            \towner nobody:nogroup
            }

            """
        let d = try Daemon(config: stanza)
        defer { d.stop() }
        try d.waitReady()

        // The parent bound it, as root, for its owner; the backend runs as _vmd.
        var st = stat()
        XCTAssertEqual(lstat(socket, &st), 0, "no socket; log:\n\(d.log)")
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFSOCK)
        XCTAssertEqual(st.st_uid, getpwnam("nobody")!.pointee.pw_uid)
        XCTAssertEqual(st.st_gid, getgrnam("nogroup")!.pointee.gr_gid)
        XCTAssertEqual(st.st_mode & 0o777, 0o660)
        try waitFor("the backend process") { backendPIDs("disk0").count == 1 }
        let first = backendPIDs("disk0")[0]
        XCTAssertEqual(vmdProcesses().first { $0.pid == first }?.user, "_vmd")
        // vmm spawned it, as it does VMs.
        let vmm = descendants(of: d.pid).first { $0.args == "vmd: vmm" }
        XCTAssertNotNil(vmm)
        XCTAssertEqual(vmdProcesses().first { $0.pid == first }?.ppid, vmm?.pid)
        XCTAssertEqual(try row(d, "disk0"), ["disk0", "blk", socket, "listening", "-", "0"])

        // A frontend: connected, with its pid.
        let frontend = try Frontend(socket: socket)
        try waitFor("connected in vmctl status") { try row(d, "disk0") == ["disk0", "blk", socket, "connected", String(frontend.pid), "0"] }
        let json = try d.vmctl(["status", "--json"]).out
        XCTAssertTrue(json.contains("\"frontend_pid\":\(frontend.pid)"), json)
        XCTAssertTrue(json.contains("\"state\":\"connected\""), json)

        // SIGKILL: started again on the same socket, restarts 1.
        kill(first, SIGKILL)
        try waitFor("the backend started again") { backendPIDs("disk0").count == 1 && backendPIDs("disk0")[0] != first }
        frontend.finish()
        try waitFor("RESTARTS 1") { try row(d, "disk0") == ["disk0", "blk", socket, "listening", "-", "1"] }
        let again = try Frontend(socket: socket)
        try waitFor("connected again") { try row(d, "disk0") == ["disk0", "blk", socket, "connected", String(again.pid), "1"] }
        again.finish()

        // Reload without the stanza: the backend and its socket are gone.
        try "".write(toFile: d.config, atomically: true, encoding: .utf8)
        XCTAssertEqual(try d.vmctl(["reload"]).status, 0)
        try waitFor("the backend stopped") { backendPIDs("disk0").isEmpty }
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket))
        XCTAssertFalse(try d.vmctl(["status"]).out.contains("FRONTEND-PID"))

        // And reload adds it back.
        try stanza.write(toFile: d.config, atomically: true, encoding: .utf8)
        XCTAssertEqual(try d.vmctl(["reload"]).status, 0)
        try waitFor("the backend back") { backendPIDs("disk0").count == 1 }
        XCTAssertEqual(try row(d, "disk0"), ["disk0", "blk", socket, "listening", "-", "0"])
        XCTAssertEqual(d.stop(), 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket), "the socket outlived vmd")
        try waitFor("the backend gone with vmd") { backendPIDs("disk0").isEmpty }
    }
}

extension VhostUserManagedTests {
    /// A backend that dies at every start (here: killed by its seccomp
    /// filter, VMD_SANDBOX_SELFTEST) is given up after 5 deaths without a
    /// frontend, logged, and shown as failed; vmd itself carries on.
    func testCrashLoopIsBounded() throws {
        try requireRoot()
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vhost-loop-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let socket = dir.appendingPathComponent("rng.sock").path
        let d = try Daemon(config: "vhost-user \"rng\" {\n\ttype rnd\n\tsocket \"\(socket)\"\n}\n",
                           env: ["VMD_SANDBOX_SELFTEST": "vhost-user:socket"])
        defer { d.stop() }
        try d.waitReady()
        try waitFor("the backend given up", timeout: 20) { d.log.contains("giving up") }
        XCTAssertTrue(d.log.contains("vhost-user rng: backend process"), d.log)
        XCTAssertTrue(d.log.contains("died 5 times in a row without serving a frontend"), d.log)
        XCTAssertEqual(try row(d, "rng"), ["rng", "rnd", socket, "failed", "-", "4"])
        XCTAssertTrue(backendPIDs("rng").isEmpty)
        XCTAssertEqual(try d.vmctl(["status", "--json"]).status, 0)
    }
}

extension VhostUserManagedTests {
    /// A net backend's tap comes from priv (in a namespace the test made),
    /// with the stanza's name; the backend serves a frontend; the tap goes
    /// with the backend on reload.
    func testManagedNetBackendGetsItsTapFromPriv() throws {
        try requireRoot()
        let ns = try NetNamespace()
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vhost-net-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let socket = dir.appendingPathComponent("net0.sock").path
        let tap = "vhut\(getpid() % 100000)"
        let d = try Daemon(config: """
            vhost-user "net0" {
            \ttype net
            \tinterface "\(tap)"
            \tlladdr fe:e1:ba:d0:00:42
            \tsocket "\(socket)"
            }

            """, netns: ns.name)
        defer { d.stop() }
        try d.waitReady()
        try waitFor("the backend") { backendPIDs("net0").count == 1 }
        XCTAssertEqual(try runCommand("/usr/sbin/ip", ["-n", ns.name, "link", "show", tap]).status, 0, d.log)
        XCTAssertTrue(d.log.contains("vhost-user net0: tap \(tap)"), d.log)
        XCTAssertTrue(vmdProcesses().contains { $0.args == "vmd: vhost-user net0" && $0.user == "_vmd" })
        let frontend = try Frontend(socket: socket)
        try waitFor("connected") { try row(d, "net0") == ["net0", "net", socket, "connected", String(frontend.pid), "0"] }
        frontend.finish()
        try "".write(toFile: d.config, atomically: true, encoding: .utf8)
        XCTAssertEqual(try d.vmctl(["reload"]).status, 0)
        try waitFor("the backend stopped") { backendPIDs("net0").isEmpty }
        try waitFor("the tap gone") {
            try runCommand("/usr/sbin/ip", ["-n", ns.name, "link", "show", tap]).status != 0
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket))
    }
}
