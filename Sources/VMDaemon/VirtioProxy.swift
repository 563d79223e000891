import Glibc
import VMDSystem
import VMDControl
import Imsg
import VMM
import Virtio
import VirtioDevices

/// The VM side of one device process: a PCI function whose BAR accesses
/// become viodev_msg IO_READ/IO_WRITE on the device's sync channel (vCPU
/// threads wait for a read's reply, at most `registerTimeout` and only until
/// the VM stops). Interrupts bypass it: the device writes KVM irqfds, and
/// the ISR and the MSI-X table are answered here from shared state.
final class VirtioProxy: PCIFunction {
    /// How long a device process may take to answer one register access
    /// before it is treated as failed. The vCPU that made the access waits
    /// for the answer, so this bounds how long one stuck device process (a
    /// pread on a dead NFS mount, a SIGSTOP) can hold a vCPU. A healthy
    /// device answers in microseconds, and even one busy with a large
    /// request on a slow disk answers well within it; 10 s is long enough
    /// that a loaded host or a disk hiccup does not kill a working VM, and
    /// short of the 20 s after which a Linux guest reports a soft lockup.
    static let registerTimeout: Double = 10

    let name: String
    let configHeader: PCIConfigHeader
    var pid: pid_t
    var sync: ImsgBuffer
    let asyncFD: Int32
    /// The ISR register's offset in the BAR: reading it clears the device's
    /// interrupt, so the vCPU lowers the line at once (as vmd does).
    let isrOffset: UInt32
    /// PCI, or a virtio-mmio slot (whose InterruptStatus/InterruptACK the
    /// VM process answers from the interrupt page, as it does the PCI ISR).
    let bus: VirtioBus
    /// Readable once the VM is stopping: every wait on the sync channel
    /// watches it, so a vCPU blocked on this device is released at once.
    let stopFD: Int32
    var interrupt: InterruptLine?
    /// The device's irqfds, shared ISR and MSI-X table (IrqRouting.swift).
    var interrupts: VMDeviceInterrupts?
    var async: ImsgChannel?
    let lock = Mutex()
    var broken = false
    /// Restart state (DeviceRestart.swift): set by the event loop while a
    /// dead device's successor starts, read by vCPU threads.
    let restartLock = Mutex()
    var restarting = false
    var restartGeneration = 0
    var readTag: UInt8 = 0
    private let stuckLock = Mutex()
    private var stuck = false
    var onFailure: ((String) -> Void)?
    /// The device did not answer within `registerTimeout` (on a vCPU
    /// thread, once): the VM process treats the device as failed.
    var onUnresponsive: ((String) -> Void)?
    /// One eventfd per queue, signalled by KVM itself when the guest writes
    /// the queue's index to the notify register: kicks reach the device
    /// process without an exit to this process.
    var notifyFDs: [Int32] = []
    /// Registers (or removes) a port eventfd with KVM.
    var registerNotify: ((Int32, UInt16, UInt64, Bool) throws -> Void)?
    private var notifyPort: UInt16?

    init(name: String, presentation: PCIPresentation, pid: pid_t, syncFD: Int32, asyncFD: Int32, stopFD: Int32,
         msixVectors: Int = 0, bus: VirtioBus = .pci) {
        self.bus = bus
        self.name = name
        self.configHeader = Self.configHeader(for: presentation, msixVectors: msixVectors)
        self.pid = pid
        self.sync = ImsgBuffer(fd: syncFD)
        self.asyncFD = asyncFD
        // virtio-mmio has no register whose read clears the interrupt (the
        // driver writes InterruptACK; the device lowers the line with a KICK).
        self.isrOffset = bus == .mmio ? UInt32.max : UInt32(presentation.isrOffset)
        self.stopFD = stopFD
        // Every wait is a poll with a deadline; a socket call never blocks.
        try? FD.setNonBlocking(syncFD)
    }

    /// True once the device failed to answer in time or a vCPU was waiting
    /// for it when the VM stopped: it gets no grace period to exit.
    var isStuck: Bool { stuckLock.locked { stuck } }

    /// The function's configuration space header: identity, one I/O BAR,
    /// and for virtio 1.x the vendor capabilities describing that BAR; with
    /// MSI-X vectors, a memory BAR 1 holding the MSI-X table and PBA.
    static func configHeader(for presentation: PCIPresentation, msixVectors: Int = 0) -> PCIConfigHeader {
        let id = presentation.identity
        var capabilities: [[UInt8]]
        var bars = [PCIConfigHeader.Bar(kind: .io, size: presentation.barSize)]
        switch presentation {
        case .modern: capabilities = VirtioPCITransport.capabilities()
        case .legacy: capabilities = []
        }
        if msixVectors > 0 {
            bars.append(PCIConfigHeader.Bar(kind: .memory32, size: MSIXLayout.barSize))
            capabilities.append(MSIXLayout.capability(vectors: msixVectors, bar: 1))
        }
        return PCIConfigHeader(vendorID: id.vendorID, deviceID: id.deviceID, revision: id.revision,
                               classCode: id.classCode, subclass: id.subclass, progIF: id.programmingInterface,
                               subsystemVendorID: id.subsystemVendorID, subsystemID: id.subsystemID,
                               bars: bars, capabilities: capabilities)
    }

