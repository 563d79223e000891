import VMDControl
import Glibc
import VMDSystem
import Imsg
import VMConfig
import VirtioDevices

/// The parent's table of VMs, configured and made with vmctl, with stable
/// ids: it dispatches control requests (ControlAuthorization decides who
/// may), starts VMs (LaunchBuilder opens their files) and follows their
/// lives (VMLifecycle) from what vmm reports.
final class VMTable {
    final class Entry {
        let id: UInt32
        // Everything `VMTable.info` reads drops the cached status record.
        var config: VMConfiguration { didSet { statusRecord = nil } }
        var lifecycle = VMLifecycle() { didSet { statusRecord = nil } }
        var state: VMState { lifecycle.state }
        var pid: Int32 = 0 { didSet { statusRecord = nil } }
        var tty = "" { didSet { statusRecord = nil } }
        var ownership = VMOwnership.rootOnly
        var fromConfigFile: Bool
        /// Clients waiting for this VM to stop (`vmctl wait`, `stop -w`).
        var waiters: [UInt32] = []
        var startRequester: UInt32?
        /// The launch being assembled (waiting for taps from priv).
        var launch: PreparedLaunch?
        /// Device restarts the running VM process reported (issue 12).
        var deviceRestarts: [String: UInt32] = [:] { didSet { statusRecord = nil } }
        /// This VM's `vmdInfoVMData` payload (`VMTable.info(self).encoded()`),
        /// kept until one of the fields it is made of changes: a status
        /// answer copies it instead of encoding every VM again (issue 14).
        private(set) var statusRecord: [UInt8]?

        var statusPayload: [UInt8] {
            if let r = statusRecord { return r }
            let r = VMTable.info(self).encoded()
            statusRecord = r
            return r
        }

        init(id: UInt32, config: VMConfiguration, fromConfigFile: Bool) {
            self.id = id
            self.config = config
            self.fromConfigFile = fromConfigFile
        }
    }

    unowned let parent: Parent
    var entries: [Entry] = []
    var nextID: UInt32 = 1
    var clients: [UInt32: ClientCredentials] = [:]

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

