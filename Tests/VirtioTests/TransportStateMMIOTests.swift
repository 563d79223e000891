// Device restart (TransportStateKeeper) for the other two transports: the
// virtio-mmio slot and the legacy PCI function (vmmci). Each is driven
// through its registers, snapshotted into a state region, restored into a
// fresh transport and device over the same memory, and every register the
// driver can read, under every select, must read the same afterwards.
import XCTest
@testable import Virtio
@testable import VirtioDevices

final class TransportStateMMIOTests: XCTestCase {
    typealias R = VirtioMMIOLayout
    typealias L = VirtioLegacyLayout
    var regions: [UnsafeMutableRawPointer] = []
    var keepers: [TransportStateKeeper] = []

    override func tearDown() { for r in regions { r.deallocate() } }

    /// A keeper for `transport` on the region of `first`'s keeper (the same
    /// region across the restart), or on a new one full of junk.
    func keeper(_ transport: TransportCore, sameRegionAs first: TransportStateKeeper? = nil) -> TransportStateKeeper {
        let sizes = transport.queues.map(\.maxSize)
        let base: UnsafeMutableRawPointer
        if let first {
            base = first.region.base
        } else {
            let size = DeviceStateRegion.size(queueMaxSizes: sizes)
            base = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
            memset(base, 0xa5, size)
            regions.append(base)
        }
        let r = DeviceStateRegion(base: base, queueMaxSizes: sizes)
        r.instanceStarting()
        let k = TransportStateKeeper(transport: transport, region: r)
        keepers.append(k)
        return k
    }

    func holdingDevice(queues: [UInt16]) -> HoldingDevice {
        let d = HoldingDevice()
        d.queueMaxSizes = queues
        return d
    }

    /// Everything a virtio-mmio driver can read (InterruptStatus aside),
    /// with the selects as the driver left them, then each feature word and
    /// each queue (and one past the last) under its select; and what the
    /// write-only registers set (driver features, queue size and ring
    /// addresses), which the driver never reads back but the device uses.
    func mmioRegisters(_ t: VirtioMMIOTransport) -> [String: UInt64] {
        var r: [String: UInt64] = [:]
        for off in stride(from: 0, to: 0x100, by: 4) where UInt16(off) != R.interruptStatus {
            r[String(off, radix: 16)] = UInt64(t.read(offset: UInt16(off), size: 4))
        }
        for off in stride(from: 0x100, to: 0x140, by: 4) { r["config+" + String(off, radix: 16)] = UInt64(t.read(offset: UInt16(off), size: 4)) }
        let queueSelect = t.queueSelect, featureSelect = t.deviceFeatureSelect
        for f: UInt32 in 0...2 {
            t.write(offset: R.deviceFeaturesSelect, size: 4, value: f)
            r["deviceFeatures[\(f)]"] = UInt64(t.read(offset: R.deviceFeatures, size: 4))
        }
        for q in 0...t.queues.count {
            t.write(offset: R.queueSelect, size: 4, value: UInt32(q))
            r["q\(q).numMax"] = UInt64(t.read(offset: R.queueNumMax, size: 4))
            r["q\(q).ready"] = UInt64(t.read(offset: R.queueReady, size: 4))
        }
        t.write(offset: R.queueSelect, size: 4, value: UInt32(queueSelect))
        t.write(offset: R.deviceFeaturesSelect, size: 4, value: featureSelect)
        r["queueSelect"] = UInt64(t.queueSelect)
        r["deviceFeaturesSelect"] = UInt64(t.deviceFeatureSelect)
        r["driverFeaturesSelect"] = UInt64(t.driverFeatureSelect)
        r["driverFeatures"] = t.driverFeatures
        r["negotiatedFeatures"] = t.negotiatedFeatures
        for (i, q) in t.queues.enumerated() {
            r["q\(i).num"] = UInt64(q.size)
            r["q\(i).desc"] = q.descriptorTable
            r["q\(i).driver"] = q.availRing
            r["q\(i).device"] = q.usedRing
            r["q\(i).indirect"] = q.indirectAllowed ? 1 : 0
            r["q\(i).eventIndex"] = q.eventIndex ? 1 : 0
        }
        return r
    }

