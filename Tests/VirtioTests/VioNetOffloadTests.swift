import XCTest
import VMDSystem
import Foundation
@testable import Virtio
@testable import VirtioDevices

/// A SOCK_SEQPACKET "tap" that claims offload support and records TUNSETOFFLOAD.
final class OffloadSocketBackend: NetworkBackend {
    let inner: TapBackend
    var offloads: [UInt32] = []
    init(fd: Int32) { inner = TapBackend(fd: fd) }
    var descriptor: Int32 { inner.descriptor }
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> Int? { try inner.receive(into: buffer) }
    func send(_ frame: UnsafeRawBufferPointer) throws { try inner.send(frame) }
    var offloadCapable: Bool { true }
    func setOffloads(_ flags: UInt32) throws { offloads.append(flags) }
}

/// Issue 15: mergeable receive buffers, offload negotiation and the guest
/// header check (hostile headers are dropped, never passed to the tap).
final class VioNetOffloadTests: XCTestCase {
    var fds: [Int32] = [-1, -1]
    let guestMAC: [UInt8] = [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34]

    override func setUp() {
        virtioLogHook = { _ in }
        fds = makeFramePipe()
    }

    override func tearDown() { close(fds[0]); close(fds[1]) }

    func frame(_ payload: Int, source: [UInt8] = [2, 0, 0, 0, 0, 9]) -> [UInt8] {
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] + source + [0x08, 0x00] + (0..<payload).map { UInt8(truncatingIfNeeded: $0) }
    }

    func hostReceive() -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 70000)
        let n = read(fds[1], &buffer, buffer.count)
        return n < 0 ? nil : Array(buffer.prefix(n))
    }

    func testMergeableFrameSpreadsOverBuffersAndWaitsForEnough() throws {
        let backend = OffloadSocketBackend(fd: fds[0])
        let net = try XCTUnwrap(VioNet(name: "vionet0", backend: backend, mac: guestMAC, lockedLinkAddress: false))
        let driver = TestDriver(device: net, type: .network)
        XCTAssertTrue(driver.initialize())
        XCTAssertNotEqual(net.deviceFeatures & VirtioNetFeature.mrgRxbuf, 0)
        // A GSO-sized frame with an offload header from the "tap".
        var header: [UInt8] = [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0]
        let incoming = header + frame(40000)
        XCTAssertEqual(write(fds[1], incoming, incoming.count), incoming.count)
        // Only 10 x 2 KiB: not enough; nothing is dropped, nothing returned.
        var buffers: [UInt64] = []
        for _ in 0..<10 {
            let b = driver.allocate(length: 2048)
            buffers.append(b)
            driver.submit(0, [(b, 2048, true)])
        }
        XCTAssertFalse(net.backendReadable(), "waits for more buffers")
        XCTAssertEqual(driver.takeUsed(0).count, 0)
        XCTAssertEqual(net.droppedReceiveFrames, 0)
        for _ in 0..<15 {
            let b = driver.allocate(length: 2048)
            buffers.append(b)
            driver.submit(0, [(b, 2048, true)])
        }
        let used = driver.takeUsed(0)
        let needed = (incoming.count + 2047) / 2048
        XCTAssertEqual(used.count, needed, "all the buffers of the frame, returned together")
        XCTAssertEqual(used.reduce(0) { $0 + Int($1.length) }, incoming.count)
        var got: [UInt8] = []
        for (i, u) in used.enumerated() { got += try XCTUnwrap(driver.memory.readBytes(at: buffers[i], count: Int(u.length))) }
        header[10] = UInt8(needed)
        XCTAssertEqual(Array(got[0..<12]), header, "the tap's header kept (GUEST_CSUM), num_buffers set")
        XCTAssertEqual(Array(got[12...]), Array(incoming[12...]))
        XCTAssertEqual(backend.offloads, [TunOffload.csum | TunOffload.tso4 | TunOffload.tso6],
                       "the tap is told what the guest accepts, once")
        XCTAssertFalse(driver.needsReset)
    }

    func testWithoutGuestOffloadsTheHeaderIsCleared() throws {
        let backend = OffloadSocketBackend(fd: fds[0])
        let net = try XCTUnwrap(VioNet(name: "vionet0", backend: backend, mac: guestMAC, lockedLinkAddress: false))
        let driver = TestDriver(device: net, type: .network)
        XCTAssertTrue(driver.initialize(features: driver.offeredFeatures() & ~VirtioNetFeature.offloads))
        let incoming: [UInt8] = [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0] + frame(100)
        XCTAssertEqual(write(fds[1], incoming, incoming.count), incoming.count)
        let b = driver.allocate(length: 2048)
        driver.submit(0, [(b, 2048, true)])
        net.backendReadable()
        let got = try XCTUnwrap(driver.memory.readBytes(at: b, count: incoming.count))
        XCTAssertEqual(Array(got[0..<12]), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0])
        XCTAssertEqual(backend.offloads, [0], "no offloads for this guest")
    }

    func testTransmitHeaderChecks() throws {
        let backend = OffloadSocketBackend(fd: fds[0])
        let net = try XCTUnwrap(VioNet(name: "vionet0", backend: backend, mac: guestMAC, lockedLinkAddress: true))
        let driver = TestDriver(device: net, type: .network)
        XCTAssertTrue(driver.initialize(features: driver.offeredFeatures() & ~VirtioNetFeature.hostTSO6))
        func send(_ header: [UInt8], _ f: [UInt8]) -> [UInt8]? {
            let bytes = header + f
            driver.submit(1, [(driver.allocate(bytes), UInt32(bytes.count), false)])
            return hostReceive()
        }
        let own = frame(3000, source: guestMAC)
        // A TSO4 frame with a partial checksum: passed through as is (num_buffers cleared).
        let tso: [UInt8] = [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 7, 7]
        XCTAssertEqual(send(tso, own), Array(tso[0..<10]) + [0, 0] + own)
        // Hostile or not negotiated: dropped.
        let bad: [[UInt8]] = [
            [1, 4, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0],        // TSO6 not negotiated
            [1, 3, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0],        // UDP not offered
            [1, 0x81, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0],     // ECN not offered
            [0, 1, 54, 0, 0xa8, 0x05, 0, 0, 0, 0, 0, 0],          // GSO without NEEDS_CSUM
            [1, 1, 54, 0, 0, 0, 34, 0, 16, 0, 0, 0],              // GSO size 0
            [1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],     // checksum far past the frame
            [1, 0, 0, 0, 0, 0, 0xc3, 0x0b, 2, 0, 0, 0],           // csum_start + offset + 2 one past the 3014 bytes
            [4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],                 // unknown flag
        ]
        for h in bad { XCTAssertNil(send(h, own), "\(h)") }
        XCTAssertEqual(net.droppedTransmitFrames, bad.count)
        // locked lladdr still applies with offloads.
        XCTAssertNil(send(tso, frame(100, source: [2, 0, 0, 0, 0, 1])))
        XCTAssertEqual(net.droppedTransmitFrames, bad.count + 1)
        XCTAssertFalse(driver.needsReset)
    }
}
