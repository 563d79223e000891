import XCTest
import VMDSystem
import Glibc
@testable import Virtio
@testable import VirtioDevices

/// A SOCK_SEQPACKET "tap" that counts the reads vionet makes.
final class CountingSocketBackend: NetworkBackend {
    let inner: TapBackend
    var reads = 0
    init(fd: Int32) { inner = TapBackend(fd: fd) }
    var descriptor: Int32 { inner.descriptor }
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> Int? {
        reads += 1
        return try inner.receive(into: buffer)
    }
    func receive(vectors: UnsafeMutableBufferPointer<iovec>) throws -> Int? {
        reads += 1
        return try inner.receive(vectors: vectors)
    }
    func send(_ frame: UnsafeRawBufferPointer) throws { try inner.send(frame) }
    func send(vectors: UnsafeBufferPointer<iovec>) throws { try inner.send(vectors: vectors) }
}

/// Issue 15, speed: frames are read straight into the guest's buffers, in
/// batches, never without a buffer to put them in, and none is lost when the
/// guest has fewer buffers than frames are waiting.
final class VioNetBatchTests: XCTestCase {
    var fds: [Int32] = [-1, -1]
    var backend: CountingSocketBackend!
    var net: VioNet!
    var driver: TestDriver!
    let guestMAC: [UInt8] = [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34]

    override func setUp() {
        virtioLogHook = { _ in }
        fds = makeFramePipe()
    }

    override func tearDown() { close(fds[0]); close(fds[1]) }

    func start(features: (UInt64) -> UInt64 = { $0 & ~VirtioNetFeature.mrgRxbuf }) {
        backend = CountingSocketBackend(fd: fds[0])
        net = VioNet(name: "vionet0", backend: backend, mac: guestMAC, lockedLinkAddress: false)
        driver = TestDriver(device: net, type: .network)
        XCTAssertTrue(driver.initialize(features: features(driver.offeredFeatures())))
    }

    /// Frame `n`: 12-byte header, broadcast Ethernet, `n` in the payload.
    func frame(_ n: Int) -> [UInt8] {
        [UInt8](repeating: 0, count: 12) + [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 9, 0x08, 0x00]
            + [UInt8(n & 0xff), UInt8(n >> 8)] + [UInt8](repeating: 0xab, count: 100)
    }

    func hostSend(_ frames: Range<Int>) {
        for n in frames {
            let f = frame(n)
            XCTAssertEqual(write(fds[1], f, f.count), f.count)
        }
    }

    /// Posts `count` receive buffers without notifying; returns their addresses by head.
    func post(_ count: Int, length: Int = 1526) -> [UInt16: UInt64] {
        var buffers: [UInt16: UInt64] = [:]
        for _ in 0..<count {
            let b = driver.allocate(length: length)
            let head = driver.addChain(0, [(b, UInt32(length), true)])
            driver.makeAvailable(0, head)
            buffers[head] = b
        }
        return buffers
    }

    /// The frame numbers the used entries carry, checking each frame whole.
    func delivered(_ used: [(id: UInt32, length: UInt32)], _ buffers: [UInt16: UInt64]) -> [Int] {
        used.compactMap { u in
            guard let b = buffers[UInt16(u.id)], u.length == UInt32(frame(0).count),
                  let bytes = driver.memory.readBytes(at: b, count: Int(u.length)) else { return nil }
            let n = Int(bytes[26]) | Int(bytes[27]) << 8
            var expected = frame(n)
            expected[10] = 1        // num_buffers
            return bytes == expected ? n : nil
        }
    }

