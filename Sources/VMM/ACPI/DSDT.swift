/// A device the DSDT describes under `\_SB`: its name, hardware id,
/// resources and any further objects. Other parts of the VMM (virtio-mmio
/// transports, ...) hand these to `DSDT.build`.
public struct ACPIDeviceDescription {
    public enum HardwareID {
        case eisa(String)    // "PNP0501": compressed EISA id
        case string(String)  // "ACPI0007", "LNRO0005"
    }

    public var name: String
    public var hid: HardwareID
    public var uid: Int?
    public var resources: [AML.Resource]
    public var extra: [AMLNode]

    public init(name: String, hid: HardwareID, uid: Int? = nil, resources: [AML.Resource] = [], extra: [AMLNode] = []) {
        self.name = name
        self.hid = hid
        self.uid = uid
        self.resources = resources
        self.extra = extra
    }

    var node: AMLNode {
        var children: [AMLNode] = []
        switch hid {
        case .eisa(let id): children.append(AML.Name("_HID", AML.EISAID(id)))
        case .string(let id): children.append(AML.Name("_HID", AML.StringConstant(id)))
        }
        if let uid { children.append(AML.Name("_UID", AML.Integer(uid))) }
        if !resources.isEmpty { children.append(AML.Name("_CRS", AML.ResourceTemplate(resources))) }
        return AML.Device(name, children + extra)
    }
}

/// The Differentiated System Description Table's AML: under `\_SB` the
/// PCI root bridge (`_PRT` = our INTx routing), the processors, COM1, the
/// RTC and the caller's devices; `\_S5` for soft-off.
public enum DSDT {
    /// SLP_TYP for S5, as on QEMU's PIIX4 (`_S5` = 0): a PM1a control write
    /// of SLP_EN with this type powers off.
    public static let s5SleepType: UInt64 = 0

    public static func build(cpus: Int, devices: [ACPIDeviceDescription] = []) -> [UInt8] {
        var sb: [AMLNode] = [pciRoot()]
        for cpu in 0..<cpus {
            sb.append(ACPIDeviceDescription(name: cpuName(cpu), hid: .string("ACPI0007"), uid: cpu).node)
        }
        for device in legacyDevices + devices { sb.append(device.node) }
        let s5 = AML.Name("\\_S5_", AML.Package([AML.Integer(s5SleepType), AML.Integer(s5SleepType),
                                                 AML.Integer(0), AML.Integer(0)]))
        return AML.Scope("\\_SB", sb).aml + s5.aml
    }

    /// "C000".."C0FD": one processor device per vCPU (`_UID` = MADT processor UID).
    static func cpuName(_ cpu: Int) -> String {
        let digits = String(cpu, radix: 16, uppercase: true)
        return "C" + String(repeating: "0", count: max(0, 3 - digits.count)) + digits
    }

    static var legacyDevices: [ACPIDeviceDescription] {
        [
            ACPIDeviceDescription(name: "COM1", hid: .eisa("PNP0501"), uid: 1,
                                  resources: [.io(0x3F8, length: 8), .irq(4)]),
            ACPIDeviceDescription(name: "RTC", hid: .eisa("PNP0B00"),
                                  resources: [.io(0x70, length: 2), .irq(8)]),
        ]
    }

    /// PCI bus 0: bus numbers, the configuration ports, the I/O and memory
    /// windows BARs are assigned from, and `_PRT`: every pin of slot s goes
    /// to GSI `PCIBus.intxIRQ(slot: s)` (our bus routes a function's INTx
    /// by slot only).
    static func pciRoot() -> AMLNode {
        var prt: [AMLNode] = []
        for slot in 1..<PCIBus.maxSlots {
            for pin in 0..<4 {
                prt.append(AML.Package([AML.Integer(UInt64(slot) << 16 | 0xFFFF), AML.Integer(pin),
                                        AML.Integer(0), AML.Integer(UInt64(PCIBus.intxIRQ(slot: slot)))]))
            }
        }
        let crs = AML.ResourceTemplate([
            .busNumbers(0...0xFF),
            .io(0xCF8, length: 8),
            .ioWindow(0x0000...0x0CF7),
            .ioWindow(0x0D00...0xFFFF),
            .memoryWindow(0x000A_0000...0x000B_FFFF),
            .memoryWindow(UInt32(PCIBus.memoryBarStart)...UInt32(PCIBus.memoryBarEnd - 1)),
        ])
        return AML.Device("PCI0", [
            AML.Name("_HID", AML.EISAID("PNP0A03")),
            AML.Name("_UID", AML.Integer(0)),
            AML.Name("_SEG", AML.Integer(0)),
            AML.Name("_BBN", AML.Integer(0)),
            AML.Name("_CRS", crs),
            AML.Name("_PRT", AML.Package(prt)),
        ])
    }
}