    func testMMIORegistersAndAHeldRequestSurviveARestart() throws {
        let first = holdingDevice(queues: [16, 32])
        let driver = MMIOTestDriver(device: first, deviceID: 2)
        let k1 = keeper(driver.transport)
        XCTAssertNil(try k1.resume())
        XCTAssertTrue(driver.initialize(queues: 2, queueSize: 8))
        k1.track()
        driver.submit(0, [(driver.allocate([7]), 1, false)])
        k1.track()
        XCTAssertEqual(first.seen, [0])
        // Registers away from their reset values: both selects on the high
        // word, queue 1 selected, a configuration generation past 8 bits.
        driver.write(R.deviceFeaturesSelect, 1)
        driver.write(R.driverFeaturesSelect, 1)
        driver.write(R.queueSelect, 1)
        driver.transport.configGeneration = 0xfffe
        for _ in 0..<3 { driver.transport.configurationChanged() }
        k1.track()
        let before = mmioRegisters(driver.transport)
        let isrBefore = driver.read(R.interruptStatus)
        XCTAssertEqual(before["fc"], 0x1_0001)
        XCTAssertEqual(before["q1.ready"], 1)
        XCTAssertEqual(before["q1.num"], 8)
        XCTAssertEqual(before["driverFeaturesSelect"], 1)
        XCTAssertNotEqual(before["driverFeatures"], 0)

        // The process dies; a new one starts on the same memory and region.
        let second = holdingDevice(queues: [16, 32])
        let t2 = VirtioMMIOTransport(device: second, deviceID: 2, memory: driver.memory, interruptSink: driver.sink)
        let k2 = keeper(t2, sameRegionAs: k1)
        XCTAssertEqual(k2.region.starts, 2)
        XCTAssertEqual(try k2.resume(), 1, "the held request is served again")
        let after = mmioRegisters(t2)
        for key in Set(before.keys).union(after.keys).sorted() {
            XCTAssertEqual(after[key], before[key], "register \(key)")
        }
        XCTAssertEqual(after.count, before.count)
        XCTAssertEqual(t2.read(offset: R.interruptStatus, size: 4), isrBefore | UInt32(VirtioISR.queue),
                       "the restart raises a used-buffer interrupt, keeps the rest")
        XCTAssertTrue(t2.isDriverReady)

        // The driver carries on with the new instance.
        t2.write(offset: R.queueNotify, size: 4, value: 0)
        XCTAssertEqual(second.seen, [0])
        try second.complete(0)
        XCTAssertEqual(driver.takeUsed(0).map(\.id), [0])
        t2.write(offset: R.interruptACK, size: 4, value: UInt32(VirtioISR.queue | VirtioISR.configChange))
        XCTAssertEqual(t2.read(offset: R.interruptStatus, size: 4), 0)
    }

    /// A restart between the two words of DriverFeatures: the driver
    /// writes the high word (VERSION_1) to the new instance, which must
    /// still hold the low word and the select, or FEATURES_OK is refused.
    func testMMIORestartInTheMiddleOfFeatureNegotiation() throws {
        let driver = MMIOTestDriver(device: holdingDevice(queues: [16]), deviceID: 2)
        let k1 = keeper(driver.transport)
        driver.write(R.status, UInt32(VirtioStatus.acknowledge))
        driver.write(R.status, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver))
        let offered = driver.offeredFeatures()
        XCTAssertNotEqual(offered & 0xffff_ffff, 0)
        driver.write(R.driverFeaturesSelect, 0)
        driver.write(R.driverFeatures, UInt32(truncatingIfNeeded: offered))
        driver.write(R.driverFeaturesSelect, 1)
        k1.track()

