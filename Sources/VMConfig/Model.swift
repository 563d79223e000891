// The parsed vm.conf as plain values. Nothing here touches the system: user
// and group names stay names (the daemon resolves them), paths stay as
// written (the daemon opens them), so the parser can run anywhere.

/// Limits checked while parsing; the same numbers vmd uses where it has one.
public enum ConfigLimits {
    public static let maxDisks = 4
    public static let maxInterfaces = 4
    public static let minMemoryBytes: UInt64 = 1 << 20
    /// vmd's VMM_MAX_VM_MEM_SIZE.
    public static let maxMemoryBytes: UInt64 = 128 << 30
    public static let defaultMemoryBytes: UInt64 = 512 << 20
    public static let maxCPUs = 64
    /// VMM_MAX_NAME_LEN is 64 including the terminating NUL.
    public static let maxNameLength = 63
    /// IFNAMSIZ is 16 including the terminating NUL.
    public static let maxInterfaceNameLength = 15
    public static let maxGroupNameLength = 15
    public static let maxPathLength = 4095
    /// The x86 Linux boot protocol's default cmdline_size.
    public static let maxCmdlineLength = 2047
    /// RT_TABLEID_MAX.
    public static let maxRdomain = 255
    /// sockaddr_un's sun_path is 108 bytes including the terminating NUL.
    public static let maxSocketPathLength = 107
    public static let maxVhostUsers = 64
    /// How deep `include` may nest before it is taken for a loop.
    public static let maxIncludeDepth = 16
    /// Larger configuration files are refused rather than read.
    public static let maxFileSize = 4 << 20
    /// parse.y's lexer buffer.
    public static let maxTokenLength = 8095
}

/// `user[:group]`, `:group` or a number; an all-digit name is a numeric id.
public struct Owner: Equatable, Hashable, Sendable {
    public var user: String?
    public var group: String?

    public init(user: String?, group: String?) {
        self.user = user
        self.group = group
    }
}

/// An IPv4 or IPv6 prefix in its canonical text form (inet_ntop).
public struct IPPrefix: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var address: String
    public var length: Int

    public init(address: String, length: Int) {
        self.address = address
        self.length = length
    }

    public var description: String { "\(address)/\(length)" }
}

public struct StaggeredStart: Equatable, Sendable {
    public var parallel: Int
    public var delaySeconds: Int

    public init(parallel: Int, delaySeconds: Int) {
        self.parallel = parallel
        self.delaySeconds = delaySeconds
    }
}

/// A six-byte Ethernet address.
public struct MACAddress: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == 6 else { return nil }
        self.bytes = bytes
    }

    public var description: String {
        bytes.map { byte in
            let digits = "0123456789abcdef".utf8.map { $0 }
            return String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 0xf)]], as: UTF8.self)
        }.joined(separator: ":")
    }
}

public enum DiskFormat: String, Equatable, Sendable {
    case raw
    case qcow2
}

public struct Disk: Equatable, Sendable {
    public var path: String
    /// nil: not given; the daemon detects qcow2 by its magic, else raw.
    public var format: DiskFormat?
    public var location: SourceLocation

    public init(path: String, format: DiskFormat?, location: SourceLocation) {
        self.path = path
        self.format = format
        self.location = location
    }
}

public enum BootDevice: String, Equatable, Sendable {
    case cdrom
    case disk
    case net
}

/// `[local] interface [name] { ... }`.
public struct Interface: Equatable, Sendable {
    /// nil or "tap": the next free tap device; otherwise a named one.
    public var name: String?
    public var isLocal: Bool
    public var switchName: String?
    /// nil with `lladdr` given: a random address (locked or not).
    public var lladdr: MACAddress?
    public var lockedLladdr: Bool
    /// As written (a name or a number); `groupID` is the Linux link group.
    public var group: String?
    public var groupID: UInt32?
    public var rdomain: Int?
    public var up: Bool
    public var location: SourceLocation

    public init(name: String? = nil, isLocal: Bool = false, switchName: String? = nil,
                lladdr: MACAddress? = nil, lockedLladdr: Bool = false, group: String? = nil,
                rdomain: Int? = nil, up: Bool = true, location: SourceLocation) {
        self.name = name
        self.isLocal = isLocal
        self.switchName = switchName
        self.lladdr = lladdr
        self.lockedLladdr = lockedLladdr
        self.group = group
        self.rdomain = rdomain
        self.up = up
        self.location = location
    }
}

/// What `allow instance { ... }` lets a VM's owner change in an instance.
public struct AllowInstance: Equatable, Sendable {
    public var boot = false
    public var cdrom = false
    public var disk = false
    public var instance = false
    public var interface = false
    public var memory = false
    public var owner: Owner?

    public init() {}

    public var isEmpty: Bool { self == AllowInstance() }
}

