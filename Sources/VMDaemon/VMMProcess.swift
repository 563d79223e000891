import VMDControl
import Glibc
import VMDSystem
import Imsg

/// `vmd: vmm`: starts one `vmd: vm NAME` process per guest (fork+exec of
/// this binary with the VM's descriptors), relays messages between the
/// parent and each VM by vmid (the imsg peerid), and reaps VM processes.
final class VMMProcess {
    struct Running {
        let pid: pid_t
        let channel: ImsgChannel
        var reportedReason: VMStopReason?
        var detail: String
        /// When the VM process must be gone by (a stop is under way).
        var deadline: Double = .infinity
        var deadlineTimer: EventHandle?
        /// vmm killed it at the deadline: why, for the report.
        var killedBecause: String?
    }

    /// A VM process asked to stop must be gone within its own bound plus
    /// this margin; otherwise it is stuck itself (SIGSTOPped, or blocked
    /// somewhere its own deadlines do not reach) and vmm SIGKILLs it, which
    /// takes its device processes with it (parent-death signal).
    static let stopMargin: Double = 0.5
    static var forcedStopDeadline: Double { VMProcess.forcedStopBound + stopMargin }
    /// Graceful: the guest's time to acknowledge, then the forced part.
    static var gracefulStopDeadline: Double { VMProcess.shutdownAckTimeout + forcedStopDeadline }
    /// After the guest acknowledged: its time to power off, then forced.
    static var acknowledgedStopDeadline: Double { VMProcess.guestShutdownTimeout + forcedStopDeadline }

    let child: ChildProcess
    let options: DaemonOptions
    var vms: [UInt32: Running] = [:]
    /// A launch being assembled from vmmStartVM + vmmStartVMFD... + vmmStartVMEnd.
    var pending: [UInt32: (spec: [UInt8], fds: [Int32])] = [:]
    var stopping = false
    /// vhost-user backends being assembled, and running (launch id -> pid).
    var pendingBackends: [UInt32: (launch: BackendLaunch, fds: [Int32])] = [:]
    var backends: [UInt32: pid_t] = [:]

    init(options: DaemonOptions) {
        self.options = options
        child = ChildProcess(role: "vmm", title: "vmd: vmm")
        child.onParentMessage = { [unowned self] m in self.fromParent(m) }
        // The device processes of a VM process killed here die with it
        // (parent-death signal) and are reaped here, not left to init.
        Spawn.becomeSubreaper()
        child.parent.allowedTypes = MessagePolicy.rawTypes(.parentToVMM)
        restrict("vmm", user: nil, denyFileSystem: false, policy: SandboxPolicies.vmm)
        child.sandboxSelfTest()
        child.loop.onSignal(SIGCHLD) { [unowned self] in self.reap() }
    }

