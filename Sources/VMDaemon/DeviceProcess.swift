import Glibc
import VMDSystem
import VMDControl
import Imsg
import Virtio
import VirtioDevices

/// `vmd: vm NAME vioblk0` (and the other devices): one virtio device in its
/// own process. It maps guest memory, builds its device from the device
/// table, restricts itself to its descriptors, then serves register
/// accesses (viodev_msg IO_READ/IO_WRITE on the sync channel), takes queue
/// kicks from KVM ioeventfds and raises its interrupts on KVM irqfds, with
/// the ISR in a page shared with the VM process (IrqRouting.swift). It
/// never knows which device it carries beyond what the table's protocols say.
final class DeviceProcess {
    /// The set-up arrives on the first descriptor, the sync channel; every
    /// other descriptor is named, with its role, in the set-up.
    static let setupDescriptor = DeviceDescriptors.firstChildDescriptor

    // Created after the descriptor clean-up, which would close its epoll fd.
    lazy var loop = EventLoop()
    let setup: DeviceSetup
    let model: DeviceModel
    let sync: ImsgBuffer
    var async: ImsgChannel!
    var registers: VirtioRegisterFile!
    var device: VirtioDevice!
    var paused = false
    /// irqfds and the page shared with the VM process (IrqRouting.swift).
    var interrupts: DeviceInterrupts?
    var inputWatch: EventHandle?
    /// The state the VM process keeps for this device's next instance.
    var stateKeeper: TransportStateKeeper?

    static func main(_ options: DaemonOptions, device: String) -> Never {
        let (sync, setup) = readStartMessage(fd: setupDescriptor, expecting: .devopVMInfo,
                                             what: "\(device) set-up from the VM process",
                                             decode: DeviceSetup.init(decoding:))
        nameThisProcess("vm \(setup.vmName) \(setup.name)")
        DeviceProcess(setup: setup, sync: sync).run()
    }

    init(setup: DeviceSetup, sync: ImsgBuffer) {
        self.setup = setup
        self.model = setup.kind.model
        self.sync = sync
    }

    func fail(_ msg: String) -> Never {
        Log.error("\(setup.name): \(msg)")
        exit(1)
    }

    func run() -> Never {
        let memory = mapGuestMemory()
        buildDevice(memory: memory)
        keepState()
        enterSandbox()
        listen()
        continueAfterRestart()
        send(sync: ViodevMsg(kind: .ready))
        async.send(type: MessageType.devopMsg.rawValue, data: ViodevMsg(kind: .ready).encoded())
        Log.debug("\(setup.name): ready")
        loop.after(seconds: 0.5) { [name = setup.name] in sandboxSelfTest(role: name + "@running") }
        serve()
        exit(0)
    }

    // MARK: the loop, with polling

    /// The longest a device process spins on its queues before it sleeps.
    /// Under PVM the gap between a completion's interrupt and the guest's
    /// next request is ~40 us (the guest's interrupt handler is emulated);
    /// on hardware virtualization it is a few.
    static let pollMaxNanos = 100_000
    var pollWindow = AdaptivePollWindow(maxNanos: DeviceProcess.pollMaxNanos)
    /// The queues the guest kicks, and per queue the available index last
    /// seen by a poll.
    lazy var polledQueues: [Int] = setup.descriptors.queueNotifies.map(\.queue).filter { $0 >= 0 }
    lazy var polledAvail = [UInt16?](repeating: nil, count: (polledQueues.max() ?? -1) + 1)
    /// Read on every round of the spin, so not retained there: a
    /// TransportCore's retains take Swift's slow side-table path (its
    /// device holds it weakly), and `keptTransport` owns it for the whole
    /// life of the process.
    unowned(unsafe) var polledTransport: TransportCore?
    var keptTransport: TransportCore?

