import Glibc
import VMDSystem
import Virtio
import VirtioDevices
import VhostUser
import CVhostUser
import Imsg
import VMDControl
import VMConfig
import DiskImage

/// `vmd -P vhost-user -t KIND -S SOCKET ...`: one of our virtio devices
/// (vioblk, vioscsi, viornd, vionet) as a vhost-user backend for QEMU or
/// any other frontend. It opens its files and binds its socket (or is
/// given both as descriptors, `-L` and `-B`, by a parent that did), then
/// restricts itself like a device process (no file system, `_vmd`,
/// seccomp) and serves one frontend at a time, accepting the next when
/// one disconnects.
/// The device kinds a vhost-user backend can be.
let vhostUserKinds = DeviceKind.allCases.filter { !$0.model.takesHostCommands }.map(\.rawValue)

struct VhostUserOptions: Equatable {
    var kind = ""
    var socketPath: String?
    var listenFD: Int32?
    var backendFD: Int32?
    var imagePath: String?
    var readOnly = false
    var tapName: String?
    var mac: [UInt8] = []
    /// `-l address`: net as a local interface: the tap's host side has
    /// `address` (the first of a /31) and vionet answers the guest's DHCP
    /// with the second.
    var localHost: UInt32?
    /// `-6 address` (with `-l`): `local inet6`: the tap's host side has
    /// this IPv6 address and vionet answers router solicitations with its
    /// /64 (RouterAdvertisement.swift).
    var localHost6: [UInt8] = []
    var owner: String?
    var foreground = false
    var verbosity = 0
    var name: String?
    /// `-C fd`: an imsg channel to the vmd parent that manages this backend
    /// (FrontendReport when a frontend connects or leaves).
    var statusFD: Int32?
    /// blk: `-F raw|qcow2`; nil: qcow2 if the image has its magic, else
    /// raw (as a VM's disk without `format`).
    var format: String?

    static let usage = "usage: vmd -P vhost-user [-drv] -t blk|scsi|rnd|net (-S socket [-u user[:group]] | -L fd)\n       [-i image [-F raw|qcow2] | -n tap | -B fd] [-m lladdr] [-l host-address [-6 host-address6]] [-N name] [-C fd]"

    struct ParseError: Error, CustomStringConvertible { var description: String }

    static func parse(_ args: [String]) throws -> VhostUserOptions {
        var o = VhostUserOptions()
        var i = 0
        func value() throws -> String {
            i += 1
            guard i < args.count else { throw ParseError(description: "option \(args[i - 1]) needs a value\n\(usage)") }
            return args[i]
        }
        func fd(_ s: String) throws -> Int32 {
            guard let n = Int32(s), n >= 3 else { throw ParseError(description: "bad descriptor \(s)") }
            return n
        }
        while i < args.count {
            let a = args[i]
            switch a {
            case "-d": o.foreground = true
            case "-v", "-vv", "-vvv": o.verbosity += a.count - 1
            case "-r": o.readOnly = true
            case "-t": o.kind = try value()
            case "-S": o.socketPath = try value()
            case "-L": o.listenFD = try fd(try value())
            case "-B": o.backendFD = try fd(try value())
            case "-i": o.imagePath = try value()
            case "-n": o.tapName = try value()
            case "-u": o.owner = try value()
            case "-N": o.name = try value()
            case "-C": o.statusFD = try fd(try value())
            case "-l":
                let text = try value()
                guard let a = LocalAddress.parseIPv4(text), a & 1 == 0, a != 0 else {
                    throw ParseError(description: "bad local address \(text) (the first, even, address of a /31)")
                }
                o.localHost = a
            case "-6":
                let text = try value()
                guard let a = LocalAddress.parseIPv6(text), a[0] != 0xff, a[0] != 0 || a[1] != 0 else {
                    throw ParseError(description: "bad local IPv6 address \(text)")
                }
                o.localHost6 = a
            case "-F":
                let f = try value()
                guard f == "raw" || f == "qcow2" else { throw ParseError(description: "-F must be raw or qcow2\n\(usage)") }
                o.format = f
            case "-m":
                let text = try value()
                let parts = text.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count == 6, let bytes = Optional(parts.compactMap { UInt8($0, radix: 16) }), bytes.count == 6 else {
                    throw ParseError(description: "bad lladdr \(text)")
                }
                o.mac = bytes
            default:
                throw ParseError(description: "unknown argument \(a)\n\(usage)")
            }
            i += 1
        }
        // Any row of the device table whose device the guest drives alone
        // (vmmci takes commands from a vmd parent: not a vhost-user device).
        guard let kind = DeviceKind(rawValue: o.kind), !kind.model.takesHostCommands else {
            throw ParseError(description: "-t must be one of \(vhostUserKinds.joined(separator: ", "))\n\(usage)")
        }
        guard (o.socketPath == nil) != (o.listenFD == nil) else {
            throw ParseError(description: "give exactly one of -S socket and -L fd\n\(usage)")
        }
        guard o.localHost6.isEmpty || o.localHost != nil else {
            throw ParseError(description: "-6 needs -l (a local interface)\n\(usage)")
        }
        let sources = [o.imagePath != nil, o.tapName != nil, o.backendFD != nil].filter { $0 }.count
        switch kind.model.backends.first {
        case .disk?, .readOnlyImage?, .baseImage?:
            guard sources == 1, o.tapName == nil else { throw ParseError(description: "\(o.kind) needs -i image or -B fd") }
        case .tap?:
            guard sources == 1, o.imagePath == nil else { throw ParseError(description: "\(o.kind) needs -n tap or -B fd") }
        case nil:
            guard sources == 0 else { throw ParseError(description: "\(o.kind) takes no backend") }
        }
        return o
    }
}

