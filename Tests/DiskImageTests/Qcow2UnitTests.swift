import XCTest
@testable import DiskImage

/// qcow2 on in-memory files: create, write, read back, every refcount width
/// and cluster size, hostile headers.
final class Qcow2UnitTests: XCTestCase {
    func pattern(_ seed: UInt8, _ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: Int(seed) &* 31 &+ $0 / 512) }
    }

    func makeImage(size: UInt64, clusterBits: UInt32 = 16, refcountOrder: UInt32 = 4, version: UInt32 = 3,
                   backingFile: String? = nil, backingFormat: DiskFormat? = nil) throws -> MemoryImageFile {
        let file = MemoryImageFile()
        var options = Qcow2CreateOptions(size: size, backingFile: backingFile, backingFormat: backingFormat)
        options.clusterBits = clusterBits
        options.refcountOrder = refcountOrder
        options.version = version
        try Qcow2Creator.create(options, on: file)
        return file
    }

    func read(_ disk: VirtualDisk, _ offset: UInt64, _ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0xee, count: count)
        try out.withUnsafeMutableBytes { try disk.read(into: $0, at: offset) }
        return out
    }

    func write(_ disk: VirtualDisk, _ bytes: [UInt8], _ offset: UInt64) throws {
        try bytes.withUnsafeBytes { try disk.write(from: $0, at: offset) }
    }

    /// Every cluster's refcount equals the references to it (like qemu-img check).
    func checkRefcounts(_ file: MemoryImageFile, file line: UInt = #line) throws {
        let image = try Qcow2Image(file: file, readOnly: true, requireBacking: false)
        var references: [UInt64: UInt64] = [0: 1]
        let cs = image.clusterSize
        func add(_ offset: UInt64, _ length: UInt64) {
            var c = offset / cs
            while c <= (offset + length - 1) / cs { references[c, default: 0] += 1; c += 1 }
        }
        add(image.header.l1TableOffset, UInt64(image.header.l1Size) * 8)
        add(image.header.refcountTableOffset, UInt64(image.header.refcountTableClusters) * cs)
        for block in image.refcountTable where block != 0 { add(block, cs) }
        for (i, entry) in image.l1.enumerated() where entry & Qcow2Image.l1OffsetMask != 0 {
            let table = entry & Qcow2Image.l1OffsetMask
            add(table, cs)
            for (j, l2) in try image.l2Table(at: table).enumerated() {
                switch try image.decode(l2, l1Index: i, l2Index: j) {
                case .data(let host, _): add(host, cs)
                case .compressed(let offset, let sectors): add(offset & ~511, sectors * 512)
                default: break
                }
            }
        }
        let clusters = (UInt64(file.bytes.count) + cs - 1) / cs
        for c in 0..<max(clusters, (references.keys.max() ?? 0) + 1) {
            XCTAssertEqual(try image.refcount(c), references[c] ?? 0, "cluster \(c)", line: line)
        }
    }

    func testWriteReadEveryRefcountWidthAndSmallClusters() throws {
        for order: UInt32 in 0...6 {
            for bits: UInt32 in [9, 12, 16] {
                let file = try makeImage(size: 8 << 20, clusterBits: bits, refcountOrder: order)
                let image = try Qcow2Image(file: file, readOnly: false)
                let a = pattern(1, 3000), b = pattern(2, 70_000)
                try write(image, a, 1000)
                try write(image, b, 5 << 20)
                try image.close()
                let again = try Qcow2Image(file: file, readOnly: true)
                XCTAssertEqual(try read(again, 1000, a.count), a, "order \(order) bits \(bits)")
                XCTAssertEqual(try read(again, 5 << 20, b.count), b)
                XCTAssertEqual(try read(again, 0, 1000), [UInt8](repeating: 0, count: 1000))
                try checkRefcounts(file)
            }
        }
    }

    func testRefcountTableGrowsWithSmallClusters() throws {
        // 512-byte clusters, 64-bit refcounts: a block counts 64 clusters and
        // the one-cluster table 64 blocks, i.e. 2 MiB; write 6 MiB.
        let file = try makeImage(size: 16 << 20, clusterBits: 9, refcountOrder: 6)
        let image = try Qcow2Image(file: file, readOnly: false)
        let data = pattern(7, 64 * 1024)
        for k in 0..<96 { try write(image, data, UInt64(k) * 64 * 1024 + 17) }
        try image.close()
        let again = try Qcow2Image(file: file, readOnly: true)
        XCTAssertGreaterThan(again.header.refcountTableClusters, 1)
        for k in [0, 50, 95] { XCTAssertEqual(try read(again, UInt64(k) * 64 * 1024 + 17, data.count), data) }
        try checkRefcounts(file)
    }

    func testDiscardAndWriteZeroesFreeClusters() throws {
        for version: UInt32 in [2, 3] {
            let file = try makeImage(size: 4 << 20, version: version)
            let image = try Qcow2Image(file: file, readOnly: false)
            try write(image, pattern(3, 1 << 20), 0)
            try image.discard(offset: 0, length: 256 * 1024)
            try image.writeZeroes(offset: 300 * 1024, length: 300 * 1024)
            XCTAssertEqual(try read(image, 0, 256 * 1024), [UInt8](repeating: 0, count: 256 * 1024))
            XCTAssertEqual(try read(image, 300 * 1024, 300 * 1024), [UInt8](repeating: 0, count: 300 * 1024))
            XCTAssertEqual(try read(image, 256 * 1024, 1024), Array(pattern(3, 1 << 20)[(256 * 1024)..<(257 * 1024)]))
            try image.close()
            try checkRefcounts(file)
        }
    }

    func testBackingReadsAndShorterBase() throws {
        let base = MemoryImageFile(bytes: pattern(9, 100_000))
        let top = try makeImage(size: 1 << 20, clusterBits: 12, backingFile: "base.raw", backingFormat: .raw)
        let disk = try BackingChain.open([(top, .qcow2), (base, .raw)], readOnly: false)
        XCTAssertEqual(try read(disk, 0, 100_000), pattern(9, 100_000))
        XCTAssertEqual(try read(disk, 100_000, 5000), [UInt8](repeating: 0, count: 5000))
        // A partial write keeps the rest of the cluster from the base.
        try write(disk, [1, 2, 3], 4097)
        var expected = pattern(9, 100_000)
        expected[4097] = 1; expected[4098] = 2; expected[4099] = 3
        XCTAssertEqual(try read(disk, 0, 100_000), expected)
        XCTAssertEqual(base.bytes, pattern(9, 100_000), "the base is never written")
        try (disk as? Qcow2Image)?.close()
        try checkRefcounts(top)
    }

    func testFailedWriteLeavesConsistentImage() throws {
        // Stop the file after every possible number of writes during an
        // allocating workload: what is on "disk" must still check clean.
        for limit in 0..<40 {
            let file = try makeImage(size: 64 << 20, clusterBits: 9, refcountOrder: 6)
            let image = try Qcow2Image(file: file, readOnly: false)
            file.writesLeft = limit
            for k in 0..<20 { try? write(image, pattern(UInt8(k), 1536), UInt64(k) * 1_000_003) }
            file.writesLeft = nil
            try checkRefcountsLeaksAllowed(file)
        }
    }

    /// Refcounts may exceed references (leaks), never fall below them.
    func checkRefcountsLeaksAllowed(_ file: MemoryImageFile) throws {
        let image = try Qcow2Image(file: file, readOnly: true, requireBacking: false)
        let cs = image.clusterSize
        for (i, entry) in image.l1.enumerated() where entry & Qcow2Image.l1OffsetMask != 0 {
            let table = entry & Qcow2Image.l1OffsetMask
            XCTAssertGreaterThanOrEqual(try image.refcount(table / cs), 1)
            for (j, l2) in try image.l2Table(at: table).enumerated() {
                if case .data(let host, _) = try image.decode(l2, l1Index: i, l2Index: j) {
                    XCTAssertGreaterThanOrEqual(try image.refcount(host / cs), 1)
                }
            }
        }
    }

    func header(_ mutate: (inout [UInt8]) -> Void) throws -> MemoryImageFile {
        let file = try makeImage(size: 1 << 20)
        mutate(&file.bytes)
        return file
    }

    func openError(_ file: MemoryImageFile, readOnly: Bool = true) -> String {
        do {
            _ = try Qcow2Image(file: file, readOnly: readOnly, requireBacking: false)
            return "opened"
        } catch { return "\(error)" }
    }

    func testHostileHeaders() throws {
        XCTAssertEqual(openError(try header { putBE32(&$0, 20, 40) }), "cluster_bits 40 is outside 9..21")
        XCTAssertEqual(openError(try header { putBE32(&$0, 36, 0xffff_ffff) }), "L1 table of 4294967295 entries is too large")
        XCTAssertEqual(openError(try header { putBE64(&$0, 72, 1 << 2) }), "unsupported qcow2 feature: external data file")
        XCTAssertEqual(openError(try header { putBE64(&$0, 72, 1 << 4) }), "unsupported qcow2 feature: extended L2 entries")
        XCTAssertEqual(openError(try header { putBE64(&$0, 72, 1 << 9) }), "unsupported qcow2 feature: unknown incompatible feature bit 9")
        XCTAssertEqual(openError(try header { putBE32(&$0, 32, 1) }), "unsupported qcow2 feature: encryption")
        XCTAssertEqual(openError(try header { putBE64(&$0, 48, 3 << 16) }), "L1 table overlaps the refcount table")
        XCTAssertEqual(openError(try header { putBE64(&$0, 40, 1 << 40) }), "L1 table at offset 1099511627776 is past the end of the file")
        XCTAssertEqual(openError(try header { putBE64(&$0, 8, 200); putBE32(&$0, 16, 4096) }),
                       "backing file name of 4096 bytes is too long (at most 1023)")
        // Found by the fuzzer: a backing name offset near 2^64 (the sum overflowed).
        XCTAssertEqual(openError(try header { putBE64(&$0, 8, 0xffff_ffff_ffff_ff47); putBE32(&$0, 16, 256) }),
                       "backing file name at offset 18446744073709551431 is outside the header cluster")
        XCTAssertEqual(openError(try header { putBE64(&$0, 72, 2) }, readOnly: false),
                       "image is marked corrupt: refused for writing (repair it with qemu-img check -r all)")
        XCTAssertEqual(openError(try header { putBE64(&$0, 72, 2) }), "opened")
        // L1 entry pointing at the refcount table; L2 entry into the header.
        XCTAssertEqual(openError(try header { putBE64(&$0, 3 << 16, 1 << 16) }),
                       "L1 entry 0: L2 table at offset 65536 overlaps the header, L1 or refcount table")
        let file = try makeImage(size: 1 << 20)
        let image = try Qcow2Image(file: file, readOnly: false)
        try write(image, [1], 0)
        let l2 = image.l1[0] & Qcow2Image.l1OffsetMask
        putBE64(&file.bytes, Int(l2), 1 << 63 | 2 << 16)   // the refcount block
        putBE64(&file.bytes, Int(l2) + 8, 1 << 63 | 1 << 40)  // past the end
        let reopened = try Qcow2Image(file: file, readOnly: false)
        XCTAssertThrowsError(try read(reopened, 0, 1)) { XCTAssertTrue("\($0)".contains("overlaps metadata"), "\($0)") }
        XCTAssertThrowsError(try read(reopened, 65536, 1)) { XCTAssertTrue("\($0)".contains("past the end"), "\($0)") }
        XCTAssertThrowsError(try write(reopened, [1], 0))
        XCTAssertTrue(reopened.isReadOnly, "a metadata overlap found while writing marks the image corrupt")
        XCTAssertNotEqual(file.bytes[79] & 2, 0)
    }

    func testChainResolution() throws {
        var files: [String: MemoryImageFile] = [:]
        files["/img/base.raw"] = MemoryImageFile(bytes: [UInt8](repeating: 1, count: 4096))
        files["/img/mid.qcow2"] = try makeImage(size: 4096, backingFile: "base.raw")
        files["/img/sub/top.qcow2"] = try makeImage(size: 4096, backingFile: "/img/mid.qcow2")
        files["/img/loop.qcow2"] = try makeImage(size: 4096, backingFile: "loop.qcow2")
        files["/img/dots.qcow2"] = try makeImage(size: 4096, backingFile: "../x")
        for k in 0...17 { files["/d/\(k)"] = try makeImage(size: 4096, backingFile: "\(k + 1)") }
        func open(_ path: String) throws -> ImageFile {
            guard let file = files[path] else { throw DiskImageError.io(errno: ENOENT, operation: "open") }
            return file
        }
        func resolve(_ path: String) throws -> [String] {
            try BackingChain.resolve(path: path, file: try open(path), format: nil, writable: true, open: open)
                .map { "\($0.format.rawValue):\($0.path)" }
        }
        XCTAssertEqual(try resolve("/img/sub/top.qcow2"),
                       ["qcow2:/img/sub/top.qcow2", "qcow2:/img/mid.qcow2", "raw:/img/base.raw"])
        XCTAssertThrowsError(try resolve("/img/loop.qcow2")) {
            XCTAssertEqual("\($0)", "/img/loop.qcow2: backing file /img/loop.qcow2 makes a loop")
        }
        XCTAssertThrowsError(try resolve("/img/dots.qcow2")) {
            XCTAssertEqual("\($0)", "/img/dots.qcow2: backing file name ../x contains '..'")
        }
        XCTAssertThrowsError(try resolve("/d/0")) {
            XCTAssertEqual("\($0)", "/d/16: backing chain is deeper than 16 images")
        }
        files["/d/16"] = try makeImage(size: 4096)
        XCTAssertEqual(try resolve("/d/0").count, 17)
        XCTAssertEqual(DiskFormat.splitPrefix("qcow2:/a").format, .qcow2)
        XCTAssertEqual(DiskFormat.splitPrefix("raw:/a").path, "/a")
        XCTAssertNil(DiskFormat.splitPrefix("/a").format)
    }
}
