import XCTest
import Foundation
import Glibc
import DiskImage
@testable import Virtio
@testable import VirtioDevices

/// vioblk on the asynchronous engine: requests stay in flight until their
/// I/O completes, come back in any order, and qcow2 allocation stays
/// serialised. Each test runs on io_uring (skipped where the kernel refuses
/// it) and on the thread pool.
final class VioBlkAsyncTests: XCTestCase {
    var directory: URL!
    var imageFD: Int32 = -1

    override func setUpWithError() throws {
        virtioLogHook = { _ in }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("vioblk-async-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if imageFD >= 0 { close(imageFD) }
        try? FileManager.default.removeItem(at: directory)
    }

    func engine(_ mode: BlockIOEngine.Mode) throws -> BlockIOEngine {
        do {
            let e = try BlockIOEngine(depth: 512, mode: mode)
            if mode == .ioUring { XCTAssertTrue(e.isIoUring) }
            return e
        } catch {
            throw XCTSkip("\(mode.rawValue) unavailable here: \(error)")
        }
    }

    /// A raw image of `size` bytes, each 512-byte sector filled with a pattern of its number.
    func rawImage(size: Int) -> (path: String, bytes: [UInt8]) {
        let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 / 512 &* 31 &+ $0) }
        let path = directory.appendingPathComponent("disk.raw").path
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        imageFD = open(path, O_RDWR)
        return (path, bytes)
    }

    func header(_ type: UInt32, sector: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        appendLittleEndian(type, to: &bytes)
        appendLittleEndian(UInt32(0), to: &bytes)
        appendLittleEndian(sector, to: &bytes)
        return bytes
    }

    struct Submitted { var head: UInt16; var data: UInt64; var status: UInt64; var length: Int }

    /// Makes a request available without notifying.
    func post(_ driver: TestDriver, _ type: UInt32, sector: UInt64, out: [UInt8] = [], inLength: Int = 0) -> Submitted {
        var buffers: [(address: UInt64, length: UInt32, writable: Bool)] = [(driver.allocate(header(type, sector: sector)), 16, false)]
        if !out.isEmpty { buffers.append((driver.allocate(out), UInt32(out.count), false)) }
        let data = driver.allocate(length: inLength)
        if inLength > 0 { buffers.append((data, UInt32(inLength), true)) }
        let status = driver.allocate([0xee])
        buffers.append((status, 1, true))
        let head = driver.addChain(0, buffers)
        driver.makeAvailable(0, head)
        return Submitted(head: head, data: data, status: status, length: inLength)
    }

    /// Reaps completions until `count` requests came back; returns them in completion order.
    func collect(_ driver: TestDriver, _ blk: VioBlk, count: Int) -> [(id: UInt32, length: UInt32)] {
        var used: [(id: UInt32, length: UInt32)] = []
        let deadline = Date().addingTimeInterval(20)
        while used.count < count && Date() < deadline {
            blk.completeReady(wait: true)
            used += driver.takeUsed(0)
        }
        return used
    }

    func checkConcurrentReads(_ mode: BlockIOEngine.Mode) throws {
        let e = try engine(mode)
        let (_, bytes) = rawImage(size: 4 << 20)
        let backend = try RawImageBackend(fd: imageFD, readOnly: false)
        let blk = VioBlk(name: "vioblk0", backend: backend, identifier: "t", engine: e)
        let driver = TestDriver(device: blk, type: .block)
        XCTAssertTrue(driver.initialize())
        var rng = SystemRandomNumberGenerator()
        let sectors = (0..<32).map { _ in UInt64.random(in: 0..<(UInt64(4 << 20) / 512 - 8), using: &rng) }
        let requests = sectors.map { post(driver, VirtioBlockRequestType.read, sector: $0, inLength: 4096) }
        driver.notify(0)
        // All 32 were taken off the ring at once: each is either in flight
        // or already returned (reads from the page cache can complete
        // inside the submission, and are returned at once).
        let early = driver.takeUsed(0)
        XCTAssertEqual(early.count + blk.operations.count, 32)
        let used = early + collect(driver, blk, count: 32 - early.count)
        XCTAssertEqual(used.count, 32)
        XCTAssertEqual(Set(used.map(\.id)), Set(requests.map { UInt32($0.head) }))
        XCTAssertTrue(used.allSatisfy { $0.length == 4097 })
        for (r, sector) in zip(requests, sectors) {
            XCTAssertEqual(driver.memory.readBytes(at: r.status, count: 1), [VirtioBlockStatus.ok])
            let start = Int(sector) * 512
            XCTAssertTrue(driver.memory.readBytes(at: r.data, count: 4096) == Array(bytes[start..<start + 4096]), "read at sector \(sector)")
        }
        XCTAssertEqual(e.inflight, 0)
        XCTAssertTrue(blk.operations.isEmpty)
    }

    func testConcurrentReadsOnIoUring() throws { try checkConcurrentReads(.ioUring) }
    func testConcurrentReadsOnThreads() throws { try checkConcurrentReads(.threads) }

    func checkWritesThenFlush(_ mode: BlockIOEngine.Mode) throws {
        let e = try engine(mode)
        let (path, _) = rawImage(size: 1 << 20)
        let backend = try RawImageBackend(fd: imageFD, readOnly: false)
        let blk = VioBlk(name: "vioblk0", backend: backend, identifier: "t", engine: e)
        let driver = TestDriver(device: blk, type: .block)
        XCTAssertTrue(driver.initialize())
        let payloads = (0..<16).map { i in [UInt8](repeating: UInt8(0x40 + i), count: 8192) }
        for (i, p) in payloads.enumerated() { _ = post(driver, VirtioBlockRequestType.write, sector: UInt64(i * 16), out: p) }
        driver.notify(0)
        XCTAssertEqual(collect(driver, blk, count: 16).count, 16)
        let flush = post(driver, VirtioBlockRequestType.flush, sector: 0)
        driver.notify(0)
        let used = collect(driver, blk, count: 1)
        XCTAssertEqual(used.map(\.id), [UInt32(flush.head)])
        XCTAssertEqual(driver.memory.readBytes(at: flush.status, count: 1), [VirtioBlockStatus.ok])
        XCTAssertFalse(blk.unflushed)
        // Nothing written since: the next flush is answered at once.
        let again = post(driver, VirtioBlockRequestType.flush, sector: 0)
        driver.notify(0)
        XCTAssertEqual(driver.takeUsed(0).map(\.id), [UInt32(again.head)])
        let file = try Data(contentsOf: URL(fileURLWithPath: path))
        for (i, p) in payloads.enumerated() {
            XCTAssertTrue(Array(file[(i * 8192)..<(i * 8192 + 8192)]) == p, "write \(i)")
        }
    }

    func testWritesThenFlushOnIoUring() throws { try checkWritesThenFlush(.ioUring) }
    func testWritesThenFlushOnThreads() throws { try checkWritesThenFlush(.threads) }

    /// Two writes into the same unallocated qcow2 cluster and a read of it,
    /// all in one batch: the cluster is allocated once, both writes land,
    /// and the image is consistent.
    func checkQcow2SameClusterAllocation(_ mode: BlockIOEngine.Mode) throws {
        let e = try engine(mode)
        let path = directory.appendingPathComponent("disk.qcow2").path
        FileManager.default.createFile(atPath: path, contents: nil)
        imageFD = open(path, O_RDWR)
        try Qcow2Creator.create(Qcow2CreateOptions(size: 8 << 20), on: FDImageFile(fd: imageFD))
        let sizeBefore = lseek(imageFD, 0, SEEK_END)
        let backend = try DiskImageBackend(fds: [imageFD], formats: ["qcow2"], readOnly: false)
        let blk = VioBlk(name: "vioblk0", backend: backend, identifier: "t", engine: e)
        let driver = TestDriver(device: blk, type: .block)
        XCTAssertTrue(driver.initialize())
        let a = [UInt8](repeating: 0xaa, count: 4096), b = [UInt8](repeating: 0xbb, count: 4096)
        // Cluster 3 (64 KiB clusters): sectors 384..511.
        let w1 = post(driver, VirtioBlockRequestType.write, sector: 384, out: a)
        let w2 = post(driver, VirtioBlockRequestType.write, sector: 392, out: b)
        // A read of the cluster being allocated, in the same batch: it sees
        // the cluster before or after each write (virtio does not order
        // requests in flight together), never metadata half made.
        let early = post(driver, VirtioBlockRequestType.read, sector: 384, inLength: 16384)
        // And many writes to one more cluster, at different offsets.
        let more = (0..<16).map { i in post(driver, VirtioBlockRequestType.write, sector: 512 + UInt64(i * 8),
                                             out: [UInt8](repeating: UInt8(i + 1), count: 4096)) }
        driver.notify(0)
        let used = collect(driver, blk, count: 19)
        XCTAssertEqual(used.count, 19)
        for s in [w1, w2, early] + more { XCTAssertEqual(driver.memory.readBytes(at: s.status, count: 1), [VirtioBlockStatus.ok]) }
        let seen = driver.memory.readBytes(at: early.data, count: 16384) ?? []
        XCTAssertTrue(seen[0..<4096].allSatisfy { $0 == 0xaa } || seen[0..<4096].allSatisfy { $0 == 0 }, "first write: before or after")
        XCTAssertTrue(seen[4096..<8192].allSatisfy { $0 == 0xbb } || seen[4096..<8192].allSatisfy { $0 == 0 }, "second write: before or after")
        XCTAssertTrue(seen[8192...].allSatisfy { $0 == 0 })
        let r = post(driver, VirtioBlockRequestType.read, sector: 384, inLength: 16384)
        driver.notify(0)
        XCTAssertEqual(collect(driver, blk, count: 1).count, 1)
        XCTAssertTrue(driver.memory.readBytes(at: r.data, count: 8192) == a + b, "both writes landed")
        XCTAssertTrue(driver.memory.readBytes(at: r.data + 8192, count: 8192) == [UInt8](repeating: 0, count: 8192))
        let flush = post(driver, VirtioBlockRequestType.flush, sector: 0)
        driver.notify(0)
        XCTAssertEqual(collect(driver, blk, count: 1).map(\.id), [UInt32(flush.head)])
        // One L2 table and two data clusters: three clusters more (the file
        // may be longer: unused reserved clusters, given back at close).
        try backend.close()
        let reopened = try Qcow2Image(file: FDImageFile(fd: imageFD), readOnly: true)
        XCTAssertEqual(reopened.reservedClusters, 0)
        var counted = 0
        for c in UInt64(sizeBefore / 65536)..<UInt64(lseek(imageFD, 0, SEEK_END) / 65536) where try reopened.isAllocatedInFile(cluster: c) { counted += 1 }
        XCTAssertEqual(counted, 3)
        var check = [UInt8](repeating: 0, count: 65536 * 2)
        try check.withUnsafeMutableBytes { try reopened.read(into: $0, at: 3 * 65536) }
        XCTAssertTrue(Array(check[0..<8192]) == a + b)
        for i in 0..<16 {
            XCTAssertTrue(check[65536 + i * 4096..<65536 + (i + 1) * 4096].allSatisfy { $0 == UInt8(i + 1) }, "write \(i)")
        }
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-img") {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/qemu-img")
            p.arguments = ["check", "-U", path]
            let pipe = Pipe()
            p.standardOutput = pipe
            p.standardError = pipe
            try p.run()
            p.waitUntilExit()
            let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            XCTAssertEqual(p.terminationStatus, 0, out)
        }
    }

    func testQcow2SameClusterAllocationOnIoUring() throws { try checkQcow2SameClusterAllocation(.ioUring) }
    func testQcow2SameClusterAllocationOnThreads() throws { try checkQcow2SameClusterAllocation(.threads) }

    /// A reset with requests in flight waits for them and returns none.
    func testResetWaitsForInflight() throws {
        let e = try engine(.automatic)
        _ = rawImage(size: 1 << 20)
        let blk = VioBlk(name: "vioblk0", backend: try RawImageBackend(fd: imageFD, readOnly: false), identifier: "t", engine: e)
        let driver = TestDriver(device: blk, type: .block)
        XCTAssertTrue(driver.initialize())
        for i in 0..<8 { _ = post(driver, VirtioBlockRequestType.read, sector: UInt64(i * 8), inLength: 4096) }
        driver.notify(0)
        blk.reset()
        XCTAssertEqual(e.inflight, 0)
        XCTAssertTrue(blk.operations.isEmpty)
    }
}
