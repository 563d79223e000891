import XCTest
import Glibc
@testable import Imsg
import VMDSystem

/// Messages joined into one queued write, and messages relayed as bytes from
/// one buffer to another (control's relay of the parent's replies, issue 14).
final class ImsgRelayTests: XCTestCase {
    /// Reads `count` messages arriving on `fd`.
    func receive(_ fd: Int32, _ count: Int) throws -> [Imsg] {
        let rx = ImsgBuffer(fd: fd)
        var got: [Imsg] = []
        while got.count < count {
            if case .endOfFile = try rx.read() { break }
            while let m = try rx.get() { got.append(m) }
        }
        return got
    }

    func testJoinedMessagesAreExactlyTheEncodedBytes() throws {
        let (a, b) = try FD.socketPair()
        defer { FD.close(a); FD.close(b) }
        let tx = ImsgBuffer(fd: a)
        var expected: [UInt8] = []
        for i in 0..<100 {
            let m = Imsg(type: UInt32(i), flags: 0x20, peerID: UInt32(1000 + i), pid: 77,
                         data: [UInt8](repeating: UInt8(i), count: i * 3))
            expected += try m.encoded()
            try tx.compose(m)
        }
        XCTAssertEqual(tx.pendingWriteBytes, expected.count)
        XCTAssertTrue(try tx.flush())
        XCTAssertEqual(tx.pendingWriteBytes, 0)
        var got: [UInt8] = []
        while got.count < expected.count { got += try FD.read(b, count: expected.count - got.count) }
        XCTAssertEqual(got, expected)
    }

    func testRelayMovesTheMessageWithTheNewPeerIDOnly() throws {
        let (a, b) = try FD.socketPair()
        let (c, d) = try FD.socketPair()
        defer { for f in [a, b, c, d] { FD.close(f) } }
        let sender = ImsgBuffer(fd: a), source = ImsgBuffer(fd: b), out = ImsgBuffer(fd: c)
        let sent = (0..<50).map { i in
            Imsg(type: 11, flags: 4, peerID: 9, pid: 123, data: [UInt8](repeating: UInt8(i), count: i * 7))
        }
        for m in sent { try sender.compose(m) }
        try sender.flush()
        var relayed = 0
        while relayed < sent.count {
            _ = try source.read()
            while let h = try source.peek() {
                XCTAssertEqual(h.type, 11)
                XCTAssertEqual(h.peerID, 9)
                try source.relay(to: out, peerID: 0)
                relayed += 1
            }
        }
        XCTAssertNil(try source.get())
        try out.flush()
        let got = try receive(d, sent.count)
        XCTAssertEqual(got, sent.map { var m = $0; m.peerID = 0; return m })
    }

    func testADescriptorIsNeverRelayedAndIsClosed() throws {
        let before = FD.openDescriptors().count
        do {
            let (a, b) = try FD.socketPair()
            let (c, d) = try FD.socketPair()
            let (p0, p1) = try FD.socketPair()
            let sender = ImsgBuffer(fd: a), source = ImsgBuffer(fd: b), out = ImsgBuffer(fd: c)
            try sender.compose(type: 1, fd: p0, data: [1, 2])
            try sender.compose(type: 2, data: [3])
            try sender.flush()
            while source.bufferedReadBytes < 35 { _ = try source.read() }
            XCTAssertThrowsError(try source.relay(to: out, peerID: 0)) {
                XCTAssertEqual($0 as? ImsgError, .descriptorNotRelayed(type: 1))
            }
            try source.relay(to: out, peerID: 5)
            try out.flush()
            XCTAssertEqual(try receive(d, 1), [Imsg(type: 2, peerID: 5, data: [3])])
            for f in [a, b, c, d, p1] { FD.close(f) }
        }
        XCTAssertEqual(FD.openDescriptors().count, before)
    }

    func testRelayToAFullQueueDropsTheMessage() throws {
        let (a, b) = try FD.socketPair()
        let (c, d) = try FD.socketPair()
        defer { for f in [a, b, c, d] { FD.close(f) } }
        let sender = ImsgBuffer(fd: a), source = ImsgBuffer(fd: b)
        let out = ImsgBuffer(fd: c, maxPendingWriteBytes: 100)
        try sender.compose(type: 1, data: [UInt8](repeating: 1, count: 60))
        try sender.compose(type: 2, data: [UInt8](repeating: 2, count: 60))
        try sender.compose(type: 3)
        try sender.flush()
        while source.bufferedReadBytes < 168 { _ = try source.read() }
        try source.relay(to: out, peerID: 0)
        XCTAssertThrowsError(try source.relay(to: out, peerID: 0)) {
            XCTAssertEqual($0 as? ImsgError, .queueFull(76))
        }
        XCTAssertEqual(try source.peek()?.type, 3)
        try source.relay(to: out, peerID: 0)
        XCTAssertEqual(out.pendingWriteBytes, 76 + 16)
    }

    /// A channel's `onFrame`: relay, drop, deliver; types it does not accept
    /// are refused before; a message with a descriptor always goes to
    /// `onMessage`.
    func testChannelRelaysDropsAndDeliversByFrame() throws {
        let loop = EventLoop()
        let (a, b) = try FD.socketPair()
        let (c, d) = try FD.socketPair()
        let (p0, p1) = try FD.socketPair()
        defer { FD.close(a); FD.close(d); FD.close(p1) }
        var delivered: [(UInt32, Bool)] = []
        var looked: [UInt32] = []
        let target = ImsgChannel(fd: c, name: "target", loop: loop, onMessage: { _, _ in }, onClose: { _, _ in })
        let source = ImsgChannel(fd: b, name: "source", loop: loop,
                                 onMessage: { _, m in
                                     delivered.append((m.type, m.fd != nil))
                                     if let f = m.fd { FD.close(f) }
                                 },
                                 onClose: { _, _ in })
        source.allowedTypes = [1, 2, 3, 9]
        source.onFrame = { h in
            looked.append(h.type)
            switch h.type {
            case 1: return .relay(to: target, peerID: h.peerID + 100)
            case 2: return .drop
            default: return .deliver
            }
        }
        let sender = ImsgBuffer(fd: a)
        try sender.compose(type: 1, peerID: 1, data: [1])
        try sender.compose(type: 2, peerID: 2)
        try sender.compose(type: 5, peerID: 3)   // not accepted: dropped before onFrame
        try sender.compose(type: 3, peerID: 4)
        try sender.compose(type: 9, peerID: 5, fd: p0)
        try sender.compose(type: 1, peerID: 6, data: [6, 6])
        try sender.flush()
        loop.every(seconds: 0.005) { if delivered.count == 2 && looked.count == 4 { loop.exit() } }
        loop.after(seconds: 5) { loop.exit() }
        loop.run()
        loop.after(seconds: 0) { loop.exit() }
        loop.run()   // the target's flush, scheduled for after the read
        XCTAssertEqual(looked, [1, 2, 3, 1])
        XCTAssertEqual(delivered.map(\.0), [3, 9])
        XCTAssertEqual(delivered.map(\.1), [false, true])
        XCTAssertEqual(try receive(d, 2), [Imsg(type: 1, peerID: 101, data: [1]), Imsg(type: 1, peerID: 106, data: [6, 6])])
        _ = (source, target)
    }
}
