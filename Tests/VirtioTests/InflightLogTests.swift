import XCTest
@testable import Virtio

/// Records what a queue tells its inflight log.
final class RecordingInflightLog: VirtqueueInflightLog {
    var events: [String] = []
    func taken(head: UInt16) { events.append("take \(head)") }
    func returning(head: UInt16) { events.append("returning \(head)") }
    func returned(head: UInt16, usedIndex: UInt16) { events.append("returned \(head) used \(usedIndex)") }
}

final class InflightLogTests: XCTestCase {
    var device: RecordingDevice!
    var driver: TestDriver!

    override func setUp() {
        device = RecordingDevice()
        driver = TestDriver(device: device)
        XCTAssertTrue(driver.initialize(queueSize: 8))
    }

    func testEveryRequestIsLoggedTakenThenReturned() {
        let log = RecordingInflightLog()
        driver.transport.queues[0].inflightLog = log
        let h1 = driver.submit(0, [(driver.allocate(length: 4), 4, false)])
        let h2 = driver.submit(0, [(driver.allocate(length: 4), 4, true)])
        XCTAssertEqual(log.events, ["take \(h1)", "returning \(h1)", "returned \(h1) used 1",
                                    "take \(h2)", "returning \(h2)", "returned \(h2) used 2"])
    }

    func testResubmittedHeadsComeFirstAndAreNotLoggedAgain() {
        let queue = driver.transport.queues[0]
        let log = RecordingInflightLog()
        queue.inflightLog = log
        // Two chains the "previous instance" had taken: on the ring at 0 and 1.
        let a = driver.addChain(0, [(driver.allocate([1]), 1, false)])
        let b = driver.addChain(0, [(driver.allocate([2]), 1, false)])
        driver.makeAvailable(0, a)
        driver.makeAvailable(0, b)
        let c = driver.addChain(0, [(driver.allocate([3]), 1, false)])
        driver.makeAvailable(0, c)
        queue.restoreIndices(lastAvailIndex: 2, usedIndex: 0)
        queue.resubmit([b, a])
        driver.notify(0)
        XCTAssertEqual(device.requests.map { $0.head }, [b, a, c])
        XCTAssertEqual(driver.takeUsed(0).map { UInt16($0.id) }, [b, a, c])
        XCTAssertEqual(log.events.filter { $0.hasPrefix("take") }, ["take \(c)"])
        XCTAssertEqual(queue.lastAvailIndex, 3)
        XCTAssertEqual(queue.usedIndex, 3)
        XCTAssertFalse(driver.needsReset)
    }

    func testResubmittedHeadOutsideTheQueueFailsTheDevice() {
        let queue = driver.transport.queues[0]
        queue.resubmit([200])
        driver.notify(0)
        XCTAssertTrue(driver.needsReset)
        XCTAssertTrue(queue.resubmissions.isEmpty)
    }

    func testResetForgetsResubmissions() {
        let queue = driver.transport.queues[0]
        queue.resubmit([1, 2])
        queue.reset()
        XCTAssertTrue(queue.resubmissions.isEmpty)
    }
}
