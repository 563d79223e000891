// Register state of a legacy (virtio 0.9) PCI function with an I/O BAR, as
// vmd uses for vmmci: host features 0x00, guest features 0x04, queue PFN
// 0x08, queue size 0x0c, queue select 0x0e, queue notify 0x10, status 0x12,
// ISR 0x13, device configuration from 0x14 (no MSI-X, so no vector fields).

public enum VirtioLegacyLayout {
    public static let hostFeatures: UInt16 = 0x00
    public static let guestFeatures: UInt16 = 0x04
    public static let queuePFN: UInt16 = 0x08
    public static let queueSize: UInt16 = 0x0c
    public static let queueSelect: UInt16 = 0x0e
    public static let queueNotify: UInt16 = 0x10
    public static let status: UInt16 = 0x12
    public static let isr: UInt16 = 0x13
    public static let deviceConfig: UInt16 = 0x14
    public static let barSize: UInt32 = 0x100
    /// Legacy rings are placed by page frame number and aligned to pages.
    public static let pageSize: UInt64 = 4096
}

public final class VirtioLegacyPCITransport: TransportCore {
    /// OpenBSD's ids for its VMM control interface (vmmci): the virtio
    /// device type travels in the subsystem id, as legacy virtio does.
    public static let vmmciIdentity = VirtioPCIIdentity(
        vendorID: 0x0b5d, deviceID: 0x0777, revision: 0, classCode: 0x07, subclass: 0x80,
        programmingInterface: 0, subsystemVendorID: 0x0b5d, subsystemID: 0xffff)

    public override init(device: VirtioDevice, memory: GuestMemory, interruptSink: InterruptSink?) {
        super.init(device: device, memory: memory, interruptSink: interruptSink)
    }

    /// Legacy devices have 32 feature bits and no VERSION_1.
    public var offeredFeatures: UInt32 { UInt32(truncatingIfNeeded: device.deviceFeatures) }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        guard size == 1 || size == 2 || size == 4 else { return 0xffff_ffff }
        if offset >= VirtioLegacyLayout.deviceConfig {
            let configOffset = Int(offset - VirtioLegacyLayout.deviceConfig)
            return device.readConfig(offset: configOffset, size: size)
        }
        if offset == VirtioLegacyLayout.isr {
            let value = interrupts.readAndClear()
            return UInt32(value)
        }
        var image: [UInt8] = []
        appendLittleEndian(offeredFeatures, to: &image)
        appendLittleEndian(UInt32(truncatingIfNeeded: negotiatedFeatures), to: &image)
        let queue = selectedQueue
        let pfn = (queue?.descriptorTable ?? 0) / VirtioLegacyLayout.pageSize
        appendLittleEndian(UInt32(truncatingIfNeeded: pfn), to: &image)
        appendLittleEndian(queue?.maxSize ?? 0, to: &image)
        appendLittleEndian(queueSelect, to: &image)
        appendLittleEndian(UInt16(0), to: &image)       // queue notify reads 0
        image.append(status)
        image.append(isr)
        return readLittleEndian(image, offset: Int(offset), size: size)
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        guard size == 1 || size == 2 || size == 4 else { return }
        if offset >= VirtioLegacyLayout.deviceConfig {
            let configOffset = Int(offset - VirtioLegacyLayout.deviceConfig)
            device.writeConfig(offset: configOffset, size: size, value: value)
            return
        }
        switch (offset, size) {
        case (VirtioLegacyLayout.guestFeatures, 4):
            guard status & VirtioStatus.driverOK == 0 else { return }
            // Bits we did not offer are dropped rather than refused: 0.9 has
            // no FEATURES_OK handshake to refuse with.
            negotiatedFeatures = UInt64(value & offeredFeatures)
        case (VirtioLegacyLayout.queuePFN, 4):
            setQueuePFN(value)
        case (VirtioLegacyLayout.queueSelect, 2):
            queueSelect = UInt16(truncatingIfNeeded: value)
        case (VirtioLegacyLayout.queueNotify, 2):
            notify(queue: Int(value & 0xffff))
        case (VirtioLegacyLayout.status, 1):
            let newStatus = UInt8(truncatingIfNeeded: value)
            if newStatus == 0 {
                reset()
                return
            }
            let newlySet = newStatus & ~status
            status = newStatus | (status & VirtioStatus.deviceNeedsReset)
            if newlySet & VirtioStatus.driverOK != 0 { device.driverReady(features: negotiatedFeatures) }
        default:
            break
        }
    }

    private func setQueuePFN(_ pfn: UInt32) {
        guard let queue = selectedQueue else { return }
        if pfn == 0 {
            queue.reset()
            return
        }
        guard !queue.isEnabled else { return }
        let size = UInt64(queue.maxSize)
        let descriptors = UInt64(pfn) * VirtioLegacyLayout.pageSize   // < 2^44, no overflow
        let avail = descriptors + 16 * size
        let availEnd = avail + 6 + 2 * size
        let page = VirtioLegacyLayout.pageSize
        let used = (availEnd + page - 1) / page * page
        queue.descriptorTable = descriptors
        queue.availRing = avail
        queue.usedRing = used
        queue.indirectAllowed = false
        queue.eventIndex = false
        do {
            try queue.enable()
        } catch {
            deviceFailed("queue \(queueSelect): \(error)")
        }
    }
}
