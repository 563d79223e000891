import Glibc
import VMDSystem
import VMDControl
import Imsg
import VMM
import Virtio
import VirtioDevices

/// `vmd: vm NAME`: one guest. Creates the KVM VM as root (memory, vCPUs,
/// legacy devices, console pty, kernel), starts one process per virtio
/// device, drops to `_vmd` under seccomp + Landlock, then runs the vCPUs
/// and an event loop for its channels: vmm above, the devices' async
/// channels, the console pty, signals.
final class VMProcess {
    static let vmmFD: Int32 = 3
    static let firstDescriptor: Int32 = 4

    let loop = EventLoop()
    let spec: LaunchSpec
    let options: DaemonOptions
    var vm: VirtualMachine!
    var vmm: ImsgChannel!
    var devices: [VirtioProxy] = []
    var devicePIDs: [pid_t: String] = [:]
    var vmmci: VirtioProxy?
    var exitPipe: (read: Int32, write: Int32) = (-1, -1)
    /// Signalled when the VM stops: releases vCPUs waiting on a device.
    var stopFD: Int32 = -1
    var finishing = false
    var gracefulTimer: EventHandle?
    /// Why a device was given up on (set on a vCPU thread).
    let failureLock = Mutex()
    var deviceFailure: String?
    /// What restarts a device that dies (DeviceRestart.swift).
    var slots: [DeviceSlot] = []
    var spawner: SpawnerClient?

    /// How long the vCPU threads get to leave once the VM stops: they are
    /// kicked out of KVM_RUN and released from device waits at once, so
    /// this is only a bound against the unforeseen (the process exits
    /// anyway, which ends them).
    static let vcpuStopTimeout: Double = 1
    /// How long device processes get to exit after SHUTDOWN before they are
    /// killed: the shorter one on a forced stop or a failure; a device that
    /// kept a vCPU waiting gets none.
    static let deviceExitGrace: Double = 2
    static let forcedDeviceExitGrace: Double = 0.5
    /// Graceful stop, as vmd: the guest has 3 s to acknowledge the vmmci
    /// shutdown request and then 120 s to power off; after either the VM
    /// is powered off (a forced stop).
    static let shutdownAckTimeout: Double = 3
    static let guestShutdownTimeout: Double = 120
    /// The longest the forced part of a stop takes in this process (vCPUs,
    /// device grace, the reap after SIGKILL); vmm allows a little more.
    static let forcedStopBound: Double = vcpuStopTimeout + forcedDeviceExitGrace + 1

    static func main(_ options: DaemonOptions) -> Never {
        let (buffer, spec) = readStartMessage(fd: vmmFD, expecting: .vmmStartVM,
                                              what: "VM description from vmm", decode: LaunchSpec.init(decoding:))
        nameThisProcess("vm \(spec.name)")
        VMProcess(spec: spec, options: options, buffer: buffer).run()
    }

    init(spec: LaunchSpec, options: DaemonOptions, buffer: ImsgBuffer) {
        self.spec = spec
        self.options = options
        vmm = ImsgChannel(buffer: buffer, name: "vm \(spec.name): vmm", loop: loop,
                          onMessage: { [unowned self] _, m in self.fromVMM(m) },
                          onClose: { [unowned self] _, _ in self.finish(.stopped, "vmm went away") })
        vmm.allowedTypes = MessagePolicy.rawTypes(.vmmToVM)
    }

    /// Reports why the VM ends and exits; the vmm reaps us.
    func report(_ reason: VMStopReason, _ detail: String) {
        try? vmm.buffer.compose(type: MessageType.vmmVMExited.rawValue,
                                data: VMExitReport(reason: reason, detail: detail).encoded())
        try? FD.setNonBlocking(Self.vmmFD, false)
        _ = try? vmm.buffer.flush()
    }

    func die(_ detail: String) -> Never {
        Log.error(detail)
        report(.failed, detail)
        for pid in devicePIDs.keys { Spawn.signal(pid, SIGKILL) }
        exit(1)
    }

    /// The descriptors from the parent, by the indices the launch spec gives.
    func descriptor(_ index: Int) -> Int32 { Self.firstDescriptor + Int32(index) }

