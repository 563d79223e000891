import Glibc
import CVMDSys

/// Positional I/O on an open file (a disk image, an ISO, a tap): the calls
/// device processes make on their backends. EINTR is retried; other
/// failures are `SystemError`s carrying errno.
public enum FileIO {
    /// Reads up to `count` bytes at `offset`; 0 at end of file.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws -> Int {
        guard offset <= UInt64(Int64.max) else { throw SystemError("pread at \(offset)", code: EINVAL) }
        return try sys("pread at \(offset)") { pread(fd, buffer, count, off_t(offset)) }
    }

    /// Writes up to `count` bytes at `offset`; returns how many were written.
    public static func write(_ fd: Int32, from buffer: UnsafeRawPointer, count: Int, at offset: UInt64) throws -> Int {
        guard offset <= UInt64(Int64.max) else { throw SystemError("pwrite at \(offset)", code: EINVAL) }
        return try sys("pwrite at \(offset)") { pwrite(fd, buffer, count, off_t(offset)) }
    }

    /// Reads one record (a frame from a tap): nil when none is waiting.
    public static func readRecord(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws -> Int? {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            let e = cvmd_errno()
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return nil }
            throw SystemError("read", code: e)
        }
    }

    /// Reads one record scattered over `vectors` (readv: a frame from a tap
    /// straight into guest buffers): nil when none is waiting. A tap returns
    /// the frame's whole length even when the vectors were too short for it.
    public static func readRecord(_ fd: Int32, vectors: UnsafeMutableBufferPointer<iovec>) throws -> Int? {
        guard vectors.count > 0, vectors.count <= 1024 else { throw SystemError("readv", code: EINVAL) }
        while true {
            let n = Glibc.readv(fd, vectors.baseAddress, Int32(vectors.count))
            if n >= 0 { return n }
            let e = cvmd_errno()
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return nil }
            throw SystemError("readv", code: e)
        }
    }

    /// Writes one record gathered from `vectors` (writev: a frame to a tap).
    public static func writeRecord(_ fd: Int32, vectors: UnsafeBufferPointer<iovec>) throws {
        guard vectors.count > 0, vectors.count <= 1024 else { throw SystemError("writev", code: EINVAL) }
        _ = try sys("writev") { Glibc.writev(fd, vectors.baseAddress, Int32(vectors.count)) }
    }

    /// Writes one record (a frame to a tap) whole.
    public static func writeRecord(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) throws {
        _ = try sys("write") { Glibc.write(fd, buffer.baseAddress, buffer.count) }
    }

    /// fdatasync(2): written data (and the metadata needed to read it) is durable.
    public static func syncData(_ fd: Int32) throws {
        try sys("fdatasync") { fdatasync(fd) }
    }

    public enum Deallocation {
        /// The range reads back as zeroes and its blocks are freed.
        case punchHole
        /// The range reads back as zeroes; blocks may stay allocated.
        case zeroRange
    }

    /// fallocate(2) with FALLOC_FL_KEEP_SIZE: the file keeps its length.
    public static func deallocate(_ fd: Int32, _ how: Deallocation, offset: UInt64, length: UInt64) throws {
        guard offset <= UInt64(Int64.max), length <= UInt64(Int64.max) - offset else {
            throw SystemError("fallocate at \(offset)", code: EINVAL)
        }
        let mode = how == .punchHole ? cvmd_fallocate_punch_hole() : cvmd_fallocate_zero_range()
        try sys("fallocate at \(offset)") { cvmd_fallocate(fd, mode, Int64(offset), Int64(length)) }
    }

    /// The size of a regular file or a block device.
    public static func size(of fd: Int32) throws -> UInt64 {
        var info = stat()
        try sys("fstat") { fstat(fd, &info) }
        if info.st_mode & S_IFMT == S_IFBLK {
            let end = try sys("lseek") { lseek(fd, 0, SEEK_END) }
            return UInt64(end)
        }
        return UInt64(max(info.st_size, 0))
    }
}

extension Tap {
    /// Makes a tap opened with IFF_VNET_HDR carry `size`-byte virtio-net
    /// headers, and never block. Before the sandbox forbids ioctl.
    public static func prepare(_ fd: Int32, vnetHeaderSize size: Int32) throws {
        try sys("TUNSETVNETHDRSZ") { cvmd_tap_set_vnet_header_size(fd, size) }
        try FD.setNonBlocking(fd)
    }

    /// TUNSETOFFLOAD: what the tap may hand us unfinished (TUN_F_CSUM,
    /// TUN_F_TSO4/6, TUN_F_TSO_ECN). A device calls it once the guest's
    /// features are known, so its filter allows exactly this request.
    public static func setOffload(_ fd: Int32, flags: UInt32) throws {
        try sys("TUNSETOFFLOAD") { cvmd_tap_set_offload(fd, flags) }
    }

    public static var setOffloadRequest: UInt64 { UInt64(cvmd_tunsetoffload_request()) }
}

/// Advisory locks on whole files (flock(2)), held as long as the open file
/// description lives, so a descriptor passed to another process keeps it.
public enum FileLock {
    /// Takes a shared or exclusive lock without waiting; false if another
    /// holder conflicts.
    public static func tryLock(_ fd: Int32, shared: Bool) -> Bool {
        while flock(fd, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0 {
            if cvmd_errno() != EINTR { return false }
        }
        return true
    }
}
