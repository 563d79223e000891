import Glibc
import CVMDSys

public enum ProcessTitle {
    /// Must run once, early, before anything copies argv/environ elsewhere.
    public static func initialize() {
        cvmd_setproctitle_init(CommandLine.argc, CommandLine.unsafeArgv)
    }

    /// What `ps -o args` shows, e.g. `vmd: control`.
    public static func set(_ title: String) {
        cvmd_setproctitle(title)
    }
}

public enum Peer {
    /// SO_PEERCRED of a connected unix socket.
    public static func credentials(_ fd: Int32) throws -> (uid: uid_t, gid: gid_t, pid: pid_t) {
        var uid: uid_t = 0, gid: gid_t = 0, pid: pid_t = 0
        try sys("getsockopt(SO_PEERCRED)") { cvmd_peer_credentials(fd, &uid, &gid, &pid) }
        return (uid, gid, pid)
    }
}

public enum Memfd {
    /// A sized, close-on-exec memfd sealed against shrinking and growing,
    /// so a mapping of it can never be truncated under another process.
    public static func create(name: String, size: Int) throws -> Int32 {
        let fd = try sys("memfd_create") { cvmd_memfd_create(name) }
        do {
            try sys("ftruncate") { ftruncate(fd, off_t(size)) }
            try sys("fcntl(F_ADD_SEALS)") { cvmd_seal_shrink(fd) }
        } catch {
            FD.close(fd)
            throw error
        }
        return fd
    }
}

public enum Pty {
    /// Opens a console pty: raw mode, the master non-blocking; returns
    /// (master, slave, slave path).
    public static func open() throws -> (master: Int32, slave: Int32, name: String) {
        var m: Int32 = -1, s: Int32 = -1
        var name = [CChar](repeating: 0, count: 128)
        try sys("openpty") { cvmd_openpty(&m, &s, &name, name.count) }
        return (m, s, String(cString: name))
    }
}

public enum Tap {
    /// Creates (or attaches to) a tap device with a virtio-net v1 header on
    /// every frame. Returns the fd and the interface name the kernel chose.
    public static func open(name: String? = nil) throws -> (fd: Int32, name: String) {
        var buf = [CChar](repeating: 0, count: 32)
        if let n = name { for (i, c) in n.utf8CString.prefix(15).enumerated() { buf[i] = c } }
        let fd = try sys("open tap \(name ?? "")") { cvmd_tap_open(&buf, buf.count, 1) }
        return (fd, String(cString: buf))
    }
}

public enum Clock {
    /// Monotonic seconds.
    public static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Monotonic nanoseconds (vDSO: no system call), for the spins of a
    /// device process's polling.
    public static func nanos() -> Int {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return ts.tv_sec &* 1_000_000_000 &+ ts.tv_nsec
    }

    /// Seconds since the epoch, UTC (the wall clock, for the guest's RTC).
    public static func wallSeconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec)
    }

    /// Sleeps on the monotonic clock, resuming after signals.
    public static func sleep(seconds: Double) {
        var ts = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - Double(Int(seconds))) * 1e9))
        var rest = timespec()
        while clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &rest) == EINTR { ts = rest }
    }
}

public enum Sockets {
    /// accept4 with close-on-exec and non-blocking; nil when nothing waits.
    public static func accept(_ fd: Int32) -> Int32? {
        let r = cvmd_accept(fd)
        return r >= 0 ? r : nil
    }
}

public enum Random {
    public static func bytes(_ n: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: n)
        var off = 0
        while off < n {
            let r = b.withUnsafeMutableBytes { cvmd_getrandom($0.baseAddress! + off, n - off) }
            if r <= 0 { if cvmd_errno() == EINTR { continue }; break }
            off += r
        }
        return b
    }
}

