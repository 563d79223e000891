import XCTest
import Foundation
@testable import Virtio
@testable import VirtioDevices

/// A disk in memory that records what it was asked to do.
final class MemoryBlockBackend: BlockBackend {
    var bytes: [UInt8]
    var isReadOnly: Bool
    var supportsDiscard = true
    var supportsWriteZeroes = true
    var flushes = 0
    var discards: [(UInt64, UInt64)] = []
    var failNextRead = false
    var capacity: UInt64 { UInt64(bytes.count) }

    init(size: Int, readOnly: Bool = false) {
        bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 / 512 &+ $0) }
        isReadOnly = readOnly
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        if failNextRead {
            failNextRead = false
            throw BlockBackendError(errno: EIO, operation: "pread")
        }
        for i in 0..<buffer.count { buffer[i] = bytes[Int(offset) + i] }
    }
    func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        for i in 0..<buffer.count { bytes[Int(offset) + i] = buffer[i] }
    }
    func flush() throws { flushes += 1 }
    func discard(offset: UInt64, length: UInt64) throws {
        discards.append((offset, length))
        for i in Int(offset)..<Int(offset + length) { bytes[i] = 0 }
    }
    func writeZeroes(offset: UInt64, length: UInt64) throws {
        for i in Int(offset)..<Int(offset + length) { bytes[i] = 0 }
    }
}

final class VioBlkTests: XCTestCase {
    var backend: MemoryBlockBackend!
    var blk: VioBlk!
    var driver: TestDriver!

    func start(readOnly: Bool = false, sizeInSectors: Int = 64) {
        backend = MemoryBlockBackend(size: 512 * sizeInSectors, readOnly: readOnly)
        blk = VioBlk(name: "vioblk0", backend: backend, identifier: "disk-image-with-a-long-name.img")
        driver = TestDriver(device: blk, type: .block)
        XCTAssertTrue(driver.initialize())
    }

    override func setUp() { virtioLogHook = { _ in } }

    func header(_ type: UInt32, sector: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        appendLittleEndian(type, to: &bytes)
        appendLittleEndian(UInt32(0), to: &bytes)
        appendLittleEndian(sector, to: &bytes)
        return bytes
    }

    /// Submit a request, return (status byte, used length).
    @discardableResult
    func request(_ type: UInt32, sector: UInt64, out: [UInt8] = [], inLength: Int = 0,
                 splitHeader: Bool = false) -> (status: UInt8, used: UInt32, data: [UInt8]) {
        var buffers: [(address: UInt64, length: UInt32, writable: Bool)] = []
        let h = header(type, sector: sector)
        if splitHeader {
            buffers.append((driver.allocate(Array(h[0..<5])), 5, false))
            buffers.append((driver.allocate(Array(h[5...]) + out), UInt32(11 + out.count), false))
        } else {
            buffers.append((driver.allocate(h), 16, false))
            if !out.isEmpty { buffers.append((driver.allocate(out), UInt32(out.count), false)) }
        }
        let dataAddress = driver.allocate(length: inLength)
        if inLength > 0 { buffers.append((dataAddress, UInt32(inLength), true)) }
        let statusAddress = driver.allocate([0xee])
        buffers.append((statusAddress, 1, true))
        let head = driver.submit(0, buffers)
        let used = driver.takeUsed(0)
        XCTAssertEqual(used.count, 1)
        XCTAssertEqual(used.first?.id, UInt32(head))
        return (driver.memory.readBytes(at: statusAddress, count: 1)?[0] ?? 0xff, used.first?.length ?? 0,
                driver.memory.readBytes(at: dataAddress, count: inLength) ?? [])
    }

    func testConfigAndFeatures() {
        start()
        XCTAssertEqual(driver.read(0x300, 4), 64, "capacity in sectors (low)")
        XCTAssertEqual(driver.read(0x304, 4), 0)
        XCTAssertEqual(driver.read(0x308, 4), VioBlk.sizeMax)
        XCTAssertEqual(driver.read(0x30c, 4), 126, "seg_max")
        XCTAssertEqual(driver.read(0x314, 4), 512, "blk_size")
        XCTAssertEqual(driver.read(0x324, 4), VioBlk.maxDiscardSectors)
        let features = driver.transport.negotiatedFeatures
        XCTAssertNotEqual(features & VirtioBlockFeature.flush, 0)
        XCTAssertNotEqual(features & VirtioBlockFeature.discard, 0)
        XCTAssertNotEqual(features & VirtioBlockFeature.writeZeroes, 0)
        XCTAssertEqual(features & VirtioBlockFeature.readOnly, 0)
    }

    func testRead() {
        start()
        let result = request(VirtioBlockRequestType.read, sector: 3, inLength: 1024)
        XCTAssertEqual(result.status, VirtioBlockStatus.ok)
        XCTAssertEqual(result.used, 1025)
        XCTAssertEqual(result.data, Array(backend.bytes[1536..<2560]))
        XCTAssertTrue(driver.sink.level)
    }

