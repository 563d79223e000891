// The backend side of one vhost-user connection, driving a VirtioDevice
// (VioBlk, VioSCSI, VioRnd, VioNet: the same code our own VMs use) in place
// of a PCI transport. It is a state machine: the process feeds it complete
// messages (`handle`) and kicks (`kick`), and is told through the delegate
// which eventfds to watch. It is not thread-safe: one event loop drives it.
//
// Every failure of a request is answered with a non-zero REPLY_ACK when the
// frontend asked for one; otherwise the connection is closed (vhost-user
// has no other way to report an error). A frontend never makes it trap.
import Glibc
import CVhostUser
import Virtio

public protocol VhostUserBackendDelegate: AnyObject {
    /// Watch `fd` (nil: stop watching) for kicks of queue `index`; call
    /// `kick(queue:)` when it is readable.
    func watchKick(queue index: Int, fd: Int32?)
}

/// An inflight log that calls a hook once a request is recorded as taken.
final class HookedInflightLog: VirtqueueInflightLog {
    let inner: InflightQueue
    let hook: () -> Void
    init(inner: InflightQueue, hook: @escaping () -> Void) { self.inner = inner; self.hook = hook }
    func taken(head: UInt16) { inner.taken(head: head); hook() }
    func returning(head: UInt16) { inner.returning(head: head) }
    func returned(head: UInt16, usedIndex: UInt16) { inner.returned(head: head, usedIndex: usedIndex) }
}

/// What the process does after a message.
public struct VhostUserOutcome {
    public var reply: VhostUserMessage?
    /// A descriptor to send with the reply (GET_INFLIGHT_FD); the process
    /// closes it after sending.
    public var replyFD: Int32?
    /// Close the connection (after sending the reply, if any).
    public var close = false
    /// For the log: why the request failed, if it did.
    public var error: String?
}

public final class VhostUserBackend: VirtioDeviceHost {
    /// Ring sizes a frontend may choose beyond what the device suggests.
    public static let maxQueueSize: UInt16 = 1024

    public let device: VirtioDevice
    public weak var delegate: VhostUserBackendDelegate?
    public let switchableMemory = SwitchableGuestMemory()
    public var memory: GuestMemory { switchableMemory }
    public let queues: [Virtqueue]

    struct QueueState {
        var kickFD: Int32 = -1
        var callFD: Int32 = -1
        var errFD: Int32 = -1
        var addressesSet = false
        var base: UInt16 = 0
        var started = false
        var enabled = false
        var failed = false
    }
    var queueState: [QueueState]

    public private(set) var ackedFeatures: UInt64 = 0
    public private(set) var featuresSet = false
    public private(set) var protocolFeatures: UInt64 = 0
    public private(set) var status: UInt8 = 0
    public private(set) var inflight: InflightRegion?
    /// Test hook: called after each request is recorded as taken in the
    /// inflight region (before the device serves it). The restart tests
    /// use it to die with a request in flight.
    public var afterTaking: ((Int) -> Void)?
    private var hookedLogs: [Int: HookedInflightLog] = [:]
    private var logBudget = LogBudget()

    /// Whether frontends read the device configuration from us (blk,
    /// scsi); QEMU warns when a device without it is offered CONFIG.
    public let offersConfig: Bool

    public var supportedProtocolFeatures: UInt64 {
        VhostUserProtocolFeature.mq | VhostUserProtocolFeature.replyAck
            | (offersConfig ? VhostUserProtocolFeature.config : 0)
            | VhostUserProtocolFeature.inflightShmfd | VhostUserProtocolFeature.resetDevice
            | VhostUserProtocolFeature.status
    }

    public var offeredFeatures: UInt64 {
        device.deviceFeatures | VirtioFeature.version1 | VirtioFeature.indirectDescriptors
            | VirtioFeature.eventIndex | VhostUserLimits.protocolFeaturesBit
    }

    public init(device: VirtioDevice, offersConfig: Bool = true) {
        self.device = device
        self.offersConfig = offersConfig
        let memory = switchableMemory
        queues = device.queueMaxSizes.map { _ in Virtqueue(maxSize: Self.maxQueueSize, memory: memory) }
        for (q, size) in zip(queues, device.queueMaxSizes) { q.size = min(size, Self.maxQueueSize) }
        queueState = Array(repeating: QueueState(), count: queues.count)
        device.attach(to: self)
    }

