import XCTest
import Foundation
@testable import Virtio

final class TransportTests: XCTestCase {
    var device: RecordingDevice!
    var driver: TestDriver!
    var logged: [String] = []

    override func setUp() {
        device = RecordingDevice(queueMaxSizes: [256, 64])
        driver = TestDriver(device: device)
        logged = []
        virtioLogHook = { [weak self] line in self?.logged.append(line) }
    }

    override func tearDown() { virtioLogHook = { _ in } }

    func testFeatureWordsAndDeviceFeaturesOffered() {
        let offered = driver.offeredFeatures()
        XCTAssertEqual(offered, (1 << 3) | VirtioFeature.version1 | VirtioFeature.indirectDescriptors
                       | VirtioFeature.eventIndex)
        driver.write(0x00, 4, 2)
        XCTAssertEqual(driver.read(0x04, 4), 0, "feature words past 1 are zero")
        XCTAssertEqual(driver.read(0x00, 4), 2, "select reads back")
    }

    func testFeatureNegotiationAccepted() {
        XCTAssertTrue(driver.initialize(features: VirtioFeature.version1 | (1 << 3)))
        XCTAssertEqual(driver.transport.negotiatedFeatures, VirtioFeature.version1 | (1 << 3))
        XCTAssertEqual(device.readyFeatures, VirtioFeature.version1 | (1 << 3))
        XCTAssertEqual(driver.status, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK
                       | VirtioStatus.driverOK)
        // The driver features read back.
        driver.write(0x08, 4, 1)
        XCTAssertEqual(driver.read(0x0c, 4), 1)
    }