    func run() -> Never {
        createMachine()
        startDevices()
        enterSandbox()
        startGuest()
        loop.run()
        finish(.stopped, "")
    }

    // MARK: steps of run()

    /// The KVM VM as root: memory, vCPUs, legacy devices, console, kernel.
    private func createMachine() {
        let kernelFD = descriptor(spec.kernelDescriptor)
        let initrdFD = spec.initrdDescriptor.map(descriptor)
        do {
            var machine = VMSpec(
                name: spec.name, memoryBytes: spec.memoryBytes, vcpus: Int(spec.cpus),
                kernelPath: "/proc/self/fd/\(kernelFD)", commandLine: spec.cmdline,
                initrdPath: initrdFD.map { "/proc/self/fd/\($0)" },
                kernelName: spec.kernelName.isEmpty ? nil : spec.kernelName,
                initrdName: spec.initrdName.isEmpty ? nil : spec.initrdName)
            machine.bootProtocol = spec.bootProtocol
            if spec.virtioBus == .mmio { machine.virtioMMIOSlots = spec.devices.count }
            vm = try VirtualMachine(spec: machine)
        } catch {
            die("\(error)")
        }
        vm.logger = { Log.info($0) }
        if Log.verbosity >= 2 { logConsoleLines() }
        FD.close(kernelFD)
        if let initrdFD { FD.close(initrdFD) }
        // The owner may attach to the console (`vmctl console`) directly.
        if spec.ownerUID != 0 {
            do {
                try FD.changeOwner(vm.consoleSlaveFD, uid: uid_t(spec.ownerUID))
            } catch {
                Log.warning("cannot hand the console to uid \(spec.ownerUID): \(error)")
            }
        }
    }

    /// -vv: the guest's console lines in the log too (vCPU threads).
    private func logConsoleLines() {
        let lock = Mutex()
        var line: [UInt8] = []
        vm.setConsoleObserver { bytes in
            lock.locked {
                for b in bytes {
                    if b == 10 {
                        Log.debug("console: " + String(decoding: line, as: UTF8.self))
                        line.removeAll(keepingCapacity: true)
                    } else if b != 13 && line.count < 1024 {
                        line.append(b)
                    }
                }
            }
        }
    }

    /// One process per device of the launch spec, in PCI slot order; each
    /// gets its backends and the parent's copies are closed. The exit pipe
    /// and the stop eventfd exist first: a device that stops answering
    /// fails the VM through the one, a stop releases vCPUs through the other.
    private func startDevices() {
        do {
            exitPipe = try FD.pipe()
            try FD.setNonBlocking(exitPipe.read)
            stopFD = try EventFD.create()
        } catch {
            die("\(error)")
        }
        let regions = vm.memoryRegions.map {
            GuestMemoryRegion(guestPhysicalAddress: $0.guestPhysical, size: $0.size, offsetInMapping: $0.fdOffset)
        }
        do {
            for (i, d) in spec.devices.enumerated() {
                var s = DeviceSetup(kind: d.kind, name: spec.deviceName(i), vmName: spec.name, regions: regions)
                s.parameters = d.parameters
                s.bus = spec.virtioBus
                let proxy = try startDevice(s, backends: d.descriptors.map(descriptor))
                if d.kind.model.takesHostCommands { vmmci = proxy }
            }
            for d in devices { try d.waitReady() }
            try chooseBootDevice()
        } catch {
            die("cannot start devices: \(error)")
        }
        // The backends stay open here: a device started again gets them.
        startSpawner()
    }

    /// BIOS boot: the configured boot device goes first in SeaBIOS's order.
    private func chooseBootDevice() throws {
        guard vm.isFirmwareBoot, let kind = ["disk": DeviceKind.blk, "cdrom": DeviceKind.scsi][spec.bootDevice] else { return }
        guard let i = spec.devices.firstIndex(where: { $0.kind == kind }), i < devices.count else {
            throw VMMError("boot device \(spec.bootDevice): no such device")
        }
        try vm.bootFirst(devices[i], scsi: kind == .scsi)
    }

    /// The privileged part is over.
    private func enterSandbox() {
        guard let user = Users.lookup(Users.daemonUser) else { die("user \(Users.daemonUser) does not exist") }
        restrict("vm", user: user, denyFileSystem: true, policy: SandboxPolicies.vm)
        sandboxSelfTest(role: "vm")
    }

