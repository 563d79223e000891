// What a device process keeps outside itself so that its next instance can
// continue where it died: the transport's registers (a snapshot after
// every register access) and one inflight tracker per queue, in one region
// of memory shared with the VM process, which keeps it across the restart.
//
// Region layout (host byte order, like imsg: both ends run on one machine):
//   0   u32 magic "VMDS" · 4 u32 version · 8 u32 starts · 12 u32 active slot
//   64  slot 0: u32 length · snapshot bytes        (slotSize bytes)
//   64 + slotSize  slot 1
//   headerSize     inflight queue 0, queue 1, ... (InflightLayout, each for
//                  its queue's maximum size)
// A snapshot is written to the inactive slot and then made active, so a
// death in the middle of a write leaves the previous one. Whatever the
// region holds is checked when it is read back: a device that was taken
// over may have written anything there.
import Glibc
import Synchronization

/// A device that has state of its own worth keeping across a restart
/// (vmmci: the command the guest has not acknowledged yet).
public protocol RestartableDevice: AnyObject {
    var restartState: [UInt8] { get }
    func restore(restartState: [UInt8])
}

/// The transport's registers at one moment.
public struct TransportSnapshot: Equatable {
    public struct Queue: Equatable {
        public var size: UInt16
        public var descriptorTable: UInt64
        public var availRing: UInt64
        public var usedRing: UInt64
        public var enabled: Bool
        public var indirect: Bool
        public var eventIndex: Bool
        /// The MSI-X vector the driver chose for this queue.
        public var vector: UInt16 = 0xffff
    }
    public var status: UInt8 = 0
    public var negotiatedFeatures: UInt64 = 0
    public var driverFeatures: UInt64 = 0
    public var deviceFeatureSelect: UInt32 = 0
    public var driverFeatureSelect: UInt32 = 0
    public var queueSelect: UInt16 = 0
    public var configGeneration: UInt32 = 0
    public var isr: UInt8 = 0
    /// The MSI-X vector the driver chose for configuration changes.
    public var configVector: UInt16 = 0xffff
    public var queues: [Queue] = []
    public var deviceState: [UInt8] = []

    static let maxQueues = 64
    static let maxDeviceState = 256

    public func encoded() -> [UInt8] {
        var b: [UInt8] = []
        b.append(status); b.append(isr); b.append(0); b.append(0)
        appendLittleEndian(configGeneration, to: &b)
        appendLittleEndian(negotiatedFeatures, to: &b)
        appendLittleEndian(driverFeatures, to: &b)
        appendLittleEndian(deviceFeatureSelect, to: &b)
        appendLittleEndian(driverFeatureSelect, to: &b)
        appendLittleEndian(queueSelect, to: &b)
        appendLittleEndian(configVector, to: &b)
        appendLittleEndian(UInt16(queues.count), to: &b)
        appendLittleEndian(UInt16(deviceState.count), to: &b)
        for q in queues {
            appendLittleEndian(q.size, to: &b)
            b.append((q.enabled ? 1 : 0) | (q.indirect ? 2 : 0) | (q.eventIndex ? 4 : 0))
            b.append(0)
            appendLittleEndian(q.vector, to: &b)
            appendLittleEndian(q.descriptorTable, to: &b)
            appendLittleEndian(q.availRing, to: &b)
            appendLittleEndian(q.usedRing, to: &b)
        }
        b.append(contentsOf: deviceState)
        return b
    }

    public init() {}

    /// Decodes what `encoded()` wrote, or nil for anything else.
    public init?(decoding b: [UInt8]) {
        var at = 0
        func take(_ n: Int) -> ArraySlice<UInt8>? {
            guard n >= 0, at + n <= b.count else { return nil }
            defer { at += n }
            return b[at..<at + n]
        }
        func int<T: FixedWidthInteger>(_: T.Type) -> T? {
            guard let s = take(MemoryLayout<T>.size) else { return nil }
            var v: T = 0
            for (i, byte) in s.enumerated() { v |= T(byte) << (8 * i) }
            return v
        }
        guard let st = int(UInt8.self), let isr = int(UInt8.self), int(UInt16.self) != nil, let gen = int(UInt32.self),
              let nf = int(UInt64.self), let df = int(UInt64.self), let dfs = int(UInt32.self),
              let drs = int(UInt32.self), let qs = int(UInt16.self), let cv = int(UInt16.self),
              let nq = int(UInt16.self),
              let nd = int(UInt16.self), Int(nq) <= Self.maxQueues, Int(nd) <= Self.maxDeviceState else { return nil }
        status = st; configGeneration = gen; self.isr = isr
        negotiatedFeatures = nf; driverFeatures = df; deviceFeatureSelect = dfs; driverFeatureSelect = drs
        queueSelect = qs
        configVector = cv
        for _ in 0..<nq {
            guard let size = int(UInt16.self), let flags = int(UInt8.self), int(UInt8.self) != nil,
                  let vector = int(UInt16.self), let d = int(UInt64.self), let a = int(UInt64.self), let u = int(UInt64.self) else { return nil }
            queues.append(Queue(size: size, descriptorTable: d, availRing: a, usedRing: u,
                                enabled: flags & 1 != 0, indirect: flags & 2 != 0, eventIndex: flags & 4 != 0,
                                vector: vector))
        }
        guard let ds = take(Int(nd)), at == b.count else { return nil }
        deviceState = Array(ds)
    }
}

