import XCTest
@testable import DiskImage

/// qcow2 links (L2 and L1 entries of new clusters) wait in memory and reach
/// the file at a flush, at an operation that frees clusters, or every
/// `pendingLimit` allocations, always after a barrier: reads see them at
/// once, the file without them is consistent (leaked clusters only).
final class Qcow2DeferredMetadataTests: XCTestCase {
    func image(size: UInt64 = 64 << 20, clusterBits: UInt32 = 16) throws -> MemoryImageFile {
        let file = MemoryImageFile()
        var options = Qcow2CreateOptions(size: size)
        options.clusterBits = clusterBits
        try Qcow2Creator.create(options, on: file)
        return file
    }

    func read(_ disk: VirtualDisk, _ offset: UInt64, _ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0xee, count: count)
        try out.withUnsafeMutableBytes { try disk.read(into: $0, at: offset) }
        return out
    }

    func testLinksWaitUntilFlushAndReadsSeeThem() throws {
        let file = try image()
        let disk = try Qcow2Image(file: file, readOnly: false)
        try [UInt8](repeating: 7, count: 4096).withUnsafeBytes { try disk.write(from: $0, at: 1 << 20) }
        XCTAssertTrue(disk.hasPendingMetadata)
        XCTAssertTrue(try read(disk, 1 << 20, 4096).allSatisfy { $0 == 7 }, "reads see the waiting link")
        // The file as a crash would leave it: the cluster is not linked (reads zeroes), and consistent.
        let flushesBefore = file.flushes
        let crashed = try Qcow2Image(file: MemoryImageFile(bytes: file.bytes), readOnly: true)
        XCTAssertTrue(try read(crashed, 1 << 20, 4096).allSatisfy { $0 == 0 })
        try disk.flush()
        XCTAssertFalse(disk.hasPendingMetadata)
        XCTAssertGreaterThanOrEqual(file.flushes - flushesBefore, 2, "a barrier before the L2 entry, one before the L1 entry")
        let reopened = try Qcow2Image(file: MemoryImageFile(bytes: file.bytes), readOnly: true)
        XCTAssertTrue(try read(reopened, 1 << 20, 4096).allSatisfy { $0 == 7 })
    }

    func testBatchesReachTheFileEveryPendingLimitAllocations() throws {
        let file = try image(size: 256 << 20, clusterBits: 12)
        let disk = try Qcow2Image(file: file, readOnly: false)
        let n = Qcow2Image.pendingLimit + 10
        for i in 0..<n {
            try [UInt8](repeating: UInt8(i & 0xff), count: 4096).withUnsafeBytes { try disk.write(from: $0, at: UInt64(i) * 4096) }
        }
        // The first batch is in the file without a flush; the rest waits.
        let crashed = try Qcow2Image(file: MemoryImageFile(bytes: file.bytes), readOnly: true)
        XCTAssertTrue(try read(crashed, 0, 4096).allSatisfy { $0 == 0 })
        var linked = 0
        for i in 0..<n where try read(crashed, UInt64(i) * 4096, 1) == [UInt8(i & 0xff)] { linked += 1 }
        XCTAssertGreaterThan(linked, 0)
        XCTAssertLessThan(linked, n)
        XCTAssertTrue(disk.hasPendingMetadata)
    }

    /// An L2 table evicted from the cache while links into it wait: read
    /// back from the file, it gets them again (else a second write would
    /// allocate the cluster twice).
    func testEvictedTableKeepsWaitingLinks() throws {
        let file = try image(size: 64 << 20, clusterBits: 16)
        let disk = try Qcow2Image(file: file, readOnly: false)
        try [UInt8](repeating: 9, count: 512).withUnsafeBytes { try disk.write(from: $0, at: 0) }
        disk.l2Cache = [:]
        XCTAssertTrue(try read(disk, 0, 512).allSatisfy { $0 == 9 })
        let size = file.bytes.count
        try [UInt8](repeating: 8, count: 512).withUnsafeBytes { try disk.write(from: $0, at: 512) }
        XCTAssertEqual(file.bytes.count, size, "the cluster was written in place, not allocated again")
        try disk.flush()
        let reopened = try Qcow2Image(file: MemoryImageFile(bytes: file.bytes), readOnly: true)
        XCTAssertEqual(try read(reopened, 0, 1024), [UInt8](repeating: 9, count: 512) + [UInt8](repeating: 8, count: 512))
    }

    /// A discard writes L2 entries directly: the waiting ones go first, so
    /// a waiting link never lands over the discard.
    func testDiscardWritesWaitingLinksFirst() throws {
        let file = try image()
        let disk = try Qcow2Image(file: file, readOnly: false)
        try [UInt8](repeating: 5, count: 65536).withUnsafeBytes { try disk.write(from: $0, at: 0) }
        try disk.discard(offset: 0, length: 65536)
        try disk.flush()
        let reopened = try Qcow2Image(file: MemoryImageFile(bytes: file.bytes), readOnly: true)
        XCTAssertTrue(try read(reopened, 0, 65536).allSatisfy { $0 == 0 })
        XCTAssertFalse(disk.hasPendingMetadata)
    }
}
