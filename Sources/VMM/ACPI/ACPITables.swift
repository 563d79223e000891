/// The ACPI tables of a VM: RSDP, RSDT, XSDT, FADT (+ FACS), MADT and DSDT.
///
/// Built once as two position-independent blobs, as QEMU hands them to
/// SeaBIOS: `rsdp` (36 bytes) and `tables` (all other tables, FACS first so
/// it is 64-byte aligned, then each table 16-byte aligned). Pointer fields
/// hold offsets into `tables`; `pointers` says where they are. Direct boot
/// relocates them with `place(rsdpAt:tablesAt:)`; BIOS boot gives SeaBIOS
/// the blobs and a table-loader script (`FwCfg`) that does the same.
///
/// Platform (must match the devices `VirtualMachine` sets up): PM1a event
/// block at `PowerManagement.eventBlock`, control at `controlBlock`, PM timer
/// at `timerBlock`, SCI on IRQ 9 (level, active high, shared with PCI INTx),
/// reset register = port 0xCF9 value 0x06, the fixed-feature power button,
/// no sleep button, no SMI command port (the VM is always in ACPI mode).
/// MADT: one enabled LAPIC per vCPU (APIC id = processor UID = index), the
/// IOAPIC (id = vCPU count, GSI base 0, as in the MP table), interrupt source
/// overrides making the PCI INTx IRQs (5, 9, 10, 11) level/active-high, and
/// LINT1 = NMI on every processor.
public struct ACPITables {
    public struct Pointer: Equatable {
        public let inRSDP: Bool   // else in `tables`
        public let offset: Int
        public let size: Int      // 4 or 8
    }

    public struct Table: Equatable {
        public let signature: String
        public let offset: Int
        public let length: Int
        /// false for the FACS, which has no checksum.
        public let checksummed: Bool
    }

    public private(set) var rsdp: [UInt8]
    public private(set) var tables: [UInt8]
    public private(set) var pointers: [Pointer]
    public private(set) var layout: [Table]

    public static let oemID = "VMD   "
    public static let creatorID = "VMD "
    public static let sciIRQ: UInt16 = 9
    public static let resetPort: UInt64 = 0xCF9
    public static let resetValue: UInt8 = 0x06
    public static let rsdpLength = 36

    public init(cpus: Int, devices: [ACPIDeviceDescription] = []) {
        rsdp = []
        tables = []
        pointers = []
        layout = []
        let facs = append(Self.facs(), signature: "FACS", checksummed: false, alignment: 64)
        let dsdt = append(Self.header("DSDT", revision: 2, body: DSDT.build(cpus: cpus, devices: devices)), signature: "DSDT")
        let fadt = append(Self.fadt(), signature: "FACP")
        pointer(in: fadt, at: 36, size: 4, to: facs)
        pointer(in: fadt, at: 40, size: 4, to: dsdt)
        pointer(in: fadt, at: 132, size: 8, to: facs)
        pointer(in: fadt, at: 140, size: 8, to: dsdt)
        let madt = append(Self.madt(cpus: cpus), signature: "APIC")
        let listed = [fadt, madt]
        let rsdt = append(Self.header("RSDT", revision: 1, body: [UInt8](repeating: 0, count: 4 * listed.count)), signature: "RSDT")
        for (i, t) in listed.enumerated() { pointer(in: rsdt, at: 36 + 4 * i, size: 4, to: t) }
        let xsdt = append(Self.header("XSDT", revision: 1, body: [UInt8](repeating: 0, count: 8 * listed.count)), signature: "XSDT")
        for (i, t) in listed.enumerated() { pointer(in: xsdt, at: 36 + 8 * i, size: 8, to: t) }

        var r = ByteImage(count: Self.rsdpLength)
        r.putASCII(0, "RSD PTR ", width: 8)
        r.putASCII(9, Self.oemID, width: 6)
        r.put8(15, 2)                        // ACPI 2.0+: the XSDT follows
        r.put32(16, UInt32(layout[rsdt].offset))
        r.put32(20, UInt32(Self.rsdpLength))
        r.put64(24, UInt64(layout[xsdt].offset))
        rsdp = r.bytes
        pointers.append(Pointer(inRSDP: true, offset: 16, size: 4))
        pointers.append(Pointer(inRSDP: true, offset: 24, size: 8))
        for i in layout.indices where layout[i].checksummed { Self.checksum(&tables, layout[i]) }
        Self.checksumRSDP(&rsdp)
    }

