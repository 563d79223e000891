// vhost-user messages (QEMU docs/interop/vhost-user.rst): a 12-byte header
// (request u32, flags u32, size u32, host byte order) and a payload of
// `size` bytes. Every payload has one decoder that checks its exact size
// and one encoder; a frontend's bytes never trap, they fail to decode.

/// Front-end requests this backend knows by number.
public enum VhostUserRequest: UInt32, Sendable, CaseIterable {
    case getFeatures = 1
    case setFeatures = 2
    case setOwner = 3
    case resetOwner = 4
    case setMemTable = 5
    case setLogBase = 6
    case setLogFD = 7
    case setVringNum = 8
    case setVringAddr = 9
    case setVringBase = 10
    case getVringBase = 11
    case setVringKick = 12
    case setVringCall = 13
    case setVringErr = 14
    case getProtocolFeatures = 15
    case setProtocolFeatures = 16
    case getQueueNum = 17
    case setVringEnable = 18
    case sendRARP = 19
    case netSetMTU = 20
    case setBackendReqFD = 21
    case iotlbMessage = 22
    case setVringEndian = 23
    case getConfig = 24
    case setConfig = 25
    case createCryptoSession = 26
    case closeCryptoSession = 27
    case postcopyAdvise = 28
    case postcopyListen = 29
    case postcopyEnd = 30
    case getInflightFD = 31
    case setInflightFD = 32
    case gpuSetSocket = 33
    case resetDevice = 34
    case vringKick = 35
    case getMaxMemSlots = 36
    case addMemReg = 37
    case remMemReg = 38
    case setStatus = 39
    case getStatus = 40
}

public enum VhostUserFlags {
    public static let versionMask: UInt32 = 0x3
    public static let version: UInt32 = 0x1
    public static let reply: UInt32 = 1 << 2
    public static let needReply: UInt32 = 1 << 3
}

/// VHOST_USER_PROTOCOL_F_* as bit masks.
public enum VhostUserProtocolFeature {
    public static let mq: UInt64 = 1 << 0
    public static let logShmfd: UInt64 = 1 << 1
    public static let replyAck: UInt64 = 1 << 3
    public static let config: UInt64 = 1 << 9
    public static let inflightShmfd: UInt64 = 1 << 12
    public static let resetDevice: UInt64 = 1 << 13
    public static let status: UInt64 = 1 << 16
}

public enum VhostUserLimits {
    /// VHOST_USER_F_PROTOCOL_FEATURES, in the virtio feature word.
    public static let protocolFeaturesBit: UInt64 = 1 << 30
    /// VHOST_MEMORY_BASELINE_NREGIONS: regions in one SET_MEM_TABLE.
    public static let maxMemoryRegions = 8
    /// The largest payload accepted (the largest defined is far smaller).
    public static let maxPayload = 4096
    /// Device configuration space (GET/SET_CONFIG) is at most 256 bytes.
    public static let maxConfigSize = 256
    /// At most this many descriptors with one message.
    public static let maxFDs = 8
}

public struct VhostUserDecodeError: Error, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public struct VhostUserHeader: Equatable, Sendable {
    public static let size = 12
    public var request: UInt32
    public var flags: UInt32
    public var size: UInt32

    public init(request: UInt32, flags: UInt32, size: UInt32) {
        self.request = request
        self.flags = flags
        self.size = size
    }

    public func encoded() -> [UInt8] {
        var w = PayloadWriter()
        w.u32(request); w.u32(flags); w.u32(size)
        return w.bytes
    }

    /// The header at the start of `bytes`; checks the version and the size
    /// limit, not what the request is.
    public init(decoding bytes: ArraySlice<UInt8>) throws {
        var r = PayloadReader(bytes)
        guard bytes.count >= Self.size else { throw VhostUserDecodeError("truncated header (\(bytes.count) bytes)") }
        request = try r.u32(); flags = try r.u32(); size = try r.u32()
        guard flags & VhostUserFlags.versionMask == VhostUserFlags.version else {
            throw VhostUserDecodeError("header version \(flags & VhostUserFlags.versionMask), not 1")
        }
        guard size <= UInt32(VhostUserLimits.maxPayload) else {
            throw VhostUserDecodeError("payload of \(size) bytes (the limit is \(VhostUserLimits.maxPayload))")
        }
    }
}

