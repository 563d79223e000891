import Foundation
import XCTest
import Glibc
import VMDControl

/// A control-socket client that speaks raw imsg, connected with a chosen
/// uid/gid (SO_PEERCRED records the effective ids at connect time, so the
/// root test process switches them around connect()). It sends whatever it
/// is told to, reads only when asked: the hostile client of issue 9.
final class RawControlClient {
    let fd: Int32
    private var inbox: [UInt8] = []
    private(set) var peerClosed = false

    init(socket path: String, uid: uid_t, gid: gid_t) throws {
        fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            let b = Array(path.utf8)
            for i in 0..<min(b.count, p.count - 1) { p[i] = b[i] }
        }
        guard setegid(gid) == 0, seteuid(uid) == 0 else { throw POSIXError(.EPERM) }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        let err = errno
        precondition(seteuid(0) == 0 && setegid(0) == 0, "cannot get root back")
        guard r == 0 else { Glibc.close(fd); throw POSIXError(POSIXErrorCode(rawValue: err) ?? .EIO) }
    }

    deinit { Glibc.close(fd) }

    static func frame(type: UInt32, peerID: UInt32 = 0, data: [UInt8] = []) -> [UInt8] {
        var out: [UInt8] = []
        withUnsafeBytes(of: type) { out += $0 }
        withUnsafeBytes(of: UInt16(16 + data.count)) { out += $0 }
        withUnsafeBytes(of: UInt16(0)) { out += $0 }
        withUnsafeBytes(of: peerID) { out += $0 }
        withUnsafeBytes(of: UInt32(getpid())) { out += $0 }
        return out + data
    }

    /// Writes a whole message (blocking).
    @discardableResult
    func send(_ type: MessageType, peerID: UInt32 = 0, _ data: [UInt8] = []) -> Bool {
        sendRaw(Self.frame(type: type.rawValue, peerID: peerID, data: data))
    }

    @discardableResult
    func sendRaw(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    /// Writes without blocking; returns false when the socket is full.
    func trySendRaw(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) } == bytes.count
    }

    /// The next message, or nil on timeout or when the daemon closed the connection.
    func receive(timeout: Double = 5) -> (type: UInt32, data: [UInt8])? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if inbox.count >= 16 {
                let len = Int(inbox[4]) | Int(inbox[5]) << 8
                if len >= 16 && inbox.count >= len {
                    let type = UInt32(inbox[0]) | UInt32(inbox[1]) << 8 | UInt32(inbox[2]) << 16 | UInt32(inbox[3]) << 24
                    let data = Array(inbox[16..<len])
                    inbox.removeFirst(len)
                    return (type, data)
                }
            }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 || peerClosed { return nil }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, Int32(left * 1000)) > 0 else { return nil }
            var buf = [UInt8](repeating: 0, count: 65536)
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { peerClosed = true; return nil }
            inbox += buf[0..<n]
        }
    }

    /// Reads until the daemon closes the connection (true) or `timeout`.
    func waitClosed(timeout: Double = 5) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !peerClosed && Date() < deadline { _ = receive(timeout: deadline.timeIntervalSinceNow) }
        return peerClosed
    }
}

/// Issue 9: a hostile member of the control socket's group.
final class ControlSocketAttackTests: XCTestCase {
    var user = ""
    var uid: uid_t = 0
    var gid: gid_t = 0

    override func setUpWithError() throws {
        try requireRoot()
        try requireVmctl()
        user = "vmdatk\(getpid() % 10000)"
        XCTAssertEqual(try runCommand("/usr/sbin/useradd", ["--system", "-U", "-M", "-s", "/usr/sbin/nologin", user]).status, 0)
        guard let pw = getpwnam(user) else { throw XCTSkip("cannot create test user \(user)") }
        uid = pw.pointee.pw_uid
        gid = pw.pointee.pw_gid
    }

