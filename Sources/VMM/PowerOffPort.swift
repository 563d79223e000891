/// The power-off port 0x604 (QEMU's and vmd's PM1a control): a write with
/// SLP_EN (0x2000) set powers the machine off.
final class PowerOffPort: BusDevice {
    static let sleepEnable: UInt64 = 0x2000
    private let onPowerOff: () -> Void

    init(onPowerOff: @escaping () -> Void) { self.onPowerOff = onPowerOff }

    func read(offset: UInt64, size: Int) -> UInt64 { 0 }

    func write(offset: UInt64, size: Int, value: UInt64) {
        // A word write at 0x604, or a byte write of the high half at 0x605.
        let high = offset == 0 ? value : offset == 1 ? value << 8 : 0
        if high & Self.sleepEnable != 0 { onPowerOff() }
    }
}
