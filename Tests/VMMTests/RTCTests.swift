import XCTest
@testable import VMM

final class RTCTests: XCTestCase {
    // 2024-02-29 13:45:56 UTC, a Thursday.
    var now: Int64 = 1_709_214_356

    func makeRTC(low: UInt64 = 64 << 20, high: UInt64 = 0, cpus: Int = 1) -> RTC146818 {
        RTC146818(lowMemoryBytes: low, highMemoryBytes: high, cpus: cpus, clock: { [unowned self] in now })
    }

    func read(_ rtc: RTC146818, _ index: Int) -> UInt8 {
        rtc.write(offset: 0, size: 1, value: UInt64(index))
        return UInt8(rtc.read(offset: 1, size: 1))
    }

    func write(_ rtc: RTC146818, _ index: Int, _ value: UInt8) {
        rtc.write(offset: 0, size: 1, value: UInt64(index))
        rtc.write(offset: 1, size: 1, value: UInt64(value))
    }

    func testBCDTwentyFourHourByDefault() {
        let rtc = makeRTC()
        XCTAssertEqual(read(rtc, 0x0B), 0x02)
        XCTAssertEqual(read(rtc, 0x00), 0x56)
        XCTAssertEqual(read(rtc, 0x02), 0x45)
        XCTAssertEqual(read(rtc, 0x04), 0x13)
        XCTAssertEqual(read(rtc, 0x06), 0x05, "Thursday is day 5 (Sunday = 1)")
        XCTAssertEqual(read(rtc, 0x07), 0x29)
        XCTAssertEqual(read(rtc, 0x08), 0x02)
        XCTAssertEqual(read(rtc, 0x09), 0x24)
        XCTAssertEqual(read(rtc, 0x32), 0x20)
        XCTAssertEqual(read(rtc, 0x0A) & 0x80, 0, "no update in progress")
        XCTAssertEqual(read(rtc, 0x0D), 0x80, "valid RAM and time")
    }

    func testBinaryAndTwelveHourModes() {
        let rtc = makeRTC()
        write(rtc, 0x0B, 0x06)  // binary, 24h
        XCTAssertEqual(read(rtc, 0x00), 56)
        XCTAssertEqual(read(rtc, 0x04), 13)
        XCTAssertEqual(read(rtc, 0x09), 24)
        write(rtc, 0x0B, 0x04)  // binary, 12h
        XCTAssertEqual(read(rtc, 0x04), 0x80 | 1, "1 PM")
        write(rtc, 0x0B, 0x00)  // BCD, 12h
        now = 1_709_164_800 + 5  // 00:00:05 UTC: 12 AM
        XCTAssertEqual(read(rtc, 0x04), 0x12)
    }

    func testTheClockFollowsTheHost() {
        let rtc = makeRTC()
        now += 4
        XCTAssertEqual(read(rtc, 0x00), 0x00)
        XCTAssertEqual(read(rtc, 0x02), 0x46)
    }

    func testGuestSetsTheTime() {
        let rtc = makeRTC()
        write(rtc, 0x0B, 0x82)       // SET: freeze
        write(rtc, 0x04, 0x09)       // 09 hours
        now += 10
        XCTAssertEqual(read(rtc, 0x04), 0x09, "frozen while SET")
        XCTAssertEqual(read(rtc, 0x00), 0x56)
        write(rtc, 0x0B, 0x02)       // run from 09:45:56
        now += 3
        XCTAssertEqual(read(rtc, 0x04), 0x09)
        XCTAssertEqual(read(rtc, 0x00), 0x59)
        XCTAssertEqual(read(rtc, 0x07), 0x29, "the date kept")
    }

