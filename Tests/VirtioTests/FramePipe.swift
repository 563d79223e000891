import Glibc
import VMDSystem
import XCTest

/// A socketpair that carries whole frames as a tap does (SOCK_SEQPACKET),
/// both ends non-blocking, with room for 64 KiB frames; [0] is vionet's end
/// (the "tap"), [1] the test's (the host).
func makeFramePipe() -> [Int32] {
    var fds: [Int32] = [-1, -1]
    XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &fds), 0)
    XCTAssertNoThrow(try FD.setNonBlocking(fds[0]))
    XCTAssertNoThrow(try FD.setNonBlocking(fds[1]))
    var size: Int32 = 1 << 20
    setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &size, 4)
    setsockopt(fds[0], SOL_SOCKET, SO_RCVBUF, &size, 4)
    return fds
}