    func fromParent(_ m: Imsg) {
        let vmid = m.peerID
        switch MessageType(rawValue: m.type) {
        case .vmmStartVM:
            pending[vmid] = (m.data, [])
        case .vmmStartVMFD:
            if let f = m.fd {
                if pending[vmid] != nil { pending[vmid]!.fds.append(f) } else { FD.close(f) }
            }
        case .vmmStartVMEnd:
            guard let p = pending.removeValue(forKey: vmid) else { return }
            launch(vmid: vmid, spec: p.spec, fds: p.fds)
        case .vmmStartBackend:
            if let f = m.fd { FD.close(f) }
            if let old = pendingBackends.removeValue(forKey: vmid) { for f in old.fds { FD.close(f) } }
            guard let launch = try? BackendLaunch(decoding: m.data) else {
                Log.warning("malformed vhost-user backend launch from the parent")
                return
            }
            pendingBackends[vmid] = (launch, [])
        case .vmmStartBackendFD:
            if let f = m.fd {
                if pendingBackends[vmid] != nil { pendingBackends[vmid]!.fds.append(f) } else { FD.close(f) }
            }
        case .vmmStartBackendEnd:
            guard let p = pendingBackends.removeValue(forKey: vmid) else { return }
            launchBackend(id: vmid, launch: p.launch, fds: p.fds)
        case .vmmStopBackend:
            if let f = m.fd { FD.close(f) }
            if let pid = backends[vmid] { Spawn.signal(pid, SIGTERM) }
        case .vmmStopVM, .vmmPauseVM, .vmmUnpauseVM, .vmmConsoleReplay:
            if let f = m.fd { FD.close(f) }
            guard let vm = vms[vmid] else {
                child.parent.send(type: MessageType.vmmVMExited.rawValue, peerID: vmid,
                                  data: VMExitReport(reason: .stopped, detail: "not running").encoded())
                return
            }
            vm.channel.send(Imsg(type: m.type, peerID: vmid, data: m.data))
            if MessageType(rawValue: m.type) == .vmmStopVM {
                var r = WireReader(m.data)
                let force = ((try? r.u32()) ?? 0) & VMRequest.force != 0
                armDeadline(vmid, seconds: force ? Self.forcedStopDeadline : Self.gracefulStopDeadline)
            }
        default:
            if let f = m.fd { FD.close(f) }
            Log.warning("unexpected message type \(m.type) from the parent")
        }
    }

    func launch(vmid: UInt32, spec: [UInt8], fds: [Int32]) {
        defer { for f in fds { FD.close(f) } }
        do {
            let (mine, theirs) = try FD.socketPair()
            defer { FD.close(theirs) }
            var args = ["vmd", "-V"]
            if options.foreground { args.append("-d") }
            if options.verbosity > 0 { args.append("-" + String(repeating: "v", count: options.verbosity)) }
            let pid = try Spawn.spawnSelf(arguments: args, descriptors: [theirs] + fds)
            let ch = ImsgChannel(fd: mine, name: "vmm: vm \(vmid)", loop: child.loop,
                                 onMessage: { [unowned self] _, m in self.fromVM(vmid, m) },
                                 onClose: { _, _ in })
            ch.allowedTypes = MessagePolicy.rawTypes(.vmToVMM)
            vms[vmid] = Running(pid: pid, channel: ch, reportedReason: nil, detail: "")
            ch.send(type: MessageType.vmmStartVM.rawValue, peerID: vmid, data: spec)
        } catch {
            Log.error("vm \(vmid): cannot start: \(error)")
            child.parent.send(type: MessageType.vmmVMExited.rawValue, peerID: vmid,
                              data: VMExitReport(reason: .failed, detail: "cannot start VM process: \(error)").encoded())
        }
    }

    /// `vmd -P vhost-user` with exactly the parent's descriptors (socket,
    /// status channel, image or tap); the parent hears its pid and its end.
    func launchBackend(id: UInt32, launch: BackendLaunch, fds: [Int32]) {
        defer { for f in fds { FD.close(f) } }
        guard fds.count == launch.descriptorCount else {
            child.parent.send(type: MessageType.vmmBackendExited.rawValue, peerID: id,
                              data: Array("not started: \(fds.count) descriptors, \(launch.descriptorCount) expected".utf8))
            return
        }
        do {
            let pid = try Spawn.spawnSelf(arguments: launch.arguments(foreground: options.foreground,
                                                                      verbosity: options.verbosity),
                                          descriptors: fds)
            backends[id] = pid
            child.parent.send(type: MessageType.vmmBackendStarted.rawValue, peerID: id,
                              data: FrontendReport(pid: pid).encoded())
        } catch {
            child.parent.send(type: MessageType.vmmBackendExited.rawValue, peerID: id,
                              data: Array("cannot start: \(error)".utf8))
        }
    }