    /// The event loop, and between its passes a poll of the queues for as
    /// long as `pollWindow` says (it adapts to how long the waits are, and
    /// closes when this process is preempted while it spins, i.e. on a
    /// loaded host). A request the guest makes while we spin is served
    /// without the wake-up a sleeping process needs after a kick.
    func serve() {
        keptTransport = stateKeeper?.transport ?? registers as? TransportCore
        polledTransport = keptTransport
        while true {
            let start = Clock.nanos()
            let window = paused ? 0 : pollWindow.window(now: start)
            if window > 0, poll(for: window, from: start) {
                let now = Clock.nanos()
                pollWindow.waitEnded(after: now &- start)
                // The descriptors too, at least every 2 us: a guest that
                // keeps its queues busy must not starve the sync channel,
                // the backend's input, timers or SIGTERM.
                if now &- lastLoopPass >= Self.loopPassInterval {
                    lastLoopPass = now
                    guard loop.runOnce(block: false) else { return }
                }
                continue
            }
            guard loop.runOnce(block: true) else { return }
            lastLoopPass = Clock.nanos()
            pollWindow.waitEnded(after: lastLoopPass - start)
        }
    }

    static let loopPassInterval = 2_000
    /// A poll that has spun this long without finding work starts asking
    /// whether it is preempted (a system call: the short polls of a busy
    /// queue do not make it).
    static let preemptionWatchAfter = 10_000
    var lastLoopPass = 0

    /// Spins for up to `nanos`: each round reads the queues' available
    /// indexes (memory), and every 2 us (at once while backend input keeps
    /// coming) a non-blocking pass of the loop serves the descriptors (sync
    /// channel, backend, timers), so nothing waits longer for the polling.
    /// Once it has spun 10 us without work, each pass first yields the CPU
    /// to any other task that wants it. True when it found work.
    func poll(for nanos: Int, from start: Int) -> Bool {
        let loop = self.loop
        let end = start &+ nanos
        var now = start, found = false
        var switchesBefore: Int?
        while now < end && !found {
            found = pollQueues()
            if !found && (inputFlowing || now &- lastLoopPass >= Self.loopPassInterval) {
                let before = loop.callbacksRun
                lastLoopPass = now
                // Spun 10 us for nothing: any other task that wants this
                // CPU runs now (the traffic source a receive queue waits
                // for may be one); with none, this returns at once.
                if switchesBefore != nil { sched_yield() }
                guard loop.runOnce(block: false) else { break }
                found = loop.callbacksRun != before
                inputFlowing = found
            }
            now = Clock.nanos()
            if switchesBefore == nil && now &- start >= Self.preemptionWatchAfter {
                switchesBefore = ThreadUsage.involuntarySwitches()
            }
        }
        if let switchesBefore {
            pollWindow.polled(preempted: ThreadUsage.involuntarySwitches() != switchesBefore, now: now)
        }
        return found
    }
    /// The last pass of the loop ran callbacks (a tap with frames, an
    /// io_uring with completions): the next pass comes at once instead of
    /// after `loopPassInterval` of spinning, since more is likely waiting.
    var inputFlowing = false

    /// Serves `queue` as its kick asks. Register writes the vCPU sent
    /// before the kick (or before the request a poll found) are already in
    /// the sync socket: they are served first, in order. With the interrupt
    /// page, the VM process counts the writes it sent: most find none
    /// waiting and skip the read.
    func serveQueue(_ queue: Int) {
        if interrupts?.writesPending ?? true { syncReadable() }
        registers.notify(queue: queue)
    }

    /// Serves every kickable queue whose available index moved since the
    /// last look, as a kick would (register writes first). A queue where
    /// the driver parks buffers (vionet receive) counts only while the
    /// device wants them (`VirtioDevice.wantsBuffers`).
    func pollQueues() -> Bool {
        guard !paused, let t = polledTransport, t.isDriverReady else { return false }
        var found = false
        for index in polledQueues where index < t.queues.count {
            let q = t.queues[index]
            guard q.isEnabled, device.wantsBuffers(queue: index), let pending = try? q.pendingCount() else { continue }
            let avail = q.lastAvailIndex &+ pending
            guard polledAvail[index] != avail else { continue }
            serveQueue(index)
            polledAvail[index] = q.lastAvailIndex &+ ((try? q.pendingCount()) ?? 0)
            found = true
        }
        return found
    }

    // MARK: steps of run()

