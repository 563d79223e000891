// The qcow2 header (QEMU's docs/interop/qcow2.txt), parsed as hostile input:
// every field is bounds-checked against the file and the format's limits,
// all arithmetic is overflow-checked, and nothing here can trap.

/// The first bytes of a qcow2 image: "QFI\xfb".
public let qcow2Magic: [UInt8] = [0x51, 0x46, 0x49, 0xfb]

public struct Qcow2Header: Equatable {
    public var version: UInt32
    public var backingFileOffset: UInt64
    public var backingFileSize: UInt32
    public var clusterBits: UInt32
    public var size: UInt64
    public var cryptMethod: UInt32
    public var l1Size: UInt32
    public var l1TableOffset: UInt64
    public var refcountTableOffset: UInt64
    public var refcountTableClusters: UInt32
    public var nbSnapshots: UInt32
    public var snapshotsOffset: UInt64
    public var incompatibleFeatures: UInt64
    public var compatibleFeatures: UInt64
    public var autoclearFeatures: UInt64
    public var refcountOrder: UInt32
    public var headerLength: UInt32
    public var compressionType: UInt8
    /// The backing file's name as stored (not resolved), if any.
    public var backingFile: String?
    /// The backing format header extension ("raw", "qcow2"), if any.
    public var backingFormat: String?

    // Incompatible feature bits.
    public static let dirtyBit: UInt64 = 1 << 0
    public static let corruptBit: UInt64 = 1 << 1
    public static let externalDataBit: UInt64 = 1 << 2
    public static let compressionTypeBit: UInt64 = 1 << 3
    public static let extendedL2Bit: UInt64 = 1 << 4
    // Compatible: lazy refcounts (bit 0). Autoclear: bitmaps (bit 0), raw external data (bit 1).

    /// Limits QEMU itself enforces (block/qcow2.h).
    public static let maxL1Bytes: UInt64 = 32 << 20        // QCOW_MAX_L1_SIZE
    public static let maxRefcountTableBytes: UInt64 = 8 << 20  // QCOW_MAX_REFTABLE_SIZE
    public static let maxBackingNameLength: UInt32 = 1023
    public static let maxSnapshots: UInt32 = 65536

    public var clusterSize: UInt64 { 1 << UInt64(clusterBits) }
    public var isDirty: Bool { incompatibleFeatures & Self.dirtyBit != 0 }
    public var isCorrupt: Bool { incompatibleFeatures & Self.corruptBit != 0 }
    public var refcountBits: UInt64 { 1 << UInt64(refcountOrder) }
    /// Entries per L2 table (standard 8-byte entries).
    public var l2Entries: UInt64 { clusterSize / 8 }
    /// Bytes of guest space one L2 table maps.
    public var l2Coverage: UInt64 { clusterSize * l2Entries }

    /// How many bytes to read to parse a header (the first cluster at most:
    /// the header, its extensions and the backing name all live there).
    public static let probeLength = 64 * 1024

    /// Whether `bytes` start with the qcow2 magic.
    public static func hasMagic(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 4 && Array(bytes[0..<4]) == qcow2Magic
    }

    /// Parses the header from the start of the file (`bytes`: at least the
    /// fixed header; give the first cluster, or 64 KiB, to get the backing
    /// name and extensions). `fileSize` bounds every offset.
    public static func parse(_ bytes: [UInt8], fileSize: UInt64) throws -> Qcow2Header {
        try bytes.withUnsafeBytes { try parse($0, fileSize: fileSize) }
    }

