import VMDControl
import Virtio
import VirtioDevices

/// What a descriptor handed to a device process is for. The process finds
/// its descriptors by role in its `DeviceSetup`, never by position.
enum DeviceDescriptorRole: Equatable {
    /// Register reads/writes from vCPU threads (blocking request/reply).
    case sync
    /// Interrupts, pause/unpause, vmmci commands.
    case async
    /// The VM's guest-memory memfd (mapped, then closed).
    case guestMemory
    /// What the device model asked for: a disk image, a tap, an ISO.
    case backend(BackendRole)
    /// The KVM ioeventfd signalled when the guest notifies this queue.
    case queueNotify(Int)
    /// The memfd the VM process keeps across a restart: the transport's
    /// registers and the queues' inflight records (DeviceRestart.swift).
    case deviceState
    /// The page shared with the VM process: ISR, MSI-X masks and pending bits.
    case interruptPage
    /// The irqfd of the INTx line (level-triggered, resampled).
    case intxIRQ
    /// Signalled by KVM when the guest's EOI lowered the INTx line.
    case intxResample
    /// The irqfd of MSI-X vector N.
    case msixVector(Int)

    func encode(_ w: inout WireWriter) {
        switch self {
        case .sync: w.u32(0); w.u32(0)
        case .async: w.u32(1); w.u32(0)
        case .guestMemory: w.u32(2); w.u32(0)
        case .backend(let r): w.u32(3); w.u32(UInt32(BackendRole.allCases.firstIndex(of: r)!))
        case .queueNotify(let q): w.u32(4); w.u32(UInt32(q))
        case .deviceState: w.u32(5); w.u32(0)
        case .interruptPage: w.u32(6); w.u32(0)
        case .intxIRQ: w.u32(7); w.u32(0)
        case .intxResample: w.u32(8); w.u32(0)
        case .msixVector(let v): w.u32(9); w.u32(UInt32(v))
        }
    }

    init(_ r: inout WireReader) throws {
        let tag = try r.u32(), arg = try r.u32()
        switch tag {
        case 0: self = .sync
        case 1: self = .async
        case 2: self = .guestMemory
        case 3:
            guard Int(arg) < BackendRole.allCases.count else { throw WireReader.Truncated() }
            self = .backend(BackendRole.allCases[Int(arg)])
        case 4:
            guard arg < 64 else { throw WireReader.Truncated() }
            self = .queueNotify(Int(arg))
        case 5: self = .deviceState
        case 6: self = .interruptPage
        case 7: self = .intxIRQ
        case 8: self = .intxResample
        case 9:
            guard arg < 64 else { throw WireReader.Truncated() }
            self = .msixVector(Int(arg))
        default: throw WireReader.Truncated()
        }
    }
}

/// A device process's descriptors: the numbers they have in that process,
/// each with its role. Built by the VM process in the order it passes them
/// (the child gets them from fd 3 up).
struct DeviceDescriptors: Equatable {
    static let firstChildDescriptor: Int32 = 3
    private(set) var entries: [(role: DeviceDescriptorRole, fd: Int32)] = []

    static func == (a: DeviceDescriptors, b: DeviceDescriptors) -> Bool {
        a.entries.map(\.fd) == b.entries.map(\.fd) && a.entries.map(\.role) == b.entries.map(\.role)
    }

    /// Records the next descriptor passed; returns its number in the child.
    @discardableResult
    mutating func append(_ role: DeviceDescriptorRole) -> Int32 {
        let fd = Self.firstChildDescriptor + Int32(entries.count)
        entries.append((role, fd))
        return fd
    }

    func first(_ role: DeviceDescriptorRole) -> Int32? {
        entries.first(where: { $0.role == role })?.fd
    }

    var all: [Int32] { entries.map(\.fd) }

    var backends: [(role: BackendRole, fd: Int32)] {
        entries.compactMap { if case .backend(let r) = $0.role { return (r, $0.fd) } else { return nil } }
    }

    /// Queue-notify eventfds in queue order.
    var queueNotifies: [(queue: Int, fd: Int32)] {
        entries.compactMap { if case .queueNotify(let q) = $0.role { return (q, $0.fd) } else { return nil } }
    }

    /// MSI-X vector irqfds in vector order (0, 1, ... with no gaps).
    var msixVectors: [Int32] {
        let vs = entries.compactMap { e -> (Int, Int32)? in
            if case .msixVector(let v) = e.role { return (v, e.fd) } else { return nil }
        }.sorted { $0.0 < $1.0 }
        return vs.enumerated().allSatisfy { $0.offset == $0.element.0 } ? vs.map(\.1) : []
    }

    static let maxEntries = 128

    func encode(_ w: inout WireWriter) {
        w.u32(UInt32(entries.count))
        for e in entries { e.role.encode(&w); w.i32(e.fd) }
    }

    init() {}

