import Glibc
import VMDSystem
import VMDControl
import VMConfig
import VirtioDevices
import Virtio
import VMM
import DiskImage

/// A VM's launch as the parent assembles it: the spec for the VM process
/// and the descriptors it names, in order. Taps come later from priv.
struct PreparedLaunch {
    var spec: LaunchSpec
    var descriptors: [Int32]
    /// The taps to ask priv for, one per network device, in device order.
    var tapRequests: [TapRequest]
    /// Their names ("" lets the kernel choose).
    var tapNames: [String] { tapRequests.map(\.name) }

    /// A tap priv opened: it belongs to the first network device that has
    /// no descriptor yet (taps arrive in the order they were asked for).
    mutating func attachTap(_ fd: Int32) {
        if let i = spec.devices.firstIndex(where: { $0.kind.model.backends == [.tap] && $0.descriptors.isEmpty }) {
            spec.devices[i].descriptors = [descriptors.count]
        }
        descriptors.append(fd)
    }

    /// Every device that takes descriptors has them (taps arrive last).
    var isComplete: Bool {
        spec.devices.allSatisfy { $0.descriptors.count >= $0.kind.model.backends.count }
    }

    func closeDescriptors() { descriptors.forEach(FD.close) }
}

/// Why a VM cannot start: an errno for vmctl and the words for the user.
struct LaunchRefusal: Error, Equatable, CustomStringConvertible {
    var code: Int32
    var message: String
    var description: String { message }
}

/// The BIOS a VM without a `boot` kernel starts from.
enum Firmware {
    static let bios = "/usr/share/seabios/bios-256k.bin"
    static var available: Bool { access(bios, R_OK) == 0 }
}

/// The only place that opens a VM's files and probes image formats. Every
/// file is opened here, in the parent, as root (a qcow2 image's whole
/// backing chain too); the VM and device processes get descriptors. On a
/// refusal nothing stays open.
enum LaunchBuilder {
    static func prepare(vmid: UInt32, config: VMConfiguration, ownerUID: uid_t,
                        network: NetworkSettings = NetworkSettings()) -> Result<PreparedLaunch, LaunchRefusal> {
        var opened: [Int32] = []
        do {
            let launch = try build(vmid: vmid, config: config, ownerUID: ownerUID, network: network, opened: &opened)
            return .success(launch)
        } catch let refusal as LaunchRefusal {
            opened.forEach(FD.close)
            return .failure(refusal)
        } catch {
            opened.forEach(FD.close)
            return .failure(LaunchRefusal(code: EIO, message: "\(error)"))
        }
    }

