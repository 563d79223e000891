// Inflight I/O tracking for split virtqueues (vhost-user.rst, "Inflight I/O
// tracking"): a shared region the backend creates (GET_INFLIGHT_FD), the
// frontend keeps and hands back to a restarted backend (SET_INFLIGHT_FD).
//
// Layout: one queue region per queue, back to back, each
//   u64 features (0) · u16 version (1) · u16 desc_num · u16 last_batch_head
//   · u16 used_idx · desc_num × DescStateSplit
//   DescStateSplit: u8 inflight · u8 padding[5] · u16 next · u64 counter
// rounded up to 64 bytes. The region is written by this process and read
// back only by a later instance of it; the frontend never interprets it,
// but it is still checked as hostile input when it comes back.
import Glibc
import Virtio

public enum InflightLayout {
    public static let headerSize = 16
    public static let descriptorStateSize = 16
    public static let alignment = 64
    public static let version: UInt16 = 1

    /// Bytes of one queue's region for a queue of `queueSize` entries.
    public static func queueRegionSize(queueSize: UInt16) -> Int {
        let raw = headerSize + descriptorStateSize * Int(queueSize)
        return (raw + alignment - 1) / alignment * alignment
    }
}

/// One queue's region: implements the split-ring tracking protocol.
public final class InflightQueue: VirtqueueInflightLog {
    let base: UnsafeMutableRawPointer
    public let descriptorCount: UInt16
    /// The "global counter": orders resubmission like the original order.
    private var counter: UInt64 = 1

    init(base: UnsafeMutableRawPointer, descriptorCount: UInt16) {
        self.base = base
        self.descriptorCount = descriptorCount
    }

    var version: UInt16 {
        get { base.loadUnaligned(fromByteOffset: 8, as: UInt16.self) }
        set { base.storeBytes(of: newValue, toByteOffset: 8, as: UInt16.self) }
    }
    var storedDescriptorCount: UInt16 {
        get { base.loadUnaligned(fromByteOffset: 10, as: UInt16.self) }
        set { base.storeBytes(of: newValue, toByteOffset: 10, as: UInt16.self) }
    }
    var lastBatchHead: UInt16 {
        get { base.loadUnaligned(fromByteOffset: 12, as: UInt16.self) }
        set { base.storeBytes(of: newValue, toByteOffset: 12, as: UInt16.self) }
    }
    var usedIndex: UInt16 {
        get { base.loadUnaligned(fromByteOffset: 14, as: UInt16.self) }
        set { base.storeBytes(of: newValue, toByteOffset: 14, as: UInt16.self) }
    }
    private func entry(_ i: UInt16) -> UnsafeMutableRawPointer {
        base + InflightLayout.headerSize + InflightLayout.descriptorStateSize * Int(i)
    }
    func isInflight(_ i: UInt16) -> Bool { entry(i).load(as: UInt8.self) != 0 }
    func setInflight(_ i: UInt16, _ on: Bool) { entry(i).storeBytes(of: on ? 1 : 0, as: UInt8.self) }
    func next(_ i: UInt16) -> UInt16 { entry(i).loadUnaligned(fromByteOffset: 6, as: UInt16.self) }
    func setNext(_ i: UInt16, _ v: UInt16) { entry(i).storeBytes(of: v, toByteOffset: 6, as: UInt16.self) }
    func counter(_ i: UInt16) -> UInt64 { entry(i).loadUnaligned(fromByteOffset: 8, as: UInt64.self) }
    func setCounter(_ i: UInt16, _ v: UInt64) { entry(i).storeBytes(of: v, toByteOffset: 8, as: UInt64.self) }

    /// A fresh region: nothing in flight.
    func initialize() {
        memset(base, 0, InflightLayout.queueRegionSize(queueSize: descriptorCount))
        storedDescriptorCount = descriptorCount
        version = InflightLayout.version
    }

    // MARK: VirtqueueInflightLog

    public func taken(head: UInt16) {
        guard head < descriptorCount else { return }
        setCounter(head, counter)
        counter &+= 1
        setInflight(head, true)
    }

    public func returning(head: UInt16) {
        guard head < descriptorCount else { return }
        setNext(head, lastBatchHead)
        lastBatchHead = head
    }

