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
