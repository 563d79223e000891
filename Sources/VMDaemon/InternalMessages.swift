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