    /// Appends a table; returns its index in `layout`.
    private mutating func append(_ bytes: [UInt8], signature: String, checksummed: Bool = true, alignment: Int = 16) -> Int {
        let offset = (tables.count + alignment - 1) / alignment * alignment
        tables += [UInt8](repeating: 0, count: offset - tables.count) + bytes
        layout.append(Table(signature: signature, offset: offset, length: bytes.count, checksummed: checksummed))
        return layout.count - 1
    }

    /// Stores table `target`'s offset in the field at `at` of table `table`.
    private mutating func pointer(in table: Int, at: Int, size: Int, to target: Int) {
        let offset = layout[table].offset + at
        var image = ByteImage(tables)
        if size == 4 { image.put32(offset, UInt32(layout[target].offset)) } else { image.put64(offset, UInt64(layout[target].offset)) }
        tables = image.bytes
        pointers.append(Pointer(inRSDP: false, offset: offset, size: size))
    }

    /// The checksum byte (offset 9 of the header) that makes the table sum to 0.
    static func checksum(_ bytes: inout [UInt8], _ table: Table) {
        bytes[table.offset + 9] = 0
        let image = ByteImage(bytes)
        bytes[table.offset + 9] = 0 &- image.sum(table.offset..<(table.offset + table.length))
    }

    static func checksumRSDP(_ r: inout [UInt8]) {
        r[8] = 0
        r[32] = 0
        r[8] = 0 &- ByteImage(r).sum(0..<20)
        r[32] = 0 &- ByteImage(r).sum(0..<rsdpLength)
    }

    /// The blobs relocated for guest addresses `rsdpAt` and `tablesAt`, checksums fixed.
    public func place(tablesAt base: UInt64) -> (rsdp: [UInt8], tables: [UInt8]) {
        var r = ByteImage(rsdp), t = ByteImage(tables)
        for p in pointers {
            if p.inRSDP {
                if p.size == 4 { r.put32(p.offset, r.u32(p.offset)! &+ UInt32(truncatingIfNeeded: base)) }
                else { r.put64(p.offset, r.u64(p.offset)! &+ base) }
            } else {
                if p.size == 4 { t.put32(p.offset, t.u32(p.offset)! &+ UInt32(truncatingIfNeeded: base)) }
                else { t.put64(p.offset, t.u64(p.offset)! &+ base) }
            }
        }
        var rb = r.bytes, tb = t.bytes
        for table in layout where table.checksummed { Self.checksum(&tb, table) }
        Self.checksumRSDP(&rb)
        return (rb, tb)
    }

    /// Writes RSDP and tables for a directly booted kernel: the RSDP at
    /// `BootLayout.acpiRSDP` (in the BIOS area every RSDP scanner searches),
    /// the tables after it, all in the e820-reserved range below 1 MiB.
    func write(to memory: GuestMemory) throws {
        let (r, t) = place(tablesAt: BootLayout.acpiTables)
        guard BootLayout.acpiTables + UInt64(t.count) <= BootLayout.acpiEnd else {
            throw VMMError("ACPI tables of \(t.count) bytes do not fit below 0x\(hex(BootLayout.acpiEnd))")
        }
        try memory.write(r, at: BootLayout.acpiRSDP, what: "ACPI RSDP")
        try memory.write(t, at: BootLayout.acpiTables, what: "ACPI tables")
    }

    // MARK: the tables

    /// A standard 36-byte header followed by `body`; checksum left 0.
    static func header(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var h = ByteImage(count: 36)
        h.putASCII(0, signature, width: 4)
        h.put32(4, UInt32(36 + body.count))
        h.put8(8, revision)
        h.putASCII(10, oemID, width: 6)
        h.putASCII(16, "VMD" + signature, width: 8)
        h.put32(24, 1)
        h.putASCII(28, creatorID, width: 4)
        h.put32(32, 1)
        return h.bytes + body
    }

