import Glibc
import VMDSystem
import VMDControl
import Imsg
import VMM
import Virtio

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
    var exitPipe: [Int32] = [-1, -1]
    /// Signalled when the VM stops: releases vCPUs waiting on a device.
    var stopFD: Int32 = -1
    var finishing = false
    var gracefulTimer: EventHandle?
    /// Why a device was given up on (set on a vCPU thread).
    let failureLock = Mutex()
    var deviceFailure: String?

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
        let (buffer, payload) = readStartMessage(fd: vmmFD, expecting: .vmmStartVM,
                                                 what: "the VM description from vmm")
        let spec: LaunchSpec
        do {
            spec = try LaunchSpec(decoding: payload)
        } catch {
            Log.error("bad VM description: \(error)")
            exit(1)
        }
        ProcessTitle.set("vmd: vm \(spec.name)")
        Log.setProcessName("vm \(spec.name)")
        VMProcess(spec: spec, options: options, buffer: buffer).run()
    }

    init(spec: LaunchSpec, options: DaemonOptions, buffer: ImsgBuffer) {
        self.spec = spec
        self.options = options
        vmm = ImsgChannel(buffer: buffer, name: "vm \(spec.name): vmm", loop: loop,
                          onMessage: { [unowned self] _, m in self.fromVMM(m) },
                          onClose: { [unowned self] _, _ in self.finish(.stopped, "vmm went away") })
    }

    /// Reports why the VM ends and exits; the vmm reaps us.
    func report(_ reason: VMStopReason, _ detail: String) {
        var w = WireWriter()
        w.u32(reason.rawValue)
        w.string(detail)
        try? vmm.buffer.compose(type: MessageType.vmmVMExited.rawValue, data: w.bytes)
        try? FD.setNonBlocking(Self.vmmFD, false)
        _ = try? vmm.buffer.flush()
    }

    func die(_ detail: String) -> Never {
        Log.error(detail)
        report(.failed, detail)
        for pid in devicePIDs.keys { kill(pid, SIGKILL) }
        exit(1)
    }

    func run() -> Never {
        // Descriptors from the parent, in LaunchSpec order.
        var next = Self.firstDescriptor
        func take() -> Int32 { defer { next += 1 }; return next }
        let kernelFD = take()
        let initrdFD = spec.hasInitrd ? take() : -1
        let diskFDs = spec.disks.map { _ in take() }
        let cdromFD = spec.hasCDROM ? take() : -1
        let tapFDs = spec.nics.map { _ in take() }

        do {
            vm = try VirtualMachine(spec: VMSpec(
                name: spec.name, memoryBytes: spec.memoryBytes, vcpus: Int(spec.cpus),
                kernelPath: "/proc/self/fd/\(kernelFD)", commandLine: spec.cmdline,
                initrdPath: initrdFD >= 0 ? "/proc/self/fd/\(initrdFD)" : nil,
                kernelName: spec.kernelName.isEmpty ? nil : spec.kernelName,
                initrdName: spec.initrdName.isEmpty ? nil : spec.initrdName))
        } catch {
            die("\(error)")
        }
        vm.logger = { Log.info($0) }
        if Log.verbosity >= 2 {
            // -vv: the guest's console lines in the log too (vCPU threads).
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
        FD.close(kernelFD)
        if initrdFD >= 0 { FD.close(initrdFD) }
        // The owner may attach to the console (`vmctl console`) directly.
        if spec.ownerUID != 0 {
            if fchown(vm.consoleSlaveFD, uid_t(spec.ownerUID), gid_t(bitPattern: -1)) != 0 {
                Log.warning("cannot hand the console to uid \(spec.ownerUID): \(SystemError("fchown"))")
            }
        }

        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { die("pipe: \(SystemError("pipe"))") }
        exitPipe = fds
        try? FD.setCloseOnExec(fds[0]); try? FD.setCloseOnExec(fds[1])
        try? FD.setNonBlocking(fds[0])
        do { stopFD = try EventFD.create() } catch { die("eventfd: \(error)") }

        let regions = vm.memoryRegions.map {
            GuestMemoryRegion(guestPhysicalAddress: $0.guestPhysical, size: $0.size, offsetInMapping: $0.fdOffset)
        }
        do {
            for (i, d) in spec.disks.enumerated() {
                var s = DeviceSetup(kind: .blk, name: "vioblk\(i)", vmName: spec.name, regions: regions)
                s.readOnly = d.readOnly
                s.identifier = d.name
                try startDevice(s, backend: diskFDs[i], header: VirtioProxy.modernHeader(.block), isr: 0x200)
            }
            for (i, n) in spec.nics.enumerated() {
                var s = DeviceSetup(kind: .net, name: "vionet\(i)", vmName: spec.name, regions: regions)
                s.mac = n.mac
                s.lockedLladdr = n.lockedLladdr
                try startDevice(s, backend: tapFDs[i], header: VirtioProxy.modernHeader(.network), isr: 0x200)
            }
            if spec.rng {
                try startDevice(DeviceSetup(kind: .rnd, name: "viornd", vmName: spec.name, regions: regions),
                                backend: -1, header: VirtioProxy.modernHeader(.entropy), isr: 0x200)
            }
            if spec.hasCDROM {
                try startDevice(DeviceSetup(kind: .scsi, name: "vioscsi", vmName: spec.name, regions: regions),
                                backend: cdromFD, header: VirtioProxy.modernHeader(.scsi), isr: 0x200)
            }
            if spec.vmmci {
                vmmci = try startDevice(DeviceSetup(kind: .vmmci, name: "vmmci", vmName: spec.name, regions: regions),
                                        backend: -1, header: VirtioProxy.vmmciHeader(), isr: 0x13)
            }
            for d in devices { try d.waitReady() }
        } catch {
            die("cannot start devices: \(error)")
        }
        for fd in diskFDs + tapFDs { FD.close(fd) }
        if cdromFD >= 0 { FD.close(cdromFD) }

        // The privileged part is over.
        guard let user = Users.lookup(Users.daemonUser) else { die("user \(Users.daemonUser) does not exist") }
        restrict("vm", user: user, denyFileSystem: true, policy: SandboxPolicies.vm)

        loop.onSignal(SIGCHLD) { [unowned self] in self.reapDevices() }
        reapDevices()   // a device that died before the handler existed
        loop.onSignal(SIGTERM) { [unowned self] in self.stop(graceful: true) }
        loop.onReadable(exitPipe[0]) { [unowned self] in self.guestExited() }
        loop.onReadable(vm.consoleMasterFD) { [unowned self] in self.consoleInput() }

        let writeEnd = exitPipe[1]
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
                _ = write(writeEnd, &code, 1)
            }
        } catch {
            die("cannot start vCPUs: \(error)")
        }
        vmm.send(type: MessageType.vmmVMStarted.rawValue, data: {
            var w = WireWriter(); w.string(vm.consoleName); return w.bytes
        }())
        Log.info("started: \(spec.cpus) vCPU(s), \(spec.memoryBytes >> 20) MiB, console \(vm.consoleName), \(devices.count) device process(es)")
        loop.run()
        finish(.stopped, "")
    }

    @discardableResult
    func startDevice(_ s: DeviceSetup, backend: Int32, header: PCIConfigHeader, isr: UInt32) throws -> VirtioProxy {
        var s = s
        let (syncMine, syncTheirs) = try FD.socketPair()
        let (asyncMine, asyncTheirs) = try FD.socketPair()
        // virtio 1.x devices get one kick eventfd per queue (vmmci has none).
        let queues: Int
        switch s.kind {
        case .blk, .rnd: queues = 1
        case .net: queues = 2
        case .scsi: queues = 3
        case .vmmci: queues = 0
        }
        var notifyFDs: [Int32] = []
        for _ in 0..<queues { notifyFDs.append(try EventFD.create()) }
        s.notifyFDs = UInt32(queues)
        defer { FD.close(syncTheirs); FD.close(asyncTheirs) }
        var args = ["vmd", "-X", s.name]
        if options.foreground { args.append("-d") }
        if options.verbosity > 0 { args.append("-" + String(repeating: "v", count: options.verbosity)) }
        var fds = [syncTheirs, asyncTheirs, vm.memoryFD]
        if backend >= 0 { fds.append(backend) }
        fds += notifyFDs
        let pid = try Spawn.spawnSelf(arguments: args, descriptors: fds)
        devicePIDs[pid] = s.name
        let proxy = VirtioProxy(name: s.name, header: header, pid: pid, syncFD: syncMine,
                                asyncFD: asyncMine, isrOffset: isr, stopFD: stopFD)
        proxy.onFailure = { Log.warning($0) }
        // vmd stops the VM when a device process dies; one that stopped
        // answering is failed the same way (vCPU thread: the loop finishes).
        let writeEnd = exitPipe[1]
        proxy.onUnresponsive = { [unowned self] why in
            Log.error(why)
            let first: Bool = self.failureLock.locked {
                guard self.deviceFailure == nil else { return false }
                self.deviceFailure = why
                return true
            }
            var code: UInt8 = 4
            if first { _ = write(writeEnd, &code, 1) }
        }
        proxy.notifyFDs = notifyFDs
        proxy.registerNotify = { [unowned vm = vm!] fd, port, queue, assign in
            try vm.portEventFD(fd, port: port, length: 2, value: queue, assign: assign)
        }
        try proxy.setup(s)
        proxy.interrupt = try vm.addPCIFunction(proxy)
        proxy.async = ImsgChannel(fd: asyncMine, name: "\(s.name): async", loop: loop,
                                  onMessage: { [unowned self, unowned proxy] _, m in
                                      if MessageType(rawValue: m.type) == .vmmciAck { self.vmmciAck(m) }
                                      else { proxy.asyncMessage(m) }
                                  },
                                  onClose: { _, _ in })
        devices.append(proxy)
        return proxy
    }

    // MARK: events

    func consoleInput() {
        let space = max(1, vm.consoleReceiveSpace)
        var buf = [UInt8](repeating: 0, count: min(space, 256))
        let n = read(vm.consoleMasterFD, &buf, buf.count)
        if n > 0 { vm.consoleReceive(Array(buf[0..<n])) }
    }

    func guestExited() {
        var code: UInt8 = 0
        guard read(exitPipe[0], &code, 1) == 1 else { return }
        switch code {
        case 1: finish(.powerOff, "guest powered off")
        case 2: finish(.reboot, "guest reset")
        case 4: finish(.failed, failureLock.locked { deviceFailure } ?? "a device stopped answering")
        default: finish(.failed, "guest failed")
        }
    }

    func reapDevices() {
        while let (pid, status) = Spawn.reapAny() {
            let name = devicePIDs.removeValue(forKey: pid) ?? "process \(pid)"
            if finishing { continue }
            let why = "\(name) process \(status)"
            Log.error("\(why): stopping the VM")
            finish(.failed, why)
        }
    }

    func fromVMM(_ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        switch MessageType(rawValue: m.type) {
        case .vmmStopVM:
            var r = WireReader(m.data)
            let flags = (try? r.u32()) ?? 0
            stop(graceful: flags & VMRequest.force == 0)
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

    /// Graceful: ask the guest through vmmci and give it time; otherwise
    /// (or after the time) power the VM off.
    func stop(graceful: Bool) {
        guard !finishing else { return }
        if graceful, let v = vmmci, gracefulTimer == nil {
            var w = WireWriter()
            w.u32(1)   // VMMCI shutdown
            v.async?.send(type: MessageType.vmmciCommand.rawValue, data: w.bytes)
            Log.info("asked the guest to shut down (vmmci)")
            // vmd: 3 s for the ack; after an ack the guest gets longer.
            gracefulTimer = loop.after(seconds: Self.shutdownAckTimeout) { [unowned self] in
                Log.info("no shutdown acknowledgement from the guest: powering off")
                self.finish(.stopped, "powered off after the guest did not acknowledge", forced: true)
            }
            return
        }
        finish(.stopped, graceful ? "" : "forced stop", forced: !graceful)
    }

    func vmmciAck(_ m: Imsg) {
        var r = WireReader(m.data)
        let cmd = (try? r.u32()) ?? 0
        Log.info("guest acknowledged vmmci command \(cmd)")
        guard cmd == 1 || cmd == 2, let t = gracefulTimer else { return }
        loop.remove(t)
        // vmm bounds a graceful stop; the guest is now shutting down.
        vmm.send(type: MessageType.vmmciAck.rawValue, data: m.data)
        gracefulTimer = loop.after(seconds: Self.guestShutdownTimeout) { [unowned self] in
            self.finish(.stopped, "powered off: the guest did not shut down in \(Int(Self.guestShutdownTimeout)) s",
                        forced: true)
        }
    }

    /// Stops the VM in bounded time whatever state its devices are in:
    /// vCPUs waiting on a device are released (they read all-ones), the
    /// vCPU threads are kicked out of KVM_RUN, devices that answer get a
    /// SHUTDOWN and a moment to exit, and every device still there is
    /// killed.
    func finish(_ reason: VMStopReason, _ detail: String, forced: Bool = false) -> Never {
        finishing = true
        if stopFD >= 0 {
            var one: UInt64 = 1
            _ = write(stopFD, &one, 8)
        }
        if let vm, !vm.stop(timeout: Self.vcpuStopTimeout) {
            Log.warning("vCPU threads did not end in \(Self.vcpuStopTimeout) s; exiting anyway")
        }
        let forced = forced || reason == .failed
        for d in devices where devicePIDs[d.pid] != nil {
            if d.isStuck {
                Log.info("\(d.name): not answering: killed")
                kill(d.pid, SIGKILL)
            } else {
                d.shutdown()
            }
        }
        let grace = forced ? Self.forcedDeviceExitGrace : Self.deviceExitGrace
        if !reapDevices(until: Clock.now() + grace) {
            for pid in devicePIDs.keys { kill(pid, SIGKILL) }
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
            usleep(5000)
        }
        return true
    }
}
