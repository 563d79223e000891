import VMDControl
import Glibc
import VMDSystem
import Imsg
import VMConfig

/// The `vmd` parent: holds the configuration and the VM table, starts the
/// three children (priv, control, vmm) and relays between them. It never
/// runs guest code or parses guest data.
public final class Parent {
    public enum Role: String, CaseIterable {
        case priv, control, vmm

        /// What the parent accepts from this child (MessagePolicy).
        var route: MessageRoute {
            switch self {
            case .priv: return .privToParent
            case .control: return .controlToParent
            case .vmm: return .vmmToParent
            }
        }
    }

    struct Child {
        let role: Role
        let pid: pid_t
        let channel: ImsgChannel
    }

    let options: DaemonOptions
    let loop = EventLoop()
    var config: VMDConfiguration
    var children: [Role: Child] = [:]
    var shuttingDown = false
    let user: Credentials
    /// VMs, stable ids for the daemon's lifetime.
    var vms: VMTable!
    /// The vhost-user backends of vm.conf.
    var vhostUsers: VhostUserManager!
    /// The control socket this daemon bound (device, inode): on exit it is
    /// removed only if it is still that file, never another daemon's.
    var socketIdentity: (dev: UInt64, ino: UInt64)?

    init(options: DaemonOptions, config: VMDConfiguration, user: Credentials) {
        self.options = options
        self.config = config
        self.user = user
    }

    /// Reads and checks the configuration: `file:line: message` for each
    /// error, all of them, nothing applied.
    /// `missingIsEmpty`: the configured file (start-up, reload) may be
    /// absent; a file named by `vmctl load` must exist.
    static func loadConfiguration(_ options: DaemonOptions,
                                  missingIsEmpty: Bool = true) -> Result<VMDConfiguration, ConfigErrors> {
        var macros: [String: String] = [:]
        for (k, v) in options.macros { macros[k] = v }
        // No vm.conf at all: warn and run with no VMs, as vmd does.
        switch ConfigParser.parse(file: options.configPath, macros: macros, missingIsEmpty: missingIsEmpty) {
        case .failure(let errors):
            return .failure(errors)
        case .success(let config):
            let unsupported = unsupportedStatements(of: config)
            return unsupported.isEmpty ? .success(config) : .failure(ConfigErrors(unsupported))
        }
    }

    func socketOwner() -> (uid: uid_t, gid: gid_t) {
        var uid: uid_t = 0, gid: gid_t = 0
        if let o = config.socketOwner {
            if let u = o.user { uid = UInt32(u).map { uid_t($0) } ?? Users.lookup(u)?.uid ?? 0 }
            if let g = o.group { gid = UInt32(g).map { gid_t($0) } ?? Users.lookupGroup(g) ?? 0 }
        }
        return (uid, gid)
    }

    func start() throws {
        Spawn.ignoreSignal(SIGPIPE)
        // `local inet6`'s random default prefix: drawn now, once (vmd's
        // config_init_localprefix), while /dev/urandom is reachable.
        _ = LocalAddress.startupInet6Prefix
        // One warning for all the processes that would use Landlock (control,
        // VMs, devices): they carry on with seccomp and the unprivileged user.
        if Sandbox.landlockABI == 0 {
            Log.warning("Landlock is not available (an old kernel, or a seccomp filter such as "
                        + "systemd-nspawn's hides it): file system access of the sandboxed "
                        + "processes is not restricted")
        }
        // Before any child exists: a child that dies at once (a sandbox
        // violation at start-up) must still be noticed.
        loop.onSignal(SIGCHLD) { [unowned self] in self.reap() }
        let listenFD = try ControlProcess.bind(path: options.socketPath, owner: socketOwner())
        socketIdentity = Sockets.identity(options.socketPath)
        defer { FD.close(listenFD) }
        for role in Role.allCases {
            let (mine, theirs) = try FD.socketPair()
            let args = ["vmd", "-P", role.rawValue] + options.inheritedFlags
            let pid = try Spawn.spawnSelf(arguments: args,
                                          descriptors: role == .control ? [theirs, listenFD] : [theirs])
            FD.close(theirs)
            let ch = ImsgChannel(fd: mine, name: "parent: \(role.rawValue)", loop: loop,
                                 onMessage: { [unowned self] _, m in self.dispatch(role, m) },
                                 onClose: { [unowned self] _, reason in
                                     if !self.shuttingDown {
                                         Log.debug("\(role.rawValue) channel closed\(reason.map { ": \($0)" } ?? "")")
                                     }
                                 })
            ch.allowedTypes = MessagePolicy.rawTypes(role.route)
            // Control relays clients' requests: if it stops taking the
            // replies, stop taking requests (it always drains, being bounded
            // per client, so this only guards against a stuck control).
            if role == .control { ch.pauseReadingAbove = 4 << 20 }
            children[role] = Child(role: role, pid: pid, channel: ch)
            Log.debug("started \(role.rawValue) process, pid \(pid)")
        }
        vms = VMTable(parent: self)
        vhostUsers = VhostUserManager(options: options, loop: loop,
                                      sendPriv: { [unowned self] m in self.send(.priv, m) },
                                      sendVMM: { [unowned self] m in self.send(.vmm, m) })
        if case .failure(let errors) = vhostUsers.apply(config.vhostUsers) {
            for e in errors.errors { Log.error("\(e)") }
            shutdown(status: 1)
        }
        loop.onSignal(SIGTERM) { [unowned self] in
            Log.info("SIGTERM: shutting down")
            self.shutdown(status: 0)
        }
        loop.onSignal(SIGINT) { [unowned self] in
            Log.info("SIGINT: shutting down")
            self.shutdown(status: 0)
        }
        loop.onSignal(SIGHUP) { [unowned self] in
            Log.info("SIGHUP: reloading \(self.options.configPath)")
            if case .failure(let errs) = self.reload(path: nil) {
                for e in errs.errors { Log.error("\(e)") }
            }
        }
        vms.startConfigured()
        notifySystemd("READY=1")
        Log.info("startup complete")
    }

