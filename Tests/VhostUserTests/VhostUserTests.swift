import XCTest
import Glibc
import CVhostUser
@testable import VhostUser
@testable import Virtio
@testable import VirtioDevices

/// A frontend in the test process: guest memory in a memfd (mapped here
/// too), rings laid out by hand, requests sent straight to `handle`.
final class TestFrontend {
    static let memorySize = 1 << 20
    static let userBase: UInt64 = 0x7f00_0000_0000
    let memfd: Int32
    let host: UnsafeMutableRawPointer
    let backend: VhostUserBackend
    var queueSize: UInt16 = 8
    var availIndex: [UInt16] = [0, 0, 0]
    var callFDs: [Int32] = []
    var kickFDs: [Int32] = []
    var closed = false

    init(device: VirtioDevice) {
        memfd = cvhost_memfd("test guest")
        precondition(memfd >= 0 && ftruncate(memfd, off_t(Self.memorySize)) == 0)
        host = mmap(nil, Self.memorySize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0)!
        backend = VhostUserBackend(device: device)
    }

    deinit {
        munmap(host, Self.memorySize)
        close(memfd)
        for fd in callFDs + kickFDs { close(fd) }
    }

    func desc(_ q: Int) -> UInt64 { 0x10000 + UInt64(q) * 0x10000 }
    func avail(_ q: Int) -> UInt64 { desc(q) + 0x1000 }
    func used(_ q: Int) -> UInt64 { desc(q) + 0x2000 }

    @discardableResult
    func send(_ request: VhostUserRequest, _ payload: [UInt8] = [], fds: [Int32] = [], needReply: Bool = false) -> VhostUserOutcome {
        var flags = VhostUserFlags.version
        if needReply { flags |= VhostUserFlags.needReply }
        let outcome = backend.handle(VhostUserMessage(request: request.rawValue, flags: flags, payload: payload, fds: fds))
        if outcome.close { closed = true }
        return outcome
    }

    func replyU64(_ request: VhostUserRequest) -> UInt64? {
        guard let r = send(request).reply?.payload else { return nil }
        return try? U64Payload.decode(r, "reply")
    }

    func dupMemfd() -> Int32 { dup(memfd) }

    var table: MemoryTablePayload {
        MemoryTablePayload(regions: [VhostMemoryRegionDescription(guestPhysicalAddress: 0, size: UInt64(Self.memorySize),
                                                                   userAddress: Self.userBase, mmapOffset: 0)])
    }

    /// The QEMU start sequence for `queues` queues; false if anything failed.
    func start(queues: Int, protocolFeatures: UInt64 = VhostUserProtocolFeature.replyAck) -> Bool {
        guard let features = replyU64(.getFeatures) else { return false }
        send(.setProtocolFeatures, U64Payload.encode(protocolFeatures))
        send(.setOwner)
        send(.setFeatures, U64Payload.encode(features))
        send(.setMemTable, table.encoded(), fds: [dupMemfd()])
        for q in 0..<queues {
            send(.setVringNum, VringState(index: UInt32(q), num: UInt32(queueSize)).encoded())
            send(.setVringBase, VringState(index: UInt32(q), num: 0).encoded())
            send(.setVringAddr, VringAddress(index: UInt32(q), descriptor: Self.userBase + desc(q),
                                             used: Self.userBase + used(q), available: Self.userBase + avail(q)).encoded())
            let call = cvhost_eventfd()
            callFDs.append(call)
            send(.setVringCall, VringFileIndex(index: q, hasFD: true).encoded(), fds: [dup(call)])
            let kick = cvhost_eventfd()
            kickFDs.append(kick)
            send(.setVringKick, VringFileIndex(index: q, hasFD: true).encoded(), fds: [dup(kick)])
            send(.setVringEnable, VringState(index: UInt32(q), num: 1).encoded())
        }
        return !closed
    }

