import VMDSystem
/// PCI bus 0 behind a host bridge, reached with configuration mechanism #1
/// (address at port 0xCF8, data at 0xCFC-0xCFF). Function 0 of each slot only.
///
/// Slot 0 is the host bridge (vmd's IDs, vendor 0x0B5D device 0x0666, class
/// 06/00). Functions get slots 1, 2, ... up to 31, I/O BARs from 0x1000 up and
/// memory BARs from 0xC000_0000 (the PCI hole) up, each aligned to its size, and
/// decoding enabled, like firmware would leave them. A guest may move a BAR:
/// the bus follows the register, and unmaps a BAR whose decode bit is off.
///
/// INTx routing: INTA# of slot s goes to ISA IRQ `PCIBus.intxIRQs[(s-1) % 4]`
/// (5, 9, 10, 11). These IRQs are level-triggered: the in-kernel 8259's ELCR
/// (ports 0x4D0/0x4D1, served by KVM itself) is preset to match (0x20, 0x0E),
/// and the MP table lists them as level, active-high inputs of the IOAPIC pins
/// with the same numbers (KVM's default GSI routing maps GSI n to PIC and IOAPIC
/// input n, and KVM_IRQ_LINE's level is the logical assertion).
///
/// Port 0xCF9 (the PIIX reset control register) is honoured for Linux's
/// `reboot=pci`: a byte write with bit 2 set resets the machine.
final class PCIBus: BusDevice {
    static let intxIRQs: [UInt32] = [5, 9, 10, 11]
    static let masterELCR: UInt8 = 0x20  // IRQ 5
    static let slaveELCR: UInt8 = 0x0E   // IRQs 9, 10, 11
    static let ioBarStart: UInt64 = 0x1000
    static let ioBarEnd: UInt64 = 0x10000
    static let memoryBarStart: UInt64 = 0xC000_0000
    static let memoryBarEnd: UInt64 = 0xFEC0_0000  // the IOAPIC follows
    static let maxSlots = 32

    static func intxIRQ(slot: Int) -> UInt32 { intxIRQs[(max(slot, 1) - 1) % intxIRQs.count] }

    private let lock = Mutex()
    private var address: UInt32 = 0
    private(set) var slots: [Int: PCISlot] = [:]
    private var nextIOBar = ioBarStart
    private var nextMemoryBar = memoryBarStart
    private let ioBus: Bus
    private let mmioBus: Bus
    private let log: (String) -> Void
    var onReset: (() -> Void)?

    init(ioBus: Bus, mmioBus: Bus, log: @escaping (String) -> Void) {
        self.ioBus = ioBus
        self.mmioBus = mmioBus
        self.log = log
        // Subsystem 1af4:1100 ("QEMU virtual machine"): SeaBIOS reads fw_cfg only on a host bridge with it.
        let bridge = PCIConfigHeader(vendorID: 0x0B5D, deviceID: 0x0666, classCode: 0x06, subclass: 0x00,
                                     subsystemVendorID: 0x1AF4, subsystemID: 0x1100, interruptPin: 0)
        // The host bridge has no BARs, no capabilities and no interrupt: it cannot fail.
        slots[0] = try! PCISlot(slot: 0, header: bridge, function: nil, irq: 0, ioBus: ioBus, mmioBus: mmioBus, log: log)
    }

    /// Puts `function` in the next free slot. Returns (slot, IRQ).
    func add(_ function: PCIFunction) throws -> (slot: Int, irq: UInt32) {
        try lock.locked {
            guard let slot = (1..<Self.maxSlots).first(where: { slots[$0] == nil }) else {
                throw VMMError("pci: all \(Self.maxSlots - 1) slots are taken")
            }
            let header = function.configHeader
            let irq = header.interruptPin == 0 ? 0 : Self.intxIRQ(slot: slot)
            let state = try PCISlot(slot: slot, header: header, function: function, irq: irq,
                                    ioBus: ioBus, mmioBus: mmioBus, log: log)
            // Assign BARs in index order, each aligned to its size.
            var io = nextIOBar, memory = nextMemoryBar
            var addresses: [Int: UInt64] = [:]
            for (index, bar) in header.bars.enumerated() {
                guard let bar else { continue }
                let size = UInt64(bar.size)
                switch bar.kind {
                case .io:
                    let base = alignUp(io, to: size)
                    guard let base, base + size <= Self.ioBarEnd else {
                        throw VMMError("pci: no I/O space left for BAR \(index) of \(size) bytes")
                    }
                    addresses[index] = base
                    io = base + size
                case .memory32:
                    let base = alignUp(memory, to: max(size, 0x1000))
                    guard let base, base + size <= Self.memoryBarEnd else {
                        throw VMMError("pci: no space left in the PCI hole for BAR \(index) of \(size) bytes")
                    }
                    addresses[index] = base
                    memory = base + max(size, 0x1000)
                }
            }
            try state.program(addresses)
            nextIOBar = io
            nextMemoryBar = memory
            slots[slot] = state
            return (slot, irq)
        }
    }

