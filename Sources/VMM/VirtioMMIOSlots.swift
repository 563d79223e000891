/// The microVM shape: virtio devices as virtio-mmio slots instead of PCI
/// functions, as Firecracker and crosvm lay them out. Slot i is 4 KiB at
/// 0xD000_0000 + i * 4 KiB, in the 32-bit hole above low RAM (which ends
/// at 3 GiB at most, GuestMemoryLayout.pciHoleStart), below the IOAPIC
/// (0xFEC0_0000): no memory size can make a slot overlap RAM. Each slot
/// has its own IOAPIC line that no legacy device uses.
public enum VirtioMMIOSlots {
    public static let base: UInt64 = 0xD000_0000
    public static let slotSize: UInt64 = 0x1000
    /// The QueueNotify register in a slot (virtio spec 4.2.2).
    public static let queueNotifyOffset: UInt64 = 0x50
    /// Interrupt lines, in slot order. Lines below 16 first, so a guest
    /// that drives only the 8259 reaches the first ten: the PCI INTx lines
    /// (5, 9, 10, 11; there is no PCI here), then the ISA lines nothing in
    /// this VM uses (3 and 6, 7 and 13-15: no COM2, floppy, LPT, FPU or
    /// IDE). COM1 (4), the RTC (8), the i8042 (1, 12), the PIT (0) and the
    /// cascade (2) are never used. Then the IOAPIC-only lines 16-23.
    public static let irqs: [UInt32] = [5, 9, 10, 11, 3, 6, 7, 13, 14, 15] + Array(16...23)
    public static var maxSlots: Int { irqs.count }

    public static func address(slot: Int) -> UInt64 { base + UInt64(slot) * slotSize }

    /// How Linux finds the slots without ACPI or a device tree
    /// (drivers/virtio/virtio_mmio.c, CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES):
    /// `virtio_mmio.device=<size>@<baseaddr>:<irq>`, one per slot.
    public static func commandLineArguments(slots: Int) -> String {
        (0..<min(slots, maxSlots)).map {
            "virtio_mmio.device=4K@0x\(String(address(slot: $0), radix: 16)):\(irqs[$0])"
        }.joined(separator: " ")
    }

    /// The command line with the slots announced after what the user gave.
    static func commandLine(_ userLine: String, slots: Int) -> String {
        let devices = commandLineArguments(slots: slots)
        if devices.isEmpty { return userLine }
        return userLine.isEmpty ? devices : userLine + " " + devices
    }

    /// The same slots for an ACPI OS (Linux's virtio_mmio binds LNRO0005,
    /// as Cloud Hypervisor describes its devices): one DSDT device per slot,
    /// its registers and its level-triggered, active-high line (as the MP
    /// table routes it). A guest that reads both the command line and the
    /// DSDT finds a slot twice; the second claim of its registers fails.
    public static func acpiDevices(slots: Int) -> [ACPIDeviceDescription] {
        (0..<min(slots, maxSlots)).map { slot in
            ACPIDeviceDescription(name: "VR" + (slot < 16 ? "0" : "") + String(slot, radix: 16, uppercase: true),
                                  hid: .string("LNRO0005"), uid: slot,
                                  resources: [.memory32Fixed(UInt32(address(slot: slot)), length: UInt32(slotSize)),
                                              .interrupt(irqs[slot], level: true)])
        }
    }
}