    func store16(_ v: UInt16, _ gpa: UInt64) { (host + Int(gpa)).storeBytes(of: v, as: UInt16.self) }
    func store32(_ v: UInt32, _ gpa: UInt64) { (host + Int(gpa)).storeBytes(of: v, as: UInt32.self) }
    func store64(_ v: UInt64, _ gpa: UInt64) { (host + Int(gpa)).storeBytes(of: v, as: UInt64.self) }
    func load16(_ gpa: UInt64) -> UInt16 { (host + Int(gpa)).load(as: UInt16.self) }
    func load32(_ gpa: UInt64) -> UInt32 { (host + Int(gpa)).load(as: UInt32.self) }

    /// Chain of buffers at descriptors head, head+1, ...; made available.
    func submit(_ q: Int, head: UInt16, _ buffers: [(UInt64, UInt32, Bool)]) {
        for (k, b) in buffers.enumerated() {
            let d = desc(q) + 16 * UInt64(head + UInt16(k))
            store64(b.0, d); store32(b.1, d + 8)
            var flags: UInt16 = b.2 ? 2 : 0
            if k < buffers.count - 1 { flags |= 1 }
            store16(flags, d + 12); store16(head + UInt16(k) + 1, d + 14)
        }
        store16(head, avail(q) + 4 + 2 * UInt64(availIndex[q] % queueSize))
        availIndex[q] &+= 1
        store16(availIndex[q], avail(q) + 2)
    }

    func usedIndex(_ q: Int) -> UInt16 { load16(used(q) + 2) }
    func usedEntry(_ q: Int, _ n: UInt16) -> (UInt32, UInt32) {
        let e = used(q) + 4 + 8 * UInt64(n % queueSize)
        return (load32(e), load32(e + 4))
    }
    func called(_ q: Int) -> Bool {
        var v: UInt64 = 0
        return read(callFDs[q], &v, 8) == 8
    }
}

final class MessageCodecTests: XCTestCase {
    func testHeaderRoundTripAndChecks() throws {
        let h = VhostUserHeader(request: 5, flags: 1, size: 264)
        XCTAssertEqual(try VhostUserHeader(decoding: h.encoded()[...]), h)
        XCTAssertThrowsError(try VhostUserHeader(decoding: [1, 0, 0, 0, 1, 0][...]))
        XCTAssertThrowsError(try VhostUserHeader(decoding: VhostUserHeader(request: 1, flags: 2, size: 0).encoded()[...]))
        XCTAssertThrowsError(try VhostUserHeader(decoding: VhostUserHeader(request: 1, flags: 1, size: 1 << 20).encoded()[...]))
    }

    func testPayloadsRoundTripAndRejectWrongSizes() throws {
        let a = VringAddress(index: 1, flags: 0, descriptor: 0x1000, used: 0x3000, available: 0x2000, log: 0)
        XCTAssertEqual(try VringAddress(decoding: a.encoded()), a)
        XCTAssertThrowsError(try VringAddress(decoding: Array(a.encoded().dropLast())))
        let s = VringState(index: 2, num: 128)
        XCTAssertEqual(try VringState(decoding: s.encoded()), s)
        XCTAssertThrowsError(try VringState(decoding: s.encoded() + [0]))
        let t = MemoryTablePayload(regions: [VhostMemoryRegionDescription(guestPhysicalAddress: 0, size: 4096, userAddress: 0x1000, mmapOffset: 0)])
        XCTAssertEqual(try MemoryTablePayload(decoding: t.encoded()), t)
        XCTAssertEqual(try MemoryTablePayload(decoding: t.encoded() + [UInt8](repeating: 0, count: 32 * 7)), t)
        XCTAssertThrowsError(try MemoryTablePayload(decoding: Array(t.encoded().dropLast())))
        var nine = PayloadWriter(); nine.u32(9); nine.u32(0)
        XCTAssertThrowsError(try MemoryTablePayload(decoding: nine.bytes + [UInt8](repeating: 0, count: 9 * 32)))
        let c = ConfigPayload(offset: 4, flags: 0, data: [1, 2, 3])
        XCTAssertEqual(try ConfigPayload(decoding: c.encoded()), c)
        XCTAssertThrowsError(try ConfigPayload(decoding: c.encoded() + [9]))
        XCTAssertThrowsError(try ConfigPayload(decoding: ConfigPayload(offset: 250, data: [UInt8](repeating: 0, count: 10)).encoded()))
        let i = InflightDescription(mmapSize: 4096, mmapOffset: 0, queueCount: 1, queueSize: 128)
        XCTAssertEqual(try InflightDescription(decoding: i.encoded()), i)
        XCTAssertEqual(try VringFileIndex(decoding: U64Payload.encode(0x103)), VringFileIndex(index: 3, hasFD: false))
        XCTAssertThrowsError(try VringFileIndex(decoding: U64Payload.encode(0x200)))
    }