    override func tearDown() {
        if !user.isEmpty { _ = try? runCommand("/usr/sbin/userdel", [user]) }
    }

    func asUser(_ d: Daemon, _ args: [String]) throws -> (status: Int32, out: String) {
        try runCommand("/usr/sbin/runuser", ["-u", user, "--", Repo.vmctl, "-s", d.socket] + args)
    }

    func config(vms: Int = 0) -> String {
        var s = "socket owner root:\(user)\n"
        for i in 0..<vms { s += "vm \"vm\(i)\" {\n    disable\n    memory 64M\n    boot \"/bin/true\"\n}\n" }
        return s
    }

    func reloadAs(_ d: Daemon, uid: uid_t, gid: gid_t) throws -> (type: UInt32, data: [UInt8])? {
        let c = try RawControlClient(socket: d.socket, uid: uid, gid: gid)
        c.send(.ctlReload)
        return c.receive()
    }

    /// Forged connection bookkeeping (uid 0) and every internal type: the
    /// client is dropped and gains nothing.
    func testForgedInternalMessagesGainNothing() throws {
        let d = try Daemon(config: config(vms: 1))
        try d.waitReady()
        // The unprivileged baseline: reload is refused.
        let base = try reloadAs(d, uid: uid, gid: gid)
        XCTAssertEqual(base?.type, MessageType.ctlFail.rawValue)
        XCTAssertEqual(try base.map { try Failure(decoding: $0.data) }?.code, EPERM)

        // "I am root": ctlClientConnected with uid 0, gid 0, then reload.
        let forger = try RawControlClient(socket: d.socket, uid: uid, gid: gid)
        var cred: [UInt8] = []
        withUnsafeBytes(of: UInt32(0)) { cred += $0 }
        withUnsafeBytes(of: UInt32(0)) { cred += $0 }
        forger.send(.ctlClientConnected, cred)
        forger.send(.ctlReload)
        let answer = forger.receive()
        XCTAssertNotEqual(answer?.type, MessageType.ctlOK.rawValue, "a forged uid 0 must not reload")
        XCTAssertTrue(forger.waitClosed(), "a client sending control's bookkeeping is disconnected")

        // Every type that is not a client request: dropped, never relayed.
        let forged = MessageType.allCases.filter { !MessagePolicy.clientRequests.contains($0) }
        XCTAssertTrue(forged.contains(.vmmStartVM) && forged.contains(.privOpenTap) && forged.contains(.devopMsg))
        for t in forged {
            let c = try RawControlClient(socket: d.socket, uid: uid, gid: gid)
            c.send(t, peerID: 1, [0, 0, 0, 0, 0, 0, 0, 0])
            XCTAssertTrue(c.waitClosed(), "type \(t) from a client must close the connection")
        }
        // Unknown numbers too.
        let u = try RawControlClient(socket: d.socket, uid: uid, gid: gid)
        u.sendRaw(RawControlClient.frame(type: 4242))
        XCTAssertTrue(u.waitClosed())

        // Still unprivileged afterwards, on a fresh connection and through vmctl.
        let after = try reloadAs(d, uid: uid, gid: gid)
        XCTAssertEqual(try after.map { try Failure(decoding: $0.data) }?.code, EPERM)
        let start = try asUser(d, ["start", "-b", "/etc/shadow", "x"])
        XCTAssertNotEqual(start.status, 0)
        XCTAssertTrue(start.out.contains("permission denied"), start.out)
        XCTAssertFalse(try d.vmctl(["status"]).out.contains(" x\n"), "nothing was created")
        // The daemon is up and serves root.
        XCTAssertEqual(try d.vmctl(["status"]).status, 0)
        XCTAssertTrue(d.log.contains("is not accepted from this peer"), d.log)
        XCTAssertEqual(d.stop(), 0, d.log)
    }

    func rssKB(_ pid: Int32) -> Int {
        Int(procStatus(pid)["VmRSS"]?.split(separator: " ").first ?? "") ?? 0
    }

