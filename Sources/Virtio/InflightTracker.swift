// Inflight I/O tracking for split virtqueues, in the layout vhost-user
// defines for its inflight region (vhost-user.rst, "Inflight I/O
// tracking"; QEMU's struct vhost_inflight), so one tracker serves both a
// vhost-user backend (the frontend keeps the region) and vmd's own device
// processes (the VM process keeps it, in a memfd shared with the device,
// and hands it to the device's next instance after a crash).
//
// Layout: one queue region per queue, back to back, each
//   u64 features (0) · u16 version (1) · u16 desc_num · u16 last_batch_head
//   · u16 used_idx · desc_num × DescStateSplit
//   DescStateSplit: u8 inflight · u8 padding[5] · u16 next · u64 counter
// rounded up to 64 bytes. The region is written by the device and read back
// only by a later instance of it; whoever keeps it in between never
// interprets it, but it is still checked as hostile input when it comes back.
import Glibc

/// A region that cannot have been written by a tracker for this queue.
public struct InflightError: Error, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

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

/// One queue's region: implements the split-ring tracking protocol. Safe
/// against a death at any point: every step is one store into shared
/// memory, and `recover` works out the rest from the used index in the
/// ring. Completion order does not matter (each head has its own state and
/// each used-ring store is its own batch), so a device that completes out
/// of order (io_uring) is tracked like one that completes in order.
public final class InflightQueue: VirtqueueInflightLog {
    let base: UnsafeMutableRawPointer
    public let descriptorCount: UInt16
    /// The "global counter": orders resubmission like the original order.
    private var counter: UInt64 = 1
    /// False once the owner unmapped the region (`detach()`): a queue may
    /// still hold this log (strongly: a weak reference would put every
    /// retain and release of it on the slow side-table path), and what it
    /// records then goes nowhere.
    public private(set) var isAttached = true

    /// The region is about to be unmapped: record nothing more.
    public func detach() { isAttached = false }

    /// The queue's region at `base` (at least
    /// `InflightLayout.queueRegionSize(queueSize: descriptorCount)` bytes,
    /// mapped shared with whoever restarts the device).
    public init(base: UnsafeMutableRawPointer, descriptorCount: UInt16) {
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
    public func initialize() {
        guard isAttached else { return }
        memset(base, 0, InflightLayout.queueRegionSize(queueSize: descriptorCount))
        storedDescriptorCount = descriptorCount
        version = InflightLayout.version
    }

    // MARK: VirtqueueInflightLog

    public func taken(head: UInt16) {
        guard isAttached, head < descriptorCount else { return }
        setCounter(head, counter)
        counter &+= 1
        setInflight(head, true)
    }

    public func returning(head: UInt16) {
        guard isAttached, head < descriptorCount else { return }
        setNext(head, lastBatchHead)
        lastBatchHead = head
    }

    public func returned(head: UInt16, usedIndex index: UInt16) {
        guard isAttached, head < descriptorCount else { return }
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
            throw InflightError("inflight region for \(storedDescriptorCount) descriptors, queue of \(queueSize)")
        }
        let batch = ringUsedIndex &- usedIndex
        if batch != 0 {
            guard batch <= queueSize else {
                throw InflightError("inflight used index \(usedIndex) is \(batch) behind the ring's \(ringUsedIndex)")
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
                throw InflightError("inflight descriptor \(i) outside a queue of \(queueSize)")
            }
            pending.append((counter(i), i))
        }
        pending.sort { $0.0 < $1.0 }
        counter = (pending.map { $0.0 }.max() ?? 0) &+ 1
        return Resume(resubmit: pending.map { $0.1 }, lastAvailIndex: ringUsedIndex &+ UInt16(pending.count),
                      usedIndex: ringUsedIndex)
    }
}


extension InflightQueue {
    /// Continue `queue` (enabled, its layout restored) where a previous
    /// instance of the device left it: recover this region against the used
    /// index in the ring, restore the queue's indices, queue the heads to
    /// serve again, and log to this region from now on.
    @discardableResult
    public func resume(_ queue: Virtqueue) throws -> Resume {
        guard queue.isEnabled else { throw InflightError("queue resumed before it was enabled") }
        guard let ringUsed = queue.memory.load16(at: queue.usedRing &+ 2) else {
            throw InflightError("used ring at 0x\(hex(queue.usedRing)) outside guest memory")
        }
        let r = try recover(ringUsedIndex: ringUsed, queueSize: queue.size)
        queue.restoreIndices(lastAvailIndex: r.lastAvailIndex, usedIndex: r.usedIndex)
        queue.resubmit(r.resubmit)
        queue.inflightLog = self
        return r
    }

    /// How many requests are in flight now (taken, not yet returned).
    public var inflightCount: Int {
        (0..<descriptorCount).reduce(0) { $0 + (isInflight($1) ? 1 : 0) }
    }
}