    /// CivilTime replaces gmtime_r/timegm (which may open time zone files
    /// inside the VM sandbox): it must agree with them everywhere.
    func testCivilTimeAgreesWithLibc() {
        var epochs: [Int64] = [0, -1, 86399, 86400, 951_782_400, 951_868_800, 4_107_542_400, -2_208_988_800,
                               1_709_214_356, 253_402_300_799, -62_135_596_800]
        var g = SystemRandomNumberGenerator()
        for _ in 0..<20000 { epochs.append(Int64.random(in: -70_000_000_000...260_000_000_000, using: &g)) }
        for e in epochs {
            var t = tm()
            var tt = time_t(e)
            gmtime_r(&tt, &t)
            let c = CivilTime(epoch: e)
            XCTAssertEqual(c, CivilTime(year: Int64(t.tm_year) + 1900, month: Int64(t.tm_mon) + 1, day: Int64(t.tm_mday),
                                        hour: Int64(t.tm_hour), minute: Int64(t.tm_min), second: Int64(t.tm_sec),
                                        weekday: Int64(t.tm_wday)), "epoch \(e)")
            XCTAssertEqual(CivilTime.days(year: c.year, month: c.month, day: c.day) * 86400
                           + c.hour * 3600 + c.minute * 60 + c.second, e)
        }
        // Out-of-range fields, as a guest may write them (BCD 0xFF = 165), roll over like timegm.
        for (y, m, d) in [(2024, 0, 1), (2024, 13, 1), (2024, 165, 165), (1999, 2, 29), (2000, 2, 30), (9999, 12, 31), (0, 1, 0)] {
            var t = tm()
            t.tm_year = Int32(y - 1900); t.tm_mon = Int32(m - 1); t.tm_mday = Int32(d)
            XCTAssertEqual(CivilTime.days(year: Int64(y), month: Int64(m), day: Int64(d)) * 86400, Int64(timegm(&t)), "\(y)-\(m)-\(d)")
        }
    }

    func testEveryRegisterIsReadableInEveryMode() {
        let rtc = makeRTC()
        for b: UInt8 in [0x02, 0x06, 0x04, 0x00, 0x82] {
            write(rtc, 0x0B, b)
            for index in 0..<256 { _ = read(rtc, index) }   // bit 7 is the NMI mask
        }
        write(rtc, 0x0B, 0x02)
        for v: UInt8 in [0xFF, 0x00, 0x99] {                // garbage the guest may store in the clock
            for r in [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32] { write(rtc, r, v) }
            for index in 0..<128 { _ = read(rtc, index) }
        }
    }

    func testMemorySizeBytesSeaBIOSReads() {
        let rtc = makeRTC(low: 3 << 30, high: 1 << 30, cpus: 4)
        XCTAssertEqual(UInt16(read(rtc, 0x15)) | UInt16(read(rtc, 0x16)) << 8, 640)
        XCTAssertEqual(UInt16(read(rtc, 0x17)) | UInt16(read(rtc, 0x18)) << 8, 0xFFFF, "capped")
        XCTAssertEqual(UInt16(read(rtc, 0x30)) | UInt16(read(rtc, 0x31)) << 8, 0xFFFF)
        XCTAssertEqual(UInt16(read(rtc, 0x34)) | UInt16(read(rtc, 0x35)) << 8, UInt16(((3 << 30) - (16 << 20)) >> 16))
        let high = UInt32(read(rtc, 0x5B)) | UInt32(read(rtc, 0x5C)) << 8 | UInt32(read(rtc, 0x5D)) << 16
        XCTAssertEqual(high, (1 << 30) >> 16)
        XCTAssertEqual(read(rtc, 0x5F), 3, "CPU count - 1")

        let small = makeRTC(low: 32 << 20)
        XCTAssertEqual(UInt16(read(small, 0x17)) | UInt16(read(small, 0x18)) << 8, 31 * 1024)
        XCTAssertEqual(UInt16(read(small, 0x34)) | UInt16(read(small, 0x35)) << 8, 256)
        XCTAssertEqual(read(small, 0x5B), 0)
    }

    func testRegisterCClearsOnReadAndRAMIsPlain() {
        let rtc = makeRTC()
        write(rtc, 0x0C, 0xFF)
        XCTAssertEqual(read(rtc, 0x0C), 0, "read-only")
        write(rtc, 0x40, 0x5A)
        XCTAssertEqual(read(rtc, 0x40), 0x5A)
        rtc.write(offset: 0, size: 1, value: 0x80 | 0x40)  // NMI mask bit is not part of the index
        XCTAssertEqual(rtc.read(offset: 1, size: 1), 0x5A)
    }
}