    func testBurstLargerThanTheGuestsBuffersLosesNothingAndNeverSpins() {
        start()
        hostSend(0..<10)
        var buffers = post(3)
        XCTAssertFalse(net.backendReadable(), "3 buffers for 10 frames: stop watching the tap")
        XCTAssertEqual(delivered(driver.takeUsed(0), buffers), [0, 1, 2])
        XCTAssertEqual(backend.reads, 3, "one read per buffer, none without one")
        // The tap still readable, the guest without buffers: no read at all.
        XCTAssertFalse(net.backendReadable())
        XCTAssertFalse(net.backendReadable())
        XCTAssertEqual(backend.reads, 3, "no read while the guest has no buffer")
        XCTAssertEqual(driver.takeUsed(0).count, 0)
        // The guest adds 7 buffers: the 7 waiting frames, in order, none
        // dropped; no buffer left, so the tap stays unwatched.
        var resumed = 0
        net.onInputWanted = { resumed += 1 }
        buffers.merge(post(7)) { a, _ in a }
        driver.notify(0)
        XCTAssertEqual(resumed, 0, "no buffer left: no watch to add and remove")
        XCTAssertEqual(delivered(driver.takeUsed(0), buffers), Array(3..<10))
        XCTAssertEqual(backend.reads, 10)
        // One more: nothing waits, the buffer stays, the tap is watched again.
        buffers.merge(post(1)) { a, _ in a }
        driver.notify(0)
        XCTAssertEqual(resumed, 1, "a buffer left over: watch the tap again")
        hostSend(10..<11)
        XCTAssertFalse(net.backendReadable())
        XCTAssertEqual(delivered(driver.takeUsed(0), buffers), [10])
        XCTAssertEqual(net.droppedReceiveFrames, 0)
        XCTAssertFalse(driver.needsReset)
    }

    /// A polling device process serves the receive queue on new buffers
    /// only while frames wait for them; transmit buffers are always work.
    func testReceiveBuffersAreWorkOnlyWhileFramesWaitForThem() {
        start()
        XCTAssertTrue(net.wantsBuffers(queue: VioNet.transmitQueue))
        let buffers = post(2)
        XCTAssertTrue(net.backendReadable(), "buffers and an empty tap: keep watching")
        XCTAssertFalse(net.wantsBuffers(queue: VioNet.receiveQueue),
                       "buffers left over: more of them are no work until frames come")
        hostSend(0..<3)
        XCTAssertFalse(net.backendReadable(), "3 frames for 2 buffers: the tap waits")
        XCTAssertEqual(delivered(driver.takeUsed(0), buffers), [0, 1])
        XCTAssertTrue(net.wantsBuffers(queue: VioNet.receiveQueue), "a frame waits for the next buffer")
        let more = post(2)
        driver.notify(0)
        XCTAssertEqual(delivered(driver.takeUsed(0), more), [2])
        XCTAssertFalse(net.wantsBuffers(queue: VioNet.receiveQueue), "the waiting frame is in: no work again")
        XCTAssertTrue(net.wantsBuffers(queue: VioNet.transmitQueue))
    }

    func testChainTakenWhenTheTapIsEmptyWaitsForTheNextFrame() {
        start()
        let buffers = post(1)
        XCTAssertTrue(net.backendReadable(), "a buffer and an empty tap: keep watching")
        XCTAssertEqual(driver.takeUsed(0).count, 0, "nothing used while nothing was read")
        XCTAssertEqual(backend.reads, 1)
        hostSend(0..<1)
        XCTAssertFalse(net.backendReadable(), "the frame took the only buffer: stop watching")
        XCTAssertEqual(delivered(driver.takeUsed(0), buffers), [0])
        XCTAssertEqual(backend.reads, 2)
    }

    func testUsedEntriesArePublishedInBatchesAndInterruptOncePerCall() {
        start()
        let buffers = post(64)
        hostSend(0..<40)
        let publishes = net.receivePublishes
        XCTAssertTrue(net.backendReadable())
        XCTAssertEqual(delivered(driver.takeUsed(0), buffers), Array(0..<40))
        let batches = (40 + VioNet.publishBatch - 1) / VioNet.publishBatch
        XCTAssertEqual(net.receivePublishes - publishes, batches, "the used index moved once per \(VioNet.publishBatch) frames")
        XCTAssertEqual(driver.sink.changes, [true], "one interrupt for the 40 frames")
    }

