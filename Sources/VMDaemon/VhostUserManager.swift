import Glibc
import VMDSystem
import VMDControl
import Imsg
import VMConfig
import VirtioDevices

/// The parent's vhost-user backends (`vhost-user NAME { ... }` in vm.conf).
/// The parent binds each socket as root with the stanza's owner (as it does
/// the control socket) and opens the disk or ISO image (as the launch code
/// does for a VM); the backend process, `vmd -P vhost-user -L 3 -C 4 [-B 5]`,
/// gets only those descriptors and restricts itself like a device process.
/// A backend that dies is started again on the same socket with the same
/// descriptors; one that dies `maxDeathsWithoutFrontend` times in a row
/// without a frontend having connected is given up.
final class VhostUserManager {
    /// Consecutive deaths without a frontend connecting before giving up.
    static let maxDeathsWithoutFrontend = 5

    final class Backend {
        let config: VhostUserConfiguration
        let listenFD: Int32
        /// The image, or for net the tap once priv has opened it.
        var fileFD: Int32?
        let identity: (dev: UInt64, ino: UInt64)?
        /// net: the address, chosen once so a restart keeps it.
        var mac: [UInt8] = []
        /// net: the priv request (imsg peer id) the tap will answer.
        var tapRequest: UInt32 = 0
        var tapName = ""
        var pid: pid_t = 0
        var channel: ImsgChannel?
        var frontendPID: Int32 = 0
        var restarts: UInt32 = 0
        var deathsWithoutFrontend = 0
        var failed = false
        var respawnTimer: EventHandle?

        init(config: VhostUserConfiguration, listenFD: Int32, fileFD: Int32?,
             identity: (dev: UInt64, ino: UInt64)?) {
            self.config = config
            self.listenFD = listenFD
            self.fileFD = fileFD
            self.identity = identity
        }

        var state: String {
            if !config.enabled { return "disabled" }
            if failed { return "failed" }
            if pid == 0 { return "restarting" }
            return frontendPID != 0 ? "connected" : "listening"
        }

        var info: BackendInfo {
            BackendInfo(name: config.name, kind: config.kind?.rawValue ?? "", socket: config.socketPath ?? "",
                        state: state, frontendPID: frontendPID, restarts: restarts)
        }
    }

    let options: DaemonOptions
    let loop: EventLoop
    /// In configuration order.
    private(set) var backends: [Backend] = []
    /// Sends a message to priv (the taps of net backends).
    let sendPriv: (Imsg) -> Void
    /// Priv replies for backends carry peer ids with this bit; VM ids never do.
    static let tapRequestBit: UInt32 = 0x8000_0000
    private var nextTapRequest: UInt32 = 0

    init(options: DaemonOptions, loop: EventLoop, sendPriv: @escaping (Imsg) -> Void) {
        self.options = options
        self.loop = loop
        self.sendPriv = sendPriv
    }

    var infos: [BackendInfo] { backends.map(\.info) }

    // MARK: configuration

    /// Makes the running backends those of `configs`, all or nothing: the
    /// sockets and files of new backends are bound and opened first; if
    /// any fails, nothing changes. A backend whose stanza changed is
    /// stopped and started again; unchanged ones keep running.
    func apply(_ configs: [VhostUserConfiguration]) -> Result<Void, ConfigErrors> {
        let wanted = configs.filter { $0.enabled }
        let keep = backends.filter { b in wanted.contains { sameBackend($0, b.config) } }
        let stop = backends.filter { b in !keep.contains { $0 === b } }
        let add = wanted.filter { c in !keep.contains { sameBackend($0.config, c) } }
        // A new backend on a socket path a stopping one holds: that one
        // goes first (its socket is removed), or the bind below would find
        // the socket alive.
        let stopFirst = stop.filter { b in add.contains { $0.socketPath == b.config.socketPath } }
        for b in stopFirst { stopBackend(b) }
        var prepared: [Backend] = []
        var errors: [ConfigError] = []
        for c in add {
            switch prepare(c) {
            case .success(let b): prepared.append(b)
            case .failure(let problem): errors.append(ConfigError(c.location, problem.message))
            }
        }
        if !errors.isEmpty {
            for b in prepared { release(b) }
            // The stopped ones whose socket was wanted are started again.
            for b in stopFirst {
                if case .success(let again) = prepare(b.config) {
                    backends.append(again)
                    if again.config.kind == .net { requestTap(again) } else { start(again) }
                }
            }
            return .failure(ConfigErrors(errors))
        }
        for b in stop where !stopFirst.contains(where: { $0 === b }) { stopBackend(b) }
        backends = backends.filter { b in keep.contains { $0 === b } }
        for b in prepared {
            backends.append(b)
            if b.config.kind == .net { requestTap(b) } else { start(b) }
        }
        // Configuration order.
        backends.sort { a, b in
            (wanted.firstIndex { $0.name == a.config.name } ?? 0) < (wanted.firstIndex { $0.name == b.config.name } ?? 0)
        }
        return .success(())
    }