    func testFeaturesOKRefusedForUnofferedFeature() {
        XCTAssertFalse(driver.initialize(features: VirtioFeature.version1 | (1 << 7)))
        XCTAssertEqual(driver.status & VirtioStatus.featuresOK, 0)
        XCTAssertEqual(logged.count, 1)
        XCTAssertTrue(logged[0].contains("refusing features"))
        // DRIVER_OK without FEATURES_OK does not start the device.
        driver.write(0x14, 1, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.driverOK))
        XCTAssertNil(device.readyFeatures)
        XCTAssertFalse(driver.transport.isDriverReady)
    }

    func testFeaturesOKRefusedWithoutVersion1() {
        XCTAssertFalse(driver.initialize(features: 1 << 3))
    }

    func testFeaturesFrozenAfterFeaturesOK() {
        XCTAssertTrue(driver.initialize(features: VirtioFeature.version1))
        driver.writeDriverFeatures(VirtioFeature.version1 | (1 << 3))
        XCTAssertEqual(driver.transport.driverFeatures, VirtioFeature.version1)
    }

    func testQueueSetupRegisters() {
        XCTAssertEqual(driver.read(0x12, 2), 2, "num_queues")
        driver.write(0x16, 2, 1)
        XCTAssertEqual(driver.read(0x18, 2), 64, "queue 1 max size")
        driver.write(0x18, 2, 48)              // not a power of two: ignored
        XCTAssertEqual(driver.read(0x18, 2), 64)
        driver.write(0x18, 2, 128)             // above the maximum: ignored
        XCTAssertEqual(driver.read(0x18, 2), 64)
        driver.write(0x18, 2, 16)
        XCTAssertEqual(driver.read(0x18, 2), 16)
        XCTAssertEqual(driver.read(0x1e, 2), 1, "queue_notify_off")
        XCTAssertEqual(driver.read(0x1a, 2), 0xffff, "no MSI-X vector")
        XCTAssertEqual(driver.read(0x10, 2), 0xffff, "no MSI-X config vector")
        driver.setAddress(0x20, 0x1_2345_6780)
        XCTAssertEqual(driver.read(0x20, 4), 0x2345_6780)
        XCTAssertEqual(driver.read(0x24, 4), 1)
        driver.write(0x16, 2, 7)
        XCTAssertEqual(driver.read(0x18, 2), 0, "a queue that does not exist has size 0")
        XCTAssertEqual(driver.read(0x1c, 2), 0)
    }

    func testQueueEnableOutsideMemoryNeedsReset() {
        driver.write(0x14, 1, 1)
        driver.write(0x14, 1, 3)
        driver.writeDriverFeatures(driver.offeredFeatures())
        driver.write(0x14, 1, 11)
        driver.write(0x16, 2, 0)
        driver.setAddress(0x20, UInt64(TestDriver.memorySize))
        driver.write(0x1c, 2, 1)
        XCTAssertEqual(driver.read(0x1c, 2), 0)
        XCTAssertTrue(driver.needsReset)
        XCTAssertEqual(logged.count, 1)
        XCTAssertTrue(logged[0].hasPrefix("testdev0: queue 0: descriptor ring"))
    }

    func testQueueFieldsReadOnlyOnceEnabled() {
        XCTAssertTrue(driver.initialize())
        driver.write(0x16, 2, 0)
        driver.setAddress(0x20, 0x5000)
        XCTAssertEqual(driver.read(0x20, 4), UInt32(driver.descriptorTable(0)))
        driver.write(0x18, 2, 2)
        XCTAssertEqual(driver.read(0x18, 2), 256)
    }

    func testResetClearsEverything() {
        XCTAssertTrue(driver.initialize())
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])
        XCTAssertTrue(driver.sink.level)
        let resetsBefore = device.resets
        driver.write(0x14, 1, 0)
        XCTAssertEqual(driver.status, 0)
        XCTAssertFalse(driver.sink.level, "reset lowers the line")
        XCTAssertEqual(device.resets, resetsBefore + 1)
        XCTAssertEqual(driver.read(0x1c, 2), 0, "queue disabled")
        XCTAssertEqual(driver.transport.negotiatedFeatures, 0)
        XCTAssertEqual(driver.transport.queues[0].lastAvailIndex, 0)
    }

    func testISRReadClearsAndDeasserts() {
        XCTAssertTrue(driver.initialize())
        driver.transport.configurationChanged()
        XCTAssertEqual(driver.read(0x15, 1), 1, "config_generation moved")
        driver.submit(0, [(driver.allocate(length: 4), 4, false)])
        XCTAssertTrue(driver.sink.level)
        XCTAssertEqual(driver.readISR(), VirtioISR.queue | VirtioISR.configChange)
        XCTAssertFalse(driver.sink.level)
        XCTAssertEqual(driver.sink.changes, [true, false])
        XCTAssertEqual(driver.readISR(), 0)
    }

    func testDeviceConfigWindow() {
        XCTAssertEqual(driver.read(0x300, 4), 0x4433_2211)
        XCTAssertEqual(driver.read(0x301, 2), 0x3322)
        XCTAssertEqual(driver.read(0x304, 1), 0x55)
        XCTAssertEqual(driver.read(0x305, 1), 0)
    }

    func testNotifyBeforeDriverOKIsIgnored() {
        driver.notify(0)
        XCTAssertTrue(device.requests.isEmpty)
        XCTAssertFalse(driver.needsReset)
    }

    func testOddAccessesDoNotTrap() {
        for offset in stride(from: UInt16(0), to: 0x420, by: 1) {
            for size in [0, 1, 2, 3, 4, 8] {
                _ = driver.read(offset, size)
                driver.write(offset, size, 0xffff_ffff)
            }
        }
    }

    func testCapabilityList() {
        let caps = VirtioPCITransport.capabilities()
        XCTAssertEqual(caps.map(\.count), [16, 20, 16, 16])
        // common: vendor cap, next left to the bus, length 16, type 1, BAR 0, offset 0, length 0x38
        XCTAssertEqual(caps[0], [0x09, 0, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x38, 0, 0, 0])
        // notify: type 2 at 0x100, multiplier 0
        XCTAssertEqual(caps[1], [0x09, 0, 20, 2, 0, 0, 0, 0, 0, 1, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0])
        XCTAssertEqual(caps[2], [0x09, 0, 16, 3, 0, 0, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0])
        XCTAssertEqual(caps[3], [0x09, 0, 16, 4, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0])
        let identity = VirtioPCITransport.identity(for: .network)
        XCTAssertEqual(identity.vendorID, 0x1af4)
        XCTAssertEqual(identity.deviceID, 0x1041)
        XCTAssertEqual(VirtioPCITransport.identity(for: .scsi).deviceID, 0x1048)
        XCTAssertGreaterThanOrEqual(identity.revision, 1)
    }
}

