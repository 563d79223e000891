/// Little-endian fields in a byte array: how boot structures are built and how
/// untrusted files are read. Reads past the end return nil, never trap.
struct ByteImage {
    var bytes: [UInt8]

    init(count: Int) { bytes = [UInt8](repeating: 0, count: count) }
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var count: Int { bytes.count }

    // Writers are for structures this code lays out itself: an offset past the
    // end is a bug in the layout tables, so it grows the image rather than trap.
    mutating func put8(_ at: Int, _ v: UInt8) { put(at, UInt64(v), 1) }
    mutating func put16(_ at: Int, _ v: UInt16) { put(at, UInt64(v), 2) }
    mutating func put32(_ at: Int, _ v: UInt32) { put(at, UInt64(v), 4) }
    mutating func put64(_ at: Int, _ v: UInt64) { put(at, v, 8) }
    mutating func putBytes(_ at: Int, _ v: [UInt8]) {
        if at + v.count > bytes.count { bytes += [UInt8](repeating: 0, count: at + v.count - bytes.count) }
        for (i, b) in v.enumerated() { bytes[at + i] = b }
    }
    mutating func putASCII(_ at: Int, _ s: String, width: Int) {
        var v = Array(s.utf8.prefix(width))
        v += [UInt8](repeating: 0x20, count: width - v.count)
        putBytes(at, v)
    }

    private mutating func put(_ at: Int, _ v: UInt64, _ width: Int) {
        putBytes(at, (0..<width).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) })
    }

    func u8(_ at: Int) -> UInt8? { get(at, 1).map { UInt8($0) } }
    func u16(_ at: Int) -> UInt16? { get(at, 2).map { UInt16($0) } }
    func u32(_ at: Int) -> UInt32? { get(at, 4).map { UInt32($0) } }
    func u64(_ at: Int) -> UInt64? { get(at, 8) }

    private func get(_ at: Int, _ width: Int) -> UInt64? {
        guard at >= 0, width <= bytes.count, at <= bytes.count - width else { return nil }
        var v: UInt64 = 0
        for i in 0..<width { v |= UInt64(bytes[at + i]) << (8 * UInt64(i)) }
        return v
    }

    /// The byte sum of `range` (for table checksums).
    func sum(_ range: Range<Int>) -> UInt8 {
        var s: UInt8 = 0
        for i in range where i >= 0 && i < bytes.count { s &+= bytes[i] }
        return s
    }
}
