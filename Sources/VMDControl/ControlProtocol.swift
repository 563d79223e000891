/// What vmctl and the daemon say to each other over the control socket.
/// Each payload is a WireWriter encoding, decoded with size checks.

public enum VMState: String, Sendable {
    case stopped, starting, running, paused, stopping, waiting, unknown
}

/// One row of `vmctl status`.
public struct VMInfo: Equatable, Sendable {
    public var id: UInt32
    public var pid: Int32          // 0 when stopped
    public var vcpus: UInt32
    public var maxMemory: UInt64   // bytes
    public var curMemory: UInt64   // bytes, 0 when stopped
    public var tty: String         // "/dev/pts/3" or ""
    public var owner: String       // user[:group]
    public var state: String
    public var name: String
    /// Device processes restarted since the VM started, by device name
    /// (only those restarted at least once).
    public var deviceRestarts: [DeviceRestartReport] = []

    public init(id: UInt32, pid: Int32, vcpus: UInt32, maxMemory: UInt64, curMemory: UInt64,
                tty: String, owner: String, state: String, name: String) {
        self.id = id; self.pid = pid; self.vcpus = vcpus; self.maxMemory = maxMemory
        self.curMemory = curMemory; self.tty = tty; self.owner = owner; self.state = state; self.name = name
    }

    public func encoded() -> [UInt8] {
        var w = WireWriter()
        w.u32(id); w.i32(pid); w.u32(vcpus); w.u64(maxMemory); w.u64(curMemory)
        w.string(tty); w.string(owner); w.string(state); w.string(name)
        w.u32(UInt32(deviceRestarts.count))
        for d in deviceRestarts { d.encode(&w) }
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        id = try r.u32(); pid = try r.i32(); vcpus = try r.u32()
        maxMemory = try r.u64(); curMemory = try r.u64()
        tty = try r.string(); owner = try r.string(); state = try r.string(); name = try r.string()
        if r.remaining > 0 {
            let n = try r.u32()
            guard n <= DeviceRestartReport.maxDevices else { throw WireReader.Truncated() }
            deviceRestarts = try (0..<n).map { _ in try DeviceRestartReport(&r) }
        }
    }
}

/// How often one device process of a VM was restarted (issue 12).
public struct DeviceRestartReport: Equatable, Sendable {
    public static let maxDevices: UInt32 = 64
    public var device: String
    public var restarts: UInt32

    public init(device: String, restarts: UInt32) { self.device = device; self.restarts = restarts }

    public func encode(_ w: inout WireWriter) { w.string(device); w.u32(restarts) }

    public init(_ r: inout WireReader) throws {
        device = try r.string(max: 32)
        restarts = try r.u32()
    }

    public func encoded() -> [UInt8] { var w = WireWriter(); encode(&w); return w.bytes }

    public init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        try self.init(&r)
        guard r.remaining == 0 else { throw WireReader.Truncated() }
    }
}

/// `vmctl start`: a configured VM by name, or a new one from flags.
public struct StartRequest: Equatable, Sendable {
    public var name: String
    public var bootPath = ""
    public var memoryBytes: UInt64 = 0
    public var cpus: UInt32 = 0
    public var interfaceCount: UInt32 = 0
    public var disks: [String] = []
    public var cdrom = ""
    public var parent = ""
    public var switchName = ""
    public var localInterface = false
    public var bootDevice = ""

    public init(name: String) { self.name = name }

    public var hasOverrides: Bool {
        !bootPath.isEmpty || memoryBytes != 0 || cpus != 0 || interfaceCount != 0 || !disks.isEmpty
            || !cdrom.isEmpty || !parent.isEmpty || !switchName.isEmpty || localInterface || !bootDevice.isEmpty
    }

    public func encoded() -> [UInt8] {
        var w = WireWriter()
        w.string(name); w.string(bootPath); w.u64(memoryBytes); w.u32(cpus); w.u32(interfaceCount)
        w.u32(UInt32(disks.count)); for d in disks { w.string(d) }
        w.string(cdrom); w.string(parent); w.string(switchName); w.u32(localInterface ? 1 : 0)
        w.string(bootDevice)
        return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        name = try r.string(); bootPath = try r.string(); memoryBytes = try r.u64()
        cpus = try r.u32(); interfaceCount = try r.u32()
        let n = try r.u32()
        guard n <= 16 else { throw WireReader.Truncated() }
        for _ in 0..<n { disks.append(try r.string()) }
        cdrom = try r.string(); parent = try r.string(); switchName = try r.string()
        localInterface = try r.u32() != 0
        bootDevice = try r.string()
    }
}

