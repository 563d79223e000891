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
        var t = tm()
        t.tm_sec = Int32(field(Self.seconds))
        t.tm_min = Int32(field(Self.minutes))
        t.tm_hour = Int32(hour)
        t.tm_mday = Int32(field(Self.dayOfMonth))
        t.tm_mon = Int32(field(Self.month) - 1)
        t.tm_year = Int32(field(Self.century) * 100 + field(Self.year) - 1900)
        let guest = Int64(timegm(&t))
        if guest != -1 { offsetSeconds = guest - clock() }
    }

    /// The time registers for `seconds` since the epoch, in register B's format.
    private func encodeTime(_ epoch: Int64) -> [Int: UInt8] {
        var t = tm()
        var e = time_t(epoch)
        gmtime_r(&e, &t)
        let binary = cmos[Self.regB] & Self.regBBinary != 0
        func enc(_ v: Int32) -> UInt8 {
            let value = UInt8(clamping: max(v, 0) % 100)
            return binary ? value : toBCD(value)
        }
        var hour = enc(t.tm_hour)
        if cmos[Self.regB] & Self.regB24h == 0 {
            let h12 = t.tm_hour % 12 == 0 ? 12 : t.tm_hour % 12
            hour = enc(h12) | (t.tm_hour >= 12 ? 0x80 : 0)
        }
        let year = Int32(t.tm_year) + 1900
        return [
            Self.seconds: enc(t.tm_sec), Self.minutes: enc(t.tm_min), Self.hours: hour,
            Self.weekday: enc(t.tm_wday + 1), Self.dayOfMonth: enc(t.tm_mday),
            Self.month: enc(t.tm_mon + 1), Self.year: enc(year % 100), Self.century: enc(year / 100),
        ]
    }
}

func toBCD(_ v: UInt8) -> UInt8 { ((v / 10) << 4) | (v % 10) }
func fromBCD(_ v: UInt8) -> Int { Int(v >> 4) * 10 + Int(v & 0x0F) }
