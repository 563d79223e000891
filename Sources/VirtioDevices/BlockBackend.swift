// What a disk (or ISO) image must do for vioblk and vioscsi, and the raw
// image implementation: pread/pwrite/fdatasync/fallocate on one fd, which
// is all a sandboxed device process may touch (through VMDSystem's FileIO).
import Glibc
import Virtio
import VMDSystem
import DiskImage

public struct BlockBackendError: Error, Equatable, CustomStringConvertible {
    public var errno: Int32
    public var operation: String

    public init(errno: Int32, operation: String) {
        self.errno = errno
        self.operation = operation
    }

    init(_ error: SystemError) {
        self.init(errno: error.code, operation: error.what)
    }

    /// Runs `body`, turning a system error into a block backend error.
    static func mapping<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as SystemError { throw BlockBackendError(e) }
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

/// A backend whose data vioblk can move itself, asynchronously: it says
/// where a range lives (DiskImage's extents) and which descriptor a FLUSH
/// makes durable. Ranges it calls `.synchronous` go through read/write.
public protocol AsyncBlockBackend: BlockBackend {
    func extents(at offset: UInt64, length: UInt64, forWrite: Bool) throws -> [DiskExtent]
    /// fdatasync of this descriptor makes every completed write durable
    /// (nil: FLUSH calls `flush()`).
    var flushDescriptor: Int32? { get }
}

/// A raw image on an open file descriptor (owned by the caller).
public final class RawImageBackend: AsyncBlockBackend {
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
        self.fd = fd
        self.capacity = try BlockBackendError.mapping { try FileIO.size(of: fd) }
        self.isReadOnly = readOnly
    }

    public var flushDescriptor: Int32? { isReadOnly ? nil : fd }

    public func extents(at offset: UInt64, length: UInt64, forWrite: Bool) throws -> [DiskExtent] {
        if forWrite && isReadOnly { throw BlockBackendError(errno: EROFS, operation: "pwrite") }
        return [.file(fd: fd, offset: offset, length: length)]
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            guard let base = buffer.baseAddress else { return }
            let position = offset &+ UInt64(done)
            let n = try BlockBackendError.mapping {
                try FileIO.read(fd, into: base + done, count: buffer.count - done, at: position)
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
            done += try BlockBackendError.mapping {
                try FileIO.write(fd, from: base + done, count: buffer.count - done, at: position)
            }
        }
    }

    public func flush() throws {
        guard hasUnflushedWrites else { return }
        try BlockBackendError.mapping { try FileIO.syncData(fd) }
        hasUnflushedWrites = false
    }

    public func discard(offset: UInt64, length: UInt64) throws {
        hasUnflushedWrites = true
        try deallocate(.punchHole, offset: offset, length: length, operation: "discard")
    }

    public func writeZeroes(offset: UInt64, length: UInt64) throws {
        hasUnflushedWrites = true
        do {
            try deallocate(.zeroRange, offset: offset, length: length, operation: "write zeroes")
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

    private func deallocate(_ how: FileIO.Deallocation, offset: UInt64, length: UInt64, operation: String) throws {
        guard !isReadOnly else { throw BlockBackendError(errno: EROFS, operation: operation) }
        guard length > 0 else { return }
        do {
            try FileIO.deallocate(fd, how, offset: offset, length: length)
        } catch let e as SystemError {
            throw BlockBackendError(errno: e.code, operation: "\(operation) at \(offset)")
        }
    }
}
