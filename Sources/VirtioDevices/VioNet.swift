// virtio-net (spec 5.1) over a tap device, no control queue, like vmd; the
// MAC and link status are in config space. Every frame on the tap carries a
// 12-byte virtio_net_hdr in front (IFF_VNET_HDR with TUNSETVNETHDRSZ 12, the
// VERSION_1 header size), so the guest's header and the tap's line up and
// frames are copied once each way.
//
// Offloads (when the backend is a real tap): checksum offload and TSO both
// ways (CSUM, GUEST_CSUM, HOST_TSO4/6, GUEST_TSO4/6). The guest's header
// goes to the tap after a check that it asks only for work that was
// negotiated (the kernel checks it again); the tap is told with
// TUNSETOFFLOAD what the guest accepts, once its features are known.
// Mergeable receive buffers (MRG_RXBUF): a frame spreads over as many
// buffers as it needs, returned together.
//
// Receive is driven by the event loop: call `backendReadable()` when the tap fd
// is readable. When the guest has no receive buffers it returns false: stop
// watching the tap until `onInputWanted` fires (the guest added
// buffers), so frames wait in the kernel instead of being read and dropped.
//
// A frame is read with one readv straight into the guest's next receive
// chain (nothing is read before a chain is taken, and a chain taken when
// the tap turned out empty waits for the next frame); a last iovec points
// at `receiveBuffer`, so a frame longer than the chain is seen whole: with
// mergeable buffers its tail is copied into more buffers, without it is
// dropped. Used entries are published in batches (every `publishBatch`
// frames or `publishBytes` bytes, and when the loop stops) and at most
// `receiveBudget` frames are read per call, so the guest sees frames in
// groups and the interrupt (judged once per call, EVENT_IDX's used_event
// honoured) goes out per batch.
import Glibc
import Virtio
import VMDSystem

public enum VirtioNetFeature {
    public static let csum: UInt64 = 1 << 0
    public static let guestCsum: UInt64 = 1 << 1
    public static let mac: UInt64 = 1 << 5
    public static let guestTSO4: UInt64 = 1 << 7
    public static let guestTSO6: UInt64 = 1 << 8
    public static let hostTSO4: UInt64 = 1 << 11
    public static let hostTSO6: UInt64 = 1 << 12
    public static let mrgRxbuf: UInt64 = 1 << 15
    public static let status: UInt64 = 1 << 16
    /// What a tap with virtio-net headers lets us offer.
    public static let offloads: UInt64 = csum | guestCsum | guestTSO4 | guestTSO6 | hostTSO4 | hostTSO6
    public static let guestOffloads: UInt64 = guestCsum | guestTSO4 | guestTSO6
    public static let hostOffloads: UInt64 = csum | hostTSO4 | hostTSO6
}

/// TUNSETOFFLOAD flags.
public enum TunOffload {
    public static let csum: UInt32 = 1
    public static let tso4: UInt32 = 2
    public static let tso6: UInt32 = 4
}

/// One frame per read and per write, each with a 12-byte virtio_net_hdr.
public protocol NetworkBackend: AnyObject {
    /// Readable when a frame is waiting (the tap).
    var descriptor: Int32 { get }
    /// Read one frame into `buffer`; nil when none is waiting.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> Int?
    func send(_ frame: UnsafeRawBufferPointer) throws
    /// Read one frame scattered over `vectors`; nil when none is waiting.
    /// The length returned is the frame's, which exceeds the vectors' total
    /// when it did not fit (a tap cuts it and reports its whole length).
    func receive(vectors: UnsafeMutableBufferPointer<iovec>) throws -> Int?
    /// Send one frame gathered from `vectors` (writev).
    func send(vectors: UnsafeBufferPointer<iovec>) throws
    /// The backend takes and gives frames with offload work pending (a tap
    /// with vnet headers whose TUNSETOFFLOAD works).
    var offloadCapable: Bool { get }
    /// TUNSETOFFLOAD: the TunOffload flags the guest accepts.
    func setOffloads(_ flags: UInt32) throws
}