    /// Waits (bounded) until the device reports READY on the sync channel.
    func waitReady() throws {
        let deadline = Clock.now() + Self.registerTimeout
        switch receive(until: deadline) {
        case .message(let m):
            guard let msg = ViodevMsg(bytes: m.data), msg.kind == .ready else {
                throw SystemError("\(name): did not report ready", code: EPROTO)
            }
        case .timedOut:
            throw SystemError("\(name): not ready after \(Int(Self.registerTimeout)) s", code: ETIMEDOUT)
        case .stopped:
            throw SystemError("\(name): VM stopping", code: ECANCELED)
        case .failed(let e):
            throw e
        }
    }

    func setup(_ s: DeviceSetup) throws {
        switch send(Imsg(type: MessageType.devopVMInfo.rawValue, data: s.encoded()),
                    until: Clock.now() + Self.registerTimeout) {
        case .message: return
        case .timedOut: throw SystemError("\(name): set-up not taken in \(Int(Self.registerTimeout)) s", code: ETIMEDOUT)
        case .stopped: throw SystemError("\(name): VM stopping", code: ECANCELED)
        case .failed(let e): throw e
        }
    }

    // MARK: bounded sync-channel I/O (lock held, or before the vCPUs run)

    enum Outcome {
        case message(Imsg)   // for `send`: an empty message, the bytes are out
        case timedOut
        case stopped
        case failed(Error)
    }

