import Glibc
import VMDSystem

/// mc146818 RTC/CMOS on ports 0x70 (index, bit 7 = NMI mask) and 0x71 (data).
///
/// The clock shows the host's UTC time plus an offset the guest sets by writing
/// the time registers; the format follows register B (DM bit 2: binary instead
/// of BCD; 24/12 bit 1: 24-hour clock). The rest of the 128 bytes is plain CMOS
/// RAM, preset with what SeaBIOS and old guests read: memory sizes at
/// 0x15-0x18, 0x30-0x31, 0x34-0x35, 0x5b-0x5d and the CPU count at 0x5f.
/// No alarm or periodic interrupts (IRQ 8 is never raised): nothing this VMM
/// boots uses them, and Linux falls back to its other clock sources.
final class RTC146818: BusDevice {
    static let seconds = 0x00, minutes = 0x02, hours = 0x04, weekday = 0x06
    static let dayOfMonth = 0x07, month = 0x08, year = 0x09, century = 0x32
    static let regA = 0x0A, regB = 0x0B, regC = 0x0C, regD = 0x0D
    static let regBSet: UInt8 = 0x80, regBBinary: UInt8 = 0x04, regB24h: UInt8 = 0x02

    private let lock = Mutex()
    private var index = 0
    private var cmos = [UInt8](repeating: 0, count: 128)
    private var offsetSeconds: Int64 = 0
    /// Host clock source, replaceable in tests.
    private let clock: () -> Int64

    /// - lowMemoryBytes: RAM below the PCI hole; highMemoryBytes: RAM above 4 GiB.
    init(lowMemoryBytes: UInt64, highMemoryBytes: UInt64, cpus: Int, clock: @escaping () -> Int64 = Clock.wallSeconds) {
        self.clock = clock
        cmos[Self.regA] = 0x26  // 32.768 kHz time base, 1024 Hz rate
        cmos[Self.regB] = Self.regB24h
        cmos[Self.regD] = 0x80  // valid RAM and time
        // Base memory in KiB (640).
        put16(0x15, 640)
        // Extended memory above 1 MiB in KiB, capped at 0xFFFF (65 MiB).
        let extendedKiB = lowMemoryBytes > 0x100000 ? (lowMemoryBytes - 0x100000) / 1024 : 0
        put16(0x17, UInt16(min(extendedKiB, 0xFFFF)))
        put16(0x30, UInt16(min(extendedKiB, 0xFFFF)))
        // Memory above 16 MiB (below the hole) in 64 KiB units.
        let above16M = lowMemoryBytes > 0x1000000 ? (lowMemoryBytes - 0x1000000) >> 16 : 0
        put16(0x34, UInt16(min(above16M, 0xFFFF)))
        // Memory above 4 GiB in 64 KiB units, three bytes.
        let high = min(highMemoryBytes >> 16, 0xFFFFFF)
        cmos[0x5B] = UInt8(high & 0xFF)
        cmos[0x5C] = UInt8((high >> 8) & 0xFF)
        cmos[0x5D] = UInt8((high >> 16) & 0xFF)
        cmos[0x5F] = UInt8(clamping: max(cpus - 1, 0))
    }

    private func put16(_ at: Int, _ value: UInt16) {
        cmos[at] = UInt8(value & 0xFF)
        cmos[at + 1] = UInt8(value >> 8)
    }

    func read(offset: UInt64, size: Int) -> UInt64 {
        lock.locked {
            if offset == 0 { return 0xFF }  // the index port is write-only
            return UInt64(readRegister(index))
        }
    }

    func write(offset: UInt64, size: Int, value: UInt64) {
        lock.locked {
            let byte = UInt8(truncatingIfNeeded: value)
            if offset == 0 { index = Int(byte & 0x7F); return }
            writeRegister(index, byte)
        }
    }

    // MARK: registers (lock held)

    private static let timeRegisters: Set<Int> = [seconds, minutes, hours, weekday, dayOfMonth, month, year, century]

    private func readRegister(_ reg: Int) -> UInt8 {
        switch reg {
        case Self.regA:
            return cmos[reg] & 0x7F  // UIP never set: reads are always consistent
        case Self.regC:
            let value = cmos[reg]
            cmos[reg] = 0  // reading C clears the interrupt flags
            return value
        case _ where Self.timeRegisters.contains(reg):
            if cmos[Self.regB] & Self.regBSet != 0 { return cmos[reg] }  // frozen while SET
            return encodeTime(clock() + offsetSeconds)[reg] ?? 0
        default:
            return cmos[reg]
        }
    }

    private func writeRegister(_ reg: Int, _ value: UInt8) {
        switch reg {
        case Self.regC, Self.regD:
            break  // read-only
        case Self.regB:
            let wasSet = cmos[reg] & Self.regBSet != 0
            if !wasSet && value & Self.regBSet != 0 {
                // Freeze the displayed time so the guest edits a snapshot.
                for (r, v) in encodeTime(clock() + offsetSeconds) { cmos[r] = v }
            }
            cmos[reg] = value
            if wasSet && value & Self.regBSet == 0 { adoptGuestTime() }
        case _ where Self.timeRegisters.contains(reg):
            if cmos[Self.regB] & Self.regBSet != 0 {
                cmos[reg] = value
            } else {
                var shown = encodeTime(clock() + offsetSeconds)
                shown[reg] = value
                for (r, v) in shown { cmos[r] = v }
                adoptGuestTime()
            }
        default:
            cmos[reg] = value
        }
    }

