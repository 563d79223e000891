import VMDControl
/// Everything a VM process needs to know, sent by the parent through vmm.
/// The descriptors travel separately, in `descriptorOrder`.
public struct LaunchSpec: Equatable, Sendable {
    public struct DiskSpec: Equatable, Sendable {
        public var name: String       // the image's file name: GET_ID
        public var readOnly: Bool
        /// "raw" or "qcow2": the image's format, then its bases' formats,
        /// in chain order; each has a descriptor (the bases read-only).
        public var formats: [String] = ["raw"]
        public init(name: String, readOnly: Bool, formats: [String] = ["raw"]) {
            self.name = name; self.readOnly = readOnly; self.formats = formats
        }
    }
    public struct NICSpec: Equatable, Sendable {
        public var mac: [UInt8]       // 6 bytes
        public var lockedLladdr: Bool
        public var ifname: String
        public init(mac: [UInt8], lockedLladdr: Bool, ifname: String) {
            self.mac = mac; self.lockedLladdr = lockedLladdr; self.ifname = ifname
        }
    }

    public var vmid: UInt32
    public var name: String
    public var memoryBytes: UInt64
    public var cpus: UInt32
    public var cmdline: String
    public var hasInitrd: Bool
    public var disks: [DiskSpec]
    public var hasCDROM: Bool
    public var nics: [NICSpec]
    public var rng: Bool
    public var vmmci: Bool
    public var verbosity: UInt32
    /// For messages and the Multiboot command line: the paths as configured.
    public var kernelName = ""
    public var initrdName = ""
    /// The VM's owner: its console pty is handed to this uid (0: root).
    public var ownerUID: UInt32 = 0

    public init(vmid: UInt32, name: String, memoryBytes: UInt64, cpus: UInt32, cmdline: String,
                hasInitrd: Bool, disks: [DiskSpec], hasCDROM: Bool, nics: [NICSpec],
                rng: Bool = true, vmmci: Bool = true, verbosity: UInt32 = 0) {
        self.vmid = vmid; self.name = name; self.memoryBytes = memoryBytes; self.cpus = cpus
        self.cmdline = cmdline; self.hasInitrd = hasInitrd; self.disks = disks
        self.hasCDROM = hasCDROM; self.nics = nics; self.rng = rng; self.vmmci = vmmci
        self.verbosity = verbosity
    }

    /// kernel, [initrd], disks (each image, then its bases)..., [cdrom], taps...
    public var descriptorCount: Int {
        1 + (hasInitrd ? 1 : 0) + disks.reduce(0) { $0 + $1.formats.count } + (hasCDROM ? 1 : 0) + nics.count
    }

    public func encoded() -> [UInt8] {
        var w = WireWriter()
        w.u32(vmid); w.string(name); w.u64(memoryBytes); w.u32(cpus); w.string(cmdline)
        w.u32(hasInitrd ? 1 : 0)
        w.u32(UInt32(disks.count))
        for d in disks {
            w.string(d.name); w.u32(d.readOnly ? 1 : 0)
            w.u32(UInt32(d.formats.count)); for f in d.formats { w.string(f) }
        }
        w.u32(hasCDROM ? 1 : 0)
        w.u32(UInt32(nics.count))
        for n in nics {
            for b in n.mac { w.u32(UInt32(b)) }
            w.u32(n.lockedLladdr ? 1 : 0); w.string(n.ifname)
        }
        w.u32(rng ? 1 : 0); w.u32(vmmci ? 1 : 0); w.u32(verbosity)
        w.string(kernelName); w.string(initrdName); w.u32(ownerUID)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        vmid = try r.u32(); name = try r.string(max: 64); memoryBytes = try r.u64()
        cpus = try r.u32(); cmdline = try r.string(max: 4096)
        hasInitrd = try r.u32() != 0
        let nd = try r.u32()
        guard nd <= 4 else { throw WireReader.Truncated() }
        disks = []
        for _ in 0..<nd {
            var d = DiskSpec(name: try r.string(max: 256), readOnly: try r.u32() != 0)
            let nf = try r.u32()
            guard nf >= 1 && nf <= 17 else { throw WireReader.Truncated() }
            d.formats = try (0..<nf).map { _ in try r.string(max: 8) }
            disks.append(d)
        }
        hasCDROM = try r.u32() != 0
        let nn = try r.u32()
        guard nn <= 4 else { throw WireReader.Truncated() }
        nics = []
        for _ in 0..<nn {
            var mac: [UInt8] = []
            for _ in 0..<6 { mac.append(UInt8(truncatingIfNeeded: try r.u32())) }
            nics.append(NICSpec(mac: mac, lockedLladdr: try r.u32() != 0, ifname: try r.string(max: 16)))
        }
        rng = try r.u32() != 0; vmmci = try r.u32() != 0; verbosity = try r.u32()
        kernelName = try r.string(max: 4096); initrdName = try r.string(max: 4096); ownerUID = try r.u32()
    }
}

/// Why a VM process ended, as the VM process reports it.
public enum VMStopReason: UInt32, Sendable {
    case powerOff = 1
    case reboot = 2
    case failed = 3
    case stopped = 4     // by request (vmctl stop -f, daemon shutdown)
}
