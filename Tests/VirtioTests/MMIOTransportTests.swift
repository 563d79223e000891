// The virtio-mmio transport driven through its registers, as Linux's
// virtio_mmio driver does (version 2), with the same devices as over PCI.
import XCTest
@testable import Virtio
@testable import VirtioDevices

/// A tiny virtio-mmio driver: rings in plain memory, 32-bit register accesses.
final class MMIOTestDriver {
    typealias R = VirtioMMIOLayout
    let memory = PlainGuestMemory(size: TestDriver.memorySize)
    let sink = RecordingSink()
    let transport: VirtioMMIOTransport
    var queueSizes: [UInt16] = []
    var availIndex: [UInt16] = []
    var usedSeen: [UInt16] = []
    private var nextData: UInt64 = 0x200000

    init(device: VirtioDevice, deviceID: UInt32 = 2) {
        transport = VirtioMMIOTransport(device: device, deviceID: deviceID, memory: memory, interruptSink: sink)
    }

    func descriptorTable(_ q: Int) -> UInt64 { 0x10000 + UInt64(q) * 0x40000 }
    func availRing(_ q: Int) -> UInt64 { descriptorTable(q) + 0x20000 }
    func usedRing(_ q: Int) -> UInt64 { descriptorTable(q) + 0x30000 }

    func read(_ offset: UInt16, _ size: Int = 4) -> UInt32 { transport.read(offset: offset, size: size) }
    func write(_ offset: UInt16, _ value: UInt32, _ size: Int = 4) { transport.write(offset: offset, size: size, value: value) }
    var status: UInt32 { read(R.status) }

    func offeredFeatures() -> UInt64 {
        write(R.deviceFeaturesSelect, 0)
        let low = UInt64(read(R.deviceFeatures))
        write(R.deviceFeaturesSelect, 1)
        return low | UInt64(read(R.deviceFeatures)) << 32
    }

    func setAddress(_ low: UInt16, _ address: UInt64) {
        write(low, UInt32(truncatingIfNeeded: address))
        write(low + 4, UInt32(truncatingIfNeeded: address >> 32))
    }

    /// Linux's virtio_mmio probe and vm_setup_vq, in order.
    @discardableResult
    func initialize(queues count: Int, queueSize: UInt16? = nil) -> Bool {
        write(R.status, 0)
        write(R.status, UInt32(VirtioStatus.acknowledge))
        write(R.status, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver))
        let features = offeredFeatures()
        write(R.driverFeaturesSelect, 0)
        write(R.driverFeatures, UInt32(truncatingIfNeeded: features))
        write(R.driverFeaturesSelect, 1)
        write(R.driverFeatures, UInt32(truncatingIfNeeded: features >> 32))
        write(R.status, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK))
        guard status & UInt32(VirtioStatus.featuresOK) != 0 else { return false }
        queueSizes = []
        for q in 0..<count {
            write(R.queueSelect, UInt32(q))
            guard read(R.queueReady) == 0 else { return false }
            let max = UInt16(read(R.queueNumMax))
            guard max > 0 else { return false }
            let size = queueSize ?? max
            write(R.queueNum, UInt32(size))
            setAddress(R.queueDescLow, descriptorTable(q))
            setAddress(R.queueDriverLow, availRing(q))
            setAddress(R.queueDeviceLow, usedRing(q))
            write(R.queueReady, 1)
            queueSizes.append(size)
        }
        availIndex = Array(repeating: 0, count: count)
        usedSeen = Array(repeating: 0, count: count)
        write(R.status, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK
                               | VirtioStatus.driverOK))
        return true
    }

    func allocate(_ bytes: [UInt8]) -> UInt64 {
        let address = nextData
        XCTAssertTrue(memory.writeBytes(at: address, bytes))
        nextData += UInt64((bytes.count + 15) / 16 * 16 + 16)
        return address
    }

    /// One chain of direct descriptors from slot 0, published and notified.
    func submit(_ q: Int, _ buffers: [(address: UInt64, length: UInt32, writable: Bool)]) {
        for (i, buffer) in buffers.enumerated() {
            let at = descriptorTable(q) + UInt64(i) * 16
            memory.store64(buffer.address, at: at)
            memory.store32(buffer.length, at: at + 8)
            let last = i == buffers.count - 1
            memory.store16((buffer.writable ? VirtqDescriptorFlag.write : 0) | (last ? 0 : VirtqDescriptorFlag.next), at: at + 12)
            memory.store16(UInt16(i + 1), at: at + 14)
        }
        let size = queueSizes[q]
        memory.store16(0, at: availRing(q) + 4 + 2 * UInt64(availIndex[q] % size))
        availIndex[q] &+= 1
        memory.store16(availIndex[q], at: availRing(q) + 2)
        write(R.queueNotify, UInt32(q))
    }

    func takeUsed(_ q: Int) -> [(id: UInt32, length: UInt32)] {
        let size = queueSizes[q]
        let usedIndex = memory.load16(at: usedRing(q) + 2) ?? 0
        var entries: [(id: UInt32, length: UInt32)] = []
        while usedSeen[q] != usedIndex {
            let at = usedRing(q) + 4 + 8 * UInt64(usedSeen[q] % size)
            entries.append((memory.load32(at: at) ?? 0, memory.load32(at: at + 4) ?? 0))
            usedSeen[q] &+= 1
        }
        return entries
    }
}