    // MARK: ports 0xCF8-0xCFF

    func read(offset: UInt64, size: Int) -> UInt64 {
        let (address, enabled): (UInt32, Bool) = lock.locked { (self.address, self.address & 0x8000_0000 != 0) }
        switch offset {
        case 0..<4:
            guard offset == 0, size == 4 else { return allOnes(size: size) }
            return UInt64(address)
        default:
            guard enabled, let (slot, register) = decode(address) else { return allOnes(size: size) }
            let at = register + Int(offset - 4)
            return UInt64(slot.configRead(at, size: min(size, 4 - Int(offset - 4))))
        }
    }

    func write(offset: UInt64, size: Int, value: UInt64) {
        switch offset {
        case 0..<4:
            if offset == 0 && size == 4 {
                lock.locked { address = UInt32(truncatingIfNeeded: value) }
            } else if offset == 1 && size == 1 && value & 0x04 != 0 {
                log("pci: reset through port 0xCF9")
                onReset?()
            }
        default:
            let address = lock.locked { self.address }
            guard address & 0x8000_0000 != 0, let (slot, register) = decode(address) else { return }
            let at = register + Int(offset - 4)
            slot.configWrite(at, size: min(size, 4 - Int(offset - 4)), value: UInt32(truncatingIfNeeded: value))
        }
    }

    /// The slot and dword-aligned register an enabled address selects.
    private func decode(_ address: UInt32) -> (PCISlot, Int)? {
        let bus = (address >> 16) & 0xFF
        let device = Int((address >> 11) & 0x1F)
        let function = (address >> 8) & 0x07
        guard bus == 0, function == 0 else { return nil }
        guard let slot = lock.locked({ slots[device] }) else { return nil }
        return (slot, Int(address & 0xFC))
    }
}

func alignUp(_ value: UInt64, to alignment: UInt64) -> UInt64? {
    guard alignment > 0 else { return value }
    let (sum, overflow) = value.addingReportingOverflow(alignment - 1)
    return overflow ? nil : sum & ~(alignment - 1)
}

/// One function's 256-byte configuration space and its BAR mappings.
final class PCISlot {
    static let commandIO: UInt16 = 0x0001, commandMemory: UInt16 = 0x0002
    static let commandWritable: UInt16 = 0x0547  // IO, MEM, master, parity, SERR, INTx disable
    static let statusCapabilities: UInt16 = 0x0010
    static let capabilitiesStart = 0x40

    let slot: Int
    let header: PCIConfigHeader
    let irq: UInt32
    private let function: PCIFunction?  // kept alive by the bus
    private let lock = Mutex()
    private var config = [UInt8](repeating: 0, count: 256)
    /// Current BAR registers (address | type bits) by index.
    private var barRegisters = [UInt32](repeating: 0, count: 6)
    /// Where each BAR is mapped now.
    private var mapped: [Int: (base: UInt64, window: PCIBarWindow)] = [:]
    /// Where the MSI-X capability sits, if the function has one: its
    /// message control's enable and function-mask bits are writable.
    private var msixCapability: Int?
    private let ioBus: Bus, mmioBus: Bus
    private let log: (String) -> Void