    private static func build(vmid: UInt32, config: VMConfiguration, ownerUID: uid_t,
                              network: NetworkSettings, opened: inout [Int32]) throws -> PreparedLaunch {
        if let first = unsupportedFeatures(of: config).first {
            throw LaunchRefusal(code: ENOTSUP, message: "not supported yet: \(first)")
        }
        // No `boot` kernel: the VM starts from the BIOS (SeaBIOS), as vmd's.
        let boot = config.bootPath ?? Firmware.bios
        if config.bootPath == nil, !Firmware.available {
            throw LaunchRefusal(code: ENOENT, message: "no boot kernel given (`boot path`) and no BIOS at \(Firmware.bios) (Debian's seabios package)")
        }
        if config.bootDevice == .cdrom && config.cdrom == nil {
            throw LaunchRefusal(code: EINVAL, message: "boot device cdrom: the VM has no cdrom")
        }
        if config.bootDevice == .disk && config.disks.isEmpty {
            throw LaunchRefusal(code: EINVAL, message: "boot device disk: the VM has no disk")
        }
        var spec = LaunchSpec(vmid: vmid, name: config.name, memoryBytes: config.effectiveMemoryBytes,
                              cpus: UInt32(config.effectiveCPUs), cmdline: config.cmdline ?? "",
                              kernelDescriptor: opened.count)
        opened.append(try open("kernel", boot, writable: false).fd)
        if let initrd = config.initrd {
            spec.initrdDescriptor = opened.count
            opened.append(try open("initrd", initrd, writable: false).fd)
        }
        // PCI slot order: disks, interfaces, rng, CD-ROM, vmmci.
        for disk in config.disks {
            let first = opened.count
            let (fd, readOnly) = try open("disk", disk.path, writable: true)
            opened.append(fd)
            try lock(disk.path, fd: fd, readOnly: readOnly)
            let chain = try backingChain(disk, fd: fd, readOnly: readOnly, opened: &opened)
            let name = disk.path.split(separator: "/").last.map(String.init) ?? disk.path
            var parameters = DeviceParameters(readOnly: readOnly, identifier: name)
            parameters.diskFormats = chain.map(\.format.rawValue)
            // One request queue per vCPU (VIRTIO_BLK_F_MQ).
            parameters.queueCount = min(config.effectiveCPUs, DeviceModel.maxQueues)
            // The image, then its bases in chain order.
            spec.devices.append(.init(kind: .blk, parameters: parameters, descriptors: Array(first..<opened.count)))
        }
        var tapRequests: [TapRequest] = []
        for i in 0..<config.effectiveInterfaceCount {
            let iface = i < config.interfaces.count ? config.interfaces[i] : nil
            let mac = iface?.lladdr?.bytes ?? VioNet.randomMAC(index: i)
            let (tap, local) = try tapRequest(vmid: vmid, vm: config, index: i, interface: iface, mac: mac,
                                              network: network)
            // A switch's `locked lladdr` applies to all its VM ports.
            let switchLocked = iface?.switchName.flatMap { n in network.switches.first { $0.name == n } }?.lockedLladdr ?? false
            var parameters = DeviceParameters(mac: mac, lockedLladdr: (iface?.lockedLladdr ?? false) || switchLocked)
            if let local { parameters.local = local }
            // Its descriptor index is known when priv has opened the tap.
            spec.devices.append(.init(kind: .net, parameters: parameters))
            tapRequests.append(tap)
        }
        spec.devices.append(.init(kind: .rnd))
        if let cd = config.cdrom {
            opened.append(try open("cdrom", cd, writable: false).fd)
            spec.devices.append(.init(kind: .scsi, descriptors: [opened.count - 1]))
        }
        spec.devices.append(.init(kind: .vmmci))
        spec.kernelName = boot
        spec.bootDevice = config.bootDevice?.rawValue ?? ""
        spec.initrdName = config.initrd ?? ""
        spec.ownerUID = UInt32(ownerUID)
        if config.virtioTransport == .mmio { spec.virtioBus = .mmio }
        spec.bootProtocol = config.kernelFormat.flatMap { BootProtocol(rawValue: $0.rawValue) } ?? .automatic
        return PreparedLaunch(spec: spec, descriptors: opened, tapRequests: tapRequests)
    }

    /// What priv does with interface `index`'s tap, and for a local
    /// interface what vionet's DHCP server answers.
    static func tapRequest(vmid: UInt32, vm: VMConfiguration, index: Int, interface: Interface?, mac: [UInt8],
                           network: NetworkSettings) throws -> (TapRequest, LocalInterface?) {
        var tap = TapRequest(name: (interface?.name == "tap") ? "" : (interface?.name ?? ""))
        // vmd's description, truncated as SIOCSIFDESCR would not be (IFALIASZ is larger).
        tap.description = String("vm\(vmid)-if\(index)-\(vm.name)".utf8.prefix(64))!
        tap.up = interface?.up ?? true
        tap.group = interface?.groupID
        tap.rdomain = UInt32(interface?.rdomain ?? 0)
        if let name = interface?.switchName {
            guard let sw = network.switches.first(where: { $0.name == name }), let bridge = sw.interface else {
                throw LaunchRefusal(code: ENOENT, message: "switch \"\(name)\" not found")
            }
            guard sw.enabled else { throw LaunchRefusal(code: ENXIO, message: "switch \"\(name)\" is disabled") }
            tap.bridge = .init(name: sw.name, interface: bridge, group: sw.groupID,
                               rdomain: UInt32(sw.rdomain ?? 0), up: sw.up)
        }
        guard interface?.isLocal == true else { return (tap, nil) }
        guard let host = LocalAddress.ipv4(prefix: network.localPrefix, vmid: vmid, index: index, isVM: false),
              let guest = LocalAddress.ipv4(prefix: network.localPrefix, vmid: vmid, index: index, isVM: true) else {
            throw LaunchRefusal(code: ERANGE, message: "local interface \(index): address range of "
                                + "local prefix \(network.localPrefix) exceeded (vm id \(vmid))")
        }
        tap.localIPv4 = host
        // vmd's hostmac: the guest's address with the last byte plus one.
        var hostMAC = mac
        hostMAC[5] &+= 1
        tap.hostLladdr = hostMAC
        if let prefix6 = network.localInet6Prefix,
           let a = LocalAddress.ipv6(prefix6: prefix6, prefix: network.localPrefix, vmid: vmid, index: index, isVM: false) {
            tap.localIPv6 = a
            tap.guestSLAAC = Array(a.prefix(8)) + RouterAdvertisement.eui64(mac: mac)
        }
        let hostname = vm.name.utf8.count <= 63 ? vm.name : ""
        return (tap, LocalInterface(hostIPv4: host, guestIPv4: guest, hostMAC: hostMAC, hostname: hostname,
                                    hostIPv6: tap.localIPv6))
    }

