// virtio-net (spec 5.1) over a tap device. No offloads and no control queue,
// like vmd; the MAC and link status are in config space. Every frame on the
// tap carries a 12-byte virtio_net_hdr in front (IFF_VNET_HDR with
// TUNSETVNETHDRSZ 12, the VERSION_1 header size), so the guest's header and
// the tap's line up and frames are copied once each way.
//
// Receive is driven by the event loop: call `backendReadable()` when the tap fd
// is readable. When the guest has no receive buffers it returns false: stop
// watching the tap until `onInputWanted` fires (the guest added
// buffers), so frames wait in the kernel instead of being read and dropped.
import Glibc
import Virtio
import VMDSystem

public enum VirtioNetFeature {
    public static let mac: UInt64 = 1 << 5
    public static let status: UInt64 = 1 << 16
}

/// One frame per read and per write, each with a 12-byte virtio_net_hdr.
public protocol NetworkBackend: AnyObject {
    /// Readable when a frame is waiting (the tap).
    var descriptor: Int32 { get }
    /// Read one frame into `buffer`; nil when none is waiting.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> Int?
    func send(_ frame: UnsafeRawBufferPointer) throws
}

public struct NetworkBackendError: Error, CustomStringConvertible {
    public var errno: Int32
    public var operation: String
    public var description: String { "\(operation): \(virtioErrnoDescription(errno))" }
}

/// A tap fd (or, in tests, a SOCK_SEQPACKET socket): one read is one frame.
public final class TapBackend: NetworkBackend {
    public let fd: Int32
    public var descriptor: Int32 { fd }

    public init(fd: Int32) {
        self.fd = fd
    }

    /// Make a tap opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR use the 12-byte
    /// header and never block. Call before the sandbox forbids ioctl.
    public static func prepareTap(fd: Int32) throws {
        do {
            try Tap.prepare(fd, vnetHeaderSize: Int32(VioNet.headerSize))
        } catch let e as SystemError {
            throw NetworkBackendError(errno: e.code, operation: e.what)
        }
    }

    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> Int? {
        do {
            return try FileIO.readRecord(fd, into: buffer)
        } catch let e as SystemError {
            throw NetworkBackendError(errno: e.code, operation: "tap read")
        }
    }

    public func send(_ frame: UnsafeRawBufferPointer) throws {
        do {
            try FileIO.writeRecord(fd, frame)
        } catch let e as SystemError {
            // A full tap queue drops the frame, as a wire would.
            if e.code == EAGAIN || e.code == EWOULDBLOCK || e.code == ENOBUFS { return }
            throw NetworkBackendError(errno: e.code, operation: "tap write")
        }
    }
}

public final class VioNet: BackendInputDevice {
    public static let headerSize = 12
    public static let queueSize: UInt16 = 256
    public static let receiveQueue = 0
    public static let transmitQueue = 1
    static let ethernetHeaderSize = 14
    /// Without GSO a frame is at most an MTU plus its headers; anything up
    /// to 64 KiB is passed through, larger is a guest error.
    public static let maxFrameSize = 65536

    public let name: String
    public let backend: NetworkBackend
    public let mac: [UInt8]
    /// `locked lladdr`: drop transmitted frames whose source MAC isn't ours.
    public let lockedLinkAddress: Bool
    /// A `local interface`: vionet is the guest's DHCP server (DHCPServer).
    public var local: LocalInterface?
    public private(set) var dhcpReplies = 0
    public let queueMaxSizes = VioNet.model.queueSizes
    public let deviceFeatures: UInt64 = VirtioNetFeature.mac | VirtioNetFeature.status
    /// Called when the guest adds receive buffers after `backendReadable()`
    /// returned false: resume watching the tap.
    public var onInputWanted: (() -> Void)?

    private weak var host: VirtioDeviceHost?
    private let frameBuffer: UnsafeMutableRawBufferPointer
    /// The guest had no receive buffers at the last look.
    private var receiveStalled = false
    /// `backendReadable()` said to stop watching the tap; the next receive-queue
    /// notify calls `onInputWanted`.
    private var tapWatchSuspended = false
    public private(set) var droppedTransmitFrames = 0
    public private(set) var droppedReceiveFrames = 0

    public var linkUp = true {
        didSet { if linkUp != oldValue { host?.configurationChanged() } }
    }

    public var inputDescriptor: Int32 { backend.descriptor }

    /// `mac` must be 6 bytes; use `VioNet.randomMAC(index:)` when unset.
    public init?(name: String, backend: NetworkBackend, mac: [UInt8], lockedLinkAddress: Bool) {
        guard mac.count == 6 else { return nil }
        self.name = name
        self.backend = backend
        self.mac = mac
        self.lockedLinkAddress = lockedLinkAddress
        self.frameBuffer = .allocate(byteCount: VioNet.headerSize + VioNet.maxFrameSize, alignment: 16)
    }

    deinit { frameBuffer.deallocate() }

    /// vmd's MAC for an interface without one: fe:e1:bb:dN:xx:xx, where N is
    /// the interface number plus one and xx random.
    public static func randomMAC(index: Int) -> [UInt8] {
        var random: [UInt8] = [0, 0]
        random.withUnsafeMutableBytes { _ = getentropy($0.baseAddress, 2) }
        return [0xfe, 0xe1, 0xbb, 0xd0 | UInt8((index + 1) & 0xf), random[0], random[1]]
    }

    public func attach(to host: VirtioDeviceHost) { self.host = host }

    private var logBudget = LogBudget()

