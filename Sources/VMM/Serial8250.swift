import Glibc
import VMDSystem

/// ns8250/16550A UART (COM1, ports 0x3F8-0x3FF, IRQ 4): the guest's console.
///
/// Output goes to `output` at once (the VM writes it to the pty master without
/// blocking), so the transmitter is always empty: LSR.THRE and TEMT stay set and
/// a THRE interrupt is pending whenever IER.ETBEI is on and no byte was written
/// since the guest last saw it in IIR. Input arrives through `receive(_:)` from
/// the event loop and is queued up to `receiveCapacity` bytes (extra bytes set
/// LSR.OE and are dropped). The IRQ output is a level, as on QEMU: high while
/// an enabled interrupt is pending.
final class Serial8250: BusDevice {
    // Register offsets.
    static let rbrThr = 0, ier = 1, iirFcr = 2, lcr = 3, mcr = 4, lsr = 5, msr = 6, scr = 7
    // IER bits.
    static let ierRDA: UInt8 = 0x01, ierTHRE: UInt8 = 0x02, ierRLS: UInt8 = 0x04, ierMS: UInt8 = 0x08
    // IIR identifiers (bit 0 set: nothing pending).
    static let iirNone: UInt8 = 0x01, iirRLS: UInt8 = 0x06, iirRDA: UInt8 = 0x04, iirTHRE: UInt8 = 0x02, iirMS: UInt8 = 0x00
    static let iirFIFOEnabled: UInt8 = 0xC0
    // LSR bits.
    static let lsrDR: UInt8 = 0x01, lsrOE: UInt8 = 0x02, lsrTHRE: UInt8 = 0x20, lsrTEMT: UInt8 = 0x40
    // LCR/MCR bits.
    static let lcrDLAB: UInt8 = 0x80, mcrLoop: UInt8 = 0x10

    static let receiveCapacity = 4096

    private let lock = Mutex()
    private let irq: InterruptLine
    private let output: ([UInt8]) -> Void

    private var ier: UInt8 = 0
    private var lcr: UInt8 = 0x03  // 8N1
    private var mcr: UInt8 = 0x08  // OUT2
    private var lsrErrors: UInt8 = 0  // OE, cleared by reading LSR
    private var scratch: UInt8 = 0
    private var fcr: UInt8 = 0
    private var divisor: UInt16 = 12  // 9600 baud
    private var thrInterruptPending = false
    private var msrDelta: UInt8 = 0
    private var rx: [UInt8] = []
    private var rxHead = 0
    private var irqLevel = false

    init(irq: InterruptLine, output: @escaping ([UInt8]) -> Void) {
        self.irq = irq
        self.output = output
    }

    /// Bytes from the console (the pty master was readable). Returns how many
    /// were queued; the rest were dropped with an overrun.
    @discardableResult
    func receive(_ bytes: [UInt8]) -> Int {
        lock.locked {
            let accepted = queue(bytes)
            updateIRQ()
            return accepted
        }
    }

    /// Free space of the receive queue: the event loop may read this much.
    var receiveSpace: Int { lock.locked { Self.receiveCapacity - (rx.count - rxHead) } }

    func read(offset: UInt64, size: Int) -> UInt64 {
        lock.locked {
            let value = readRegister(Int(offset & 7))
            updateIRQ()
            return UInt64(value)
        }
    }

    func write(offset: UInt64, size: Int, value: UInt64) {
        var sent: [UInt8] = []
        lock.locked {
            if let byte = writeRegister(Int(offset & 7), UInt8(truncatingIfNeeded: value)) { sent.append(byte) }
            updateIRQ()
        }
        if !sent.isEmpty { output(sent) }
    }

    // MARK: registers (lock held)

    private var dlab: Bool { lcr & Self.lcrDLAB != 0 }
    private var loopback: Bool { mcr & Self.mcrLoop != 0 }
    private var rxCount: Int { rx.count - rxHead }

