import Glibc
import VMDSystem

/// The ACPI fixed-hardware registers (ACPI 6.5, 4.8) at I/O ports
/// 0x600-0x60B, as the FADT describes them:
///
///     0x600  PM1a_STS  16 bits, write 1 to clear: PWRBTN_STS (bit 8), WAK_STS (15)
///     0x602  PM1a_EN   16 bits: PWRBTN_EN (bit 8)
///     0x604  PM1a_CNT  16 bits: SCI_EN (bit 0, always 1: no SMI mode switch),
///                      SLP_TYP (bits 10-12), SLP_EN (bit 13, write-only)
///     0x608  PM_TMR    24-bit counter at 3.579545 MHz, read-only
///
/// The SCI (IRQ 9, level) is asserted while a status bit is set with its
/// enable bit. Writing SLP_EN with SLP_TYP = `DSDT.s5SleepType` powers the
/// VM off (S5; also the old vmd/QEMU port-0x604 value 0x2000); other sleep
/// types are not offered by the DSDT and are ignored. `pressPowerButton`
/// is the host's `vmctl stop` for guests without vmmci.
final class PowerManagement: BusDevice {
    static let eventBlock: UInt64 = 0x600
    static let controlBlock: UInt64 = 0x604
    static let timerBlock: UInt64 = 0x608
    static let portCount: UInt64 = 12

    static let powerButtonStatus: UInt16 = 1 << 8
    static let wakeStatus: UInt16 = 1 << 15
    static let statusWritable: UInt16 = powerButtonStatus | wakeStatus
    static let enableWritable: UInt16 = 1 << 8  // PWRBTN_EN
    static let sciEnable: UInt16 = 1 << 0
    static let sleepEnable: UInt16 = 1 << 13
    static let timerHz: UInt64 = 3_579_545

    private let lock = Mutex()
    private var status: UInt16 = 0
    private var enable: UInt16 = 0
    private var control: UInt16 = sciEnable
    private let sci: InterruptLine?
    private let onPowerOff: () -> Void
    private let log: (String) -> Void
    private let start = Clock.now()

    init(sci: InterruptLine?, onPowerOff: @escaping () -> Void, log: @escaping (String) -> Void = { _ in }) {
        self.sci = sci
        self.onPowerOff = onPowerOff
        self.log = log
    }

    /// Presses the fixed-feature power button: PWRBTN_STS, and the SCI if
    /// the guest enabled it. Returns whether it had (an ACPI OS listening).
    @discardableResult
    func pressPowerButton() -> Bool {
        let enabled: Bool = lock.locked {
            status |= Self.powerButtonStatus
            updateSCI()
            return enable & Self.powerButtonStatus != 0
        }
        return enabled
    }

    /// True while a press is not yet acknowledged (PWRBTN_STS still set).
    var powerButtonPending: Bool { lock.locked { status & Self.powerButtonStatus != 0 } }

    /// True once the guest enabled the power-button event.
    var powerButtonEnabled: Bool { lock.locked { enable & Self.powerButtonStatus != 0 } }

    /// Called with the lock held.
    private func updateSCI() {
        sci?.set(status & enable != 0)
    }

    func read(offset: UInt64, size: Int) -> UInt64 {
        if offset >= 8 {
            // PM timer: 24 bits; a read of part of it sees those bytes.
            let ticks = UInt64((Clock.now() - start) * Double(Self.timerHz)) & 0xFF_FFFF
            return (ticks >> (8 * (offset - 8))) & allOnes(size: size)
        }
        let (s, e, c): (UInt16, UInt16, UInt16) = lock.locked { (status, enable, control) }
        let registers = UInt64(s) | UInt64(e) << 16 | UInt64(c) << 32
        return (registers >> (8 * offset)) & allOnes(size: size)
    }

    func write(offset: UInt64, size: Int, value: UInt64) {
        guard offset < 8 else { return }  // the timer is read-only
        var powerOff = false
        lock.locked {
            // Split the access into the bytes it covers, per register.
            for i in 0..<UInt64(size) where offset + i < 8 {
                let at = offset + i
                let byte = UInt16(truncatingIfNeeded: value >> (8 * i)) & 0xFF
                let shift = UInt16((at & 1) * 8)
                let mask = UInt16(0xFF) << shift
                switch at {
                case 0, 1:
                    status &= ~((byte << shift) & Self.statusWritable)  // write 1 to clear
                case 2, 3:
                    enable = (enable & ~mask) | ((byte << shift) & Self.enableWritable & mask)
                case 4, 5:
                    let written = byte << shift
                    control = (control & ~mask) | (written & mask & ~Self.sleepEnable) | Self.sciEnable
                    if written & Self.sleepEnable != 0 {
                        let type = UInt64((control >> 10) & 7)
                        if type == DSDT.s5SleepType { powerOff = true } else { log("pm: sleep type \(type) is not supported: ignored") }
                    }
                default:
                    break
                }
            }
            updateSCI()
        }
        if powerOff { onPowerOff() }
    }
}
