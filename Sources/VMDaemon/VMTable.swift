import VMDControl
import Glibc
import VMDSystem
import Imsg
import VMConfig
import DiskImage
import VirtioDevices

/// The parent's table of VMs: configured and running, with stable ids, the
/// permission checks for control requests, and the start/stop state machine.
final class VMTable {
    final class Entry {
        let id: UInt32
        var config: VMConfiguration
        var state: VMState = .stopped
        var pid: Int32 = 0
        var tty = ""
        var ownerUID: uid_t = 0
        var ownerGID: gid_t?
        var fromConfigFile: Bool
        var restarts: [Double] = []
        /// Clients waiting for this VM to stop (`vmctl wait`, `stop -w`).
        var waiters: [UInt32] = []
        var startRequester: UInt32?
        var pendingTaps: Int = 0
        var launch: LaunchSpec?
        var launchFDs: [Int32] = []
        var stopRequested = false

        init(id: UInt32, config: VMConfiguration, fromConfigFile: Bool) {
            self.id = id
            self.config = config
            self.fromConfigFile = fromConfigFile
        }
    }

    struct Client { let uid: uid_t; let gid: gid_t }

    unowned let parent: Parent
    var entries: [Entry] = []
    var nextID: UInt32 = 1
    var clients: [UInt32: Client] = [:]
    static let restartLimit = 3
    static let restartWindow = 6.0

    init(parent: Parent) {
        self.parent = parent
        for vm in parent.config.vms { add(parent.config.resolved(vm), fromConfigFile: true) }
    }

    @discardableResult
    func add(_ config: VMConfiguration, fromConfigFile: Bool) -> Entry {
        let e = Entry(id: nextID, config: config, fromConfigFile: fromConfigFile)
        nextID += 1
        resolveOwner(e)
        entries.append(e)
        return e
    }

    func resolveOwner(_ e: Entry) {
        e.ownerUID = 0
        e.ownerGID = nil
        guard let o = e.config.owner else { return }
        if let u = o.user { e.ownerUID = UInt32(u).map { uid_t($0) } ?? Users.lookup(u)?.uid ?? 0 }
        if let g = o.group { e.ownerGID = UInt32(g).map { gid_t($0) } ?? Users.lookupGroup(g) }
    }

    func find(_ nameOrID: String) -> Entry? {
        if let id = UInt32(nameOrID), let e = entries.first(where: { $0.id == id }) { return e }
        return entries.first { $0.config.name == nameOrID }
    }

    func entry(id: UInt32) -> Entry? { entries.first { $0.id == id } }

    // MARK: start-up and reload

    /// Starts every VM without `disable`, honouring `staggered start`.
    func startConfigured() {
        let toStart = entries.filter { $0.fromConfigFile && $0.config.enabled && $0.state == .stopped }
        guard let stagger = parent.config.staggeredStart, stagger.parallel > 0 else {
            for e in toStart { start(e, requester: nil) }
            return
        }
        for (i, e) in toStart.enumerated() {
            let batch = i / stagger.parallel
            if batch == 0 { start(e, requester: nil); continue }
            parent.loop.after(seconds: Double(batch * stagger.delaySeconds)) { [weak self, weak e] in
                if let self, let e, e.state == .stopped { self.start(e, requester: nil) }
            }
        }
    }

    /// After a successful reload: stopped VMs take the new configuration,
    /// VMs gone from the file are forgotten once stopped, new ones are added
    /// and, if enabled, started. Running VMs are left alone.
    func applyConfiguration() {
        let newNames = Set(parent.config.vms.map(\.name))
        entries.removeAll { $0.fromConfigFile && $0.state == .stopped && !newNames.contains($0.config.name) }
        for vm in parent.config.vms.map(parent.config.resolved) {
            if let e = entries.first(where: { $0.config.name == vm.name }) {
                if e.state == .stopped { e.config = vm; e.fromConfigFile = true; resolveOwner(e) }
            } else {
                add(vm, fromConfigFile: true)
            }
        }
        startConfigured()
    }