extension NetworkBackend {
    public var offloadCapable: Bool { false }
    public func setOffloads(_ flags: UInt32) throws {}

    /// Backends without readv (tests, fuzzing): one read into a bounce
    /// buffer, scattered over the vectors.
    public func receive(vectors: UnsafeMutableBufferPointer<iovec>) throws -> Int? {
        let total = vectors.reduce(0) { $0 + $1.iov_len }
        let bounce = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 16)
        defer { bounce.deallocate() }
        guard let n = try receive(into: UnsafeMutableRawBufferPointer(rebasing: bounce[0..<total])) else { return nil }
        var offset = 0
        for v in vectors where offset < n {
            let count = min(v.iov_len, n - offset)
            if let to = v.iov_base, let from = bounce.baseAddress { memcpy(to, from + offset, count) }
            offset += count
        }
        return n
    }

    /// Backends without writev: the frame gathered into one buffer.
    public func send(vectors: UnsafeBufferPointer<iovec>) throws {
        let total = vectors.reduce(0) { $0 + $1.iov_len }
        let gathered = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 16)
        defer { gathered.deallocate() }
        var offset = 0
        for v in vectors {
            if let to = gathered.baseAddress, let from = v.iov_base { memcpy(to + offset, from, v.iov_len) }
            offset += v.iov_len
        }
        try send(UnsafeRawBufferPointer(rebasing: gathered[0..<total]))
    }
}

public struct NetworkBackendError: Error, CustomStringConvertible {
    public var errno: Int32
    public var operation: String
    public var description: String { "\(operation): \(virtioErrnoDescription(errno))" }
}

/// A tap fd (or, in tests, a SOCK_SEQPACKET socket): one read is one frame.
public final class TapBackend: NetworkBackend {
    public let fd: Int32
    public var descriptor: Int32 { fd }
    public let offloadCapable: Bool

    public init(fd: Int32, offloadCapable: Bool = false) {
        self.fd = fd
        self.offloadCapable = offloadCapable
    }

    /// Whether `fd` is a tap that takes TUNSETOFFLOAD (it then starts with
    /// none: the tap finishes every frame until the guest says otherwise).
    public static func probeOffloads(fd: Int32) -> Bool {
        (try? Tap.setOffload(fd, flags: 0)) != nil
    }

    public func setOffloads(_ flags: UInt32) throws {
        do {
            try Tap.setOffload(fd, flags: flags)
        } catch let e as SystemError {
            throw NetworkBackendError(errno: e.code, operation: e.what)
        }
    }