    // MARK: VirtioDeviceHost

    public var negotiatedFeatures: UInt64 { ackedFeatures & ~VhostUserLimits.protocolFeaturesBit }
    public var isDriverReady: Bool { switchableMemory.current != nil && featuresSet }

    public func withQueue(_ index: Int, _ body: (Virtqueue) throws -> Void) {
        guard index >= 0, index < queues.count, isRunning(index) else { return }
        let queue = queues[index]
        do {
            try body(queue)
            if try queue.needsInterrupt() { signal(queueState[index].callFD) }
        } catch {
            if (try? queue.needsInterrupt()) == true { signal(queueState[index].callFD) }
            queueState[index].failed = true
            logBudget.log("\(device.name): queue \(index): \(error); queue stopped until the frontend restarts it")
            signal(queueState[index].errFD)
        }
    }

    /// vhost-user has no config interrupt without the backend channel: the
    /// frontend reads the configuration again when it needs to.
    public func configurationChanged() {}

    func isRunning(_ index: Int) -> Bool {
        let s = queueState[index]
        return s.started && s.enabled && !s.failed && queues[index].isEnabled && isDriverReady
    }

    private func signal(_ fd: Int32) {
        guard fd >= 0 else { return }
        var one: UInt64 = 1
        _ = Glibc.write(fd, &one, 8)
    }

    /// The queue's kick eventfd fired (or a ring just started).
    public func kick(queue index: Int) {
        guard index >= 0, index < queues.count else { return }
        if queueState[index].kickFD >= 0 {
            var value: UInt64 = 0
            _ = Glibc.read(queueState[index].kickFD, &value, 8)
        }
        withQueue(index) { queue in try device.process(queue: queue, index: index) }
    }

    // MARK: connection life

    /// The frontend went away: forget everything it set up. The inflight
    /// region is dropped too; the next frontend hands it back.
    public func disconnect() {
        for i in queues.indices { stopQueue(i) }
        for i in queues.indices {
            closeFD(&queueState[i].callFD)
            closeFD(&queueState[i].errFD)
            queueState[i] = QueueState()
            queues[i].reset()
            queues[i].size = min(device.queueMaxSizes[i], Self.maxQueueSize)
        }
        device.reset()
        switchableMemory.current = nil
        inflight = nil
        ackedFeatures = 0
        featuresSet = false
        protocolFeatures = 0
        status = 0
    }