/// One message: header fields, payload, and the descriptors that came with it.
public struct VhostUserMessage {
    public var request: UInt32
    public var flags: UInt32
    public var payload: [UInt8]
    public var fds: [Int32]

    public init(request: UInt32, flags: UInt32 = VhostUserFlags.version, payload: [UInt8] = [], fds: [Int32] = []) {
        self.request = request
        self.flags = flags
        self.payload = payload
        self.fds = fds
    }

    public var needsReply: Bool { flags & VhostUserFlags.needReply != 0 }

    public func encoded() -> [UInt8] {
        VhostUserHeader(request: request, flags: flags, size: UInt32(payload.count)).encoded() + payload
    }
}

/// Little-endian (host order on every platform this runs on) payload reader
/// that throws instead of reading past the end.
public struct PayloadReader {
    let bytes: ArraySlice<UInt8>
    var position: Int

    public init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        self.position = bytes.startIndex
    }

    public init(_ bytes: [UInt8]) { self.init(bytes[...]) }

    public var remaining: Int { bytes.endIndex - position }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let n = MemoryLayout<T>.size
        guard remaining >= n else { throw VhostUserDecodeError("payload too short") }
        var value: T = 0
        for i in 0..<n { value |= T(bytes[position + i]) << (8 * i) }
        position += n
        return value
    }

    public mutating func u8() throws -> UInt8 { try integer(UInt8.self) }
    public mutating func u16() throws -> UInt16 { try integer(UInt16.self) }
    public mutating func u32() throws -> UInt32 { try integer(UInt32.self) }
    public mutating func u64() throws -> UInt64 { try integer(UInt64.self) }

    public mutating func take(_ count: Int) throws -> [UInt8] {
        guard count >= 0, remaining >= count else { throw VhostUserDecodeError("payload too short") }
        defer { position += count }
        return Array(bytes[position..<position + count])
    }
}

public struct PayloadWriter {
    public var bytes: [UInt8] = []
    public init() {}
    mutating func integer<T: FixedWidthInteger>(_ value: T) {
        for i in 0..<MemoryLayout<T>.size { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * i))) }
    }
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { integer(v) }
    public mutating func u32(_ v: UInt32) { integer(v) }
    public mutating func u64(_ v: UInt64) { integer(v) }
}

/// Checks that a payload is exactly `size` bytes.
func expectSize(_ payload: [UInt8], _ size: Int, _ what: String) throws {
    guard payload.count == size else {
        throw VhostUserDecodeError("\(what): payload of \(payload.count) bytes, expected \(size)")
    }
}

public enum U64Payload {
    public static func decode(_ payload: [UInt8], _ what: String) throws -> UInt64 {
        try expectSize(payload, 8, what)
        var r = PayloadReader(payload)
        return try r.u64()
    }

    public static func encode(_ value: UInt64) -> [UInt8] {
        var w = PayloadWriter(); w.u64(value); return w.bytes
    }
}

/// struct vhost_vring_state.
public struct VringState: Equatable, Sendable {
    public var index: UInt32
    public var num: UInt32
    public init(index: UInt32, num: UInt32) { self.index = index; self.num = num }

    public init(decoding payload: [UInt8]) throws {
        try expectSize(payload, 8, "vring state")
        var r = PayloadReader(payload)
        index = try r.u32(); num = try r.u32()
    }

    public func encoded() -> [UInt8] { var w = PayloadWriter(); w.u32(index); w.u32(num); return w.bytes }
}

/// struct vhost_vring_addr: the frontend's user addresses of the rings.
public struct VringAddress: Equatable, Sendable {
    public var index: UInt32
    public var flags: UInt32
    public var descriptor: UInt64
    public var used: UInt64
    public var available: UInt64
    public var log: UInt64