    init(_ r: inout WireReader) throws {
        let n = try r.u32()
        guard n <= Self.maxEntries else { throw WireReader.Truncated() }
        for _ in 0..<n {
            let role = try DeviceDescriptorRole(&r)
            let fd = try r.i32()
            guard fd >= Self.firstChildDescriptor, fd < 1024 else { throw WireReader.Truncated() }
            entries.append((role, fd))
        }
    }
}

/// What a device process is told at start, in the first message on its
/// sync channel (devopVMInfo): which device to be, where guest RAM lies in
/// the memfd, the device's parameters and what each descriptor is.
struct DeviceSetup: Equatable {
    var kind: DeviceKind
    var name: String           // vioblk0, vionet1, viornd, vioscsi, vmmci
    var vmName: String
    /// Where guest RAM lies in the memfd, as the device will map it.
    var regions: [GuestMemoryRegion]
    var parameters = DeviceParameters()
    var descriptors = DeviceDescriptors()
    /// The transport the device process builds: a PCI BAR or a virtio-mmio slot.
    var bus: VirtioBus = .pci

    init(kind: DeviceKind, name: String, vmName: String, regions: [GuestMemoryRegion]) {
        self.kind = kind; self.name = name; self.vmName = vmName; self.regions = regions
    }

    static let maxRegions = 8

    func encoded() -> [UInt8] {
        var w = WireWriter()
        w.string(kind.rawValue); w.string(name); w.string(vmName)
        w.u32(UInt32(regions.count))
        for r in regions { w.u64(r.guestPhysicalAddress); w.u64(r.size); w.u64(r.offsetInMapping) }
        parameters.encode(&w)
        descriptors.encode(&w)
        w.string(bus.rawValue)
        return w.bytes
    }

    init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        guard let k = DeviceKind(rawValue: try r.string(max: 16)) else { throw WireReader.Truncated() }
        kind = k
        name = try r.string(max: 32); vmName = try r.string(max: 64)
        let n = try r.u32()
        guard n <= Self.maxRegions else { throw WireReader.Truncated() }
        regions = []
        for _ in 0..<n {
            regions.append(GuestMemoryRegion(guestPhysicalAddress: try r.u64(), size: try r.u64(),
                                             offsetInMapping: try r.u64()))
        }
        parameters = try DeviceParameters(&r)
        descriptors = try DeviceDescriptors(&r)
        guard let bus = VirtioBus(rawValue: try r.string(max: 8)) else { throw WireReader.Truncated() }
        self.bus = bus
        guard r.remaining == 0 else { throw WireReader.Truncated() }
    }
}

extension DeviceParameters {
    func encode(_ w: inout WireWriter) {
        w.u32(readOnly ? 1 : 0)
        w.string(identifier)
        w.u32(UInt32(mac.count))
        for b in mac { w.u32(UInt32(b)) }
        w.u32(lockedLladdr ? 1 : 0)
        w.u32(UInt32(diskFormats.count)); for f in diskFormats { w.string(f) }
        w.u32(UInt32(clamping: queueCount))
        if let l = local {
            w.u32(1); w.u32(l.hostIPv4); w.u32(l.guestIPv4)
            for b in l.hostMAC { w.u32(UInt32(b)) }
            w.string(l.hostname)
            w.u32(UInt32(l.hostIPv6.count)); for b in l.hostIPv6 { w.u32(UInt32(b)) }
        } else {
            w.u32(0)
        }
    }

    init(_ r: inout WireReader) throws {
        self.init()
        readOnly = try r.u32() != 0
        identifier = try r.string(max: 256)
        let m = try r.u32()
        guard m == 0 || m == 6 else { throw WireReader.Truncated() }
        for _ in 0..<m { mac.append(UInt8(truncatingIfNeeded: try r.u32())) }
        lockedLladdr = try r.u32() != 0
        let nf = try r.u32()
        guard nf <= 17 else { throw WireReader.Truncated() }
        diskFormats = try (0..<nf).map { _ in try r.string(max: 8) }
        let nq = try r.u32()
        guard nq <= UInt32(DeviceModel.maxQueues) else { throw WireReader.Truncated() }
        queueCount = Int(nq)
        if try r.u32() != 0 {
            let host = try r.u32(), guest = try r.u32()
            var hostMAC: [UInt8] = []
            for _ in 0..<6 { hostMAC.append(UInt8(truncatingIfNeeded: try r.u32())) }
            let hostname = try r.string(max: 63)
            let n6 = try r.u32()
            guard n6 == 0 || n6 == 16 else { throw WireReader.Truncated() }
            var hostIPv6: [UInt8] = []
            for _ in 0..<n6 { hostIPv6.append(UInt8(truncatingIfNeeded: try r.u32())) }
            local = LocalInterface(hostIPv4: host, guestIPv4: guest, hostMAC: hostMAC, hostname: hostname,
                                   hostIPv6: hostIPv6)
        }
    }
}