final class LegacyTransportTests: XCTestCase {
    func testLegacyRegistersAndQueue() {
        let memory = PlainGuestMemory(size: 1 << 20)
        let device = RecordingDevice(queueMaxSizes: [16])
        device.deviceFeatures = 0b101
        let sink = RecordingSink()
        let transport = VirtioLegacyPCITransport(device: device, memory: memory, interruptSink: sink)
        XCTAssertEqual(transport.read(offset: 0x00, size: 4), 0b101)
        transport.write(offset: 0x04, size: 4, value: 0b111)
        XCTAssertEqual(transport.read(offset: 0x04, size: 4), 0b101, "unoffered bits dropped")
        XCTAssertEqual(transport.read(offset: 0x0c, size: 2), 16)
        transport.write(offset: 0x08, size: 4, value: 0x10)              // rings at 64 KiB
        XCTAssertEqual(transport.read(offset: 0x08, size: 4), 0x10)
        transport.write(offset: 0x12, size: 1, value: 7)
        XCTAssertEqual(transport.read(offset: 0x12, size: 1), 7)
        // A request through the legacy layout: used ring on the next page.
        let desc: UInt64 = 0x10000, avail = desc + 16 * 16, used: UInt64 = 0x11000
        memory.store64(0x20000, at: desc)
        memory.store32(8, at: desc + 8)
        memory.store16(VirtqDescriptorFlag.write, at: desc + 12)
        memory.store16(0, at: avail + 4)
        memory.store16(1, at: avail + 2)
        transport.write(offset: 0x10, size: 2, value: 0)
        XCTAssertEqual(device.requests.count, 1)
        XCTAssertEqual(memory.load16(at: used + 2), 1)
        XCTAssertEqual(memory.load32(at: used + 8), 8)
        XCTAssertTrue(sink.level)
        XCTAssertEqual(transport.read(offset: 0x13, size: 1), 1)
        XCTAssertFalse(sink.level)
        XCTAssertEqual(transport.read(offset: 0x14, size: 4), 0x4433_2211, "device config at 0x14")
        transport.write(offset: 0x12, size: 1, value: 0)
        XCTAssertEqual(device.resets, 1)
        XCTAssertEqual(transport.read(offset: 0x08, size: 4), 0)
    }
}

final class ViodevMsgTests: XCTestCase {
    func testLayoutMatchesPackedCStruct() {
        let message = ViodevMsg(kind: .ioRead, reg: 0x0302, ioSize: 4, vcpu: 1, irq: 9,
                                state: ViodevMsg.stateDeassert, data: 0xaabb_ccdd, dataValid: true)
        XCTAssertEqual(message.encoded(), [4, 0x02, 0x03, 4, 1, 9, 0xff, 0xdd, 0xcc, 0xbb, 0xaa, 1])
        XCTAssertEqual(ViodevMsg(bytes: message.encoded()), message)
    }

    func testDecodeRejectsBadInput() {
        let good = ViodevMsg(kind: .ioWrite, reg: 0x100, ioSize: 2, data: 1).encoded()
        XCTAssertNotNil(ViodevMsg(bytes: good))
        XCTAssertNil(ViodevMsg(bytes: Array(good.prefix(11))), "short")
        XCTAssertNil(ViodevMsg(bytes: good + [0]), "long")
        XCTAssertNil(ViodevMsg(bytes: []), "empty")
        var bad = good; bad[0] = 0
        XCTAssertNil(ViodevMsg(bytes: bad), "INVALID type")
        bad = good; bad[0] = 8
        XCTAssertNil(ViodevMsg(bytes: bad), "unknown type")
        bad = good; bad[3] = 3
        XCTAssertNil(ViodevMsg(bytes: bad), "3-byte I/O")
        bad = good; bad[6] = 2
        XCTAssertNil(ViodevMsg(bytes: bad), "bad state")
        bad = good; bad[11] = 7
        XCTAssertNil(ViodevMsg(bytes: bad), "bad data_valid")
        var kick = ViodevMsg(kind: .kick, state: ViodevMsg.stateAssert).encoded()
        XCTAssertEqual(ViodevMsg(bytes: kick)?.kind, .kick)
        kick[3] = 9
        XCTAssertNotNil(ViodevMsg(bytes: kick), "io_sz only matters for I/O messages")
    }

