// Numbers from the virtio 1.x specification shared by the transports and
// the devices. Device-specific numbers live with their device.

/// Virtio device types (spec 5): the PCI device id is 0x1040 + type.
public enum VirtioDeviceType: UInt16, Sendable {
    case network = 1
    case block = 2
    case entropy = 4
    case scsi = 8
}

/// Feature bits that concern the transport and the rings (spec 6).
public enum VirtioFeature {
    public static let indirectDescriptors: UInt64 = 1 << 28   // VIRTIO_F_INDIRECT_DESC
    public static let eventIndex: UInt64 = 1 << 29            // VIRTIO_F_EVENT_IDX
    public static let version1: UInt64 = 1 << 32              // VIRTIO_F_VERSION_1
}

/// device_status bits (spec 2.1).
public enum VirtioStatus {
    public static let acknowledge: UInt8 = 1
    public static let driver: UInt8 = 2
    public static let driverOK: UInt8 = 4
    public static let featuresOK: UInt8 = 8
    public static let deviceNeedsReset: UInt8 = 0x40
    public static let failed: UInt8 = 0x80
}

/// ISR status bits (spec 4.1.4.5).
public enum VirtioISR {
    public static let queue: UInt8 = 1
    public static let configChange: UInt8 = 2
}

/// A logging hook for device processes, which import no Foundation and may
/// not own stderr. The VM side wires it to syslog or stderr; each line is
/// complete and already names the device ("vioblk0: ...").
public nonisolated(unsafe) var virtioLogHook: (String) -> Void = { line in
    var text = line
    text.append("\n")
    fputs(text, stderr)
}

/// errno as text in device messages. Not strerror(3): glibc's may load the
/// locale's message catalogs, files a sandboxed device process cannot open.
/// The device process wires it to VMDSystem's `errnoDescription`.
public nonisolated(unsafe) var virtioErrnoDescription: (Int32) -> String = { "errno \($0)" }

/// Log one line through `virtioLogHook`.
public func virtioLog(_ line: String) {
    virtioLogHook(line)
}

import Glibc

/// Bounds how much a guest can make a device log: a guest that repeats a
/// bad request (or resets the device and repeats it) forever must not fill
/// the host's log. At most `limit` lines per `window` seconds; the first
/// line over the limit says so, and the next window starts with a count of
/// what was left out.
public struct LogBudget {
    public let limit: Int
    public let window: Int
    private var windowStart: Int = LogBudget.monotonicSeconds()
    private var logged = 0
    private var suppressed = 0

    public init(limit: Int = 20, window: Int = 60) {
        self.limit = limit
        self.window = window
    }

    public mutating func log(_ line: String) {
        let now = LogBudget.monotonicSeconds()
        if now - windowStart >= window {
            if suppressed > 0 { virtioLog("\(suppressed) similar messages suppressed") }
            windowStart = now
            logged = 0
            suppressed = 0
        }
        if logged < limit {
            logged += 1
            virtioLog(line)
        } else {
            if suppressed == 0 { virtioLog("\(line) (further messages suppressed for \(window) s)") }
            suppressed += 1
        }
    }

    static func monotonicSeconds() -> Int {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return now.tv_sec
    }
}
