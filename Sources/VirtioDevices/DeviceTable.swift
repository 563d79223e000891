// The device table: one entry per kind of virtio device vmd runs. The VM
// process, the device process, the launch code and the sandbox read it;
// nothing else switches on the kind of a device.
//
// Adding a device (say virtio-console): write `VioConsole.swift` in this
// module with the device (a `VirtioDevice`) and its `static let model`,
// add a case to `DeviceKind` and its line in `DeviceKind.model`. The
// compiler then asks for every field of the entry. docs/ARCHITECTURE.md
// walks through it.
import Virtio

/// Every kind of virtio device vmd runs.
public enum DeviceKind: String, CaseIterable, Sendable {
    case blk, net, rnd, scsi, vmmci

    /// This kind's entry in the table.
    public var model: DeviceModel {
        switch self {
        case .blk: return VioBlk.model
        case .net: return VioNet.model
        case .rnd: return VioRnd.model
        case .scsi: return VioSCSI.model
        case .vmmci: return VMMCI.model
        }
    }
}

/// How a device appears on a PCI bus.
public enum PCIPresentation: Equatable, Sendable {
    /// virtio 1.x: vendor capabilities in one I/O BAR (VirtioPCILayout).
    case modern(VirtioDeviceType)
    /// virtio 0.9 with the given identity (vmmci, with OpenBSD's ids).
    case legacy(VirtioPCIIdentity)

    /// The offset of the ISR register in BAR 0: reading it clears the
    /// device's interrupt, so the VM side lowers the line at once.
    public var isrOffset: UInt16 {
        switch self {
        case .modern: return VirtioPCILayout.isr
        case .legacy: return VirtioLegacyLayout.isr
        }
    }

    public var barSize: UInt32 {
        switch self {
        case .modern: return VirtioPCILayout.barSize
        case .legacy: return VirtioLegacyLayout.barSize
        }
    }

    public var identity: VirtioPCIIdentity {
        switch self {
        case .modern(let type): return VirtioPCITransport.identity(for: type)
        case .legacy(let id): return id
        }
    }

    /// The virtio device id (spec 5): what a virtio-mmio slot reports in
    /// its DeviceID register. vmmci keeps OpenBSD's 0xffff.
    public var virtioDeviceID: UInt32 {
        switch self {
        case .modern(let type): return UInt32(type.rawValue)
        case .legacy(let id): return UInt32(id.subsystemID)
        }
    }

    /// The transport that carries `device` this way, on `bus`: over mmio
    /// every device is a virtio-mmio version 2 slot whatever its PCI form.
    public func makeTransport(device: VirtioDevice, memory: GuestMemory,
                              interruptSink: InterruptSink?, bus: VirtioBus = .pci) -> VirtioRegisterFile {
        if bus == .mmio {
            return VirtioMMIOTransport(device: device, deviceID: virtioDeviceID, memory: memory, interruptSink: interruptSink)
        }
        switch self {
        case .modern(let type):
            return VirtioPCITransport(device: device, type: type, memory: memory, interruptSink: interruptSink)
        case .legacy:
            return VirtioLegacyPCITransport(device: device, memory: memory, interruptSink: interruptSink)
        }
    }
}

/// Host descriptors a device can be given, opened by the launch code (the
/// device process never opens anything).
public enum BackendRole: String, CaseIterable, Sendable {
    /// A disk image, read-write unless the device's parameters say otherwise.
    case disk
    /// An image opened read-only (a CD-ROM's ISO).
    case readOnlyImage
    /// A tap device opened with IFF_VNET_HDR.
    case tap
    /// A read-only base of a disk's qcow2 backing chain; a device whose
    /// backends include `.disk` may get up to `DeviceModel.maxBaseImages`
    /// of these after its own, in chain order.
    case baseImage
}

/// What a device instance is told besides its descriptors; each device
/// reads the fields it needs.
public struct DeviceParameters: Equatable, Sendable {
    public var readOnly = false
    /// vioblk's GET_ID string.
    public var identifier = ""
    /// vionet: 6 bytes.
    public var mac: [UInt8] = []
    public var lockedLladdr = false
    /// vioblk: "raw" or "qcow2" for the image, then for each base (empty: raw).
    public var diskFormats: [String] = []
    /// A multi-queue device (vioblk): how many request queues (0: its
    /// table entry's own count). One per vCPU, each with its own kick eventfd.
    public var queueCount = 0
    /// vionet: a `local interface`: the addresses its DHCP server hands out.
    public var local: LocalInterface?

    public init(readOnly: Bool = false, identifier: String = "", mac: [UInt8] = [], lockedLladdr: Bool = false) {
        self.readOnly = readOnly
        self.identifier = identifier
        self.mac = mac
        self.lockedLladdr = lockedLladdr
    }
}