    // MARK: control requests

    func reply(_ client: UInt32, _ type: MessageType, _ data: [UInt8] = []) {
        parent.send(.control, Imsg(type: type.rawValue, peerID: client, data: data))
    }

    func fail(_ client: UInt32, _ code: Int32, _ message: String) {
        reply(client, .ctlFail, Failure(code: code, message: message).encoded())
    }

    func ok(_ client: UInt32, _ message: String = "") {
        reply(client, .ctlOK, Array(message.utf8))
    }

    func isOwner(_ c: Client, _ e: Entry) -> Bool {
        if c.uid == 0 { return true }
        if e.config.owner == nil { return false }
        if e.ownerUID != 0 && e.ownerUID == c.uid { return true }
        if let g = e.ownerGID, g == c.gid { return true }
        return false
    }

    func fromControl(_ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        let client = m.peerID
        guard let type = MessageType(rawValue: m.type) else {
            fail(client, EINVAL, "unknown request type \(m.type)")
            return
        }
        // Control's own bookkeeping (clients cannot get these relayed:
        // MessagePolicy.clientToControl). Credentials are set once per
        // connection and never replaced.
        if type == .ctlClientConnected {
            var r = WireReader(m.data)
            guard clients[client] == nil, let uid = try? r.u32(), let gid = try? r.u32() else {
                Log.warning("control: ignored repeated or malformed credentials for client \(client)")
                return
            }
            clients[client] = Client(uid: uid, gid: gid)
            return
        }
        if type == .ctlClientClosed {
            clients[client] = nil
            for e in entries { e.waiters.removeAll { $0 == client } }
            groupWaits.removeAll { $0.client == client }
            return
        }
        guard let c = clients[client] else { return }
        guard MessagePolicy.clientRequests.contains(type) else {
            Log.warning("control: dropped message type \(m.type): not a client request")
            return
        }
        if c.uid != 0 && !MessagePolicy.unprivilegedRequests.contains(type) {
            fail(client, EPERM, "permission denied: only root may do that")
            return
        }
        do {
            switch type {
            case .vmdGetInfoVMRequest: status(client, m.data)
            case .vmdStartVMRequest: try startRequest(client, c, StartRequest(decoding: m.data))
            case .vmdStopVMRequest: try stopRequest(client, c, VMRequest(decoding: m.data))
            case .vmdPauseVM, .vmdUnpauseVM, .vmdWaitVM, .vmdConsoleRequest:
                try vmRequest(type, client, c, VMRequest(decoding: m.data))
            case .ctlReload:
                let path = String(decoding: m.data, as: UTF8.self)
                switch parent.reload(path: path.isEmpty ? nil : path) {
                case .success: ok(client, "configuration reloaded")
                case .failure(let errs):
                    fail(client, EINVAL, errs.errors.map(\.description).joined(separator: "\n"))
                }
            case .ctlReset:
                var r = WireReader(m.data)
                let what = (try? r.u32()) ?? 0
                if what == 0 || what == 1 {
                    for e in entries where e.state != .stopped { stop(e, force: true) }
                }
                ok(client)
            case .ctlVerbose:
                var r = WireReader(m.data)
                let level = (try? r.u32()) ?? 0
                Log.setVerbosity(Int(level))
                Log.info("log level set to \(level == 0 ? "brief" : "verbose")")
                ok(client)
            default:
                fail(client, EINVAL, "unexpected request type \(m.type)")
            }
        } catch {
            fail(client, EINVAL, "malformed request: \(error)")
        }
    }

    func info(_ e: Entry) -> VMInfo {
        var owner = e.config.owner.map { o in
            [o.user, o.group.map { ":" + $0 }].compactMap { $0 }.joined()
        } ?? "root"
        if owner.isEmpty { owner = "root" }
        let running = e.state != .stopped && e.pid != 0
        return VMInfo(id: e.id, pid: running ? e.pid : 0, vcpus: UInt32(e.config.effectiveCPUs),
                      maxMemory: e.config.effectiveMemoryBytes,
                      curMemory: running ? e.config.effectiveMemoryBytes : 0,
                      tty: running ? e.tty : "", owner: owner, state: e.state.rawValue,
                      name: e.config.name)
    }

