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
    final class Client {
        let uid: uid_t
        let channel: ImsgChannel
        /// Requests relayed to the parent and not yet answered.
        var inFlight = 0
        init(uid: uid_t, channel: ImsgChannel) { self.uid = uid; self.channel = channel }
    }
    var clients: [UInt32: Client] = [:] { didSet { lastClient = nil } }
    /// The client the last reply went to: a status answer is a run of
    /// replies to one client (no dictionary look-up per VM).
    private var lastClient: (id: UInt32, client: Client)?

    func client(_ id: UInt32) -> Client? {
        if let last = lastClient, last.id == id { return last.client }
        let c = clients[id]
        if let c { lastClient = (id, c) }
        return c
    }
    var nextClientID: UInt32 = 1
    let limits = ControlLimits()

    /// The parent binds the socket (as root, with the configured owner) and
    /// passes the listening descriptor as fd 4: control never needs root.
    init(options: DaemonOptions, user: Credentials) {
        child = ChildProcess(role: "control", title: "vmd: control")
        listenFD = 4
        child.onParentMessage = { [unowned self] m in self.fromParent(m) }
        child.parent.allowedTypes = MessagePolicy.rawTypes(.parentToControl)
        // unowned(unsafe): control lives until it exits (run() never returns);
        // no reference counting per relayed reply.
        child.parent.onFrame = { [unowned(unsafe) self] h in self.fromParent(h) }
        restrict("control", user: user, denyFileSystem: true, policy: SandboxPolicies.control)
        child.sandboxSelfTest()
        child.loop.onReadable(listenFD) { [unowned self] in self.accept() }
    }

    /// Binds the socket as root; mode 0660 with a group owner, else 0600.
    static func bind(path: String, owner: (uid: uid_t, gid: gid_t)) throws -> Int32 {
        try Sockets.listen(path: path, owner: owner, mode: owner.gid != 0 ? 0o660 : 0o600)
    }

    func accept() {
        guard let fd = Sockets.accept(listenFD) else { return }
        guard let cred = try? Peer.credentials(fd) else { FD.close(fd); return }
        let held = clients.values.filter { $0.uid == cred.uid }.count
        if let refusal = limits.refusal(uid: cred.uid, total: clients.count, sameUID: held) {
            Log.warning("refusing a control connection from uid \(cred.uid): \(refusal)")
            FD.close(fd)
            return
        }
        let id = nextClientID
        nextClientID &+= 1
        let ch = ImsgChannel(fd: fd, name: "control client \(id) (uid \(cred.uid))", loop: child.loop,
                             onMessage: { [unowned self] _, m in self.fromClient(id, m) },
                             onClose: { [unowned self] _, _ in
                                 self.clients[id] = nil
                                 self.child.parent.send(type: MessageType.ctlClientClosed.rawValue, peerID: id)
                             })
        // Only client requests are relayed: a client that sends anything
        // else (connection bookkeeping, vmm/priv/device types) is dropped.
        ch.allowedTypes = MessagePolicy.rawTypes(.clientToControl)
        ch.closeOnRefusedType = true
        // A client that does not take its replies is not read from (its
        // requests wait in its socket) and is dropped past the limit.
        ch.pauseReadingAbove = limits.pauseReadingAbove
        ch.maxQueuedBytes = limits.maxQueuedBytes
        clients[id] = Client(uid: cred.uid, channel: ch)
        child.parent.send(type: MessageType.ctlClientConnected.rawValue, peerID: id,
                          data: ClientConnected(uid: UInt32(cred.uid), gid: UInt32(cred.gid)).encoded())
    }

    func fromClient(_ id: UInt32, _ m: Imsg) {
        // Clients never pass descriptors to the daemon; drop any they send.
        if let f = m.fd { FD.close(f) }
        guard MessagePolicy.permits(m.type, on: .clientToControl), let c = clients[id] else { return }
        var relayed = m
        relayed.fd = nil
        relayed.peerID = id
        c.inFlight += 1
        // Requests in flight are bounded per client: the parent's replies
        // to one client cannot pile up faster than it reads them.
        if c.inFlight >= limits.maxInFlight { c.channel.holdReading = true }
        child.parent.send(relayed)
    }

    /// A reply from the parent, still in the channel's read buffer (the
    /// channel checked its type against `.parentToControl` already): relayed
    /// to the client it names as bytes, without decoding it (issue 14).
    /// Only client replies are relayed; anything else (`ping`) is delivered
    /// as a message.
    func fromParent(_ h: ImsgFraming.Header) -> ImsgChannel.FrameAction {
        guard let t = MessageType(rawValue: h.type), MessagePolicy.isClientReply(t) else { return .deliver }
        guard let c = client(h.peerID) else { return .drop }
        if MessagePolicy.isFinalReply(t) { answered(c) }
        // A status answer arrives in one read: relayed in one write.
        return .relay(to: c.channel, peerID: 0)
    }

    /// A reply that came as a message (one with a descriptor: none should).
    /// A client never gets a descriptor (vmd's control passes -1 too).
    func fromParent(_ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        guard MessagePolicy.permits(m.type, on: .parentToControl), let c = client(m.peerID) else { return }
        var reply = m
        reply.peerID = 0
        reply.fd = nil
        if let t = MessageType(rawValue: m.type), MessagePolicy.isFinalReply(t) { answered(c) }
        c.channel.sendSoon(reply)
    }

    private func answered(_ c: Client) {
        guard c.inFlight > 0 else { return }
        c.inFlight -= 1
        if c.inFlight < limits.maxInFlight { c.channel.holdReading = false }
    }

    func run() -> Never { child.run() }
}
