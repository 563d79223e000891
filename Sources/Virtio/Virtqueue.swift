// The split virtqueue (virtio 1.x spec 2.7) as the device side sees it.
//
// The rings live in guest memory and the guest may rewrite them at any time,
// so every field is read once into a local and checked before use, every
// index is checked against its table, every buffer against guest memory, and
// chains are bounded (a loop ends as an error, not a hang). Violations are
// `VirtqueueError`s; the transport turns them into DEVICE_NEEDS_RESET.
import Glibc
import Synchronization

/// Descriptor flags (spec 2.7.5).
public enum VirtqDescriptorFlag {
    public static let next: UInt16 = 1
    public static let write: UInt16 = 2
    public static let indirect: UInt16 = 4
}

/// A guest mistake in a virtqueue. Each one means the guest driver is broken
/// or hostile; none is survivable for the queue, all are survivable for us.
public enum VirtqueueError: Error, Equatable, CustomStringConvertible {
    case queueNotReady
    case ringOutsideMemory(ring: String, address: UInt64, length: UInt64)
    case ringMisaligned(ring: String, address: UInt64)
    case headIndexOutOfRange(index: UInt16, queueSize: UInt16)
    case nextIndexOutOfRange(index: UInt16, tableSize: UInt32)
    case bufferOutsideMemory(address: UInt64, length: UInt32)
    case chainTooLong(limit: Int)
    case nestedIndirect
    case indirectNotNegotiated
    case badIndirectTableLength(UInt32)
    case readableAfterWritable
    case availIndexRunAway(availIndex: UInt16, lastSeen: UInt16, queueSize: UInt16)
    case usedHeadOutOfRange(UInt16)

    public var description: String {
        switch self {
        case .queueNotReady:
            return "queue used before it was enabled"
        case let .ringOutsideMemory(ring, address, length):
            return "\(ring) ring at 0x\(hex(address)) (+0x\(hex(length))) is outside guest memory"
        case let .ringMisaligned(ring, address):
            return "\(ring) ring at 0x\(hex(address)) is misaligned"
        case let .headIndexOutOfRange(index, queueSize):
            return "available ring names descriptor \(index) in a queue of \(queueSize)"
        case let .nextIndexOutOfRange(index, tableSize):
            return "descriptor chain continues at \(index), past a table of \(tableSize)"
        case let .bufferOutsideMemory(address, length):
            return "descriptor buffer at 0x\(hex(address)) (+0x\(hex(UInt64(length)))) is outside guest memory"
        case let .chainTooLong(limit):
            return "descriptor chain longer than \(limit) (a loop?)"
        case .nestedIndirect:
            return "indirect descriptor inside an indirect table"
        case .indirectNotNegotiated:
            return "indirect descriptor without VIRTIO_F_INDIRECT_DESC"
        case let .badIndirectTableLength(length):
            return "indirect table length \(length) is not a non-zero multiple of 16 up to \(Virtqueue.maxIndirectEntries * 16)"
        case .readableAfterWritable:
            return "device-readable descriptor after a device-writable one"
        case let .availIndexRunAway(availIndex, lastSeen, queueSize):
            return "available index \(availIndex) is more than \(queueSize) ahead of \(lastSeen)"
        case let .usedHeadOutOfRange(head):
            return "device returned descriptor \(head), outside the queue"
        }
    }
}

@inline(__always) func hex(_ value: UInt64) -> String { String(value, radix: 16) }

/// One buffer of a descriptor chain, already checked to lie in guest memory.
public struct ChainElement: Equatable, Sendable {
    public var address: UInt64
    public var length: UInt32
    public var isDeviceWritable: Bool

    public init(address: UInt64, length: UInt32, isDeviceWritable: Bool) {
        self.address = address
        self.length = length
        self.isDeviceWritable = isDeviceWritable
    }
}

/// Walks one descriptor chain, like rust-vmm's iterator: each `next()` yields
/// a checked buffer, nil at the end, or throws. A time-to-live bounds the walk
/// (queue size for the main table, entry count for an indirect table), which
/// is how loops are caught; an indirect table is followed once, never nested.
public struct DescriptorChain {
    public let head: UInt16
    let memory: GuestMemory
    let indirectAllowed: Bool
    var tableAddress: UInt64
    var tableSize: UInt32
    var nextIndex: UInt16?
    var timeToLive: Int
    var insideIndirect = false
    var sawWritable = false

    init(memory: GuestMemory, descriptorTable: UInt64, queueSize: UInt16, head: UInt16,
         indirectAllowed: Bool) {
        self.memory = memory
        self.head = head
        self.indirectAllowed = indirectAllowed
        self.tableAddress = descriptorTable
        self.tableSize = UInt32(queueSize)
        self.nextIndex = head
        self.timeToLive = Int(queueSize)
    }

