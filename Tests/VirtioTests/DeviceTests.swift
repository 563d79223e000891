import XCTest
import VMDSystem
import Foundation
@testable import Virtio
@testable import VirtioDevices

// MARK: vionet

final class VioNetTests: XCTestCase {
    var fds: [Int32] = [-1, -1]
    var net: VioNet!
    var driver: TestDriver!
    let guestMAC: [UInt8] = [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34]

    override func setUp() {
        virtioLogHook = { _ in }
        // A SOCK_SEQPACKET pair stands in for the tap: one read, one frame.
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &fds), 0)
        XCTAssertNoThrow(try FD.setNonBlocking(fds[0]))
        XCTAssertNoThrow(try FD.setNonBlocking(fds[1]))
    }

    override func tearDown() {
        close(fds[0])
        close(fds[1])
    }

    func start(locked: Bool) {
        net = VioNet(name: "vionet0", backend: TapBackend(fd: fds[0]), mac: guestMAC, lockedLinkAddress: locked)
        driver = TestDriver(device: net, type: .network)
        // One buffer per frame here; MergeableReceiveTests covers MRG_RXBUF.
        XCTAssertTrue(driver.initialize(features: driver.offeredFeatures() & ~VirtioNetFeature.mrgRxbuf))
    }

    func frame(source: [UInt8], payload: [UInt8] = Array("hello".utf8)) -> [UInt8] {
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] + source + [0x08, 0x00] + payload
    }

    /// What the host side of the "tap" receives, nil if nothing.
    func hostReceive() -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 70000)
        let n = read(fds[1], &buffer, buffer.count)
        return n < 0 ? nil : Array(buffer.prefix(n))
    }

    func hostSend(_ bytes: [UInt8]) {
        XCTAssertEqual(write(fds[1], bytes, bytes.count), bytes.count)
    }

    func testConfigHasMACAndLinkStatus() {
        start(locked: false)
        XCTAssertEqual(driver.read(0x300, 4), 0xd1bb_e1fe)
        XCTAssertEqual(driver.read(0x304, 2), 0x3412)
        XCTAssertEqual(driver.read(0x306, 2), 1, "link up")
        net.linkUp = false
        XCTAssertEqual(driver.read(0x306, 2), 0)
        XCTAssertEqual(driver.readISR() & VirtioISR.configChange, VirtioISR.configChange)
        XCTAssertEqual(driver.read(0x15, 1), 1, "config generation")
    }

    func testRandomMAC() {
        let mac = VioNet.randomMAC(index: 2)
        XCTAssertEqual(Array(mac[0..<4]), [0xfe, 0xe1, 0xbb, 0xd3])
        XCTAssertEqual(mac.count, 6)
        XCTAssertNil(VioNet(name: "x", backend: TapBackend(fd: -1), mac: [1, 2], lockedLinkAddress: false))
    }

    func testTransmit() {
        start(locked: false)
        let header = [UInt8](repeating: 0x77, count: 12)     // guest header junk is not passed on
        let f = frame(source: guestMAC)
        driver.submit(1, [(driver.allocate(header), 12, false), (driver.allocate(f), UInt32(f.count), false)])
        XCTAssertEqual(hostReceive(), [UInt8](repeating: 0, count: 12) + f)
        XCTAssertEqual(driver.takeUsed(1).count, 1)
        XCTAssertTrue(driver.sink.level)
    }

    func testLockedLinkAddressDropsForeignSource() {
        start(locked: true)
        let foreign = frame(source: [0x02, 0, 0, 0, 0, 1])
        driver.submit(1, [(driver.allocate([UInt8](repeating: 0, count: 12) + foreign), UInt32(12 + foreign.count), false)])
        XCTAssertNil(hostReceive(), "dropped")
        XCTAssertEqual(net.droppedTransmitFrames, 1)
        XCTAssertEqual(driver.takeUsed(1).count, 1, "the buffer still goes back to the guest")
        let own = frame(source: guestMAC)
        driver.submit(1, [(driver.allocate([UInt8](repeating: 0, count: 12) + own), UInt32(12 + own.count), false)])
        XCTAssertEqual(hostReceive(), [UInt8](repeating: 0, count: 12) + own)
    }

    func testRuntFrameDropped() {
        start(locked: false)
        driver.submit(1, [(driver.allocate([UInt8](repeating: 0, count: 20)), 20, false)])
        XCTAssertNil(hostReceive())
        XCTAssertEqual(net.droppedTransmitFrames, 1)
    }

    func testReceive() {
        start(locked: false)
        var resumed = 0
        net.onInputWanted = { resumed += 1 }
        let incoming = [UInt8](repeating: 0, count: 12) + frame(source: [2, 0, 0, 0, 0, 9])
        hostSend(incoming)
        XCTAssertFalse(net.backendReadable(), "no receive buffers yet: stop watching the tap")
        let buffer = driver.allocate(length: 1526)
        driver.submit(0, [(buffer, 1526, true)])          // guest adds a buffer: the waiting frame moves in
        XCTAssertEqual(resumed, 0, "the frame took the only buffer: the tap stays unwatched")
        let used = driver.takeUsed(0)
        XCTAssertEqual(used.first?.length, UInt32(incoming.count))
        var expected = incoming
        expected[10] = 1                                   // num_buffers
        XCTAssertEqual(driver.memory.readBytes(at: buffer, count: incoming.count), expected)
        XCTAssertTrue(driver.sink.level)
        // More buffers than frames: tapReadable reports it wants more.
        driver.submit(0, [(driver.allocate(length: 1526), 1526, true)])
        XCTAssertEqual(resumed, 1, "a buffer left over: watch the tap again")
        driver.submit(0, [(driver.allocate(length: 1526), 1526, true)])
        hostSend(incoming)
        XCTAssertTrue(net.backendReadable())
        XCTAssertEqual(driver.takeUsed(0).count, 1)
    }

    func testReceiveIntoChainOfBuffers() {
        start(locked: false)
        let a = driver.allocate(length: 12), b = driver.allocate(length: 1514)
        let head = driver.addChain(0, [(a, 12, true), (b, 1514, true)])
        driver.makeAvailable(0, head)
        let payload = [UInt8](repeating: 0, count: 12) + frame(source: [2, 0, 0, 0, 0, 9], payload: [UInt8](repeating: 0xab, count: 100))
        hostSend(payload)
        net.backendReadable()
        XCTAssertEqual(driver.takeUsed(0).first?.length, UInt32(payload.count))
        XCTAssertEqual(driver.memory.readBytes(at: b, count: payload.count - 12), Array(payload[12...]))
    }

    func testReceiveBufferTooSmall() {
        start(locked: false)
        driver.submit(0, [(driver.allocate(length: 20), 20, true)])
        hostSend([UInt8](repeating: 0, count: 12) + frame(source: [2, 0, 0, 0, 0, 9]))
        net.backendReadable()
        XCTAssertEqual(driver.takeUsed(0).first?.length, 0)
        XCTAssertEqual(net.droppedReceiveFrames, 1)
        XCTAssertFalse(driver.needsReset)
    }

    func testNothingBeforeDriverOKThenResumeOnFirstBuffers() {
        net = VioNet(name: "vionet0", backend: TapBackend(fd: fds[0]), mac: guestMAC, lockedLinkAddress: false)
        var resumed = 0
        net.onInputWanted = { resumed += 1 }
        driver = TestDriver(device: net, type: .network)
        let incoming = [UInt8](repeating: 0, count: 12) + frame(source: [2, 0, 0, 0, 0, 9])
        hostSend(incoming)
        XCTAssertFalse(net.backendReadable(), "driver not ready: stop watching the tap")
        XCTAssertTrue(driver.initialize())
        XCTAssertEqual(resumed, 0)
        driver.submit(0, [(driver.allocate(length: 1526), 1526, true)])
        XCTAssertEqual(driver.takeUsed(0).first?.length, UInt32(incoming.count), "the waiting frame was delivered")
        XCTAssertEqual(resumed, 0, "it took the only buffer")
        driver.submit(0, [(driver.allocate(length: 1526), 1526, true)])
        XCTAssertEqual(resumed, 1, "a buffer left over resumes the tap watch")
    }
}

