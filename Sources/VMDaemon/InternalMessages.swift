import VMDControl
import VirtioDevices

// Payloads of the messages between the daemon's own processes (parent,
// vmm, VM, device), one type each with its one encoder and decoder
// (WirePayload: sizes checked, trailing bytes refused, like vmd's
// IMSG_SIZE_CHECK). Control-socket payloads are in VMDControl.

/// vmmVMExited (VM process -> vmm -> parent): why a VM ended.
struct VMExitReport: Equatable, WirePayload {
    var reason: VMStopReason
    var detail: String

    init(reason: VMStopReason, detail: String) {
        self.reason = reason
        self.detail = detail
    }

    func encode(to w: inout WireWriter) {
        w.u32(reason.rawValue)
        w.string(detail)
    }

    init(from r: inout WireReader) throws {
        guard let reason = VMStopReason(rawValue: try r.u32()) else { throw WireReader.Truncated() }
        self.init(reason: reason, detail: try r.string(max: 1024))
    }
}

/// vmmVMStarted (VM process -> vmm -> parent): the guest runs.
struct VMStartedReport: Equatable, WirePayload {
    var pid: Int32
    /// The console pty's path.
    var tty: String

    init(pid: Int32, tty: String) {
        self.pid = pid
        self.tty = tty
    }

    func encode(to w: inout WireWriter) { w.i32(pid); w.string(tty) }
    init(from r: inout WireReader) throws { self.init(pid: try r.i32(), tty: try r.string(max: 256)) }
}

/// vmmStopVM (parent -> vmm -> VM process).
struct VMStopCommand: Equatable, WirePayload {
    /// VMRequest.force: power off now instead of asking the guest.
    var force: Bool

    init(force: Bool) { self.force = force }
    func encode(to w: inout WireWriter) { w.u32(force ? VMRequest.force : 0) }
    init(from r: inout WireReader) throws { force = try r.u32() & VMRequest.force != 0 }
}

/// vmmciCommand (VM process -> vmmci device: post this command to the
/// guest) and vmmciAck (vmmci device -> VM process: the guest acknowledged it).
struct VMMCIMessage: Equatable, WirePayload {
    var command: VMMCICommand

    init(command: VMMCICommand) { self.command = command }
    func encode(to w: inout WireWriter) { w.u32(command.rawValue) }

    init(from r: inout WireReader) throws {
        guard let c = VMMCICommand(rawValue: try r.u32()) else { throw WireReader.Truncated() }
        command = c
    }
}

/// vmmStartBackend (parent -> vmm): what vmm needs to build a vhost-user
/// backend's command line; vmm spawns only `vmd -P vhost-user` from it,
/// with the descriptors that follow (socket, status channel, image/tap).
struct BackendLaunch: Equatable, WirePayload {
    var name: String
    var kind: String
    var readOnly: Bool
    /// "" or six hex bytes with ':'.
    var mac: String
    var hasFile: Bool
    /// blk: "raw", "qcow2" or "" (detect by magic).
    var format = ""

    func encode(to w: inout WireWriter) {
        w.string(name); w.string(kind); w.u32(readOnly ? 1 : 0); w.string(mac); w.u32(hasFile ? 1 : 0)
        w.string(format)
    }

    init(name: String, kind: String, readOnly: Bool, mac: String, hasFile: Bool, format: String = "") {
        self.name = name; self.kind = kind; self.readOnly = readOnly; self.mac = mac; self.hasFile = hasFile
        self.format = format
    }

    init(from r: inout WireReader) throws {
        name = try r.string(max: 64); kind = try r.string(max: 8); readOnly = try r.u32() != 0
        mac = try r.string(max: 17); hasFile = try r.u32() != 0
        format = try r.string(max: 8)
        guard format.isEmpty || format == "raw" || format == "qcow2" else { throw WireReader.Truncated() }
    }