    /// Read-write when it may be, read-only when the file allows no more.
    private static func open(_ what: String, _ path: String, writable: Bool) throws -> (fd: Int32, readOnly: Bool) {
        if writable {
            do {
                return (try FD.open(path, flags: O_RDWR), false)
            } catch let e as SystemError where e.code == EACCES || e.code == EROFS || e.code == EPERM {
                // fall through to read-only
            } catch let e as SystemError {
                throw LaunchRefusal(code: e.code, message: "\(what) \(path): \(e.message)")
            }
        }
        do {
            return (try FD.open(path, flags: O_RDONLY), true)
        } catch let e as SystemError {
            throw LaunchRefusal(code: e.code, message: "\(what) \(path): \(e.message)")
        }
    }

    /// One writer per image (a second VM gets a clear error, not a corrupt
    /// disk), and QEMU's own locks too: an image QEMU uses is refused, and
    /// QEMU refuses ours.
    private static func lock(_ path: String, fd: Int32, readOnly: Bool) throws {
        guard FileLock.tryLock(fd, shared: readOnly) else {
            throw LaunchRefusal(code: EBUSY, message: "disk \(path): in use by another VM")
        }
        if let conflict = QEMULocks.acquire(fd: fd, write: !readOnly) {
            throw LaunchRefusal(code: EBUSY, message: "disk \(path): \(conflict)")
        }
    }

    /// The format (given, else by magic) and a qcow2 image's backing chain:
    /// every base opened read-only and share-locked here, in chain order.
    private static func backingChain(_ disk: Disk, fd: Int32, readOnly: Bool,
                                     opened: inout [Int32]) throws -> [ChainLink] {
        var bases: [Int32] = []
        defer { opened += bases }
        do {
            return try BackingChain.resolve(path: disk.path, file: FDImageFile(fd: fd),
                                            format: disk.format.flatMap { DiskImage.DiskFormat(rawValue: $0.rawValue) },
                                            writable: !readOnly) { path in
                let base: Int32
                do {
                    base = try FD.open(path, flags: O_RDONLY)
                } catch let e as SystemError {
                    throw DiskImageError.io(errno: e.code, operation: "open")
                }
                bases.append(base)
                guard FileLock.tryLock(base, shared: true) else { throw DiskImageError.io(errno: EBUSY, operation: "lock") }
                if let conflict = QEMULocks.acquire(fd: base, write: false) {
                    throw DiskImageError.invalid("\(path): \(conflict)")
                }
                return FDImageFile(fd: base)
            }
        } catch {
            throw LaunchRefusal(code: EINVAL, message: "disk \(error)")
        }
    }
}

/// The global vm.conf settings a VM's interfaces need.
struct NetworkSettings {
    var switches: [SwitchConfiguration] = []
    var localPrefix = VMDConfiguration.defaultLocalPrefix
    /// nil: no `local inet6`.
    var localInet6Prefix: IPPrefix?

    init() {}

    init(_ config: VMDConfiguration) {
        switches = config.switches
        localPrefix = config.effectiveLocalPrefix
        if config.localInet6 { localInet6Prefix = config.localInet6Prefix ?? LocalAddress.startupInet6Prefix }
    }
}