// MARK: viornd

final class VioRndTests: XCTestCase {
    func testFillsWritableBuffers() {
        let rnd = VioRnd()
        let driver = TestDriver(device: rnd, type: .entropy)
        XCTAssertTrue(driver.initialize())
        XCTAssertEqual(driver.queueSizes, [64])
        let a = driver.allocate(length: 64), b = driver.allocate(length: 1000)
        driver.submit(0, [(a, 64, true), (b, 1000, true)])
        XCTAssertEqual(driver.takeUsed(0).first?.length, 1064)
        let bytes = (driver.memory.readBytes(at: a, count: 64) ?? []) + (driver.memory.readBytes(at: b, count: 1000) ?? [])
        XCTAssertGreaterThan(Set(bytes).count, 200, "looks random")
        XCTAssertTrue(driver.sink.level)
    }
}

// MARK: vioscsi

final class VioSCSITests: XCTestCase {
    var iso: MemoryBlockBackend!
    var driver: TestDriver!

    override func setUp() {
        virtioLogHook = { _ in }
        iso = MemoryBlockBackend(size: 2048 * 100, readOnly: true)
        driver = TestDriver(device: VioSCSI(backend: iso), type: .scsi)
        XCTAssertTrue(driver.initialize())
    }

    struct Response {
        var senseLength: UInt32
        var resid: UInt32
        var status: UInt8
        var response: UInt8
        var sense: [UInt8]
        var data: [UInt8]
        var used: UInt32
    }

