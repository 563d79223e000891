import VMDSystem
/// i8042 keyboard controller, enough for the reset line and Linux's probe.
///
/// Port 0x60 is data, 0x64 status (read) / command (write). Command 0xFE pulses
/// the CPU reset line and a write of the output port (0xD1) with bit 0 clear
/// does the same: both reboot the VM, as on a PC. Controller commands answer at
/// once (self test 0x55, interface tests 0x00, loopbacks echo); bytes written
/// to the keyboard are acknowledged (0xFA) so a probing guest does not wait for
/// timeouts. There is no keyboard input and no mouse: Linux guests do best with
/// `i8042.noaux` (Firecracker passes the same).
final class I8042: BusDevice {
    static let statusOutputFull: UInt8 = 0x01, statusSystem: UInt8 = 0x04
    static let statusCommand: UInt8 = 0x08, statusAuxData: UInt8 = 0x20

    private let lock = Mutex()
    private var output: [(byte: UInt8, aux: Bool)] = []
    private var controlRegister: UInt8 = 0x65  // keyboard IRQ on, system flag, aux disabled, translation
    private var lastWasCommand = false
    private var pendingCommand: UInt8?
    private let onReset: () -> Void

    init(onReset: @escaping () -> Void) {
        self.onReset = onReset
    }

    func read(offset: UInt64, size: Int) -> UInt64 {
        lock.locked {
            if offset == 4 {
                var status = Self.statusSystem
                if let first = output.first {
                    status |= Self.statusOutputFull
                    if first.aux { status |= Self.statusAuxData }
                }
                if lastWasCommand { status |= Self.statusCommand }
                return UInt64(status)
            }
            guard offset == 0, !output.isEmpty else { return 0 }
            return UInt64(output.removeFirst().byte)
        }
    }

    func write(offset: UInt64, size: Int, value: UInt64) {
        let byte = UInt8(truncatingIfNeeded: value)
        let reset: Bool = lock.locked {
            if offset == 4 {
                lastWasCommand = true
                return command(byte)
            }
            guard offset == 0 else { return false }
            lastWasCommand = false
            return data(byte)
        }
        if reset { onReset() }
    }

    // MARK: lock held; return true to reset the machine

    private func command(_ byte: UInt8) -> Bool {
        pendingCommand = nil
        switch byte {
        case 0x20: push(controlRegister)            // read control register
        case 0x60, 0xD1, 0xD2, 0xD3, 0xD4: pendingCommand = byte  // a data byte follows
        case 0xAA: push(0x55)                       // controller self test passed
        case 0xA9, 0xAB: push(0x00)                 // aux / keyboard interface test passed
        case 0xC0: push(0x00)                       // read input port
        case 0xD0: push(0x01)                       // read output port: reset line high
        case 0xFE: return true                      // pulse the reset line
        default: break                              // enable/disable kbd/aux and the rest
        }
        return false
    }

    private func data(_ byte: UInt8) -> Bool {
        let command = pendingCommand
        pendingCommand = nil
        switch command {
        case 0x60: controlRegister = byte
        case 0xD1: return byte & 0x01 == 0          // output port bit 0: reset line low
        case 0xD2: push(byte)                       // keyboard output loopback
        case 0xD3: push(byte, aux: true)            // aux output loopback
        case 0xD4: push(0xFA, aux: true)            // to the (absent) mouse: acknowledge
        default: keyboard(byte)
        }
        return false
    }

    private func keyboard(_ byte: UInt8) {
        switch byte {
        case 0xFF: push(0xFA); push(0xAA)           // reset: ack, self test passed
        case 0xF2: push(0xFA); push(0xAB); push(0x83)  // identify: MF2 keyboard
        case 0xEE: push(0xEE)                       // echo
        default: push(0xFA)
        }
    }

    private func push(_ byte: UInt8, aux: Bool = false) {
        if output.count < 16 { output.append((byte, aux)) }
    }
}
