// Register state of a virtio 1.x PCI function with one I/O BAR laid out like
// vmd's: common configuration at 0x000, notify at 0x100, ISR at 0x200,
// device configuration at 0x300. The VM process forwards BAR accesses here
// (as viodev_msg IO_READ/IO_WRITE); this object answers them and drives the
// device. It is not thread-safe: one device process serves it from one loop.

/// Offsets in the BAR.
public enum VirtioPCILayout {
    public static let commonConfig: UInt16 = 0x000
    public static let commonConfigLength: UInt16 = 0x38
    public static let notify: UInt16 = 0x100
    public static let notifyLength: UInt16 = 4
    /// All queues notify at one address; the value written is the queue index.
    public static let notifyOffsetMultiplier: UInt32 = 0
    public static let isr: UInt16 = 0x200
    public static let deviceConfig: UInt16 = 0x300
    public static let deviceConfigLength: UInt16 = 0x100
    public static let barSize: UInt32 = 0x400
}

/// Offsets inside struct virtio_pci_common_cfg (spec 4.1.4.3).
enum CommonConfig {
    static let deviceFeatureSelect = 0x00
    static let deviceFeature = 0x04
    static let driverFeatureSelect = 0x08
    static let driverFeature = 0x0c
    static let msixConfig = 0x10
    static let numQueues = 0x12
    static let deviceStatus = 0x14
    static let configGeneration = 0x15
    static let queueSelect = 0x16
    static let queueSize = 0x18
    static let queueMsixVector = 0x1a
    static let queueEnable = 0x1c
    static let queueNotifyOff = 0x1e
    static let queueDesc = 0x20
    static let queueDriver = 0x28
    static let queueDevice = 0x30
}

/// What the VM side needs to build the PCI function's configuration space.
public struct VirtioPCIIdentity: Equatable, Sendable {
    public var vendorID: UInt16
    public var deviceID: UInt16
    public var revision: UInt8
    public var classCode: UInt8
    public var subclass: UInt8
    public var programmingInterface: UInt8
    public var subsystemVendorID: UInt16
    public var subsystemID: UInt16
}

public final class VirtioPCITransport: TransportCore, ModernVirtioTransport {
    public static let noVector: UInt16 = 0xffff

    public let deviceType: VirtioDeviceType

    public init(device: VirtioDevice, type: VirtioDeviceType, memory: GuestMemory,
                interruptSink: InterruptSink?) {
        self.deviceType = type
        super.init(device: device, memory: memory, interruptSink: interruptSink)
    }

    // MARK: PCI identity and capabilities

    public static func identity(for type: VirtioDeviceType) -> VirtioPCIIdentity {
        let (classCode, subclass): (UInt8, UInt8)
        switch type {
        case .network: (classCode, subclass) = (0x02, 0x00)   // network, ethernet
        case .block, .scsi: (classCode, subclass) = (0x01, 0x00)   // mass storage, SCSI
        case .entropy: (classCode, subclass) = (0x08, 0x80)   // system, other
        }
        return VirtioPCIIdentity(vendorID: 0x1af4, deviceID: 0x1040 + type.rawValue, revision: 1,
                                 classCode: classCode, subclass: subclass, programmingInterface: 0,
                                 subsystemVendorID: 0x1af4, subsystemID: 0x1100)
    }

    /// The vendor-specific capabilities (struct virtio_pci_cap, spec 4.1.4)
    /// describing this BAR layout, one structure each with its next pointer
    /// left 0: the PCI bus places and links them.
    public static func capabilities(bar: UInt8 = 0) -> [[UInt8]] {
        // (cfg_type, offset, length)
        let caps: [(UInt8, UInt32, UInt32)] = [
            (1, UInt32(VirtioPCILayout.commonConfig), UInt32(VirtioPCILayout.commonConfigLength)),
            (2, UInt32(VirtioPCILayout.notify), UInt32(VirtioPCILayout.notifyLength)),
            (3, UInt32(VirtioPCILayout.isr), 1),
            (4, UInt32(VirtioPCILayout.deviceConfig), UInt32(VirtioPCILayout.deviceConfigLength)),
        ]
        return caps.map { cap in
            let length: UInt8 = cap.0 == 2 ? 20 : 16
            var bytes: [UInt8] = [0x09, 0, length, cap.0, bar, 0, 0, 0]
            appendLittleEndian(cap.1, to: &bytes)
            appendLittleEndian(cap.2, to: &bytes)
            if cap.0 == 2 { appendLittleEndian(VirtioPCILayout.notifyOffsetMultiplier, to: &bytes) }
            return bytes
        }
    }