    func testFramerSplitsAndJoins() throws {
        var f = VhostUserFramer()
        let m1 = VhostUserMessage(request: 1).encoded()
        let m2 = VhostUserMessage(request: 2, payload: U64Payload.encode(7)).encoded()
        let stream = m1 + m2
        f.append(stream[0..<5], fds: [])
        XCTAssertNil(try f.next())
        f.append(stream[5..<20], fds: [])
        XCTAssertEqual(try f.next()?.fds, [])
        XCTAssertNil(try f.next())
        // The descriptors came with the read that ended the second message.
        f.append(stream[20...], fds: [42])
        let second = try f.next()
        XCTAssertEqual(second?.payload, U64Payload.encode(7))
        XCTAssertEqual(second?.fds, [42])
        // Two messages in one read, the descriptors with the second.
        var g = VhostUserFramer()
        g.append((m1 + m2)[...], fds: [7])
        XCTAssertEqual(try g.next()?.fds, [])
        XCTAssertEqual(try g.next()?.fds, [7])
        var bad = VhostUserFramer()
        bad.append(VhostUserHeader(request: 1, flags: 1, size: 100_000).encoded()[...], fds: [])
        XCTAssertThrowsError(try bad.next())
    }

    /// Random bytes never trap the codecs.
    func testRandomPayloadsNeverTrap() {
        var g = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0..<80, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }
            _ = try? VringAddress(decoding: bytes)
            _ = try? MemoryTablePayload(decoding: bytes)
            _ = try? ConfigPayload(decoding: bytes)
            _ = try? InflightDescription(decoding: bytes)
            _ = try? VhostUserHeader(decoding: bytes[...])
        }
    }
}

final class BackendTests: XCTestCase {
    override func setUp() { virtioLogHook = { _ in } }

    func testRngServesARequestAndSignalsCall() throws {
        let f = TestFrontend(device: VioRnd())
        XCTAssertTrue(f.start(queues: 1))
        f.submit(0, head: 0, [(0x80000, 64, true)])
        f.backend.kick(queue: 0)
        XCTAssertEqual(f.usedIndex(0), 1)
        XCTAssertEqual(f.usedEntry(0, 0).0, 0)
        XCTAssertEqual(f.usedEntry(0, 0).1, 64)
        XCTAssertTrue(f.called(0))
        let bytes = UnsafeRawBufferPointer(start: f.host + 0x80000, count: 64)
        XCTAssertNotEqual(Set(bytes).count, 1, "random bytes are not constant")
    }

