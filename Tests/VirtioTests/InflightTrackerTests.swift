import XCTest
@testable import Virtio

/// The shared inflight tracker (vhost-user's split-ring layout) across a
/// device "crash": a new Virtqueue over the same guest memory and the same
/// region, as a restarted device process has. Completions in order and out
/// of order, and a death between every two steps of taking and returning a
/// request: nothing is lost, nothing is completed twice.
final class InflightTrackerTests: XCTestCase {
    var device: RecordingDevice!
    var driver: TestDriver!
    var region: UnsafeMutableRawPointer!
    let queueSize: UInt16 = 8
    /// A queue holds its log weakly: the instances' logs live here.
    var logs: [VirtqueueInflightLog] = []

    override func setUp() {
        device = RecordingDevice()
        driver = TestDriver(device: device)
        XCTAssertTrue(driver.initialize(queueSize: queueSize))
        let bytes = InflightLayout.queueRegionSize(queueSize: queueSize)
        region = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        memset(region, 0, bytes)
    }

    override func tearDown() { region.deallocate() }

    /// A device instance: a queue over the driver's rings, logging to `region`.
    func instance(fresh: Bool) throws -> (Virtqueue, InflightQueue) {
        let q = Virtqueue(maxSize: queueSize, memory: driver.memory)
        q.size = queueSize
        q.descriptorTable = driver.descriptorTable(0)
        q.availRing = driver.availRing(0)
        q.usedRing = driver.usedRing(0)
        try q.enable()
        let log = InflightQueue(base: region, descriptorCount: queueSize)
        logs.append(log)
        if fresh {
            log.initialize()
            q.inflightLog = log
        } else {
            try log.resume(q)
        }
        return (q, log)
    }

    func offer(_ n: Int) -> [UInt16] {
        (0..<n).map { i in
            let h = driver.addChain(0, [(driver.allocate([UInt8(i)]), 1, false)])
            driver.makeAvailable(0, h)
            return h
        }
    }

    /// Takes every request on the ring; returns their heads in order.
    func takeAll(_ q: Virtqueue) throws -> [UInt16] {
        var heads: [UInt16] = []
        while let r = try q.popRequest() { heads.append(r.head) }
        return heads
    }

    func usedIDs() -> [UInt16] { driver.takeUsed(0).map { UInt16($0.id) } }

    func testInOrderCompletionsLeaveNothingToResubmit() throws {
        let (q1, _) = try instance(fresh: true)
        let heads = offer(3)
        XCTAssertEqual(try takeAll(q1), heads)
        for h in heads { try q1.pushUsed(head: h, length: 0) }
        let (q2, log2) = try instance(fresh: false)
        XCTAssertEqual(q2.resubmissions, [])
        XCTAssertEqual(q2.lastAvailIndex, 3)
        XCTAssertEqual(q2.usedIndex, 3)
        XCTAssertEqual(log2.inflightCount, 0)
        XCTAssertEqual(usedIDs(), heads)
    }

    func testOutOfOrderCompletionsResubmitOnlyWhatWasNotPublished() throws {
        let (q1, _) = try instance(fresh: true)
        let heads = offer(4)
        XCTAssertEqual(try takeAll(q1), heads)
        // The second and fourth finish first (io_uring order), then the crash.
        try q1.pushUsed(head: heads[3], length: 0)
        try q1.pushUsed(head: heads[1], length: 0)
        let (q2, _) = try instance(fresh: false)
        XCTAssertEqual(q2.resubmissions, [heads[0], heads[2]], "in their original order")
        XCTAssertEqual(q2.lastAvailIndex, 4)
        let later = offer(1)
        XCTAssertEqual(try takeAll(q2), [heads[0], heads[2], later[0]])
        // The new instance completes out of order too.
        for h in [later[0], heads[2], heads[0]] { try q2.pushUsed(head: h, length: 0) }
        let used = usedIDs()
        XCTAssertEqual(used, [heads[3], heads[1], later[0], heads[2], heads[0]])
        XCTAssertEqual(Set(used).count, used.count, "nothing completed twice")
        let (q3, log3) = try instance(fresh: false)
        XCTAssertEqual(q3.resubmissions, [])
        XCTAssertEqual(log3.inflightCount, 0)
        XCTAssertEqual(q3.lastAvailIndex, 5)
    }

    func testDeathBetweenPopAndTakenRereadsTheRing() throws {
        let (q1, _) = try instance(fresh: true)
        let heads = offer(2)
        q1.inflightLog = nil            // popped in the dead process only
        XCTAssertEqual(try takeAll(q1), heads)
        let (q2, _) = try instance(fresh: false)
        XCTAssertEqual(q2.resubmissions, [])
        XCTAssertEqual(q2.lastAvailIndex, 0, "taken again from the available ring")
        XCTAssertEqual(try takeAll(q2), heads)
    }

    func testDeathAfterTakenResubmits() throws {
        let (q1, _) = try instance(fresh: true)
        let heads = offer(2)
        XCTAssertEqual(try takeAll(q1), heads)
        let (q2, _) = try instance(fresh: false)
        XCTAssertEqual(q2.resubmissions, heads)
        for h in try takeAll(q2) { try q2.pushUsed(head: h, length: 0) }
        XCTAssertEqual(usedIDs(), heads)
    }

