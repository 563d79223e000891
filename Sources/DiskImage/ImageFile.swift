// What the disk image code reads and writes through: an already-open file,
// addressed by position. The device process never opens files (the parent
// passes descriptors), so this module takes files, never paths. Tests use an
// in-memory implementation. No Foundation here: it runs in device processes.
import Glibc
import VMDSystem

/// An open file, read and written at explicit offsets.
public protocol ImageFile: AnyObject {
    /// Reads up to `buffer.count` bytes at `offset`; returns how many were
    /// read (fewer only at the end of the file).
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int
    /// Writes all of `buffer` at `offset`, extending the file if needed.
    func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws
    /// Makes every completed write durable (fdatasync).
    func flush() throws
    /// The file's current size in bytes.
    func size() throws -> UInt64
    /// The open file's descriptor, for asynchronous I/O on it (nil: none).
    var descriptor: Int32? { get }
}

extension ImageFile {
    public var descriptor: Int32? { nil }
}

/// Errors of the disk image layer. `description` is what an operator sees,
/// prefixed with the file's name where the caller knows it.
public enum DiskImageError: Error, Equatable, CustomStringConvertible {
    /// A feature this implementation does not do (refused at open).
    case unsupported(String)
    /// The image's metadata is inconsistent or hostile.
    case invalid(String)
    /// A system call failed.
    case io(errno: Int32, operation: String)
    /// A write to an image opened read-only (or refused for writing).
    case readOnly(String)

    public var description: String {
        switch self {
        case .unsupported(let name): return "unsupported qcow2 feature: \(name)"
        case .invalid(let message): return message
        case .io(let code, let operation): return "\(operation): \(String(cString: strerror(code)))"
        case .readOnly(let message): return message
        }
    }

    /// The errno a block device should report for this failure.
    public var errnoValue: Int32 {
        switch self {
        case .io(let code, _): return code
        case .readOnly: return EROFS
        case .unsupported: return ENOTSUP
        case .invalid: return EIO
        }
    }
}

/// An error about one named file: `path: message`.
public struct DiskFileError: Error, CustomStringConvertible {
    public var path: String
    public var error: DiskImageError

    public init(path: String, error: DiskImageError) {
        self.path = path
        self.error = error
    }

    public var description: String { "\(path): \(error)" }
}

/// A file descriptor (owned by the caller, never closed here), read and
/// written through VMDSystem's FileIO (EINTR retried, errno kept).
public final class FDImageFile: ImageFile {
    public let fd: Int32

    public init(fd: Int32) { self.fd = fd }
    public var descriptor: Int32? { fd }

    static func mapping<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as SystemError { throw DiskImageError.io(errno: e.code, operation: e.what) }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        var done = 0
        while done < buffer.count {
            let (position, overflow) = offset.addingReportingOverflow(UInt64(done))
            guard !overflow else { throw DiskImageError.io(errno: EINVAL, operation: "pread") }
            let n = try Self.mapping { try FileIO.read(fd, into: base + done, count: buffer.count - done, at: position) }
            if n == 0 { break }
            done += n
        }
        return done
    }

    public func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard let base = buffer.baseAddress else { return }
        var done = 0
        while done < buffer.count {
            let (position, overflow) = offset.addingReportingOverflow(UInt64(done))
            guard !overflow else { throw DiskImageError.io(errno: EINVAL, operation: "pwrite") }
            done += try Self.mapping { try FileIO.write(fd, from: base + done, count: buffer.count - done, at: position) }
        }
    }

    public func flush() throws { try Self.mapping { try FileIO.syncData(fd) } }
    public func size() throws -> UInt64 { try Self.mapping { try FileIO.size(of: fd) } }
}

/// A file in memory, for tests and fuzzing.
public final class MemoryImageFile: ImageFile {
    public var bytes: [UInt8]
    public var flushes = 0
    /// Fail every write after this many (nil: never), to test error paths.
    public var writesLeft: Int?

    public init(bytes: [UInt8] = []) { self.bytes = bytes }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        guard offset < UInt64(bytes.count) else { return 0 }
        let start = Int(offset)
        let count = min(buffer.count, bytes.count - start)
        bytes.withUnsafeBytes { source in
            buffer.baseAddress!.copyMemory(from: source.baseAddress! + start, byteCount: count)
        }
        return count
    }

    public func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        if let left = writesLeft {
            guard left > 0 else { throw DiskImageError.io(errno: EIO, operation: "pwrite at \(offset)") }
            writesLeft = left - 1
        }
        guard offset <= UInt64(Int32.max), buffer.count <= Int(Int32.max) - Int(offset) else {
            throw DiskImageError.io(errno: EFBIG, operation: "pwrite at \(offset)")
        }
        let end = Int(offset) + buffer.count
        if end > bytes.count { bytes.append(contentsOf: repeatElement(0, count: end - bytes.count)) }
        bytes.withUnsafeMutableBytes { target in
            if buffer.count > 0 { (target.baseAddress! + Int(offset)).copyMemory(from: buffer.baseAddress!, byteCount: buffer.count) }
        }
    }

    public func flush() throws { flushes += 1 }
    public func size() throws -> UInt64 { UInt64(bytes.count) }
}

/// Big-endian field access on byte arrays (qcow2 stores everything big-endian).
@inline(__always) func be64(_ bytes: UnsafeRawBufferPointer, _ at: Int) -> UInt64 {
    var value: UInt64 = 0
    for i in 0..<8 { value = value << 8 | UInt64(bytes[at + i]) }
    return value
}

@inline(__always) func be32(_ bytes: UnsafeRawBufferPointer, _ at: Int) -> UInt32 {
    var value: UInt32 = 0
    for i in 0..<4 { value = value << 8 | UInt32(bytes[at + i]) }
    return value
}

@inline(__always) func be16(_ bytes: UnsafeRawBufferPointer, _ at: Int) -> UInt16 {
    UInt16(bytes[at]) << 8 | UInt16(bytes[at + 1])
}

@inline(__always) func putBE64(_ bytes: inout [UInt8], _ at: Int, _ value: UInt64) {
    for i in 0..<8 { bytes[at + i] = UInt8(truncatingIfNeeded: value >> (56 - 8 * UInt64(i))) }
}

@inline(__always) func putBE32(_ bytes: inout [UInt8], _ at: Int, _ value: UInt32) {
    for i in 0..<4 { bytes[at + i] = UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32(i))) }
}

extension ImageFile {
    /// Reads exactly `count` bytes at `offset` (a short read is an error).
    func readExactly(_ count: Int, at offset: UInt64, what: String) throws -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        let n = try result.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        guard n == count else {
            throw DiskImageError.invalid("\(what) at offset \(offset) is past the end of the file")
        }
        return result
    }

    func write(_ bytes: [UInt8], at offset: UInt64) throws {
        try bytes.withUnsafeBytes { try write(from: $0, at: offset) }
    }
}