    func testBlockReadThroughTheSameVioBlk() throws {
        let image = cvhost_memfd("disk")
        defer { close(image) }
        XCTAssertEqual(ftruncate(image, 1 << 20), 0)
        var sector = [UInt8](repeating: 0xab, count: 512)
        XCTAssertEqual(pwrite(image, &sector, 512, 4096), 512)
        let f = TestFrontend(device: VioBlk(name: "vioblk0", backend: try RawImageBackend(fd: image, readOnly: false), identifier: "x"))
        XCTAssertTrue(f.start(queues: 1))
        // header (type 0 read, sector 8), data 512, status 1
        f.store32(0, 0x80000); f.store32(0, 0x80004); f.store64(8, 0x80008)
        f.submit(0, head: 0, [(0x80000, 16, false), (0x81000, 512, true), (0x82000, 1, true)])
        f.backend.kick(queue: 0)
        XCTAssertEqual(f.usedIndex(0), 1)
        XCTAssertEqual((f.host + 0x82000).load(as: UInt8.self), 0)
        XCTAssertEqual((f.host + 0x81000).load(as: UInt8.self), 0xab)
        XCTAssertEqual(f.usedEntry(0, 0).1, 513)
        // GET_VRING_BASE stops the ring and reports where it got to.
        let r = f.send(.getVringBase, VringState(index: 0, num: 0).encoded()).reply
        XCTAssertEqual(try VringState(decoding: r!.payload).num, 1)
    }

    func testConfigComesFromTheDevice() throws {
        let image = cvhost_memfd("disk")
        defer { close(image) }
        XCTAssertEqual(ftruncate(image, 1 << 20), 0)
        let f = TestFrontend(device: VioBlk(name: "vioblk0", backend: try RawImageBackend(fd: image, readOnly: false), identifier: "x"))
        f.send(.setProtocolFeatures, U64Payload.encode(VhostUserProtocolFeature.config))
        let reply = f.send(.getConfig, ConfigPayload(offset: 0, data: [UInt8](repeating: 0, count: 8)).encoded()).reply
        let config = try ConfigPayload(decoding: reply!.payload)
        XCTAssertEqual(config.data, [0, 8, 0, 0, 0, 0, 0, 0])   // 2048 sectors
    }

    func testBadRequestsFailWithoutTrapping() {
        let f = TestFrontend(device: VioRnd())
        XCTAssertNotNil(f.replyU64(.getFeatures))
        f.send(.setProtocolFeatures, U64Payload.encode(VhostUserProtocolFeature.replyAck))
        func nack(_ r: VhostUserRequest, _ p: [UInt8], fds: [Int32] = []) {
            let o = f.send(r, p, fds: fds, needReply: true)
            XCTAssertEqual(o.reply?.payload, U64Payload.encode(1), "\(r) should fail: \(o.error ?? "")")
            XCTAssertFalse(o.close)
        }
        // kick before anything is set up
        let e = cvhost_eventfd()
        nack(.setVringKick, VringFileIndex(index: 0, hasFD: true).encoded(), fds: [e])
        XCTAssertEqual(fcntl(e, F_GETFD), -1, "the descriptor was closed")
        nack(.setVringNum, VringState(index: 0, num: 0).encoded())
        nack(.setVringNum, VringState(index: 0, num: 3).encoded())
        nack(.setVringNum, VringState(index: 7, num: 4).encoded())
        nack(.setVringAddr, VringAddress(index: 0, descriptor: 0, used: 0, available: 0).encoded())
        // memory: too many regions, size past the file, overlap, fd count mismatch
        nack(.setMemTable, MemoryTablePayload(regions: [VhostMemoryRegionDescription(guestPhysicalAddress: 0, size: UInt64(2 * TestFrontend.memorySize), userAddress: 0, mmapOffset: 0)]).encoded(), fds: [f.dupMemfd()])
        nack(.setMemTable, MemoryTablePayload(regions: [VhostMemoryRegionDescription(guestPhysicalAddress: 0, size: 4096, userAddress: 0, mmapOffset: UInt64.max - 10)]).encoded(), fds: [f.dupMemfd()])
        nack(.setMemTable, f.table.encoded(), fds: [])
        let overlap = MemoryTablePayload(regions: [
            VhostMemoryRegionDescription(guestPhysicalAddress: 0, size: 8192, userAddress: 0x10000, mmapOffset: 0),
            VhostMemoryRegionDescription(guestPhysicalAddress: 4096, size: 8192, userAddress: 0x20000, mmapOffset: 0)])
        nack(.setMemTable, overlap.encoded(), fds: [f.dupMemfd(), f.dupMemfd()])
        nack(.addMemReg, [UInt8](repeating: 0, count: 40))
        // rings outside the mapped memory
        f.send(.setMemTable, f.table.encoded(), fds: [f.dupMemfd()])
        nack(.setVringAddr, VringAddress(index: 0, descriptor: TestFrontend.userBase + UInt64(TestFrontend.memorySize) - 8,
                                         used: TestFrontend.userBase, available: TestFrontend.userBase).encoded())
        nack(.setVringAddr, VringAddress(index: 0, descriptor: 0x1000, used: 0x2000, available: 0x3000).encoded())
        // Without REPLY_ACK asked for, a failure closes the connection.
        XCTAssertTrue(f.send(.setVringNum, VringState(index: 0, num: 5).encoded()).close)
        // Unknown requests close it too.
        XCTAssertTrue(f.backend.handle(VhostUserMessage(request: 999)).close)
    }

