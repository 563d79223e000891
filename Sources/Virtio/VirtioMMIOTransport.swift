// Register state of a virtio-mmio device, version 2 (virtio 1.x spec
// 4.2.2): one 4 KiB slot of guest-physical space with 32-bit control
// registers from 0x000 and the device configuration from 0x100. The VM
// process forwards accesses to the slot here (viodev_msg IO_READ/IO_WRITE,
// the register offset in `reg`), exactly as it forwards a PCI BAR; the
// device behind it is the same object either way.
//
// Interrupts: InterruptStatus shows the pending causes without clearing
// them; the driver clears them by writing InterruptACK, and the line
// (level-triggered, one IOAPIC input per slot) drops when none is left.

/// Which bus a VM presents its virtio devices on.
public enum VirtioBus: String, CaseIterable, Sendable {
    case pci, mmio
}

/// Offsets in the slot, and the values of the identification registers.
public enum VirtioMMIOLayout {
    public static let magicValue: UInt16 = 0x000
    public static let version: UInt16 = 0x004
    public static let deviceID: UInt16 = 0x008
    public static let vendorID: UInt16 = 0x00c
    public static let deviceFeatures: UInt16 = 0x010
    public static let deviceFeaturesSelect: UInt16 = 0x014
    public static let driverFeatures: UInt16 = 0x020
    public static let driverFeaturesSelect: UInt16 = 0x024
    public static let queueSelect: UInt16 = 0x030
    public static let queueNumMax: UInt16 = 0x034
    public static let queueNum: UInt16 = 0x038
    public static let queueReady: UInt16 = 0x044
    public static let queueNotify: UInt16 = 0x050
    public static let interruptStatus: UInt16 = 0x060
    public static let interruptACK: UInt16 = 0x064
    public static let status: UInt16 = 0x070
    public static let queueDescLow: UInt16 = 0x080
    public static let queueDescHigh: UInt16 = 0x084
    public static let queueDriverLow: UInt16 = 0x090
    public static let queueDriverHigh: UInt16 = 0x094
    public static let queueDeviceLow: UInt16 = 0x0a0
    public static let queueDeviceHigh: UInt16 = 0x0a4
    public static let configGeneration: UInt16 = 0x0fc
    public static let config: UInt16 = 0x100

    /// "virt", little-endian.
    public static let magic: UInt32 = 0x7472_6976
    public static let currentVersion: UInt32 = 2
    /// The vendor id the device reports (the virtio PCI vendor, as crosvm).
    public static let vendor: UInt32 = 0x1af4
    /// One slot per device; its configuration space fills the rest.
    public static let slotSize: UInt32 = 0x1000
}

public final class VirtioMMIOTransport: TransportCore, ModernVirtioTransport {
    /// The virtio device id (1 net, 2 block, 4 entropy, 8 SCSI, ...).
    public let deviceID: UInt32

    public init(device: VirtioDevice, deviceID: UInt32, memory: GuestMemory, interruptSink: InterruptSink?) {
        self.deviceID = deviceID
        super.init(device: device, memory: memory, interruptSink: interruptSink)
    }

    // MARK: register access

    /// A read of `size` bytes at `offset` in the slot. Control registers
    /// answer aligned 32-bit reads only (spec 4.2.2.2); anything else reads
    /// as 0. The configuration space takes 1, 2 and 4 byte reads.
    public func read(offset: UInt16, size: Int) -> UInt32 {
        if offset >= VirtioMMIOLayout.config {
            guard size == 1 || size == 2 || size == 4, UInt32(offset) + UInt32(size) <= VirtioMMIOLayout.slotSize else { return 0 }
            return device.readConfig(offset: Int(offset - VirtioMMIOLayout.config), size: size)
        }
        guard size == 4, offset % 4 == 0 else { return 0 }
        let queue = selectedQueue
        switch offset {
        case VirtioMMIOLayout.magicValue: return VirtioMMIOLayout.magic
        case VirtioMMIOLayout.version: return VirtioMMIOLayout.currentVersion
        case VirtioMMIOLayout.deviceID: return deviceID
        case VirtioMMIOLayout.vendorID: return VirtioMMIOLayout.vendor
        case VirtioMMIOLayout.deviceFeatures:
            let offered = offeredFeatures
            return deviceFeatureSelect == 0 ? UInt32(truncatingIfNeeded: offered)
                : deviceFeatureSelect == 1 ? UInt32(truncatingIfNeeded: offered >> 32) : 0
        case VirtioMMIOLayout.queueNumMax: return UInt32(queue?.maxSize ?? 0)   // 0: no such queue
        case VirtioMMIOLayout.queueReady: return queue?.isEnabled == true ? 1 : 0
        case VirtioMMIOLayout.interruptStatus: return UInt32(interrupts.isr)
        case VirtioMMIOLayout.status: return UInt32(status)
        case VirtioMMIOLayout.configGeneration: return configGeneration
        default: return 0   // write-only and reserved registers
        }
    }