final class VhostUserProcess: VhostUserBackendDelegate {
    /// The image's format as vioblk wants it (["raw"] or ["qcow2"]); a qcow2
    /// image with a backing file is refused: a backend gets one descriptor.
    static func diskFormats(fd: Int32, path: String, format: String?, writable: Bool, name: String) -> [String] {
        do {
            let chain = try BackingChain.resolve(path: path, file: FDImageFile(fd: fd),
                                                 format: format.flatMap { DiskFormat(rawValue: $0) },
                                                 writable: writable) { base in
                throw DiskImageError.invalid("backing file \(base): not supported by vhost-user backends "
                                             + "(give a standalone image: qemu-img convert)")
            }
            return chain.map(\.format.rawValue)
        } catch {
            exitWith("\(name): \(path): \(error)")
        }
    }


    lazy var loop = EventLoop()
    let options: VhostUserOptions
    let name: String
    let listenFD: Int32
    let backend: VhostUserBackend
    let backendFD: Int32?
    var input: BackendInputDevice?
    let model: DeviceModel
    var connection: Int32 = -1
    var connectionWatch: EventHandle?
    var listenWatch: EventHandle?
    var kickWatches: [Int: EventHandle] = [:]
    var tapWatch: EventHandle?
    var framer = VhostUserFramer()
    /// A frontend sending bad requests with REPLY_ACK could flood the log.
    var logBudget = LogBudget()
    var receiveBuffer = [UInt8](repeating: 0, count: 65536)
    /// To the managing vmd parent, when there is one (`-C`).
    var status: ImsgChannel?

    static func main(_ args: [String]) -> Never {
        let options: VhostUserOptions
        do {
            options = try VhostUserOptions.parse(args)
        } catch {
            printError("vmd: \(error)")
            exit(1)
        }
        let name = options.name ?? "vhost-user-\(options.kind)"
        Log.setup(foreground: options.foreground, verbosity: options.verbosity, process: "vhost-user")
        Spawn.ignoreSignal(SIGPIPE)
        ProcessTitle.set("vmd: vhost-user \(name)")
        let p = VhostUserProcess(options: options, name: name)
        p.run()
    }

    func fail(_ message: String) -> Never {
        Log.error("\(name): \(message)")
        exit(1)
    }

