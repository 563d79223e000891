import VMDControl
import VirtioDevices
import Virtio
import VMM
/// Everything a VM process needs to know, sent by the parent through vmm
/// (vmmStartVM). The descriptors follow in vmmStartVMFD messages; the spec
/// says which is which by index: the kernel, the initrd, and each device's
/// backends.
public struct LaunchSpec: Equatable, Sendable {
    /// One virtio device of the VM, in PCI slot order.
    public struct Device: Equatable, Sendable {
        public var kind: DeviceKind
        public var parameters: DeviceParameters
        /// Indices into the VM's descriptors, one per backend role of the
        /// kind's model, in the model's order.
        public var descriptors: [Int]

        public init(kind: DeviceKind, parameters: DeviceParameters = DeviceParameters(), descriptors: [Int] = []) {
            self.kind = kind
            self.parameters = parameters
            self.descriptors = descriptors
        }
    }

    public static let maxDevices = 16
    /// Kernel, initrd, taps, a CD-ROM and disks with backing chains.
    public static let maxDescriptors = 96

    public var vmid: UInt32
    public var name: String
    public var memoryBytes: UInt64
    public var cpus: UInt32
    public var cmdline: String
    public var kernelDescriptor: Int
    public var initrdDescriptor: Int?
    public var devices: [Device]
    /// For messages and the Multiboot command line: the paths as configured.
    public var kernelName = ""
    public var initrdName = ""
    /// The VM's owner: its console pty is handed to this uid (0: root).
    public var ownerUID: UInt32 = 0
    /// BIOS boot: "disk" or "cdrom" goes first in SeaBIOS's boot order; "" keeps its default.
    public var bootDevice = ""
    /// `virtio mmio`: the microVM shape (no PCI; virtio-mmio slots).
    public var virtioBus: VirtioBus = .pci
    /// `boot path format F`; `.automatic` chooses by what the file carries.
    public var bootProtocol: BootProtocol = .automatic

    public init(vmid: UInt32, name: String, memoryBytes: UInt64, cpus: UInt32, cmdline: String,
                kernelDescriptor: Int = 0, initrdDescriptor: Int? = nil, devices: [Device] = []) {
        self.vmid = vmid; self.name = name; self.memoryBytes = memoryBytes; self.cpus = cpus
        self.cmdline = cmdline; self.kernelDescriptor = kernelDescriptor
        self.initrdDescriptor = initrdDescriptor; self.devices = devices
    }

    /// The name of device `index` (vioblk0, vionet1, viornd, ...): instances
    /// of a kind are numbered in the order they appear.
    public func deviceName(_ index: Int) -> String {
        let kind = devices[index].kind
        let nth = devices[..<index].filter { $0.kind == kind }.count
        return kind.model.instanceName(nth)
    }

    public func encoded() -> [UInt8] {
        var w = WireWriter()
        w.u32(vmid); w.string(name); w.u64(memoryBytes); w.u32(cpus); w.string(cmdline)
        w.u32(UInt32(kernelDescriptor)); w.i32(initrdDescriptor.map { Int32($0) } ?? -1)
        w.u32(UInt32(devices.count))
        for d in devices {
            w.string(d.kind.rawValue)
            d.parameters.encode(&w)
            w.u32(UInt32(d.descriptors.count)); for i in d.descriptors { w.u32(UInt32(i)) }
        }
        w.string(kernelName); w.string(initrdName); w.u32(ownerUID)
        w.string(bootDevice)
        w.string(virtioBus.rawValue); w.string(bootProtocol.rawValue)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        func index() throws -> Int {
            let i = try r.u32()
            guard i < Self.maxDescriptors else { throw WireReader.Truncated() }
            return Int(i)
        }
        vmid = try r.u32(); name = try r.string(max: 64); memoryBytes = try r.u64()
        cpus = try r.u32(); cmdline = try r.string(max: 4096)
        kernelDescriptor = try index()
        let initrd = try r.i32()
        guard initrd >= -1, initrd < Int32(Self.maxDescriptors) else { throw WireReader.Truncated() }
        initrdDescriptor = initrd < 0 ? nil : Int(initrd)
        let n = try r.u32()
        guard n <= Self.maxDevices else { throw WireReader.Truncated() }
        devices = []
        for _ in 0..<n {
            guard let kind = DeviceKind(rawValue: try r.string(max: 16)) else { throw WireReader.Truncated() }
            let p = try DeviceParameters(&r)
            let nd = try r.u32()
            let model = kind.model
            guard nd >= model.backends.count, nd <= model.backends.count + model.maxBaseImages else {
                throw WireReader.Truncated()
            }
            var descriptors: [Int] = []
            for _ in 0..<nd { descriptors.append(try index()) }
            devices.append(Device(kind: kind, parameters: p, descriptors: descriptors))
        }
        kernelName = try r.string(max: 4096); initrdName = try r.string(max: 4096); ownerUID = try r.u32()
        bootDevice = try r.string(max: 8)
        guard let bus = VirtioBus(rawValue: try r.string(max: 8)),
              let bootProtocol = BootProtocol(rawValue: try r.string(max: 16)) else { throw WireReader.Truncated() }
        virtioBus = bus
        self.bootProtocol = bootProtocol
        guard r.remaining == 0 else { throw WireReader.Truncated() }
    }
}

/// Why a VM process ended, as the VM process reports it.
public enum VMStopReason: UInt32, Sendable {
    case powerOff = 1
    case reboot = 2
    case failed = 3
    case stopped = 4     // by request (vmctl stop -f, daemon shutdown)
}