extension Sockets {
    /// Calls `body` with a `sockaddr_un` for `path` and its length. A path
    /// starting with "@" names the abstract namespace (as $NOTIFY_SOCKET may).
    static func withAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> T) throws -> T {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw SystemError("socket path \(path)", code: ENAMETOOLONG)
        }
        if bytes[0] == UInt8(ascii: "@") { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in bytes.enumerated() { p[i] = b } }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (bytes[0] == 0 ? 0 : 1))
        return try withUnsafePointer(to: &addr) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, length) }
        }
    }

    private static func socket(_ type: Int32) throws -> Int32 {
        try sys("socket") { Glibc.socket(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0) }
    }

    /// A blocking, close-on-exec stream connection to a unix socket path.
    public static func connect(path: String) throws -> Int32 {
        let fd = try socket(Int32(SOCK_STREAM.rawValue))
        do {
            try withAddress(path) { a, l in try sys(path) { Glibc.connect(fd, a, l) } }
        } catch {
            FD.close(fd)
            throw error
        }
        return fd
    }

    /// Throws if `path` is a socket someone listens on (another daemon's)
    /// or something that is not a socket: neither may be replaced.
    public static func checkNotLive(_ path: String) throws {
        guard !path.hasPrefix("@") else { return }
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw SystemError("\(path) exists and is not a socket", code: EEXIST)
        }
        if let fd = try? connect(path: path) {
            FD.close(fd)
            throw SystemError("control socket \(path) is in use (is vmd already running?)", code: EADDRINUSE)
        }
    }

    /// The file at `path` (device, inode), to recognise it later.
    public static func identity(_ path: String) -> (dev: UInt64, ino: UInt64)? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    /// A non-blocking listening socket at `path` (replacing a stale one),
    /// owned by `owner` with `mode`; never briefly more open than that.
    public static func listen(path: String, owner: (uid: uid_t, gid: gid_t), mode: mode_t) throws -> Int32 {
        try checkNotLive(path)
        let fd = try socket(Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue))
        do {
            // Only a stale socket (nobody listening) is replaced; bind
            // fails with EADDRINUSE if another daemon wins a race here.
            unlink(path)
            let mask = umask(0o177)
            defer { umask(mask) }
            try withAddress(path) { a, l in try sys("bind \(path)") { Glibc.bind(fd, a, l) } }
            try sys("chown \(path)") { chown(path, owner.uid, owner.gid) }
            try sys("chmod \(path)") { chmod(path, mode) }
            try sys("listen") { Glibc.listen(fd, 16) }
        } catch {
            FD.close(fd)
            throw error
        }
        return fd
    }

    /// Removes a socket's name from the file system.
    public static func remove(_ path: String) {
        _ = unlink(path)
    }

    /// One datagram to a unix datagram socket (sd_notify); errors ignored.
    public static func sendDatagram(path: String, _ bytes: [UInt8]) {
        guard let fd = try? socket(Int32(SOCK_DGRAM.rawValue)) else { return }
        defer { FD.close(fd) }
        _ = try? withAddress(path) { addr, len in
            bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, addr, len) }
        }
    }
}

public enum SharedMemory {
    /// Maps `size` bytes of `fd` from `offset`, shared, read-write (guest
    /// memory, a vCPU's kvm_run); `what` names it in errors.
    public static func map(fd: Int32, size: Int, offset: Int = 0,
                           what: String = "guest memory") throws -> UnsafeMutableRawPointer {
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(offset))
        if p == MAP_FAILED || p == nil { throw SystemError("mmap \(what)") }
        return p!
    }

    public static func unmap(_ p: UnsafeMutableRawPointer, size: Int) { munmap(p, size) }

    /// The size of a file or memfd.
    public static func size(of fd: Int32) throws -> Int {
        var st = stat()
        try sys("fstat") { fstat(fd, &st) }
        return Int(st.st_size)
    }
}

public enum EventFD {
    /// A close-on-exec, non-blocking eventfd.
    public static func create() throws -> Int32 {
        try sys("eventfd") { cvmd_eventfd() }
    }

    /// Adds one to the counter: the reader wakes.
    public static func signal(_ fd: Int32) {
        var one: UInt64 = 1
        while Glibc.write(fd, &one, 8) < 0 && cvmd_errno() == EINTR {}
    }

    /// Consumes the counter; false when there was nothing to read.
    @discardableResult
    public static func drain(_ fd: Int32) -> Bool {
        var value: UInt64 = 0
        return Glibc.read(fd, &value, 8) == 8
    }
}