    init(options: VhostUserOptions, name: String) {
        self.options = options
        self.name = name
        // The socket: bound here (direct use) or by the parent.
        if let path = options.socketPath {
            var owner: (uid: uid_t, gid: gid_t) = (getuid(), getgid())
            if let spec = options.owner {
                let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
                if let u = Users.lookup(parts[0]) { owner = (u.uid, u.gid) }
                else if let n = uid_t(parts[0]) { owner.uid = n }
                else { Self.exitWith("\(name): no such user \(parts[0])") }
                if parts.count == 2 {
                    if let g = Users.lookupGroup(parts[1]) { owner.gid = g }
                    else if let n = gid_t(parts[1]) { owner.gid = n }
                    else { Self.exitWith("\(name): no such group \(parts[1])") }
                }
            }
            do {
                listenFD = try Sockets.listen(path: path, owner: owner, mode: 0o660)
            } catch {
                Self.exitWith("\(name): \(error)")
            }
        } else {
            listenFD = options.listenFD!
            try? FD.setNonBlocking(listenFD)
        }
        // The backend's file: opened here or by the parent.
        var fd = options.backendFD
        if let path = options.imagePath {
            let readOnly = options.readOnly || options.kind == "scsi"
            do {
                fd = try FD.open(path, flags: (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
            } catch {
                Self.exitWith("\(name): \(error)")
            }
        } else if let tap = options.tapName {
            do {
                fd = try Tap.open(name: tap).fd
            } catch {
                Self.exitWith("\(name): \(error)")
            }
        }
        backendFD = fd
        // The same construction as a VM's device process: the device table.
        guard let kind = DeviceKind(rawValue: options.kind) else { Self.exitWith("\(name): no device kind \(options.kind)") }
        let model = kind.model
        var parameters = DeviceParameters(readOnly: options.readOnly)
        parameters.identifier = options.imagePath.map { String($0.split(separator: "/").last ?? "") } ?? name
        parameters.mac = options.mac.isEmpty ? VioNet.randomMAC(index: 0) : options.mac
        if let host = options.localHost {
            var hostMAC = parameters.mac
            hostMAC[5] &+= 1
            parameters.local = LocalInterface(hostIPv4: host, guestIPv4: host + 1, hostMAC: hostMAC,
                                              hostname: String(name.utf8.prefix(63))!, hostIPv6: options.localHost6)
        }
        if kind == .blk, let fd {
            parameters.diskFormats = Self.diskFormats(fd: fd, path: options.imagePath ?? name, format: options.format,
                                                      writable: !options.readOnly, name: name)
        }
        let backends: [(role: BackendRole, fd: Int32)] = model.backends.compactMap { role in fd.map { (role, $0) } }
        let device: VirtioDevice
        do {
            device = try model.make(DeviceConstruction(name: name, parameters: parameters, backends: backends))
        } catch {
            Self.exitWith("\(name): \(error)")
        }
        input = device as? BackendInputDevice
        self.model = model
        backend = VhostUserBackend(device: device, offersConfig: options.kind == "blk")
    }

    static func exitWith(_ message: String) -> Never {
        Log.error(message)
        exit(1)
    }

    func run() -> Never {
        virtioLogHook = { Log.warning($0) }
        backend.delegate = self
        // Test hook (like VMD_SANDBOX_SELFTEST): `kill-inflight:N` makes the
        // process SIGKILL itself once it has taken N requests, the last one
        // recorded in flight and not completed.
        if let spec = getenv("VMD_VHOST_USER_SELFTEST").map({ String(cString: $0) }),
           spec.hasPrefix("kill-inflight:"), let n = Int(spec.dropFirst("kill-inflight:".count)), n > 0 {
            var taken = 0
            backend.afterTaking = { [name] queue in
                taken += 1
                if taken == n {
                    Log.info("\(name): self-test: SIGKILL with a request of queue \(queue) in flight")
                    raise(SIGKILL)
                }
            }
        }
        FD.closeAll(from: 3, except: [listenFD] + (backendFD.map { [$0] } ?? []) + (options.statusFD.map { [$0] } ?? [])
                        + ((backend.device as? DescriptorOwningDevice)?.ownDescriptors ?? []))
        _ = loop
        if let fd = options.statusFD {
            // The parent that manages this backend: when it goes, so do we.
            status = ImsgChannel(fd: fd, name: "\(name): parent", loop: loop,
                                 onMessage: { _, m in if let f = m.fd { FD.close(f) } },
                                 onClose: { [name] _, _ in
                                     Log.info("\(name): the vmd parent is gone")
                                     exit(0)
                                 })
            status?.allowedTypes = []
        }
        let user = getuid() == 0 ? Users.lookup(Users.daemonUser) : nil
        if getuid() == 0 && user == nil { fail("user \(Users.daemonUser) does not exist") }
        restrict(name, user: user, denyFileSystem: true, policy: SandboxPolicies.vhostUser(model))
        sandboxSelfTest(role: "vhost-user")
        input?.onInputWanted = { [unowned self] in self.watchTap() }
        loop.onSignal(SIGTERM) { [unowned self] in self.loop.exit() }
        watchListener()
        Log.info("\(name): listening for a vhost-user frontend")
        loop.run()
        exit(0)
    }

    func watchListener() {
        guard listenWatch == nil else { return }
        listenWatch = loop.onReadable(listenFD) { [unowned self] in self.accept() }
    }

    func accept() {
        guard connection < 0, let fd = Sockets.accept(listenFD) else { return }
        connection = fd
        if let h = listenWatch { loop.remove(h) }
        listenWatch = nil
        let peer = try? Peer.credentials(fd).pid
        let pid = peer.map { " (pid \($0))" } ?? ""
        Log.info("\(name): frontend connected\(pid)")
        status?.send(type: MessageType.vhostUserFrontend.rawValue, peerID: 0,
                     data: FrontendReport(pid: Int32(peer ?? 0)).encoded())
        connectionWatch = loop.onReadable(fd) { [unowned self] in self.readable() }
    }

    func disconnect(_ reason: String) {
        guard connection >= 0 else { return }
        Log.info("\(name): frontend disconnected: \(reason)")
        status?.send(type: MessageType.vhostUserFrontend.rawValue, peerID: 0, data: FrontendReport(pid: 0).encoded())
        if let h = connectionWatch { loop.remove(h) }
        connectionWatch = nil
        unwatchTap()
        backend.disconnect()
        for fd in framer.takePendingFDs() { FD.close(fd) }
        framer = VhostUserFramer()
        FD.close(connection)
        connection = -1
        watchListener()
    }

    func readable() {
        var fds = [Int32](repeating: -1, count: VhostUserLimits.maxFDs)
        var count: Int32 = 0
        var truncated: Int32 = 0
        let n = receiveBuffer.withUnsafeMutableBytes { b in
            cvhost_recv(connection, b.baseAddress, b.count, &fds, Int32(fds.count), &count, &truncated)
        }
        let received = Array(fds.prefix(Int(count)))
        if n < 0 {
            if errno == EAGAIN || errno == EWOULDBLOCK { return }
            disconnect("recvmsg: \(String(cString: strerror(errno)))")
            return
        }
        if n == 0 {
            for fd in received { FD.close(fd) }
            disconnect("end of file")
            return
        }
        framer.append(receiveBuffer[0..<n], fds: received)
        if truncated != 0 {
            disconnect("too many descriptors with one message")
            return
        }
        do {
            while let message = try framer.next() {
                let request = VhostUserRequest(rawValue: message.request).map { "\($0)" } ?? "request \(message.request)"
                if Log.verbosity > 1 { Log.debug("\(name): \(request) (\(message.payload.count) bytes, \(message.fds.count) fds)") }
                let outcome = backend.handle(message)
                if let error = outcome.error { logBudget.log("\(name): \(error)") }
                if let reply = outcome.reply {
                    let bytes = reply.encoded()
                    let sent = bytes.withUnsafeBytes { cvhost_send(connection, $0.baseAddress, $0.count, outcome.replyFD ?? -1) }
                    if let fd = outcome.replyFD { FD.close(fd) }
                    guard sent == bytes.count else {
                        disconnect("cannot send the reply to \(request)")
                        return
                    }
                } else if let fd = outcome.replyFD {
                    FD.close(fd)
                }
                if outcome.close {
                    disconnect(outcome.error ?? "closed")
                    return
                }
                if input != nil, backend.isDriverReady { watchTap() }
            }
        } catch {
            disconnect("\(error)")
        }
    }

    // MARK: VhostUserBackendDelegate

    func watchKick(queue index: Int, fd: Int32?) {
        if let h = kickWatches.removeValue(forKey: index) { loop.remove(h) }
        guard let fd else { return }
        kickWatches[index] = loop.onReadable(fd) { [unowned self] in self.backend.kick(queue: index) }
    }

    func watchTap() {
        guard tapWatch == nil, let input, connection >= 0 else { return }
        tapWatch = loop.onReadable(input.inputDescriptor) { [unowned self] in
            if !input.backendReadable() { self.unwatchTap() }
        }
    }

    func unwatchTap() {
        if let h = tapWatch { loop.remove(h) }
        tapWatch = nil
    }
}

extension SandboxPolicies {
    /// A vhost-user backend: its device's calls, plus accepting frontends,
    /// mapping their memory (mmap, in every policy) and the inflight memfd.
    static func vhostUser(_ model: DeviceModel) -> SeccompPolicy {
        let device = SandboxPolicies.device(model)
        let extra: [SeccompPolicy.Rule] = ["accept4", "accept", "getsockopt", "fstat", "newfstatat",
                                           "memfd_create", "ftruncate"].map { .allow($0) }
        return SeccompPolicy(name: "vhost-user-\(model.kind.rawValue)", rules: device.rules + extra)
    }
}