    /// Signals, the exit pipe, the console; then the vCPUs.
    private func startGuest() {
        loop.onSignal(SIGCHLD) { [unowned self] in self.reapDevices() }
        reapDevices()   // a device that died before the handler existed
        loop.onSignal(SIGTERM) { [unowned self] in self.stop(graceful: true) }
        loop.onReadable(exitPipe.read) { [unowned self] in self.guestExited() }
        loop.onReadable(vm.consoleMasterFD) { [unowned self] in self.consoleInput() }

        let writeEnd = exitPipe.write
        do {
            try vm.start { reason in
                // vCPU thread: hand over to the event loop.
                var code: UInt8
                switch reason {
                case .powerOff: code = 1
                case .reboot: code = 2
                case .failed(let why):
                    code = 3
                    Log.error("guest failed: \(why)")
                }
                FD.writeByte(writeEnd, code)
            }
        } catch {
            die("cannot start vCPUs: \(error)")
        }
        vmm.send(type: MessageType.vmmVMStarted.rawValue,
                 data: VMStartedReport(pid: Spawn.currentPID, tty: vm.consoleName).encoded())
        Log.info("started: \(spec.cpus) vCPU(s), \(spec.memoryBytes >> 20) MiB, console \(vm.consoleName), \(devices.count) device process(es)")
    }

    /// Spawns one device process with its descriptors, named by role, and
    /// puts its PCI function on the bus.
    @discardableResult
    func startDevice(_ s: DeviceSetup, backends: [Int32]) throws -> VirtioProxy {
        var s = s
        let model = s.kind.model
        let (syncMine, syncTheirs) = try FD.socketPair()
        let (asyncMine, asyncTheirs) = try FD.socketPair()
        // Both ends stay open here: a restarted device gets the same ones.
        // One queue per vCPU for a multiqueue vioblk: sizes from the parameters.
        let queueSizes = model.queueSizes(for: s.parameters)
        let (stateFD, stateRegion) = try makeStateRegion(queueSizes: queueSizes, name: s.name)
        // One kick eventfd per queue, signalled by KVM itself.
        let notifyFDs = try queueSizes.map { _ in try EventFD.create() }
        var fds: [Int32] = []
        func pass(_ fd: Int32, as role: DeviceDescriptorRole) {
            fds.append(fd)
            s.descriptors.append(role)
        }
        pass(syncTheirs, as: .sync)
        pass(asyncTheirs, as: .async)
        pass(vm.memoryFD, as: .guestMemory)
        for (role, fd) in zip(model.backends, backends) { pass(fd, as: .backend(role)) }
        // A disk's backing chain follows its image, read-only.
        for fd in backends.dropFirst(model.backends.count) { pass(fd, as: .backend(.baseImage)) }
        for (queue, fd) in notifyFDs.enumerated() { pass(fd, as: .queueNotify(queue)) }
        // Interrupts straight to KVM (IrqRouting.swift): MSI-X on the modern
        // transport, a config vector and one per queue.
        let msixVectors: Int
        if case .modern = model.presentation, s.bus == .pci { msixVectors = queueSizes.count + 1 } else { msixVectors = 0 }
        let irqs = try VMDeviceInterrupts(vectors: msixVectors)
        for (fd, role) in irqs.descriptors { pass(fd, as: role) }
        pass(stateFD, as: .deviceState)

        var args = ["vmd", "-X", s.name]
        if options.foreground { args.append("-d") }
        if options.verbosity > 0 { args.append("-" + String(repeating: "v", count: options.verbosity)) }
        let pid = try Spawn.spawnSelf(arguments: args, descriptors: fds)
        devicePIDs[pid] = s.name
        let proxy = VirtioProxy(name: s.name, presentation: model.presentation, pid: pid,
                                syncFD: syncMine, asyncFD: asyncMine, stopFD: stopFD, msixVectors: msixVectors, bus: s.bus)
        proxy.interrupts = irqs
        proxy.onFailure = { Log.warning($0) }
        // vmd stops the VM when a device process dies; one that stopped
        // answering is failed the same way (vCPU thread: the loop finishes).
        let writeEnd = exitPipe.write
        proxy.onUnresponsive = { [unowned self] why in
            Log.error(why)
            let first: Bool = self.failureLock.locked {
                guard self.deviceFailure == nil else { return false }
                self.deviceFailure = why
                return true
            }
            if first { FD.writeByte(writeEnd, 4) }
        }
        proxy.notifyFDs = notifyFDs
        proxy.registerNotify = { [unowned vm = vm!] fd, port, queue, assign in
            try vm.portEventFD(fd, port: port, length: 2, value: queue, assign: assign)
        }
        try proxy.setup(s)
        let line: InterruptLine
        if s.bus == .mmio {
            line = try proxy.attachMMIO(to: vm)
        } else {
            line = try vm.addPCIFunction(proxy)
            proxy.interrupt = line
        }
        try irqs.connect(vm: vm, line: line, loop: loop, name: s.name)
        proxy.async = ImsgChannel(fd: asyncMine, name: "\(s.name): async", loop: loop,
                                  onMessage: { [unowned self, unowned proxy] _, m in
                                      if MessageType(rawValue: m.type) == .vmmciAck { self.vmmciAck(m) }
                                      else { proxy.asyncMessage(m) }
                                  },
                                  onClose: { _, _ in })
        proxy.async?.allowedTypes = MessagePolicy.rawTypes(.deviceToVMAsync)
        devices.append(proxy)
        slots.append(DeviceSlot(setup: s, descriptors: fds, arguments: args, proxy: proxy,
                                syncTheirs: syncTheirs, asyncTheirs: asyncTheirs, region: stateRegion))
        return proxy
    }

