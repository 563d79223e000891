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
    }

    let child: ChildProcess
    let options: DaemonOptions
    var vms: [UInt32: Running] = [:]
    /// A launch being assembled from vmmStartVM + vmmStartVMFD... + vmmStartVMEnd.
    var pending: [UInt32: (spec: [UInt8], fds: [Int32])] = [:]
    var stopping = false

    init(options: DaemonOptions) {
        self.options = options
        child = ChildProcess(role: "vmm", title: "vmd: vmm")
        child.onParentMessage = { [unowned self] m in self.fromParent(m) }
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
        case .vmmStopVM, .vmmPauseVM, .vmmUnpauseVM, .vmmConsoleReplay:
            if let f = m.fd { FD.close(f) }
            guard let vm = vms[vmid] else {
                child.parent.send(type: MessageType.vmmVMExited.rawValue, peerID: vmid,
                                  data: exitPayload(.stopped, "not running"))
                return
            }
            vm.channel.send(Imsg(type: m.type, peerID: vmid, data: m.data))
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
                              data: exitPayload(.failed, "cannot start VM process: \(error)"))
        }
    }

    func fromVM(_ vmid: UInt32, _ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        switch MessageType(rawValue: m.type) {
        case .vmmVMExited:
            // The VM says why it is going; the exit status comes with the reap.
            var r = WireReader(m.data)
            if let code = try? r.u32(), let reason = VMStopReason(rawValue: code) {
                vms[vmid]?.reportedReason = reason
                vms[vmid]?.detail = (try? r.string()) ?? ""
            }
        case .vmmVMStarted:
            var w = WireWriter()
            w.i32(vms[vmid]?.pid ?? 0)
            child.parent.send(type: m.type, peerID: vmid, data: w.bytes + m.data)
        default:
            child.parent.send(Imsg(type: m.type, peerID: vmid, data: m.data))
        }
    }

    func exitPayload(_ reason: VMStopReason, _ detail: String) -> [UInt8] {
        var w = WireWriter()
        w.u32(reason.rawValue)
        w.string(detail)
        return w.bytes
    }

    func reap() {
        while let (pid, status) = Spawn.reapAny() {
            guard let (vmid, vm) = vms.first(where: { $0.value.pid == pid }) else { continue }
            vms[vmid] = nil
            vm.channel.close(reason: nil)
            var reason = vm.reportedReason ?? .failed
            var detail = vm.detail
            if status != .exited(0) {
                reason = .failed
                detail = detail.isEmpty ? "VM process \(status)" : "\(detail) (VM process \(status))"
            }
            Log.debug("vm \(vmid) process \(pid) \(status)")
            child.parent.send(type: MessageType.vmmVMExited.rawValue, peerID: vmid,
                              data: exitPayload(reason, detail))
        }
        if stopping && vms.isEmpty { exit(0) }
    }

    func run() -> Never {
        // On SIGTERM stop every VM (the VM processes power off their guests'
        // devices and exit), wait for them for a bounded time, then exit.
        child.onTerminate = { [unowned self] in
            self.stopping = true
            if self.vms.isEmpty { exit(0) }
            for vm in self.vms.values { kill(vm.pid, SIGTERM) }
            self.child.loop.after(seconds: 10) { [unowned self] in
                for vm in self.vms.values { kill(vm.pid, SIGKILL) }
                self.child.loop.after(seconds: 1) { exit(0) }
            }
        }
        child.run()
    }
}