/// Everything needed to build one device in its process.
public struct DeviceConstruction {
    public var name: String
    public var parameters: DeviceParameters
    /// The backend descriptors, in the order the launch code opened them.
    public var backends: [(role: BackendRole, fd: Int32)]

    public init(name: String, parameters: DeviceParameters, backends: [(role: BackendRole, fd: Int32)]) {
        self.name = name
        self.parameters = parameters
        self.backends = backends
    }

    /// The one descriptor of `role`; a missing one is an error naming the device.
    public func backend(_ role: BackendRole) throws -> Int32 {
        guard let b = backends.first(where: { $0.role == role }) else {
            throw DeviceConstructionError("\(name): no \(role.rawValue) descriptor")
        }
        return b.fd
    }
}

public struct DeviceConstructionError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

extension DeviceModel {
    /// The most `.baseImage` descriptors an instance may get after its own
    /// backends: a disk's backing chain (16 bases at most), none otherwise.
    public var maxBaseImages: Int { backends.contains(.disk) ? 16 : 0 }
}

/// One row of the device table.
public struct DeviceModel {
    public let kind: DeviceKind
    /// "vioblk": instances are vioblk0, vioblk1, ... unless `single`.
    public let baseName: String
    /// At most one per VM, named `baseName` itself (viornd, vioscsi, vmmci).
    public let single: Bool
    public let presentation: PCIPresentation
    /// One entry per queue: its largest size. The VM process makes one
    /// notify eventfd per queue before the device process exists.
    public let queueSizes: [UInt16]
    /// The descriptors it takes, in order (none for viornd and vmmci).
    public let backends: [BackendRole]
    /// System calls this device needs beyond what every device process
    /// needs to run its loop (SandboxPolicies.deviceBase). "name=N" allows
    /// the call only with N as its second argument (one ioctl request).
    public let syscalls: [String]
    /// The device takes commands from the host (shutdown, reboot): a
    /// graceful `vmctl stop` goes through it (vmmci). At most one per VM.
    public let takesHostCommands: Bool
    /// The device can have any number of copies of its one queue
    /// (`DeviceParameters.queueCount`, VIRTIO_BLK_F_MQ).
    public let multiQueue: Bool
    /// Builds the device, before the sandbox is applied: a device that must
    /// configure its descriptor (an ioctl on the tap) does it here.
    public let make: (DeviceConstruction) throws -> VirtioDevice

    public init(kind: DeviceKind, baseName: String, single: Bool, presentation: PCIPresentation,
                queueSizes: [UInt16], backends: [BackendRole], syscalls: [String],
                takesHostCommands: Bool = false, multiQueue: Bool = false,
                make: @escaping (DeviceConstruction) throws -> VirtioDevice) {
        self.multiQueue = multiQueue
        self.kind = kind
        self.baseName = baseName
        self.single = single
        self.presentation = presentation
        self.queueSizes = queueSizes
        self.backends = backends
        self.syscalls = syscalls
        self.takesHostCommands = takesHostCommands
        self.make = make
    }

    /// The most queues a multi-queue device may have.
    public static let maxQueues = 64

    /// The queues an instance with these parameters has (one notify
    /// eventfd each).
    public func queueSizes(for parameters: DeviceParameters) -> [UInt16] {
        guard multiQueue, parameters.queueCount > 1, let size = queueSizes.first else { return queueSizes }
        return Array(repeating: size, count: min(parameters.queueCount, DeviceModel.maxQueues))
    }

    /// The name of instance `index` of this kind in one VM.
    public func instanceName(_ index: Int) -> String {
        single ? baseName : "\(baseName)\(index)"
    }
}

/// A device whose backend has input the device process must watch for
/// (vionet's tap). The process watches `inputDescriptor` while the device
/// wants input, and stops when `backendReadable()` returns false until
/// `onInputWanted` fires.
public protocol BackendInputDevice: VirtioDevice {
    var inputDescriptor: Int32 { get }
    /// Reads what is waiting; false: stop watching until `onInputWanted`.
    func backendReadable() -> Bool
    var onInputWanted: (() -> Void)? { get set }
}

/// A device that carries commands from the host to the guest (vmmci).
public protocol HostCommandDevice: VirtioDevice {
    /// Posts a command; false when the guest cannot take it.
    @discardableResult
    func send(command: VMMCICommand) -> Bool
    /// The guest acknowledged (or itself requested) a command.
    var onAcknowledge: ((VMMCICommand) -> Void)? { get set }
}

/// A device that opened descriptors of its own while it was made (vioblk's
/// io_uring and eventfd): its process keeps them when it closes the rest.
public protocol DescriptorOwningDevice: VirtioDevice {
    var ownDescriptors: [Int32] { get }
}