    /// Make a tap opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR use the 12-byte
    /// header and never block. Call before the sandbox forbids ioctl.
    public static func prepareTap(fd: Int32) throws {
        do {
            try Tap.prepare(fd, vnetHeaderSize: Int32(VioNet.headerSize))
        } catch let e as SystemError {
            throw NetworkBackendError(errno: e.code, operation: e.what)
        }
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> Int? {
        do {
            return try FileIO.readRecord(fd, into: buffer)
        } catch let e as SystemError {
            throw NetworkBackendError(errno: e.code, operation: "tap read")
        }
    }

    public func receive(vectors: UnsafeMutableBufferPointer<iovec>) throws -> Int? {
        do {
            return try FileIO.readRecord(fd, vectors: vectors)
        } catch let e as SystemError {
            throw NetworkBackendError(errno: e.code, operation: "tap read")
        }
    }

    public func send(_ frame: UnsafeRawBufferPointer) throws {
        do {
            try FileIO.writeRecord(fd, frame)
        } catch let e as SystemError {
            // A full tap queue drops the frame, as a wire would.
            if e.code == EAGAIN || e.code == EWOULDBLOCK || e.code == ENOBUFS { return }
            throw NetworkBackendError(errno: e.code, operation: "tap write")
        }
    }

    public func send(vectors: UnsafeBufferPointer<iovec>) throws {
        do {
            try FileIO.writeRecord(fd, vectors: vectors)
        } catch let e as SystemError {
            if e.code == EAGAIN || e.code == EWOULDBLOCK || e.code == ENOBUFS { return }
            throw NetworkBackendError(errno: e.code, operation: "tap write")
        }
    }
}

public final class VioNet: BackendInputDevice {
    public static let headerSize = 12
    public static let queueSize: UInt16 = 256
    public static let receiveQueue = 0
    public static let transmitQueue = 1
    static let ethernetHeaderSize = 14
    /// A GSO frame is at most 64 KiB of IP plus its Ethernet (and VLAN)
    /// header; larger is a guest error.
    public static let maxFrameSize = 65536 + 18
    /// Frames read per call at most: the event loop then serves the other
    /// queues, and the receive interrupt goes out at least this often.
    public static let receiveBudget = 64
    /// Used entries are published (the used index moved) every this many
    /// frames, and when the receive loop stops.
    public static let publishBatch = 16
    /// ... or every this many bytes: a guest with few large frames in
    /// flight (64 KiB GSO) gets each back as soon as it is done.
    public static let publishBytes = 65536
    /// IOV_MAX: the guest buffers of one chain a frame is read into (the
    /// rest of a longer chain is left unused), plus `receiveBuffer`.
    static let maxReceiveVectors = 1024

    public let name: String
    public let backend: NetworkBackend
    public let mac: [UInt8]
    /// `locked lladdr`: drop transmitted frames whose source MAC isn't ours.
    public let lockedLinkAddress: Bool
    /// A `local interface`: vionet is the guest's DHCP server (DHCPServer).
    public var local: LocalInterface?
    public private(set) var dhcpReplies = 0
    public let queueMaxSizes = VioNet.model.queueSizes
    public var deviceFeatures: UInt64 {
        VirtioNetFeature.mac | VirtioNetFeature.status | VirtioNetFeature.mrgRxbuf
            | (backend.offloadCapable ? VirtioNetFeature.offloads : 0)
    }
    /// Called when the guest adds receive buffers after `backendReadable()`
    /// returned false and some are left once the waiting frames are in:
    /// resume watching the tap.
    public var onInputWanted: (() -> Void)?

    private weak var host: VirtioDeviceHost?
    /// Transmit and receive each have their own: a received frame may wait
    /// in `receiveBuffer` for guest buffers while the guest transmits.
    private let frameBuffer: UnsafeMutableRawBufferPointer
    private let receiveBuffer: UnsafeMutableRawBufferPointer
    /// Mergeable receive: the length of a frame's tail waiting in
    /// `receiveBuffer` for more guest buffers (0: none).
    private var pendingLength = 0
    /// Mergeable receive: the buffers of the pending frame; the first holds
    /// its start (`firstLength` bytes, the header included).
    private var held: [(head: UInt16, writable: [ChainElement])] = []
    private var firstLength: UInt32 = 0
    /// The iovecs of one readv and of one writev (allocated once).
    private let receiveVectors: UnsafeMutableBufferPointer<iovec>
    private let transmitVectors: UnsafeMutableBufferPointer<iovec>
    /// Transmit entries not yet published.
    private var transmitted: [(head: UInt16, length: UInt32)] = []
    private var transmitElements: [ChainElement] = []
    private var transmittedBytes = 0
    /// The writable buffers of the receive chain taken off the ring and not
    /// yet filled (storage reused from frame to frame), and its head.
    private var chain: [ChainElement] = []
    private var chainHead: UInt16?
    /// Used receive entries not yet published.
    private var completed: [(head: UInt16, length: UInt32)] = []
    private var completedBytes = 0
    public private(set) var receivePublishes = 0
    /// The negotiated features the tap's offloads were last set for.
    private var appliedFeatures: UInt64?
    /// The guest had no receive buffers at the last look.
    private var receiveStalled = false
    /// `backendReadable()` said to stop watching the tap; the next receive-queue
    /// notify calls `onInputWanted`.
    private var tapWatchSuspended = false
    public private(set) var droppedTransmitFrames = 0
    public private(set) var droppedReceiveFrames = 0

