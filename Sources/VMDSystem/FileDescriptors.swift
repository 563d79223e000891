import Glibc
import CVMDSys

/// Thin wrappers for descriptor work. Every descriptor the daemon creates is
/// close-on-exec: only what the spawn helper maps explicitly crosses exec.
public enum FD {
    public static func close(_ fd: Int32) {
        // Never retried: on Linux the descriptor is gone even when close fails.
        if fd >= 0 { _ = Glibc.close(fd) }
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