    init(slot: Int, header: PCIConfigHeader, function: PCIFunction?, irq: UInt32,
         ioBus: Bus, mmioBus: Bus, log: @escaping (String) -> Void) throws {
        self.slot = slot
        self.header = header
        self.function = function
        self.irq = irq
        self.ioBus = ioBus
        self.mmioBus = mmioBus
        self.log = log
        guard header.bars.count <= 6 else { throw VMMError("pci slot \(slot): \(header.bars.count) BARs, at most 6") }
        for (index, bar) in header.bars.enumerated() {
            guard let bar else { continue }
            // I/O BARs may exceed PCI's 256 bytes on x86 (vmd's virtio BAR is
            // 0x400: common, notify, ISR and device config at 0x100 steps).
            let limits: ClosedRange<UInt32> = bar.kind == .io ? 4...0x1000 : 16...0x1000_0000
            guard limits.contains(bar.size), bar.size & (bar.size - 1) == 0 else {
                throw VMMError("pci slot \(slot): BAR \(index) size \(bar.size) is not a power of two in \(limits)")
            }
        }
        put16(0x00, header.vendorID)
        put16(0x02, header.deviceID)
        config[0x08] = header.revision
        config[0x09] = header.progIF
        config[0x0A] = header.subclass
        config[0x0B] = header.classCode
        config[0x0E] = 0x00  // header type 0, single function
        put16(0x2C, header.subsystemVendorID)
        put16(0x2E, header.subsystemID)
        config[0x3C] = UInt8(truncatingIfNeeded: irq)
        config[0x3D] = header.interruptPin
        try layOutCapabilities(header.capabilities)
    }

    private func put16(_ at: Int, _ v: UInt16) {
        config[at] = UInt8(v & 0xFF)
        config[at + 1] = UInt8(v >> 8)
    }

    private func layOutCapabilities(_ capabilities: [[UInt8]]) throws {
        guard !capabilities.isEmpty else { return }
        var at = Self.capabilitiesStart
        var previousNext = 0x34  // the capabilities pointer itself
        for (index, capability) in capabilities.enumerated() {
            guard capability.count >= 2 else { throw VMMError("pci slot \(slot): capability \(index) is shorter than 2 bytes") }
            guard at + capability.count <= 256 else {
                throw VMMError("pci slot \(slot): capabilities do not fit in configuration space")
            }
            config[previousNext] = UInt8(at)
            if capability[0] == MSIXLayout.capabilityID && capability.count >= 12 { msixCapability = at }
            for (i, byte) in capability.enumerated() { config[at + i] = byte }
            config[at + 1] = 0
            previousNext = at + 1
            at = (at + capability.count + 3) & ~3
        }
        put16(0x06, Self.statusCapabilities)
    }

    /// Sets initial BAR addresses and enables decoding, as firmware would.
    func program(_ addresses: [Int: UInt64]) throws {
        try lock.locked {
            for (index, base) in addresses {
                barRegisters[index] = UInt32(truncatingIfNeeded: base) | typeBits(index)
            }
            var command: UInt16 = 0
            if header.bars.contains(where: { $0?.kind == .io }) { command |= Self.commandIO }
            if header.bars.contains(where: { $0?.kind == .memory32 }) { command |= Self.commandMemory }
            put16(0x04, command)
            for index in addresses.keys.sorted() {
                if let failure = remap(index) { throw VMMError(failure) }
            }
        }
    }

    private func typeBits(_ index: Int) -> UInt32 {
        guard index < header.bars.count, let bar = header.bars[index] else { return 0 }
        return bar.kind == .io ? 0x1 : 0x0  // memory: 32-bit, not prefetchable
    }

    private var command: UInt16 { UInt16(config[0x04]) | UInt16(config[0x05]) << 8 }

    // MARK: config space access (size 1, 2 or 4 within one dword)

    func configRead(_ at: Int, size: Int) -> UInt32 {
        lock.locked {
            var value: UInt32 = 0
            for i in 0..<max(size, 0) where at + i < 256 {
                value |= UInt32(byte(at + i)) << (8 * UInt32(i))
            }
            return value
        }
    }

    private func byte(_ at: Int) -> UInt8 {
        if (0x10..<0x28).contains(at) {
            let index = (at - 0x10) / 4
            return UInt8(truncatingIfNeeded: barRegisters[index] >> (8 * UInt32(at % 4)))
        }
        return config[at]
    }