    /// The backend's arguments, the descriptors mapped from fd 3 in order.
    func arguments(foreground: Bool, verbosity: Int) -> [String] {
        var args = ["vmd", "-P", "vhost-user", "-t", kind, "-N", name, "-L", "3", "-C", "4"]
        if hasFile { args += ["-B", "5"] }
        if !format.isEmpty { args += ["-F", format] }
        if readOnly { args.append("-r") }
        if !mac.isEmpty { args += ["-m", mac] }
        if foreground { args.append("-d") }
        if verbosity > 0 { args.append("-" + String(repeating: "v", count: verbosity)) }
        return args
    }

    /// The descriptors a launch carries.
    var descriptorCount: Int { hasFile ? 3 : 2 }
}

/// privOpenTap (parent -> priv): a tap and how to set up its host side.
/// priv checks every name again (it trusts no payload to be sane).
struct TapRequest: Equatable, WirePayload {
    /// "" lets the kernel choose tapN.
    var name = ""
    /// IFLA_IFALIAS, vmd's interface description: `vm1-if0-name`.
    var description = ""
    var up = true
    var group: UInt32?
    /// 0: the default routing domain; N > 0: the VRF `vrfN`.
    var rdomain: UInt32 = 0
    /// The host side's own link address (local interfaces), 6 bytes or none.
    var hostLladdr: [UInt8] = []
    /// Local interface: the host side's IPv4 address (a /31), 0 for none.
    var localIPv4: UInt32 = 0
    /// `local inet6`: the host side's IPv6 address (a /96), 16 bytes or none.
    var localIPv6: [UInt8] = []
    /// `local inet6`: the guest's SLAAC address (the EUI-64 of its MAC in
    /// the host side's /64), routed /128 to the tap; 16 bytes or none.
    var guestSLAAC: [UInt8] = []
    /// The switch the tap joins, if any.
    var bridge: SwitchSetup?

    struct SwitchSetup: Equatable {
        var name: String
        /// The Linux bridge (`interface bridge0`).
        var interface: String
        var group: UInt32?
        var rdomain: UInt32 = 0
        var up = true
    }

    init(name: String = "") { self.name = name }

    func encode(to w: inout WireWriter) {
        w.string(name); w.string(description); w.u32(up ? 1 : 0)
        w.u32(group == nil ? 0 : 1); w.u32(group ?? 0); w.u32(rdomain)
        bytes(hostLladdr, &w); w.u32(localIPv4); bytes(localIPv6, &w); bytes(guestSLAAC, &w)
        if let b = bridge {
            w.u32(1); w.string(b.name); w.string(b.interface)
            w.u32(b.group == nil ? 0 : 1); w.u32(b.group ?? 0); w.u32(b.rdomain); w.u32(b.up ? 1 : 0)
        } else {
            w.u32(0)
        }
    }

    init(from r: inout WireReader) throws {
        name = try r.string(max: 15); description = try r.string(max: 64); up = try r.u32() != 0
        let hasGroup = try r.u32() != 0; let g = try r.u32(); group = hasGroup ? g : nil
        rdomain = try r.u32()
        hostLladdr = try Self.bytes(&r, allowed: [0, 6]); localIPv4 = try r.u32()
        localIPv6 = try Self.bytes(&r, allowed: [0, 16])
        guestSLAAC = try Self.bytes(&r, allowed: [0, 16])
        if try r.u32() != 0 {
            let name = try r.string(max: 64), interface = try r.string(max: 15)
            let hasGroup = try r.u32() != 0; let g = try r.u32()
            bridge = SwitchSetup(name: name, interface: interface, group: hasGroup ? g : nil,
                                 rdomain: try r.u32(), up: try r.u32() != 0)
        }
    }

    private func bytes(_ b: [UInt8], _ w: inout WireWriter) {
        w.u32(UInt32(b.count)); for x in b { w.u32(UInt32(x)) }
    }

    private static func bytes(_ r: inout WireReader, allowed: [Int]) throws -> [UInt8] {
        let n = Int(try r.u32())
        guard allowed.contains(n) else { throw WireReader.Truncated() }
        var b: [UInt8] = []
        for _ in 0..<n { b.append(UInt8(truncatingIfNeeded: try r.u32())) }
        return b
    }
}