    func status(_ client: UInt32, _ data: [UInt8]) {
        var r = WireReader(data)
        let wanted = (try? r.string(max: 256)) ?? ""
        for e in entries where wanted.isEmpty || e.config.name == wanted || String(e.id) == wanted {
            reply(client, .vmdInfoVMData, info(e).encoded())
        }
        reply(client, .vmdInfoVMEnd)
    }

    func startRequest(_ client: UInt32, _ c: Client, _ req: StartRequest) throws {
        // Paths in a request are opened by the daemon as root: only root may
        // give them (or create VMs); other users start the VMs they own.
        if c.uid != 0 && req.hasOverrides {
            fail(client, EPERM, "start \(req.name): permission denied: only root may give -b, -d, -r, -t, -m, -i, -n, -L or -B")
            return
        }
        var e = find(req.name)
        if let existing = e {
            guard isOwner(c, existing) else {
                fail(client, EPERM, "start \(req.name): permission denied"); return
            }
            guard existing.state == .stopped else {
                fail(client, EBUSY, "start \(req.name): vm already running"); return
            }
            if req.hasOverrides {
                // Overrides hold for this start only if it goes ahead: a
                // refused start leaves the configured VM as it was.
                let saved = existing.config
                apply(req, to: existing)
                start(existing, requester: client)
                if existing.state == .stopped { existing.config = saved }
                return
            }
        } else {
            guard req.hasOverrides || req.name.isEmpty == false else {
                fail(client, ENOENT, "start \(req.name): vm not found"); return
            }
            guard !req.bootPath.isEmpty || !req.disks.isEmpty || !req.cdrom.isEmpty || !req.parent.isEmpty else {
                fail(client, ENOENT, "start \(req.name): vm not found (give -b, -d or -r to create one)"); return
            }
            var vm = VMConfiguration(name: req.name, location: SourceLocation(file: "vmctl", line: 0))
            if c.uid != 0 { vm.owner = Owner(user: String(c.uid), group: nil) }
            if !req.parent.isEmpty {
                guard let p = find(req.parent) else {
                    fail(client, ENOENT, "start \(req.name): parent vm \(req.parent) not found"); return
                }
                vm = p.config
                vm.name = req.name
                vm.parent = req.parent
            }
            let ne = add(vm, fromConfigFile: false)
            apply(req, to: ne)
            e = ne
        }
        start(e!, requester: client)
    }

    func apply(_ req: StartRequest, to e: Entry) {
        if !req.bootPath.isEmpty { e.config.bootPath = req.bootPath }
        if req.memoryBytes != 0 { e.config.memoryBytes = req.memoryBytes }
        if req.cpus != 0 { e.config.cpus = Int(req.cpus) }
        if req.interfaceCount != 0 { e.config.interfaceCount = Int(req.interfaceCount) }
        let loc = SourceLocation(file: "vmctl", line: 0)
        for d in req.disks {
            var fmt: VMConfig.DiskFormat? = nil
            var path = d
            if d.hasPrefix("raw:") { fmt = .raw; path = String(d.dropFirst(4)) }
            else if d.hasPrefix("qcow2:") { fmt = .qcow2; path = String(d.dropFirst(6)) }
            e.config.disks.append(Disk(path: path, format: fmt, location: loc))
        }
        if !req.cdrom.isEmpty { e.config.cdrom = req.cdrom }
        if !req.switchName.isEmpty {
            e.config.interfaces.append(Interface(switchName: req.switchName, location: loc))
        }
        if req.localInterface { e.config.interfaces.append(Interface(isLocal: true, location: loc)) }
        if let d = BootDevice(rawValue: req.bootDevice) { e.config.bootDevice = d }
    }

