/// What a PCI function asks of the bus: identity, BARs and capabilities.
/// The VMM picks the slot, the BAR addresses and the INTx IRQ itself (there is
/// no firmware on the direct-boot paths to do it, as in vmd).
public struct PCIConfigHeader {
    public enum BarKind: Equatable {
        case io        // I/O space, 4..256 bytes
        case memory32  // 32-bit memory space inside the PCI hole, at least 16 bytes
    }

    public struct Bar: Equatable {
        public var kind: BarKind
        /// A power of two.
        public var size: UInt32
        public init(kind: BarKind, size: UInt32) { self.kind = kind; self.size = size }
    }

    public var vendorID: UInt16
    public var deviceID: UInt16
    public var revision: UInt8
    public var classCode: UInt8
    public var subclass: UInt8
    public var progIF: UInt8
    public var subsystemVendorID: UInt16
    public var subsystemID: UInt16
    /// Up to six BARs, by index; nil leaves a BAR unimplemented.
    public var bars: [Bar?]
    /// Capability structures, each starting with its ID byte and a placeholder
    /// next-pointer byte (e.g. virtio's vendor capabilities, ID 0x09). The bus
    /// lays them out from offset 0x40 on 4-byte boundaries and links them.
    public var capabilities: [[UInt8]]
    /// 1 = INTA# (the default), 0 = no interrupt.
    public var interruptPin: UInt8

    public init(vendorID: UInt16, deviceID: UInt16, revision: UInt8 = 0,
                classCode: UInt8, subclass: UInt8, progIF: UInt8 = 0,
                subsystemVendorID: UInt16 = 0, subsystemID: UInt16 = 0,
                bars: [Bar?] = [], capabilities: [[UInt8]] = [], interruptPin: UInt8 = 1) {
        self.vendorID = vendorID
        self.deviceID = deviceID
        self.revision = revision
        self.classCode = classCode
        self.subclass = subclass
        self.progIF = progIF
        self.subsystemVendorID = subsystemVendorID
        self.subsystemID = subsystemID
        self.bars = bars
        self.capabilities = capabilities
        self.interruptPin = interruptPin
    }
}

/// A function on the VM's PCI bus (the lead's virtio proxies). BAR accesses are
/// forwarded with the offset inside the BAR; `size` is 1, 2 or 4 (an 8-byte
/// MMIO access arrives as two 4-byte ones). Called on vCPU threads.
public protocol PCIFunction: AnyObject {
    var configHeader: PCIConfigHeader { get }
    func barRead(bar: Int, offset: UInt32, size: Int) -> UInt32
    func barWrite(bar: Int, offset: UInt32, size: Int, value: UInt32)
    /// BAR `bar` now decodes at `base` (nil: unmapped), whether the VMM placed
    /// it or the guest moved it. Called with the bus locked, on the thread
    /// that caused it; the default does nothing.
    func barMoved(bar: Int, base: UInt64?)
    /// The guest wrote the message control of the function's MSI-X
    /// capability (enable, function mask). Called on the vCPU thread with
    /// the slot locked; the default does nothing.
    func msixControlWritten(_ control: UInt16)
}

extension PCIFunction {
    public func barMoved(bar: Int, base: UInt64?) {}
    public func msixControlWritten(_ control: UInt16) {}
}