    func testHandleServesReadsAndWrites() {
        let device = RecordingDevice()
        let driver = TestDriver(device: device)
        XCTAssertTrue(driver.initialize())
        driver.transport.configurationChanged()
        let isrRead = ViodevMsg(kind: .ioRead, reg: 0x200, ioSize: 1)
        let reply = driver.transport.handle(isrRead)
        XCTAssertEqual(reply?.data, UInt32(VirtioISR.configChange))
        XCTAssertEqual(reply?.dataValid, true)
        XCTAssertEqual(reply?.state, ViodevMsg.stateDeassert)
        XCTAssertEqual(driver.transport.handle(isrRead)?.state, ViodevMsg.stateNoop)
        XCTAssertNil(driver.transport.handle(ViodevMsg(kind: .ioWrite, reg: 0x16, ioSize: 2, data: 1)))
        XCTAssertEqual(driver.transport.handle(ViodevMsg(kind: .ioRead, reg: 0x16, ioSize: 2))?.data, 1)
    }
}

final class GuestMemoryTests: XCTestCase {
    func testMappedRegions() throws {
        let mapping = UnsafeMutableRawPointer.allocate(byteCount: 0x3000, alignment: 4096)
        defer { mapping.deallocate() }
        let memory = try MappedGuestMemory(base: mapping, mappingSize: 0x3000, regions: [
            GuestMemoryRegion(guestPhysicalAddress: 0, size: 0x2000, offsetInMapping: 0),
            GuestMemoryRegion(guestPhysicalAddress: 0x1_0000_0000, size: 0x1000, offsetInMapping: 0x2000),
        ])
        XCTAssertTrue(memory.store32(0x1234_5678, at: 0x1_0000_0000))
        XCTAssertEqual(mapping.load(fromByteOffset: 0x2000, as: UInt32.self), 0x1234_5678)
        XCTAssertEqual(memory.load32(at: 0x1_0000_0000), 0x1234_5678)
        XCTAssertNil(memory.load32(at: 0x1ffe), "straddles the end of low RAM")
        XCTAssertNil(memory.load16(at: 0x2000), "in the hole")
        XCTAssertNil(memory.load64(at: 0x1_0000_0ffc), "past high RAM")
        XCTAssertNil(memory.buffer(at: UInt64.max, length: 2), "wraps")
        XCTAssertNil(memory.buffer(at: 0, length: -1))
        XCTAssertNotNil(memory.buffer(at: 0x1ff8, length: 8))
        XCTAssertThrowsError(try MappedGuestMemory(base: mapping, mappingSize: 0x3000, regions: [
            GuestMemoryRegion(guestPhysicalAddress: 0, size: 0x2000, offsetInMapping: 0x2000)]))
        XCTAssertThrowsError(try MappedGuestMemory(base: mapping, mappingSize: 0x3000, regions: [
            GuestMemoryRegion(guestPhysicalAddress: UInt64.max - 10, size: 0x100, offsetInMapping: 0)]))
        XCTAssertThrowsError(try MappedGuestMemory(base: mapping, mappingSize: 0x3000, regions: [
            GuestMemoryRegion(guestPhysicalAddress: 0, size: 0x1000, offsetInMapping: 0),
            GuestMemoryRegion(guestPhysicalAddress: 0x800, size: 0x1000, offsetInMapping: 0x1000)]))
    }
}

final class MappingAndLogTests: XCTestCase {
    func testMapSharedFile() throws {
        let path = NSTemporaryDirectory() + "guestmem-\(getpid())"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        defer { close(fd); unlink(path) }
        XCTAssertEqual(ftruncate(fd, 0x4000), 0)
        let memory = try MappedGuestMemory.map(fd: fd, mappingSize: 0x4000, regions: [
            GuestMemoryRegion(guestPhysicalAddress: 0x1000, size: 0x4000, offsetInMapping: 0)])
        XCTAssertTrue(memory.store32(0xcafe_f00d, at: 0x1010))
        var word: UInt32 = 0
        XCTAssertEqual(pread(fd, &word, 4, 0x10), 4, "the store went to the shared file")
        XCTAssertEqual(word, 0xcafe_f00d)
        XCTAssertNil(memory.load32(at: 0x0ffe))
        XCTAssertThrowsError(try MappedGuestMemory.map(fd: -1, mappingSize: 0x1000, regions: []))
    }

    func testLogBudgetLimitsLines() {
        var lines: [String] = []
        virtioLogHook = { lines.append($0) }
        defer { virtioLogHook = { _ in } }
        var budget = LogBudget(limit: 3, window: 3600)
        for i in 0..<100 { budget.log("vioblk0: bad request \(i)") }
        XCTAssertEqual(lines.count, 4)
        XCTAssertEqual(lines[2], "vioblk0: bad request 2")
        XCTAssertTrue(lines[3].hasSuffix("(further messages suppressed for 3600 s)"))
    }
}
