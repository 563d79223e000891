// What a disk (or ISO) image must do for vioblk and vioscsi, and the raw
// image implementation: pread/pwrite/fdatasync/fallocate on one fd, which
// is all a sandboxed device process may touch.
import Glibc
import Virtio

public struct BlockBackendError: Error, Equatable, CustomStringConvertible {
    public var errno: Int32
    public var operation: String

    public init(errno: Int32, operation: String) {
        self.errno = errno
        self.operation = operation
    }

    /// The backend cannot do this at all (not a failure of this request).
    public var isUnsupported: Bool { errno == EOPNOTSUPP || errno == ENOTSUP || errno == ENOSYS }

    public var description: String {
        "\(operation): \(virtioErrnoDescription(errno))"
    }
}

public protocol BlockBackend: AnyObject {
    /// Size of the image in bytes.
    var capacity: UInt64 { get }
    var isReadOnly: Bool { get }
    var supportsDiscard: Bool { get }
    var supportsWriteZeroes: Bool { get }
    /// Fill `buffer` from `offset`; bytes past the end of the image read as 0.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws
    func flush() throws
    /// Deallocate (the range may read back as anything, here zeroes).
    func discard(offset: UInt64, length: UInt64) throws
    /// The range must read back as zeroes.
    func writeZeroes(offset: UInt64, length: UInt64) throws
}

// fallocate(2) is not exported by Swift's Glibc module (it needs
// _GNU_SOURCE). Its arguments are plain integers, which the Swift and C
// calling conventions pass alike on x86_64 and arm64.
@_silgen_name("fallocate")
private func c_fallocate(_ fd: CInt, _ mode: CInt, _ offset: Int, _ length: Int) -> CInt

private let fallocateKeepSize: CInt = 0x01     // FALLOC_FL_KEEP_SIZE
private let fallocatePunchHole: CInt = 0x02    // FALLOC_FL_PUNCH_HOLE
private let fallocateZeroRange: CInt = 0x10    // FALLOC_FL_ZERO_RANGE

/// A raw image on an open file descriptor (owned by the caller).
public final class RawImageBackend: BlockBackend {
    public let fd: Int32
    public let capacity: UInt64
    public let isReadOnly: Bool
    public var supportsDiscard: Bool { !isReadOnly }
    public var supportsWriteZeroes: Bool { !isReadOnly }
    /// Whether anything may have been written since the last successful
    /// fdatasync. The parent holds the image's lock, so this process is its
    /// only writer: a FLUSH with nothing new to sync needs no system call
    /// (QEMU does the same). True at start, for whatever came before us.
    public private(set) var hasUnflushedWrites = true

    public init(fd: Int32, readOnly: Bool) throws {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw BlockBackendError(errno: errno, operation: "fstat") }
        var size = UInt64(max(info.st_size, 0))
        if info.st_mode & S_IFMT == S_IFBLK {
            let end = lseek(fd, 0, SEEK_END)
            guard end >= 0 else { throw BlockBackendError(errno: errno, operation: "lseek") }
            size = UInt64(end)
        }
        self.fd = fd
        self.capacity = size
        self.isReadOnly = readOnly
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            guard let base = buffer.baseAddress else { return }
            let position = offset &+ UInt64(done)
            guard position <= UInt64(Int64.max) else { throw BlockBackendError(errno: EINVAL, operation: "pread") }
            let n = pread(fd, base + done, buffer.count - done, off_t(position))
            if n < 0 {
                if errno == EINTR { continue }
                throw BlockBackendError(errno: errno, operation: "pread at \(position)")
            }
            if n == 0 {
                // Past the end of a file that shrank under us: zeroes.
                memset(base + done, 0, buffer.count - done)
                return
            }
            done += n
        }
    }

    public func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard !isReadOnly else { throw BlockBackendError(errno: EROFS, operation: "pwrite") }
        hasUnflushedWrites = true
        var done = 0
        while done < buffer.count {
            guard let base = buffer.baseAddress else { return }
            let position = offset &+ UInt64(done)
            guard position <= UInt64(Int64.max) else { throw BlockBackendError(errno: EINVAL, operation: "pwrite") }
            let n = pwrite(fd, base + done, buffer.count - done, off_t(position))
            if n < 0 {
                if errno == EINTR { continue }
                throw BlockBackendError(errno: errno, operation: "pwrite at \(position)")
            }
            done += n
        }
    }

    public func flush() throws {
        guard hasUnflushedWrites else { return }
        while fdatasync(fd) != 0 {
            if errno != EINTR { throw BlockBackendError(errno: errno, operation: "fdatasync") }
        }
        hasUnflushedWrites = false
    }

    public func discard(offset: UInt64, length: UInt64) throws {
        hasUnflushedWrites = true
        try allocate(mode: fallocatePunchHole | fallocateKeepSize, offset: offset, length: length,
                     operation: "discard")
    }

    public func writeZeroes(offset: UInt64, length: UInt64) throws {
        hasUnflushedWrites = true
        do {
            try allocate(mode: fallocateZeroRange | fallocateKeepSize, offset: offset, length: length,
                         operation: "write zeroes")
        } catch let error as BlockBackendError where error.isUnsupported {
            // The file system cannot zero a range in place: write the zeroes.
            let chunk = 64 * 1024
            let zeroes = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
            defer { zeroes.deallocate() }
            memset(zeroes.baseAddress!, 0, chunk)
            var done: UInt64 = 0
            while done < length {
                let count = Int(min(UInt64(chunk), length - done))
                try write(from: UnsafeRawBufferPointer(rebasing: zeroes[0..<count]), at: offset + done)
                done += UInt64(count)
            }
        }
    }

    private func allocate(mode: CInt, offset: UInt64, length: UInt64, operation: String) throws {
        guard !isReadOnly else { throw BlockBackendError(errno: EROFS, operation: operation) }
        guard length > 0 else { return }
        guard offset <= UInt64(Int64.max), length <= UInt64(Int64.max) - offset else {
            throw BlockBackendError(errno: EINVAL, operation: operation)
        }
        while c_fallocate(fd, mode, Int(offset), Int(length)) != 0 {
            if errno != EINTR { throw BlockBackendError(errno: errno, operation: "\(operation) at \(offset)") }
        }
    }
}