    func command(_ cdb: [UInt8], dataIn: Int = 0, lun: [UInt8] = [1, 0, 0x40, 0, 0, 0, 0, 0]) -> Response {
        let header = lun + [UInt8](repeating: 0, count: 8) + [0, 0, 0] + cdb + [UInt8](repeating: 0, count: 32 - cdb.count)
        let responseAddress = driver.allocate(length: 108)
        let dataAddress = driver.allocate(length: dataIn)
        var buffers: [(address: UInt64, length: UInt32, writable: Bool)] = [
            (driver.allocate(header), UInt32(header.count), false), (responseAddress, 108, true)]
        if dataIn > 0 { buffers.append((dataAddress, UInt32(dataIn), true)) }
        driver.submit(2, buffers)
        let used = driver.takeUsed(2).first?.length ?? 0
        let r = driver.memory.readBytes(at: responseAddress, count: 108) ?? []
        return Response(senseLength: readLittleEndian(r, offset: 0, size: 4), resid: readLittleEndian(r, offset: 4, size: 4),
                        status: r[10], response: r[11], sense: Array(r[12..<30]),
                        data: driver.memory.readBytes(at: dataAddress, count: dataIn) ?? [], used: used)
    }

    func testConfig() {
        XCTAssertEqual(driver.queueSizes.count, 3)
        XCTAssertEqual(driver.read(0x300, 4), 1, "one request queue")
        XCTAssertEqual(driver.read(0x314, 4), 96, "sense size")
        XCTAssertEqual(driver.read(0x318, 4), 32, "cdb size")
    }

    func testTestUnitReadyAndPrevent() {
        XCTAssertEqual(command([0x00]).status, 0)
        XCTAssertEqual(command([0x1e, 0, 0, 0, 1]).status, 0)
    }

