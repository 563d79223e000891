import Foundation
import Glibc
import XCTest
@testable import DiskImage

/// The order in which qcow2 metadata reaches the file, proven on a log of
/// every pwrite and fdatasync a workload makes (a recording file):
/// - SIGKILL: at every point between operations the file as written so far
///   (the page cache) is consistent and holds every completed write;
/// - power loss: at every point, writes before the last barrier are on the
///   disk and any subset of the later ones, in any order, may be too; every
///   such image is consistent (refcounts never below the references, every
///   link inside the file; leaks allowed), checked here and, on a sample,
///   by `qemu-img check` when it is installed.
final class Qcow2CrashOrderTests: XCTestCase {
    /// A file in memory that logs what is done to it.
    final class RecordingFile: ImageFile {
        enum Op { case write(UInt64, [UInt8]), flush }
        var bytes: [UInt8]
        var log: [Op] = []
        init(bytes: [UInt8]) { self.bytes = bytes }
        /// Not a real descriptor: `mapForWrite` hands out file ranges on
        /// it, and the test writes them through `write` (as the ring would).
        var descriptor: Int32? { 1 << 30 }

        func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
            guard offset < UInt64(bytes.count) else { return 0 }
            let n = min(buffer.count, bytes.count - Int(offset))
            bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + Int(offset), byteCount: n) }
            return n
        }
        func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
            let data = [UInt8](buffer)
            Self.apply(offset, data, to: &bytes)
            log.append(.write(offset, data))
        }
        func flush() throws { log.append(.flush) }
        func size() throws -> UInt64 { UInt64(bytes.count) }

        static func apply(_ offset: UInt64, _ data: [UInt8], to bytes: inout [UInt8]) {
            let end = Int(offset) + data.count
            if end > bytes.count { bytes += [UInt8](repeating: 0, count: end - bytes.count) }
            bytes.replaceSubrange(Int(offset)..<end, with: data)
        }
    }

    struct Rng: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    /// What a crash after `k` logged operations may leave, given `durable`
    /// (the file as of the last barrier before `k`) and `pending` (the
    /// writes after it): all of them, none, one alone, all but one, random
    /// subsets in random orders.
    func crashImages(durable: [UInt8], pending: [Int], log: [RecordingFile.Op], rng: inout Rng) -> [[UInt8]] {
        var choices: [[Int]] = [pending]
        if !pending.isEmpty { choices.append([]) }
        if pending.count > 1 {
            choices.append(pending.reversed())
            for _ in 0..<2 {
                let i = rng.below(pending.count)
                choices.append([pending[i]])
                choices.append(pending.enumerated().filter { $0.offset != i }.map(\.element))
            }
            for _ in 0..<2 { choices.append(pending.filter { _ in rng.below(2) == 0 }.shuffled(using: &rng)) }
        }
        return choices.map { choice in
            var image = durable
            for i in choice { if case .write(let o, let d) = log[i] { RecordingFile.apply(o, d, to: &image) } }
            return image
        }
    }

    /// Consistent as qemu-img check sees it: opens, every link is inside
    /// the file and clear of metadata, no refcount below its references.
    /// Returns the number of leaked clusters.
    func checkConsistent(_ bytes: [UInt8], backing: VirtualDisk?, _ what: String, countLeaks: Bool = false) -> Int? {
        do {
            let image = try Qcow2Image(file: MemoryImageFile(bytes: bytes), readOnly: true, backing: backing)
            let references = try image.computeReferences()
            let fileClusters = (UInt64(bytes.count) + image.clusterSize - 1) / image.clusterSize
            var leaks = 0
            for (c, n) in references {
                guard c < fileClusters else { XCTFail("\(what): cluster \(c) referenced past the end of the file"); return nil }
                let count = try image.refcount(c)
                guard count >= n else { XCTFail("\(what): cluster \(c) has refcount \(count) for \(n) references"); return nil }
            }
            for c in 0..<(countLeaks ? fileClusters : 0) where references[c] == nil { if try image.refcount(c) > 0 { leaks += 1 } }
            return leaks
        } catch {
            XCTFail("\(what): \(error)")
            return nil
        }
    }

    func pattern(_ seed: UInt64, _ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: seed &* 131 &+ UInt64($0 >> 9)) | 1 }
    }

    /// Runs a workload of allocating, partial, in-place writes over a base,
    /// discards, write-zeroes and flushes; checks every crash point.
    func run(clusterBits: UInt32, refcountOrder: UInt32, seed: UInt64, qemuSamples: inout [[UInt8]]) throws {
        let size: UInt64 = 1 << 20
        let baseBytes = pattern(99, Int(size / 2))   // a shorter base: the rest reads as zeroes
        let backing = try RawDisk(file: MemoryImageFile(bytes: baseBytes), readOnly: true)
        let created = MemoryImageFile()
        var options = Qcow2CreateOptions(size: size, backingFile: "base.raw", backingFormat: .raw)
        options.clusterBits = clusterBits
        options.refcountOrder = refcountOrder
        try Qcow2Creator.create(options, on: created)
        let base = created.bytes
        let file = RecordingFile(bytes: base)
        let image = try Qcow2Image(file: file, readOnly: false, backing: backing)
        image.reserveBatch = 3       // small batches: many reservations in the log
        image.reserveLimit = 24
        // As vioblk: the next batch's barrier runs in the background and
        // completes some steps later (or not before the batch is needed).
        var barriersRunning: [() -> Void] = []
        if seed % 2 == 1 { image.asyncBarrier = { barriersRunning.append($0) } }
        var model = [UInt8](repeating: 0, count: Int(size))
        model.replaceSubrange(0..<baseBytes.count, with: baseBytes)
        var rng = Rng(state: seed)
        var boundaries: [(log: Int, model: [UInt8], flushed: Bool)] = [(file.log.count, model, true)]
        let cs = Int(image.clusterSize)
        var sequential = 0
        for step in 0..<50 {
            let offset: Int, length: Int
            switch step % 5 {
            case 0, 1:   // sequential whole clusters (new L2 tables, refcount blocks as it goes)
                offset = sequential; length = min(cs * (1 + rng.below(3)), Int(size) - offset)
                sequential = (sequential + length) % Int(size)
            default:     // anywhere, any length (partial clusters over the base)
                offset = rng.below(Int(size / 512)) * 512; length = min((1 + rng.below(24)) * 512, Int(size) - offset)
            }
            let op = rng.below(12)
            if ProcessInfo.processInfo.environment["QCOW2_CRASH_TRACE"] != nil { print("step \(step): op \(op) at \(offset) length \(length)") }
            switch op {
            case 0:
                try image.discard(offset: UInt64(offset), length: UInt64(length))
                // Advisory: what reads back now is what must survive a kill.
                var now = [UInt8](repeating: 0, count: length)
                try now.withUnsafeMutableBytes { try image.read(into: $0, at: UInt64(offset)) }
                model.replaceSubrange(offset..<offset + length, with: now)
            case 1:
                try image.writeZeroes(offset: UInt64(offset), length: UInt64(length))
                model.replaceSubrange(offset..<offset + length, with: [UInt8](repeating: 0, count: length))
            case 2:
                try image.flush()
            default:
                let data = pattern(UInt64(step) &+ seed, length)
                if step % 2 == 0 {
                    // As vioblk's asynchronous path: clusters the write fills
                    // are allocated and linked first, their data written after.
                    var at = 0
                    for extent in try image.mapForWrite(at: UInt64(offset), length: UInt64(length)) {
                        let piece = Array(data[at..<at + Int(extent.length)])
                        switch extent {
                        case .file(_, let host, let n):
                            try file.write(piece, at: host)
                            image.fillCompleted(hostOffset: host, length: n)   // as vioblk on the completion
                        case .synchronous: try piece.withUnsafeBytes { try image.write(from: $0, at: UInt64(offset + at)) }
                        case .zero: XCTFail("a write mapped to zeroes")
                        }
                        at += Int(extent.length)
                    }
                } else {
                    try data.withUnsafeBytes { try image.write(from: $0, at: UInt64(offset)) }
                }
                model.replaceSubrange(offset..<offset + length, with: data)
            }
            if !barriersRunning.isEmpty && rng.below(3) == 0 {
                try file.flush()
                barriersRunning.forEach { $0() }
                barriersRunning = []
            }
            boundaries.append((file.log.count, model, file.log.last.map { if case .flush = $0 { return true }; return false } ?? false))
        }
        try image.close()
        boundaries.append((file.log.count, model, true))
        let what = "cluster_bits \(clusterBits) refcount_order \(refcountOrder)"
        XCTAssertEqual(checkConsistent(file.bytes, backing: backing, what + ": after close", countLeaks: true), 0, "no leaks after close")

        // SIGKILL: the file as written so far holds every completed operation.
        var bytes = base
        var applied = 0
        for (i, b) in boundaries.enumerated() {
            for op in file.log[applied..<b.log] { if case .write(let o, let d) = op { RecordingFile.apply(o, d, to: &bytes) } }
            applied = b.log
            guard checkConsistent(bytes, backing: backing, "\(what): killed after operation \(i)") != nil else { return }
            let reopened = try Qcow2Image(file: MemoryImageFile(bytes: bytes), readOnly: true, backing: backing)
            var got = [UInt8](repeating: 0, count: Int(size))
            try got.withUnsafeMutableBytes { try reopened.read(into: $0, at: 0) }
            if got == b.model { continue }
            let bad = got.indices.first { got[$0] != b.model[$0] }
            XCTAssert(got == b.model, "\(what): killed after operation \(i): completed writes lost (byte \(bad ?? -1): \(bad.map { got[$0] } ?? 0), not \(bad.map { b.model[$0] } ?? 0))")
            if got != b.model { return }
        }
        // Power loss at every point of the log.
        var rng2 = Rng(state: seed ^ 0x9e37)
        var images = 0
        var durable = base
        var pending: [Int] = []
        for k in 0...file.log.count {
            if k > 0 {
                switch file.log[k - 1] {
                case .flush:
                    for i in pending { if case .write(let o, let d) = file.log[i] { RecordingFile.apply(o, d, to: &durable) } }
                    pending = []
                case .write: pending.append(k - 1)
                }
            }
            for (v, crashed) in crashImages(durable: durable, pending: pending, log: file.log, rng: &rng2).enumerated() {
                images += 1
                guard checkConsistent(crashed, backing: backing, "\(what): power lost after \(k) of \(file.log.count) operations, variant \(v)") != nil else { return }
                if rng2.below(400) == 0 { qemuSamples.append(crashed) }
            }
        }
        let barriers = file.log.filter { if case .flush = $0 { return true }; return false }.count
        print("\(what): \(file.log.count) logged operations (\(barriers) barriers), \(images) crash images consistent")
    }

    func testEveryCrashPointIsConsistent() throws {
        var samples: [[UInt8]] = []
        try run(clusterBits: 9, refcountOrder: 4, seed: 11, qemuSamples: &samples)
        try run(clusterBits: 12, refcountOrder: 0, seed: 22, qemuSamples: &samples)
        try run(clusterBits: 16, refcountOrder: 6, seed: 37, qemuSamples: &samples)
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-img") else {
            throw XCTSkip("own checker passed; qemu-img (Debian's qemu-utils) not installed for the second opinion")
        }
        let dir = NSTemporaryDirectory() + "qcow2-crash-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(pattern(99, 1 << 19)).write(to: URL(fileURLWithPath: dir + "/base.raw"))
        for (i, sample) in samples.prefix(12).enumerated() {
            let path = dir + "/crash\(i).qcow2"
            try Data(sample).write(to: URL(fileURLWithPath: path))
            let (status, out) = try runTool("qemu-img", ["check", "-U", path])
            XCTAssertTrue(status == 0 || status == 3, "qemu-img check crash image \(i): \(out)")
            XCTAssertFalse(out.contains("ERROR"), out)
        }
        print("qemu-img check: \(min(12, samples.count)) sampled crash images, no errors")
    }

    /// A cluster mapForWrite allocated reads as what it was (the base) until
    /// its data write is reported complete: a read racing the allocation
    /// never sees the fresh cluster's hole.
    func testClusterBeingFilledReadsAsBefore() throws {
        let created = MemoryImageFile()
        try Qcow2Creator.create(Qcow2CreateOptions(size: 1 << 20, backingFile: "b", backingFormat: .raw), on: created)
        let base = try RawDisk(file: MemoryImageFile(bytes: [UInt8](repeating: 0x42, count: 1 << 20)), readOnly: true)
        let file = RecordingFile(bytes: created.bytes)
        let image = try Qcow2Image(file: file, readOnly: false, backing: base)
        let extents = try image.mapForWrite(at: 65536, length: 65536)
        guard case .file(_, let host, 65536)? = extents.first, extents.count == 1 else { return XCTFail("\(extents)") }
        var got = [UInt8](repeating: 0, count: 4096)
        try got.withUnsafeMutableBytes { try image.read(into: $0, at: 65536) }
        XCTAssertEqual(got, [UInt8](repeating: 0x42, count: 4096), "before the data write completes: the base")
        XCTAssertEqual(try image.extents(at: 65536, length: 4096, forWrite: false).count, 1)
        try file.write([UInt8](repeating: 7, count: 65536), at: host)
        image.fillCompleted(hostOffset: host, length: 65536)
        try got.withUnsafeMutableBytes { try image.read(into: $0, at: 65536) }
        XCTAssertEqual(got, [UInt8](repeating: 7, count: 4096), "after: the new data")
        // A second write into a cluster being filled ends the substitution at once.
        _ = try image.mapForWrite(at: 131072, length: 65536)
        XCTAssertEqual(image.filling.count, 1)
        try [UInt8](repeating: 9, count: 512).withUnsafeBytes { try image.write(from: $0, at: 131072) }
        XCTAssertTrue(image.filling.isEmpty)
    }

    /// Allocating writes make no barrier once their clusters are reserved:
    /// 64 sequential cluster writes cost a handful of fdatasyncs, not 128.
    func testAllocationNeedsNoBarrierPerCluster() throws {
        let created = MemoryImageFile()
        try Qcow2Creator.create(Qcow2CreateOptions(size: 64 << 20), on: created)
        let file = RecordingFile(bytes: created.bytes)
        let image = try Qcow2Image(file: file, readOnly: false)
        let data = [UInt8](repeating: 7, count: 65536)
        for i in 0..<64 { try data.withUnsafeBytes { try image.write(from: $0, at: UInt64(i) * 65536) } }
        let barriers = file.log.filter { if case .flush = $0 { return true }; return false }.count
        XCTAssertLessThanOrEqual(barriers, 4, "one per reservation batch and one per new L2 table")
        XCTAssertGreaterThan(image.reservedClusters, 0)
        try image.close()
        XCTAssertEqual(image.reservedClusters, 0)
        XCTAssertEqual(checkConsistent(file.bytes, backing: nil, "after close", countLeaks: true), 0)
    }
}
