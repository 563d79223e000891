// A tiny virtio driver for tests: it lays rings out in plain memory, talks
// to the transport through its registers, and builds descriptor chains of
// any shape (including malformed ones) by hand.
import XCTest
@testable import Virtio

final class RecordingSink: InterruptSink {
    var level = false
    var changes: [Bool] = []
    func setInterrupt(_ asserted: Bool) {
        level = asserted
        changes.append(asserted)
    }
}

/// A device that records every request and returns it with its writable
/// length "written", for tests of the queue machinery itself.
final class RecordingDevice: VirtioDevice {
    var name = "testdev0"
    var deviceFeatures: UInt64 = 1 << 3
    var queueMaxSizes: [UInt16]
    var requests: [VirtqueueRequest] = []
    var resets = 0
    var readyFeatures: UInt64?
    weak var host: VirtioDeviceHost?

    init(queueMaxSizes: [UInt16] = [256]) { self.queueMaxSizes = queueMaxSizes }
    func attach(to host: VirtioDeviceHost) { self.host = host }
    func readConfig(offset: Int, size: Int) -> UInt32 {
        readLittleEndian([0x11, 0x22, 0x33, 0x44, 0x55], offset: offset, size: size)
    }
    func driverReady(features: UInt64) { readyFeatures = features }
    func process(queue: Virtqueue, index: Int) throws {
        while let request = try queue.popRequest() {
            requests.append(request)
            try queue.pushUsed(head: request.head, length: UInt32(request.writableLength))
        }
    }
    func reset() { resets += 1 }
}

final class TestDriver {
    static let memorySize = 4 << 20
    let memory = PlainGuestMemory(size: TestDriver.memorySize)
    let sink = RecordingSink()
    let transport: VirtioPCITransport
    var queueSizes: [UInt16] = []
    var availIndex: [UInt16] = []
    var usedSeen: [UInt16] = []
    var nextDescriptor: [UInt16] = []
    private var nextData: UInt64 = 0x200000

    init(device: VirtioDevice, type: VirtioDeviceType = .block) {
        transport = VirtioPCITransport(device: device, type: type, memory: memory, interruptSink: sink)
    }

    // Ring addresses for queue i.
    func descriptorTable(_ q: Int) -> UInt64 { 0x10000 + UInt64(q) * 0x40000 }
    func availRing(_ q: Int) -> UInt64 { descriptorTable(q) + 0x20000 }
    func usedRing(_ q: Int) -> UInt64 { descriptorTable(q) + 0x30000 }

    func read(_ offset: UInt16, _ size: Int) -> UInt32 { transport.read(offset: offset, size: size) }
    func write(_ offset: UInt16, _ size: Int, _ value: UInt32) {
        transport.write(offset: offset, size: size, value: value)
    }

    var status: UInt8 { UInt8(read(0x14, 1)) }

    func offeredFeatures() -> UInt64 {
        write(0x00, 4, 0)
        let low = UInt64(read(0x04, 4))
        write(0x00, 4, 1)
        return low | UInt64(read(0x04, 4)) << 32
    }

    func writeDriverFeatures(_ features: UInt64) {
        write(0x08, 4, 0)
        write(0x0c, 4, UInt32(truncatingIfNeeded: features))
        write(0x08, 4, 1)
        write(0x0c, 4, UInt32(truncatingIfNeeded: features >> 32))
    }