    public mutating func next() throws -> ChainElement? {
        guard let index = nextIndex else { return nil }
        guard UInt32(index) < tableSize else {
            nextIndex = nil
            throw VirtqueueError.nextIndexOutOfRange(index: index, tableSize: tableSize)
        }
        guard timeToLive > 0 else {
            nextIndex = nil
            throw VirtqueueError.chainTooLong(limit: Int(tableSize))
        }
        timeToLive -= 1
        // The table itself was checked against memory when it was chosen, so
        // index * 16 stays inside it; re-check anyway through the accessor.
        let descriptorAddress = tableAddress &+ UInt64(index) &* 16
        guard let raw = memory.buffer(at: descriptorAddress, length: 16) else {
            nextIndex = nil
            throw VirtqueueError.ringOutsideMemory(ring: "descriptor", address: descriptorAddress, length: 16)
        }
        let address = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        let length = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        let flags = UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
        let following = UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
        nextIndex = nil

        if flags & VirtqDescriptorFlag.indirect != 0 {
            guard !insideIndirect else { throw VirtqueueError.nestedIndirect }
            guard indirectAllowed else { throw VirtqueueError.indirectNotNegotiated }
            guard length != 0, length % 16 == 0, length / 16 <= Virtqueue.maxIndirectEntries else {
                throw VirtqueueError.badIndirectTableLength(length)
            }
            guard memory.contains(address, length: UInt64(length)) else {
                throw VirtqueueError.bufferOutsideMemory(address: address, length: length)
            }
            // The NEXT flag of the indirect descriptor itself is ignored: the
            // chain continues inside the table and ends there (spec 2.7.5.3).
            insideIndirect = true
            tableAddress = address
            tableSize = length / 16
            timeToLive = Int(tableSize)
            nextIndex = 0
            return try next()
        }

        guard memory.contains(address, length: UInt64(length)) else {
            throw VirtqueueError.bufferOutsideMemory(address: address, length: length)
        }
        let writable = flags & VirtqDescriptorFlag.write != 0
        if !writable && sawWritable { throw VirtqueueError.readableAfterWritable }
        sawWritable = sawWritable || writable
        if flags & VirtqDescriptorFlag.next != 0 { nextIndex = following }
        return ChainElement(address: address, length: length, isDeviceWritable: writable)
    }

    /// The whole chain, split into what the device reads and what it writes.
    public mutating func collect() throws -> (readable: [ChainElement], writable: [ChainElement]) {
        var readable: [ChainElement] = []
        var writable: [ChainElement] = []
        while let element = try next() {
            if element.isDeviceWritable { writable.append(element) } else { readable.append(element) }
        }
        return (readable, writable)
    }
}

/// A request taken off the available ring: its head (to return it on the used
/// ring) and its buffers, split into device-readable and device-writable.
public struct VirtqueueRequest {
    public var head: UInt16
    public var readable: [ChainElement]
    public var writable: [ChainElement]

    public var readableLength: UInt64 { readable.reduce(0) { $0 + UInt64($1.length) } }
    public var writableLength: UInt64 { writable.reduce(0) { $0 + UInt64($1.length) } }
}

/// Records which requests a device has taken off a queue and not yet
/// returned, outside the process (vhost-user's inflight region), so that a
/// restarted device can serve them again. Told of every head as it is taken
/// and as it is returned; `returned` comes after the used index store.
public protocol VirtqueueInflightLog: AnyObject {
    func taken(head: UInt16)
    func returning(head: UInt16)
    func returned(head: UInt16, usedIndex: UInt16)
}

/// One split virtqueue: its guest-chosen layout and the device's indices.
public final class Virtqueue {
    /// The largest indirect table followed; larger ones are a guest error.
    public static let maxIndirectEntries: UInt32 = 4096
    /// virtio 1.x caps split queues at 32768 entries.
    public static let largestQueueSize: UInt16 = 32768

    public let maxSize: UInt16
    public let memory: GuestMemory

    // Written by the driver through the transport before the queue is enabled.
    public var size: UInt16
    public var descriptorTable: UInt64 = 0
    public var availRing: UInt64 = 0      // "driver area"
    public var usedRing: UInt64 = 0       // "device area"
    public private(set) var isEnabled = false

    // Negotiated features that change how the rings are used.
    public var indirectAllowed = false
    public var eventIndex = false

    public private(set) var lastAvailIndex: UInt16 = 0
    public private(set) var usedIndex: UInt16 = 0
    private var lastSignalledUsed: UInt16 = 0

    /// Told of every request taken and returned (vhost-user inflight
    /// tracking). Held strongly: the owner of a log's mapping detaches the
    /// log before it unmaps it (InflightQueue.detach()).
    public var inflightLog: VirtqueueInflightLog?
    /// Heads a previous instance of the device had taken and not returned:
    /// served, in order, before anything new on the available ring.
    public private(set) var resubmissions: [UInt16] = []