    struct Problem: Error { var message: String }

    /// The same stanza apart from where it was written.
    private func sameBackend(_ a: VhostUserConfiguration, _ b: VhostUserConfiguration) -> Bool {
        var a = a, b = b
        a.location = b.location
        if var d = a.disk, let e = b.disk { d.location = e.location; a.disk = d }
        return a == b
    }

    private func owner(_ o: Owner?) -> (uid: uid_t, gid: gid_t) {
        var uid: uid_t = 0, gid: gid_t = 0
        if let o {
            if let u = o.user { uid = UInt32(u).map { uid_t($0) } ?? Users.lookup(u)?.uid ?? 0 }
            if let g = o.group { gid = UInt32(g).map { gid_t($0) } ?? Users.lookupGroup(g) ?? 0 }
        }
        return (uid, gid)
    }

    /// Opens the backend's file and binds its socket, as root.
    private func prepare(_ c: VhostUserConfiguration) -> Result<Backend, Problem> {
        guard let path = c.socketPath, let kind = c.kind else { return .failure(Problem(message: "vhost-user \"\(c.name)\": incomplete")) }
        var fileFD: Int32?
        do {
            switch kind {
            case .blk:
                guard let disk = c.disk else { return .failure(Problem(message: "vhost-user \"\(c.name)\": no disk")) }
                fileFD = try FD.open(disk.path, flags: (c.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
            case .scsi:
                guard let iso = c.cdrom else { return .failure(Problem(message: "vhost-user \"\(c.name)\": no cdrom")) }
                fileFD = try FD.open(iso, flags: O_RDONLY | O_CLOEXEC)
            case .rnd:
                break
            case .net:
                break // the tap comes from priv once the socket is bound
            }
        } catch {
            return .failure(Problem(message: "vhost-user \"\(c.name)\": \(error)"))
        }
        do {
            let o = owner(c.owner)
            let fd = try Sockets.listen(path: path, owner: o, mode: o.gid != 0 ? 0o660 : 0o600)
            return .success(Backend(config: c, listenFD: fd, fileFD: fileFD, identity: Sockets.identity(path)))
        } catch {
            if let f = fileFD { FD.close(f) }
            return .failure(Problem(message: "vhost-user \"\(c.name)\": \(error)"))
        }
    }

    /// Closes its descriptors and removes its socket if it is still ours.
    private func release(_ b: Backend) {
        FD.close(b.listenFD)
        if let f = b.fileFD { FD.close(f) }
        if let path = b.config.socketPath, let mine = b.identity, let now = Sockets.identity(path), mine == now {
            Sockets.remove(path)
        }
    }

    private func stopBackend(_ b: Backend) {
        if let t = b.respawnTimer { loop.remove(t) }
        b.respawnTimer = nil
        b.channel?.close(reason: nil)
        b.channel = nil
        if b.pid != 0 {
            Log.info("vhost-user \(b.config.name): stopping backend process \(b.pid)")
            Spawn.signal(b.pid, SIGTERM)
            b.pid = 0
        }
        release(b)
        backends.removeAll { $0 === b }
    }

    // MARK: taps

    /// Asks priv for the backend's tap, as for a VM's interface.
    private func requestTap(_ b: Backend) {
        nextTapRequest = (nextTapRequest &+ 1) & ~Self.tapRequestBit
        b.tapRequest = Self.tapRequestBit | nextTapRequest
        if b.mac.isEmpty { b.mac = b.config.lladdr?.bytes ?? VioNet.randomMAC(index: 0) }
        sendPriv(Imsg(type: MessageType.privOpenTap.rawValue, peerID: b.tapRequest,
                      data: Array((b.config.interfaceName ?? "").utf8)))
    }

    /// priv's answer: the tap (then the backend starts) or why not.
    func fromPriv(_ m: Imsg) {
        guard MessageType(rawValue: m.type) == .privTapOpened,
              let b = backends.first(where: { $0.tapRequest == m.peerID && $0.fileFD == nil }) else {
            if let f = m.fd { FD.close(f) }
            return
        }
        guard let fd = m.fd else {
            b.failed = true
            Log.error("vhost-user \(b.config.name): tap: \(String(decoding: m.data.prefix(512), as: UTF8.self))")
            return
        }
        b.fileFD = fd
        b.tapName = String(decoding: m.data.prefix(15), as: UTF8.self)
        Log.info("vhost-user \(b.config.name): tap \(b.tapName)")
        start(b)
    }

    // MARK: processes

    private func start(_ b: Backend) {
        b.respawnTimer = nil
        guard let kind = b.config.kind else { return }
        do {
            let (mine, theirs) = try FD.socketPair()
            defer { FD.close(theirs) }
            var args = ["vmd", "-P", "vhost-user", "-t", kind.rawValue, "-N", b.config.name, "-L", "3", "-C", "4"]
            var fds = [b.listenFD, theirs]
            if let f = b.fileFD {
                args += ["-B", "5"]
                fds.append(f)
            }
            if b.config.readOnly { args.append("-r") }
            if !b.mac.isEmpty { args += ["-m", b.mac.map { String($0, radix: 16) }.joined(separator: ":")] }
            if options.foreground { args.append("-d") }
            if options.verbosity > 0 { args.append("-" + String(repeating: "v", count: options.verbosity)) }
            let pid = try Spawn.spawnSelf(arguments: args, descriptors: fds)
            b.pid = pid
            b.frontendPID = 0
            let ch = ImsgChannel(fd: mine, name: "parent: vhost-user \(b.config.name)", loop: loop,
                                 onMessage: { [unowned self, weak b] _, m in
                                     if let f = m.fd { FD.close(f) }
                                     guard let b, b.pid != 0, self.backends.contains(where: { $0 === b }) else { return }
                                     self.report(b, m)
                                 },
                                 onClose: { _, _ in })
            ch.allowedTypes = MessagePolicy.rawTypes(.vhostUserToParent)
            b.channel = ch
            Log.info("vhost-user \(b.config.name): backend process \(pid) on \(b.config.socketPath ?? "")")
        } catch {
            Log.error("vhost-user \(b.config.name): cannot start the backend process: \(error)")
            died(b, detail: "\(error)")
        }
    }

    private func report(_ b: Backend, _ m: Imsg) {
        guard MessageType(rawValue: m.type) == .vhostUserFrontend,
              let r = try? FrontendReport(decoding: m.data) else { return }
        b.frontendPID = r.pid
        // It served a frontend: its next death is not part of a crash loop.
        if r.pid != 0 { b.deathsWithoutFrontend = 0 }
    }

    /// A reaped pid: true if it was one of the backends.
    func reaped(_ pid: pid_t, _ status: ExitStatus) -> Bool {
        guard let b = backends.first(where: { $0.pid == pid && pid != 0 }) else { return false }
        b.pid = 0
        b.channel?.close(reason: nil)
        b.channel = nil
        died(b, detail: "backend process \(pid) \(status)")
        return true
    }

    private func died(_ b: Backend, detail: String) {
        b.frontendPID = 0
        b.deathsWithoutFrontend += 1
        if b.deathsWithoutFrontend >= Self.maxDeathsWithoutFrontend {
            b.failed = true
            Log.error("vhost-user \(b.config.name): \(detail); it died \(b.deathsWithoutFrontend) times in a row "
                      + "without serving a frontend: giving up (vmctl reload after fixing it)")
            return
        }
        // A short pause that grows with a crash loop; a frontend with
        // reconnect=1 retries every second.
        let delay = 0.05 * Double(1 << (b.deathsWithoutFrontend - 1))
        Log.warning("vhost-user \(b.config.name): \(detail); restarting it")
        b.restarts += 1
        b.respawnTimer = loop.after(seconds: delay) { [unowned self, weak b] in
            guard let b, self.backends.contains(where: { $0 === b }) else { return }
            self.start(b)
        }
    }

    /// On the way out: every backend is told to stop and its socket removed.
    func stopAll() {
        for b in backends { stopBackend(b) }
    }
}
