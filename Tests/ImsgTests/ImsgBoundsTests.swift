import Foundation
import XCTest
import Glibc
@testable import Imsg
import VMDSystem

/// Issue 9: a peer that never reads cannot make a channel grow without
/// bound, and a peer may only send the types it is allowed.
final class ImsgBoundsTests: XCTestCase {
    func testBufferRefusesPastItsLimitAndCountsBytes() throws {
        let (x, y) = try FD.socketPair()
        defer { FD.close(x); FD.close(y) }
        try FD.setNonBlocking(x)
        let b = ImsgBuffer(fd: x, maxPendingWriteBytes: 64 << 10)
        var queued = 0
        var refused = false
        for _ in 0..<10_000 {
            do {
                try b.compose(type: 1, data: [UInt8](repeating: 7, count: 1000))
                queued += 1016
            } catch ImsgError.queueFull(let n) {
                XCTAssertLessThanOrEqual(n, 64 << 10)
                refused = true
                break
            }
            try b.flush()   // the socket fills up; nobody reads y
        }
        XCTAssertTrue(refused, "composing must stop at the limit")
        XCTAssertLessThanOrEqual(b.pendingWriteBytes, 64 << 10)
        // Draining the peer lets the queue empty again, byte counts exact.
        let reader = ImsgBuffer(fd: y)
        try FD.setNonBlocking(y)
        var got = 0
        while b.hasPendingWrites || got * 1016 < queued {
            try b.flush()
            _ = try reader.read()
            while let m = try reader.get() { XCTAssertEqual(m.data.count, 1000); got += 1 }
        }
        XCTAssertEqual(got * 1016, queued)
        XCTAssertEqual(b.pendingWriteBytes, 0)
        XCTAssertFalse(b.hasPendingWrites)
    }

    func testQueueFullClosesAChannelWithAReason() throws {
        let loop = EventLoop()
        let (x, y) = try FD.socketPair()
        defer { FD.close(x) }
        var reason: String?
        let ch = ImsgChannel(fd: y, name: "t", loop: loop, onMessage: { _, _ in },
                             onClose: { _, r in reason = r })
        ch.maxQueuedBytes = 32 << 10
        for _ in 0..<1000 where !ch.isClosed { ch.send(type: 1, data: [UInt8](repeating: 0, count: 8000)) }
        XCTAssertTrue(ch.isClosed)
        XCTAssertTrue(reason?.hasPrefix("peer does not read") ?? false, "\(reason ?? "nil")")
    }

    /// A peer whose replies pile up is not read from until it drains them.
    func testReadingPausesWhileRepliesAreNotDrained() throws {
        let loop = EventLoop()
        let (x, y) = try FD.socketPair()
        var handled = 0
        let server = ImsgChannel(fd: y, name: "server", loop: loop,
                                 onMessage: { ch, m in
                                     handled += 1
                                     ch.send(type: m.type, data: [UInt8](repeating: 1, count: 4000))
                                 },
                                 onClose: { _, _ in })
        server.pauseReadingAbove = 64 << 10
        server.maxQueuedBytes = 1 << 20
        // 2000 requests in the socket; nobody reads the replies.
        let client = ImsgBuffer(fd: x)
        try FD.setNonBlocking(x)
        var sent = 0
        for i in 0..<2000 {
            try client.compose(type: UInt32(i))
            if try client.flush() { sent += 1 } else { break }
        }
        loop.after(seconds: 1) { loop.exit() }
        loop.run()
        XCTAssertTrue(server.isReadingPaused)
        XCTAssertFalse(server.isClosed, "paused, not dropped: it stays under the limit")
        XCTAssertLessThan(handled, sent, "requests wait while replies are not drained")
        XCTAssertLessThanOrEqual(server.buffer.pendingWriteBytes, (64 << 10) + 4016)
        // Now the client reads: everything gets handled.
        var replies = 0
        loop.every(seconds: 0.005) {
            while case .bytes? = try? client.read() {
                while case _?? = try? client.get() { replies += 1 }
            }
            if replies >= sent { loop.exit() }
        }
        loop.after(seconds: 10) { loop.exit() }
        loop.run()
        XCTAssertEqual(handled, sent)
        XCTAssertEqual(replies, sent)
        FD.close(x)
        server.close(reason: nil)
    }

    func testTypesNotAllowedAreDroppedOrDisconnect() throws {
        let loop = EventLoop()
        let (x, y) = try FD.socketPair()
        defer { FD.close(x) }
        var got: [UInt32] = []
        let ch = ImsgChannel(fd: y, name: "t", loop: loop, onMessage: { _, m in got.append(m.type) },
                             onClose: { _, _ in })
        ch.allowedTypes = [1, 2]
        try FD.writeAll(x, Imsg(type: 1).encoded() + Imsg(type: 7).encoded() + Imsg(type: 2).encoded())
        loop.after(seconds: 0.3) { loop.exit() }
        loop.run()
        XCTAssertEqual(got, [1, 2], "type 7 is dropped")
        XCTAssertFalse(ch.isClosed)
        ch.closeOnRefusedType = true
        try FD.writeAll(x, Imsg(type: 9).encoded() + Imsg(type: 1).encoded())
        loop.after(seconds: 0.3) { loop.exit() }
        loop.run()
        XCTAssertEqual(got, [1, 2], "nothing after a refused type is delivered")
        XCTAssertTrue(ch.isClosed)
    }
}