extension TransportCore {
    /// The registers now, with the device's own state if it keeps any.
    public func snapshot() -> TransportSnapshot {
        var s = TransportSnapshot()
        s.status = status
        s.negotiatedFeatures = negotiatedFeatures
        s.queueSelect = queueSelect
        s.isr = isr
        s.configVector = interrupts.configVector
        s.driverFeatures = driverFeatures
        s.deviceFeatureSelect = deviceFeatureSelect
        s.driverFeatureSelect = driverFeatureSelect
        s.configGeneration = configGeneration
        s.queues = queues.map {
            .init(size: $0.size, descriptorTable: $0.descriptorTable, availRing: $0.availRing, usedRing: $0.usedRing,
                  enabled: $0.isEnabled, indirect: $0.indirectAllowed, eventIndex: $0.eventIndex)
        }
        for (i, vector) in interrupts.queueVectors.enumerated() where i < s.queues.count {
            s.queues[i].vector = vector
        }
        if let d = device as? RestartableDevice {
            s.deviceState = Array(d.restartState.prefix(TransportSnapshot.maxDeviceState))
        }
        return s
    }

    /// Continue from `s`, which a previous instance of this device wrote
    /// (checked like guest input: a queue that cannot be enabled puts the
    /// device in DEVICE_NEEDS_RESET). Queue indices and requests in flight
    /// come from the inflight trackers afterwards (`InflightQueue.resume`).
    /// Raises the interrupt whatever the old ISR said: the old instance may
    /// have completed requests whose interrupt it never raised, and a
    /// spurious interrupt costs a virtio driver one look at its rings.
    public func restore(_ s: TransportSnapshot) throws {
        guard s.queues.count == queues.count else {
            throw InflightError("saved state has \(s.queues.count) queues, the device \(queues.count)")
        }
        status = s.status
        negotiatedFeatures = s.negotiatedFeatures
        queueSelect = s.queueSelect
        driverFeatures = s.driverFeatures
        deviceFeatureSelect = s.deviceFeatureSelect
        driverFeatureSelect = s.driverFeatureSelect
        configGeneration = s.configGeneration
        // MSI-X vectors: the VM process keeps the table and whether MSI-X is
        // on; which vector each queue uses is a transport register.
        interrupts.configVector = s.configVector
        for (i, saved) in s.queues.enumerated() where i < interrupts.queueVectors.count {
            interrupts.queueVectors[i] = saved.vector
        }
        for (q, saved) in zip(queues, s.queues) {
            guard q.isValidSize(saved.size) else {
                throw InflightError("saved queue size \(saved.size) (max \(q.maxSize))")
            }
            q.size = saved.size
            q.descriptorTable = saved.descriptorTable
            q.availRing = saved.availRing
            q.usedRing = saved.usedRing
            q.indirectAllowed = saved.indirect
            q.eventIndex = saved.eventIndex
            if saved.enabled {
                do { try q.enable() } catch { deviceFailed("restored queue: \(error)") }
            }
        }
        if status & VirtioStatus.driverOK != 0 && !needsReset {
            device.driverReady(features: negotiatedFeatures)
        }
        if let d = device as? RestartableDevice, !s.deviceState.isEmpty {
            d.restore(restartState: s.deviceState)
        }
        if status & VirtioStatus.driverOK != 0, interrupts.shared?.msixEnabled == true {
            for i in queues.indices where queues[i].isEnabled { interrupts.raiseQueue(i) }
        } else if status & VirtioStatus.driverOK != 0 {
            interrupts.raise(s.isr | VirtioISR.queue)
        } else if s.isr != 0 {
            interrupts.raise(s.isr)
        }
    }
}

/// The region a device process shares with the VM process (see the top of
/// this file).
public final class DeviceStateRegion {
    public static let magic: UInt32 = 0x5344_4d56   // "VMDS"
    public static let version: UInt32 = 2
    static let slotSize = 4096
    static let headerSize = 64 + 2 * slotSize

    public let base: UnsafeMutableRawPointer
    public let queueMaxSizes: [UInt16]
    private var lastSaved: [UInt8] = []
    private var logs: [InflightQueue?]

    /// Bytes needed for a device with these queues.
    public static func size(queueMaxSizes: [UInt16]) -> Int {
        queueMaxSizes.reduce(headerSize) { $0 + InflightLayout.queueRegionSize(queueSize: $1) }
    }