public struct VMConfiguration: Equatable, Sendable {
    public var name: String
    /// `vm PARENT instance NAME`: the VM this one is an instance of.
    public var parent: String?
    public var enabled = true
    public var disks: [Disk] = []
    public var cdrom: String?
    /// `boot path`: a kernel (bzImage, Multiboot ELF) or a BIOS image.
    public var bootPath: String?
    public var bootDevice: BootDevice?
    /// Extension: `boot path format F` forces the kernel's boot protocol.
    public var kernelFormat: KernelFormat?
    /// Extension: `virtio mmio` (nil: pci).
    public var virtioTransport: VirtioTransport?
    /// nil: the default, ConfigLimits.defaultMemoryBytes. Whole megabytes.
    public var memoryBytes: UInt64?
    /// Extension: vCPUs; nil means 1.
    public var cpus: Int?
    /// Extension: the kernel command line.
    public var cmdline: String?
    /// Extension: an initial ramdisk for the kernel.
    public var initrd: String?
    /// `interfaces N`: the minimum number of interfaces.
    public var interfaceCount: Int?
    public var interfaces: [Interface] = []
    public var owner: Owner?
    public var allowInstance = AllowInstance()
    public var location: SourceLocation

    public init(name: String, parent: String? = nil, location: SourceLocation) {
        self.name = name
        self.parent = parent
        self.location = location
    }

    public var effectiveMemoryBytes: UInt64 { memoryBytes ?? ConfigLimits.defaultMemoryBytes }
    public var effectiveCPUs: Int { cpus ?? 1 }
    /// `interfaces N` adds default interfaces up to N.
    public var effectiveInterfaceCount: Int { max(interfaces.count, interfaceCount ?? 0) }
}

/// `switch NAME { ... }`: a Linux bridge the VM interfaces join.
public struct SwitchConfiguration: Equatable, Sendable {
    public var name: String
    public var enabled = true
    /// The bridge interface (`interface br0`); required.
    public var interface: String?
    /// As written; `groupID` is the Linux link group.
    public var group: String?
    public var groupID: UInt32?
    public var lockedLladdr = false
    public var rdomain: Int?
    public var up = true
    public var location: SourceLocation

    public init(name: String, location: SourceLocation) {
        self.name = name
        self.location = location
    }
}

/// The device a `vhost-user` backend serves (`vmd -P vhost-user -t KIND`).
public enum VhostUserKind: String, Equatable, Sendable, CaseIterable {
    case blk
    case scsi
    case rnd
    case net
}

/// `vhost-user NAME { ... }`: a sandboxed device process that vmd runs for
/// an outside frontend (QEMU, Cloud Hypervisor) on a socket vmd binds.
public struct VhostUserConfiguration: Equatable, Sendable {
    public var name: String
    public var enabled = true
    /// Required.
    public var kind: VhostUserKind?
    /// blk: the disk image (required).
    public var disk: Disk?
    /// blk: attach the image read-only (`disk PATH readonly`).
    public var readOnly = false
    /// scsi: the ISO image (required).
    public var cdrom: String?
    /// net: `interface [name]`: a tap from priv, the next free one when nil.
    public var interfaceName: String?
    public var hasInterface = false
    /// net: nil, a random locally administered address.
    public var lladdr: MACAddress?
    /// The listening socket vmd binds (absolute; required).
    public var socketPath: String?
    /// Who may connect: the socket's owner, as `socket owner`.
    public var owner: Owner?
    public var location: SourceLocation

    public init(name: String, location: SourceLocation) {
        self.name = name
        self.location = location
    }
}

public struct VMDConfiguration: Equatable, Sendable {
    public var vms: [VMConfiguration] = []
    public var vhostUsers: [VhostUserConfiguration] = []
    public var switches: [SwitchConfiguration] = []
    public var socketOwner: Owner?
    /// nil: the default 100.64.0.0/10.
    public var localPrefix: IPPrefix?
    /// `local inet6` given (with or without a prefix).
    public var localInet6 = false
    public var localInet6Location: SourceLocation?
    /// nil with localInet6: a random fd00::/8 prefix chosen at start.
    public var localInet6Prefix: IPPrefix?
    public var staggeredStart: StaggeredStart?
    /// Things that parse but deserve a look (`memory size rounded to ...`,
    /// `macro 'x' not used`). Not errors: the configuration is valid.
    public var warnings: [ConfigError] = []

    public init() {}

    public static let defaultLocalPrefix = IPPrefix(address: "100.64.0.0", length: 10)
    public var effectiveLocalPrefix: IPPrefix { localPrefix ?? Self.defaultLocalPrefix }

    public func vm(named name: String) -> VMConfiguration? {
        vms.first { $0.name == name }
    }

    public func vhostUser(named name: String) -> VhostUserConfiguration? {
        vhostUsers.first { $0.name == name }
    }

    public func switchConfiguration(named name: String) -> SwitchConfiguration? {
        switches.first { $0.name == name }
    }
}