    func testDeathAfterReturningBeforeTheUsedStoreResubmitsOnce() throws {
        let (q1, log1) = try instance(fresh: true)
        let heads = offer(2)
        XCTAssertEqual(try takeAll(q1), heads)
        try q1.pushUsed(head: heads[1], length: 0)
        log1.returning(head: heads[0])     // ...and the process dies
        let (q2, _) = try instance(fresh: false)
        XCTAssertEqual(q2.resubmissions, [heads[0]])
        XCTAssertEqual(q2.usedIndex, 1)
        for h in try takeAll(q2) { try q2.pushUsed(head: h, length: 0) }
        XCTAssertEqual(usedIDs(), [heads[1], heads[0]])
    }

    func testDeathAfterTheUsedStoreBeforeReturnedIsNotResubmitted() throws {
        let (q1, log1) = try instance(fresh: true)
        let heads = offer(3)
        XCTAssertEqual(try takeAll(q1), heads)
        // heads[2] completes fully; heads[0] is published but the process
        // dies before it is marked returned.
        try q1.pushUsed(head: heads[2], length: 0)
        let dying = RecordingOnlyUpTo(log1, stopAfterReturning: true)
        logs.append(dying)
        q1.inflightLog = dying
        try q1.pushUsed(head: heads[0], length: 0)
        let (q2, log2) = try instance(fresh: false)
        XCTAssertEqual(q2.resubmissions, [heads[1]])
        XCTAssertEqual(q2.usedIndex, 2)
        XCTAssertEqual(q2.lastAvailIndex, 3)
        XCTAssertEqual(log2.inflightCount, 1)
        for h in try takeAll(q2) { try q2.pushUsed(head: h, length: 0) }
        XCTAssertEqual(usedIDs(), [heads[2], heads[0], heads[1]])
    }

    func testRecoveryAfterEachOutOfOrderCompletionAcrossIndexWrap() throws {
        // Start the ring near the 16-bit wrap, take six, complete them in a
        // shuffled order, and "restart" after every completion: each
        // recovery must account for every request exactly once.
        let start: UInt16 = 65533
        driver.availIndex[0] = start
        driver.memory.store16(start, at: driver.availRing(0) + 2)
        driver.memory.store16(start, at: driver.usedRing(0) + 2)
        driver.usedSeen[0] = start
        let (q1, log1) = try instance(fresh: true)
        q1.restoreIndices(lastAvailIndex: start, usedIndex: start)
        let heads = offer(6)
        XCTAssertEqual(try takeAll(q1), heads)
        let order = [heads[4], heads[1], heads[5], heads[0], heads[3], heads[2]]
        var published: [UInt16] = []
        for h in order {
            try q1.pushUsed(head: h, length: 0)
            published.append(h)
            // A restart here must resubmit exactly the unpublished ones.
            let snapshot = snapshotRegion()
            let (q2, _) = try instance(fresh: false)
            XCTAssertEqual(Set(q2.resubmissions), Set(heads).subtracting(published))
            XCTAssertEqual(q2.lastAvailIndex, start &+ 6)
            XCTAssertEqual(q2.usedIndex, start &+ UInt16(published.count))
            restoreRegion(snapshot)
        }
        XCTAssertEqual(usedIDs(), order)
    }

    func testARegionForAnotherQueueIsRefused() throws {
        let log = InflightQueue(base: region, descriptorCount: queueSize)
        log.initialize()
        log.taken(head: 7)
        XCTAssertThrowsError(try log.recover(ringUsedIndex: 0, queueSize: 4))
        region.storeBytes(of: UInt16(16), toByteOffset: 10, as: UInt16.self)
        XCTAssertThrowsError(try log.recover(ringUsedIndex: 0, queueSize: 8))
    }

    func testAUsedIndexRunAwayIsRefused() throws {
        let (q1, _) = try instance(fresh: true)
        _ = offer(1)
        _ = try takeAll(q1)
        driver.memory.store16(200, at: driver.usedRing(0) + 2)
        XCTAssertThrowsError(try instance(fresh: false))
    }

    func snapshotRegion() -> [UInt8] {
        let n = InflightLayout.queueRegionSize(queueSize: queueSize)
        return Array(UnsafeRawBufferPointer(start: region, count: n))
    }

    func restoreRegion(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { _ = memcpy(region, $0.baseAddress!, bytes.count) }
    }
}

/// Passes calls on until `returning`, then drops the `returned` that
/// follows: the process "died" after publishing the used index.
final class RecordingOnlyUpTo: VirtqueueInflightLog {
    let inner: InflightQueue
    let stop: Bool
    init(_ inner: InflightQueue, stopAfterReturning: Bool) { self.inner = inner; stop = stopAfterReturning }
    func taken(head: UInt16) { inner.taken(head: head) }
    func returning(head: UInt16) { inner.returning(head: head) }
    func returned(head: UInt16, usedIndex: UInt16) { if !stop { inner.returned(head: head, usedIndex: usedIndex) } }
}