    /// The region at `base`, at least `size(queueMaxSizes:)` bytes.
    public init(base: UnsafeMutableRawPointer, queueMaxSizes: [UInt16]) {
        self.base = base
        self.queueMaxSizes = queueMaxSizes
        logs = Array(repeating: nil, count: queueMaxSizes.count)
    }

    private func u32(_ at: Int) -> UInt32 { base.load(fromByteOffset: at, as: UInt32.self) }
    private func set(_ at: Int, _ v: UInt32) { base.storeBytes(of: v, toByteOffset: at, as: UInt32.self) }

    /// Whether an earlier instance set the region up.
    public var isInitialized: Bool { u32(0) == Self.magic && u32(4) == Self.version }

    /// How many instances of the device have started on this region.
    public var starts: UInt32 { isInitialized ? u32(8) : 0 }

    /// A new instance starts: counts it, sets the region up if it is new.
    public func instanceStarting() {
        if !isInitialized {
            memset(base, 0, Self.size(queueMaxSizes: queueMaxSizes))
            set(4, Self.version)
            set(0, Self.magic)
        }
        set(8, u32(8) &+ 1)
    }

    /// Saves `bytes` as the current snapshot (nothing when unchanged).
    public func save(_ bytes: [UInt8]) {
        guard bytes != lastSaved, bytes.count <= Self.slotSize - 4 else { return }
        let slot = 1 - Int(u32(12) & 1)
        let at = 64 + slot * Self.slotSize
        set(at, UInt32(bytes.count))
        bytes.withUnsafeBytes { _ = memcpy(base + at + 4, $0.baseAddress!, bytes.count) }
        atomicMemoryFence(ordering: .releasing)
        set(12, UInt32(slot))
        lastSaved = bytes
    }

    /// The current snapshot, if any.
    public func load() -> [UInt8]? {
        guard isInitialized else { return nil }
        let at = 64 + Int(u32(12) & 1) * Self.slotSize
        let length = Int(u32(at))
        guard length > 0, length <= Self.slotSize - 4 else { return nil }
        return Array(UnsafeRawBufferPointer(start: base + at + 4, count: length))
    }

    /// Queue `i`'s inflight tracker (one object per queue, kept here; the
    /// region is mapped for the life of the process).
    public func inflight(_ i: Int) -> InflightQueue {
        if let log = logs[i] { return log }
        var at = Self.headerSize
        for s in queueMaxSizes.prefix(i) { at += InflightLayout.queueRegionSize(queueSize: s) }
        let log = InflightQueue(base: base + at, descriptorCount: queueMaxSizes[i])
        logs[i] = log
        return log
    }

    /// The used indices every queue's tracker last recorded: the VM
    /// process compares them across a restart to tell whether the device
    /// completed anything (read from another process: a hint, not data).
    public var recordedUsedIndices: [UInt16] {
        var at = Self.headerSize
        return queueMaxSizes.map { s in
            defer { at += InflightLayout.queueRegionSize(queueSize: s) }
            return base.load(fromByteOffset: at + 14, as: UInt16.self)
        }
    }
}

/// Keeps a transport's state in a `DeviceStateRegion` as it changes: call
/// `track()` after every register access or queue run. Queues the driver
/// enables get a freshly initialised tracker; after a restart, `resume()`
/// restores the transport and picks up the trackers where they were.
public final class TransportStateKeeper {
    public let transport: TransportCore
    public let region: DeviceStateRegion
    private var tracked: [Bool]

    public init(transport: TransportCore, region: DeviceStateRegion) {
        self.transport = transport
        self.region = region
        tracked = Array(repeating: false, count: transport.queues.count)
    }

    /// After a restart: the saved registers, then each enabled queue's
    /// inflight tracker. Returns how many requests are served again, or
    /// nil when there was nothing to restore (a first start).
    @discardableResult
    public func resume() throws -> Int? {
        guard let bytes = region.load() else { return nil }
        guard let s = TransportSnapshot(decoding: bytes) else { throw InflightError("saved state is malformed") }
        try transport.restore(s)
        var again = 0
        for (i, q) in transport.queues.enumerated() where q.isEnabled {
            do {
                again += try region.inflight(i).resume(q).resubmit.count
                tracked[i] = true
            } catch {
                transport.deviceFailed("queue \(i): inflight state: \(error)")
            }
        }
        region.save(transport.snapshot().encoded())
        return again
    }

    /// Follows what changed since the last call.
    public func track() {
        for (i, q) in transport.queues.enumerated() {
            if q.isEnabled && !tracked[i] {
                let log = region.inflight(i)
                log.initialize()
                q.inflightLog = log
                tracked[i] = true
            } else if !q.isEnabled && tracked[i] {
                tracked[i] = false
            }
        }
        region.save(transport.snapshot().encoded())
    }
}