    public var linkUp = true {
        didSet { if linkUp != oldValue { host?.configurationChanged() } }
    }

    public var inputDescriptor: Int32 { backend.descriptor }

    /// `mac` must be 6 bytes; use `VioNet.randomMAC(index:)` when unset.
    public init?(name: String, backend: NetworkBackend, mac: [UInt8], lockedLinkAddress: Bool) {
        guard mac.count == 6 else { return nil }
        self.name = name
        self.backend = backend
        self.mac = mac
        self.lockedLinkAddress = lockedLinkAddress
        self.frameBuffer = .allocate(byteCount: VioNet.headerSize + VioNet.maxFrameSize, alignment: 16)
        self.receiveBuffer = .allocate(byteCount: VioNet.headerSize + VioNet.maxFrameSize, alignment: 16)
        self.receiveVectors = .allocate(capacity: VioNet.maxReceiveVectors)
        self.transmitVectors = .allocate(capacity: VioNet.maxReceiveVectors)
        transmitted.reserveCapacity(VioNet.publishBatch + 1)
        chain.reserveCapacity(16)
        completed.reserveCapacity(VioNet.receiveBudget + 1)
    }

    deinit {
        frameBuffer.deallocate()
        receiveBuffer.deallocate()
        receiveVectors.deallocate()
        transmitVectors.deallocate()
    }

    /// vmd's MAC for an interface without one: fe:e1:bb:dN:xx:xx, where N is
    /// the interface number plus one and xx random.
    public static func randomMAC(index: Int) -> [UInt8] {
        var random: [UInt8] = [0, 0]
        random.withUnsafeMutableBytes { _ = getentropy($0.baseAddress, 2) }
        return [0xfe, 0xe1, 0xbb, 0xd0 | UInt8((index + 1) & 0xf), random[0], random[1]]
    }

    public func attach(to host: VirtioDeviceHost) { self.host = host }

    private var logBudget = LogBudget()

    public func reset() {
        receiveStalled = false
        pendingLength = 0
        held = []
        chainHead = nil
        chain.removeAll(keepingCapacity: true)
        completed.removeAll(keepingCapacity: true)
        appliedFeatures = nil
    }

    private var negotiated: UInt64 { host?.negotiatedFeatures ?? 0 }

    /// Tells the tap what unfinished frames the guest accepts, once per
    /// negotiation (the features are known once the driver is ready).
    private func applyOffloads() {
        guard backend.offloadCapable, let host, host.isDriverReady, appliedFeatures != host.negotiatedFeatures else { return }
        let f = host.negotiatedFeatures
        appliedFeatures = f
        var flags: UInt32 = 0
        if f & VirtioNetFeature.guestCsum != 0 {
            flags |= TunOffload.csum
            if f & VirtioNetFeature.guestTSO4 != 0 { flags |= TunOffload.tso4 }
            if f & VirtioNetFeature.guestTSO6 != 0 { flags |= TunOffload.tso6 }
        }
        do {
            try backend.setOffloads(flags)
        } catch {
            logBudget.log("\(name): \(error)")
        }
    }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        var bytes = mac
        appendLittleEndian(UInt16(linkUp ? 1 : 0), to: &bytes)   // VIRTIO_NET_S_LINK_UP
        return readLittleEndian(bytes, offset: offset, size: size)
    }

