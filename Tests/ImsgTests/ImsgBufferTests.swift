import Foundation
import XCTest
import Glibc
@testable import Imsg
import VMDSystem

final class ImsgBufferTests: XCTestCase {
    var a: Int32 = -1, b: Int32 = -1

    override func setUp() {
        (a, b) = try! FD.socketPair()
    }

    override func tearDown() {
        FD.close(a); FD.close(b)
    }

    func header(type: UInt32, len: UInt16, flags: UInt16 = 0, peer: UInt32 = 0, pid: UInt32 = 0) -> [UInt8] {
        var h = [UInt8]()
        withUnsafeBytes(of: type) { h += $0 }
        withUnsafeBytes(of: len) { h += $0 }
        withUnsafeBytes(of: flags) { h += $0 }
        withUnsafeBytes(of: peer) { h += $0 }
        withUnsafeBytes(of: pid) { h += $0 }
        return h
    }

    func testHeaderLayoutIsOpenBSDs() throws {
        let m = Imsg(type: 0x01020304, peerID: 0xAABBCCDD, pid: 77, data: [9, 8, 7])
        let bytes = try m.encoded()
        XCTAssertEqual(bytes.count, 19)
        XCTAssertEqual(bytes, header(type: 0x01020304, len: 19, peer: 0xAABBCCDD, pid: 77) + [9, 8, 7])
    }

    func testRoundTripKeepsEveryField() throws {
        let tx = ImsgBuffer(fd: a), rx = ImsgBuffer(fd: b)
        try tx.compose(type: 42, peerID: 7, pid: 1234, data: Array("hello".utf8))
        XCTAssertTrue(try tx.flush())
        XCTAssertEqual(try rx.read(), .bytes(21))
        let m = try XCTUnwrap(try rx.get())
        XCTAssertEqual(m.type, 42); XCTAssertEqual(m.peerID, 7); XCTAssertEqual(m.pid, 1234)
        XCTAssertEqual(m.data, Array("hello".utf8)); XCTAssertNil(m.fd)
        XCTAssertNil(try rx.get())
    }

    func testSeveralMessagesInOneRead() throws {
        let tx = ImsgBuffer(fd: a), rx = ImsgBuffer(fd: b)
        for i in 0..<50 { try tx.compose(type: UInt32(i), data: [UInt8](repeating: UInt8(i), count: i)) }
        try tx.flush()
        _ = try rx.read()
        for i in 0..<50 {
            let m = try XCTUnwrap(try rx.get(), "message \(i)")
            XCTAssertEqual(m.type, UInt32(i))
            XCTAssertEqual(m.data, [UInt8](repeating: UInt8(i), count: i))
        }
        XCTAssertNil(try rx.get())
    }

    func testMessageSplitAcrossReadsByteByByte() throws {
        let rx = ImsgBuffer(fd: b)
        let bytes = try Imsg(type: 5, data: Array(0..<100)).encoded() + Imsg(type: 6).encoded()
        var got: [Imsg] = []
        for byte in bytes {
            try FD.writeAll(a, [byte])
            _ = try rx.read()
            while let m = try rx.get() { got.append(m) }
        }
        XCTAssertEqual(got.map(\.type), [5, 6])
        XCTAssertEqual(got[0].data, Array(0..<100))
    }

    func testLargestMessageAndOneByteMore() throws {
        let tx = ImsgBuffer(fd: a), rx = ImsgBuffer(fd: b)
        try tx.compose(type: 1, data: [UInt8](repeating: 0xAB, count: ImsgWire.maxPayload))
        XCTAssertThrowsError(try tx.compose(type: 1, data: [UInt8](repeating: 0, count: ImsgWire.maxPayload + 1))) {
            XCTAssertEqual($0 as? ImsgError, .tooLarge(16385))
        }
        try tx.flush()
        var m: Imsg?
        while m == nil { _ = try rx.read(); m = try rx.get() }
        XCTAssertEqual(m?.data.count, 16368)
    }

    func testLengthBelowHeaderIsRejected() throws {
        let rx = ImsgBuffer(fd: b)
        try FD.writeAll(a, header(type: 1, len: 15))
        _ = try rx.read()
        XCTAssertThrowsError(try rx.get()) { XCTAssertEqual($0 as? ImsgError, .badLength(15)) }
    }

    func testLengthAboveMaximumIsRejected() throws {
        let rx = ImsgBuffer(fd: b)
        try FD.writeAll(a, header(type: 1, len: 16385))
        _ = try rx.read()
        XCTAssertThrowsError(try rx.get()) { XCTAssertEqual($0 as? ImsgError, .badLength(16385)) }
    }

    func testZeroLengthIsRejected() throws {
        let rx = ImsgBuffer(fd: b)
        try FD.writeAll(a, header(type: 1, len: 0))
        _ = try rx.read()
        XCTAssertThrowsError(try rx.get()) { XCTAssertEqual($0 as? ImsgError, .badLength(0)) }
    }

