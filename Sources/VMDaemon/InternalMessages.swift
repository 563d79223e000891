import VMDControl
import VirtioDevices

// Payloads of the messages between the daemon's own processes (parent,
// vmm, VM, device), one type each with its one encoder and decoder. The
// decoder checks sizes and refuses trailing bytes, like vmd's
// IMSG_SIZE_CHECK. Control-socket payloads are in VMDControl.

/// vmmVMExited (VM process -> vmm -> parent): why a VM ended.
struct VMExitReport: Equatable {
    var reason: VMStopReason
    var detail: String

    func encoded() -> [UInt8] {
        var w = WireWriter()
        w.u32(reason.rawValue)
        w.string(detail)
        return w.bytes
    }

    init(reason: VMStopReason, detail: String) {
        self.reason = reason
        self.detail = detail
    }

    init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        guard let reason = VMStopReason(rawValue: try r.u32()) else { throw WireReader.Truncated() }
        self.reason = reason
        detail = try r.string(max: 1024)
        guard r.remaining == 0 else { throw WireReader.Truncated() }
    }
}

/// vmmVMStarted (VM process -> vmm -> parent): the guest runs.
struct VMStartedReport: Equatable {
    var pid: Int32
    /// The console pty's path.
    var tty: String

    func encoded() -> [UInt8] {
        var w = WireWriter()
        w.i32(pid)
        w.string(tty)
        return w.bytes
    }

    init(pid: Int32, tty: String) {
        self.pid = pid
        self.tty = tty
    }

    init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        pid = try r.i32()
        tty = try r.string(max: 256)
        guard r.remaining == 0 else { throw WireReader.Truncated() }
    }
}

/// vmmStopVM (parent -> vmm -> VM process).
struct VMStopCommand: Equatable {
    /// VMRequest.force: power off now instead of asking the guest.
    var force: Bool

    func encoded() -> [UInt8] {
        var w = WireWriter()
        w.u32(force ? VMRequest.force : 0)
        return w.bytes
    }

    init(force: Bool) { self.force = force }

    init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        force = try r.u32() & VMRequest.force != 0
        guard r.remaining == 0 else { throw WireReader.Truncated() }
    }
}

/// vmmciCommand (VM process -> vmmci device: post this command to the
/// guest) and vmmciAck (vmmci device -> VM process: the guest acknowledged it).
struct VMMCIMessage: Equatable {
    var command: VMMCICommand

    func encoded() -> [UInt8] {
        var w = WireWriter()
        w.u32(command.rawValue)
        return w.bytes
    }

    init(command: VMMCICommand) { self.command = command }

    init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        guard let c = VMMCICommand(rawValue: try r.u32()) else { throw WireReader.Truncated() }
        command = c
        guard r.remaining == 0 else { throw WireReader.Truncated() }
    }
}