    /// Guest memory: the VM's memfd, mapped whole; the memfd itself is
    /// closed once mapped, so the mapping is all that remains of it.
    private func mapGuestMemory() -> MappedGuestMemory {
        guard let fd = setup.descriptors.first(.guestMemory) else { fail("no guest memory descriptor") }
        do {
            let size = try SharedMemory.size(of: fd)
            let base = try SharedMemory.map(fd: fd, size: size)
            let memory = try MappedGuestMemory(base: base, mappingSize: UInt64(size), regions: setup.regions)
            FD.close(fd)
            return memory
        } catch {
            fail("cannot map guest memory: \(error)")
        }
    }

    /// The device from its table entry, and the transport its presentation names.
    private func buildDevice(memory: MappedGuestMemory) {
        virtioLogHook = { Log.warning($0) }
        virtioErrnoDescription = { errnoDescription($0) }
        do {
            device = try model.make(DeviceConstruction(name: setup.name, parameters: setup.parameters,
                                                       backends: setup.descriptors.backends))
        } catch {
            fail("\(error)")
        }
        // Interrupts go to KVM on irqfds; nothing is told of INTx levels.
        registers = model.presentation.makeTransport(device: device, memory: memory, interruptSink: nil, bus: setup.bus)
        do {
            guard let irqs = try DeviceInterrupts.from(setup.descriptors) else {
                fail("no interrupt page and irqfds among the descriptors")
            }
            interrupts = irqs
            (registers as? TransportCore)?.sharedInterrupts = irqs
        } catch {
            fail("cannot map the interrupt page: \(error)")
        }
        if let commands = device as? HostCommandDevice {
            commands.onAcknowledge = { [unowned self] cmd in
                self.async.send(type: MessageType.vmmciAck.rawValue, data: VMMCIMessage(command: cmd).encoded())
            }
        }
    }

    /// Nothing but our descriptors, no file system, no new privileges, no
    /// root, and the table's system calls for this kind.
    private func enterSandbox() {
        FD.closeAll(from: 3, except: setup.descriptors.all.filter {
            $0 != setup.descriptors.first(.guestMemory) && $0 != setup.descriptors.first(.deviceState)
        } + ((device as? DescriptorOwningDevice)?.ownDescriptors ?? []))
        _ = loop   // its epoll fd, before the sandbox forbids creating one
        guard let user = Users.lookup(Users.daemonUser) else { fail("user \(Users.daemonUser) does not exist") }
        restrict(setup.name, user: user, denyFileSystem: true, policy: SandboxPolicies.device(model))
        sandboxSelfTest(role: setup.name)
    }

    private func listen() {
        guard let asyncFD = setup.descriptors.first(.async) else { fail("no async channel") }
        async = ImsgChannel(fd: asyncFD, name: "\(setup.name): async", loop: loop,
                            onMessage: { [unowned self] _, m in self.asyncMessage(m) },
                            onClose: { [unowned self] _, _ in self.loop.exit() })
        async.allowedTypes = MessagePolicy.rawTypes(.vmToDeviceAsync)
        try? FD.setNonBlocking(Self.setupDescriptor)
        loop.onReadable(Self.setupDescriptor) { [unowned self] in self.syncReadable() }
        // Kicks straight from KVM (serveQueue keeps register writes sent
        // before the kick ahead of it).
        for (queue, fd) in setup.descriptors.queueNotifies {
            loop.onReadable(fd) { [unowned self] in
                guard EventFD.drain(fd) else { return }
                self.serveQueue(queue)
            }
        }
        watchForMissedKicks(queues: setup.descriptors.queueNotifies.map(\.0))
        if let irqs = interrupts {
            irqs.startCountingWrites()
            loop.onReadable(irqs.resampleFD) { irqs.resampled() }
        }
        if let input = device as? BackendInputDevice {
            // Input waits in the kernel while the guest has no buffers: the
            // backend is watched only while there is somewhere to put it.
            input.onInputWanted = { [unowned self] in self.watchInput() }
            watchInput()
        }
        loop.onSignal(SIGTERM) { [unowned self] in self.loop.exit() }
    }

    var missedKicks = 0