    func configWrite(_ at: Int, size: Int, value: UInt32) {
        let failure: String? = lock.locked {
            let dword = at & ~3
            guard dword < 256 else { return nil }
            // Merge the written bytes into the current dword.
            var current: UInt32 = 0
            for i in 0..<4 { current |= UInt32(byte(dword + i)) << (8 * UInt32(i)) }
            var merged = current
            for i in 0..<max(size, 0) where (at - dword) + i < 4 {
                let shift = 8 * UInt32((at - dword) + i)
                merged = (merged & ~(0xFF << shift)) | (((value >> (8 * UInt32(i))) & 0xFF) << shift)
            }
            switch dword {
            case 0x04:
                let newCommand = (UInt16(truncatingIfNeeded: merged) & Self.commandWritable)
                    | (command & ~Self.commandWritable)
                put16(0x04, newCommand)  // status bits are read-only / write-1-to-clear: nothing to clear
                var failures: [String] = []
                for index in 0..<6 { if let f = remap(index) { failures.append(f) } }
                return failures.first
            case 0x0C:
                config[0x0C] = UInt8(truncatingIfNeeded: merged)          // cache line size
                config[0x0D] = UInt8(truncatingIfNeeded: merged >> 8)     // latency timer
            case 0x10..<0x28:
                let index = (dword - 0x10) / 4
                guard index < header.bars.count, let bar = header.bars[index] else { return nil }
                // Address bits below the size read as zero: writing all ones reads back the size.
                let mask = ~(bar.size - 1)
                barRegisters[index] = (merged & mask) | typeBits(index)
                return remap(index)
            case 0x3C:
                // Interrupt line: our INTx routing is fixed by slot, so the register
                // reports it and ignores writes (a BIOS that does not know this
                // platform, SeaBIOS, would write 0xFF "unknown" over it).
                if irq == 0 { config[0x3C] = UInt8(truncatingIfNeeded: merged) }
            case let d where d == msixCapability:
                let writable = MSIXLayout.controlEnable | MSIXLayout.controlFunctionMask
                let old = UInt16(config[d + 2]) | UInt16(config[d + 3]) << 8
                let control = (old & ~writable) | (UInt16(truncatingIfNeeded: merged >> 16) & writable)
                put16(d + 2, control)
                function?.msixControlWritten(control)
            default:
                break  // read-only
            }
            return nil
        }
        if let failure { log(failure) }
    }

    /// Makes the bus mapping of BAR `index` follow its register and the decode
    /// bits. Returns a message when the new place is unusable (left unmapped).
    private func remap(_ index: Int) -> String? {
        guard index < header.bars.count, let bar = header.bars[index] else { return nil }
        let isIO = bar.kind == .io
        let base = UInt64(barRegisters[index] & (isIO ? 0xFFFF_FFFC : 0xFFFF_FFF0))
        let size = UInt64(bar.size)
        let decoding = command & (isIO ? Self.commandIO : Self.commandMemory) != 0
        let limit: UInt64 = isIO ? 0x10000 : 0x1_0000_0000
        let sizing = base == (isIO ? 0xFFFF_FFFC : 0xFFFF_FFF0) & ~(size - 1)
        let wanted: UInt64? = decoding && base != 0 && !sizing && base + size <= limit ? base : nil
        let bus = isIO ? ioBus : mmioBus
        if let current = mapped[index] {
            if current.base == wanted { return nil }
            bus.unregister(base: current.base, device: current.window)
            mapped[index] = nil
            function?.barMoved(bar: index, base: nil)
        }
        guard let wanted, let function else { return nil }
        let window = PCIBarWindow(function: function, bar: index)
        do {
            try bus.register(base: wanted, length: size, device: window)
            mapped[index] = (wanted, window)
            function.barMoved(bar: index, base: wanted)
            return nil
        } catch {
            return "pci slot \(slot): BAR \(index) at 0x\(hex(wanted)) left unmapped: \(error)"
        }
    }
}

/// The bus side of a BAR: forwards to the function with the offset in the BAR.
final class PCIBarWindow: BusDevice {
    private let function: PCIFunction?
    let bar: Int

    init(function: PCIFunction, bar: Int) {
        self.function = function
        self.bar = bar
    }

    func read(offset: UInt64, size: Int) -> UInt64 {
        guard let function else { return allOnes(size: size) }
        if size == 8 {
            let low = function.barRead(bar: bar, offset: UInt32(truncatingIfNeeded: offset), size: 4)
            let high = function.barRead(bar: bar, offset: UInt32(truncatingIfNeeded: offset + 4), size: 4)
            return UInt64(low) | UInt64(high) << 32
        }
        return UInt64(function.barRead(bar: bar, offset: UInt32(truncatingIfNeeded: offset), size: size))
    }

    func write(offset: UInt64, size: Int, value: UInt64) {
        guard let function else { return }
        if size == 8 {
            function.barWrite(bar: bar, offset: UInt32(truncatingIfNeeded: offset), size: 4, value: UInt32(truncatingIfNeeded: value))
            function.barWrite(bar: bar, offset: UInt32(truncatingIfNeeded: offset + 4), size: 4, value: UInt32(truncatingIfNeeded: value >> 32))
            return
        }
        function.barWrite(bar: bar, offset: UInt32(truncatingIfNeeded: offset), size: size, value: UInt32(truncatingIfNeeded: value))
    }
}
