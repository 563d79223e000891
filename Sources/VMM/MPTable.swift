/// Intel MultiProcessor Specification 1.4 tables, so Linux (without ACPI) and
/// vmtest find the CPUs, the IOAPIC and the interrupt routing. Written at
/// `BootLayout.mpTable` (0xF0000): the floating pointer, then the config table.
///
/// Contents: one processor entry per vCPU (LAPIC id = vCPU index, the first is
/// the bootstrap processor), bus 0 PCI and bus 1 ISA, one IOAPIC (id = vCPU
/// count, at 0xFEC00000), ISA IRQs 0-15 to IOAPIC pins of the same number
/// (KVM's default routing; the PCI IRQs are left out), INTA# of slots 1-31 to
/// their level-triggered, active-high IRQ (`PCIBus.intxIRQ`), LINT0 = ExtINT
/// (the 8259) and LINT1 = NMI on every LAPIC.
///
/// The microVM shape (`virtioMMIOIRQs` given): no PCI bus; every ISA IRQ
/// 0-15 is routed, and the virtio-mmio lines (some above 15, as Firecracker
/// does) are ISA sources, level-triggered and active-high.
enum MPTable {
    static let ioapicAddress: UInt32 = 0xFEC0_0000
    static let lapicAddress: UInt32 = 0xFEE0_0000
    static let pciBus: UInt8 = 0, isaBus: UInt8 = 1
    static let maxCPUs = 254  // 8-bit APIC ids, one left for the IOAPIC
    static let floatingPointerSize = 16, headerSize = 44

    // Entry types and sizes.
    static let processor: UInt8 = 0, bus: UInt8 = 1, ioapic: UInt8 = 2, ioInterrupt: UInt8 = 3, localInterrupt: UInt8 = 4
    // Interrupt types and flags.
    static let intINT: UInt8 = 0, intNMI: UInt8 = 1, intExtINT: UInt8 = 3
    static let flagsLevelActiveHigh: UInt16 = 0x000D  // PO = 01 (high), EL = 11 (level)

    /// The floating pointer followed by the config table, for address `base`.
    static func build(cpus: Int, base: UInt64 = BootLayout.mpTable, virtioMMIOIRQs: [UInt32]? = nil) -> ByteImage {
        let cpuCount = min(max(cpus, 1), maxCPUs)
        let ioapicID = UInt8(cpuCount)
        var entries: [[UInt8]] = []
        for cpu in 0..<cpuCount {
            var e = ByteImage(count: 20)
            e.put8(0, processor)
            e.put8(1, UInt8(cpu))          // local APIC id
            e.put8(2, 0x14)                // local APIC version
            e.put8(3, cpu == 0 ? 0x03 : 0x01)  // enabled, bootstrap processor
            e.put32(4, 0x0000_0600)        // family 6
            e.put32(8, 0x0000_0201)        // FPU, APIC
            entries.append(e.bytes)
        }
        for (id, name) in virtioMMIOIRQs == nil ? [(pciBus, "PCI"), (isaBus, "ISA")] : [(isaBus, "ISA")] {
            var e = ByteImage(count: 8)
            e.put8(0, bus)
            e.put8(1, id)
            e.putASCII(2, name, width: 6)
            entries.append(e.bytes)
        }
        var io = ByteImage(count: 8)
        io.put8(0, ioapic)
        io.put8(1, ioapicID)
        io.put8(2, 0x11)   // version
        io.put8(3, 0x01)   // enabled
        io.put32(4, ioapicAddress)
        entries.append(io.bytes)

        func interrupt(_ type: UInt8, _ kind: UInt8, flags: UInt16, bus: UInt8, irq: UInt8, destination: UInt8, pin: UInt8) -> [UInt8] {
            var e = ByteImage(count: 8)
            e.put8(0, type)
            e.put8(1, kind)
            e.put16(2, flags)
            e.put8(4, bus)
            e.put8(5, irq)
            e.put8(6, destination)
            e.put8(7, pin)
            return e.bytes
        }
        if let mmio = virtioMMIOIRQs {
            let lines = Set(mmio.filter { $0 < 24 }.map { UInt8($0) })
            for irq in UInt8(0)..<24 where irq < 16 || lines.contains(irq) {
                entries.append(interrupt(ioInterrupt, intINT, flags: lines.contains(irq) ? flagsLevelActiveHigh : 0,
                                         bus: isaBus, irq: irq, destination: ioapicID, pin: irq))
            }
        }
        let pciIRQs = Set(PCIBus.intxIRQs.map { UInt8($0) })
        for irq in UInt8(0)..<16 where !pciIRQs.contains(irq) && virtioMMIOIRQs == nil {
            entries.append(interrupt(ioInterrupt, intINT, flags: 0, bus: isaBus, irq: irq, destination: ioapicID, pin: irq))
        }
        for slot in 1..<PCIBus.maxSlots where virtioMMIOIRQs == nil {
            // Source IRQ for PCI: device number in bits 2-6, pin (0 = INTA#) in bits 0-1.
            entries.append(interrupt(ioInterrupt, intINT, flags: flagsLevelActiveHigh, bus: pciBus,
                                     irq: UInt8(slot << 2), destination: ioapicID,
                                     pin: UInt8(PCIBus.intxIRQ(slot: slot))))
        }
        entries.append(interrupt(localInterrupt, intExtINT, flags: 0, bus: isaBus, irq: 0, destination: 0xFF, pin: 0))
        entries.append(interrupt(localInterrupt, intNMI, flags: 0, bus: isaBus, irq: 0, destination: 0xFF, pin: 1))

        let tableBase = base + UInt64(floatingPointerSize)
        var table = ByteImage(count: headerSize)
        table.putASCII(0, "PCMP", width: 4)
        table.put8(6, 4)  // spec revision 1.4
        table.putASCII(8, "VMD", width: 8)
        table.putASCII(16, "LINUX KVM", width: 12)
        table.put16(34, UInt16(entries.count))
        table.put32(36, lapicAddress)
        for entry in entries { table.putBytes(table.count, entry) }
        table.put16(4, UInt16(table.count))  // base table length
        table.put8(7, 0 &- table.sum(0..<table.count))

        var pointer = ByteImage(count: floatingPointerSize)
        pointer.putASCII(0, "_MP_", width: 4)
        pointer.put32(4, UInt32(tableBase))
        pointer.put8(8, 1)  // length in 16-byte units
        pointer.put8(9, 4)  // spec revision 1.4
        pointer.put8(10, 0 &- pointer.sum(0..<floatingPointerSize))
        return ByteImage(pointer.bytes + table.bytes)
    }
}