    func testDisconnectForgetsTheFrontend() {
        let f = TestFrontend(device: VioRnd())
        XCTAssertTrue(f.start(queues: 1))
        f.backend.disconnect()
        XCTAssertNil(f.backend.switchableMemory.current)
        XCTAssertFalse(f.backend.isDriverReady)
        // A second frontend starts from scratch.
        let g = f
        g.availIndex = [0, 0, 0]
        memset(g.host, 0, TestFrontend.memorySize)
        XCTAssertTrue(g.start(queues: 1))
        g.submit(0, head: 0, [(0x80000, 16, true)])
        g.backend.kick(queue: 0)
        XCTAssertEqual(g.usedIndex(0), 1)
    }
}

/// A device that takes requests and completes them only when told, so
/// tests can "crash" with requests in flight.
final class HoldingDevice: VirtioDevice {
    let name = "hold0"
    let deviceFeatures: UInt64 = 0
    let queueMaxSizes: [UInt16] = [8]
    var held: [UInt16] = []
    var served: [UInt16] = []
    var complete = false
    func attach(to host: VirtioDeviceHost) {}
    func readConfig(offset: Int, size: Int) -> UInt32 { 0 }
    func reset() {}
    func process(queue: Virtqueue, index: Int) throws {
        while let r = try queue.popRequest() {
            served.append(r.head)
            if complete { try queue.pushUsed(head: r.head, length: 0) } else { held.append(r.head) }
        }
    }
}

final class InflightTests: XCTestCase {
    override func setUp() { virtioLogHook = { _ in } }

