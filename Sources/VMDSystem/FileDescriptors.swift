import Glibc
import CVMDSys

/// Thin wrappers for descriptor work. Every descriptor the daemon creates is
/// close-on-exec: only what the spawn helper maps explicitly crosses exec.
public enum FD {
    public static func close(_ fd: Int32) {
        // Never retried: on Linux the descriptor is gone even when close fails.
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    /// A close-on-exec copy (F_DUPFD_CLOEXEC): to hand a descriptor on
    /// while keeping it.
    public static func duplicate(_ fd: Int32) throws -> Int32 {
        try sys("dup") { fcntl(fd, F_DUPFD_CLOEXEC, 3) }
    }

    /// open(2), close-on-exec; `what` names the file in errors.
    public static func open(_ path: String, flags: Int32, what: String? = nil) throws -> Int32 {
        try sys(what ?? path) { Glibc.open(path, flags | O_CLOEXEC) }
    }

    /// One non-blocking write; returns the bytes written, 0 when the
    /// descriptor cannot take any (a console pty nobody drains).
    public static func writeNonBlocking(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return 0 }
        while true {
            let n = Glibc.write(fd, base, bytes.count)
            if n >= 0 { return n }
            if cvmd_errno() == EINTR { continue }
            return 0
        }
    }

    public static func setNonBlocking(_ fd: Int32, _ on: Bool = true) throws {
        let flags = try sys("fcntl(F_GETFL)") { fcntl(fd, F_GETFL) }
        let newFlags = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        try sys("fcntl(F_SETFL)") { fcntl(fd, F_SETFL, newFlags) }
    }

    public static func setCloseOnExec(_ fd: Int32, _ on: Bool = true) throws {
        try sys("fcntl(F_SETFD)") { fcntl(fd, F_SETFD, on ? FD_CLOEXEC : 0) }
    }

    public static func isCloseOnExec(_ fd: Int32) -> Bool {
        fcntl(fd, F_GETFD) & FD_CLOEXEC != 0
    }

    /// A connected pair of close-on-exec stream sockets.
    public static func socketPair(nonBlocking: Bool = false) throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        var type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if nonBlocking { type |= Int32(SOCK_NONBLOCK.rawValue) }
        try sys("socketpair") { socketpair(AF_UNIX, type, 0, &fds) }
        return (fds[0], fds[1])
    }

    /// Reads up to `count` bytes; returns [] at end of file.
    public static func read(_ fd: Int32, count: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        let n = try buf.withUnsafeMutableBytes { (p) throws -> Int in
            try sys("read") { Glibc.read(fd, p.baseAddress, count) }
        }
        return Array(buf[0..<n])
    }

    /// Writes all of `bytes`, retrying short writes (blocking descriptors).
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = try bytes.withUnsafeBytes { (p) throws -> Int in
                try sys("write") { Glibc.write(fd, p.baseAddress! + off, bytes.count - off) }
            }
            off += n
        }
    }

    /// A close-on-exec pipe.
    public static func pipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        try sys("pipe") { Glibc.pipe(&fds) }
        // Nothing is spawned between pipe() and here on this thread.
        try? setCloseOnExec(fds[0])
        try? setCloseOnExec(fds[1])
        return (fds[0], fds[1])
    }

    /// Writes one byte; safe from any thread (a vCPU handing over to the loop).
    public static func writeByte(_ fd: Int32, _ byte: UInt8) {
        var b = byte
        while Glibc.write(fd, &b, 1) < 0 && cvmd_errno() == EINTR {}
    }

    /// Reads one byte; nil when none is waiting or at end of file.
    public static func readByte(_ fd: Int32) -> UInt8? {
        var b: UInt8 = 0
        return Glibc.read(fd, &b, 1) == 1 ? b : nil
    }

    /// fchown(2) of an open descriptor (a pty handed to a VM's owner); the
    /// group is left as it is.
    public static func changeOwner(_ fd: Int32, uid: uid_t) throws {
        try sys("fchown") { fchown(fd, uid, gid_t(bitPattern: -1)) }
    }

    /// Descriptors open in this process (from /proc/self/fd), for tests and audits.
    public static func openDescriptors() -> [Int32] {
        guard let dir = opendir("/proc/self/fd") else { return [] }
        defer { closedir(dir) }
        let own = dirfd(dir)
        var out: [Int32] = []
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if let fd = Int32(name), fd != own { out.append(fd) }
        }
        return out.sorted()
    }

    /// Closes every descriptor from `low` up except those in `keep`.
    /// The log's syslog socket is always kept.
    public static func closeAll(from low: Int32, except keep: [Int32]) {
        let keep = Log.descriptor >= 0 ? keep + [Log.descriptor] : keep
        keep.withUnsafeBufferPointer { cvmd_close_fds_from(low, $0.baseAddress, Int32($0.count)) }
    }
}