    // MARK: register access

    /// A read of `size` (1, 2 or 4) bytes at `offset` in the BAR.
    public func read(offset: UInt16, size: Int) -> UInt32 {
        guard size == 1 || size == 2 || size == 4 else { return 0xffff_ffff }
        switch offset {
        case VirtioPCILayout.commonConfig..<VirtioPCILayout.commonConfigLength:
            return readLittleEndian(commonConfigImage(), offset: Int(offset), size: size)
        case VirtioPCILayout.isr..<VirtioPCILayout.deviceConfig:
            guard offset == VirtioPCILayout.isr else { return 0 }
            return UInt32(readAndClearISR())
        case VirtioPCILayout.deviceConfig..<(VirtioPCILayout.deviceConfig + VirtioPCILayout.deviceConfigLength):
            return device.readConfig(offset: Int(offset - VirtioPCILayout.deviceConfig), size: size)
        default:
            return 0
        }
    }

    /// A write of `size` (1, 2 or 4) bytes at `offset` in the BAR.
    public func write(offset: UInt16, size: Int, value: UInt32) {
        guard size == 1 || size == 2 || size == 4 else { return }
        let value = size == 4 ? value : value & ((1 << (8 * UInt32(size))) - 1)
        switch offset {
        case VirtioPCILayout.commonConfig..<VirtioPCILayout.commonConfigLength:
            writeCommonConfig(Int(offset), size: size, value: value)
        case VirtioPCILayout.notify..<(VirtioPCILayout.notify + VirtioPCILayout.notifyLength):
            notify(queue: Int(value & 0xffff))
        case VirtioPCILayout.deviceConfig..<(VirtioPCILayout.deviceConfig + VirtioPCILayout.deviceConfigLength):
            device.writeConfig(offset: Int(offset - VirtioPCILayout.deviceConfig), size: size, value: value)
        default:
            break   // ISR is read-only; the rest of the BAR is unused.
        }
    }