    func stopRequest(_ client: UInt32, _ c: Client, _ req: VMRequest) throws {
        let targets: [Entry]
        if req.flags & VMRequest.all != 0 {
            targets = entries.filter { $0.state != .stopped && isOwner(c, $0) }
        } else {
            guard let e = find(req.name) else { fail(client, ENOENT, "stop \(req.name): vm not found"); return }
            guard isOwner(c, e) else { fail(client, EPERM, "stop \(req.name): permission denied"); return }
            guard e.state != .stopped else { fail(client, EINVAL, "stop \(req.name): vm not running"); return }
            targets = [e]
        }
        let waiting = req.flags & VMRequest.wait != 0 && !targets.isEmpty
        if waiting {
            // One answer when the last of them has stopped.
            groupWaits.append((client, Set(targets.map(\.id)), targets.map(\.config.name)))
        }
        for e in targets {
            stop(e, force: req.flags & VMRequest.force != 0)
        }
        if !waiting {
            ok(client, targets.map { "stopping vm \($0.config.name): requested to shutdown" }.joined(separator: "\n"))
        }
    }

    /// `stop -w`: (client, VMs still running, their names).
    var groupWaits: [(client: UInt32, pending: Set<UInt32>, names: [String])] = []

    func vmRequest(_ type: MessageType, _ client: UInt32, _ c: Client, _ req: VMRequest) throws {
        let verb: String
        switch type {
        case .vmdPauseVM: verb = "pause"
        case .vmdUnpauseVM: verb = "unpause"
        case .vmdWaitVM: verb = "wait"
        default: verb = "console"
        }
        guard let e = find(req.name) else { fail(client, ENOENT, "\(verb) \(req.name): vm not found"); return }
        guard isOwner(c, e) else { fail(client, EPERM, "\(verb) \(req.name): permission denied"); return }
        switch type {
        case .vmdWaitVM:
            if e.state == .stopped { fail(client, EINVAL, "wait \(req.name): vm not running"); return }
            e.waiters.append(client)
        case .vmdPauseVM, .vmdUnpauseVM:
            let pausing = type == .vmdPauseVM
            guard e.state == (pausing ? .running : .paused) else {
                fail(client, EINVAL, "\(verb) \(req.name): vm is \(e.state.rawValue)"); return
            }
            e.waiters.removeAll { $0 == client }
            pendingReplies[e.id, default: []].append(client)
            parent.send(.vmm, Imsg(type: (pausing ? MessageType.vmmPauseVM : .vmmUnpauseVM).rawValue, peerID: e.id))
        default:
            guard e.state != .stopped else { fail(client, EINVAL, "console \(req.name): vm not running"); return }
            pendingConsole[e.id, default: []].append(client)
            parent.send(.vmm, Imsg(type: MessageType.vmmConsoleReplay.rawValue, peerID: e.id))
        }
    }

    var pendingReplies: [UInt32: [UInt32]] = [:]
    var pendingConsole: [UInt32: [UInt32]] = [:]

    // MARK: starting a VM