    static func parse(_ b: UnsafeRawBufferPointer, fileSize: UInt64) throws -> Qcow2Header {
        guard b.count >= 72 else { throw DiskImageError.invalid("file too short for a qcow2 header") }
        guard b[0] == 0x51, b[1] == 0x46, b[2] == 0x49, b[3] == 0xfb else {
            throw DiskImageError.invalid("not a qcow2 image (bad magic)")
        }
        let version = be32(b, 4)
        guard version == 2 || version == 3 else {
            throw DiskImageError.unsupported("version \(version)")
        }
        var h = Qcow2Header(
            version: version, backingFileOffset: be64(b, 8), backingFileSize: be32(b, 16),
            clusterBits: be32(b, 20), size: be64(b, 24), cryptMethod: be32(b, 32), l1Size: be32(b, 36),
            l1TableOffset: be64(b, 40), refcountTableOffset: be64(b, 48), refcountTableClusters: be32(b, 56),
            nbSnapshots: be32(b, 60), snapshotsOffset: be64(b, 64), incompatibleFeatures: 0,
            compatibleFeatures: 0, autoclearFeatures: 0, refcountOrder: 4, headerLength: 72,
            compressionType: 0, backingFile: nil, backingFormat: nil)
        guard (9...21).contains(h.clusterBits) else {
            throw DiskImageError.invalid("cluster_bits \(h.clusterBits) is outside 9..21")
        }
        let cs = h.clusterSize
        if version == 3 {
            guard b.count >= 104 else { throw DiskImageError.invalid("file too short for a qcow2 v3 header") }
            h.incompatibleFeatures = be64(b, 72)
            h.compatibleFeatures = be64(b, 80)
            h.autoclearFeatures = be64(b, 88)
            h.refcountOrder = be32(b, 96)
            h.headerLength = be32(b, 100)
            guard h.headerLength >= 104, UInt64(h.headerLength) <= cs else {
                throw DiskImageError.invalid("header_length \(h.headerLength) is invalid")
            }
            if h.headerLength > 104 {
                guard b.count > 104 else { throw DiskImageError.invalid("file too short for its header_length") }
                h.compressionType = b[104]
            }
            guard h.refcountOrder <= 6 else {
                throw DiskImageError.invalid("refcount_order \(h.refcountOrder) is larger than 6")
            }
        }
        guard h.cryptMethod == 0 else { throw DiskImageError.unsupported("encryption") }

        // Header extensions: after the header, up to the backing name or the
        // end of the first cluster, whichever comes first.
        var extEnd = min(cs, UInt64(b.count))
        if h.backingFileOffset != 0 { extEnd = min(extEnd, h.backingFileOffset) }
        var at = UInt64(h.headerLength)
        var featureNames: [UInt64: String] = [:]
        while at + 8 <= extEnd {
            let type = be32(b, Int(at))
            let length = UInt64(be32(b, Int(at) + 4))
            if type == 0 { break }
            let dataStart = at + 8
            guard length <= extEnd - dataStart else {
                throw DiskImageError.invalid("header extension 0x\(String(type, radix: 16)) overruns the header cluster")
            }
            let data = Array(b[Int(dataStart)..<Int(dataStart + length)])
            switch type {
            case 0xe279_2aca:
                h.backingFormat = String(decoding: data, as: UTF8.self)
            case 0x6803_f857:
                // Feature name table: 48-byte entries (type, bit, 46-byte name).
                var i = 0
                while i + 48 <= data.count {
                    if data[i] == 0 {
                        let nameBytes = data[(i + 2)..<(i + 48)].prefix { $0 != 0 }
                        featureNames[UInt64(data[i + 1])] = String(decoding: nameBytes, as: UTF8.self)
                    }
                    i += 48
                }
            case 0x0537_be77:
                throw DiskImageError.unsupported("encryption")
            case 0x4441_5441:
                throw DiskImageError.unsupported("external data file")
            default:
                break  // bitmaps and unknown extensions: ignored, as QEMU does
            }
            // Data is padded to a multiple of 8 bytes.
            let padded = (length + 7) & ~UInt64(7)
            guard padded <= extEnd - dataStart else { break }
            at = dataStart + padded
        }

        // Incompatible features: the ones we know and refuse, then the rest.
        let known = Self.dirtyBit | Self.corruptBit
        if h.incompatibleFeatures & Self.externalDataBit != 0 { throw DiskImageError.unsupported("external data file") }
        if h.incompatibleFeatures & Self.compressionTypeBit != 0 || h.compressionType != 0 {
            throw DiskImageError.unsupported("compression type \(h.compressionType == 1 ? "zstd" : String(h.compressionType))")
        }
        if h.incompatibleFeatures & Self.extendedL2Bit != 0 { throw DiskImageError.unsupported("extended L2 entries") }
        let unknown = h.incompatibleFeatures & ~known
        if unknown != 0 {
            let bit = UInt64(unknown.trailingZeroBitCount)
            throw DiskImageError.unsupported(featureNames[bit] ?? "unknown incompatible feature bit \(bit)")
        }
        if h.autoclearFeatures & 2 != 0 { throw DiskImageError.unsupported("raw external data") }

        // Sizes and tables, against the format's limits and the file.
        guard h.size <= UInt64(Int64.max) else { throw DiskImageError.invalid("virtual size \(h.size) is too large") }
        guard UInt64(h.l1Size) * 8 <= maxL1Bytes else {
            throw DiskImageError.invalid("L1 table of \(h.l1Size) entries is too large")
        }
        let coverage = h.l2Coverage
        let needed = h.size / coverage + (h.size % coverage == 0 ? 0 : 1)
        guard UInt64(h.l1Size) >= needed else {
            throw DiskImageError.invalid("L1 table of \(h.l1Size) entries is too small for the virtual size \(h.size)")
        }
        if h.l1Size > 0 {
            try checkTable(offset: h.l1TableOffset, length: UInt64(h.l1Size) * 8, cs: cs, fileSize: fileSize, what: "L1 table")
        }
        guard h.refcountTableClusters > 0 else { throw DiskImageError.invalid("refcount table has no clusters") }
        let (refBytes, o1) = UInt64(h.refcountTableClusters).multipliedReportingOverflow(by: cs)
        guard !o1, refBytes <= maxRefcountTableBytes else {
            throw DiskImageError.invalid("refcount table of \(h.refcountTableClusters) clusters is too large")
        }
        try checkTable(offset: h.refcountTableOffset, length: refBytes, cs: cs, fileSize: fileSize, what: "refcount table")
        if h.l1Size > 0, overlaps(h.l1TableOffset, UInt64(h.l1Size) * 8, h.refcountTableOffset, refBytes) {
            throw DiskImageError.invalid("L1 table overlaps the refcount table")
        }
        guard h.nbSnapshots <= maxSnapshots else { throw DiskImageError.invalid("too many snapshots (\(h.nbSnapshots))") }
        if h.nbSnapshots > 0 {
            guard h.snapshotsOffset % cs == 0, h.snapshotsOffset >= cs, h.snapshotsOffset < fileSize else {
                throw DiskImageError.invalid("snapshot table offset \(h.snapshotsOffset) is invalid")
            }
        }

        // The backing file's name lives in the first cluster.
        if h.backingFileOffset != 0 {
            guard h.backingFileSize <= maxBackingNameLength else {
                throw DiskImageError.invalid("backing file name of \(h.backingFileSize) bytes is too long (at most \(maxBackingNameLength))")
            }
            // The offset is not bounded yet: check the sum for overflow.
            let (end, overflow) = h.backingFileOffset.addingReportingOverflow(UInt64(h.backingFileSize))
            guard !overflow, h.backingFileOffset >= UInt64(h.headerLength), end <= cs else {
                throw DiskImageError.invalid("backing file name at offset \(h.backingFileOffset) is outside the header cluster")
            }
            guard end <= UInt64(b.count) else {
                throw DiskImageError.invalid("backing file name at offset \(h.backingFileOffset) is past the end of the file")
            }
            let name = Array(b[Int(h.backingFileOffset)..<Int(end)])
            guard !name.isEmpty, !name.contains(0) else {
                throw DiskImageError.invalid("backing file name is empty or contains a NUL byte")
            }
            h.backingFile = String(decoding: name, as: UTF8.self)
        }
        return h
    }

    /// A cluster-aligned table that lies inside the file and not in the header cluster.
    static func checkTable(offset: UInt64, length: UInt64, cs: UInt64, fileSize: UInt64, what: String) throws {
        guard offset % cs == 0 else { throw DiskImageError.invalid("\(what) offset \(offset) is not cluster-aligned") }
        guard offset >= cs else { throw DiskImageError.invalid("\(what) overlaps the header") }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= fileSize else {
            throw DiskImageError.invalid("\(what) at offset \(offset) is past the end of the file")
        }
    }

    static func overlaps(_ a: UInt64, _ aLength: UInt64, _ b: UInt64, _ bLength: UInt64) -> Bool {
        a < b &+ bLength && b < a &+ aLength
    }
}