    // MARK: events

    func consoleInput() {
        let space = max(1, vm.consoleReceiveSpace)
        if let bytes = try? FD.read(vm.consoleMasterFD, count: min(space, 256)), !bytes.isEmpty {
            vm.consoleReceive(bytes)
        }
    }

    func guestExited() {
        guard let code = FD.readByte(exitPipe.read) else { return }
        switch code {
        case 1: finish(.powerOff, "guest powered off")
        case 2: finish(.reboot, "guest reset")
        case 4: finish(.failed, failureLock.locked { deviceFailure } ?? "a device stopped answering")
        default: finish(.failed, "guest failed")
        }
    }

    func reapDevices() {
        while let (pid, status) = Spawn.reapAny() { childExited(pid, status) }
    }

    func fromVMM(_ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        switch MessageType(rawValue: m.type) {
        case .vmmStopVM:
            let command = (try? VMStopCommand(decoding: m.data)) ?? VMStopCommand(force: true)
            stop(graceful: !command.force)
        case .vmmPauseVM:
            vm.pause()
            for d in devices { d.async?.send(type: MessageType.vmmPauseVM.rawValue) }
            vmm.send(type: MessageType.vmmPaused.rawValue)
        case .vmmUnpauseVM:
            for d in devices { d.async?.send(type: MessageType.vmmUnpauseVM.rawValue) }
            vm.unpause()
            vmm.send(type: MessageType.vmmUnpaused.rawValue)
        case .vmmConsoleReplay:
            let replay = vm.consoleReplay()
            vmm.send(type: MessageType.vmmConsoleReplay.rawValue, data: Array(replay.suffix(ImsgWire.maxPayload)))
        default:
            break
        }
    }