    public func returned(head: UInt16, usedIndex index: UInt16) {
        guard head < descriptorCount else { return }
        setInflight(head, false)
        usedIndex = index
    }

    /// What a restarted backend must do for this queue, given the used
    /// index now in the ring: the heads to serve again (in their original
    /// order) and where the available ring continues.
    public struct Resume: Equatable {
        public var resubmit: [UInt16]
        public var lastAvailIndex: UInt16
        public var usedIndex: UInt16
    }

    /// Recover after a restart (spec steps: fix up the last batch when the
    /// crash came between the used index store and the inflight clear, then
    /// collect what is in flight by counter). Throws on a region that
    /// cannot have been written by us.
    public func recover(ringUsedIndex: UInt16, queueSize: UInt16) throws -> Resume {
        guard version == InflightLayout.version else {
            initialize()
            return Resume(resubmit: [], lastAvailIndex: ringUsedIndex, usedIndex: ringUsedIndex)
        }
        guard storedDescriptorCount == descriptorCount, queueSize <= descriptorCount else {
            throw VhostMemoryError("inflight region for \(storedDescriptorCount) descriptors, queue of \(queueSize)")
        }
        let batch = ringUsedIndex &- usedIndex
        if batch != 0 {
            guard batch <= queueSize else {
                throw VhostMemoryError("inflight used index \(usedIndex) is \(batch) behind the ring's \(ringUsedIndex)")
            }
            var head = lastBatchHead
            for _ in 0..<batch {
                guard head < descriptorCount else { break }
                setInflight(head, false)
                head = next(head)
            }
            usedIndex = ringUsedIndex
        }
        var pending: [(UInt64, UInt16)] = []
        for i in 0..<descriptorCount where isInflight(i) {
            guard i < queueSize else {
                throw VhostMemoryError("inflight descriptor \(i) outside a queue of \(queueSize)")
            }
            pending.append((counter(i), i))
        }
        pending.sort { $0.0 < $1.0 }
        counter = (pending.map { $0.0 }.max() ?? 0) &+ 1
        return Resume(resubmit: pending.map { $0.1 }, lastAvailIndex: ringUsedIndex &+ UInt16(pending.count),
                      usedIndex: ringUsedIndex)
    }
}

/// The whole shared region, mapped in this process.
public final class InflightRegion {
    public let description: InflightDescription
    public let queues: [InflightQueue]
    private let mapping: UnsafeMutableRawPointer
    private let mappingLength: Int

    /// Map `fd` as `description` says, checking that it is big enough for
    /// its queues and lies inside the file.
    public init(fd: Int32, description d: InflightDescription, maxQueues: Int) throws {
        guard d.queueCount >= 1, Int(d.queueCount) <= maxQueues else {
            throw VhostMemoryError("inflight region for \(d.queueCount) queues (this device has \(maxQueues))")
        }
        guard d.queueSize >= 1, d.queueSize <= Virtqueue.largestQueueSize, d.queueSize & (d.queueSize - 1) == 0 else {
            throw VhostMemoryError("inflight region for queues of \(d.queueSize) entries")
        }
        let perQueue = InflightLayout.queueRegionSize(queueSize: d.queueSize)
        let needed = UInt64(perQueue) * UInt64(d.queueCount)
        let (end, overflow) = d.mmapOffset.addingReportingOverflow(d.mmapSize)
        guard !overflow, d.mmapSize >= needed, end <= UInt64(Int.max) else {
            throw VhostMemoryError("inflight region of \(d.mmapSize) bytes at \(d.mmapOffset) for \(d.queueCount) queues of \(d.queueSize) (needs \(needed))")
        }
        var info = stat()
        guard fstat(fd, &info) == 0, UInt64(max(info.st_size, 0)) >= end else {
            throw VhostMemoryError("inflight region lies past the end of its file")
        }
        guard let p = mmap(nil, Int(end), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw VhostMemoryError("inflight region: mmap: \(String(cString: strerror(errno)))")
        }
        mapping = p
        mappingLength = Int(end)
        description = d
        let start = p + Int(d.mmapOffset)
        queues = (0..<Int(d.queueCount)).map { InflightQueue(base: start + $0 * perQueue, descriptorCount: d.queueSize) }
    }

    deinit { munmap(mapping, mappingLength) }
}
