import Foundation
import Glibc
import XCTest
import Imsg
import VMDControl
import VMDSystem

/// The built `vmctl` binary against a scripted fake vmd: exact output,
/// exit status, and the requests it sends.
final class CLITests: XCTestCase {
    var path = ""
    var listener: Int32 = -1

    /// vmctl sits next to the test bundle in the build directory.
    var vmctl: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("vmctl").path
    }

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: vmctl) else {
            throw XCTSkip("vmctl is not built next to the tests (\(vmctl))")
        }
        path = NSTemporaryDirectory() + "vmctl-cli-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        XCTAssertEqual(bound, 0)
        XCTAssertEqual(listen(listener, 4), 0)
    }

    override func tearDown() {
        if listener >= 0 { close(listener) }
        unlink(path)
    }

    final class Requests: @unchecked Sendable {
        var list: [Imsg] = []
    }

    /// Serves one client: records each request and answers with `script`.
    func serve(_ script: @escaping @Sendable (Imsg) -> [Imsg]) -> Requests {
        let seen = Requests()
        let fd = listener
        Thread.detachNewThread {
            let client = accept(fd, nil, nil)
            guard client >= 0 else { return }
            let buffer = ImsgBuffer(fd: client)
            while let request = try? buffer.readMessage() {
                seen.list.append(request)
                for reply in script(request) { try? buffer.sendBlocking(reply) }
            }
            close(client)
        }
        return seen
    }

    func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: vmctl)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle(forReadingAtPath: "/dev/null")
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    static let web = VMInfo(id: 1, pid: 4242, vcpus: 1, maxMemory: 512 << 20, curMemory: 512 << 20,
                            tty: "/dev/pts/3", owner: "root", state: "running", name: "web")
    static let db = VMInfo(id: 2, pid: 0, vcpus: 2, maxMemory: 1 << 30, curMemory: 0, tty: "",
                           owner: "joe:staff", state: "stopped", name: "db")

    func statusScript(_ request: Imsg) -> [Imsg] {
        var r = WireReader(request.data)
        let name = (try? r.string()) ?? ""
        return [Self.web, Self.db].filter { name.isEmpty || $0.name == name }
            .map { Imsg(type: MessageType.vmdInfoVMData.rawValue, data: $0.encoded()) }
            + [Imsg(type: MessageType.vmdInfoVMEnd.rawValue)]
    }

    func testStatusByPrefixWithGlobalOptions() throws {
        let seen = serve { [unowned self] in self.statusScript($0) }
        let r = try run(["-s", path, "stat"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, """
               ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME
                1  4242     1    512M    512M   pts/3         root  running web
                2     -     2    1.0G       -       -    joe:staff  stopped db

            """)
        XCTAssertEqual(r.err, "")
        XCTAssertEqual(seen.list.first?.type, MessageType.vmdGetInfoVMRequest.rawValue)
    }

    func testStatusRunningOnlyEmptyExitsNonZero() throws {
        _ = serve { [unowned self] in self.statusScript($0) }
        let r = try run(["-s\(path)", "show", "-r", "db"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.out, "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME\n")
        XCTAssertEqual(r.err, "vmctl: status db: vm not running\n")
    }

    func testStatusJSON() throws {
        _ = serve { [unowned self] in self.statusScript($0) }
        let r = try run(["-s", path, "status", "--json"])
        XCTAssertEqual(r.status, 0, r.err)
        let rows = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [[String: Any]])
        XCTAssertEqual(rows.map { $0["name"] as? String }, ["web", "db"])
    }

    func testStartFailureIsOneLine() throws {
        let seen = serve { _ in
            [Imsg(type: MessageType.ctlFail.rawValue,
                  data: Failure(code: ENOENT, message: "start web: disk /var/vm/web.img: No such file or directory").encoded())]
        }
        let r = try run(["-s", path, "star", "web"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.err, "vmctl: start web: disk /var/vm/web.img: No such file or directory\n")
        XCTAssertEqual(r.out, "")
        let request = try XCTUnwrap(seen.list.first)
        XCTAssertEqual(request.type, MessageType.vmdStartVMRequest.rawValue)
        XCTAssertEqual(try StartRequest(decoding: request.data), StartRequest(name: "web"))
    }

    func testStartSuccess() throws {
        _ = serve { _ in [Imsg(type: MessageType.vmdStartVMResponse.rawValue, data: Self.web.encoded())] }
        let r = try run(["-s", path, "start", "web"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.err, "vmctl: started vm 1 successfully, tty /dev/pts/3\n")
    }

    func testReloadErrorsOnePerLine() throws {
        let seen = serve { _ in
            [Imsg(type: MessageType.ctlFail.rawValue,
                  data: Failure(code: EINVAL, message: "/etc/vm.conf:3: syntax error\n/etc/vm.conf:9: memory size must be at least 1M: 1K").encoded())]
        }
        let r = try run(["-s", path, "rel"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.err, "vmctl: /etc/vm.conf:3: syntax error\nvmctl: /etc/vm.conf:9: memory size must be at least 1M: 1K\n")
        XCTAssertEqual(seen.list.first?.type, MessageType.ctlReload.rawValue)
        XCTAssertEqual(seen.list.first?.data, [])
    }

    func testPermissionDeniedNamesTheCommand() throws {
        _ = serve { _ in
            [Imsg(type: MessageType.ctlFail.rawValue,
                  data: Failure(code: EPERM, message: "permission denied: only root may do that").encoded())]
        }
        let r = try run(["-s", path, "log", "verbose"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.err, "vmctl: log: permission denied: only root may do that\n")
    }

    func testStopFlagsAndReply() throws {
        let seen = serve { _ in [Imsg(type: MessageType.ctlOK.rawValue, data: Array("vm web stopped".utf8))] }
        let r = try run(["-s", path, "sto", "-fw", "web"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.err, "vm web stopped\n")
        let request = try XCTUnwrap(seen.list.first)
        XCTAssertEqual(request.type, MessageType.vmdStopVMRequest.rawValue)
        XCTAssertEqual(try VMRequest(decoding: request.data), VMRequest(name: "web", flags: VMRequest.force | VMRequest.wait))
    }

    /// `stop -a -w`: one stop for all, then a wait per VM vmd named; a VM
    /// already gone when its wait arrives counts as stopped.
    func testStopAllAndWait() throws {
        let seen = serve { request in
            switch MessageType(rawValue: request.type) {
            case .vmdStopVMRequest:
                return [Imsg(type: MessageType.ctlOK.rawValue,
                             data: Array("stopping vm web: requested to shutdown\nstopping vm db: requested to shutdown".utf8))]
            case .vmdWaitVM:
                let name = (try? VMRequest(decoding: request.data).name) ?? ""
                if name == "db" {
                    return [Imsg(type: MessageType.ctlFail.rawValue,
                                 data: Failure(code: EINVAL, message: "wait db: vm not running").encoded())]
                }
                return [Imsg(type: MessageType.ctlOK.rawValue, data: Array("vm \(name) stopped".utf8))]
            default:
                return []
            }
        }
        let r = try run(["-s", path, "stop", "-a", "-w"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.err, "stopping vm web: requested to shutdown\nstopping vm db: requested to shutdown\nvm web stopped\n")
        XCTAssertEqual(seen.list.map(\.type), [MessageType.vmdStopVMRequest, .vmdWaitVM, .vmdWaitVM].map(\.rawValue))
        XCTAssertEqual(try VMRequest(decoding: seen.list[0].data).flags, VMRequest.all)
    }

    func testResetAndLogPayloads() throws {
        let seen = serve { _ in [Imsg(type: MessageType.ctlOK.rawValue)] }
        XCTAssertEqual(try run(["-s", path, "reset", "switches"]).status, 0)
        close(listener)  // one connection per fake daemon
        listener = -1
        XCTAssertEqual(seen.list.first?.type, MessageType.ctlReset.rawValue)
        XCTAssertEqual(seen.list.first?.data, [2, 0, 0, 0])
    }

    func testConsoleReplayThenConsoleClosed() throws {
        // A pty stands in for the VM's console; closing its master right
        // after the replay makes vmctl see the VM stop.
        let (master, slave, ttyPath) = try Pty.open()
        close(slave)
        let info = VMInfo(id: 1, pid: 4242, vcpus: 1, maxMemory: 512 << 20, curMemory: 512 << 20,
                          tty: ttyPath, owner: "root", state: "running", name: "web")
        _ = serve { _ in
            [Imsg(type: MessageType.vmdConsoleData.rawValue, data: info.encoded()),
             Imsg(type: MessageType.vmdConsoleData.rawValue, data: Array("vmtest: serial ok com1\r\n".utf8)),
             Imsg(type: MessageType.vmdConsoleData.rawValue, data: Array("vmtest summary: passed=5 failed=0\r\n".utf8)),
             Imsg(type: MessageType.vmdInfoVMEnd.rawValue)]
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + 1) { close(master) }
        let r = try run(["-s", path, "cons", "web"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "vmtest: serial ok com1\r\nvmtest summary: passed=5 failed=0\r\n")
        XCTAssertTrue(r.err.contains("vmctl: console web: console closed (vm stopped)"), r.err)
    }

    func testUsageErrors() throws {
        var r = try run([])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.hasPrefix("usage: vmctl [-v] [-s socket] command [arg ...]\n"), r.err)
        r = try run(["sta", "web"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.hasPrefix("vmctl: ambiguous command: sta (could be start, status)\n"), r.err)
        r = try run(["-s", path + ".none", "status"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.err, "vmctl: connect: \(path).none: No such file or directory\n")
        r = try run(["start", ".bad"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.err, "vmctl: start .bad: invalid vm name\n")
        // Argument-parser errors too: 1, as vmctl, never 64 (issue 9).
        for args in [["status", "--bogus"], ["start"], ["stop", "-z", "a"], ["start", "-m", "lots", "a"],
                     ["pause"], ["wait", "a", "b"], ["log", "sideways"]] {
            r = try run(["-s", path] + args)
            XCTAssertEqual(r.status, 1, "vmctl \(args): \(r.err)")
            XCTAssertFalse(r.err.isEmpty, "vmctl \(args) says why")
        }
    }
}