    public func process(queue: Virtqueue, index: Int) throws {
        switch index {
        case VioNet.receiveQueue:
            // New buffers: frames may be waiting in the tap, so read them
            // now; the event loop watches the tap again only when buffers
            // are left over (when the waiting frames took them all, the
            // next notify does the same again: no watch added and removed,
            // no wake-up that finds no buffer).
            try receiveFrames(queue: queue)
            if tapWatchSuspended && !receiveStalled {
                tapWatchSuspended = false
                onInputWanted?()
            }
        case VioNet.transmitQueue:
            try transmitFrames(queue: queue)
        default:
            break
        }
    }

    /// Receive buffers are work only when frames wait for them (the last
    /// look found the ring empty); otherwise the tap's readiness drives
    /// receive, and frames go into the buffers already there.
    public func wantsBuffers(queue index: Int) -> Bool {
        index != VioNet.receiveQueue || receiveStalled
    }

    /// The tap is readable: move waiting frames into the guest's receive
    /// buffers. Returns whether to keep watching the tap (false: the guest
    /// has no buffers, or the device is not running).
    @discardableResult
    public func backendReadable() -> Bool {
        guard let host = host, host.isDriverReady else {
            tapWatchSuspended = true
            return false
        }
        host.withQueue(VioNet.receiveQueue) { queue in try receiveFrames(queue: queue) }
        let keepWatching = host.isDriverReady && !receiveStalled
        if !keepWatching { tapWatchSuspended = true }
        return keepWatching
    }

    private func receiveFrames(queue: Virtqueue) throws {
        applyOffloads()
        let features = negotiated
        let mergeable = features & VirtioNetFeature.mrgRxbuf != 0
        // Without GUEST_CSUM the guest gets no flags and no GSO (spec 5.1.6.4).
        let keepHeader = backend.offloadCapable && features & VirtioNetFeature.guestCsum != 0
        do {
            try receiveLoop(queue: queue, mergeable: mergeable, keepHeader: keepHeader)
        } catch {
            // What was completed before a ring error still goes to the guest.
            try? publish(queue)
            throw error
        }
        try publish(queue)
    }

    private func receiveLoop(queue: Virtqueue, mergeable: Bool, keepHeader: Bool) throws {
        // Loaded once per call, not per frame (each load of a stored class
        // reference is a retain and a release).
        let memory = queue.memory, backend = self.backend
        var budget = VioNet.receiveBudget
        while budget > 0 {
            if pendingLength > 0 {
                guard try placeMergeable(queue: queue, keepHeader: keepHeader) else {
                    receiveStalled = true
                    return
                }
                continue
            }
            if chainHead == nil {
                guard try takeChain(queue) else {
                    receiveStalled = true
                    return
                }
            }
            guard let head = chainHead else { return }
            receiveStalled = false
            // No more of the chain than the largest frame needs (a hostile
            // chain of 4 GiB descriptors must not make readv fail forever).
            var count = 0, capacity = 0
            let wanted = VioNet.headerSize + VioNet.maxFrameSize
            for element in chain where count < VioNet.maxReceiveVectors - 1 && capacity < wanted {
                let take = min(Int(element.length), wanted - capacity)
                // Checked when the chain was walked; looked up again here.
                guard take > 0, let b = memory.buffer(at: element.address, length: take) else { continue }
                receiveVectors[count] = iovec(iov_base: b.baseAddress, iov_len: b.count)
                count += 1
                capacity += b.count
            }
            if mergeable && capacity < VioNet.headerSize {
                // A first buffer must hold the header (spec 5.1.6.3.1): given back unused.
                chainHead = nil
                completed.append((head, 0))
                continue
            }
            receiveVectors[count] = iovec(iov_base: receiveBuffer.baseAddress, iov_len: receiveBuffer.count)
            let received: Int?
            do {
                received = try backend.receive(vectors: UnsafeMutableBufferPointer(rebasing: receiveVectors[0...count]))
            } catch {
                logBudget.log("\(name): \(error)")
                return
            }
            // The tap is empty: the chain waits here for the next frame.
            guard let length = received else { return }
            budget -= 1
            guard length >= VioNet.headerSize + VioNet.ethernetHeaderSize else {
                droppedReceiveFrames += 1      // a runt; the chain is used for the next frame
                continue
            }
            chainHead = nil
            if length <= capacity {
                finishHeader(chain, numBuffers: 1, keepHeader: keepHeader, memory: memory)
                completed.append((head, UInt32(length)))
            } else if !mergeable || length - capacity > receiveBuffer.count {
                // Too big for the guest's buffer (or cut): dropped, the buffer given back empty.
                droppedReceiveFrames += 1
                completed.append((head, 0))
            } else {
                // The start is in the guest's first buffer, the tail in receiveBuffer.
                held = [(head, chain)]
                firstLength = UInt32(capacity)
                pendingLength = length - capacity
            }
            completedBytes += length
            if completed.count >= VioNet.publishBatch || completedBytes >= VioNet.publishBytes { try publish(queue) }
        }
    }