    public init(maxSize: UInt16, memory: GuestMemory) {
        precondition(maxSize > 0 && maxSize <= Virtqueue.largestQueueSize && maxSize & (maxSize - 1) == 0,
                     "virtqueue max size must be a power of two up to 32768")
        self.maxSize = maxSize
        self.memory = memory
        self.size = maxSize
    }

    /// Back to the state after device reset.
    public func reset() {
        size = maxSize
        descriptorTable = 0
        availRing = 0
        usedRing = 0
        isEnabled = false
        indirectAllowed = false
        eventIndex = false
        lastAvailIndex = 0
        usedIndex = 0
        lastSignalledUsed = 0
        resubmissions = []
    }

    /// Continue a queue another device instance ran: the next available
    /// entry to take and the used index the driver has seen.
    public func restoreIndices(lastAvailIndex: UInt16, usedIndex: UInt16) {
        self.lastAvailIndex = lastAvailIndex
        self.usedIndex = usedIndex
        self.lastSignalledUsed = usedIndex
    }

    /// Serve these heads (taken but never returned by a previous instance)
    /// before new requests. A head outside the queue is a guest error when
    /// it is popped, like one on the available ring.
    public func resubmit(_ heads: [UInt16]) {
        resubmissions = heads
    }

    /// Whether `value` is a size the guest may choose for this queue.
    public func isValidSize(_ value: UInt16) -> Bool {
        value != 0 && value <= maxSize && value & (value &- 1) == 0
    }

    /// Check the layout and start using the queue. The three rings must lie
    /// in guest memory, suitably aligned (spec 2.7).
    public func enable() throws {
        guard isValidSize(size) else { throw VirtqueueError.queueNotReady }
        let n = UInt64(size)
        try checkRing("descriptor", descriptorTable, length: 16 * n, alignment: 16)
        try checkRing("available", availRing, length: 6 + 2 * n, alignment: 2)
        try checkRing("used", usedRing, length: 6 + 8 * n, alignment: 4)
        isEnabled = true
    }

    private func checkRing(_ name: String, _ address: UInt64, length: UInt64, alignment: UInt64) throws {
        guard address % alignment == 0 else {
            throw VirtqueueError.ringMisaligned(ring: name, address: address)
        }
        guard memory.contains(address, length: length) else {
            throw VirtqueueError.ringOutsideMemory(ring: name, address: address, length: length)
        }
    }

    // MARK: available ring

    private var availIndexAddress: UInt64 { availRing &+ 2 }
    private var usedEventAddress: UInt64 { availRing &+ 4 &+ 2 &* UInt64(size) }
    private var availEventAddress: UInt64 { usedRing &+ 4 &+ 8 &* UInt64(size) }

    private func loadAvailIndex() throws -> UInt16 {
        guard let value = memory.load16(at: availIndexAddress) else {
            throw VirtqueueError.ringOutsideMemory(ring: "available", address: availRing, length: 4)
        }
        return value
    }

    /// How many requests the driver has made available and we have not taken.
    /// A count above the queue size cannot happen with a correct driver.
    public func pendingCount() throws -> UInt16 {
        guard isEnabled else { throw VirtqueueError.queueNotReady }
        let availIndex = try loadAvailIndex()
        let pending = availIndex &- lastAvailIndex
        guard pending <= size else {
            throw VirtqueueError.availIndexRunAway(availIndex: availIndex, lastSeen: lastAvailIndex,
                                                   queueSize: size)
        }
        return pending
    }

    /// Whether a request is waiting. When none is, and EVENT_IDX is in use,
    /// this also asks the driver (avail_event) to notify on the next one and
    /// re-checks, closing the race with a driver that just added one.
    public func hasAvailable() throws -> Bool {
        if isEnabled && !resubmissions.isEmpty { return true }
        if try pendingCount() > 0 { return true }
        guard eventIndex else { return false }
        guard memory.store16(lastAvailIndex, at: availEventAddress) else {
            throw VirtqueueError.ringOutsideMemory(ring: "used", address: usedRing, length: 6)
        }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return try pendingCount() > 0
    }

