/// Small, size-checked payload codecs shared by the roles (no Foundation).
public struct WireWriter {
    public private(set) var bytes: [UInt8] = []
    /// Room for a typical payload at once (a status reply writes one per
    /// VM: growing the array step by step cost more than the encoding).
    public init() { bytes.reserveCapacity(128) }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    public mutating func i32(_ v: Int32) { u32(UInt32(bitPattern: v)) }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    /// u32 length + UTF-8 bytes.
    public mutating func string(_ s: String) {
        u32(UInt32(s.utf8.count))
        bytes.append(contentsOf: s.utf8)
    }
}

public struct WireReader {
    let bytes: [UInt8]
    var offset = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public struct Truncated: Error, CustomStringConvertible {
        public init() {}
        public var description: String { "truncated or malformed payload (or text that is not UTF-8)" }
    }

    public var remaining: Int { bytes.count - offset }

    public mutating func u32() throws -> UInt32 {
        guard remaining >= 4 else { throw Truncated() }
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(bytes[offset + i]) << (8 * UInt32(i)) }
        offset += 4
        return v
    }
    public mutating func i32() throws -> Int32 { Int32(bitPattern: try u32()) }
    public mutating func u64() throws -> UInt64 {
        let lo = UInt64(try u32()), hi = UInt64(try u32())
        return lo | hi << 32
    }
    public mutating func string(max: Int = 16384) throws -> String {
        let n = Int(try u32())
        guard n <= max, n <= remaining else { throw Truncated() }
        // Invalid UTF-8 is refused, not repaired: a repaired string would
        // not be what the peer sent (and could grow past `max`).
        guard let s = String(validating: bytes[offset..<(offset + n)], as: UTF8.self) else {
            throw Truncated()
        }
        offset += n
        return s
    }
}

/// A message payload with one encoder and one decoder. The decoder refuses
/// a payload with bytes left over (vmd's IMSG_SIZE_CHECK, both ways).
public protocol WirePayload {
    func encode(to w: inout WireWriter)
    init(from r: inout WireReader) throws
}

extension WirePayload {
    public func encoded() -> [UInt8] {
        var w = WireWriter()
        encode(to: &w)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        try self.init(from: &r)
        guard r.remaining == 0 else { throw WireReader.Truncated() }
    }
}
