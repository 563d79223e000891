// Asynchronous block I/O for vioblk: many reads and writes in flight at
// once, completed in any order, on a restricted io_uring (CVMDAio), or on
// a bounded thread pool where io_uring is unavailable. Completions are
// announced on `eventDescriptor`, which the device process's loop watches.
import CVMDAio
import Glibc

public final class BlockIOEngine {
    public enum Mode: String {
        /// io_uring if the kernel allows it, else the thread pool.
        case automatic
        case ioUring = "io_uring"
        case threads
    }

    public struct Completion {
        public var tag: UInt64
        /// Bytes transferred, or -errno.
        public var result: Int64
    }

    public static let maxSegments = Int(CVMD_AIO_MAX_IOV)

    let handle: OpaquePointer
    /// What runs the I/O, for the log: "io_uring" or "a pool of 4 threads".
    public let description: String
    /// Why io_uring was not used (nil when it is).
    public let fallbackReason: String?
    public var isIoUring: Bool { cvmd_aio_kind(handle) == Int32(CVMD_AIO_URING) }
    public var eventDescriptor: Int32 { cvmd_aio_eventfd(handle) }
    public var inflight: Int { Int(cvmd_aio_inflight(handle)) }
    /// The descriptors the engine owns (ring, eventfd): a process closing
    /// what it inherited must keep these.
    public var descriptors: [Int32] { [cvmd_aio_eventfd(handle), cvmd_aio_ring_fd(handle)].filter { $0 >= 0 } }
    private var completions: [cvmd_aio_completion]

    /// Opens an engine for `depth` operations in flight; throws a message
    /// when neither io_uring nor threads can be had.
    public init(depth: Int, mode: Mode = .automatic) throws {
        var why = [CChar](repeating: 0, count: 256)
        let m: Int32 = mode == .ioUring ? Int32(CVMD_AIO_URING) : mode == .threads ? Int32(CVMD_AIO_THREADS) : 0
        guard let h = cvmd_aio_open(UInt32(clamping: depth), m, &why, why.count) else {
            throw DeviceConstructionError("asynchronous I/O: \(String(cString: why))")
        }
        handle = h
        let reason = String(cString: why)
        if cvmd_aio_kind(h) == Int32(CVMD_AIO_URING) {
            description = "io_uring (restricted to READV, WRITEV, FSYNC)"
            fallbackReason = nil
        } else {
            description = "a pool of 4 threads (preadv/pwritev)"
            fallbackReason = mode == .threads ? "asked for" : reason
        }
        completions = Array(repeating: cvmd_aio_completion(), count: max(64, depth))
    }

    deinit { cvmd_aio_close(handle) }

    /// Queues a read or write of `iovecs` at `offset`; false when the
    /// engine is full (the caller then does the transfer itself).
    public func transfer(write: Bool, fd: Int32, iovecs: [iovec], offset: UInt64, tag: UInt64) -> Bool {
        let r = iovecs.withUnsafeBufferPointer { b in
            write ? cvmd_aio_writev(handle, fd, b.baseAddress, Int32(b.count), offset, tag)
                  : cvmd_aio_readv(handle, fd, b.baseAddress, Int32(b.count), offset, tag)
        }
        return r == 0
    }

    /// Writes `iovecs` here and now if that cannot block; false: queue it.
    public func writeIfNonBlocking(fd: Int32, iovecs: [iovec], offset: UInt64, length: UInt64) -> Bool {
        guard isIoUring, !nowaitUnsupported else { return false }
        let n = iovecs.withUnsafeBufferPointer { cvmd_aio_write_nowait(fd, $0.baseAddress, Int32($0.count), offset) }
        if n == -Int64(EOPNOTSUPP) { nowaitUnsupported = true }
        // A short write is simply done again whole on the ring (same bytes, same place).
        return n == Int64(length)
    }
    private var nowaitUnsupported = false

    public func syncData(fd: Int32, tag: UInt64) -> Bool {
        cvmd_aio_fdatasync(handle, fd, tag) == 0
    }

    /// Starts what was queued. Returns 0 or -errno.
    @discardableResult
    public func submit() -> Int32 { cvmd_aio_submit(handle) }

    /// Completions so far; with `wait`, at least one if any is in flight.
    public func reap(wait: Bool) -> [Completion] {
        let n = completions.withUnsafeMutableBufferPointer { b in
            cvmd_aio_reap(handle, b.baseAddress, Int32(b.count), wait ? 1 : 0)
        }
        guard n > 0 else { return [] }
        return (0..<Int(n)).map { Completion(tag: completions[$0].tag, result: completions[$0].result) }
    }
}