    /// A write of `size` bytes at `offset` in the slot; control registers
    /// take aligned 32-bit writes only, others are ignored.
    public func write(offset: UInt16, size: Int, value: UInt32) {
        if offset >= VirtioMMIOLayout.config {
            guard size == 1 || size == 2 || size == 4, UInt32(offset) + UInt32(size) <= VirtioMMIOLayout.slotSize else { return }
            let value = size == 4 ? value : value & ((1 << (8 * UInt32(size))) - 1)
            device.writeConfig(offset: Int(offset - VirtioMMIOLayout.config), size: size, value: value)
            return
        }
        guard size == 4, offset % 4 == 0 else { return }
        switch offset {
        case VirtioMMIOLayout.deviceFeaturesSelect:
            deviceFeatureSelect = value
        case VirtioMMIOLayout.driverFeaturesSelect:
            driverFeatureSelect = value
        case VirtioMMIOLayout.driverFeatures:
            // Features are frozen once FEATURES_OK was accepted.
            guard status & VirtioStatus.featuresOK == 0 else { return }
            switch driverFeatureSelect {
            case 0: driverFeatures = driverFeatures & 0xffff_ffff_0000_0000 | UInt64(value)
            case 1: driverFeatures = driverFeatures & 0x0000_0000_ffff_ffff | UInt64(value) << 32
            default: break
            }
        case VirtioMMIOLayout.queueSelect:
            queueSelect = UInt16(truncatingIfNeeded: value)
        case VirtioMMIOLayout.queueNum:
            guard let queue = selectedQueue, !queue.isEnabled else { return }
            if value <= UInt32(UInt16.max), queue.isValidSize(UInt16(value)) {
                queue.size = UInt16(value)
            } else {
                logBudget.log("\(device.name): ignoring queue \(queueSelect) size \(value) (max \(queue.maxSize), must be a power of two)")
            }
        case VirtioMMIOLayout.queueReady:
            guard let queue = selectedQueue else { return }
            if value == 0 {
                // The driver takes the queue down (Linux's del_vq): back to
                // the power-on state, so it can be set up again.
                if queue.isEnabled { queue.reset() }
                return
            }
            guard value == 1, !queue.isEnabled, !needsReset else { return }
            guard status & VirtioStatus.featuresOK != 0 else {
                deviceFailed("queue \(queueSelect): QueueReady before FEATURES_OK")
                return
            }
            queue.indirectAllowed = negotiatedFeatures & VirtioFeature.indirectDescriptors != 0
            queue.eventIndex = negotiatedFeatures & VirtioFeature.eventIndex != 0
            do {
                try queue.enable()
            } catch {
                deviceFailed("queue \(queueSelect): \(error)")
            }
        case VirtioMMIOLayout.queueNotify:
            notify(queue: Int(value & 0xffff))
        case VirtioMMIOLayout.interruptACK:
            interrupts.acknowledge(UInt8(truncatingIfNeeded: value))
        case VirtioMMIOLayout.status:
            writeStatus(UInt8(truncatingIfNeeded: value))
        case VirtioMMIOLayout.queueDescLow, VirtioMMIOLayout.queueDescHigh,
             VirtioMMIOLayout.queueDriverLow, VirtioMMIOLayout.queueDriverHigh,
             VirtioMMIOLayout.queueDeviceLow, VirtioMMIOLayout.queueDeviceHigh:
            let area: QueueArea
            switch offset & ~7 {
            case VirtioMMIOLayout.queueDescLow: area = .descriptors
            case VirtioMMIOLayout.queueDriverLow: area = .driver
            default: area = .device
            }
            writeQueueAddressHalf(area, high: offset & 4 != 0, value)
        default:
            break   // read-only and reserved registers
        }
    }

    // MARK: interrupts

    public override func configurationChanged() {
        configGeneration &+= 1
        if status & VirtioStatus.driverOK != 0 { interrupts.raise(VirtioISR.configChange) }
    }
}

extension VirtioMMIOTransport: VirtioRegisterFile {}
