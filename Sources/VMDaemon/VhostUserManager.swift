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
        /// -1 for a reloaded net backend waiting for its tap (see `pending`).
        var listenFD: Int32
        /// The image, or for net the tap once priv has opened it.
        var fileFD: Int32?
        var identity: (dev: UInt64, ino: UInt64)?
        /// A reloaded net backend waiting for its tap: the running backend
        /// it will take over from once the tap is open.
        weak var replaces: Backend?
        /// net: the address, chosen once so a restart keeps it.
        var mac: [UInt8] = []
        /// net: the priv request (imsg peer id) the tap will answer.
        var tapRequest: UInt32 = 0
        var tapName = ""
        var pid: pid_t = 0
        /// The current launch's id (vmm's reports carry it); 0: none.
        var launch: UInt32 = 0
        /// Sent to vmm, its pid not known yet.
        var starting = false
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
            if starting { return "starting" }
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
    /// Net backends of a reload waiting for their tap while the backends
    /// they replace keep running: the tap is the one thing reload cannot
    /// get at once (priv opens it). Without a tap nothing changes.
    private(set) var pending: [Backend] = []
    /// Sends a message to priv (the taps of net backends).
    let sendPriv: (Imsg) -> Void
    /// Sends a message to vmm, which spawns the backend processes.
    let sendVMM: (Imsg) -> Void
    private var nextLaunch: UInt32 = 0
    /// Priv replies for backends carry peer ids with this bit; VM ids never do.
    static let tapRequestBit: UInt32 = 0x8000_0000
    private var nextTapRequest: UInt32 = 0

    init(options: DaemonOptions, loop: EventLoop, sendPriv: @escaping (Imsg) -> Void,
         sendVMM: @escaping (Imsg) -> Void) {
        self.options = options
        self.loop = loop
        self.sendPriv = sendPriv
        self.sendVMM = sendVMM
    }

    var infos: [BackendInfo] { backends.map(\.info) }

    // MARK: configuration

    /// Makes the running backends those of `configs`, all or nothing: the
    /// sockets and files of new backends are bound and opened first; if
    /// any fails, nothing changes. A backend whose stanza changed is
    /// stopped and started again; unchanged ones keep running.
    func apply(_ configs: [VhostUserConfiguration]) -> Result<Void, ConfigErrors> {
        let wanted = configs.filter { $0.enabled }
        // An earlier reload's net backends still waiting for a tap: this
        // configuration supersedes them (their taps are closed on arrival).
        pending.removeAll()
        // A backend given up (failed) is started afresh, even unchanged:
        // reload is how one says its image or owner has been fixed.
        let keep = backends.filter { b in !b.failed && wanted.contains { sameBackend($0, b.config) } }
        var stop = backends.filter { b in !keep.contains { $0 === b } }
        var add = wanted.filter { c in !keep.contains { sameBackend($0.config, c) } }
        // A changed net backend (same name or socket) that is running: the
        // new one waits for its tap before the old one is stopped, so a
        // tap that cannot be opened leaves the old one serving.
        var deferred: [Backend] = []
        add.removeAll { c in
            guard c.kind == .net,
                  let old = stop.first(where: { !$0.failed && ($0.config.name == c.name || $0.config.socketPath == c.socketPath) })
            else { return false }
            stop.removeAll { $0 === old }
            let b = Backend(config: c, listenFD: -1, fileFD: nil, identity: nil)
            b.replaces = old
            // The same address across the change unless the stanza sets one.
            b.mac = c.lladdr?.bytes ?? old.mac
            deferred.append(b)
            return true
        }
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
        // Kept, and those serving until their successor's tap is open.
        backends = backends.filter { b in keep.contains { $0 === b } || deferred.contains { $0.replaces === b } }
        for b in prepared {
            backends.append(b)
            if b.config.kind == .net { requestTap(b) } else { start(b) }
        }
        for b in deferred {
            Log.info("vhost-user \(b.config.name): changed; the running backend serves until the new tap is open")
            pending.append(b)
            requestTap(b)
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
        if b.launch != 0 {
            Log.info("vhost-user \(b.config.name): stopping backend process \(b.pid)")
            // Its channel closing ends it too; vmm makes sure.
            sendVMM(Imsg(type: MessageType.vmmStopBackend.rawValue, peerID: b.launch))
            b.launch = 0
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
        var tap = TapRequest(name: b.config.interfaceName ?? "")
        tap.description = "vhost-user-\(b.config.name)"
        sendPriv(Imsg(type: MessageType.privOpenTap.rawValue, peerID: b.tapRequest, data: tap.encoded()))
    }

    /// priv's answer: the tap (then the backend starts) or why not.
    func fromPriv(_ m: Imsg) {
        if MessageType(rawValue: m.type) == .privTapOpened,
           let i = pending.firstIndex(where: { $0.tapRequest == m.peerID }) {
            let b = pending.remove(at: i)
            takeOver(b, tap: m)
            return
        }
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

    /// A reloaded net backend's tap came (or did not): with it, the old
    /// backend is stopped and the new one bound and started in its place;
    /// without it, or if its socket cannot be bound, the old one goes on
    /// (or is started again) with its previous configuration.
    private func takeOver(_ b: Backend, tap m: Imsg) {
        let name = b.config.name
        guard let tap = m.fd else {
            Log.error("vhost-user \(name): reload: cannot open its tap (\(String(decoding: m.data.prefix(512), as: UTF8.self))); "
                      + "the backend keeps running with its previous configuration")
            return
        }
        let old = b.replaces.flatMap { o in backends.firstIndex { $0 === o }.map { (o, $0) } }
        if let (o, _) = old { stopBackend(o) }
        switch prepare(b.config) {
        case .success(let ready):
            ready.fileFD = tap
            ready.mac = b.mac
            ready.tapName = String(decoding: m.data.prefix(15), as: UTF8.self)
            backends.insert(ready, at: min(old?.1 ?? backends.count, backends.count))
            Log.info("vhost-user \(name): tap \(ready.tapName)")
            start(ready)
        case .failure(let problem):
            FD.close(tap)
            Log.error("vhost-user \(name): reload: \(problem.message); starting it again with its previous configuration")
            if let (o, index) = old, case .success(let again) = prepare(o.config) {
                again.mac = o.mac
                backends.insert(again, at: min(index, backends.count))
                requestTap(again)
            }
        }
    }

    // MARK: processes

    /// Has vmm start the backend process with duplicates of its
    /// descriptors (the parent keeps the originals for a restart) and one
    /// end of a fresh status channel.
    private func start(_ b: Backend) {
        b.respawnTimer = nil
        guard let kind = b.config.kind else { return }
        do {
            let (mine, theirs) = try FD.socketPair()
            var fds = [theirs]
            do {
                fds.insert(try FD.duplicate(b.listenFD), at: 0)
                if let f = b.fileFD { fds.append(try FD.duplicate(f)) }
            } catch {
                FD.close(mine)
                for f in fds { FD.close(f) }
                throw error
            }
            nextLaunch = (nextLaunch &+ 1) | 1
            b.launch = nextLaunch
            b.pid = 0
            b.starting = true
            b.frontendPID = 0
            let launch = BackendLaunch(name: b.config.name, kind: kind.rawValue, readOnly: b.config.readOnly,
                                       mac: b.mac.map { String($0, radix: 16) }.joined(separator: ":"),
                                       hasFile: b.fileFD != nil,
                                       format: b.config.disk?.format?.rawValue ?? "")
            sendVMM(Imsg(type: MessageType.vmmStartBackend.rawValue, peerID: b.launch, data: launch.encoded()))
            // The channel takes each descriptor over and closes it once sent.
            for f in fds { sendVMM(Imsg(type: MessageType.vmmStartBackendFD.rawValue, peerID: b.launch, fd: f)) }
            sendVMM(Imsg(type: MessageType.vmmStartBackendEnd.rawValue, peerID: b.launch))
            let ch = ImsgChannel(fd: mine, name: "parent: vhost-user \(b.config.name)", loop: loop,
                                 onMessage: { [unowned self, weak b] _, m in
                                     if let f = m.fd { FD.close(f) }
                                     guard let b, self.backends.contains(where: { $0 === b }) else { return }
                                     self.report(b, m)
                                 },
                                 onClose: { _, _ in })
            ch.allowedTypes = MessagePolicy.rawTypes(.vhostUserToParent)
            b.channel = ch
        } catch {
            Log.error("vhost-user \(b.config.name): cannot start the backend process: \(error)")
            died(b, detail: "\(error)")
        }
    }

    /// vmm's reports: the backend's pid, or its end. A report for an
    /// earlier launch (a backend since stopped or restarted) is ignored.
    func fromVMM(_ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        guard let b = backends.first(where: { $0.launch == m.peerID && $0.launch != 0 }) else { return }
        switch MessageType(rawValue: m.type) {
        case .vmmBackendStarted:
            guard b.starting, let r = try? FrontendReport(decoding: m.data) else { return }
            b.starting = false
            b.pid = r.pid
            Log.info("vhost-user \(b.config.name): backend process \(r.pid) on \(b.config.socketPath ?? "")")
        case .vmmBackendExited:
            b.launch = 0
            b.pid = 0
            b.starting = false
            b.channel?.close(reason: nil)
            b.channel = nil
            died(b, detail: String(decoding: m.data.prefix(512), as: UTF8.self))
        default:
            break
        }
    }

    private func report(_ b: Backend, _ m: Imsg) {
        guard MessageType(rawValue: m.type) == .vhostUserFrontend,
              let r = try? FrontendReport(decoding: m.data) else { return }
        b.frontendPID = r.pid
        // It served a frontend: its next death is not part of a crash loop.
        if r.pid != 0 { b.deathsWithoutFrontend = 0 }
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
        pending.removeAll()
        for b in backends { stopBackend(b) }
    }
}
