// vmmci, OpenBSD's VMM control interface (sys/dev/pv/vmmci.c): a legacy
// virtio device without queues. The host posts a command in config space
// and raises a configuration-change interrupt; a guest with the ACK
// feature writes the command back when it acts on it. The host clock is
// in config space too (TIMESYNC), sampled when the guest reads the seconds.
//
// Config space (from 0x14 in the legacy BAR):
//   0 command u32 · 4 time seconds u64 · 12 time microseconds u64
// Timeouts (3 s for the ack, 120 s for the shutdown) belong to the caller.
import Glibc
import Virtio

public enum VMMCICommand: UInt32, Sendable {
    case none = 0
    case shutdown = 1
    case reboot = 2
    case syncRTC = 3
}

public enum VMMCIFeature {
    public static let timeSync: UInt64 = 1 << 0
    public static let ack: UInt64 = 1 << 1
    public static let syncRTC: UInt64 = 1 << 2
}

public final class VMMCI: HostCommandDevice {
    public let name: String
    public let deviceFeatures: UInt64 = VMMCIFeature.timeSync | VMMCIFeature.ack | VMMCIFeature.syncRTC
    public let queueMaxSizes = VMMCI.model.queueSizes
    /// The guest acknowledged (or, unprompted, requested) this command.
    public var onAcknowledge: ((VMMCICommand) -> Void)?
    /// Host time source, replaceable in tests: (seconds, microseconds).
    public var clock: () -> (UInt64, UInt64) = {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return (UInt64(max(now.tv_sec, 0)), UInt64(max(now.tv_nsec, 0)) / 1000)
    }

    public private(set) var pendingCommand: VMMCICommand = .none
    private var sampledTime: (UInt64, UInt64) = (0, 0)
    private weak var host: VirtioDeviceHost?
    private var logBudget = LogBudget()

    public init(name: String = "vmmci") {
        self.name = name
    }

    public func attach(to host: VirtioDeviceHost) { self.host = host }

    public func reset() {
        pendingCommand = .none
    }

    public func process(queue: Virtqueue, index: Int) throws {}

    /// Post a command for the guest. Returns false when it cannot be
    /// delivered (RTC sync to a guest that did not accept SYNCRTC).
    @discardableResult
    public func send(command: VMMCICommand) -> Bool {
        if command == .syncRTC {
            guard let host = host, host.negotiatedFeatures & VMMCIFeature.syncRTC != 0 else { return false }
        }
        pendingCommand = command
        if command != .none { host?.configurationChanged() }
        return true
    }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        if offset == 4 { sampledTime = clock() }   // the guest reads seconds first
        var bytes: [UInt8] = []
        appendLittleEndian(pendingCommand.rawValue, to: &bytes)
        appendLittleEndian(sampledTime.0, to: &bytes)
        appendLittleEndian(sampledTime.1, to: &bytes)
        return readLittleEndian(bytes, offset: offset, size: size)
    }

    public func writeConfig(offset: Int, size: Int, value: UInt32) {
        guard offset == 0, size == 4 else { return }
        guard let command = VMMCICommand(rawValue: value) else {
            logBudget.log("\(name): guest wrote unknown command \(value)")
            return
        }
        if command == pendingCommand || command == .syncRTC { pendingCommand = .none }
        onAcknowledge?(command)
    }
}

extension VMMCI {
    /// Legacy virtio with OpenBSD's ids, as vmd presents it; no queues.
    public static let model = DeviceModel(
        kind: .vmmci, baseName: "vmmci", single: true,
        presentation: .legacy(VirtioLegacyPCITransport.vmmciIdentity),
        queueSizes: [], backends: [], syscalls: [], takesHostCommands: true,
        make: { c in VMMCI(name: c.name) })
}