    public init(index: UInt32, flags: UInt32 = 0, descriptor: UInt64, used: UInt64, available: UInt64, log: UInt64 = 0) {
        self.index = index; self.flags = flags; self.descriptor = descriptor
        self.used = used; self.available = available; self.log = log
    }

    public init(decoding payload: [UInt8]) throws {
        try expectSize(payload, 40, "vring address")
        var r = PayloadReader(payload)
        index = try r.u32(); flags = try r.u32()
        descriptor = try r.u64(); used = try r.u64(); available = try r.u64(); log = try r.u64()
    }

    public func encoded() -> [UInt8] {
        var w = PayloadWriter()
        w.u32(index); w.u32(flags); w.u64(descriptor); w.u64(used); w.u64(available); w.u64(log)
        return w.bytes
    }
}

/// The u64 of SET_VRING_KICK/CALL/ERR: queue index and "no descriptor".
public struct VringFileIndex: Equatable, Sendable {
    public static let noFD: UInt64 = 1 << 8
    public var index: Int
    public var hasFD: Bool

    public init(index: Int, hasFD: Bool) { self.index = index; self.hasFD = hasFD }

    public init(decoding payload: [UInt8]) throws {
        let value = try U64Payload.decode(payload, "vring file")
        guard value & ~(0xff | Self.noFD) == 0 else {
            throw VhostUserDecodeError("vring file value 0x\(String(value, radix: 16)) has unknown bits")
        }
        index = Int(value & 0xff)
        hasFD = value & Self.noFD == 0
    }

    public func encoded() -> [UInt8] { U64Payload.encode(UInt64(index) | (hasFD ? 0 : Self.noFD)) }
}

/// struct vhost_user_memory_region.
public struct VhostMemoryRegionDescription: Equatable, Sendable {
    public var guestPhysicalAddress: UInt64
    public var size: UInt64
    public var userAddress: UInt64
    public var mmapOffset: UInt64

    public init(guestPhysicalAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) {
        self.guestPhysicalAddress = guestPhysicalAddress; self.size = size
        self.userAddress = userAddress; self.mmapOffset = mmapOffset
    }
}

/// SET_MEM_TABLE: u32 nregions, u32 padding, then the regions.
public struct MemoryTablePayload: Equatable, Sendable {
    public var regions: [VhostMemoryRegionDescription]

    public init(regions: [VhostMemoryRegionDescription]) { self.regions = regions }

    public init(decoding payload: [UInt8]) throws {
        var r = PayloadReader(payload)
        guard payload.count >= 8 else { throw VhostUserDecodeError("memory table: payload of \(payload.count) bytes") }
        let count = Int(try r.u32())
        _ = try r.u32()
        guard count >= 1, count <= VhostUserLimits.maxMemoryRegions else {
            throw VhostUserDecodeError("memory table with \(count) regions (1 to \(VhostUserLimits.maxMemoryRegions))")
        }
        // QEMU sends the whole array of 8; a frontend may send just `count`.
        guard payload.count == 8 + 32 * count || payload.count == 8 + 32 * VhostUserLimits.maxMemoryRegions else {
            throw VhostUserDecodeError("memory table: payload of \(payload.count) bytes for \(count) regions")
        }
        regions = try (0..<count).map { _ in
            VhostMemoryRegionDescription(guestPhysicalAddress: try r.u64(), size: try r.u64(),
                                         userAddress: try r.u64(), mmapOffset: try r.u64())
        }
    }

    public func encoded() -> [UInt8] {
        var w = PayloadWriter()
        w.u32(UInt32(regions.count)); w.u32(0)
        for m in regions { w.u64(m.guestPhysicalAddress); w.u64(m.size); w.u64(m.userAddress); w.u64(m.mmapOffset) }
        return w.bytes
    }
}

/// GET/SET_CONFIG: u32 offset, u32 size, u32 flags, size bytes.
public struct ConfigPayload: Equatable, Sendable {
    public var offset: UInt32
    public var flags: UInt32
    public var data: [UInt8]

    public init(offset: UInt32, flags: UInt32 = 0, data: [UInt8]) {
        self.offset = offset; self.flags = flags; self.data = data
    }