final class I8042Tests: XCTestCase {
    var resets = 0
    lazy var kbc = I8042(onReset: { [unowned self] in resets += 1 })

    func command(_ c: UInt8) { kbc.write(offset: 4, size: 1, value: UInt64(c)) }
    func data(_ d: UInt8) { kbc.write(offset: 0, size: 1, value: UInt64(d)) }
    var status: UInt8 { UInt8(kbc.read(offset: 4, size: 1)) }
    func output() -> UInt8 { UInt8(kbc.read(offset: 0, size: 1)) }

    func testProbeSequenceLinuxUses() {
        XCTAssertNotEqual(status, 0xFF, "a controller is present")
        XCTAssertEqual(status & 0x01, 0, "output buffer empty")
        command(0x20)
        XCTAssertEqual(status & 0x01, 0x01)
        XCTAssertEqual(output(), 0x65)
        command(0x60); data(0x47)
        command(0x20)
        XCTAssertEqual(output(), 0x47)
        command(0xAA)
        XCTAssertEqual(output(), 0x55)
        command(0xD3); data(0x5A)
        XCTAssertEqual(status & 0x21, 0x21, "aux data")
        XCTAssertEqual(output(), 0x5A)
        data(0xFF)
        XCTAssertEqual(output(), 0xFA)
        XCTAssertEqual(output(), 0xAA)
        XCTAssertEqual(resets, 0)
    }

    func testResetLine() {
        command(0xFE)
        XCTAssertEqual(resets, 1)
        command(0xD1); data(0x01)
        XCTAssertEqual(resets, 1, "reset line kept high")
        command(0xD1); data(0x00)
        XCTAssertEqual(resets, 2)
    }
}

final class BusTests: XCTestCase {
    func testOverlapsAreRefusedAndLookupsFindTheRightDevice() throws {
        let log = LogLines()
        let bus = Bus(name: "io", log: { log.append($0) })
        let a = SinkDevice(), b = RecordingDevice()
        try bus.register(base: 0x10, length: 0x10, device: a)
        try bus.register(base: 0x30, length: 4, device: b)
        XCTAssertThrowsError(try bus.register(base: 0x1F, length: 2, device: b))
        XCTAssertThrowsError(try bus.register(base: UInt64.max, length: 2, device: b))
        XCTAssertThrowsError(try bus.register(base: 0x40, length: 0, device: b))
        XCTAssertEqual(bus.read(0x10, size: 1), 0)
        XCTAssertEqual(bus.read(0x32, size: 2), 0x0202, "offset 2 into the device")
        bus.write(0x33, size: 1, value: 0x1FF)
        XCTAssertEqual(b.writes.last?.0, 3)
        XCTAssertEqual(b.writes.last?.1, 0xFF, "value masked to the access size")
    }

    func testUnclaimedAccessIsAllOnesAndLoggedOncePerAddress() {
        let log = LogLines()
        let bus = Bus(name: "io", log: { log.append($0) })
        XCTAssertEqual(bus.read(0x99, size: 1), 0xFF)
        XCTAssertEqual(bus.read(0x99, size: 2), 0xFFFF)
        XCTAssertEqual(bus.read(0x99, size: 4), 0xFFFF_FFFF)
        bus.write(0x99, size: 1, value: 1)
        XCTAssertEqual(log.lines, ["io bus: unclaimed 1-byte read from 0x99"])
        for port in 0..<1000 { _ = bus.read(UInt64(0x1000 + port), size: 1) }
        XCTAssertLessThanOrEqual(log.lines.count, 70, "bounded: a guest cannot flood the log")
        XCTAssertTrue(log.lines.last!.contains("no longer logging"))
    }
}

final class RecordingDevice: BusDevice {
    var writes: [(UInt64, UInt64)] = []
    func read(offset: UInt64, size: Int) -> UInt64 { 0x0200 | offset }
    func write(offset: UInt64, size: Int, value: UInt64) { writes.append((offset, value)) }
}
