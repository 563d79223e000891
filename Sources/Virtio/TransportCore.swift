// What every transport shares (virtio 1.x and legacy 0.9 over PCI, and
// whatever carries a device next): the device and its queues, the status
// byte, the negotiated features, the ISR bits with the INTx line they
// drive, running a device's work on a queue, failing and resetting it.
// The transports subclass it and add their register layouts.

/// The state and behaviour common to the transports. Not used on its own.
public class TransportCore: VirtioDeviceHost {
    public let device: VirtioDevice
    public let memory: GuestMemory
    public let queues: [Virtqueue]
    let interrupts: InterruptState
    public var interruptSink: InterruptSink? {
        get { interrupts.sink }
        set { interrupts.sink = newValue }
    }

    public internal(set) var status: UInt8 = 0
    public var isr: UInt8 { interrupts.isr }
    public internal(set) var negotiatedFeatures: UInt64 = 0
    var queueSelect: UInt16 = 0
    /// The feature bits the driver wrote, before FEATURES_OK (virtio 1.x
    /// transports; legacy writes its guest features straight through).
    public internal(set) var driverFeatures: UInt64 = 0
    var deviceFeatureSelect: UInt32 = 0
    var driverFeatureSelect: UInt32 = 0
    /// Bumped on every configuration change (PCI shows its low 8 bits,
    /// virtio-mmio all 32).
    public internal(set) var configGeneration: UInt32 = 0
    var logBudget = LogBudget()

    init(device: VirtioDevice, memory: GuestMemory, interruptSink: InterruptSink?) {
        self.device = device
        self.memory = memory
        self.interrupts = InterruptState(sink: interruptSink)
        self.queues = device.queueMaxSizes.map { Virtqueue(maxSize: $0, memory: memory) }
        interrupts.queueVectors = queues.map { _ in InterruptState.noVector }
        device.attach(to: self)
    }

    public var isDriverReady: Bool {
        status & VirtioStatus.driverOK != 0 && status & VirtioStatus.deviceNeedsReset == 0
    }

    public var needsReset: Bool { status & VirtioStatus.deviceNeedsReset != 0 }

    var selectedQueue: Virtqueue? {
        Int(queueSelect) < queues.count ? queues[Int(queueSelect)] : nil
    }

    /// The driver notified queue `index` (runQueue checks the index and
    /// the driver state).
    public func notify(queue index: Int) {
        withQueue(index) { queue in try device.process(queue: queue, index: index) }
    }

    public func withQueue(_ index: Int, _ body: (Virtqueue) throws -> Void) {
        runQueue(queues, index, ready: isDriverReady, interrupts: interrupts, fail: deviceFailed, body)
    }

    /// Device reset (status 0): back to the power-on state. Transports
    /// clear their own registers too.
    public func reset() {
        device.reset()
        for queue in queues { queue.reset() }
        status = 0
        negotiatedFeatures = 0
        driverFeatures = 0
        deviceFeatureSelect = 0
        driverFeatureSelect = 0
        queueSelect = 0
        interrupts.reset()
    }

    public func configurationChanged() {
        interrupts.raiseConfig()
    }

    /// The guest broke the protocol: stop serving until it resets us.
    public func deviceFailed(_ reason: String) {
        guard !needsReset else { return }
        logBudget.log("\(device.name): \(reason); device needs reset")
        status |= VirtioStatus.deviceNeedsReset
        configurationChangedByFailure()
        interrupts.raiseConfig()
    }

    /// What else a failure changes in a transport's registers.
    func configurationChangedByFailure() {
        configGeneration &+= 1
    }

    public var isInterruptAsserted: Bool { interrupts.asserted }
}

/// ISR causes and the level-triggered line: high while any cause is
/// pending; reading (and so clearing) the ISR lowers it. With shared state
/// (a device process) the ISR lives there and the line is an irqfd; with
/// MSI-X enabled, queue and configuration interrupts go to their vectors.
final class InterruptState {
    weak var sink: InterruptSink?
    var shared: SharedInterruptState?
    private var localISR: UInt8 = 0
    private var localAsserted = false
    /// MSI-X vectors chosen by the driver (modern transport only).
    var configVector: UInt16 = noVector
    var queueVectors: [UInt16] = []
    static let noVector: UInt16 = 0xffff

    init(sink: InterruptSink?) {
        self.sink = sink
    }

    var isr: UInt8 { shared?.isrBits ?? localISR }
    var asserted: Bool { shared.map { $0.isrBits != 0 } ?? localAsserted }

    func raise(_ bits: UInt8) {
        if let shared {
            shared.raiseISR(bits)
            return
        }
        localISR |= bits
        setLine(true)
    }

    /// A used-buffer notification for queue `index`.
    func raiseQueue(_ index: Int) {
        if let shared, shared.msixEnabled {
            let vector = index < queueVectors.count ? queueVectors[index] : Self.noVector
            if vector != Self.noVector { shared.fire(vector: Int(vector)) }
            return
        }
        raise(VirtioISR.queue)
    }