    func testReadIntoManySegments() {
        start()
        let addresses = (0..<4).map { _ in driver.allocate(length: 512) }
        var buffers: [(address: UInt64, length: UInt32, writable: Bool)] = [(driver.allocate(header(0, sector: 10)), 16, false)]
        buffers += addresses.map { ($0, UInt32(512), true) }
        let status = driver.allocate([0xee])
        buffers.append((status, 1, true))
        driver.submit(0, buffers)
        XCTAssertEqual(driver.memory.readBytes(at: status, count: 1), [0])
        for (i, address) in addresses.enumerated() {
            let start = (10 + i) * 512
            XCTAssertEqual(driver.memory.readBytes(at: address, count: 512), Array(backend.bytes[start..<start + 512]))
        }
    }

    func testWriteWithHeaderSplitAcrossDescriptors() {
        start()
        let data = (0..<1024).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let result = request(VirtioBlockRequestType.write, sector: 5, out: data, splitHeader: true)
        XCTAssertEqual(result.status, VirtioBlockStatus.ok)
        XCTAssertEqual(result.used, 1)
        XCTAssertEqual(Array(backend.bytes[2560..<3584]), data)
    }

    func testOutOfRangeAndPartialSectorsFail() {
        start()
        XCTAssertEqual(request(0, sector: 63, inLength: 1024).status, VirtioBlockStatus.ioError)
        XCTAssertEqual(request(0, sector: UInt64.max / 256, inLength: 512).status, VirtioBlockStatus.ioError)
        XCTAssertEqual(request(0, sector: 0, inLength: 100).status, VirtioBlockStatus.ioError)
        XCTAssertEqual(request(1, sector: 64, out: [UInt8](repeating: 1, count: 512)).status, VirtioBlockStatus.ioError)
        XCTAssertEqual(request(0, sector: 63, inLength: 512).status, VirtioBlockStatus.ok)
        XCTAssertFalse(driver.needsReset, "bad requests are the request's problem, not the device's")
    }

    func testBackendErrorIsIOError() {
        start()
        backend.failNextRead = true
        XCTAssertEqual(request(0, sector: 0, inLength: 512).status, VirtioBlockStatus.ioError)
        XCTAssertEqual(request(0, sector: 0, inLength: 512).status, VirtioBlockStatus.ok)
    }

    func testFlush() {
        start()
        XCTAssertEqual(request(VirtioBlockRequestType.flush, sector: 0).status, VirtioBlockStatus.ok)
        XCTAssertEqual(backend.flushes, 1)
    }

    func testGetID() {
        start()
        let result = request(VirtioBlockRequestType.getID, sector: 0, inLength: 20)
        XCTAssertEqual(result.status, VirtioBlockStatus.ok)
        XCTAssertEqual(result.used, 21)
        XCTAssertEqual(result.data, Array("disk-image-with-a-lo".utf8))
        let short = VioBlk(name: "vioblk1", backend: backend, identifier: "a.img")
        XCTAssertEqual(short.identifier, Array("a.img".utf8))
    }

    func discardSegment(sector: UInt64, count: UInt32, flags: UInt32 = 0) -> [UInt8] {
        var bytes: [UInt8] = []
        appendLittleEndian(sector, to: &bytes)
        appendLittleEndian(count, to: &bytes)
        appendLittleEndian(flags, to: &bytes)
        return bytes
    }

    func testDiscardAndWriteZeroes() {
        start()
        XCTAssertEqual(request(VirtioBlockRequestType.discard, sector: 0, out: discardSegment(sector: 2, count: 2)).status,
                       VirtioBlockStatus.ok)
        XCTAssertEqual(backend.discards.first?.0, 1024)
        XCTAssertEqual(backend.discards.first?.1, 1024)
        XCTAssertEqual(Array(backend.bytes[1024..<2048]), [UInt8](repeating: 0, count: 1024))
        XCTAssertNotEqual(backend.bytes[2048], 0)
        XCTAssertEqual(request(VirtioBlockRequestType.writeZeroes, sector: 0,
                               out: discardSegment(sector: 8, count: 1, flags: 1)).status, VirtioBlockStatus.ok)
        XCTAssertEqual(Array(backend.bytes[4096..<4608]), [UInt8](repeating: 0, count: 512))
        XCTAssertEqual(request(VirtioBlockRequestType.discard, sector: 0, out: discardSegment(sector: 63, count: 2)).status,
                       VirtioBlockStatus.ioError, "past the end")
        XCTAssertEqual(request(VirtioBlockRequestType.discard, sector: 0,
                               out: discardSegment(sector: 1, count: 1) + discardSegment(sector: 3, count: 1)).status,
                       VirtioBlockStatus.ioError, "more segments than max_discard_seg")
    }

