import Virtio

/// vmmci keeps the command the guest has not acknowledged yet across a
/// restart of its process: a pending shutdown request is not lost.
extension VMMCI: RestartableDevice {
    public var restartState: [UInt8] {
        var b: [UInt8] = []
        appendLittleEndian(pendingCommand.rawValue, to: &b)
        return b
    }

    public func restore(restartState b: [UInt8]) {
        guard b.count == 4 else { return }
        let raw = UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
        guard let command = VMMCICommand(rawValue: raw), command != .none else { return }
        send(command: command)
    }
}