    /// Liveness backstop for queue notifications: every 100 ms, a queue
    /// whose available ring holds requests the device has not taken since
    /// the previous look is served as if kicked, and the event is logged.
    /// Whatever loses a notification (a kick or eventfd wake-up that never
    /// arrives, a driver that forgets to kick), the guest then waits at
    /// most ~200 ms instead of forever; the log line says it happened.
    /// Queues where the driver parks buffers for the device to fill later
    /// (vionet receive, vioscsi events) are not watched.
    func watchForMissedKicks(queues watched: [Int]) {
        guard !watched.isEmpty, let t = stateKeeper?.transport ?? registers as? TransportCore else { return }
        let parked: Set<Int> = device is VioNet ? [VioNet.receiveQueue]
            : device is VioSCSI ? [VioSCSI.eventQueue] : []
        let queues = watched.filter { !parked.contains($0) && $0 >= 0 && $0 < t.queues.count }
        var lastTaken = t.queues.map(\.lastAvailIndex)
        var suspect = [Bool](repeating: false, count: t.queues.count)
        loop.every(seconds: 0.1) { [unowned self] in
            guard !self.paused else { return }    // a paused VM's requests wait for it
            for i in queues {
                let q = t.queues[i]
                defer { lastTaken[i] = q.lastAvailIndex }
                guard q.isEnabled, t.isDriverReady, q.lastAvailIndex == lastTaken[i],
                      let pending = try? q.pendingCount(), pending > 0 else {
                    suspect[i] = false
                    continue
                }
                // Two looks in a row (100-200 ms): a wake-up merely late
                // because this process was not running is not counted.
                guard suspect[i] else { suspect[i] = true; continue }
                suspect[i] = false
                self.missedKicks += 1
                if self.missedKicks <= 5 || self.missedKicks % 1000 == 0 {
                    Log.warning("\(self.setup.name): queue \(i): \(pending) request(s) waited over 100 ms without a notification; serving them (\(self.missedKicks) so far)")
                }
                self.registers.notify(queue: i)
            }
        }
    }

    // MARK: backend input

    func watchInput() {
        guard inputWatch == nil, !paused, let input = device as? BackendInputDevice else { return }
        inputWatch = loop.onReadable(input.inputDescriptor) { [unowned self] in
            if self.paused || !input.backendReadable() { self.unwatchInput() }
        }
    }

    func unwatchInput() {
        if let h = inputWatch { loop.remove(h) }
        inputWatch = nil
    }

    // MARK: channels

    func send(sync msg: ViodevMsg) {
        do {
            try sync.sendBlocking(Imsg(type: MessageType.devopMsg.rawValue, data: msg.encoded()))
        } catch {
            Log.warning("\(setup.name): sync channel: \(error)")
            loop.exit()
        }
    }

    func syncReadable() {
        do {
            let r = try sync.read()
            while let m = try sync.get() {
                if let f = m.fd { FD.close(f) }
                guard MessageType(rawValue: m.type) == .devopMsg, let msg = ViodevMsg(bytes: m.data) else {
                    Log.warning("\(setup.name): ignoring malformed message type \(m.type) size \(m.data.count)")
                    continue
                }
                switch msg.kind {
                case .ioRead, .ioWrite:
                    if msg.kind == .ioWrite { interrupts?.writesServed &+= 1 }
                    if let reply = registers.handle(msg) { send(sync: reply) }
                    if Log.verbosity > 2 {
                        Log.debug("\(setup.name): \(msg.kind) reg 0x\(String(msg.reg, radix: 16)) data 0x\(String(msg.data, radix: 16)) isr \(registers.isInterruptAsserted)")
                    }
                    // After a write (a status change) the line may have
                    // moved: async carries the new level.
                case .shutdown:
                    Log.debug("\(setup.name): shutdown requested")
                    loop.exit()
                default:
                    break
                }
            }
            if r == .endOfFile { loop.exit() }
        } catch {
            Log.warning("\(setup.name): sync channel: \(error)")
            loop.exit()
        }
    }

    func asyncMessage(_ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        switch MessageType(rawValue: m.type) {
        case .vmmPauseVM:
            paused = true
            unwatchInput()
        case .vmmUnpauseVM:
            paused = false
            watchInput()
        case .vmmciCommand:
            if let msg = try? VMMCIMessage(decoding: m.data), let commands = device as? HostCommandDevice {
                commands.send(command: msg.command)
            }
        default:
            break
        }
    }
}