    public func reset() {
        receiveStalled = false
    }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        var bytes = mac
        appendLittleEndian(UInt16(linkUp ? 1 : 0), to: &bytes)   // VIRTIO_NET_S_LINK_UP
        return readLittleEndian(bytes, offset: offset, size: size)
    }

    public func process(queue: Virtqueue, index: Int) throws {
        switch index {
        case VioNet.receiveQueue:
            // New buffers: frames may be waiting in the tap, so read them
            // now and have the event loop watch the tap again.
            if tapWatchSuspended {
                tapWatchSuspended = false
                onInputWanted?()
            }
            try receiveFrames(queue: queue)
        case VioNet.transmitQueue:
            try transmitFrames(queue: queue)
        default:
            break
        }
    }

    /// The tap is readable: move waiting frames into the guest's receive
    /// buffers. Returns whether to keep watching the tap (false: the guest
    /// has no buffers, or the device is not running).
    @discardableResult
    public func backendReadable() -> Bool {
        guard let host = host, host.isDriverReady else {
            tapWatchSuspended = true
            return false
        }
        host.withQueue(VioNet.receiveQueue) { queue in try receiveFrames(queue: queue) }
        let keepWatching = host.isDriverReady && !receiveStalled
        if !keepWatching { tapWatchSuspended = true }
        return keepWatching
    }

    private func receiveFrames(queue: Virtqueue) throws {
        while true {
            guard try queue.hasAvailable() else {
                receiveStalled = true
                return
            }
            receiveStalled = false
            let received: Int?
            do {
                received = try backend.receive(into: frameBuffer)
            } catch {
                logBudget.log("\(name): \(error)")
                return
            }
            guard let length = received else { return }
            guard length >= VioNet.headerSize + VioNet.ethernetHeaderSize else {
                droppedReceiveFrames += 1
                continue
            }
            guard let request = try queue.popRequest() else { return }
            guard request.writableLength >= UInt64(length) else {
                // A buffer too small for the frame: give it back empty.
                droppedReceiveFrames += 1
                try queue.pushUsed(head: request.head, length: 0)
                continue
            }
            // Our header: no offloads, one buffer (num_buffers = 1).
            memset(frameBuffer.baseAddress!, 0, VioNet.headerSize)
            frameBuffer[10] = 1
            var cursor = ChainCursor(memory: queue.memory, elements: request.writable)
            let written = cursor.write(UnsafeRawBufferPointer(rebasing: frameBuffer[0..<length]))
            try queue.pushUsed(head: request.head, length: UInt32(written))
        }
    }

    /// Puts a frame vionet made (a DHCP reply) into the guest's next
    /// receive buffer; without one it is dropped, as on a wire (the
    /// client asks again).
    private func deliver(_ frame: [UInt8]) {
        host?.withQueue(VioNet.receiveQueue) { queue in
            guard let request = try queue.popRequest() else {
                droppedReceiveFrames += 1
                return
            }
            var header = [UInt8](repeating: 0, count: VioNet.headerSize)
            header[10] = 1
            let whole = header + frame
            guard request.writableLength >= UInt64(whole.count) else {
                droppedReceiveFrames += 1
                try queue.pushUsed(head: request.head, length: 0)
                return
            }
            var cursor = ChainCursor(memory: queue.memory, elements: request.writable)
            let written = whole.withUnsafeBytes { cursor.write($0) }
            try queue.pushUsed(head: request.head, length: UInt32(written))
            dhcpReplies += 1
        }
    }

    private func transmitFrames(queue: Virtqueue) throws {
        while let request = try queue.popRequest() {
            defer { _ = try? queue.pushUsed(head: request.head, length: 0) }
            let length = request.readableLength
            guard length >= UInt64(VioNet.headerSize + VioNet.ethernetHeaderSize),
                  length <= UInt64(VioNet.headerSize + VioNet.maxFrameSize) else {
                droppedTransmitFrames += 1
                continue
            }
            var cursor = ChainCursor(memory: queue.memory, elements: request.readable)
            let frameLength = cursor.read(into: UnsafeMutableRawBufferPointer(rebasing: frameBuffer[0..<Int(length)]))
            // Take nothing from the guest's header: it may not ask the host
            // kernel for checksum or segmentation work we never offered.
            memset(frameBuffer.baseAddress!, 0, VioNet.headerSize)
            if lockedLinkAddress {
                let source = VioNet.headerSize + 6
                guard frameBuffer[source..<source + 6].elementsEqual(mac) else {
                    droppedTransmitFrames += 1
                    continue
                }
            }
            if let local {
                let frame = UnsafeRawBufferPointer(rebasing: frameBuffer[VioNet.headerSize..<frameLength])
                switch DHCPServer.handle(frame: frame, guestMAC: mac, local: local) {
                case .notDHCP: break
                case .drop:
                    droppedTransmitFrames += 1
                    continue
                case .reply(let reply):
                    deliver(reply)
                    continue
                }
            }
            do {
                try backend.send(UnsafeRawBufferPointer(rebasing: frameBuffer[0..<frameLength]))
            } catch {
                logBudget.log("\(name): \(error)")
            }
        }
    }
}

extension VioNet {
    public static let model = DeviceModel(
        kind: .net, baseName: "vionet", single: false, presentation: .modern(.network),
        queueSizes: [queueSize, queueSize], backends: [.tap],
        // Frames in and out of the tap with read/write; no ioctl after set-up.
        syscalls: [],
        make: { c in
            let tap = try c.backend(.tap)
            try TapBackend.prepareTap(fd: tap)
            guard let net = VioNet(name: c.name, backend: TapBackend(fd: tap), mac: c.parameters.mac,
                                   lockedLinkAddress: c.parameters.lockedLladdr) else {
                throw DeviceConstructionError("\(c.name): bad MAC address")
            }
            net.local = c.parameters.local
            return net
        })
}
