import XCTest
@testable import Virtio
@testable import VirtioDevices

/// A device that takes requests and returns them only when told to (in
/// any order), like an asynchronous disk.
final class HoldingDevice: VirtioDevice {
    var name = "holddev0"
    var deviceFeatures: UInt64 = 1 << 3
    var queueMaxSizes: [UInt16] = [16]
    var held: [VirtqueueRequest] = []
    var seen: [UInt16] = []
    weak var host: VirtioDeviceHost?
    func attach(to host: VirtioDeviceHost) { self.host = host }
    func readConfig(offset: Int, size: Int) -> UInt32 { 0 }
    func process(queue: Virtqueue, index: Int) throws {
        while let r = try queue.popRequest() { held.append(r); seen.append(r.head) }
    }
    func complete(_ head: UInt16) throws {
        guard let i = held.firstIndex(where: { $0.head == head }) else { return }
        held.remove(at: i)
        host?.withQueue(0) { q in try q.pushUsed(head: head, length: 0) }
    }
    func reset() { held = [] }
}

/// The transport's registers and its queues' inflight records across a
/// device "restart": a new device and transport over the same guest memory
/// and the same state region.
final class TransportStateTests: XCTestCase {
    var region: UnsafeMutableRawPointer!
    var size = 0
    var keepers: [TransportStateKeeper] = []

    override func setUp() {
        size = DeviceStateRegion.size(queueMaxSizes: [16])
        region = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        memset(region, 0xa5, size)      // junk: a new region is set up before use
    }

    override func tearDown() { region.deallocate() }

    func keeper(_ transport: TransportCore) -> TransportStateKeeper {
        let r = DeviceStateRegion(base: region, queueMaxSizes: transport.queues.map(\.maxSize))
        r.instanceStarting()
        let k = TransportStateKeeper(transport: transport, region: r)
        keepers.append(k)
        return k
    }

    func testRegistersAndHeldRequestsSurviveARestart() throws {
        let first = HoldingDevice()
        let driver = TestDriver(device: first)
        let k1 = keeper(driver.transport)
        XCTAssertNil(try k1.resume(), "nothing to restore on a first start")
        XCTAssertTrue(driver.initialize(queueSize: 8))
        k1.track()
        let heads = (0..<4).map { i in driver.submit(0, [(driver.allocate([UInt8(i)]), 1, false)]) }
        k1.track()
        XCTAssertEqual(first.seen, heads)
        try first.complete(heads[2])        // out of order
        try first.complete(heads[0])
        k1.track()
        let before = driver.transport.snapshot()

        // The process dies; a new one starts on the same memory and region.
        let second = HoldingDevice()
        let transport = VirtioPCITransport(device: second, type: .block, memory: driver.memory, interruptSink: driver.sink)
        let k2 = keeper(transport)
        XCTAssertEqual(k2.region.starts, 2)
        XCTAssertEqual(try k2.resume(), 2)
        var after = transport.snapshot()
        XCTAssertEqual(after.isr & VirtioISR.queue, VirtioISR.queue, "the restart raises the interrupt once")
        after.isr = before.isr
        XCTAssertEqual(after, before)
        XCTAssertTrue(transport.isDriverReady)
        XCTAssertEqual(transport.queues[0].size, 8)
        transport.notify(queue: 0)
        XCTAssertEqual(second.seen, [heads[1], heads[3]], "served again, in their first order")
        try second.complete(heads[3])
        try second.complete(heads[1])
        let used = driver.takeUsed(0).map { UInt16($0.id) }
        XCTAssertEqual(used, [heads[2], heads[0], heads[3], heads[1]])
        XCTAssertEqual(Set(used).count, 4, "nothing completed twice")
    }

    func testADeviceResetStartsItsQueuesAfresh() throws {
        let dev = HoldingDevice()
        let driver = TestDriver(device: dev)
        let k = keeper(driver.transport)
        XCTAssertTrue(driver.initialize(queueSize: 8))
        k.track()
        driver.submit(0, [(driver.allocate([1]), 1, false)])
        k.track()
        XCTAssertEqual(k.region.inflight(0).inflightCount, 1)
        driver.write(0x14, 1, 0)            // reset
        k.track()
        XCTAssertTrue(driver.initialize(queueSize: 8))
        k.track()
        XCTAssertEqual(k.region.inflight(0).inflightCount, 0)
    }

    func testVmmciKeepsItsPendingCommand() throws {
        let memory = PlainGuestMemory(size: 1 << 20)
        let vmmci = VMMCI()
        let t1 = VirtioLegacyPCITransport(device: vmmci, memory: memory, interruptSink: nil)
        let k1 = keeper(t1)
        t1.write(offset: VirtioLegacyLayout.status, size: 1, value: 1)
        t1.write(offset: VirtioLegacyLayout.guestFeatures, size: 4, value: UInt32(vmmci.deviceFeatures))
        t1.write(offset: VirtioLegacyLayout.status, size: 1, value: 7)
        vmmci.send(command: .shutdown)
        k1.track()
        let again = VMMCI()
        let t2 = VirtioLegacyPCITransport(device: again, memory: memory, interruptSink: nil)
        try keeper(t2).resume()
        XCTAssertEqual(again.pendingCommand, .shutdown)
        XCTAssertEqual(t2.read(offset: VirtioLegacyLayout.deviceConfig, size: 4), VMMCICommand.shutdown.rawValue)
        XCTAssertEqual(t2.negotiatedFeatures, vmmci.deviceFeatures)
    }

    func testSnapshotsRoundTripAndJunkIsRefused() throws {
        let driver = TestDriver(device: HoldingDevice())
        XCTAssertTrue(driver.initialize(queueSize: 8))
        let s = driver.transport.snapshot()
        let bytes = s.encoded()
        XCTAssertEqual(TransportSnapshot(decoding: bytes), s)
        for cut in [0, 1, 10, bytes.count - 1] {
            XCTAssertNil(TransportSnapshot(decoding: Array(bytes.prefix(cut))), "cut at \(cut)")
        }
        XCTAssertNil(TransportSnapshot(decoding: bytes + [0]))
        // A saved queue size the device cannot have: refused, not trusted.
        var bad = s
        bad.queues[0].size = 3
        let t = VirtioPCITransport(device: HoldingDevice(), type: .block, memory: driver.memory, interruptSink: nil)
        XCTAssertThrowsError(try t.restore(bad))
        // A saved ring outside guest memory: the device needs a reset.
        var outside = s
        outside.queues[0].usedRing = 1 << 40
        let t2 = VirtioPCITransport(device: HoldingDevice(), type: .block, memory: driver.memory, interruptSink: nil)
        try t2.restore(outside)
        XCTAssertTrue(t2.needsReset)
        XCTAssertFalse(t2.queues[0].isEnabled)
    }

    func testAMangledRegionMakesTheDeviceNeedAReset() throws {
        let driver = TestDriver(device: HoldingDevice())
        let k1 = keeper(driver.transport)
        XCTAssertTrue(driver.initialize(queueSize: 8))
        k1.track()
        // A taken-over device wrote nonsense into its inflight records.
        let log = k1.region.inflight(0)
        log.base.storeBytes(of: UInt16(999), toByteOffset: 10, as: UInt16.self)
        let t = VirtioPCITransport(device: HoldingDevice(), type: .block, memory: driver.memory, interruptSink: nil)
        try keeper(t).resume()
        XCTAssertTrue(t.needsReset)
    }
}
