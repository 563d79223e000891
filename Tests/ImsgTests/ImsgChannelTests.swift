import Foundation
import XCTest
import Glibc
@testable import Imsg
import VMDSystem

final class ImsgChannelTests: XCTestCase {
    func testBadPeerIsDisconnectedWithAReason() throws {
        let before = FD.openDescriptors().count
        do {
            let loop = EventLoop()
            let (x, y) = try FD.socketPair()
            var messages: [UInt32] = []
            var closeReason: String?? = .none
            let ch = ImsgChannel(fd: y, name: "test", loop: loop,
                                 onMessage: { _, m in messages.append(m.type) },
                                 onClose: { [unowned loop] _, r in closeReason = .some(r); loop.exit() })
            var good = try Imsg(type: 1).encoded()
            var bad = [UInt8](repeating: 0, count: 16)
            bad[4] = 0xFF; bad[5] = 0x7F   // len 32767
            good += bad
            try FD.writeAll(x, good)
            loop.after(seconds: 5) { [unowned loop] in loop.exit() }
            loop.run()
            XCTAssertEqual(messages, [1])
            XCTAssertTrue(ch.isClosed)
            XCTAssertEqual(closeReason, .some("bad message length 32767 (must be 16...16384)"))
            FD.close(x)
        }
        XCTAssertEqual(FD.openDescriptors().count, before)
    }

    func testEchoThroughTheLoopAndCleanClose() throws {
        let loop = EventLoop()
        let (x, y) = try FD.socketPair()
        var got: [Imsg] = []
        var closedClean = false
        let server = ImsgChannel(fd: y, name: "server", loop: loop,
                                 onMessage: { ch, m in ch.send(type: m.type + 1000, data: m.data) },
                                 onClose: { _, r in closedClean = (r == nil) })
        _ = server
        let client = ImsgChannel(fd: x, name: "client", loop: loop,
                                 onMessage: { ch, m in
                                     got.append(m)
                                     if got.count == 300 { ch.close(reason: nil) }
                                 },
                                 onClose: { _, _ in })
        for i in 0..<300 { client.send(type: UInt32(i), data: [UInt8](repeating: 1, count: 5000)) }
        loop.after(seconds: 10) { loop.exit() }
        loop.every(seconds: 0.01) { if closedClean { loop.exit() } }
        loop.run()
        XCTAssertEqual(got.map(\.type), (0..<300).map { UInt32($0) + 1000 })
        XCTAssertTrue(closedClean)
    }
}