    /// Takes the next receive chain off the ring into `chain`/`chainHead`;
    /// false when the guest has none (with EVENT_IDX, avail_event is then
    /// set so that the guest's next buffer notifies us).
    private func takeChain(_ queue: Virtqueue) throws -> Bool {
        guard var walk = try queue.popChain() else { return false }
        chain.removeAll(keepingCapacity: true)
        while let element = try walk.next() {
            if element.isDeviceWritable { chain.append(element) }
        }
        chainHead = walk.head
        return true
    }

    /// Moves the used entries completed so far to the guest, the used index once.
    private func publish(_ queue: Virtqueue) throws {
        completedBytes = 0
        guard !completed.isEmpty else { return }
        defer { completed.removeAll(keepingCapacity: true) }
        receivePublishes += 1
        try queue.pushUsed(completed)
    }

    /// The header at the start of a frame's first buffer: the flags and GSO
    /// fields cleared unless the guest takes them, num_buffers set.
    private func finishHeader(_ elements: [ChainElement], numBuffers: UInt16, keepHeader: Bool, memory: GuestMemory) {
        var header: (UInt64, UInt32) = (0, (UInt32(numBuffers) << 16).littleEndian)
        withUnsafeBytes(of: &header) { raw in
            let bytes = UnsafeRawBufferPointer(rebasing: raw[0..<VioNet.headerSize])
            var cursor = ChainCursor(memory: memory, elements: elements)
            if keepHeader {
                cursor.skip(10)
                cursor.write(UnsafeRawBufferPointer(rebasing: bytes[10..<12]))
            } else {
                cursor.write(bytes)
            }
        }
    }

    /// Spreads the pending frame's tail over as many buffers as it needs and
    /// returns them with the first together; false when the guest has not
    /// enough yet (the frame and the buffers taken wait for more).
    private func placeMergeable(queue: Virtqueue, keepHeader: Bool) throws -> Bool {
        var capacity = held.dropFirst().reduce(UInt64(0)) { $0 + $1.writable.reduce(0) { $0 + UInt64($1.length) } }
        while capacity < UInt64(pendingLength) {
            guard held.count < Int(queue.size) else {
                // More than the whole ring holds: the frame cannot fit.
                droppedReceiveFrames += 1
                completed += held.map { (head: $0.head, length: UInt32(0)) }
                held = []
                pendingLength = 0
                return true
            }
            guard let request = try queue.popRequest() else { return false }
            if request.writableLength == 0 {
                completed.append((request.head, 0))
                continue
            }
            held.append((request.head, request.writable))
            capacity += request.writableLength
        }
        var entries: [(head: UInt16, length: UInt32)] = [(held[0].head, firstLength)]
        var offset = 0
        for request in held.dropFirst() {
            var cursor = ChainCursor(memory: queue.memory, elements: request.writable)
            let n = offset < pendingLength ? cursor.write(UnsafeRawBufferPointer(rebasing: receiveBuffer[offset..<pendingLength])) : 0
            entries.append((request.head, UInt32(n)))
            offset += n
        }
        finishHeader(held[0].writable, numBuffers: UInt16(held.count), keepHeader: keepHeader, memory: queue.memory)
        completed += entries
        held = []
        pendingLength = 0
        return true
    }

