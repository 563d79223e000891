import Glibc
import VMDSystem
import VMDControl
import Imsg
import Virtio
import VirtioDevices

/// `vmd: vm NAME vioblk0` (and the other devices): one virtio device in its
/// own process. It maps guest memory, restricts itself to its descriptors
/// (sync + async channels, guest memory, one backend), then serves register
/// accesses (viodev_msg IO_READ/IO_WRITE on the sync channel) and raises its
/// interrupt line with KICK messages on the async channel.
final class DeviceProcess: InterruptSink {
    static let syncFD: Int32 = 3
    static let asyncFD: Int32 = 4
    static let memoryFD: Int32 = 5
    static let backendFD: Int32 = 6

    // Created after the descriptor clean-up, which would close its epoll fd.
    lazy var loop = EventLoop()
    let setup: DeviceSetup
    let sync: ImsgBuffer
    var async: ImsgChannel!
    var registers: VirtioRegisterFile!
    var vionet: VioNet?
    var paused = false
    var interruptLevel = false

    static func main(_ options: DaemonOptions, device: String) -> Never {
        let (sync, payload) = readStartMessage(fd: syncFD, expecting: .devopVMInfo,
                                               what: "\(device): the device set-up from the VM process")
        let setup: DeviceSetup
        do {
            setup = try DeviceSetup(decoding: payload)
        } catch {
            Log.error("\(device): bad device set-up: \(error)")
            exit(1)
        }
        ProcessTitle.set("vmd: vm \(setup.vmName) \(setup.name)")
        Log.setProcessName("vm \(setup.vmName) \(setup.name)")
        let p = DeviceProcess(setup: setup, sync: sync)
        p.run()
    }

    init(setup: DeviceSetup, sync: ImsgBuffer) {
        self.setup = setup
        self.sync = sync
    }

    func fail(_ msg: String) -> Never {
        Log.error("\(setup.name): \(msg)")
        exit(1)
    }

    func run() -> Never {
        // Guest memory: the VM's memfd, mapped whole.
        let memory: MappedGuestMemory
        do {
            let size = try SharedMemory.size(of: Self.memoryFD)
            let base = try SharedMemory.map(fd: Self.memoryFD, size: size)
            memory = try MappedGuestMemory(base: base, mappingSize: UInt64(size), regions: setup.regions)
        } catch {
            fail("cannot map guest memory: \(error)")
        }
        virtioLogHook = { Log.warning($0) }

        let device: VirtioDevice
        let type: VirtioDeviceType?
        do {
            switch setup.kind {
            case .blk:
                let backend: BlockBackend = setup.diskFormats == ["raw"]
                    ? try RawImageBackend(fd: Self.backendFD, readOnly: setup.readOnly)
                    : try DiskImageBackend(fds: (0..<Int32(setup.diskFormats.count)).map { Self.backendFD + $0 },
                                           formats: setup.diskFormats, readOnly: setup.readOnly)
                device = VioBlk(name: setup.name, backend: backend, identifier: setup.identifier)
                type = .block
            case .scsi:
                device = VioSCSI(name: setup.name, backend: try RawImageBackend(fd: Self.backendFD, readOnly: true))
                type = .scsi
            case .net:
                try TapBackend.prepareTap(fd: Self.backendFD)
                guard let n = VioNet(name: setup.name, backend: TapBackend(fd: Self.backendFD),
                                     mac: setup.mac, lockedLinkAddress: setup.lockedLladdr) else {
                    fail("bad MAC address")
                }
                vionet = n
                device = n
                type = .network
            case .rnd:
                device = VioRnd(name: setup.name)
                type = .entropy
            case .vmmci:
                let v = VMMCI(name: setup.name)
                v.onAcknowledge = { [unowned self] cmd in
                    var w = WireWriter()
                    w.u32(cmd.rawValue)
                    self.async.send(type: MessageType.vmmciAck.rawValue, data: w.bytes)
                }
                device = v
                type = nil
            }
        } catch {
            fail("\(error)")
        }
        if let type {
            registers = VirtioPCITransport(device: device, type: type, memory: memory, interruptSink: self)
        } else {
            registers = VirtioLegacyPCITransport(device: device, memory: memory, interruptSink: self)
        }

        // Nothing but our descriptors from here on.
        let hasBackend = !(setup.kind == .rnd || setup.kind == .vmmci)
        let backendFDs = hasBackend ? (0..<Int32(setup.kind == .blk ? setup.diskFormats.count : 1)).map { Self.backendFD + $0 } : []
        let firstNotifyFD = Self.backendFD + Int32(backendFDs.count)
        let notifyFDs = (0..<Int32(setup.notifyFDs)).map { firstNotifyFD + $0 }
        let keep: [Int32] = [Self.syncFD, Self.asyncFD, Self.memoryFD] + backendFDs + notifyFDs
        FD.closeAll(from: 3, except: keep)
        _ = loop   // its epoll fd, before the sandbox forbids creating one
        let user = Users.lookup(Users.daemonUser)
        if user == nil { fail("user \(Users.daemonUser) does not exist") }
        // Memory is mapped and every descriptor is open: the process needs
        // no file system, no new privileges and no root.
        FD.close(Self.memoryFD)
        restrict(setup.name, user: user, denyFileSystem: true, policy: SandboxPolicies.device(setup.kind))

        async = ImsgChannel(fd: Self.asyncFD, name: "\(setup.name): async", loop: loop,
                            onMessage: { [unowned self] _, m in self.asyncMessage(m) },
                            onClose: { [unowned self] _, _ in self.loop.exit() })
        try? FD.setNonBlocking(Self.syncFD)
        loop.onReadable(Self.syncFD) { [unowned self] in self.syncReadable() }
        // Kicks straight from KVM. Register writes the vCPU sent before the
        // kick are already in the sync socket: serve them first, in order.
        for (queue, fd) in notifyFDs.enumerated() {
            loop.onReadable(fd) { [unowned self] in
                guard EventFD.drain(fd) else { return }
                self.syncReadable()
                self.registers.write(offset: VirtioPCILayout.notify, size: 2, value: UInt32(queue))
            }
        }
        if let vionet {
            // Frames wait in the kernel while the guest has no buffers: the
            // tap is watched only while there is somewhere to put them.
            vionet.onReceiveBuffersAvailable = { [unowned self] in self.watchTap() }
            watchTap()
        }
        loop.onSignal(SIGTERM) { [unowned self] in self.loop.exit() }
        send(sync: ViodevMsg(kind: .ready))
        async.send(type: MessageType.devopMsg.rawValue, data: ViodevMsg(kind: .ready).encoded())
        Log.debug("\(setup.name): ready")
        loop.run()
        exit(0)
    }