    /// Graceful: ask the guest through vmmci and, if it enabled the ACPI
    /// power-button event (an ACPI OS listens), press the power button too.
    /// A guest that acknowledges within 3 s (the vmmci ack, or its ACPI
    /// handler clearing PWRBTN_STS) gets the acknowledged-stop time; any
    /// other, or one that never asked for either, is powered off.
    func stop(graceful: Bool) {
        guard !finishing else { return }
        if graceful, gracefulTimer == nil {
            var asked = false
            if let v = vmmci {
                v.async?.send(type: MessageType.vmmciCommand.rawValue, data: VMMCIMessage(command: .shutdown).encoded())
                Log.info("asked the guest to shut down (vmmci)")
                asked = true
            }
            let pressed = vm.powerButtonEnabled
            if pressed {
                vm.pressPowerButton()
                Log.info("pressed the ACPI power button")
                asked = true
            }
            if asked {
                // vmd: 3 s for the ack; after an ack the guest gets longer.
                gracefulTimer = loop.after(seconds: Self.shutdownAckTimeout) { [unowned self] in
                    self.gracefulTimer = nil
                    if pressed && !self.vm.powerButtonPending {
                        Log.info("the guest took the ACPI power button: waiting for it to power off")
                        self.acknowledgedStop(MessageType.vmmciAck.rawValue, VMMCIMessage(command: .shutdown).encoded())
                        return
                    }
                    Log.info("no shutdown acknowledgement from the guest: powering off")
                    self.finish(.stopped, "powered off after the guest did not acknowledge", forced: true)
                }
                return
            }
        }
        finish(.stopped, graceful ? "" : "forced stop", forced: !graceful)
    }

    /// The guest is shutting down: vmm extends its bound, the guest gets its time.
    func acknowledgedStop(_ type: UInt32, _ data: [UInt8]) {
        vmm.send(type: type, data: data)
        gracefulTimer = loop.after(seconds: Self.guestShutdownTimeout) { [unowned self] in
            self.finish(.stopped, "powered off: the guest did not shut down in \(Int(Self.guestShutdownTimeout)) s",
                        forced: true)
        }
    }

    func vmmciAck(_ m: Imsg) {
        guard let ack = try? VMMCIMessage(decoding: m.data) else { return }
        Log.info("guest acknowledged vmmci command \(ack.command)")
        guard ack.command == .shutdown || ack.command == .reboot, let t = gracefulTimer else { return }
        loop.remove(t)
        // vmm bounds a graceful stop; the guest is now shutting down.
        acknowledgedStop(MessageType.vmmciAck.rawValue, m.data)
    }

    /// Stops the VM in bounded time whatever state its devices are in:
    /// vCPUs waiting on a device are released (they read all-ones), the
    /// vCPU threads are kicked out of KVM_RUN, devices that answer get a
    /// SHUTDOWN and a moment to exit, and every device still there is
    /// killed.
    func finish(_ reason: VMStopReason, _ detail: String, forced: Bool = false) -> Never {
        finishing = true
        // The spawner runs as root and this process as _vmd by now: a
        // signal to it fails (EPERM). It exits on EOF of its channel and is
        // our child (not a CLONE_PARENT sibling): reaped with the devices.
        if let s = spawner {
            s.close()
            devicePIDs[s.pid] = "device spawner"
        }
        if stopFD >= 0 { EventFD.signal(stopFD) }
        if let vm, !vm.stop(timeout: Self.vcpuStopTimeout) {
            Log.warning("vCPU threads did not end in \(Self.vcpuStopTimeout) s; exiting anyway")
        }
        let forced = forced || reason == .failed
        for d in devices where devicePIDs[d.pid] != nil {
            if d.isStuck {
                Log.info("\(d.name): not answering: killed")
                Spawn.signal(d.pid, SIGKILL)
            } else {
                d.shutdown()
            }
        }
        let grace = forced ? Self.forcedDeviceExitGrace : Self.deviceExitGrace
        if !reapDevices(until: Clock.now() + grace) {
            for pid in devicePIDs.keys { Spawn.signal(pid, SIGKILL) }
            // SIGKILL ends even a stopped process; one in an uninterruptible
            // wait (a dead NFS server) ends when the wait does: not waited for.
            if !reapDevices(until: Clock.now() + 1) {
                Log.warning("device process(es) \(devicePIDs.values.sorted().joined(separator: ", ")) did not exit after SIGKILL")
            }
        }
        Log.info("\(reason == .reboot ? "rebooting" : "stopped")\(detail.isEmpty ? "" : ": \(detail)")")
        report(reason, detail)
        exit(0)
    }

    /// Reaps device processes until none is left (true) or `deadline`.
    func reapDevices(until deadline: Double) -> Bool {
        while !devicePIDs.isEmpty {
            if let (pid, _) = Spawn.reapAny() { devicePIDs[pid] = nil; continue }
            if Clock.now() >= deadline { return false }
            Clock.sleep(seconds: 0.005)
        }
        return true
    }
}