    func testDiscardNotOfferedWhenUnsupported() {
        backend = MemoryBlockBackend(size: 4096)
        backend.supportsDiscard = false
        backend.supportsWriteZeroes = false
        blk = VioBlk(name: "vioblk0", backend: backend, identifier: "x")
        XCTAssertEqual(blk.deviceFeatures & (VirtioBlockFeature.discard | VirtioBlockFeature.writeZeroes), 0)
        driver = TestDriver(device: blk, type: .block)
        XCTAssertTrue(driver.initialize())
        XCTAssertEqual(request(VirtioBlockRequestType.discard, sector: 0, out: discardSegment(sector: 0, count: 1)).status,
                       VirtioBlockStatus.unsupported)
    }

    func testReadOnly() {
        start(readOnly: true)
        XCTAssertNotEqual(driver.transport.negotiatedFeatures & VirtioBlockFeature.readOnly, 0)
        XCTAssertEqual(driver.transport.negotiatedFeatures & VirtioBlockFeature.discard, 0)
        let before = backend.bytes
        XCTAssertEqual(request(1, sector: 0, out: [UInt8](repeating: 9, count: 512)).status, VirtioBlockStatus.ioError)
        XCTAssertEqual(request(VirtioBlockRequestType.writeZeroes, sector: 0, out: discardSegment(sector: 0, count: 1)).status,
                       VirtioBlockStatus.ioError)
        XCTAssertEqual(backend.bytes, before)
        XCTAssertEqual(request(0, sector: 0, inLength: 512).status, VirtioBlockStatus.ok)
    }

    func testUnknownTypeAndShortHeader() {
        start()
        XCTAssertEqual(request(99, sector: 0).status, VirtioBlockStatus.unsupported)
        let status = driver.allocate([0xee])
        driver.submit(0, [(driver.allocate([1, 2, 3]), 3, false), (status, 1, true)])
        XCTAssertEqual(driver.memory.readBytes(at: status, count: 1), [VirtioBlockStatus.ioError])
        // No writable byte at all: returned with nothing written.
        driver.submit(0, [(driver.allocate(header(0, sector: 0)), 16, false)])
        XCTAssertEqual(driver.takeUsed(0).last?.length, 0)
        XCTAssertFalse(driver.needsReset)
    }

    func testRawImageBackendOnARealFile() throws {
        let path = NSTemporaryDirectory() + "vioblk-test-\(getpid()).img"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd); unlink(path) }
        XCTAssertEqual(ftruncate(fd, 1 << 20), 0)
        let raw = try RawImageBackend(fd: fd, readOnly: false)
        XCTAssertEqual(raw.capacity, 1 << 20)
        let device = VioBlk(name: "vioblk0", backend: raw, identifier: "r.img")
        driver = TestDriver(device: device, type: .block)
        backend = nil
        XCTAssertTrue(driver.initialize())
        let data = [UInt8](repeating: 0x5a, count: 8192)
        XCTAssertTrue(raw.hasUnflushedWrites, "whatever came before us is synced by the first flush")
        XCTAssertEqual(request(1, sector: 8, out: data).status, VirtioBlockStatus.ok)
        XCTAssertEqual(request(VirtioBlockRequestType.flush, sector: 0).status, VirtioBlockStatus.ok)
        XCTAssertFalse(raw.hasUnflushedWrites)
        XCTAssertEqual(request(0, sector: 8, inLength: 8192).data, data)
        XCTAssertFalse(raw.hasUnflushedWrites, "reads leave nothing to sync")
        XCTAssertEqual(request(VirtioBlockRequestType.discard, sector: 0, out: discardSegment(sector: 8, count: 8)).status,
                       VirtioBlockStatus.ok)
        XCTAssertEqual(request(VirtioBlockRequestType.writeZeroes, sector: 0, out: discardSegment(sector: 16, count: 8)).status,
                       VirtioBlockStatus.ok)
        XCTAssertEqual(request(0, sector: 8, inLength: 8192).data, [UInt8](repeating: 0, count: 8192))
        XCTAssertTrue(raw.hasUnflushedWrites, "discard and write-zeroes need a sync")
        XCTAssertEqual(request(VirtioBlockRequestType.flush, sector: 0).status, VirtioBlockStatus.ok)
        XCTAssertFalse(raw.hasUnflushedWrites)
        var info = stat()
        fstat(fd, &info)
        XCTAssertEqual(info.st_size, 1 << 20, "KEEP_SIZE")
        let readOnly = try RawImageBackend(fd: fd, readOnly: true)
        XCTAssertThrowsError(try readOnly.write(from: UnsafeRawBufferPointer(start: nil, count: 0), at: 0))
    }
}
