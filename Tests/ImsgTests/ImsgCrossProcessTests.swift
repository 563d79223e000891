import Foundation
import XCTest
import Glibc
@testable import Imsg
import VMDSystem

/// A different process on the other end: python3 (no shared code with ours)
/// speaks raw imsg framing with struct.pack and socket.send_fds.
final class ImsgCrossProcessTests: XCTestCase {
    static let peer = #"""
import os, socket, struct, sys
s = socket.socket(fileno=3)
def recv_msg():
    hdr, fds, _, _ = socket.recv_fds(s, 16, 1)
    t, ln, fl, peer, pid = struct.unpack("=IHHII", hdr)
    body = b""
    while len(body) < ln - 16:
        body += s.recv(ln - 16 - len(body))
    return t, fl, body, fds
# 1. receive our message with a pipe's write end, write the payload through it
t, fl, body, fds = recv_msg()
assert t == 100 and fl & 1 and len(fds) == 1, (t, fl, fds)
os.write(fds[0], body)
os.close(fds[0])
# 2. send a message carrying a file descriptor, then one without
r, w = os.pipe()
os.write(w, b"from python")
os.close(w)
payload = b"xyz"
socket.send_fds(s, [struct.pack("=IHHII", 200, 16 + len(payload), 1, 5, os.getpid()) + payload], [r])
s.sendall(struct.pack("=IHHII", 201, 16, 0, 0, 0))
"""#

    func testDescriptorsCrossProcessesBothWays() throws {
        guard access("/usr/bin/python3", X_OK) == 0 || access("/usr/local/bin/python3", X_OK) == 0 else {
            throw XCTSkip("python3 is not installed: no independent imsg peer")
        }
        let (mine, theirs) = try FD.socketPair()
        let pid = try Spawn.spawn("/usr/bin/env", arguments: ["env", "python3", "-c", Self.peer],
                                  descriptors: [theirs])
        FD.close(theirs)
        let buf = ImsgBuffer(fd: mine)
        var pipeFDs: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&pipeFDs), 0)
        try FD.setCloseOnExec(pipeFDs[0]); try FD.setCloseOnExec(pipeFDs[1])
        try buf.sendBlocking(Imsg(type: 100, data: Array("through the fd".utf8), fd: pipeFDs[1]))
        XCTAssertEqual(String(decoding: try FD.read(pipeFDs[0], count: 100), as: UTF8.self), "through the fd")
        FD.close(pipeFDs[0])
        let m1 = try buf.readMessage()
        XCTAssertEqual(m1.type, 200); XCTAssertEqual(m1.peerID, 5); XCTAssertEqual(m1.data, Array("xyz".utf8))
        let f = try XCTUnwrap(m1.fd)
        XCTAssertEqual(String(decoding: try FD.read(f, count: 100), as: UTF8.self), "from python")
        FD.close(f)
        let m2 = try buf.readMessage()
        XCTAssertEqual(m2.type, 201); XCTAssertNil(m2.fd)
        XCTAssertEqual(try Spawn.wait(pid), .exited(0))
        FD.close(mine)
    }
}