    /// A configuration-change notification.
    func raiseConfig() {
        if let shared, shared.msixEnabled {
            if configVector != Self.noVector { shared.fire(vector: Int(configVector)) }
            return
        }
        raise(VirtioISR.configChange)
    }

    /// The driver read the ISR (or the device was reset).
    func readAndClear() -> UInt8 {
        if let shared { return shared.readAndClearISR() }
        let value = localISR
        localISR = 0
        setLine(false)
        return value
    }

    /// Device reset: no vectors chosen, nothing pending.
    func reset() {
        configVector = Self.noVector
        for i in queueVectors.indices { queueVectors[i] = Self.noVector }
        _ = readAndClear()
    }

    /// The driver acknowledged `bits` (virtio-mmio InterruptACK): they
    /// clear, and the line drops once nothing is pending.
    func acknowledge(_ bits: UInt8) {
        if let shared {
            shared.acknowledgeISR(bits)
            return
        }
        localISR &= ~bits
        if localISR == 0 { setLine(false) }
    }

    private func setLine(_ level: Bool) {
        guard level != localAsserted else { return }
        localAsserted = level
        sink?.setInterrupt(level)
    }
}

/// Runs `body` on queue `index` if it is live, then raises the queue
/// interrupt if the driver wants one. A ring error fails the device, after
/// reporting whatever was completed before it.
func runQueue(_ queues: [Virtqueue], _ index: Int, ready: Bool, interrupts: InterruptState,
              fail: (String) -> Void, _ body: (Virtqueue) throws -> Void) {
    guard index >= 0, index < queues.count, ready, queues[index].isEnabled else { return }
    let queue = queues[index]
    do {
        try body(queue)
        if try queue.needsInterrupt() { interrupts.raiseQueue(index) }
    } catch {
        if (try? queue.needsInterrupt()) == true { interrupts.raiseQueue(index) }
        fail("queue \(index): \(error)")
    }
}

/// The virtio 1.x transports (PCI and mmio) offer features and negotiate
/// them through device_status the same way; the legacy transport does not.
public protocol ModernVirtioTransport: TransportCore {}

extension ModernVirtioTransport {
    /// Everything the device offers: its own bits plus what the transport
    /// and the virtqueue implement.
    public var offeredFeatures: UInt64 {
        device.deviceFeatures | VirtioFeature.version1 | VirtioFeature.indirectDescriptors
            | VirtioFeature.eventIndex
    }

    /// A driver's write of device_status: 0 resets; FEATURES_OK is refused
    /// (reads back clear) for features not offered or without VERSION_1;
    /// DRIVER_OK needs FEATURES_OK.
    func writeStatus(_ value: UInt8) {
        if value == 0 {
            reset()
            return
        }
        var newStatus = value | (status & VirtioStatus.deviceNeedsReset)
        let newlySet = newStatus & ~status
        if newlySet & VirtioStatus.featuresOK != 0 {
            let offered = offeredFeatures
            let unoffered = driverFeatures & ~offered
            if unoffered != 0 || driverFeatures & VirtioFeature.version1 == 0 {
                // Refused: the driver reads FEATURES_OK back and sees it clear.
                logBudget.log("\(device.name): refusing features 0x\(hex(driverFeatures)) (offered 0x\(hex(offered)))")
                newStatus &= ~VirtioStatus.featuresOK
            } else {
                negotiatedFeatures = driverFeatures
            }
        }
        if newlySet & VirtioStatus.driverOK != 0 && newStatus & VirtioStatus.featuresOK == 0 {
            logBudget.log("\(device.name): DRIVER_OK without FEATURES_OK")
            newStatus &= ~VirtioStatus.driverOK
        }
        status = newStatus
        if newlySet & newStatus & VirtioStatus.driverOK != 0 {
            device.driverReady(features: negotiatedFeatures)
        }
    }

    /// A driver's 32-bit write of one half of the selected queue's descriptor,
    /// driver or device area address; ignored once the queue is enabled
    /// (the spec forbids changing a live queue's areas).
    func writeQueueAddressHalf(_ area: QueueArea, high: Bool, _ value: UInt32) {
        guard let queue = selectedQueue, !queue.isEnabled else { return }
        func merged(_ old: UInt64) -> UInt64 {
            high ? old & 0xffff_ffff | UInt64(value) << 32 : old & 0xffff_ffff_0000_0000 | UInt64(value)
        }
        switch area {
        case .descriptors: queue.descriptorTable = merged(queue.descriptorTable)
        case .driver: queue.availRing = merged(queue.availRing)
        case .device: queue.usedRing = merged(queue.usedRing)
        }
    }
}

/// The three guest-memory areas of a split virtqueue (spec 2.7).
enum QueueArea {
    case descriptors, driver, device
}