    /// The guest's transmit header asks only for offloads that were
    /// negotiated, within the frame (the kernel checks again; a refused
    /// frame is dropped here instead of failing the write).
    static func validTransmitHeader(_ h: UnsafeRawBufferPointer, frameLength: Int, features: UInt64) -> Bool {
        let flags = h[0], gso = h[1]
        let gsoSize = Int(h[4]) | Int(h[5]) << 8
        let csumStart = Int(h[6]) | Int(h[7]) << 8, csumOffset = Int(h[8]) | Int(h[9]) << 8
        guard flags & ~1 == 0 else { return false }                 // only NEEDS_CSUM
        if flags & 1 != 0 {
            guard features & VirtioNetFeature.csum != 0, csumStart + csumOffset + 2 <= frameLength else { return false }
        }
        switch gso {
        case 0: return true
        case 1: return features & VirtioNetFeature.hostTSO4 != 0 && flags & 1 != 0 && gsoSize > 0
        case 4: return features & VirtioNetFeature.hostTSO6 != 0 && flags & 1 != 0 && gsoSize > 0
        default: return false                                       // UDP, ECN: not offered
        }
    }

    /// Puts a frame vionet made (a DHCP reply) into the guest's next
    /// receive buffer; without one it is dropped, as on a wire (the
    /// client asks again).
    private func deliver(_ frame: [UInt8]) {
        host?.withQueue(VioNet.receiveQueue) { queue in
            // The chain the receive loop took and is waiting with, else the next.
            if chainHead == nil { _ = try takeChain(queue) }
            guard let head = chainHead else {
                droppedReceiveFrames += 1
                return
            }
            chainHead = nil
            var header = [UInt8](repeating: 0, count: VioNet.headerSize)
            header[10] = 1
            let whole = header + frame
            guard chain.reduce(UInt64(0), { $0 + UInt64($1.length) }) >= UInt64(whole.count) else {
                droppedReceiveFrames += 1
                try queue.pushUsed(head: head, length: 0)
                return
            }
            var cursor = ChainCursor(memory: queue.memory, elements: chain)
            let written = whole.withUnsafeBytes { cursor.write($0) }
            try queue.pushUsed(head: head, length: UInt32(written))
            dhcpReplies += 1
        }
    }

    /// Whether transmitted frames are looked at whole (the DHCP server of a
    /// `local interface`): they are then copied out of the guest first.
    /// Frame hooks added next to the DHCP one belong here too.
    private var inspectsFrames: Bool { local != nil }

