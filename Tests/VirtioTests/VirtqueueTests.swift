import XCTest
@testable import Virtio

final class VirtqueueTests: XCTestCase {
    var device: RecordingDevice!
    var driver: TestDriver!
    var logged: [String] = []

    override func setUp() {
        device = RecordingDevice()
        driver = TestDriver(device: device)
        logged = []
        virtioLogHook = { [weak self] line in self?.logged.append(line) }
        XCTAssertTrue(driver.initialize())
    }

    override func tearDown() {
        virtioLogHook = { _ in }
    }

    // MARK: chains of every shape

    func testSingleReadableDescriptor() {
        let a = driver.allocate([1, 2, 3, 4])
        let head = driver.submit(0, [(a, 4, false)])
        XCTAssertEqual(device.requests.count, 1)
        XCTAssertEqual(device.requests[0].head, head)
        XCTAssertEqual(device.requests[0].readable, [ChainElement(address: a, length: 4, isDeviceWritable: false)])
        XCTAssertEqual(device.requests[0].writable, [])
        XCTAssertEqual(driver.takeUsed(0).map { $0.id }, [UInt32(head)])
        XCTAssertFalse(driver.needsReset)
    }

    func testSingleWritableDescriptor() {
        let a = driver.allocate(length: 64)
        driver.submit(0, [(a, 64, true)])
        XCTAssertEqual(device.requests[0].writable.count, 1)
        XCTAssertEqual(driver.takeUsed(0).first?.length, 64)
    }

    func testMixedChainReadableThenWritable() {
        let r1 = driver.allocate(length: 16), r2 = driver.allocate(length: 512)
        let w1 = driver.allocate(length: 512), w2 = driver.allocate(length: 1)
        driver.submit(0, [(r1, 16, false), (r2, 512, false), (w1, 512, true), (w2, 1, true)])
        let request = device.requests[0]
        XCTAssertEqual(request.readable.map { $0.address }, [r1, r2])
        XCTAssertEqual(request.writable.map { $0.address }, [w1, w2])
        XCTAssertEqual(request.readableLength, 528)
        XCTAssertEqual(request.writableLength, 513)
    }

    func testZeroLengthDescriptorIsAccepted() {
        driver.submit(0, [(0, 0, false)])
        XCTAssertEqual(device.requests.count, 1)
        XCTAssertFalse(driver.needsReset)
    }

    func testSeveralChainsInOneNotify() {
        for i in 0..<5 {
            let head = driver.addChain(0, [(driver.allocate([UInt8(i)]), 1, false)])
            driver.makeAvailable(0, head)
        }
        driver.notify(0)
        XCTAssertEqual(device.requests.count, 5)
        XCTAssertEqual(driver.takeUsed(0).count, 5)
    }

    func testChainAsLongAsTheQueueIsAccepted() {
        XCTAssertTrue(driver.initialize(queueSize: 8))
        let buffers = (0..<8).map { _ in (address: driver.allocate(length: 8), length: UInt32(8), writable: false) }
        driver.submit(0, buffers)
        XCTAssertEqual(device.requests.last?.readable.count, 8)
        XCTAssertFalse(driver.needsReset)
    }

    func testIndirectTable() {
        let r = driver.allocate(length: 16), w = driver.allocate(length: 100)
        let table = driver.allocate(length: 32)
        driver.setDescriptor(table: table, index: 0, address: r, length: 16, flags: VirtqDescriptorFlag.next, next: 1)
        driver.setDescriptor(table: table, index: 1, address: w, length: 100, flags: VirtqDescriptorFlag.write, next: 0)
        driver.setDescriptor(table: driver.descriptorTable(0), index: 0, address: table, length: 32,
                             flags: VirtqDescriptorFlag.indirect, next: 0)
        driver.makeAvailable(0, 0)
        driver.notify(0)
        XCTAssertFalse(driver.needsReset)
        XCTAssertEqual(device.requests.first?.readable.map { $0.address }, [r])
        XCTAssertEqual(device.requests.first?.writable.map { $0.address }, [w])
    }

    func testDirectDescriptorsFollowedByIndirectTable() {
        let r = driver.allocate(length: 16), w = driver.allocate(length: 8)
        let table = driver.allocate(length: 16)
        driver.setDescriptor(table: table, index: 0, address: w, length: 8, flags: VirtqDescriptorFlag.write, next: 0)
        driver.setDescriptor(table: driver.descriptorTable(0), index: 3, address: r, length: 16,
                             flags: VirtqDescriptorFlag.next, next: 7)
        driver.setDescriptor(table: driver.descriptorTable(0), index: 7, address: table, length: 16,
                             flags: VirtqDescriptorFlag.indirect, next: 0)
        driver.makeAvailable(0, 3)
        driver.notify(0)
        XCTAssertFalse(driver.needsReset)
        XCTAssertEqual(device.requests.first?.readable.map { $0.address }, [r])
        XCTAssertEqual(device.requests.first?.writable.map { $0.address }, [w])
    }