    /// The normal initialisation sequence (spec 3.1.1). `features` nil
    /// accepts everything offered. Returns whether FEATURES_OK stuck.
    @discardableResult
    func initialize(features: UInt64? = nil, queueSize: UInt16? = nil) -> Bool {
        write(0x14, 1, 0)
        write(0x14, 1, UInt32(VirtioStatus.acknowledge))
        write(0x14, 1, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver))
        writeDriverFeatures(features ?? offeredFeatures())
        write(0x14, 1, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK))
        guard status & VirtioStatus.featuresOK != 0 else { return false }
        let count = Int(read(0x12, 2))
        queueSizes = []
        for q in 0..<count {
            write(0x16, 2, UInt32(q))
            if let size = queueSize { write(0x18, 2, UInt32(size)) }
            queueSizes.append(UInt16(read(0x18, 2)))
            setAddress(0x20, descriptorTable(q))
            setAddress(0x28, availRing(q))
            setAddress(0x30, usedRing(q))
            write(0x1c, 2, 1)
        }
        availIndex = Array(repeating: 0, count: count)
        usedSeen = Array(repeating: 0, count: count)
        nextDescriptor = Array(repeating: 0, count: count)
        write(0x14, 1, UInt32(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK
                              | VirtioStatus.driverOK))
        return true
    }

    func setAddress(_ offset: UInt16, _ address: UInt64) {
        write(offset, 4, UInt32(truncatingIfNeeded: address))
        write(offset + 4, 4, UInt32(truncatingIfNeeded: address >> 32))
    }

    /// Guest memory for data: bytes to put there, or a length of zeroes.
    func allocate(_ bytes: [UInt8]) -> UInt64 {
        let address = nextData
        XCTAssertTrue(memory.writeBytes(at: address, bytes))
        nextData += UInt64((bytes.count + 15) / 16 * 16 + 16)
        return address
    }

    func allocate(length: Int) -> UInt64 { allocate([UInt8](repeating: 0, count: length)) }

    func setDescriptor(table: UInt64, index: UInt16, address: UInt64, length: UInt32, flags: UInt16,
                       next: UInt16) {
        let at = table + UInt64(index) * 16
        memory.store64(address, at: at)
        memory.store32(length, at: at + 8)
        memory.store16(flags, at: at + 12)
        memory.store16(next, at: at + 14)
    }

    /// Write `buffers` as a chain of direct descriptors at the next free
    /// slots (wrapping), returning the head.
    func addChain(_ q: Int, _ buffers: [(address: UInt64, length: UInt32, writable: Bool)]) -> UInt16 {
        let size = queueSizes[q]
        let head = nextDescriptor[q]
        for (i, buffer) in buffers.enumerated() {
            let index = (head &+ UInt16(i)) % size
            let last = i == buffers.count - 1
            setDescriptor(table: descriptorTable(q), index: index, address: buffer.address, length: buffer.length,
                          flags: (buffer.writable ? VirtqDescriptorFlag.write : 0) | (last ? 0 : VirtqDescriptorFlag.next),
                          next: (index &+ 1) % size)
        }
        nextDescriptor[q] = (head &+ UInt16(buffers.count)) % size
        return head
    }

    /// Publish `head` on the available ring.
    func makeAvailable(_ q: Int, _ head: UInt16) {
        let size = queueSizes[q]
        memory.store16(head, at: availRing(q) + 4 + 2 * UInt64(availIndex[q] % size))
        availIndex[q] &+= 1
        memory.store16(availIndex[q], at: availRing(q) + 2)
    }

    func notify(_ q: Int) { write(0x100, 2, UInt32(q)) }

    /// Submit a chain and notify; returns the head.
    @discardableResult
    func submit(_ q: Int, _ buffers: [(address: UInt64, length: UInt32, writable: Bool)]) -> UInt16 {
        let head = addChain(q, buffers)
        makeAvailable(q, head)
        notify(q)
        return head
    }

    /// New used-ring entries since the last call: (id, len).
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

    /// Read ISR (clears it).
    func readISR() -> UInt8 { UInt8(read(0x200, 1)) }

    func setUsedEvent(_ q: Int, _ value: UInt16) {
        memory.store16(value, at: availRing(q) + 4 + 2 * UInt64(queueSizes[q]))
    }

    func availEvent(_ q: Int) -> UInt16 {
        memory.load16(at: usedRing(q) + 4 + 8 * UInt64(queueSizes[q])) ?? 0xdead
    }

    var needsReset: Bool { status & VirtioStatus.deviceNeedsReset != 0 }
}