    public init(decoding payload: [UInt8]) throws {
        var r = PayloadReader(payload)
        guard payload.count >= 12 else { throw VhostUserDecodeError("config: payload of \(payload.count) bytes") }
        offset = try r.u32()
        let size = Int(try r.u32())
        flags = try r.u32()
        guard size <= VhostUserLimits.maxConfigSize, payload.count == 12 + size,
              UInt64(offset) + UInt64(size) <= UInt64(VhostUserLimits.maxConfigSize) else {
            throw VhostUserDecodeError("config: offset \(offset) size \(size) in a payload of \(payload.count) bytes")
        }
        data = try r.take(size)
    }

    public func encoded() -> [UInt8] {
        var w = PayloadWriter()
        w.u32(offset); w.u32(UInt32(data.count)); w.u32(flags)
        return w.bytes + data
    }
}

/// GET/SET_INFLIGHT_FD: u64 mmap_size, u64 mmap_offset, u16 num_queues,
/// u16 queue_size, padded to 24 bytes as QEMU's struct is (20 accepted).
public struct InflightDescription: Equatable, Sendable {
    public var mmapSize: UInt64
    public var mmapOffset: UInt64
    public var queueCount: UInt16
    public var queueSize: UInt16

    public init(mmapSize: UInt64, mmapOffset: UInt64, queueCount: UInt16, queueSize: UInt16) {
        self.mmapSize = mmapSize; self.mmapOffset = mmapOffset
        self.queueCount = queueCount; self.queueSize = queueSize
    }

    public init(decoding payload: [UInt8]) throws {
        guard payload.count == 24 || payload.count == 20 else {
            throw VhostUserDecodeError("inflight description: payload of \(payload.count) bytes, expected 24")
        }
        var r = PayloadReader(payload)
        mmapSize = try r.u64(); mmapOffset = try r.u64(); queueCount = try r.u16(); queueSize = try r.u16()
    }

    public func encoded() -> [UInt8] {
        var w = PayloadWriter()
        w.u64(mmapSize); w.u64(mmapOffset); w.u16(queueCount); w.u16(queueSize); w.u32(0)
        return w.bytes
    }
}

/// Splits a byte stream into messages and gives each the descriptors
/// sent with it. A unix stream socket hands descriptors to the read that
/// takes the last byte of their sendmsg (it may also carry earlier messages
/// that had none): so a batch of descriptors belongs to the message that
/// contains the last byte of the read that delivered it.
public struct VhostUserFramer {
    public private(set) var buffer: [UInt8] = []
    /// Stream offset of buffer[0].
    private var consumed: UInt64 = 0
    /// (stream offset of the last byte of the read, its descriptors)
    private var batches: [(end: UInt64, fds: [Int32])] = []

    public init() {}

    public var pendingFDs: [Int32] { batches.flatMap { $0.fds } }

    public mutating func append(_ bytes: ArraySlice<UInt8>, fds: [Int32]) {
        buffer += bytes
        if !fds.isEmpty { batches.append((consumed + UInt64(buffer.count) - 1, fds)) }
    }

    /// The next complete message, nil when more bytes are needed; throws on
    /// a header that can never be valid (the connection must be closed).
    public mutating func next() throws -> VhostUserMessage? {
        guard buffer.count >= VhostUserHeader.size else { return nil }
        let header = try VhostUserHeader(decoding: buffer[0..<VhostUserHeader.size])
        let total = VhostUserHeader.size + Int(header.size)
        guard buffer.count >= total else { return nil }
        let end = consumed + UInt64(total)   // one past the message's last byte
        var fds: [Int32] = []
        while let first = batches.first, first.end < end {
            fds += first.fds
            batches.removeFirst()
        }
        let message = VhostUserMessage(request: header.request, flags: header.flags,
                                       payload: Array(buffer[VhostUserHeader.size..<total]), fds: fds)
        buffer.removeFirst(total)
        consumed = end
        return message
    }

    /// Descriptors received but not handed out (to close on disconnect).
    public mutating func takePendingFDs() -> [Int32] {
        defer { batches = [] }
        return pendingFDs
    }
}