    /// Frames from the guest to the tap. vionet copies out of the guest what
    /// it checks and sends (the header, the Ethernet header: the guest
    /// cannot change them after the check); the rest goes to the tap with
    /// writev straight from the guest's buffers, unless a frame hook needs
    /// the whole frame. Used entries are published in batches, each only
    /// after its frames were written.
    private func transmitFrames(queue: Virtqueue) throws {
        defer {
            if !transmitted.isEmpty {
                _ = try? queue.pushUsed(transmitted)
                transmitted.removeAll(keepingCapacity: true)
            }
            transmittedBytes = 0
        }
        // Fixed while the driver is ready: looked up once per call, not per frame.
        let features = negotiated
        while true {
            if transmitted.count >= VioNet.publishBatch || transmittedBytes >= VioNet.publishBytes {
                try queue.pushUsed(transmitted)
                transmitted.removeAll(keepingCapacity: true)
                transmittedBytes = 0
            }
            guard var walk = try queue.popChain() else { return }
            var length: UInt64 = 0
            defer {
                transmitted.append((walk.head, 0))
                transmittedBytes += Int(min(length, UInt64(Int32.max)))
            }
            // The readable buffers (storage reused from frame to frame).
            transmitElements.removeAll(keepingCapacity: true)
            while let element = try walk.next() {
                if element.isDeviceWritable { continue }
                transmitElements.append(element)
                length += UInt64(element.length)
            }
            guard length >= UInt64(VioNet.headerSize + VioNet.ethernetHeaderSize),
                  length <= UInt64(VioNet.headerSize + VioNet.maxFrameSize) else {
                droppedTransmitFrames += 1
                continue
            }
            let frameLength = Int(length)
            let whole = inspectsFrames || transmitElements.count >= VioNet.maxReceiveVectors
            let copied = whole ? frameLength : VioNet.headerSize + VioNet.ethernetHeaderSize
            var cursor = ChainCursor(memory: queue.memory, elements: transmitElements)
            guard cursor.read(into: UnsafeMutableRawBufferPointer(rebasing: frameBuffer[0..<copied])) == copied else {
                droppedTransmitFrames += 1      // cannot happen: the chain was checked
                continue
            }
            // The guest's header goes to the tap only when offloads were
            // negotiated, and only asking for what was; otherwise nothing of
            // it is taken.
            if backend.offloadCapable && features & VirtioNetFeature.hostOffloads != 0 {
                let header = UnsafeRawBufferPointer(rebasing: frameBuffer[0..<VioNet.headerSize])
                guard VioNet.validTransmitHeader(header, frameLength: frameLength - VioNet.headerSize,
                                                 features: features) else {
                    droppedTransmitFrames += 1
                    continue
                }
                frameBuffer[10] = 0; frameBuffer[11] = 0
            } else {
                memset(frameBuffer.baseAddress!, 0, VioNet.headerSize)
            }
            if lockedLinkAddress {
                let source = VioNet.headerSize + 6
                guard frameBuffer[source..<source + 6].elementsEqual(mac) else {
                    droppedTransmitFrames += 1
                    continue
                }
            }
            if let local {
                let frame = UnsafeRawBufferPointer(rebasing: frameBuffer[VioNet.headerSize..<frameLength])
                switch LocalServices.handle(frame: frame, guestMAC: mac, local: local) {
                case .notDHCP: break
                case .drop:
                    droppedTransmitFrames += 1
                    continue
                case .reply(let reply):
                    deliver(reply)
                    continue
                }
            }
            do {
                if whole {
                    try backend.send(UnsafeRawBufferPointer(rebasing: frameBuffer[0..<frameLength]))
                } else {
                    transmitVectors[0] = iovec(iov_base: frameBuffer.baseAddress, iov_len: copied)
                    var count = 1
                    while count < transmitVectors.count, let segment = cursor.nextSegment() {
                        transmitVectors[count] = iovec(iov_base: segment.baseAddress, iov_len: segment.count)
                        count += 1
                    }
                    try backend.send(vectors: UnsafeBufferPointer(rebasing: transmitVectors[0..<count]))
                }
            } catch {
                logBudget.log("\(name): \(error)")
            }
        }
    }
}

extension VioNet {
    public static let model = DeviceModel(
        kind: .net, baseName: "vionet", single: false, presentation: .modern(.network),
        queueSizes: [queueSize, queueSize], backends: [.tap],
        // Frames in and out of the tap with read/write; one ioctl after
        // set-up: TUNSETOFFLOAD, once the guest's features are known.
        syscalls: ["ioctl=\(Tap.setOffloadRequest)"],
        make: { c in
            let tap = try c.backend(.tap)
            try TapBackend.prepareTap(fd: tap)
            let backend = TapBackend(fd: tap, offloadCapable: TapBackend.probeOffloads(fd: tap))
            guard let net = VioNet(name: c.name, backend: backend, mac: c.parameters.mac,
                                   lockedLinkAddress: c.parameters.lockedLladdr) else {
                throw DeviceConstructionError("\(c.name): bad MAC address")
            }
            net.local = c.parameters.local
            return net
        })
}
