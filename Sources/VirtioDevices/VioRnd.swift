// virtio-rng (spec 5.4): fill every device-writable buffer with bytes from
// the kernel's random source (getrandom(2) through getentropy(3)).
import Glibc
import Virtio

public final class VioRnd: VirtioDevice {
    public static let queueSize: UInt16 = 64
    /// At most this much entropy per request; the guest asks again for more.
    public static let maxRequestBytes = 64 * 1024

    public let name: String
    public let deviceFeatures: UInt64 = 0
    public let queueMaxSizes = VioRnd.model.queueSizes

    public init(name: String = "viornd") {
        self.name = name
    }

    public func attach(to host: VirtioDeviceHost) {}
    public func reset() {}
    public func readConfig(offset: Int, size: Int) -> UInt32 { 0 }

    public func process(queue: Virtqueue, index: Int) throws {
        while let request = try queue.popRequest() {
            var cursor = ChainCursor(memory: queue.memory, elements: request.writable)
            var filled = 0
            while filled < VioRnd.maxRequestBytes,
                  let segment = cursor.nextSegment(maxLength: VioRnd.maxRequestBytes - filled) {
                guard VioRnd.fillRandom(segment) else { break }
                filled += segment.count
            }
            try queue.pushUsed(head: request.head, length: UInt32(filled))
        }
    }

    /// getentropy() takes at most 256 bytes per call.
    static func fillRandom(_ buffer: UnsafeMutableRawBufferPointer) -> Bool {
        guard let base = buffer.baseAddress else { return true }
        var done = 0
        while done < buffer.count {
            let count = min(256, buffer.count - done)
            guard getentropy(base + done, count) == 0 else {
                virtioLog("viornd: getentropy: \(String(cString: strerror(errno)))")
                return false
            }
            done += count
        }
        return true
    }
}

extension VioRnd {
    public static let model = DeviceModel(
        kind: .rnd, baseName: "viornd", single: true, presentation: .modern(.entropy),
        queueSizes: [queueSize], backends: [], syscalls: [],
        make: { c in VioRnd(name: c.name) })
}
