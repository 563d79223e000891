import Foundation
import Glibc
import XCTest
import Imsg
import VMDControl
import VMDSystem
@testable import VMCtlCLI

/// vmctl's side of the control protocol against a scripted fake vmd on a
/// real unix socket.
final class ControlConnectionTests: XCTestCase {
    var path = ""
    var listener: Int32 = -1

    override func setUpWithError() throws {
        path = NSTemporaryDirectory() + "vmctl-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
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
        close(listener)
        unlink(path)
    }

    /// Accepts one client, hands each request to `script`, sends its replies.
    func serve(_ script: @escaping @Sendable (Imsg) -> [Imsg]) -> XCTestExpectation {
        let done = expectation(description: "server done")
        let fd = listener
        Thread.detachNewThread {
            let client = accept(fd, nil, nil)
            let buffer = ImsgBuffer(fd: client)
            while let request = try? buffer.readMessage() {
                for reply in script(request) { try? buffer.sendBlocking(reply) }
            }
            close(client)
            done.fulfill()
        }
        return done
    }

    func testStatusRoundTrip() throws {
        let web = VMInfo(id: 1, pid: 77, vcpus: 1, maxMemory: 1 << 29, curMemory: 1 << 29, tty: "/dev/pts/4",
                         owner: "root", state: "running", name: "web")
        let db = VMInfo(id: 2, pid: 0, vcpus: 2, maxMemory: 1 << 30, curMemory: 0, tty: "", owner: "bob",
                        state: "stopped", name: "db")
        let disk0 = BackendInfo(name: "disk0", kind: "blk", socket: "/run/d.sock", state: "connected",
                                frontendPID: 99, restarts: 1)
        let done = serve { request in
            guard request.type == MessageType.vmdGetInfoVMRequest.rawValue else { return [] }
            var r = WireReader(request.data)
            let name = (try? r.string()) ?? "?"
            let all = [web, db].filter { name.isEmpty || $0.name == name }
            // Backends come with the full listing only, after the VMs.
            let backends = name.isEmpty ? [disk0] : []
            return all.map { Imsg(type: MessageType.vmdInfoVMData.rawValue, data: $0.encoded()) }
                + backends.map { Imsg(type: MessageType.vmdInfoBackendData.rawValue, data: $0.encoded()) }
                + [Imsg(type: MessageType.vmdInfoVMEnd.rawValue)]
        }
        do {
            let connection = try ControlConnection(socketPath: path)
            let all = try VMCtl.Status.fetch(connection, name: "")
            XCTAssertEqual(all.0, [web, db])
            XCTAssertEqual(all.1, [disk0])
            let one = try VMCtl.Status.fetch(connection, name: "db")
            XCTAssertEqual(one.0, [db])
            XCTAssertEqual(one.1, [])
            let none = try VMCtl.Status.fetch(connection, name: "none")
            XCTAssertEqual(none.0, [])
            XCTAssertEqual(none.1, [])
        }
        wait(for: [done], timeout: 5)
    }

    func testFailureCarriesTheDaemonsMessage() throws {
        let done = serve { _ in
            [Imsg(type: MessageType.ctlFail.rawValue,
                  data: Failure(code: ENOENT, message: "start web: disk /var/vm/web.img: No such file or directory").encoded())]
        }
        do {
            let connection = try ControlConnection(socketPath: path)
            try connection.send(.vmdStartVMRequest, StartRequest(name: "web").encoded())
            XCTAssertThrowsError(try connection.receive()) { error in
                XCTAssertEqual(error as? Failure,
                               Failure(code: ENOENT, message: "start web: disk /var/vm/web.img: No such file or directory"))
            }
        }
        wait(for: [done], timeout: 5)
    }

    func testMalformedRepliesAreErrorsNotCrashes() throws {
        let done = serve { _ in
            [Imsg(type: MessageType.vmdInfoVMData.rawValue, data: [1, 2, 3]),
             Imsg(type: 4242),
             Imsg(type: MessageType.ctlFail.rawValue, data: [9])]
        }
        do {
            let connection = try ControlConnection(socketPath: path)
            XCTAssertThrowsError(try VMCtl.Status.fetch(connection, name: ""))
            XCTAssertThrowsError(try connection.receive())  // unknown type 4242
            XCTAssertThrowsError(try connection.receive()) { error in
                XCTAssertEqual((error as? Failure)?.message, "malformed failure reply from vmd")
            }
        }
        wait(for: [done], timeout: 5)
    }

    func testClosedConnection() throws {
        let done = serve { _ in [] }
        let connection = try ControlConnection(socketPath: path)
        try connection.send(.ctlReload)
        // The fake daemon answers nothing and closes when we do; shut our
        // write side so it sees EOF, then our read sees its close.
        shutdown(try XCTUnwrap(Mirror(reflecting: connection).descendant("buffer") as? ImsgBuffer).fd, Int32(SHUT_WR))
        XCTAssertThrowsError(try connection.receive()) { error in
            XCTAssertEqual((error as? Failure)?.message, "vmd closed the connection")
        }
        wait(for: [done], timeout: 5)
    }

    func testConnectError() {
        XCTAssertThrowsError(try ControlConnection(socketPath: path + ".missing")) { error in
            XCTAssertEqual((error as? Failure)?.message,
                           "connect: \(path).missing: No such file or directory")
        }
    }
}