    var tapWatch: EventHandle?

    func watchTap() {
        guard tapWatch == nil, !paused else { return }
        tapWatch = loop.onReadable(Self.backendFD) { [unowned self] in
            if self.paused || self.vionet?.tapReadable() != true { self.unwatchTap() }
        }
    }

    func unwatchTap() {
        if let h = tapWatch { loop.remove(h) }
        tapWatch = nil
    }

    func send(sync msg: ViodevMsg) {
        do {
            try sync.compose(type: MessageType.devopMsg.rawValue, data: msg.encoded())
            while try !sync.flush() {
                var pfd = pollfd(fd: Self.syncFD, events: Int16(POLLOUT), revents: 0)
                _ = poll(&pfd, 1, 1000)
            }
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
                    if let reply = registers.handle(msg) { send(sync: reply) }
                    if Log.verbosity > 2, let t = registers as? VirtioPCITransport {
                        Log.debug("\(setup.name): \(msg.kind) reg 0x\(String(msg.reg, radix: 16)) data 0x\(String(msg.data, radix: 16)) -> status 0x\(String(t.status, radix: 16)) isr \(t.isr) line \(t.isInterruptAsserted)")
                    }
                    // After a write (a queue notify, a status change) the
                    // line may have moved: async carries the new level.
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
            unwatchTap()
        case .vmmUnpauseVM:
            paused = false
            if vionet != nil { watchTap() }
        case .vmmciCommand:
            var r = WireReader(m.data)
            if let raw = try? r.u32(), let cmd = VMMCICommand(rawValue: raw),
               let t = registers as? VirtioLegacyPCITransport, let v = t.device as? VMMCI {
                v.send(command: cmd)
            }
        default:
            break
        }
    }

    // MARK: InterruptSink

    func setInterrupt(_ asserted: Bool) {
        guard asserted != interruptLevel else { return }
        interruptLevel = asserted
        if Log.verbosity > 2 { Log.debug("\(setup.name): interrupt \(asserted ? "asserted" : "deasserted") (async \(async == nil ? "missing" : "open"))") }
        let msg = ViodevMsg(kind: .kick, state: asserted ? ViodevMsg.stateAssert : ViodevMsg.stateDeassert)
        async?.send(type: MessageType.devopMsg.rawValue, data: msg.encoded())
    }
}
