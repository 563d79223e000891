import VMDControl
import Glibc
import VMDSystem
import Imsg

/// `vmd: control`: owns the control socket. Runs as `_vmd` with no file
/// system access (the socket is bound before the drop), learns each peer's
/// uid/gid with SO_PEERCRED and relays requests to the parent, which decides
/// what that peer may do. Replies come back tagged with the client's id.
final class ControlProcess {
    let child: ChildProcess
    let listenFD: Int32
    var clients: [UInt32: ImsgChannel] = [:]
    var nextClientID: UInt32 = 1
    static let maxClients = 64

    /// The parent binds the socket (as root, with the configured owner) and
    /// passes the listening descriptor as fd 4: control never needs root.
    init(options: DaemonOptions, user: Credentials) {
        child = ChildProcess(role: "control", title: "vmd: control")
        listenFD = 4
        child.onParentMessage = { [unowned self] m in self.fromParent(m) }
        restrict("control", user: user, denyFileSystem: true, policy: SandboxPolicies.control)
        child.sandboxSelfTest()
        child.loop.onReadable(listenFD) { [unowned self] in self.accept() }
    }

    /// Binds the socket as root; mode 0660 with a group owner, else 0600.
    static func bind(path: String, owner: (uid: uid_t, gid: gid_t)) throws -> Int32 {
        let fd = try sys("socket") {
            socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw SystemError("socket path \(path) is too long", code: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
        }
        unlink(path)
        let mask = umask(0o177)
        defer { umask(mask) }
        try sys("bind \(path)") {
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
        }
        try sys("chown \(path)") { chown(path, owner.uid, owner.gid) }
        try sys("chmod \(path)") { chmod(path, owner.gid != 0 ? 0o660 : 0o600) }
        try sys("listen") { listen(fd, 16) }
        return fd
    }

    func accept() {
        guard let fd = Sockets.accept(listenFD) else { return }
        guard clients.count < Self.maxClients else {
            Log.warning("too many control connections; refusing one")
            FD.close(fd)
            return
        }
        guard let cred = try? Peer.credentials(fd) else { FD.close(fd); return }
        let id = nextClientID
        nextClientID &+= 1
        let ch = ImsgChannel(fd: fd, name: "control client \(id) (uid \(cred.uid))", loop: child.loop,
                             onMessage: { [unowned self] _, m in self.fromClient(id, m) },
                             onClose: { [unowned self] _, _ in
                                 self.clients[id] = nil
                                 self.child.parent.send(type: MessageType.ctlClientClosed.rawValue, peerID: id)
                             })
        clients[id] = ch
        var payload: [UInt8] = []
        withUnsafeBytes(of: UInt32(cred.uid)) { payload += $0 }
        withUnsafeBytes(of: UInt32(cred.gid)) { payload += $0 }
        child.parent.send(type: MessageType.ctlClientConnected.rawValue, peerID: id, data: payload)
    }

    func fromClient(_ id: UInt32, _ m: Imsg) {
        // Clients never pass descriptors to the daemon; drop any they send.
        if let f = m.fd { FD.close(f) }
        var relayed = m
        relayed.fd = nil
        relayed.peerID = id
        child.parent.send(relayed)
    }

    func fromParent(_ m: Imsg) {
        guard let ch = clients[m.peerID] else {
            if let f = m.fd { FD.close(f) }
            return
        }
        var reply = m
        reply.peerID = 0
        ch.send(reply)
    }

    func run() -> Never { child.run() }
}