        let t2 = VirtioMMIOTransport(device: holdingDevice(queues: [16]), deviceID: 2, memory: driver.memory, interruptSink: driver.sink)
        XCTAssertEqual(try keeper(t2, sameRegionAs: k1).resume(), 0)
        t2.write(offset: R.driverFeatures, size: 4, value: UInt32(truncatingIfNeeded: offered >> 32))
        t2.write(offset: R.status, size: 4, value: UInt32(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK))
        XCTAssertEqual(UInt8(t2.read(offset: R.status, size: 4)) & VirtioStatus.featuresOK, VirtioStatus.featuresOK)
        XCTAssertEqual(t2.negotiatedFeatures, offered)
    }

    /// A virtio-mmio device reset after a restart clears what was restored.
    func testMMIOResetAfterARestartClearsTheRestoredRegisters() throws {
        let driver = MMIOTestDriver(device: holdingDevice(queues: [16]), deviceID: 2)
        let k1 = keeper(driver.transport)
        XCTAssertTrue(driver.initialize(queues: 1))
        driver.write(R.driverFeaturesSelect, 1)
        driver.transport.configurationChanged()
        k1.track()
        let t2 = VirtioMMIOTransport(device: holdingDevice(queues: [16]), deviceID: 2, memory: driver.memory, interruptSink: nil)
        let k2 = keeper(t2, sameRegionAs: k1)
        try k2.resume()
        XCTAssertEqual(t2.read(offset: R.configGeneration, size: 4), 1)
        t2.write(offset: R.status, size: 4, value: 0)
        k2.track()
        let fresh = VirtioMMIOTransport(device: holdingDevice(queues: [16]), deviceID: 2, memory: driver.memory, interruptSink: nil)
        var after = mmioRegisters(t2), new = mmioRegisters(fresh)
        // The generation counts changes; a reset does not take it back.
        XCTAssertEqual(after.removeValue(forKey: "fc"), 1)
        XCTAssertEqual(new.removeValue(forKey: "fc"), 0)
        XCTAssertEqual(after, new)
        XCTAssertEqual(TransportSnapshot(decoding: k2.region.load() ?? [])?.driverFeatureSelect, 0)
    }

    /// Everything a legacy (0.9) driver can read but the ISR (reading it
    /// clears it), with its queue select, then under each select.
    func legacyRegisters(_ t: VirtioLegacyPCITransport) -> [String: UInt32] {
        var r: [String: UInt32] = [:]
        for (off, size) in [(L.hostFeatures, 4), (L.guestFeatures, 4), (L.queuePFN, 4), (L.queueSize, 2),
                            (L.queueSelect, 2), (L.queueNotify, 2), (L.status, 1)] {
            r[String(off, radix: 16)] = t.read(offset: off, size: size)
        }
        for off in stride(from: L.deviceConfig, to: L.deviceConfig + 16, by: 4) { r["config+" + String(off, radix: 16)] = t.read(offset: off, size: 4) }
        let select = t.queueSelect
        for q in 0...t.queues.count {
            t.write(offset: L.queueSelect, size: 2, value: UInt32(q))
            r["q\(q).pfn"] = t.read(offset: L.queuePFN, size: 4)
            r["q\(q).size"] = t.read(offset: L.queueSize, size: 2)
        }
        t.write(offset: L.queueSelect, size: 2, value: UInt32(select))
        return r
    }

    func testLegacyRegistersAndAHeldRequestSurviveARestart() throws {
        let memory = PlainGuestMemory(size: TestDriver.memorySize)
        let first = holdingDevice(queues: [16])
        let t1 = VirtioLegacyPCITransport(device: first, memory: memory, interruptSink: nil)
        let k1 = keeper(t1)
        t1.write(offset: L.status, size: 1, value: UInt32(VirtioStatus.acknowledge))
        t1.write(offset: L.status, size: 1, value: UInt32(VirtioStatus.acknowledge | VirtioStatus.driver))
        let offered = t1.read(offset: L.hostFeatures, size: 4)
        XCTAssertEqual(offered, 1 << 3)
        t1.write(offset: L.guestFeatures, size: 4, value: offered)
        t1.write(offset: L.queueSelect, size: 2, value: 0)
        XCTAssertEqual(t1.read(offset: L.queueSize, size: 2), 16)
        let desc: UInt64 = 0x20000, avail = desc + 16 * 16, used: UInt64 = 0x21000   // 0.9 layout, 4 KiB aligned
        t1.write(offset: L.queuePFN, size: 4, value: UInt32(desc / 4096))
        t1.write(offset: L.status, size: 1, value: UInt32(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.driverOK))
        k1.track()
        // One request, taken and held by the device.
        XCTAssertTrue(memory.store64(0x200000, at: desc))
        XCTAssertTrue(memory.store32(1, at: desc + 8))
        XCTAssertTrue(memory.store16(0, at: desc + 12))
        XCTAssertTrue(memory.store16(0, at: avail + 4))
        XCTAssertTrue(memory.store16(1, at: avail + 2))
        t1.write(offset: L.queueNotify, size: 2, value: 0)
        XCTAssertEqual(first.seen, [0])
        t1.write(offset: L.queueSelect, size: 2, value: 1)    // a select past the last queue
        k1.track()
        let before = legacyRegisters(t1)
        let isrBefore = t1.isr
        XCTAssertEqual(before["8"], 0, "no queue 1")
        XCTAssertEqual(before["q0.pfn"], 0x20)
        XCTAssertEqual(before["4"], 1 << 3)

        let second = holdingDevice(queues: [16])
        let t2 = VirtioLegacyPCITransport(device: second, memory: memory, interruptSink: nil)
        XCTAssertEqual(try keeper(t2, sameRegionAs: k1).resume(), 1)
        let after = legacyRegisters(t2)
        for key in Set(before.keys).union(after.keys).sorted() {
            XCTAssertEqual(after[key], before[key], "register \(key)")
        }
        XCTAssertEqual(t2.read(offset: L.isr, size: 1), UInt32(isrBefore | VirtioISR.queue))
        XCTAssertEqual(t2.read(offset: L.isr, size: 1), 0, "read clears")
        XCTAssertEqual(t2.queues[0].usedRing, used)
        t2.write(offset: L.queueNotify, size: 2, value: 0)
        XCTAssertEqual(second.seen, [0])
        try second.complete(0)
        XCTAssertEqual(memory.load16(at: used + 2), 1)
        XCTAssertEqual(memory.load32(at: used + 4), 0)
    }
}