final class MMIOTransportTests: XCTestCase {
    typealias R = VirtioMMIOLayout

    func testIdentificationRegisters() {
        let driver = MMIOTestDriver(device: RecordingDevice(), deviceID: 4)
        XCTAssertEqual(driver.read(R.magicValue), 0x7472_6976, "\"virt\"")
        XCTAssertEqual(driver.read(R.version), 2)
        XCTAssertEqual(driver.read(R.deviceID), 4)
        XCTAssertEqual(driver.read(R.vendorID), 0x1af4)
        XCTAssertEqual(driver.read(R.configGeneration), 0)
        XCTAssertEqual(driver.offeredFeatures(), (1 << 3) | VirtioFeature.version1 | VirtioFeature.indirectDescriptors
                       | VirtioFeature.eventIndex)
        driver.write(R.deviceFeaturesSelect, 2)
        XCTAssertEqual(driver.read(R.deviceFeatures), 0, "no feature bits above 63")
    }

    func testQueueSetupNotifyInterruptAndAck() {
        let device = RecordingDevice(queueMaxSizes: [256, 64])
        let driver = MMIOTestDriver(device: device)
        driver.write(R.queueSelect, 1)
        XCTAssertEqual(driver.read(R.queueNumMax), 64)
        driver.write(R.queueSelect, 2)
        XCTAssertEqual(driver.read(R.queueNumMax), 0, "no queue 2")
        XCTAssertTrue(driver.initialize(queues: 2, queueSize: 16))
        XCTAssertEqual(device.readyFeatures, driver.offeredFeatures())
        driver.write(R.queueSelect, 0)
        XCTAssertEqual(driver.read(R.queueReady), 1)
        XCTAssertEqual(driver.transport.queues[0].size, 16)
        XCTAssertEqual(driver.transport.queues[0].descriptorTable, driver.descriptorTable(0))
        XCTAssertEqual(driver.transport.queues[0].usedRing, driver.usedRing(0))

        let buffer = driver.allocate([UInt8](repeating: 0, count: 64))
        driver.submit(0, [(buffer, 64, true)])
        XCTAssertEqual(device.requests.count, 1)
        XCTAssertEqual(driver.takeUsed(0).map { $0.length }, [64])
        XCTAssertEqual(driver.sink.level, true)
        // InterruptStatus shows the cause and keeps it; ACK clears it and drops the line.
        XCTAssertEqual(driver.read(R.interruptStatus), 1)
        XCTAssertEqual(driver.read(R.interruptStatus), 1, "reading does not clear")
        XCTAssertTrue(driver.sink.level)
        driver.write(R.interruptACK, 2)
        XCTAssertTrue(driver.sink.level, "acknowledging another cause leaves the line up")
        driver.write(R.interruptACK, 1)
        XCTAssertEqual(driver.read(R.interruptStatus), 0)
        XCTAssertEqual(driver.sink.changes, [true, false])
    }

    func testConfigSpaceAndGeneration() {
        let device = RecordingDevice()
        let driver = MMIOTestDriver(device: device)
        XCTAssertEqual(driver.read(0x100, 1), 0x11)
        XCTAssertEqual(driver.read(0x101, 2), 0x3322)
        XCTAssertEqual(driver.read(0x100, 4), 0x4433_2211)
        XCTAssertEqual(driver.read(0xFFF, 1), 0, "last byte of the slot")
        XCTAssertEqual(driver.read(0xFFE, 4), 0, "crossing the end of the slot")
        XCTAssertTrue(driver.initialize(queues: 1))
        driver.transport.configurationChanged()
        XCTAssertEqual(driver.read(R.configGeneration), 1)
        XCTAssertEqual(driver.read(R.interruptStatus), 2, "configuration change")
        driver.write(R.interruptACK, 2)
        XCTAssertFalse(driver.sink.level)
    }

    func testVioRndOverMMIO() throws {
        let rnd = VioRnd(name: "viornd")
        let driver = MMIOTestDriver(device: rnd, deviceID: 4)
        XCTAssertTrue(driver.initialize(queues: 1))
        let buffer = driver.allocate([UInt8](repeating: 0, count: 32))
        driver.submit(0, [(buffer, 32, true)])
        XCTAssertEqual(driver.takeUsed(0).map { $0.length }, [32])
        XCTAssertNotEqual(driver.memory.readBytes(at: buffer, count: 32), [UInt8](repeating: 0, count: 32))
    }