    func testIndirectRejectedWhenNotNegotiated() {
        XCTAssertTrue(driver.initialize(features: driver.offeredFeatures() & ~VirtioFeature.indirectDescriptors))
        let table = driver.allocate(length: 16)
        driver.setDescriptor(table: table, index: 0, address: driver.allocate(length: 4), length: 4, flags: 0, next: 0)
        driver.setDescriptor(table: driver.descriptorTable(0), index: 0, address: table, length: 16,
                             flags: VirtqDescriptorFlag.indirect, next: 0)
        driver.makeAvailable(0, 0)
        driver.notify(0)
        assertNeedsReset(containing: "without VIRTIO_F_INDIRECT_DESC")
    }

    // MARK: malformed chains end in NEEDS_RESET

    func assertNeedsReset(containing text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(driver.needsReset, "device should need reset", file: file, line: line)
        XCTAssertEqual(logged.count, 1, "exactly one log line: \(logged)", file: file, line: line)
        XCTAssertTrue(logged.first?.contains(text) == true, "\(logged)", file: file, line: line)
        XCTAssertTrue(logged.first?.hasPrefix("testdev0: ") == true, file: file, line: line)
        XCTAssertTrue(driver.sink.level, "config interrupt raised", file: file, line: line)
        XCTAssertEqual(driver.readISR() & VirtioISR.configChange, VirtioISR.configChange, file: file, line: line)
        // Further notifications are ignored until the driver resets us.
        let before = device.requests.count
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])
        XCTAssertEqual(device.requests.count, before, file: file, line: line)
        // A reset brings the device back.
        XCTAssertTrue(driver.initialize(), file: file, line: line)
        XCTAssertFalse(driver.needsReset, file: file, line: line)
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])
        XCTAssertEqual(device.requests.count, before + 1, file: file, line: line)
    }

    func testAddressPastMemoryEnd() {
        driver.submit(0, [(UInt64(TestDriver.memorySize) - 2, 4, false)])
        XCTAssertTrue(device.requests.isEmpty)
        assertNeedsReset(containing: "outside guest memory")
    }

    func testAddressPlusLengthOverflows() {
        driver.submit(0, [(UInt64.max - 1, 0xffff_ffff, false)])
        assertNeedsReset(containing: "outside guest memory")
    }

    func testHugeLength() {
        driver.submit(0, [(0x1000, 0xffff_ffff, true)])
        assertNeedsReset(containing: "outside guest memory")
    }

    func testLoop() {
        let a = driver.allocate(length: 4)
        driver.setDescriptor(table: driver.descriptorTable(0), index: 0, address: a, length: 4,
                             flags: VirtqDescriptorFlag.next, next: 1)
        driver.setDescriptor(table: driver.descriptorTable(0), index: 1, address: a, length: 4,
                             flags: VirtqDescriptorFlag.next, next: 0)
        driver.makeAvailable(0, 0)
        driver.notify(0)
        assertNeedsReset(containing: "longer than 256")
    }

    func testSelfLoop() {
        driver.setDescriptor(table: driver.descriptorTable(0), index: 5, address: 0x1000, length: 4,
                             flags: VirtqDescriptorFlag.next, next: 5)
        driver.makeAvailable(0, 5)
        driver.notify(0)
        assertNeedsReset(containing: "loop")
    }

    func testLoopInsideIndirectTable() {
        let table = driver.allocate(length: 32)
        driver.setDescriptor(table: table, index: 0, address: 0x1000, length: 4, flags: VirtqDescriptorFlag.next, next: 1)
        driver.setDescriptor(table: table, index: 1, address: 0x1000, length: 4, flags: VirtqDescriptorFlag.next, next: 0)
        driver.setDescriptor(table: driver.descriptorTable(0), index: 0, address: table, length: 32,
                             flags: VirtqDescriptorFlag.indirect, next: 0)
        driver.makeAvailable(0, 0)
        driver.notify(0)
        assertNeedsReset(containing: "longer than 2")
    }

    func testIndirectInsideIndirect() {
        let inner = driver.allocate(length: 16)
        driver.setDescriptor(table: inner, index: 0, address: 0x1000, length: 4, flags: 0, next: 0)
        let outer = driver.allocate(length: 16)
        driver.setDescriptor(table: outer, index: 0, address: inner, length: 16, flags: VirtqDescriptorFlag.indirect, next: 0)
        driver.setDescriptor(table: driver.descriptorTable(0), index: 0, address: outer, length: 16,
                             flags: VirtqDescriptorFlag.indirect, next: 0)
        driver.makeAvailable(0, 0)
        driver.notify(0)
        assertNeedsReset(containing: "indirect descriptor inside an indirect table")
    }

    func testIndirectTableWithBadLength() {
        driver.setDescriptor(table: driver.descriptorTable(0), index: 0, address: driver.allocate(length: 32), length: 17,
                             flags: VirtqDescriptorFlag.indirect, next: 0)
        driver.makeAvailable(0, 0)
        driver.notify(0)
        assertNeedsReset(containing: "indirect table length 17")
    }

    func testIndirectTablePastMemoryEnd() {
        driver.setDescriptor(table: driver.descriptorTable(0), index: 0, address: UInt64(TestDriver.memorySize) - 16,
                             length: 32, flags: VirtqDescriptorFlag.indirect, next: 0)
        driver.makeAvailable(0, 0)
        driver.notify(0)
        assertNeedsReset(containing: "outside guest memory")
    }

    func testNextIndexPastIndirectTable() {
        let table = driver.allocate(length: 16)
        driver.setDescriptor(table: table, index: 0, address: 0x1000, length: 4, flags: VirtqDescriptorFlag.next, next: 9)
        driver.setDescriptor(table: driver.descriptorTable(0), index: 0, address: table, length: 16,
                             flags: VirtqDescriptorFlag.indirect, next: 0)
        driver.makeAvailable(0, 0)
        driver.notify(0)
        assertNeedsReset(containing: "continues at 9")
    }

    func testNextIndexPastQueue() {
        driver.setDescriptor(table: driver.descriptorTable(0), index: 0, address: 0x1000, length: 4,
                             flags: VirtqDescriptorFlag.next, next: 256)
        driver.makeAvailable(0, 0)
        driver.notify(0)
        assertNeedsReset(containing: "continues at 256")
    }

    func testHeadIndexPastQueue() {
        driver.makeAvailable(0, 300)
        driver.notify(0)
        assertNeedsReset(containing: "names descriptor 300")
    }

    func testReadableAfterWritable() {
        driver.submit(0, [(0x1000, 4, true), (0x2000, 4, false)])
        assertNeedsReset(containing: "device-readable descriptor after a device-writable one")
    }

    func testAvailIndexRunningAhead() {
        driver.memory.store16(257, at: driver.availRing(0) + 2)
        driver.notify(0)
        assertNeedsReset(containing: "more than 256 ahead")
    }

    func testCompletedRequestsBeforeAnErrorAreStillReturned() {
        let good = driver.addChain(0, [(driver.allocate(length: 4), 4, false)])
        driver.makeAvailable(0, good)
        driver.makeAvailable(0, 999)
        driver.notify(0)
        XCTAssertEqual(driver.takeUsed(0).map { $0.id }, [UInt32(good)])
        assertNeedsReset(containing: "names descriptor 999")
    }

    // MARK: ring wrap-around

    func testIndicesWrapAt65535() {
        let queue = driver.transport.queues[0]
        queue.setIndicesForTesting(65533)
        driver.availIndex[0] = 65533
        driver.usedSeen[0] = 65533
        driver.memory.store16(65533, at: driver.usedRing(0) + 2)
        var heads: [UInt16] = []
        for i in 0..<6 {
            let head = driver.addChain(0, [(driver.allocate([UInt8(i)]), 1, false)])
            heads.append(head)
            driver.makeAvailable(0, head)
            driver.notify(0)
        }
        XCTAssertFalse(driver.needsReset, "\(logged)")
        XCTAssertEqual(device.requests.map { $0.head }, heads)
        XCTAssertEqual(driver.takeUsed(0).map { UInt16($0.id) }, heads)
        XCTAssertEqual(queue.lastAvailIndex, 3)
        XCTAssertEqual(queue.usedIndex, 3)
        XCTAssertEqual(driver.memory.load16(at: driver.usedRing(0) + 2), 3)
    }

    func testRunAwayDetectedAcrossWrap() {
        driver.transport.queues[0].setIndicesForTesting(65500)
        driver.memory.store16(65500 &+ 257, at: driver.availRing(0) + 2)
        driver.notify(0)
        assertNeedsReset(containing: "more than 256 ahead")
    }

    // MARK: interrupts and EVENT_IDX

    func testInterruptWithoutEventIndex() {
        XCTAssertTrue(driver.initialize(features: driver.offeredFeatures() & ~VirtioFeature.eventIndex))
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])
        XCTAssertTrue(driver.sink.level)
        XCTAssertEqual(driver.readISR(), VirtioISR.queue)
        XCTAssertFalse(driver.sink.level)
        XCTAssertEqual(driver.readISR(), 0, "ISR read clears")
        // VIRTQ_AVAIL_F_NO_INTERRUPT suppresses.
        driver.memory.store16(1, at: driver.availRing(0))
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])
        XCTAssertFalse(driver.sink.level)
        XCTAssertEqual(driver.takeUsed(0).count, 2)
    }

    func testUsedEventSuppressesInterrupts() {
        // The driver wants an interrupt only once used idx passes 2.
        driver.setUsedEvent(0, 2)
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])        // used idx -> 1
        XCTAssertFalse(driver.sink.level, "used_event 2 not reached")
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])        // -> 2
        XCTAssertFalse(driver.sink.level, "used_event is crossed only when idx goes past 2")
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])        // -> 3: crosses
        XCTAssertTrue(driver.sink.level)
        XCTAssertEqual(driver.readISR(), VirtioISR.queue)
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])        // -> 4, used_event still 2
        XCTAssertFalse(driver.sink.level)
        driver.setUsedEvent(0, 4)
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])        // -> 5 crosses 4
        XCTAssertTrue(driver.sink.level)
    }

    func testUsedEventAcrossWrap() {
        driver.transport.queues[0].setIndicesForTesting(65535)
        driver.availIndex[0] = 65535
        driver.usedSeen[0] = 65535
        driver.setUsedEvent(0, 65535)
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])        // 65535 -> 0 crosses 65535
        XCTAssertTrue(driver.sink.level)
        _ = driver.readISR()
        driver.setUsedEvent(0, 1)
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])        // 0 -> 1: not past 1
        XCTAssertFalse(driver.sink.level)
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])        // 1 -> 2
        XCTAssertTrue(driver.sink.level)
    }

    func testDeviceWritesAvailEvent() {
        XCTAssertEqual(driver.availEvent(0), 0)
        for _ in 0..<3 {
            let head = driver.addChain(0, [(driver.allocate(length: 4), 4, false)])
            driver.makeAvailable(0, head)
        }
        driver.notify(0)
        // Having consumed 3, the device asks to be notified at the next one.
        XCTAssertEqual(driver.availEvent(0), 3)
        XCTAssertEqual(device.requests.count, 3)
    }

    func testNoAvailEventWithoutEventIndex() {
        XCTAssertTrue(driver.initialize(features: driver.offeredFeatures() & ~VirtioFeature.eventIndex))
        driver.memory.store16(0xabcd, at: driver.usedRing(0) + 4 + 8 * 256)
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])
        XCTAssertEqual(driver.availEvent(0), 0xabcd)
    }

    // MARK: the walker on its own

    func testWalkerYieldsNilAfterErrorAndNeverTraps() throws {
        let memory = PlainGuestMemory(size: 4096)
        let queue = Virtqueue(maxSize: 4, memory: memory)
        queue.descriptorTable = 0
        queue.availRing = 64
        queue.usedRing = 128
        try queue.enable()
        memory.store64(0xffff_ffff_ffff_fff0, at: 0)
        memory.store32(0x100, at: 8)
        memory.store16(0, at: 64 + 4)       // head 0
        memory.store16(1, at: 64 + 2)       // avail idx 1
        var chain = try XCTUnwrap(try queue.popChain())
        XCTAssertThrowsError(try chain.next()) { error in
            XCTAssertEqual(error as? VirtqueueError, .bufferOutsideMemory(address: 0xffff_ffff_ffff_fff0, length: 0x100))
        }
        XCTAssertNil(try chain.next())
    }

    func testRingsMustFitAndBeAligned() {
        let memory = PlainGuestMemory(size: 4096)
        let queue = Virtqueue(maxSize: 256, memory: memory)
        queue.descriptorTable = 0
        queue.availRing = 0
        queue.usedRing = 4000
        XCTAssertThrowsError(try queue.enable()) {    // 256 used entries do not fit at 4000
            XCTAssertEqual($0 as? VirtqueueError, .ringOutsideMemory(ring: "used", address: 4000, length: 6 + 8 * 256))
        }
        queue.size = 4
        queue.descriptorTable = 8
        XCTAssertThrowsError(try queue.enable()) { XCTAssertEqual($0 as? VirtqueueError, .ringMisaligned(ring: "descriptor", address: 8)) }
        queue.descriptorTable = 0
        queue.availRing = 64
        queue.usedRing = 4094
        XCTAssertThrowsError(try queue.enable())
        queue.usedRing = 128
        XCTAssertNoThrow(try queue.enable())
    }
}