    private func closeFD(_ fd: inout Int32) {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Stop a ring: no more kicks; its layout stays, its position is kept
    /// as the base the next start continues from.
    private func stopQueue(_ i: Int) {
        // Requests in flight write guest memory: finish them while the ring runs.
        if queueState[i].started { (device as? InflightCompleting)?.completeInflight() }
        if queueState[i].kickFD >= 0 { delegate?.watchKick(queue: i, fd: nil) }
        closeFD(&queueState[i].kickFD)
        let q = queues[i]
        if queueState[i].started { queueState[i].base = q.lastAvailIndex }
        queueState[i].started = false
        let (size, desc, avail, used, indirect, eventIndex) = (q.size, q.descriptorTable, q.availRing, q.usedRing,
                                                               q.indirectAllowed, q.eventIndex)
        q.reset()
        q.size = size; q.descriptorTable = desc; q.availRing = avail; q.usedRing = used
        q.indirectAllowed = indirect; q.eventIndex = eventIndex
        q.inflightLog = nil
    }

    // MARK: messages

    struct Failure: Error { var message: String }

    /// Serve one message. Takes ownership of its descriptors.
    public func handle(_ message: VhostUserMessage) -> VhostUserOutcome {
        var fds = message.fds
        defer { for fd in fds { Glibc.close(fd) } }
        guard let request = VhostUserRequest(rawValue: message.request) else {
            return VhostUserOutcome(close: true, error: "unknown request \(message.request)")
        }
        do {
            var reply: [UInt8]?
            var replyFD: Int32?
            let payload = message.payload
            func noFDs() throws {
                guard fds.isEmpty else { throw Failure(message: "\(fds.count) unexpected descriptors") }
            }
            switch request {
            case .getFeatures:
                try expectSize(payload, 0, "GET_FEATURES")
                reply = U64Payload.encode(offeredFeatures)
            case .setFeatures:
                try noFDs()
                var features = try U64Payload.decode(payload, "SET_FEATURES")
                // QEMU's vhost-user-scsi acks VIRTIO_SCSI_F_CHANGE whatever we
                // offer: bits we never offered are ignored, not refused.
                if features & ~offeredFeatures != 0 {
                    logBudget.log("\(device.name): ignoring features 0x\(hex(features & ~offeredFeatures)) the frontend acked but we did not offer")
                    features &= offeredFeatures
                }
                ackedFeatures = features
                featuresSet = true
                for q in queues {
                    q.indirectAllowed = features & VirtioFeature.indirectDescriptors != 0
                    q.eventIndex = features & VirtioFeature.eventIndex != 0
                }
            case .getProtocolFeatures:
                try expectSize(payload, 0, "GET_PROTOCOL_FEATURES")
                reply = U64Payload.encode(supportedProtocolFeatures)
            case .setProtocolFeatures:
                try noFDs()
                let features = try U64Payload.decode(payload, "SET_PROTOCOL_FEATURES")
                guard features & ~supportedProtocolFeatures == 0 else {
                    throw Failure(message: "protocol features 0x\(hex(features)) not offered")
                }
                protocolFeatures = features
            case .setOwner:
                try noFDs()
                try expectSize(payload, 0, "SET_OWNER")
            case .resetOwner:
                for i in queues.indices { stopQueue(i) }
            case .resetDevice:
                try expectSize(payload, 0, "RESET_DEVICE")
                for i in queues.indices {
                    stopQueue(i)
                    queueState[i].enabled = false
                    queueState[i].failed = false
                    queueState[i].addressesSet = false
                    queueState[i].base = 0
                    queues[i].reset()
                    queues[i].size = min(device.queueMaxSizes[i], Self.maxQueueSize)
                }
                device.reset()
                ackedFeatures = 0
                featuresSet = false
                status = 0
            case .setMemTable:
                let table = try MemoryTablePayload(decoding: payload)
                let mapped = try VhostGuestMemory.map(table, fds: fds)
                // The rings were translated with the old table: a frontend
                // changing the table re-sends their addresses. Requests in
                // flight target the old mapping: finish them first.
                (device as? InflightCompleting)?.completeInflight()
                switchableMemory.current = mapped
            case .getQueueNum:
                try expectSize(payload, 0, "GET_QUEUE_NUM")
                reply = U64Payload.encode(UInt64(queues.count))
            case .setVringNum:
                let state = try VringState(decoding: payload)
                let i = try queueIndex(state.index)
                guard !queueState[i].started else { throw Failure(message: "queue \(i): size changed while running") }
                guard state.num >= 1, state.num <= UInt32(Self.maxQueueSize), state.num & (state.num - 1) == 0 else {
                    throw Failure(message: "queue \(i): size \(state.num) (a power of two up to \(Self.maxQueueSize))")
                }
                queues[i].size = UInt16(state.num)
                queueState[i].addressesSet = false
            case .setVringAddr:
                let address = try VringAddress(decoding: payload)
                let i = try queueIndex(address.index)
                guard !queueState[i].started else { throw Failure(message: "queue \(i): addresses changed while running") }
                guard let table = switchableMemory.current else { throw Failure(message: "queue \(i): ring addresses before SET_MEM_TABLE") }
                let n = UInt64(queues[i].size)
                guard let descriptors = table.guestAddress(ofUser: address.descriptor, length: 16 * n),
                      let available = table.guestAddress(ofUser: address.available, length: 6 + 2 * n),
                      let used = table.guestAddress(ofUser: address.used, length: 6 + 8 * n) else {
                    throw Failure(message: "queue \(i): rings (desc 0x\(hex(address.descriptor)), avail 0x\(hex(address.available)), used 0x\(hex(address.used))) outside the memory table")
                }
                queues[i].descriptorTable = descriptors
                queues[i].availRing = available
                queues[i].usedRing = used
                queueState[i].addressesSet = true
            case .setVringBase:
                let state = try VringState(decoding: payload)
                let i = try queueIndex(state.index)
                guard !queueState[i].started else { throw Failure(message: "queue \(i): base changed while running") }
                guard state.num <= 0xffff else { throw Failure(message: "queue \(i): base \(state.num)") }
                queueState[i].base = UInt16(state.num)
            case .getVringBase:
                let state = try VringState(decoding: payload)
                let i = try queueIndex(state.index)
                stopQueue(i)
                queueState[i].failed = false
                reply = VringState(index: state.index, num: UInt32(queueState[i].base)).encoded()
            case .setVringKick, .setVringCall, .setVringErr:
                let file = try VringFileIndex(decoding: payload)
                let i = try queueIndex(UInt32(file.index))
                guard fds.count == (file.hasFD ? 1 : 0) else {
                    throw Failure(message: "queue \(i): \(fds.count) descriptors with \(request)")
                }
                let fd = file.hasFD ? fds.removeFirst() : -1
                // A frontend could pass a pipe: never let a signal block us.
                if fd >= 0 {
                    let flags = fcntl(fd, F_GETFL)
                    if flags >= 0 { _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
                }
                switch request {
                case .setVringCall:
                    closeFD(&queueState[i].callFD)
                    queueState[i].callFD = fd
                case .setVringErr:
                    closeFD(&queueState[i].errFD)
                    queueState[i].errFD = fd
                default:
                    guard fd >= 0 else {
                        throw Failure(message: "queue \(i): polling (no kick descriptor) is not supported")
                    }
                    stopQueue(i)
                    queueState[i].kickFD = fd
                    do {
                        try startQueue(i)
                    } catch {
                        closeFD(&queueState[i].kickFD)
                        throw error
                    }
                }
            case .setVringEnable:
                let state = try VringState(decoding: payload)
                let i = try queueIndex(state.index)
                guard state.num <= 1 else { throw Failure(message: "queue \(i): enable \(state.num)") }
                queueState[i].enabled = state.num == 1
                if queueState[i].enabled && queueState[i].started { kick(queue: i) }
            case .getConfig:
                try noFDs()
                var config = try ConfigPayload(decoding: payload)
                guard protocolFeatures & VhostUserProtocolFeature.config != 0 else {
                    throw Failure(message: "GET_CONFIG without the CONFIG protocol feature")
                }
                for k in config.data.indices {
                    config.data[k] = UInt8(truncatingIfNeeded: device.readConfig(offset: Int(config.offset) + k, size: 1))
                }
                reply = config.encoded()
            case .setConfig:
                try noFDs()
                let config = try ConfigPayload(decoding: payload)
                for (k, byte) in config.data.enumerated() {
                    device.writeConfig(offset: Int(config.offset) + k, size: 1, value: UInt32(byte))
                }
            case .getInflightFD:
                try noFDs()
                guard protocolFeatures & VhostUserProtocolFeature.inflightShmfd != 0 else {
                    throw Failure(message: "GET_INFLIGHT_FD without INFLIGHT_SHMFD")
                }
                let asked = try InflightDescription(decoding: payload)
                let (fd, region) = try makeInflightRegion(queueCount: asked.queueCount, queueSize: asked.queueSize)
                inflight = region
                reply = region.description.encoded()
                replyFD = fd
            case .setInflightFD:
                let d = try InflightDescription(decoding: payload)
                guard fds.count == 1 else { throw Failure(message: "SET_INFLIGHT_FD with \(fds.count) descriptors") }
                let region = try InflightRegion(fd: fds[0], description: d, maxQueues: queues.count)
                inflight = region
            case .setStatus:
                try noFDs()
                let value = try U64Payload.decode(payload, "SET_STATUS")
                guard value <= 0xff else { throw Failure(message: "status \(value)") }
                status = UInt8(value)
            case .getStatus:
                try expectSize(payload, 0, "GET_STATUS")
                reply = U64Payload.encode(UInt64(status))
            case .setLogBase, .setLogFD, .addMemReg, .remMemReg, .getMaxMemSlots, .sendRARP, .netSetMTU,
                 .setBackendReqFD, .iotlbMessage, .setVringEndian, .createCryptoSession, .closeCryptoSession,
                 .postcopyAdvise, .postcopyListen, .postcopyEnd, .gpuSetSocket, .vringKick:
                throw Failure(message: "\(request) is not supported")
            }
            if let reply {
                let flags = VhostUserFlags.version | VhostUserFlags.reply
                return VhostUserOutcome(reply: VhostUserMessage(request: message.request, flags: flags, payload: reply),
                                        replyFD: replyFD)
            }
            return ack(message, success: true, error: nil)
        } catch {
            let text: String
            switch error {
            case let f as Failure: text = f.message
            default: text = "\(error)"
            }
            return ack(message, success: false, error: "\(request): \(text)")
        }
    }

    /// REPLY_ACK for a request that has no reply of its own; a failure the
    /// frontend did not ask to hear about closes the connection.
    private func ack(_ message: VhostUserMessage, success: Bool, error: String?) -> VhostUserOutcome {
        let wantsAck = message.needsReply && protocolFeatures & VhostUserProtocolFeature.replyAck != 0
        if wantsAck {
            let flags = VhostUserFlags.version | VhostUserFlags.reply
            return VhostUserOutcome(reply: VhostUserMessage(request: message.request, flags: flags,
                                                            payload: U64Payload.encode(success ? 0 : 1)),
                                    error: error)
        }
        return VhostUserOutcome(close: !success, error: error)
    }

    private func queueIndex(_ index: UInt32) throws -> Int {
        guard index < UInt32(queues.count) else {
            throw Failure(message: "queue \(index) (the device has \(queues.count))")
        }
        return Int(index)
    }

    /// A kick descriptor arrived: the ring starts (rings start disabled
    /// when PROTOCOL_FEATURES was negotiated, enabled otherwise).
    private func startQueue(_ i: Int) throws {
        guard let table = switchableMemory.current else { throw Failure(message: "queue \(i): kick before SET_MEM_TABLE") }
        guard queueState[i].addressesSet else { throw Failure(message: "queue \(i): kick before SET_VRING_ADDR") }
        let queue = queues[i]
        guard let ringUsed = table.load16(at: queue.usedRing &+ 2) else {
            throw Failure(message: "queue \(i): used ring outside memory")
        }
        var lastAvail = queueState[i].base
        var usedIndex = ringUsed
        var resubmit: [UInt16] = []
        var log: InflightQueue?
        if let inflight, i < inflight.queues.count {
            let q = inflight.queues[i]
            let resume = try q.recover(ringUsedIndex: ringUsed, queueSize: queue.size)
            lastAvail = resume.lastAvailIndex
            usedIndex = resume.usedIndex
            resubmit = resume.resubmit
            log = q
            if !resubmit.isEmpty {
                virtioLog("\(device.name): queue \(i): resubmitting \(resubmit.count) requests in flight before the restart")
            }
        }
        do {
            try queue.enable()
        } catch {
            throw Failure(message: "queue \(i): \(error)")
        }
        queue.restoreIndices(lastAvailIndex: lastAvail, usedIndex: usedIndex)
        queue.resubmit(resubmit)
        if let log, let hook = afterTaking {
            let hooked = HookedInflightLog(inner: log) { hook(i) }
            hookedLogs[i] = hooked
            queue.inflightLog = hooked
        } else {
            queue.inflightLog = log
        }
        queueState[i].started = true
        queueState[i].failed = false
        if protocolFeatures == 0 && ackedFeatures & VhostUserLimits.protocolFeaturesBit == 0 {
            queueState[i].enabled = true
        }
        delegate?.watchKick(queue: i, fd: queueState[i].kickFD)
        if queueState[i].enabled { kick(queue: i) }
    }

    private func makeInflightRegion(queueCount: UInt16, queueSize: UInt16) throws -> (Int32, InflightRegion) {
        guard queueCount >= 1, Int(queueCount) <= queues.count, queueSize >= 1, queueSize <= Self.maxQueueSize,
              queueSize & (queueSize - 1) == 0 else {
            throw Failure(message: "inflight region for \(queueCount) queues of \(queueSize)")
        }
        let size = InflightLayout.queueRegionSize(queueSize: queueSize) * Int(queueCount)
        let fd = cvhost_memfd("vhost-user inflight")
        guard fd >= 0 else { throw Failure(message: "memfd_create: \(String(cString: strerror(errno)))") }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw Failure(message: "ftruncate: \(String(cString: strerror(e)))")
        }
        let d = InflightDescription(mmapSize: UInt64(size), mmapOffset: 0, queueCount: queueCount, queueSize: queueSize)
        do {
            let region = try InflightRegion(fd: fd, description: d, maxQueues: queues.count)
            for q in region.queues { q.initialize() }
            return (fd, region)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }
}
