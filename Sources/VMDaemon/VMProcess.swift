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
    var finishing = false
    var gracefulTimer: EventHandle?

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
        // Each disk's image, then its bases (a qcow2 backing chain).
        let chainFDs = spec.disks.map { d in d.formats.map { _ in take() } }
        let diskFDs = chainFDs.map { $0[0] }
        let baseFDs = chainFDs.map { Array($0.dropFirst()) }
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

        let regions = vm.memoryRegions.map {
            GuestMemoryRegion(guestPhysicalAddress: $0.guestPhysical, size: $0.size, offsetInMapping: $0.fdOffset)
        }
        do {
            for (i, d) in spec.disks.enumerated() {
                var s = DeviceSetup(kind: .blk, name: "vioblk\(i)", vmName: spec.name, regions: regions)
                s.readOnly = d.readOnly
                s.identifier = d.name
                s.diskFormats = d.formats
                try startDevice(s, backend: diskFDs[i], bases: baseFDs[i], header: VirtioProxy.modernHeader(.block), isr: 0x200)
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
        for fd in diskFDs + baseFDs.flatMap({ $0 }) + tapFDs { FD.close(fd) }
        if cdromFD >= 0 { FD.close(cdromFD) }

        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { die("pipe: \(SystemError("pipe"))") }
        exitPipe = fds
        try? FD.setCloseOnExec(fds[0]); try? FD.setCloseOnExec(fds[1])
        try? FD.setNonBlocking(fds[0])

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
    func startDevice(_ s: DeviceSetup, backend: Int32, bases: [Int32] = [], header: PCIConfigHeader, isr: UInt32) throws -> VirtioProxy {
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
        fds += bases
        fds += notifyFDs
        let pid = try Spawn.spawnSelf(arguments: args, descriptors: fds)
        devicePIDs[pid] = s.name
        let proxy = VirtioProxy(name: s.name, header: header, pid: pid, syncFD: syncMine,
                                asyncFD: asyncMine, isrOffset: isr)
        proxy.onFailure = { Log.warning($0) }
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
            gracefulTimer = loop.after(seconds: 3) { [unowned self] in
                Log.info("no shutdown acknowledgement from the guest: powering off")
                self.finish(.stopped, "powered off after the guest did not acknowledge")
            }
            return
        }
        finish(.stopped, graceful ? "" : "forced stop")
    }

    func vmmciAck(_ m: Imsg) {
        var r = WireReader(m.data)
        let cmd = (try? r.u32()) ?? 0
        Log.info("guest acknowledged vmmci command \(cmd)")
        guard cmd == 1 || cmd == 2, let t = gracefulTimer else { return }
        loop.remove(t)
        gracefulTimer = loop.after(seconds: 120) { [unowned self] in
            self.finish(.stopped, "powered off: the guest did not shut down in 120 s")
        }
    }

    func finish(_ reason: VMStopReason, _ detail: String) -> Never {
        finishing = true
        vm?.stop()
        for d in devices { d.shutdown() }
        // Give device processes a moment to exit on SHUTDOWN, then insist.
        let deadline = Clock.now() + 2
        while !devicePIDs.isEmpty && Clock.now() < deadline {
            if let (pid, _) = Spawn.reapAny() { devicePIDs[pid] = nil } else { usleep(5000) }
        }
        for pid in devicePIDs.keys { kill(pid, SIGKILL); _ = try? Spawn.wait(pid) }
        Log.info("\(reason == .reboot ? "rebooting" : "stopped")\(detail.isEmpty ? "" : ": \(detail)")")
        report(reason, detail)
        exit(0)
    }
}