    /// Takes the time in the CMOS time registers as the guest's clock.
    private func adoptGuestTime() {
        let binary = cmos[Self.regB] & Self.regBBinary != 0
        func field(_ r: Int) -> Int { binary ? Int(cmos[r]) : fromBCD(cmos[r]) }
        var hour = binary ? Int(cmos[Self.hours] & 0x7F) : fromBCD(cmos[Self.hours] & 0x7F)
        if cmos[Self.regB] & Self.regB24h == 0 {
            let pm = cmos[Self.hours] & 0x80 != 0
            hour = hour % 12 + (pm ? 12 : 0)
        }
        // Out-of-range fields (month 0, BCD 0xFF) roll over as timegm's did.
        let days = CivilTime.days(year: Int64(field(Self.century) * 100 + field(Self.year)),
                                  month: Int64(field(Self.month)), day: Int64(field(Self.dayOfMonth)))
        let guest = days * 86400 + Int64(hour) * 3600 + Int64(field(Self.minutes)) * 60 + Int64(field(Self.seconds))
        offsetSeconds = guest - clock()
    }

    /// The time registers for `seconds` since the epoch, in register B's format.
    private func encodeTime(_ epoch: Int64) -> [Int: UInt8] {
        let t = CivilTime(epoch: epoch)
        let binary = cmos[Self.regB] & Self.regBBinary != 0
        func enc(_ v: Int64) -> UInt8 {
            let value = UInt8(clamping: max(v, 0) % 100)
            return binary ? value : toBCD(value)
        }
        var hour = enc(t.hour)
        if cmos[Self.regB] & Self.regB24h == 0 {
            let h12 = t.hour % 12 == 0 ? 12 : t.hour % 12
            hour = enc(h12) | (t.hour >= 12 ? 0x80 : 0)
        }
        return [
            Self.seconds: enc(t.second), Self.minutes: enc(t.minute), Self.hours: hour,
            Self.weekday: enc(t.weekday + 1), Self.dayOfMonth: enc(t.day),
            Self.month: enc(t.month), Self.year: enc(t.year % 100), Self.century: enc(t.year / 100),
        ]
    }
}

/// UTC calendar arithmetic (proleptic Gregorian), without libc: gmtime_r
/// and timegm may load time zone files, which the VM process's sandbox
/// forbids (a guest reading the RTC would kill its VM). The day counts are
/// Howard Hinnant's days_from_civil/civil_from_days.
struct CivilTime: Equatable {
    var year: Int64, month: Int64, day: Int64         // month 1...12, day 1...31
    var hour: Int64, minute: Int64, second: Int64
    var weekday: Int64                                  // 0 = Sunday

    init(year: Int64, month: Int64, day: Int64, hour: Int64, minute: Int64, second: Int64, weekday: Int64) {
        (self.year, self.month, self.day) = (year, month, day)
        (self.hour, self.minute, self.second, self.weekday) = (hour, minute, second, weekday)
    }

    /// The UTC date and time `epoch` seconds after 1970-01-01 00:00:00.
    init(epoch: Int64) {
        let days = Self.floorDiv(epoch, 86400)
        let secondOfDay = epoch - days * 86400
        hour = secondOfDay / 3600
        minute = secondOfDay / 60 % 60
        second = secondOfDay % 60
        weekday = Self.floorMod(days + 4, 7)           // 1970-01-01 was a Thursday
        let z = days + 719_468                          // days since 0000-03-01
        let era = Self.floorDiv(z, 146_097)
        let dayOfEra = z - era * 146_097                                       // 0...146096
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)   // from March 1
        let mp = (5 * dayOfYear + 2) / 153                                     // 0 = March
        day = dayOfYear - (153 * mp + 2) / 5 + 1
        month = mp < 10 ? mp + 3 : mp - 9
        year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
    }

    /// Days from 1970-01-01 to `year`-`month`-`day`; a month or day out of
    /// range rolls over into the next (or previous) ones, like timegm.
    static func days(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y0 = year + floorDiv(month - 1, 12)
        let m = floorMod(month - 1, 12) + 1
        let y = m <= 2 ? y0 - 1 : y0
        let era = floorDiv(y, 400)
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468 + (day - 1)
    }

    static func floorDiv(_ a: Int64, _ b: Int64) -> Int64 { a >= 0 ? a / b : -((-a + b - 1) / b) }
    static func floorMod(_ a: Int64, _ b: Int64) -> Int64 { a - floorDiv(a, b) * b }
}

func toBCD(_ v: UInt8) -> UInt8 { ((v / 10) << 4) | (v % 10) }
func fromBCD(_ v: UInt8) -> Int { Int(v >> 4) * 10 + Int(v & 0x0F) }