    func testEndOfFileMidHeaderAndMidPayload() throws {
        for cut in [3, 16, 20] {
            let (x, y) = try FD.socketPair()
            let rx = ImsgBuffer(fd: y)
            let bytes = try Imsg(type: 9, data: Array(repeating: 1, count: 10)).encoded()
            try FD.writeAll(x, Array(bytes.prefix(cut)))
            FD.close(x)
            _ = try rx.read()
            XCTAssertNil(try rx.get())
            XCTAssertThrowsError(try rx.read(), "cut at \(cut)") {
                XCTAssertEqual($0 as? ImsgError, .endOfFileInMessage(buffered: cut))
            }
            FD.close(y)
        }
    }

    func testCleanEndOfFile() throws {
        let rx = ImsgBuffer(fd: b)
        FD.close(a); a = -1
        XCTAssertEqual(try rx.read(), .endOfFile)
        XCTAssertThrowsError(try rx.readMessage()) { XCTAssertEqual($0 as? ImsgError, .closed) }
    }

    func testDescriptorArrivesWithTheMessageItWasSentWith() throws {
        let tx = ImsgBuffer(fd: a), rx = ImsgBuffer(fd: b)
        let (p0, p1) = try FD.socketPair()
        try tx.compose(type: 1)
        try tx.compose(type: 2, fd: p0, data: [1])
        try tx.compose(type: 3)
        let (q0, q1) = try FD.socketPair()
        try tx.compose(type: 4, fd: q0)
        try tx.flush()
        var got: [Imsg] = []
        while got.count < 4 {
            _ = try rx.read()
            while let m = try rx.get() { got.append(m) }
        }
        XCTAssertEqual(got.map(\.type), [1, 2, 3, 4])
        XCTAssertNil(got[0].fd); XCTAssertNil(got[2].fd)
        // Prove each fd is the right socket: write through it, read at its peer.
        let f2 = try XCTUnwrap(got[1].fd), f4 = try XCTUnwrap(got[3].fd)
        try FD.writeAll(f2, [0x22]); try FD.writeAll(f4, [0x44])
        XCTAssertEqual(try FD.read(p1, count: 1), [0x22])
        XCTAssertEqual(try FD.read(q1, count: 1), [0x44])
        XCTAssertTrue(FD.isCloseOnExec(f2))
        for f in [f2, f4, p1, q1] { FD.close(f) }
    }

    func testPartialWritesAndWouldBlockKeepOrderAndFDs() throws {
        try FD.setNonBlocking(a)
        var small: Int32 = 4096
        setsockopt(a, SOL_SOCKET, SO_SNDBUF, &small, socklen_t(4))
        let tx = ImsgBuffer(fd: a), rx = ImsgBuffer(fd: b)
        try FD.setNonBlocking(b)
        let (p0, p1) = try FD.socketPair()
        let count = 200
        for i in 0..<count {
            try tx.compose(type: UInt32(i), fd: i == 150 ? p0 : nil,
                           data: [UInt8](repeating: UInt8(i & 0xff), count: 1000 + i))
        }
        XCTAssertFalse(try tx.flush(), "a 4 KiB buffer cannot take 200 KiB at once")
        XCTAssertTrue(tx.hasPendingWrites)
        var got: [Imsg] = []
        var rounds = 0
        while got.count < count {
            rounds += 1
            XCTAssertLessThan(rounds, 100_000)
            _ = try tx.flush()
            if try rx.read() == .wouldBlock { continue }
            while let m = try rx.get() { got.append(m) }
        }
        XCTAssertFalse(tx.hasPendingWrites)
        for (i, m) in got.enumerated() {
            XCTAssertEqual(m.type, UInt32(i))
            XCTAssertEqual(m.data, [UInt8](repeating: UInt8(i & 0xff), count: 1000 + i))
            XCTAssertEqual(m.fd != nil, i == 150)
        }
        if let f = got[150].fd {
            try FD.writeAll(f, [7]); XCTAssertEqual(try FD.read(p1, count: 1), [7]); FD.close(f)
        }
        FD.close(p1)
    }

    func testNoDescriptorLeaks() throws {
        let before = FD.openDescriptors().count
        do {
            let (x, y) = try FD.socketPair()
            let tx = ImsgBuffer(fd: x), rx = ImsgBuffer(fd: y)
            for _ in 0..<10 {
                let (p, q) = try FD.socketPair()
                FD.close(q)
                try tx.compose(type: 1, fd: p)
            }
            try tx.flush()
            _ = try rx.read()
            // Take 3 messages, leave 7 fds undelivered: clear() must close them.
            for _ in 0..<3 { if let m = try rx.get(), let f = m.fd { FD.close(f) } }
            // Unsent fds queued on a writer are closed too.
            let (p, q) = try FD.socketPair()
            FD.close(q)
            try tx.compose(type: 2, fd: p)
            tx.clear(); rx.clear()
            FD.close(x); FD.close(y)
        }
        XCTAssertEqual(FD.openDescriptors().count, before)
    }

    func testHasFDFlagWithoutDescriptorGivesNil() throws {
        let rx = ImsgBuffer(fd: b)
        try FD.writeAll(a, header(type: 3, len: 16, flags: 1))
        _ = try rx.read()
        let m = try XCTUnwrap(try rx.get())
        XCTAssertNil(m.fd)
    }
}
