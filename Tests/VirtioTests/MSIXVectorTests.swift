import XCTest
@testable import Virtio

/// The modern transport's MSI-X vector registers and where interrupts go
/// with shared interrupt state (a device process's page).
final class MSIXVectorTests: XCTestCase {
    final class FakeShared: SharedInterruptState {
        var isr: UInt8 = 0
        var raised: [UInt8] = []
        var fired: [Int] = []
        var msixVectorCount = 3
        var msixEnabled = false
        func raiseISR(_ bits: UInt8) { isr |= bits; raised.append(bits) }
        func readAndClearISR() -> UInt8 { defer { isr = 0 }; return isr }
        func acknowledgeISR(_ bits: UInt8) { isr &= ~bits }
        var isrBits: UInt8 { isr }
        func fire(vector: Int) { fired.append(vector) }
    }

    func testVectorsAcceptedBelowTheCountAndInterruptsFollowThem() throws {
        let device = RecordingDevice(queueMaxSizes: [16, 16])
        let d = TestDriver(device: device)
        let shared = FakeShared()
        d.transport.sharedInterrupts = shared
        XCTAssertTrue(d.initialize(features: d.offeredFeatures() & ~VirtioFeature.eventIndex, queueSize: 16))
        XCTAssertEqual(d.read(0x10, 2), 0xffff, "no config vector yet")
        d.write(0x10, 2, 0)
        XCTAssertEqual(d.read(0x10, 2), 0)
        d.write(0x16, 2, 1)            // queue_select 1
        d.write(0x1a, 2, 9)            // no such vector
        XCTAssertEqual(d.read(0x1a, 2), 0xffff, "refused: reads NO_VECTOR")
        d.write(0x1a, 2, 2)
        XCTAssertEqual(d.read(0x1a, 2), 2)

        // MSI-X disabled: the ISR path.
        let buffer = d.allocate(length: 16)
        d.submit(1, [(buffer, 16, true)])
        XCTAssertEqual(shared.raised, [VirtioISR.queue])
        XCTAssertEqual(shared.fired, [])
        // Enabled: queue 1's vector, no ISR.
        shared.msixEnabled = true
        d.submit(1, [(buffer, 16, true)])
        XCTAssertEqual(shared.fired, [2])
        XCTAssertEqual(shared.raised, [VirtioISR.queue])
        d.transport.configurationChanged()
        XCTAssertEqual(shared.fired, [2, 0])
        // Queue 0 has NO_VECTOR: nothing is sent.
        d.submit(0, [(buffer, 16, true)])
        XCTAssertEqual(shared.fired, [2, 0])
        // A reset forgets the vectors.
        d.write(0x14, 1, 0)
        XCTAssertEqual(d.read(0x10, 2), 0xffff)
    }

    func testWithoutSharedStateThereIsNoMSIX() {
        let d = TestDriver(device: RecordingDevice())
        d.write(0x10, 2, 0)
        XCTAssertEqual(d.read(0x10, 2), 0xffff)
    }

    /// A restarted device process gets its vectors back from the snapshot
    /// and, MSI-X being on, tells the driver through them (not the ISR)
    /// to look at its rings.
    func testVectorsSurviveARestartAndTheRestoreFiresThem() throws {
        let shared = FakeShared()
        let d = TestDriver(device: RecordingDevice(queueMaxSizes: [16, 16]))
        d.transport.sharedInterrupts = shared
        XCTAssertTrue(d.initialize(features: d.offeredFeatures() & ~VirtioFeature.eventIndex, queueSize: 16))
        d.write(0x10, 2, 0)                       // config vector 0
        d.write(0x16, 2, 0); d.write(0x1a, 2, 1)  // queue 0 -> 1
        d.write(0x16, 2, 1); d.write(0x1a, 2, 2)  // queue 1 -> 2
        let saved = try XCTUnwrap(TransportSnapshot(decoding: d.transport.snapshot().encoded()))
        XCTAssertEqual(saved.configVector, 0)
        XCTAssertEqual(saved.queues.map(\.vector), [1, 2])

        shared.msixEnabled = true
        let next = TestDriver(device: RecordingDevice(queueMaxSizes: [16, 16]))
        next.transport.sharedInterrupts = shared
        try next.transport.restore(saved)
        XCTAssertEqual(shared.fired, [1, 2], "each enabled queue's vector, once")
        next.write(0x16, 2, 1)
        XCTAssertEqual(next.read(0x1a, 2), 2)
        XCTAssertEqual(next.read(0x10, 2), 0)
    }
}