    func testRestartedBackendResubmitsWhatWasInFlight() throws {
        let features = VhostUserProtocolFeature.replyAck | VhostUserProtocolFeature.inflightShmfd
        let first = HoldingDevice()
        let f = TestFrontend(device: first)
        XCTAssertNotNil(f.replyU64(.getFeatures))
        f.send(.setProtocolFeatures, U64Payload.encode(features))
        let got = f.send(.getInflightFD, InflightDescription(mmapSize: 0, mmapOffset: 0, queueCount: 1, queueSize: 8).encoded())
        let inflightFD = try XCTUnwrap(got.replyFD)
        let description = try InflightDescription(decoding: got.reply!.payload)
        XCTAssertEqual(description.mmapSize, UInt64(InflightLayout.queueRegionSize(queueSize: 8)))
        f.send(.setInflightFD, description.encoded(), fds: [dup(inflightFD)])
        XCTAssertTrue(f.start(queues: 1, protocolFeatures: features))
        // Three requests: the device takes all, completes none.
        f.submit(0, head: 0, [(0x80000, 4, false)])
        f.submit(0, head: 1, [(0x80000, 4, false)])
        f.submit(0, head: 2, [(0x80000, 4, false)])
        f.backend.kick(queue: 0)
        XCTAssertEqual(first.held, [0, 1, 2])
        XCTAssertEqual(f.usedIndex(0), 0)

        // "Crash": a new backend, the same guest memory and inflight fd. QEMU
        // restores last_avail_idx to the used index (0) when it could not
        // ask the dead backend.
        let second = HoldingDevice()
        second.complete = true
        let g = TestFrontend(device: second)
        let setup = g.backend
        func send(_ r: VhostUserRequest, _ p: [UInt8] = [], fds: [Int32] = []) { _ = setup.handle(VhostUserMessage(request: r.rawValue, payload: p, fds: fds)) }
        send(.setProtocolFeatures, U64Payload.encode(features))
        send(.setFeatures, U64Payload.encode(setup.offeredFeatures))
        send(.setInflightFD, description.encoded(), fds: [dup(inflightFD)])
        send(.setMemTable, f.table.encoded(), fds: [f.dupMemfd()])
        send(.setVringNum, VringState(index: 0, num: 8).encoded())
        send(.setVringBase, VringState(index: 0, num: 0).encoded())
        send(.setVringAddr, VringAddress(index: 0, descriptor: TestFrontend.userBase + f.desc(0), used: TestFrontend.userBase + f.used(0), available: TestFrontend.userBase + f.avail(0)).encoded())
        let call = cvhost_eventfd(), kick = cvhost_eventfd()
        defer { close(call); close(kick) }
        send(.setVringCall, VringFileIndex(index: 0, hasFD: true).encoded(), fds: [dup(call)])
        send(.setVringKick, VringFileIndex(index: 0, hasFD: true).encoded(), fds: [dup(kick)])
        send(.setVringEnable, VringState(index: 0, num: 1).encoded())
        // Each request served exactly once more, in the original order.
        XCTAssertEqual(second.served, [0, 1, 2])
        XCTAssertEqual(f.usedIndex(0), 3)
        // A new request after the resubmission is served normally.
        f.submit(0, head: 3, [(0x80000, 4, false)])
        setup.kick(queue: 0)
        XCTAssertEqual(second.served, [0, 1, 2, 3])
        XCTAssertEqual(f.usedIndex(0), 4)
        close(inflightFD)
    }

    func testLastBatchFixUpWhenTheCrashCameAfterTheUsedIndex() throws {
        let size = InflightLayout.queueRegionSize(queueSize: 8)
        let base = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        defer { base.deallocate() }
        let q = InflightQueue(base: base, descriptorCount: 8)
        q.initialize()
        q.taken(head: 5); q.taken(head: 6)
        // Head 5 was written to the used ring and the index bumped to 1, but
        // the process died before clearing its inflight flag.
        q.returning(head: 5)
        let resume = try q.recover(ringUsedIndex: 1, queueSize: 8)
        XCTAssertEqual(resume.resubmit, [6])
        XCTAssertEqual(resume.lastAvailIndex, 2)
        XCTAssertEqual(resume.usedIndex, 1)
    }

    func testHostileRegionIsRefused() throws {
        let size = InflightLayout.queueRegionSize(queueSize: 8)
        let base = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 64)
        defer { base.deallocate() }
        let q = InflightQueue(base: base, descriptorCount: 8)
        q.initialize()
        q.usedIndex = 100
        XCTAssertThrowsError(try q.recover(ringUsedIndex: 0, queueSize: 8))
        let fd = cvhost_memfd("small")
        defer { close(fd) }
        XCTAssertEqual(ftruncate(fd, 64), 0)
        XCTAssertThrowsError(try InflightRegion(fd: fd, description: InflightDescription(mmapSize: 4096, mmapOffset: 0, queueCount: 1, queueSize: 8), maxQueues: 1))
        XCTAssertThrowsError(try InflightRegion(fd: fd, description: InflightDescription(mmapSize: 64, mmapOffset: 0, queueCount: 1, queueSize: 8), maxQueues: 1))
        XCTAssertThrowsError(try InflightRegion(fd: fd, description: InflightDescription(mmapSize: 64, mmapOffset: UInt64.max, queueCount: 1, queueSize: 8), maxQueues: 1))
    }
}