    func run() -> Never {
        loop.run()
        exit(0)
    }

    func send(_ role: Role, _ m: Imsg) {
        children[role]?.channel.send(m)
    }

    /// Several messages in one write (a status answer: one per VM).
    func send(_ role: Role, _ msgs: [Imsg]) {
        children[role]?.channel.send(msgs)
    }

    private func dispatch(_ role: Role, _ m: Imsg) {
        switch role {
        case .control: vms.fromControl(m)
        case .vmm where m.type == MessageType.vmmBackendStarted.rawValue
                     || m.type == MessageType.vmmBackendExited.rawValue:
            vhostUsers.fromVMM(m)
        case .vmm: vms.fromVMM(m)
        case .priv where m.peerID & VhostUserManager.tapRequestBit != 0: vhostUsers.fromPriv(m)
        case .priv: vms.fromPriv(m)
        }
    }

    private func reap() {
        while let (pid, status) = Spawn.reapAny() {
            guard let child = children.values.first(where: { $0.pid == pid }) else {
                Log.debug("reaped unknown child \(pid): \(status)")
                continue
            }
            children[child.role] = nil
            if shuttingDown {
                Log.debug("\(child.role.rawValue) process \(pid) \(status)")
                continue
            }
            Log.error("\(child.role.rawValue) process \(pid) \(status)")
            shutdown(status: 1)
        }
    }

    /// Stops every child (their VMs go with vmm), waits for all, exits.
    func shutdown(status: Int32) -> Never {
        shuttingDown = true
        notifySystemd("STOPPING=1")
        vhostUsers?.stopAll()
        for child in children.values {
            Spawn.signal(child.pid, SIGTERM)
        }
        // vmm stops its VMs gracefully before exiting; give it time, then insist.
        let deadline = Clock.now() + 15
        while !children.isEmpty && Clock.now() < deadline {
            if let (pid, _) = Spawn.reapAny() {
                if let c = children.values.first(where: { $0.pid == pid }) { children[c.role] = nil }
                continue
            }
            Clock.sleep(seconds: 0.02)
        }
        for child in children.values {
            Log.warning("\(child.role.rawValue) did not exit; killing it")
            Spawn.signal(child.pid, SIGKILL)
            _ = try? Spawn.wait(child.pid)
        }
        children.removeAll()
        if let mine = socketIdentity, let now = Sockets.identity(options.socketPath), mine == now {
            Sockets.remove(options.socketPath)
        }
        Log.info("exiting")
        exit(status)
    }

    /// Re-reads the configuration all-or-nothing.
    func reload(path: String?) -> Result<Void, ConfigErrors> {
        var o = options
        if let path { o.configPath = path }
        switch Parent.loadConfiguration(o, missingIsEmpty: path == nil) {
        case .failure(let e): return .failure(e)
        case .success(let c):
            // Backends first: a socket or file that cannot be had fails the
            // whole reload, with nothing applied.
            if case .failure(let e) = vhostUsers.apply(c.vhostUsers) { return .failure(e) }
            for w in c.warnings { Log.warning("\(w.description)") }
            config = c
            vms.applyConfiguration()
            return .success(())
        }
    }
}