    /// `owner user[:group]` as ids, looked up when the VM is added (the
    /// parent is not sandboxed; names were checked when the file was read).
    func resolveOwner(_ e: Entry) {
        e.ownership = .rootOnly
        guard let o = e.config.owner else { return }
        e.ownership.configured = true
        if let u = o.user { e.ownership.uid = UInt32(u).map { uid_t($0) } ?? Users.lookup(u)?.uid ?? 0 }
        if let g = o.group { e.ownership.gid = UInt32(g).map { gid_t($0) } ?? Users.lookupGroup(g) }
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

    func isOwner(_ c: ClientCredentials, _ e: Entry) -> Bool {
        ControlAuthorization.mayControl(e.ownership, c)
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
            guard clients[client] == nil, let connected = try? ClientConnected(decoding: m.data) else {
                Log.warning("control: ignored repeated or malformed credentials for client \(client)")
                return
            }
            clients[client] = ClientCredentials(uid: connected.uid, gid: connected.gid)
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
        if case .denied(let why) = ControlAuthorization.mayRequest(type, c) {
            fail(client, EPERM, why)
            return
        }
        do {
            switch type {
            case .vmdGetInfoVMRequest: try status(client, m.data)
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
                if try ResetRequest(decoding: m.data).resetsVMs {
                    for e in entries where e.state != .stopped { stop(e, force: true) }
                }
                ok(client)
            case .ctlVerbose:
                let level = try VerbosityRequest(decoding: m.data).level
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

    func info(_ e: Entry) -> VMInfo { Self.info(e) }

    static func info(_ e: Entry) -> VMInfo {
        // (Plain concatenation: this runs once per VM for every status.)
        var owner = "root"
        if let o = e.config.owner {
            owner = (o.user ?? "") + (o.group.map { ":" + $0 } ?? "")
            if owner.isEmpty { owner = "root" }
        }
        let running = e.state != .stopped && e.pid != 0
        var vm = VMInfo(id: e.id, pid: running ? e.pid : 0, vcpus: UInt32(e.config.effectiveCPUs),
                        maxMemory: e.config.effectiveMemoryBytes,
                        curMemory: running ? e.config.effectiveMemoryBytes : 0,
                        tty: running ? e.tty : "", owner: owner, state: e.state.rawValue,
                        name: e.config.name)
        if running {
            vm.deviceRestarts = e.deviceRestarts.sorted { $0.key < $1.key }
                .map { DeviceRestartReport(device: $0.key, restarts: $0.value) }
        }
        return vm
    }

    func status(_ client: UInt32, _ data: [UInt8]) throws {
        let wanted = try InfoRequest(decoding: data).name
        // The whole answer leaves in one write: one wake-up of control
        // (and of vmctl) however many VMs there are (issue 14).
        var answer: [Imsg] = []
        answer.reserveCapacity(entries.count + 1)
        let wantedID = UInt32(wanted).flatMap { String($0) == wanted ? $0 : nil }
        for e in entries where wanted.isEmpty || e.config.name == wanted || e.id == wantedID {
            answer.append(Imsg(type: MessageType.vmdInfoVMData.rawValue, peerID: client, data: e.statusPayload))
        }
        // All of them: the vhost-user backends too, after the VMs.
        if wanted.isEmpty {
            for b in parent.vhostUsers?.infos ?? [] {
                answer.append(Imsg(type: MessageType.vmdInfoBackendData.rawValue, peerID: client, data: b.encoded()))
            }
        }
        answer.append(Imsg(type: MessageType.vmdInfoVMEnd.rawValue, peerID: client))
        parent.send(.control, answer)
    }

    func startRequest(_ client: UInt32, _ c: ClientCredentials, _ req: StartRequest) throws {
        // Paths in a request are opened by the daemon as root: only root may
        // give them (or create VMs); other users start the VMs they own.
        if case .denied(let why) = ControlAuthorization.mayStart(with: req, c) {
            fail(client, EPERM, "start \(req.name): \(why)")
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
            var fmt: DiskFormat? = nil
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

    func stopRequest(_ client: UInt32, _ c: ClientCredentials, _ req: VMRequest) throws {
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

    func vmRequest(_ type: MessageType, _ client: UInt32, _ c: ClientCredentials, _ req: VMRequest) throws {
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
        switch LaunchBuilder.prepare(vmid: e.id, config: e.config, ownerUID: e.ownership.uid,
                                     network: NetworkSettings(parent.config)) {
        case .failure(let refusal):
            Log.warning("start \(name): \(refusal.message)")
            if let r = requester { fail(r, refusal.code, "start \(name): \(refusal.message)") }
            e.lifecycle.refused()
            forgetIfAdHoc(e)
        case .success(let launch):
            e.launch = launch
            e.lifecycle.launching()
            e.startRequester = requester
            if launch.isComplete {
                sendLaunch(e)
            } else {
                for tap in launch.tapRequests {
                    parent.send(.priv, Imsg(type: MessageType.privOpenTap.rawValue, peerID: e.id, data: tap.encoded()))
                }
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
              e.state == .starting, var launch = e.launch, !launch.isComplete else {
            if let f = m.fd { FD.close(f) }
            return
        }
        guard let fd = m.fd else {
            let reason = String(decoding: m.data, as: UTF8.self)
            launch.closeDescriptors()
            e.launch = nil
            e.lifecycle.refused()
            Log.warning("start \(e.config.name): tap: \(reason)")
            if let r = e.startRequester { fail(r, EIO, "start \(e.config.name): tap: \(reason)") }
            e.startRequester = nil
            forgetIfAdHoc(e)
            return
        }
        Log.debug("vm \(e.config.name): tap \(String(decoding: m.data, as: UTF8.self))")
        launch.attachTap(fd)
        e.launch = launch
        if launch.isComplete { sendLaunch(e) }
    }

    func sendLaunch(_ e: Entry) {
        guard let launch = e.launch else { return }
        parent.send(.vmm, Imsg(type: MessageType.vmmStartVM.rawValue, peerID: e.id, data: launch.spec.encoded()))
        for fd in launch.descriptors {
            parent.send(.vmm, Imsg(type: MessageType.vmmStartVMFD.rawValue, peerID: e.id, fd: fd))
        }
        e.launch = nil
        parent.send(.vmm, Imsg(type: MessageType.vmmStartVMEnd.rawValue, peerID: e.id))
        Log.info("vm \(e.config.name): starting (id \(e.id))")
    }

    func stop(_ e: Entry, force: Bool) {
        guard e.lifecycle.stop(processExists: e.pid != 0) == .send else { return }
        parent.send(.vmm, Imsg(type: MessageType.vmmStopVM.rawValue, peerID: e.id,
                               data: VMStopCommand(force: force).encoded()))
        Log.info("vm \(e.config.name): stopping\(force ? " (forced)" : "")")
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
            e.deviceRestarts = [:]
            e.tty = Self.isPTY(started.tty) ? started.tty : ""
            if !started.tty.isEmpty && e.tty.isEmpty {
                Log.warning("vm \(e.config.name): ignored console \(started.tty): not a pty")
            }
            let stopNow = e.lifecycle.started()
            Log.info("vm \(e.config.name): running, pid \(e.pid), console \(e.tty)")
            if let c = e.startRequester { reply(c, .vmdStartVMResponse, info(e).encoded()) }
            e.startRequester = nil
            if stopNow { stop(e, force: true) }
        case .vmmDeviceRestarted:
            // From the (guest-facing) VM process: bounded in count and name.
            guard e.state != .stopped, let r = try? DeviceRestartReport(decoding: m.data),
                  e.deviceRestarts[r.device] != nil || e.deviceRestarts.count < Int(DeviceRestartReport.maxDevices)
            else { return }
            e.deviceRestarts[r.device] = r.restarts
        case .vmmPaused, .vmmUnpaused:
            // Only as the answer to a pause/unpause the parent asked for.
            guard pendingReplies[e.id] != nil, e.state == .running || e.state == .paused else { return }
            e.lifecycle.paused(MessageType(rawValue: m.type) == .vmmPaused)
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
        for c in pendingReplies.removeValue(forKey: e.id) ?? [] { fail(c, EINVAL, "vm \(name) stopped") }
        for c in pendingConsole.removeValue(forKey: e.id) ?? [] { fail(c, EINVAL, "console \(name): vm stopped") }
        if let c = e.startRequester {
            fail(c, EIO, "start \(name): \(detail.isEmpty ? "vm exited" : detail)")
            e.startRequester = nil
        }
        switch e.lifecycle.exited(reason, now: Clock.now()) {
        case .restart:
            Log.info("vm \(name): rebooting")
            start(e, requester: nil)
            return
        case .restartLimitReached:
            Log.warning("vm \(name): restarted \(VMLifecycle.restartLimit) times in \(Int(VMLifecycle.restartWindow)) s: stopped")
        case .stopped where reason == .failed:
            Log.warning("vm \(name): \(wasStarting ? "failed to start" : "stopped"): \(detail)")
        case .stopped:
            Log.info("vm \(name): stopped\(detail.isEmpty ? "" : " (\(detail))")")
        }
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