    static func facs() -> [UInt8] {
        var f = ByteImage(count: 64)
        f.putASCII(0, "FACS", width: 4)
        f.put32(4, 64)
        f.put8(32, 2)  // version
        return f.bytes
    }

    /// Generic Address Structure for `width` bits of I/O space at `port`.
    static func ioGAS(_ port: UInt64, bits: UInt8, access: UInt8) -> [UInt8] {
        var g = ByteImage(count: 12)
        g.put8(0, 1)       // system I/O
        g.put8(1, bits)
        g.put8(2, 0)
        g.put8(3, access)  // 1 byte, 2 word, 3 dword
        g.put64(4, port)
        return g.bytes
    }

    /// FADT revision 3 (ACPI 2.0 layout, 244 bytes): not hardware-reduced.
    static func fadt() -> [UInt8] {
        var f = ByteImage(header("FACP", revision: 3, body: [UInt8](repeating: 0, count: 244 - 36)))
        f.put8(45, 0)                                  // preferred PM profile: unspecified
        f.put16(46, sciIRQ)
        f.put32(48, 0)                                 // SMI_CMD: none, always in ACPI mode
        f.put32(56, UInt32(PowerManagement.eventBlock))
        f.put32(64, UInt32(PowerManagement.controlBlock))
        f.put32(76, UInt32(PowerManagement.timerBlock))
        f.put8(88, 4)                                  // PM1_EVT_LEN
        f.put8(89, 2)                                  // PM1_CNT_LEN
        f.put8(91, 4)                                  // PM_TMR_LEN
        f.put16(96, 0x0FFF)                            // P_LVL2_LAT: no C2
        f.put16(98, 0x0FFF)                            // P_LVL3_LAT: no C3
        f.put8(108, UInt8(RTC146818.century))               // CENTURY register in CMOS
        f.put16(109, 0x0001 | 0x0004)                  // IAPC_BOOT_ARCH: legacy devices, no VGA (no 8042 for the OS)
        // Flags: WBINVD, PROC_C1, SLP_BUTTON (none); PWR_BUTTON clear = the
        // fixed-feature power button; RESET_REG_SUP.
        f.put32(112, 1 << 0 | 1 << 2 | 1 << 5 | 1 << 10)
        f.putBytes(116, ioGAS(resetPort, bits: 8, access: 1))
        f.put8(128, resetValue)
        f.putBytes(148, ioGAS(PowerManagement.eventBlock, bits: 32, access: 2))
        f.putBytes(172, ioGAS(PowerManagement.controlBlock, bits: 16, access: 2))
        f.putBytes(208, ioGAS(PowerManagement.timerBlock, bits: 32, access: 3))
        return f.bytes
    }

    static func madt(cpus: Int) -> [UInt8] {
        var body = ByteImage(count: 8)
        body.put32(0, MPTable.lapicAddress)
        body.put32(4, 1)  // PCAT_COMPAT: the 8259s are there
        for cpu in 0..<cpus {
            body.putBytes(body.count, [0, 8, UInt8(cpu), UInt8(cpu), 1, 0, 0, 0])  // processor local APIC, enabled
        }
        var io = ByteImage(count: 12)
        io.put8(0, 1)
        io.put8(1, 12)
        io.put8(2, UInt8(cpus))           // IOAPIC id, as in the MP table
        io.put32(4, MPTable.ioapicAddress)
        io.put32(8, 0)                     // GSI base
        body.putBytes(body.count, io.bytes)
        for irq in PCIBus.intxIRQs {
            var iso = ByteImage(count: 10)
            iso.put8(0, 2)
            iso.put8(1, 10)
            iso.put8(2, 0)                 // bus: ISA
            iso.put8(3, UInt8(irq))
            iso.put32(4, irq)              // GSI: same pin (KVM's default routing)
            iso.put16(8, MPTable.flagsLevelActiveHigh)
            body.putBytes(body.count, iso.bytes)
        }
        body.putBytes(body.count, [4, 6, 0xFF, 0, 0, 1])  // LAPIC NMI: all processors, LINT1
        return header("APIC", revision: 1, body: body.bytes)
    }
}