    /// Take the next available chain, or nil when the ring is empty.
    public func popChain() throws -> DescriptorChain? {
        guard try hasAvailable() else { return nil }
        if !resubmissions.isEmpty {
            // Already in the inflight log: not logged again.
            let head = resubmissions.removeFirst()
            guard head < size else { throw VirtqueueError.headIndexOutOfRange(index: head, queueSize: size) }
            return DescriptorChain(memory: memory, descriptorTable: descriptorTable, queueSize: size,
                                   head: head, indirectAllowed: indirectAllowed)
        }
        // Read the ring entry only after the index that published it.
        atomicMemoryFence(ordering: .acquiring)
        let slot = UInt64(lastAvailIndex % size)
        guard let head = memory.load16(at: availRing &+ 4 &+ 2 &* slot) else {
            throw VirtqueueError.ringOutsideMemory(ring: "available", address: availRing, length: 4)
        }
        guard head < size else { throw VirtqueueError.headIndexOutOfRange(index: head, queueSize: size) }
        lastAvailIndex &+= 1
        inflightLog?.taken(head: head)
        return DescriptorChain(memory: memory, descriptorTable: descriptorTable, queueSize: size,
                               head: head, indirectAllowed: indirectAllowed)
    }

    /// Take the next available request with its buffers collected, or nil.
    public func popRequest() throws -> VirtqueueRequest? {
        guard var chain = try popChain() else { return nil }
        let (readable, writable) = try chain.collect()
        return VirtqueueRequest(head: chain.head, readable: readable, writable: writable)
    }

    // MARK: used ring

    /// Return a chain to the driver with `length` bytes written into it.
    public func pushUsed(head: UInt16, length: UInt32) throws {
        guard isEnabled else { throw VirtqueueError.queueNotReady }
        guard head < size else { throw VirtqueueError.usedHeadOutOfRange(head) }
        inflightLog?.returning(head: head)
        let element = usedRing &+ 4 &+ 8 &* UInt64(usedIndex % size)
        guard memory.store32(UInt32(head), at: element), memory.store32(length, at: element &+ 4) else {
            throw VirtqueueError.ringOutsideMemory(ring: "used", address: usedRing, length: 8)
        }
        // The element must be visible before the index that publishes it.
        atomicMemoryFence(ordering: .releasing)
        usedIndex &+= 1
        guard memory.store16(usedIndex, at: usedRing &+ 2) else {
            throw VirtqueueError.ringOutsideMemory(ring: "used", address: usedRing, length: 4)
        }
        inflightLog?.returned(head: head, usedIndex: usedIndex)
    }

    /// Return several chains at once, the used index moved once after all
    /// of them: a frame spread over mergeable receive buffers (virtio-net)
    /// must not be seen by the driver in part.
    public func pushUsed(_ entries: [(head: UInt16, length: UInt32)]) throws {
        guard isEnabled else { throw VirtqueueError.queueNotReady }
        // Loaded once for the batch, not per entry (each load of a stored
        // class reference is a retain and a release).
        let memory = self.memory, log = inflightLog
        for (i, e) in entries.enumerated() {
            guard e.head < size else { throw VirtqueueError.usedHeadOutOfRange(e.head) }
            log?.returning(head: e.head)
            let element = usedRing &+ 4 &+ 8 &* UInt64((usedIndex &+ UInt16(truncatingIfNeeded: i)) % size)
            guard memory.store32(UInt32(e.head), at: element), memory.store32(e.length, at: element &+ 4) else {
                throw VirtqueueError.ringOutsideMemory(ring: "used", address: usedRing, length: 8)
            }
        }
        atomicMemoryFence(ordering: .releasing)
        usedIndex &+= UInt16(truncatingIfNeeded: entries.count)
        guard memory.store16(usedIndex, at: usedRing &+ 2) else {
            throw VirtqueueError.ringOutsideMemory(ring: "used", address: usedRing, length: 4)
        }
        if let log {
            for e in entries { log.returned(head: e.head, usedIndex: usedIndex) }
        }
    }

    /// Whether the driver wants an interrupt for what was added to the used
    /// ring since the last call: with EVENT_IDX, when used_event was crossed
    /// (vring_need_event); without, unless VIRTQ_AVAIL_F_NO_INTERRUPT is set.
    public func needsInterrupt() throws -> Bool {
        guard isEnabled else { return false }
        // lastSignalledUsed starts at the queue's first used index, so the
        // first batch is judged like any other.
        let previous = lastSignalledUsed
        let current = usedIndex
        guard previous != current else { return false }
        lastSignalledUsed = current
        // Our used index store must be visible before we read the driver's wish.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            guard let usedEvent = memory.load16(at: usedEventAddress) else {
                throw VirtqueueError.ringOutsideMemory(ring: "available", address: availRing, length: 6)
            }
            return current &- usedEvent &- 1 < current &- previous
        }
        guard let flags = memory.load16(at: availRing) else {
            throw VirtqueueError.ringOutsideMemory(ring: "available", address: availRing, length: 2)
        }
        return flags & 1 == 0
    }

    /// Test and fuzz hook: start the indices somewhere other than 0, as if the
    /// queue had already carried `index` requests (wrap-around tests).
    public func setIndicesForTesting(_ index: UInt16) {
        lastAvailIndex = index
        usedIndex = index
        lastSignalledUsed = index
    }
}