/// `vmctl stop`, `pause`, `unpause`, `wait`, `console`: a VM by name or id.
public struct VMRequest: Equatable, Sendable {
    public static let force: UInt32 = 1
    public static let wait: UInt32 = 2
    public static let all: UInt32 = 4

    public var name: String
    public var flags: UInt32

    public init(name: String, flags: UInt32 = 0) { self.name = name; self.flags = flags }

    public func encoded() -> [UInt8] {
        var w = WireWriter(); w.string(name); w.u32(flags); return w.bytes
    }

    public init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        name = try r.string(max: 256); flags = try r.u32()
    }
}

/// ctlFail payload: errno + a one-line message.
public struct Failure: Equatable, Sendable, Error, CustomStringConvertible {
    public var code: Int32
    public var message: String
    public init(code: Int32, message: String) { self.code = code; self.message = message }
    public var description: String { message }
    public func encoded() -> [UInt8] { var w = WireWriter(); w.i32(code); w.string(message); return w.bytes }
    public init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes); code = try r.i32(); message = try r.string()
    }
}

/// ctlVerbose: the log level `vmctl log` sets (0 brief, 1 verbose).
public struct VerbosityRequest: Equatable, Sendable, WirePayload {
    public var level: UInt32
    public init(level: UInt32) { self.level = level }
    public func encode(to w: inout WireWriter) { w.u32(level) }
    public init(from r: inout WireReader) throws {
        level = try r.u32()
        guard level <= 1 else { throw WireReader.Truncated() }
    }
}

/// ctlReset: what `vmctl reset` resets (0 all, 1 vms, 2 switches).
public struct ResetRequest: Equatable, Sendable, WirePayload {
    public var what: UInt32
    public init(what: UInt32) { self.what = what }
    public var resetsVMs: Bool { what == 0 || what == 1 }
    public func encode(to w: inout WireWriter) { w.u32(what) }
    public init(from r: inout WireReader) throws {
        what = try r.u32()
        guard what <= 2 else { throw WireReader.Truncated() }
    }
}

/// vmdGetInfoVMRequest: one VM by name or id, or all ("", or no payload
/// at all as vmd's own vmctl sends it).
public struct InfoRequest: Equatable, Sendable, WirePayload {
    public var name: String
    public init(name: String) { self.name = name }
    public func encode(to w: inout WireWriter) { w.string(name) }
    public init(from r: inout WireReader) throws { name = r.remaining == 0 ? "" : try r.string(max: 256) }
}

/// ctlClientConnected (control -> parent only): the peer credentials of a
/// new client, as SO_PEERCRED gave them to control.
public struct ClientConnected: Equatable, Sendable, WirePayload {
    public var uid: UInt32
    public var gid: UInt32
    public init(uid: UInt32, gid: UInt32) { self.uid = uid; self.gid = gid }
    public func encode(to w: inout WireWriter) { w.u32(uid); w.u32(gid) }
    public init(from r: inout WireReader) throws { uid = try r.u32(); gid = try r.u32() }
}

/// vmdInfoBackendData: one vhost-user backend vmd manages, for the second
/// table of `vmctl status` (NAME KIND SOCKET STATE FRONTEND-PID RESTARTS).
public struct BackendInfo: Equatable, Sendable, WirePayload {
    public var name: String
    public var kind: String
    public var socket: String
    /// listening, connected, restarting, failed, disabled.
    public var state: String
    /// The connected frontend's pid (SO_PEERCRED), 0 when none.
    public var frontendPID: Int32
    public var restarts: UInt32

    public init(name: String, kind: String, socket: String, state: String, frontendPID: Int32, restarts: UInt32) {
        self.name = name; self.kind = kind; self.socket = socket; self.state = state
        self.frontendPID = frontendPID; self.restarts = restarts
    }

    public func encode(to w: inout WireWriter) {
        w.string(name); w.string(kind); w.string(socket); w.string(state); w.i32(frontendPID); w.u32(restarts)
    }

    public init(from r: inout WireReader) throws {
        name = try r.string(max: 256); kind = try r.string(max: 16); socket = try r.string(max: 4096)
        state = try r.string(max: 32); frontendPID = try r.i32(); restarts = try r.u32()
    }
}

/// vhostUserFrontend (backend process -> parent): the pid of the frontend
/// that connected (SO_PEERCRED), or 0 when it disconnected.
public struct FrontendReport: Equatable, Sendable, WirePayload {
    public var pid: Int32
    public init(pid: Int32) { self.pid = pid }
    public func encode(to w: inout WireWriter) { w.i32(pid) }
    public init(from r: inout WireReader) throws { pid = try r.i32() }
}