    func start(_ e: Entry, requester: UInt32?) {
        let name = e.config.name
        func refuse(_ code: Int32, _ msg: String) {
            Log.warning("start \(name): \(msg)")
            if let r = requester { fail(r, code, "start \(name): \(msg)") }
            e.state = .stopped
            for f in e.launchFDs { FD.close(f) }
            e.launchFDs = []
            forgetIfAdHoc(e)
        }
        let unsupported = unsupportedFeatures(of: e.config)
        if let first = unsupported.first {
            refuse(ENOTSUP, "not supported yet: \(first)")
            return
        }
        guard let boot = e.config.bootPath else {
            refuse(ENOTSUP, "no boot kernel given (`boot path`): BIOS boot is not supported yet")
            return
        }
        var fds: [Int32] = []
        func openFile(_ what: String, _ path: String, writable: Bool) -> (Int32, Bool)? {
            if writable {
                let fd = open(path, O_RDWR | O_CLOEXEC)
                if fd >= 0 { return (fd, false) }
                let err = errno
                if err != EACCES && err != EROFS && err != EPERM {
                    refuse(err, "\(what) \(path): \(String(cString: strerror(err)))")
                    return nil
                }
            }
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            if fd < 0 {
                let err = errno
                refuse(err, "\(what) \(path): \(String(cString: strerror(err)))")
                return nil
            }
            return (fd, true)
        }
        guard let (kernel, _) = openFile("kernel", boot, writable: false) else { return }
        fds.append(kernel)
        var spec = LaunchSpec(vmid: e.id, name: name, memoryBytes: e.config.effectiveMemoryBytes,
                              cpus: UInt32(e.config.effectiveCPUs), cmdline: e.config.cmdline ?? "",
                              kernelDescriptor: 0)
        if let initrd = e.config.initrd {
            guard let (fd, _) = openFile("initrd", initrd, writable: false) else { fds.forEach(FD.close); return }
            spec.initrdDescriptor = fds.count
            fds.append(fd)
        }
        // PCI slot order: disks, interfaces, rng, CD-ROM, vmmci (as before).
        var devices: [LaunchSpec.Device] = []
        for d in e.config.disks {
            guard let (fd, ro) = openFile("disk", d.path, writable: true) else { fds.forEach(FD.close); return }
            // One writer per image: a second VM gets a clear error, not a corrupt disk.
            if flock(fd, (ro ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0 {
                FD.close(fd)
                fds.forEach(FD.close)
                refuse(EBUSY, "disk \(d.path): in use by another VM")
                return
            }
            // QEMU's own locks too: an image QEMU uses is refused, and QEMU
            // refuses ours.
            if let conflict = QEMULocks.acquire(fd: fd, write: !ro) {
                FD.close(fd)
                fds.forEach(FD.close)
                refuse(EBUSY, "disk \(d.path): \(conflict)")
                return
            }
            // The format (given, else by magic) and a qcow2 image's backing
            // chain: every base opened read-only and share-locked here; the
            // device process gets the descriptors.
            var bases: [Int32] = []
            let chain: [ChainLink]
            do {
                chain = try BackingChain.resolve(path: d.path, file: FDImageFile(fd: fd),
                                                 format: d.format.flatMap { DiskImage.DiskFormat(rawValue: $0.rawValue) },
                                                 writable: !ro) { path in
                    let base = open(path, O_RDONLY | O_CLOEXEC)
                    guard base >= 0 else { throw DiskImageError.io(errno: errno, operation: "open") }
                    bases.append(base)
                    guard flock(base, LOCK_SH | LOCK_NB) == 0 else { throw DiskImageError.io(errno: EBUSY, operation: "lock") }
                    if let conflict = QEMULocks.acquire(fd: base, write: false) {
                        throw DiskImageError.invalid("\(path): \(conflict)")
                    }
                    return FDImageFile(fd: base)
                }
            } catch {
                (fds + [fd] + bases).forEach(FD.close)
                refuse(EINVAL, "disk \(error)")
                return
            }
            let base = d.path.split(separator: "/").last.map(String.init) ?? d.path
            var parameters = DeviceParameters(readOnly: ro, identifier: base)
            parameters.diskFormats = chain.map(\.format.rawValue)
            devices.append(.init(kind: .blk, parameters: parameters, descriptors: Array(fds.count...(fds.count + bases.count))))
            fds.append(fd)
            fds += bases
        }
        var tapNames: [String] = []
        let count = e.config.effectiveInterfaceCount
        for i in 0..<count {
            let iface = i < e.config.interfaces.count ? e.config.interfaces[i] : nil
            let mac = iface?.lladdr?.bytes ?? VioNet.randomMAC(index: i)
            // The tap's descriptor index is known when priv has opened it.
            devices.append(.init(kind: .net, parameters: .init(mac: mac, lockedLladdr: iface?.lockedLladdr ?? false)))
            tapNames.append((iface?.name == "tap") ? "" : (iface?.name ?? ""))
        }
        devices.append(.init(kind: .rnd))
        if let cd = e.config.cdrom {
            guard let (fd, _) = openFile("cdrom", cd, writable: false) else { fds.forEach(FD.close); return }
            devices.append(.init(kind: .scsi, descriptors: [fds.count]))
            fds.append(fd)
        }
        devices.append(.init(kind: .vmmci))
        spec.devices = devices
        spec.kernelName = boot
        spec.initrdName = e.config.initrd ?? ""
        spec.ownerUID = UInt32(e.ownerUID)
        e.launch = spec
        e.launchFDs = fds
        e.state = .starting
        e.startRequester = requester
        e.stopRequested = false
        e.pendingTaps = tapNames.count
        if tapNames.isEmpty {
            sendLaunch(e)
        } else {
            for n in tapNames {
                parent.send(.priv, Imsg(type: MessageType.privOpenTap.rawValue, peerID: e.id,
                                        data: Array(n.utf8)))
            }
        }
    }

    /// A VM made from vmctl flags exists only while it runs: one whose
    /// start failed leaves nothing behind (no ghost a reload would boot).
    func forgetIfAdHoc(_ e: Entry) {
        guard !e.fromConfigFile, e.state == .stopped else { return }
        entries.removeAll { $0 === e }
    }

    func fromPriv(_ m: Imsg) {
        guard MessageType(rawValue: m.type) == .privTapOpened, let e = entry(id: m.peerID),
              e.state == .starting, e.pendingTaps > 0, var spec = e.launch else {
            if let f = m.fd { FD.close(f) }
            return
        }
        guard let fd = m.fd else {
            let reason = String(decoding: m.data, as: UTF8.self)
            e.pendingTaps = 0
            for f in e.launchFDs { FD.close(f) }
            e.launchFDs = []
            e.state = .stopped
            Log.warning("start \(e.config.name): tap: \(reason)")
            if let r = e.startRequester { fail(r, EIO, "start \(e.config.name): tap: \(reason)") }
            e.startRequester = nil
            forgetIfAdHoc(e)
            return
        }
        // Taps arrive in the order they were asked for: the next network
        // device without its descriptor gets this one.
        if let i = spec.devices.firstIndex(where: { $0.kind.model.backends == [.tap] && $0.descriptors.isEmpty }) {
            spec.devices[i].descriptors = [e.launchFDs.count]
        }
        Log.debug("vm \(e.config.name): tap \(String(decoding: m.data, as: UTF8.self))")
        e.launch = spec
        e.launchFDs.append(fd)
        e.pendingTaps -= 1
        if e.pendingTaps == 0 { sendLaunch(e) }
    }

    func sendLaunch(_ e: Entry) {
        guard let spec = e.launch else { return }
        parent.send(.vmm, Imsg(type: MessageType.vmmStartVM.rawValue, peerID: e.id, data: spec.encoded()))
        for fd in e.launchFDs {
            parent.send(.vmm, Imsg(type: MessageType.vmmStartVMFD.rawValue, peerID: e.id, fd: fd))
        }
        e.launchFDs = []
        parent.send(.vmm, Imsg(type: MessageType.vmmStartVMEnd.rawValue, peerID: e.id))
        Log.info("vm \(e.config.name): starting (id \(e.id))")
    }

    func stop(_ e: Entry, force: Bool) {
        switch e.state {
        case .starting where e.pid == 0, .stopped:
            return
        default:
            e.stopRequested = true
            e.state = .stopping
            parent.send(.vmm, Imsg(type: MessageType.vmmStopVM.rawValue, peerID: e.id,
                                   data: VMStopCommand(force: force).encoded()))
            Log.info("vm \(e.config.name): stopping\(force ? " (forced)" : "")")
        }
    }

    // MARK: messages from vmm

    func fromVMM(_ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        guard let e = entry(id: m.peerID) else { return }
        switch MessageType(rawValue: m.type) {
        case .vmmVMStarted:
            // Once per start, and the tty must be a pty: the VM process
            // (guest-facing) writes the tty name that clients then open.
            guard e.state == .starting || e.state == .stopping, e.pid == 0 else {
                Log.warning("vm \(e.config.name): ignored a repeated start report")
                return
            }
            guard let started = try? VMStartedReport(decoding: m.data) else { return }
            e.pid = started.pid
            e.tty = Self.isPTY(started.tty) ? started.tty : ""
            if !started.tty.isEmpty && e.tty.isEmpty {
                Log.warning("vm \(e.config.name): ignored console \(started.tty): not a pty")
            }
            if e.state == .starting { e.state = .running }
            Log.info("vm \(e.config.name): running, pid \(e.pid), console \(e.tty)")
            if let c = e.startRequester { reply(c, .vmdStartVMResponse, info(e).encoded()) }
            e.startRequester = nil
            if e.stopRequested { stop(e, force: true) }
        case .vmmPaused, .vmmUnpaused:
            // Only as the answer to a pause/unpause the parent asked for.
            guard pendingReplies[e.id] != nil, e.state == .running || e.state == .paused else { return }
            e.state = MessageType(rawValue: m.type) == .vmmPaused ? .paused : .running
            Log.info("vm \(e.config.name): \(e.state == .paused ? "paused" : "unpaused")")
            for c in pendingReplies.removeValue(forKey: e.id) ?? [] { ok(c) }
        case .vmmConsoleReplay:
            for c in pendingConsole.removeValue(forKey: e.id) ?? [] {
                reply(c, .vmdConsoleData, info(e).encoded())
                var off = 0
                let data = m.data
                // Chunks that fit one imsg each, then an empty end marker.
                while off < data.count {
                    let end = min(data.count, off + 16000)
                    reply(c, .vmdConsoleData, Array(data[off..<end]))
                    off = end
                }
                reply(c, .vmdInfoVMEnd)
            }
        case .vmmVMExited:
            let report = (try? VMExitReport(decoding: m.data))
                ?? VMExitReport(reason: .failed, detail: "malformed exit report")
            exited(e, reason: report.reason, detail: report.detail)
        default:
            break
        }
    }

    /// `/dev/pts/N`: the only console names the daemon passes on.
    static func isPTY(_ path: String) -> Bool {
        guard path.hasPrefix("/dev/pts/") else { return false }
        let n = path.dropFirst(9)
        return !n.isEmpty && n.count <= 10 && n.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }

    func exited(_ e: Entry, reason: VMStopReason, detail: String) {
        let name = e.config.name
        let wasStarting = e.state == .starting
        e.pid = 0
        e.tty = ""
        e.state = .stopped
        for c in pendingReplies.removeValue(forKey: e.id) ?? [] { fail(c, EINVAL, "vm \(name) stopped") }
        for c in pendingConsole.removeValue(forKey: e.id) ?? [] { fail(c, EINVAL, "console \(name): vm stopped") }
        if let c = e.startRequester {
            fail(c, EIO, "start \(name): \(detail.isEmpty ? "vm exited" : detail)")
            e.startRequester = nil
        }
        switch reason {
        case .reboot where !e.stopRequested:
            let now = Clock.now()
            e.restarts = e.restarts.filter { now - $0 < Self.restartWindow } + [now]
            if e.restarts.count >= Self.restartLimit {
                Log.warning("vm \(name): restarted \(Self.restartLimit) times in \(Int(Self.restartWindow)) s: stopped")
                e.restarts = []
                break
            }
            Log.info("vm \(name): rebooting")
            start(e, requester: nil)
            return
        case .failed:
            Log.warning("vm \(name): \(wasStarting ? "failed to start" : "stopped"): \(detail)")
        default:
            Log.info("vm \(name): stopped\(detail.isEmpty ? "" : " (\(detail))")")
        }
        e.stopRequested = false
        for c in e.waiters { ok(c, "vm \(name) stopped") }
        e.waiters = []
        for i in groupWaits.indices { groupWaits[i].pending.remove(e.id) }
        for g in groupWaits where g.pending.isEmpty {
            ok(g.client, g.names.map { "vm \($0) stopped" }.joined(separator: "\n"))
        }
        groupWaits.removeAll { $0.pending.isEmpty }
        // VMs made from vmctl flags live until they stop, like vmd's.
        forgetIfAdHoc(e)
    }
}