    func testInquiry() {
        let r = command([0x12, 0, 0, 0, 96], dataIn: 96)
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.data[0], 0x05, "CD-ROM")
        XCTAssertEqual(r.data[1], 0x80, "removable")
        XCTAssertEqual(String(decoding: r.data[8..<16], as: UTF8.self), "OpenBSD ")
        XCTAssertEqual(r.used, 108 + 36)
        XCTAssertEqual(r.resid, 60)
        XCTAssertEqual(command([0x12, 1, 0x80, 0, 96], dataIn: 96).status, 2, "no VPD pages")
    }

    func testReadCapacity() {
        let r = command([0x25], dataIn: 8)
        XCTAssertEqual(r.data, [0, 0, 0, 99, 0, 0, 0x08, 0])
    }

    func testRead10And12() {
        var r = command([0x28, 0, 0, 0, 0, 5, 0, 0, 2], dataIn: 4096)
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.data, Array(iso.bytes[10240..<14336]))
        XCTAssertEqual(r.used, 108 + 4096)
        r = command([0xa8, 0, 0, 0, 0, 99, 0, 0, 0, 1], dataIn: 2048)
        XCTAssertEqual(r.data, Array(iso.bytes[(99 * 2048)...]))
        r = command([0x28, 0, 0, 0, 0, 99, 0, 0, 2], dataIn: 4096)
        XCTAssertEqual(r.status, 2, "past the end")
        XCTAssertEqual(r.sense[2], 0x05)
        XCTAssertEqual(r.sense[12], 0x21)
        XCTAssertEqual(r.senseLength, 18)
        r = command([0xa8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], dataIn: 2048)
        XCTAssertEqual(r.status, 2, "huge LBA and count do not overflow")
    }

    func testModeSense() {
        var r = command([0x1a, 0, 0x2a, 0, 64], dataIn: 64)
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.data[4], 0x2a)
        XCTAssertEqual(Int(r.data[0]), 3 + 20)
        r = command([0x5a, 0, 0x3f, 0, 0, 0, 0, 0, 255], dataIn: 255)
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.data[8], 0x01)
        XCTAssertEqual(command([0x1a, 0, 0x05, 0, 64], dataIn: 64).status, 2)
    }

    func testReadTOC() {
        let r = command([0x43, 0, 0, 0, 0, 0, 0, 0, 100], dataIn: 100)
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(Array(r.data[0..<4]), [0, 18, 1, 1])
        XCTAssertEqual(r.data[6], 1, "track 1")
        XCTAssertEqual(r.data[14], 0xaa, "lead-out")
        XCTAssertEqual(Array(r.data[16..<20]), [0, 0, 0, 100])
        let msf = command([0x43, 2, 0, 0, 0, 0, 0, 0, 100], dataIn: 100)
        XCTAssertEqual(Array(msf.data[8..<12]), [0, 0, 2, 0], "track 1 at 00:02:00")
        XCTAssertEqual(command([0x43, 0, 5, 0, 0, 0, 0, 0, 100], dataIn: 100).status, 2)
    }

    func testGetConfigurationEventStatusRequestSense() {
        var r = command([0x46, 0, 0, 0, 0, 0, 0, 0, 64], dataIn: 64)
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(Array(r.data[6..<8]), [0, 8], "current profile CD-ROM")
        r = command([0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], dataIn: 8)
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.data[5], 2, "media present")
        r = command([0x03, 0, 0, 0, 18], dataIn: 18)
        XCTAssertEqual(r.data[0], 0x70)
        XCTAssertEqual(r.data[2], 0)
    }

    func testReportLUNsAndDiscInformation() {
        var r = command([0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 64], dataIn: 64)
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(Array(r.data[0..<16]), [0, 0, 0, 8] + [UInt8](repeating: 0, count: 12))
        XCTAssertEqual(r.used, 108 + 16)
        r = command([0x51, 0, 0, 0, 0, 0, 0, 0, 34], dataIn: 34)
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(Array(r.data[0..<3]), [0, 32, 0x0e])
    }

    func testUnknownCommandAndBadLun() {
        let r = command([0x2a, 0, 0, 0, 0, 0, 0, 0, 1])    // WRITE(10)
        XCTAssertEqual(r.status, 2)
        XCTAssertEqual(r.sense[12], 0x20)
        XCTAssertEqual(command([0x00], lun: [1, 1, 0x40, 0, 0, 0, 0, 0]).response, VirtioSCSIResponse.badTarget)
        XCTAssertEqual(command([0x00], lun: [1, 0, 0x40, 1, 0, 0, 0, 0]).response, VirtioSCSIResponse.badTarget)
    }

    func testControlQueueAnswered() {
        let response = driver.allocate([0xee])
        var tmf: [UInt8] = []
        appendLittleEndian(UInt32(0), to: &tmf)
        tmf += [UInt8](repeating: 0, count: 20)
        driver.submit(0, [(driver.allocate(tmf), UInt32(tmf.count), false), (response, 1, true)])
        XCTAssertEqual(driver.memory.readBytes(at: response, count: 1), [0])
        XCTAssertEqual(driver.takeUsed(0).count, 1)
    }

    func testShortRequestsDoNotTrap() {
        driver.submit(2, [(driver.allocate([1]), 1, false), (driver.allocate(length: 108), 108, true)])
        XCTAssertEqual(driver.takeUsed(2).first?.length, 108)
        driver.submit(2, [(driver.allocate([1]), 1, false), (driver.allocate(length: 10), 10, true)])
        XCTAssertEqual(driver.takeUsed(2).first?.length, 0)
        XCTAssertFalse(driver.needsReset)
    }
}