    /// Polls the sync socket for `events` and the stop fd until `deadline`.
    func wait(_ events: Int16, until deadline: Double) -> Outcome? {
        while true {
            let left = deadline - Clock.now()
            if left <= 0 { return .timedOut }
            // A device that died: the access is made again to its successor.
            if isRestarting { return .failed(DeviceRestarting()) }
            var fds = [pollfd(fd: sync.fd, events: events, revents: 0),
                       pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
            // A kick signal (EINTR) only makes it look again.
            let n = poll(&fds, 2, Int32(min(left * 1000 + 1, 10)))
            if fds[1].revents != 0 { return .stopped }
            if n > 0 && fds[0].revents != 0 { return nil }
        }
    }

    func send(_ m: Imsg, until deadline: Double) -> Outcome {
        do {
            try sync.compose(m)
            while try !sync.flush() {
                if let o = wait(Int16(POLLOUT), until: deadline) { return o }
            }
            return .message(Imsg(type: 0))
        } catch {
            return .failed(error)
        }
    }

    func receive(until deadline: Double) -> Outcome {
        do {
            while true {
                if let m = try sync.get() { return .message(m) }
                switch try sync.read() {
                case .bytes: continue
                case .endOfFile: throw ImsgError.closed
                case .wouldBlock:
                    if let o = wait(Int16(POLLIN), until: deadline) { return o }
                }
            }
        } catch {
            return .failed(error)
        }
    }

    /// After an access that did not complete (lock held): no later access
    /// goes to the device; the VM process decides what happens to the VM.
    private func give(up outcome: Outcome, doing what: String) {
        if case .failed(let e) = outcome, e is DeviceRestarting { return }
        broken = true
        switch outcome {
        case .timedOut:
            stuckLock.locked { stuck = true }
            let t = Int(Self.registerTimeout)
            onUnresponsive?(what == "read" ? "\(name): no reply to register read in \(t) s; treating as failed"
                                           : "\(name): register write not taken in \(t) s; treating as failed")
        case .stopped:
            stuckLock.locked { stuck = true }   // it kept a vCPU waiting until the VM stopped
        case .failed(let e):
            onFailure?("\(name): sync channel: \(e)")
        case .message:
            break
        }
    }

    // MARK: PCIFunction (vCPU threads)

    func barRead(bar: Int, offset: UInt32, size: Int) -> UInt32 {
        if bar == 1, let msix = interrupts?.msix { return msix.read(offset: offset, size: size) }
        // The ISR is read-to-clear in shared memory: no round trip.
        if bar == 0, offset == isrOffset, size == 1, let irqs = interrupts { return UInt32(irqs.readISR()) }
        if bus == .mmio, bar == 0, offset == UInt32(VirtioMMIOLayout.interruptStatus), size == 4, let irqs = interrupts {
            return UInt32(irqs.isrBits)
        }
        guard bar == 0, offset <= UInt32(UInt16.max) else { return 0xffff_ffff }
        var reply: ViodevMsg?
        for _ in 0..<Self.accessAttempts {
            let generation = awaitRestart()
            reply = readOnce(offset: offset, size: size)
            if reply != nil || !restarted(since: generation) { break }
        }
        // A failed device reads as all-ones, like an absent one.
        guard let reply else { return 0xffff_ffff }
        let mask: UInt32 = size >= 4 ? 0xffff_ffff : (1 << (UInt32(size) * 8)) - 1
        return reply.data & mask
    }

    /// One register read; the reply must carry the request's tag (in the
    /// vcpu field, which the device echoes), so an answer a dead device's
    /// predecessor left in the channel is never taken for this one's.
    private func readOnce(offset: UInt32, size: Int) -> ViodevMsg? {
        lock.locked {
            guard !broken else { return nil }
            readTag &+= 1
            let tag = readTag
            let req = ViodevMsg(kind: .ioRead, reg: UInt16(offset), ioSize: UInt8(size), vcpu: tag)
            let deadline = Clock.now() + Self.registerTimeout
            var outcome = send(Imsg(type: MessageType.devopMsg.rawValue, data: req.encoded()), until: deadline)
            if case .message = outcome {
                while true {
                    outcome = receive(until: deadline)
                    guard case .message(let m) = outcome else { break }
                    if let f = m.fd { FD.close(f) }
                    guard MessagePolicy.permits(m.type, on: .deviceToVMSync), let r = ViodevMsg(bytes: m.data) else { continue }
                    if r.kind == .ioRead && r.dataValid && r.vcpu == tag { return r }
                }
            }
            give(up: outcome, doing: "read")
            return nil
        }
    }

    func barWrite(bar: Int, offset: UInt32, size: Int, value: UInt32) {
        if bar == 1, let msix = interrupts?.msix { return msix.write(offset: offset, size: size, value: value) }
        guard bar == 0, offset <= UInt32(UInt16.max) else { return }
        if bus == .mmio, offset == UInt32(VirtioMMIOLayout.interruptACK), size == 4, let irqs = interrupts {
            return irqs.acknowledge(UInt8(truncatingIfNeeded: value))
        }
        let req = ViodevMsg(kind: .ioWrite, reg: UInt16(offset), ioSize: UInt8(size), data: value)
        // A write sent while a device restarts is taken by its successor
        // (DeviceRestart.swift carries unread writes over).
        _ = awaitRestart()
        lock.locked {
            guard !broken else { return }
            // Writes are not answered; this waits only while the socket is
            // full, i.e. the device stopped taking messages.
            interrupts?.countWrite()
            let outcome = send(Imsg(type: MessageType.devopMsg.rawValue, data: req.encoded()),
                               until: Clock.now() + Self.registerTimeout)
            if case .message = outcome { return }
            give(up: outcome, doing: "write")
        }
    }

    /// The guest (or the VMM) placed BAR 0: the notify eventfds follow it.
    /// A notify write that misses them still arrives as an IO_WRITE.
    func barMoved(bar: Int, base: UInt64?) {
        guard bar == 0, !notifyFDs.isEmpty, let register = registerNotify else { return }
        if let old = notifyPort {
            for (i, fd) in notifyFDs.enumerated() { try? register(fd, old, UInt64(i), false) }
            notifyPort = nil
        }
        guard let base, base + UInt64(VirtioPCILayout.notify) + 2 <= 0x10000 else { return }
        let port = UInt16(base) + VirtioPCILayout.notify
        do {
            for (i, fd) in notifyFDs.enumerated() { try register(fd, port, UInt64(i), true) }
            notifyPort = port
        } catch {
            for (i, fd) in notifyFDs.enumerated() { try? register(fd, port, UInt64(i), false) }
            onFailure?("\(name): queue notify eventfds: \(error); notifies go through the VM process")
        }
    }

    func msixControlWritten(_ control: UInt16) {
        interrupts?.msix?.controlWritten(control)
    }

    // MARK: event loop (main thread)

    func asyncMessage(_ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        // Interrupts no longer come this way (KVM irqfds, IrqRouting.swift):
        // a KICK from a device is ignored, like any other viodev_msg here.
    }

    /// Asks the device process to exit, without waiting: a device that
    /// does not take the message is killed by the VM process.
    func shutdown() {
        lock.locked {
            if !broken {
                try? sync.compose(Imsg(type: MessageType.devopMsg.rawValue,
                                       data: ViodevMsg(kind: .shutdown).encoded()))
                _ = try? sync.flush()
            }
            broken = true
        }
    }
}