    func controlPID(_ d: Daemon) -> Int32? {
        descendants(of: d.pid).first { $0.args.hasPrefix("vmd: control") }?.pid
    }

    /// Root's `vmctl status` answers within `limit` seconds and lists vm29.
    func assertStatusPrompt(_ d: Daemon, limit: Double, _ what: String) throws {
        let t0 = Date()
        let r = try d.vmctl(["status"], timeout: 30)
        let took = Date().timeIntervalSince(t0)
        XCTAssertEqual(r.status, 0, r.out)
        XCTAssertTrue(r.out.contains(" vm29\n"), r.out)
        XCTAssertLessThan(took, limit, "vmctl status took \(took) s \(what)")
    }

    /// A client that asks for status as fast as it can and never reads:
    /// control and the parent stay small, others are answered at once,
    /// during the flood and after the flooder goes.
    func testFloodWithoutReadingIsBounded() throws {
        let d = try Daemon(config: config(vms: 30))
        try d.waitReady()
        guard let control = controlPID(d) else { return XCTFail("no control process") }
        let control0 = rssKB(control), parent0 = rssKB(d.pid)
        let flooder = try RawControlClient(socket: d.socket, uid: uid, gid: gid)
        var batchBytes: [UInt8] = []
        for _ in 0..<512 { batchBytes += RawControlClient.frame(type: MessageType.vmdGetInfoVMRequest.rawValue) }
        let batch = batchBytes
        final class Flag: @unchecked Sendable { var stop = false; var sent = 0 }
        let flag = Flag()
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            while !flag.stop && flooder.sendRaw(batch) { flag.sent += 512 }
            done.signal()
        }
        usleep(3_000_000)
        try assertStatusPrompt(d, limit: 2, "while a client floods without reading")
        usleep(3_000_000)
        let controlPeak = rssKB(control), parentPeak = rssKB(d.pid)
        flag.stop = true
        shutdown(flooder.fd, Int32(SHUT_RDWR))
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        print("flood: \(flag.sent) requests sent; control RSS \(control0) -> \(controlPeak) kB, parent \(parent0) -> \(parentPeak) kB")
        XCTAssertLessThan(controlPeak - control0, 32 << 10, "control grew by \(controlPeak - control0) kB")
        XCTAssertLessThan(parentPeak - parent0, 32 << 10, "the parent grew by \(parentPeak - parent0) kB")
        try assertStatusPrompt(d, limit: 2, "after the flooder closed")
        XCTAssertTrue(d.process.isRunning)
        XCTAssertEqual(d.stop(), 0)
    }

    /// One unprivileged user holding as many connections as it can get:
    /// root still gets in, and the user's share is bounded.
    func testOneUserCannotLockRootOut() throws {
        let d = try Daemon(config: config(vms: 30))
        try d.waitReady()
        var held: [RawControlClient] = []
        for _ in 0..<200 {
            if let c = try? RawControlClient(socket: d.socket, uid: uid, gid: gid) { held.append(c) }
        }
        usleep(1_000_000)
        try assertStatusPrompt(d, limit: 5, "with 200 connections held by uid \(uid)")
        // Connections the daemon closed at once are readable (EOF).
        let open = held.filter { c in
            var pfd = pollfd(fd: c.fd, events: Int16(POLLIN), revents: 0)
            return poll(&pfd, 1, 0) == 0
        }
        XCTAssertLessThanOrEqual(open.count, 32, "one uid holds at most its share")
        XCTAssertGreaterThan(open.count, 0)
        // The accepted ones work.
        if let c = open.first {
            c.send(.vmdGetInfoVMRequest)
            XCTAssertEqual(c.receive()?.type, MessageType.vmdInfoVMData.rawValue)
        }
        held.removeAll()
        XCTAssertEqual(d.stop(), 0)
    }
}