// MARK: vmmci

final class VMMCITests: XCTestCase {
    func testCommandAckAndTime() {
        let vmmci = VMMCI()
        vmmci.clock = { (1_700_000_000, 123_456) }
        var acks: [VMMCICommand] = []
        vmmci.onAcknowledge = { acks.append($0) }
        let memory = PlainGuestMemory(size: 4096)
        let sink = RecordingSink()
        let transport = VirtioLegacyPCITransport(device: vmmci, memory: memory, interruptSink: sink)
        XCTAssertEqual(transport.read(offset: 0x00, size: 4), 0b111, "TIMESYNC, ACK, SYNCRTC")
        transport.write(offset: 0x04, size: 4, value: 0b011)      // guest without SYNCRTC
        transport.write(offset: 0x12, size: 1, value: 7)

        XCTAssertFalse(vmmci.send(command: .syncRTC), "guest did not accept SYNCRTC")
        XCTAssertFalse(sink.level)
        XCTAssertTrue(vmmci.send(command: .shutdown))
        XCTAssertTrue(sink.level)
        XCTAssertEqual(transport.read(offset: 0x13, size: 1), UInt32(VirtioISR.configChange))
        XCTAssertFalse(sink.level)
        XCTAssertEqual(transport.read(offset: 0x14, size: 4), VMMCICommand.shutdown.rawValue)
        transport.write(offset: 0x14, size: 4, value: VMMCICommand.shutdown.rawValue)   // ack
        XCTAssertEqual(acks, [.shutdown])
        XCTAssertEqual(transport.read(offset: 0x14, size: 4), 0)

        XCTAssertEqual(transport.read(offset: 0x18, size: 4), 1_700_000_000)
        XCTAssertEqual(transport.read(offset: 0x1c, size: 4), 0)
        XCTAssertEqual(transport.read(offset: 0x20, size: 4), 123_456)
        transport.write(offset: 0x14, size: 4, value: 77)
        XCTAssertEqual(acks, [.shutdown], "unknown commands are not acks")
    }
}

// MARK: a real tap

final class TapBackendTests: XCTestCase {
    /// Opens a transient tap the way `vmd: priv` will, then checks that
    /// the device side can switch it to 12-byte headers and non-blocking.
    func testPrepareRealTap() throws {
        let fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw XCTSkip("no /dev/net/tun here") }
        defer { close(fd) }
        var request = [UInt8](repeating: 0, count: 40)          // struct ifreq
        for (i, byte) in "vtest%d".utf8.enumerated() { request[i] = byte }
        let flags: UInt16 = 0x0002 | 0x1000 | 0x4000             // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        request[16] = UInt8(flags & 0xff)
        request[17] = UInt8(flags >> 8)
        let created = request.withUnsafeMutableBytes { ioctl(fd, UInt(0x4004_54ca), $0.baseAddress!) }   // TUNSETIFF
        guard created == 0 else { throw XCTSkip("cannot create a tap: errno \(errno)") }
        XCTAssertNoThrow(try TapBackend.prepareTap(fd: fd))
        var size: CInt = 0
        XCTAssertEqual(ioctl(fd, UInt(0x8004_54d7), &size), 0)   // TUNGETVNETHDRSZ
        XCTAssertEqual(size, 12)
        // Never risk a blocking read in a test run: check first, then read.
        guard fcntl(fd, F_GETFL) & O_NONBLOCK != 0 else {
            XCTFail("the tap was not made non-blocking")
            return
        }
        var buffer = [UInt8](repeating: 0, count: 2048)
        XCTAssertNil(try buffer.withUnsafeMutableBytes { try TapBackend(fd: fd).receive(into: $0) })
        XCTAssertThrowsError(try TapBackend.prepareTap(fd: -1))
    }
}