    func testAtMostABudgetOfFramesPerCall() {
        start()
        let buffers = post(128)
        hostSend(0..<(VioNet.receiveBudget + 10))
        XCTAssertTrue(net.backendReadable(), "the budget is spent, frames wait: keep watching")
        XCTAssertEqual(delivered(driver.takeUsed(0), buffers), Array(0..<VioNet.receiveBudget))
        XCTAssertTrue(net.backendReadable())
        XCTAssertEqual(delivered(driver.takeUsed(0), buffers), Array(VioNet.receiveBudget..<(VioNet.receiveBudget + 10)))
        XCTAssertEqual(net.droppedReceiveFrames, 0)
    }

    func testEventIndexUsedEventHonouredAcrossABatch() {
        start { $0 & ~VirtioNetFeature.mrgRxbuf }
        XCTAssertNotEqual(driver.transport.negotiatedFeatures & VirtioFeature.eventIndex, 0)
        let buffers = post(32)
        // The driver wants an interrupt only once the 20th entry is used.
        driver.setUsedEvent(0, 19)
        hostSend(0..<10)
        XCTAssertTrue(net.backendReadable())
        XCTAssertEqual(delivered(driver.takeUsed(0), buffers), Array(0..<10))
        XCTAssertEqual(driver.sink.changes, [], "used_event not reached: no interrupt")
        hostSend(10..<25)
        XCTAssertTrue(net.backendReadable())
        XCTAssertEqual(delivered(driver.takeUsed(0), buffers), Array(10..<25))
        XCTAssertEqual(driver.sink.changes, [true], "used_event crossed: one interrupt")
    }

    func testMergeableTailWaitsForBuffersWithoutLoss() throws {
        start { $0 }
        XCTAssertNotEqual(driver.transport.negotiatedFeatures & VirtioNetFeature.mrgRxbuf, 0)
        // A 3000-byte frame and 1024-byte buffers: the start is read into the
        // first, the tail waits for two more.
        var big = [UInt8](repeating: 0, count: 12) + [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 9, 0x08, 0x00]
        big += (0..<(3000 - big.count)).map { UInt8(truncatingIfNeeded: $0 * 7) }
        XCTAssertEqual(write(fds[1], big, big.count), big.count)
        var buffers = post(1, length: 1024)
        XCTAssertFalse(net.backendReadable(), "the tail waits for buffers")
        XCTAssertEqual(driver.takeUsed(0).count, 0, "no part of the frame is seen")
        buffers.merge(post(2, length: 1024)) { a, _ in a }
        driver.notify(0)
        let used = driver.takeUsed(0)
        XCTAssertEqual(used.map(\.length), [1024, 1024, 952])
        var got: [UInt8] = []
        for u in used { got += try driver.memory.readBytes(at: XCTUnwrap(buffers[UInt16(u.id)]), count: Int(u.length)) ?? [] }
        var expected = big
        expected[10] = 3
        XCTAssertEqual(got, expected)
        XCTAssertEqual(net.droppedReceiveFrames, 0)
    }

    func testTransmitGathersFromGuestBuffersAfterTheChecks() {
        start()
        // A frame split over three descriptors; sent whole, header cleared.
        let f = frame(7)
        let a = driver.allocate(Array(f[0..<5])), b = driver.allocate(Array(f[5..<30])), c = driver.allocate(Array(f[30...]))
        driver.submit(1, [(a, 5, false), (b, 25, false), (c, UInt32(f.count - 30), false)])
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = read(fds[1], &buffer, buffer.count)
        XCTAssertEqual(Array(buffer.prefix(max(n, 0))), f)
        XCTAssertEqual(driver.takeUsed(1).count, 1)
    }
}