    func fromVM(_ vmid: UInt32, _ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        switch MessageType(rawValue: m.type) {
        case .vmmVMExited:
            // The VM says why it is going; the exit status comes with the reap.
            if let report = try? VMExitReport(decoding: m.data) {
                vms[vmid]?.reportedReason = report.reason
                vms[vmid]?.detail = report.detail
            }
        case .vmmciAck:
            // The guest acknowledged a graceful shutdown: it gets its time.
            if let vm = vms[vmid], vm.deadline < .infinity {
                armDeadline(vmid, seconds: Self.acknowledgedStopDeadline, extend: true)
            }
        case .vmmVMStarted:
            // The pid as this process spawned it, whatever the VM says.
            guard var started = try? VMStartedReport(decoding: m.data) else { return }
            started.pid = vms[vmid]?.pid ?? 0
            child.parent.send(type: m.type, peerID: vmid, data: started.encoded())
        default:
            child.parent.send(Imsg(type: m.type, peerID: vmid, data: m.data))
        }
    }

    /// The VM process must be gone `seconds` from now (an earlier deadline
    /// stays unless `extend`); then it is killed.
    func armDeadline(_ vmid: UInt32, seconds: Double, extend: Bool = false) {
        guard var vm = vms[vmid] else { return }
        let at = Clock.now() + seconds
        guard extend || at < vm.deadline else { return }
        if let t = vm.deadlineTimer { child.loop.remove(t) }
        vm.deadline = at
        vm.deadlineTimer = child.loop.after(seconds: seconds) { [unowned self] in
            guard var vm = self.vms[vmid] else { return }
            vm.deadlineTimer = nil
            let why = "the VM process did not stop in \(Int(seconds.rounded(.up))) s: killed"
            Log.warning("vm \(vmid): \(why)")
            vm.killedBecause = why
            self.vms[vmid] = vm
            Spawn.signal(vm.pid, SIGKILL)
        }
        vms[vmid] = vm
    }

    func reap() {
        while let (pid, status) = Spawn.reapAny() {
            if let (id, _) = backends.first(where: { $0.value == pid }) {
                backends[id] = nil
                child.parent.send(type: MessageType.vmmBackendExited.rawValue, peerID: id,
                                  data: Array("backend process \(pid) \(status)".utf8))
                continue
            }
            guard let (vmid, vm) = vms.first(where: { $0.value.pid == pid }) else { continue }
            vms[vmid] = nil
            vm.channel.close(reason: nil)
            if let t = vm.deadlineTimer { child.loop.remove(t) }
            var reason = vm.reportedReason ?? .failed
            var detail = vm.detail
            if let why = vm.killedBecause, vm.reportedReason == nil {
                // A stop was asked for and vmm carried it out.
                reason = .stopped
                detail = why
            } else if status != .exited(0) {
                reason = .failed
                detail = detail.isEmpty ? "VM process \(status)" : "\(detail) (VM process \(status))"
            }
            Log.debug("vm \(vmid) process \(pid) \(status)")
            child.parent.send(type: MessageType.vmmVMExited.rawValue, peerID: vmid,
                              data: VMExitReport(reason: reason, detail: detail).encoded())
        }
        if stopping && vms.isEmpty { exit(0) }
    }

    func run() -> Never {
        // On SIGTERM stop every VM (the VM processes power off their guests'
        // devices and exit), wait for them for a bounded time, then exit.
        child.onTerminate = { [unowned self] in
            self.stopping = true
            for pid in self.backends.values { Spawn.signal(pid, SIGTERM) }
            if self.vms.isEmpty { exit(0) }
            for (vmid, vm) in self.vms {
                Spawn.signal(vm.pid, SIGTERM)
                self.armDeadline(vmid, seconds: Self.gracefulStopDeadline)
            }
            // A guest that acknowledged gets until then, not its 120 s.
            self.child.loop.after(seconds: 10) { [unowned self] in
                for vm in self.vms.values { Spawn.signal(vm.pid, SIGKILL) }
                self.child.loop.after(seconds: 1) { exit(0) }
            }
        }
        child.run()
    }
}