    private func readRegister(_ reg: Int) -> UInt8 {
        switch reg {
        case Self.rbrThr:
            if dlab { return UInt8(divisor & 0xFF) }
            guard rxCount > 0 else { return 0 }
            let byte = rx[rxHead]
            rxHead += 1
            if rxHead == rx.count { rx.removeAll(keepingCapacity: true); rxHead = 0 }
            return byte
        case Self.ier:
            return dlab ? UInt8(divisor >> 8) : ier
        case Self.iirFcr:
            let id = pendingInterrupt()
            // Reading IIR with THRE as the reported source acknowledges it.
            if id == Self.iirTHRE { thrInterruptPending = false }
            return id | (fcr & 0x01 != 0 ? Self.iirFIFOEnabled : 0)
        case Self.lcr:
            return lcr
        case Self.mcr:
            return mcr
        case Self.lsr:
            let value = lsrValue()
            lsrErrors = 0
            return value
        case Self.msr:
            let value = msrValue() | msrDelta
            msrDelta = 0
            return value
        default:
            return scratch
        }
    }

    /// Returns a byte to transmit, if the write sent one.
    private func writeRegister(_ reg: Int, _ value: UInt8) -> UInt8? {
        switch reg {
        case Self.rbrThr:
            if dlab { divisor = (divisor & 0xFF00) | UInt16(value); return nil }
            thrInterruptPending = true  // the byte leaves at once: THR empty again
            if loopback { _ = queue([value]); return nil }
            return value
        case Self.ier:
            if dlab { divisor = (divisor & 0x00FF) | UInt16(value) << 8; return nil }
            let was = ier
            ier = value & 0x0F
            // Enabling ETBEI with THR empty raises THRE at once (16550 behaviour).
            if ier & Self.ierTHRE != 0 && was & Self.ierTHRE == 0 { thrInterruptPending = true }
        case Self.iirFcr:
            fcr = value & 0xC9
            if value & 0x02 != 0 { rx.removeAll(keepingCapacity: true); rxHead = 0 }  // clear RX FIFO
        case Self.lcr:
            lcr = value
        case Self.mcr:
            let before = msrValue()
            mcr = value & 0x1F
            let after = msrValue()
            // Delta bits for CTS/DSR (bits 0-1) and trailing edge of RI (bit 2), DCD (bit 3).
            let changed = (before ^ after) >> 4
            msrDelta |= changed & 0x0B
            if before & 0x40 != 0 && after & 0x40 == 0 { msrDelta |= 0x04 }
        case Self.lsr, Self.msr:
            break  // read-only
        default:
            scratch = value
        }
        return nil
    }

    private func queue(_ bytes: [UInt8]) -> Int {
        let space = Self.receiveCapacity - rxCount
        let accepted = min(space, bytes.count)
        rx.append(contentsOf: bytes.prefix(accepted))
        if accepted < bytes.count { lsrErrors |= Self.lsrOE }
        return accepted
    }

    private func lsrValue() -> UInt8 {
        (rxCount > 0 ? Self.lsrDR : 0) | lsrErrors | Self.lsrTHRE | Self.lsrTEMT
    }

    private func msrValue() -> UInt8 {
        if loopback {
            // CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2, as the 8250 wires loopback.
            let m = mcr
            return (m & 0x02 != 0 ? 0x10 : 0) | (m & 0x01 != 0 ? 0x20 : 0)
                | (m & 0x04 != 0 ? 0x40 : 0) | (m & 0x08 != 0 ? 0x80 : 0)
        }
        return 0xB0  // DCD, DSR, CTS: a terminal is always there
    }

    /// The highest-priority enabled pending interrupt, as IIR reports it.
    private func pendingInterrupt() -> UInt8 {
        if ier & Self.ierRLS != 0 && lsrErrors != 0 { return Self.iirRLS }
        if ier & Self.ierRDA != 0 && rxCount > 0 { return Self.iirRDA }
        if ier & Self.ierTHRE != 0 && thrInterruptPending { return Self.iirTHRE }
        if ier & Self.ierMS != 0 && msrDelta != 0 { return Self.iirMS }
        return Self.iirNone
    }

    private func updateIRQ() {
        let level = pendingInterrupt() != Self.iirNone
        if level != irqLevel {
            irqLevel = level
            irq.set(level)
        }
    }
}
