import VMDControl
import Glibc
import VMDSystem
import Imsg

/// Shared start-up of every child role: name the process, die with the
/// parent, talk to it on fd 3 through the event loop.
final class ChildProcess {
    let loop = EventLoop()
    let role: String
    var parent: ImsgChannel!
    var onParentMessage: (Imsg) -> Void = { _ in }
    /// What SIGTERM does; by default the loop ends and the process exits 0.
    lazy var onTerminate: () -> Void = { [unowned self] in self.loop.exit() }

    init(role: String, title: String) {
        self.role = role
        ProcessTitle.set(title)
        Log.setProcessName(role)
        becomeChild()
        parent = ImsgChannel(fd: 3, name: "\(role): parent", loop: loop,
                             onMessage: { [unowned self] _, m in self.handleParent(m) },
                             onClose: { [unowned self] _, _ in
                                 Log.debug("parent closed the channel, exiting")
                                 self.loop.exit()
                             })
        loop.onSignal(SIGTERM) { [unowned self] in
            Log.debug("SIGTERM")
            self.onTerminate()
        }
    }

    private func handleParent(_ m: Imsg) {
        if m.type == MessageType.ping.rawValue {
            parent.send(type: MessageType.pong.rawValue, data: m.data)
            return
        }
        onParentMessage(m)
    }

    /// Test hook (SelfTest.swift): `VMD_SANDBOX_SELFTEST=control:openat`.
    func sandboxSelfTest() { VMDaemon.sandboxSelfTest(role: role) }

    func run() -> Never {
        loop.run()
        exit(0)
    }
}

/// Restricts the calling process: unprivileged user (when given), no new
/// privileges, no file system (when asked), then the seccomp allow-list.
func restrict(_ role: String, user: Credentials?, denyFileSystem: Bool,
              policy: SeccompPolicy) {
    do {
        if let user {
            try Sandbox.dropPrivileges(to: user)
            // The kernel clears the parent-death signal on a change of
            // credentials: arm it again, so a VM process dies with vmm and a
            // device with its VM, whatever killed the parent.
            Spawn.dieWithParent()
        }
        try Sandbox.setNoNewPrivileges()
        if denyFileSystem {
            if Sandbox.landlockABI > 0 {
                try Sandbox.denyFileSystem()
            } else {
                // The parent said so once at start-up (Parent.start).
                Log.debug("Landlock is not available: file system access is not restricted")
            }
        }
        try policy.apply()
    } catch {
        Log.error("cannot restrict the \(role) process: \(error)")
        exit(1)
    }
}

/// Every child's first steps: die with the parent, and leave ^C and hang-ups
/// to it. A terminal's ^C reaches the whole process group, so children wait
/// to be told (SIGTERM, or their parent's channel closing).
func becomeChild() {
    Spawn.dieWithParent()
    Spawn.ignoreSignal(SIGINT)
    Spawn.ignoreSignal(SIGHUP)
    Spawn.ignoreSignal(SIGPIPE)
}

/// For processes whose parent speaks first (a VM, a device): reads the one
/// message that says what to be, or exits with a log line naming `what`.
func readStartMessage<Payload>(fd: Int32, expecting type: MessageType, what: String,
                                decode: ([UInt8]) throws -> Payload) -> (ImsgBuffer, Payload) {
    becomeChild()
    let buffer = ImsgBuffer(fd: fd)
    do {
        let m = try buffer.readMessage()
        if let f = m.fd { FD.close(f) }
        guard MessageType(rawValue: m.type) == type else {
            Log.error("expected \(what), got message type \(m.type)")
            exit(1)
        }
        do {
            return (buffer, try decode(m.data))
        } catch {
            Log.error("bad \(what): \(error)")
            exit(1)
        }
    } catch {
        Log.error("no \(what): \(error)")
        exit(1)
    }
}

/// What `ps` shows (`vmd: vm web vioblk0`) and what log lines start with.
func nameThisProcess(_ name: String) {
    ProcessTitle.set("vmd: \(name)")
    Log.setProcessName(name)
}