    func testOddWidthsUnalignedAndOutOfRangeAccessesAreHarmless() {
        let device = RecordingDevice()
        let driver = MMIOTestDriver(device: device)
        for offset in stride(from: UInt16(0), to: 0x100, by: 1) {
            for size in [1, 2, 3, 8] {
                XCTAssertEqual(driver.read(offset, size), 0, "control register 0x\(String(offset, radix: 16)) size \(size)")
                driver.write(offset, 0xFFFF_FFFF, size)
            }
            if offset % 4 != 0 { XCTAssertEqual(driver.read(offset, 4), 0, "unaligned 0x\(String(offset, radix: 16))") }
        }
        XCTAssertEqual(driver.status, 0, "no odd-width write reached Status")
        XCTAssertEqual(driver.read(0x100, 3), 0, "three-byte config read")
        for offset: UInt16 in [0x1000, 0x2000, 0xFFFF] {
            XCTAssertEqual(driver.read(offset), 0)
            driver.write(offset, 1)
        }
        XCTAssertEqual(driver.read(R.magicValue), 0x7472_6976)
        XCTAssertTrue(driver.initialize(queues: 1), "the device still works after all that")
    }

    func testQueueReadyBeforeSetupAndBadSizes() {
        let device = RecordingDevice(queueMaxSizes: [16])
        let driver = MMIOTestDriver(device: device)
        // QueueReady before FEATURES_OK: the device fails, it does not trap.
        driver.write(R.status, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver))
        driver.write(R.queueReady, 1)
        XCTAssertEqual(driver.read(R.queueReady), 0)
        XCTAssertNotEqual(driver.status & UInt32(VirtioStatus.deviceNeedsReset), 0)
        XCTAssertEqual(driver.read(R.configGeneration), 1, "a failure is a configuration change")
        // A reset recovers; bad sizes are ignored; ready on a queue whose rings
        // are outside memory fails the device again.
        driver.write(R.status, 0)
        XCTAssertEqual(driver.status, 0)
        XCTAssertTrue(driver.initialize(queues: 1))
        driver.write(R.queueSelect, 0)
        driver.write(R.queueReady, 0)
        XCTAssertEqual(driver.read(R.queueReady), 0, "the driver took the queue down")
        for size: UInt32 in [0, 3, 32, 0x1_0010] {
            driver.write(R.queueNum, size)
            XCTAssertEqual(driver.transport.queues[0].size, 16, "size \(size)")
        }
        driver.setAddress(R.queueDescLow, UInt64(TestDriver.memorySize) - 8)
        driver.write(R.queueReady, 1)
        XCTAssertEqual(driver.read(R.queueReady), 0)
        XCTAssertNotEqual(driver.status & UInt32(VirtioStatus.deviceNeedsReset), 0)
        // Writes to a queue that does not exist change nothing.
        driver.write(R.queueSelect, 7)
        driver.write(R.queueNum, 8)
        driver.write(R.queueReady, 1)
        XCTAssertEqual(driver.read(R.queueNumMax), 0)
        driver.write(R.queueNotify, 0xFFFF_FFFF)
        XCTAssertEqual(device.requests.count, 0)
    }

    func testFeaturesWithoutVersion1AreRefused() {
        let driver = MMIOTestDriver(device: RecordingDevice())
        driver.write(R.status, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver))
        driver.write(R.driverFeaturesSelect, 0)
        driver.write(R.driverFeatures, 1 << 3)
        driver.write(R.status, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK))
        XCTAssertEqual(driver.status & UInt32(VirtioStatus.featuresOK), 0, "legacy (version 1) drivers are not served")
    }

    func testDeviceTableMakesMMIOTransportsWithVirtioDeviceIDs() {
        let memory = PlainGuestMemory(size: 1 << 20)
        for kind in DeviceKind.allCases {
            let presentation = kind.model.presentation
            let device = RecordingDevice()
            let transport = presentation.makeTransport(device: device, memory: memory, interruptSink: nil, bus: .mmio)
            XCTAssertTrue(transport is VirtioMMIOTransport, "\(kind)")
            XCTAssertEqual(transport.read(offset: R.deviceID, size: 4), presentation.virtioDeviceID, "\(kind)")
            let pci = presentation.makeTransport(device: RecordingDevice(), memory: memory, interruptSink: nil)
            XCTAssertFalse(pci is VirtioMMIOTransport, "PCI stays the default")
        }
        XCTAssertEqual(DeviceKind.blk.model.presentation.virtioDeviceID, 2)
        XCTAssertEqual(DeviceKind.net.model.presentation.virtioDeviceID, 1)
        XCTAssertEqual(DeviceKind.rnd.model.presentation.virtioDeviceID, 4)
        XCTAssertEqual(DeviceKind.scsi.model.presentation.virtioDeviceID, 8)
    }
}