    /// The common configuration as bytes, so reads of any width and offset
    /// see the same thing.
    private func commonConfigImage() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(VirtioPCILayout.commonConfigLength))
        appendLittleEndian(deviceFeatureSelect, to: &bytes)
        let offered = offeredFeatures
        let featureWord: UInt32 = deviceFeatureSelect == 0 ? UInt32(truncatingIfNeeded: offered)
            : deviceFeatureSelect == 1 ? UInt32(truncatingIfNeeded: offered >> 32) : 0
        appendLittleEndian(featureWord, to: &bytes)
        appendLittleEndian(driverFeatureSelect, to: &bytes)
        let driverWord: UInt32 = driverFeatureSelect == 0 ? UInt32(truncatingIfNeeded: driverFeatures)
            : driverFeatureSelect == 1 ? UInt32(truncatingIfNeeded: driverFeatures >> 32) : 0
        appendLittleEndian(driverWord, to: &bytes)
        appendLittleEndian(interrupts.configVector, to: &bytes)             // msix_config
        appendLittleEndian(UInt16(queues.count), to: &bytes)                // num_queues
        bytes.append(status)
        bytes.append(UInt8(truncatingIfNeeded: configGeneration))
        appendLittleEndian(queueSelect, to: &bytes)
        let queue = selectedQueue
        appendLittleEndian(queue?.size ?? 0, to: &bytes)                    // 0: no such queue
        appendLittleEndian(queue == nil ? Self.noVector : interrupts.queueVectors[Int(queueSelect)], to: &bytes)
        appendLittleEndian(UInt16(queue?.isEnabled == true ? 1 : 0), to: &bytes)
        appendLittleEndian(queue == nil ? UInt16(0) : queueSelect, to: &bytes)   // queue_notify_off
        appendLittleEndian(queue?.descriptorTable ?? 0, to: &bytes)
        appendLittleEndian(queue?.availRing ?? 0, to: &bytes)
        appendLittleEndian(queue?.usedRing ?? 0, to: &bytes)
        return bytes
    }

    private func writeCommonConfig(_ offset: Int, size: Int, value: UInt32) {
        switch (offset, size) {
        case (CommonConfig.deviceFeatureSelect, 4):
            deviceFeatureSelect = value
        case (CommonConfig.driverFeatureSelect, 4):
            driverFeatureSelect = value
        case (CommonConfig.driverFeature, 4):
            // Features are frozen once FEATURES_OK was accepted.
            guard status & VirtioStatus.featuresOK == 0 else { return }
            switch driverFeatureSelect {
            case 0: driverFeatures = driverFeatures & 0xffff_ffff_0000_0000 | UInt64(value)
            case 1: driverFeatures = driverFeatures & 0x0000_0000_ffff_ffff | UInt64(value) << 32
            default: break
            }
        case (CommonConfig.deviceStatus, 1):
            writeStatus(UInt8(truncatingIfNeeded: value))
        case (CommonConfig.queueSelect, 2):
            queueSelect = UInt16(truncatingIfNeeded: value)
        case (CommonConfig.queueSize, 2):
            guard let queue = selectedQueue, !queue.isEnabled else { return }
            let requested = UInt16(truncatingIfNeeded: value)
            if queue.isValidSize(requested) {
                queue.size = requested
            } else {
                logBudget.log("\(device.name): ignoring queue \(queueSelect) size \(requested) (max \(queue.maxSize), must be a power of two)")
            }
        case (CommonConfig.queueEnable, 2):
            guard value == 1, let queue = selectedQueue, !queue.isEnabled, !needsReset else { return }
            queue.indirectAllowed = negotiatedFeatures & VirtioFeature.indirectDescriptors != 0
            queue.eventIndex = negotiatedFeatures & VirtioFeature.eventIndex != 0
            do {
                try queue.enable()
            } catch {
                deviceFailed("queue \(queueSelect): \(error)")
            }
        case (CommonConfig.queueDesc, 4), (CommonConfig.queueDesc + 4, 4),
             (CommonConfig.queueDriver, 4), (CommonConfig.queueDriver + 4, 4),
             (CommonConfig.queueDevice, 4), (CommonConfig.queueDevice + 4, 4):
            let area: QueueArea
            switch offset & ~7 {
            case CommonConfig.queueDesc: area = .descriptors
            case CommonConfig.queueDriver: area = .driver
            default: area = .device
            }
            writeQueueAddressHalf(area, high: (offset - CommonConfig.queueDesc) % 8 == 4, value)
        case (CommonConfig.msixConfig, 2):
            interrupts.configVector = acceptedVector(value)
        case (CommonConfig.queueMsixVector, 2):
            guard selectedQueue != nil else { return }
            interrupts.queueVectors[Int(queueSelect)] = acceptedVector(value)
        default:
            // Read-only fields and odd widths are ignored.
            break
        }
    }

    /// A vector the driver chose, if this function has it; otherwise
    /// NO_VECTOR, which the driver reads back as the refusal (spec 4.1.5.1.2).
    private func acceptedVector(_ value: UInt32) -> UInt16 {
        let count = sharedInterrupts?.msixVectorCount ?? 0
        return value < UInt32(count) ? UInt16(value) : Self.noVector
    }

    // MARK: interrupts

    public override func configurationChanged() {
        configGeneration &+= 1
        if status & VirtioStatus.driverOK != 0 { interrupts.raiseConfig() }
    }

    /// Reading ISR returns the pending causes, clears them, and lowers the line.
    public func readAndClearISR() -> UInt8 {
        interrupts.readAndClear()
    }

}
