// vioblk's asynchronous path: a read or write becomes one engine operation
// per contiguous file range (DiskImage's extents), zero-filled and
// metadata-bound pieces are done at once on this thread, and the request
// is returned on its queue when its last operation completes, in whatever
// order that happens (the queue's inflight log sees each head taken and
// returned as usual). A FLUSH is an fdatasync on the ring: it covers every
// write that had completed when it was started, as the spec asks.
import DiskImage
import Glibc
import Virtio
import VMDSystem

extension VioBlk {
    static var exitHooks: [() -> Void] = []

    /// At a clean exit of the process (a VM stopped, SIGTERM): what is in
    /// flight completes, then the backend is closed (a qcow2 image gives
    /// back the clusters it reserved and did not use). A killed process
    /// leaves them leaked, which `qemu-img check` accepts.
    static func closeAtExit(_ blk: VioBlk) {
        if exitHooks.isEmpty { atexit { for hook in VioBlk.exitHooks { hook() } } }
        exitHooks.append { [weak blk] in
            guard let blk, let backend = blk.backend as? DiskImageBackend, !backend.isReadOnly else { return }
            blk.dropInflight()
            do { try backend.close() } catch { Log.warning("\(blk.name): closing the image: \(error)") }
        }
    }
}

/// One request with operations in flight.
final class AsyncRequest {
    let queue: Int
    let head: UInt16
    let writable: [ChainElement]
    let memory: GuestMemory
    let dataLength: UInt64
    let isRead: Bool
    var outstanding = 0
    var status = VirtioBlockStatus.ok

    init(queue: Int, request: VirtqueueRequest, memory: GuestMemory, dataLength: UInt64, isRead: Bool) {
        self.queue = queue
        self.head = request.head
        self.writable = request.writable
        self.memory = memory
        self.dataLength = dataLength
        self.isRead = isRead
    }
}

/// One engine operation of a request.
struct AsyncOperation {
    enum Kind { case read, write, sync }
    let request: AsyncRequest
    let kind: Kind
    let fd: Int32
    let offset: UInt64
    let iovecs: [iovec]
    let length: UInt64
}

extension VioBlk: BackendInputDevice, InflightCompleting, DescriptorOwningDevice {
    public var ownDescriptors: [Int32] { engine?.descriptors ?? [] }

    /// The engine's completion eventfd: the device process watches it.
    public var inputDescriptor: Int32 { engine?.eventDescriptor ?? -1 }

    /// Completions are waiting: return the requests they finish.
    public func backendReadable() -> Bool {
        completeReady(wait: false)
        return true
    }

    /// The engine for a device process: `VMD_BLOCK_IO` (io_uring, threads)
    /// picks one for tests, `sync` none (every request served in turn, as
    /// before the engine existed: the bench's baseline); the log says which
    /// runs and why.
    static func makeEngine(name: String) throws -> (engine: BlockIOEngine, synchronous: Bool) {
        let asked = getenv("VMD_BLOCK_IO").map { String(cString: $0) } ?? ""
        if asked == "sync" {
            Log.info("\(name): synchronous I/O, one request at a time (VMD_BLOCK_IO=sync)")
            return (try BlockIOEngine(depth: 1, mode: .threads), true)
        }
        let mode = BlockIOEngine.Mode(rawValue: asked) ?? .automatic
        let engine = try BlockIOEngine(depth: 512, mode: mode)
        if let why = engine.fallbackReason {
            Log.info("\(name): asynchronous I/O on \(engine.description): io_uring not used (\(why))")
        } else {
            Log.info("\(name): asynchronous I/O on \(engine.description)")
        }
        return (engine, false)
    }

    /// Starts a request: returns the length to return it with now, or nil
    /// when it completes later (operations in flight).
    func start(_ request: VirtqueueRequest, queue index: Int, memory: GuestMemory) -> UInt32? {
        guard let engine, !synchronous, let backend = backend as? AsyncBlockBackend, request.writableLength >= 1 else {
            return serve(request, memory: memory)
        }
        var readable = ChainCursor(memory: memory, elements: request.readable)
        var header = [UInt8](repeating: 0, count: 16)
        guard header.withUnsafeMutableBytes({ readable.read(into: $0) }) == 16 else {
            return serve(request, memory: memory)
        }
        let type = UInt32(readLittleEndian(header, offset: 0, size: 4))
        let sector = UInt64(readLittleEndian(header, offset: 8, size: 4))
            | UInt64(readLittleEndian(header, offset: 12, size: 4)) << 32
        let dataLength = request.writableLength - 1
        switch type {
        case VirtioBlockRequestType.read:
            let pending = AsyncRequest(queue: index, request: request, memory: memory, dataLength: dataLength, isRead: true)
            var cursor = ChainCursor(memory: memory, elements: request.writable)
            let segments = Self.segments(&cursor, limit: dataLength)
            startTransfer(pending, backend: backend, engine: engine, sector: sector, length: dataLength, segments: segments)
            return pending.outstanding == 0 ? finish(pending) : nil
        case VirtioBlockRequestType.write:
            guard !backend.isReadOnly else { return serve(request, memory: memory) }
            unflushed = true
            let pending = AsyncRequest(queue: index, request: request, memory: memory, dataLength: dataLength, isRead: false)
            let length = readable.remaining
            let segments = Self.segments(&readable, limit: length)
            startTransfer(pending, backend: backend, engine: engine, sector: sector, length: length, segments: segments)
            return pending.outstanding == 0 ? finish(pending) : nil
        case VirtioBlockRequestType.flush:
            guard let fd = backend.flushDescriptor, unflushed else { return serve(request, memory: memory) }
            let pending = AsyncRequest(queue: index, request: request, memory: memory, dataLength: dataLength, isRead: false)
            unflushed = false
            let tag = nextTag
            nextTag &+= 1
            if engine.syncData(fd: fd, tag: tag) {
                operations[tag] = AsyncOperation(request: pending, kind: .sync, fd: fd, offset: 0, iovecs: [], length: 0)
                pending.outstanding = 1
                return nil
            }
            pending.status = perform("flush") { try BlockBackendError.mapping { try FileIO.syncData(fd) } }
            if pending.status != VirtioBlockStatus.ok { unflushed = true }
            return finish(pending)
        default:
            return serve(request, memory: memory)
        }
    }

    /// The guest buffers of a request's data, at most `limit` bytes.
    static func segments(_ cursor: inout ChainCursor, limit: UInt64) -> [UnsafeMutableRawBufferPointer] {
        var list: [UnsafeMutableRawBufferPointer] = []
        var left = limit
        while left > 0, let s = cursor.nextSegment(maxLength: Int(min(left, UInt64(Int.max)))) {
            list.append(s)
            left -= UInt64(s.count)
        }
        return list
    }

    /// The pieces of `segments` covering bytes [start, start+length) of the data.
    static func slice(_ segments: [UnsafeMutableRawBufferPointer], from start: UInt64, length: UInt64) -> [iovec] {
        var result: [iovec] = []
        var skip = start
        var left = length
        for s in segments where left > 0 {
            let count = UInt64(s.count)
            if skip >= count { skip -= count; continue }
            let n = min(count - skip, left)
            result.append(iovec(iov_base: s.baseAddress! + Int(skip), iov_len: Int(n)))
            skip = 0
            left -= n
        }
        return result
    }

    private func startTransfer(_ pending: AsyncRequest, backend: AsyncBlockBackend, engine: BlockIOEngine,
                               sector: UInt64, length: UInt64, segments: [UnsafeMutableRawBufferPointer]) {
        let what = pending.isRead ? "read" : "write"
        guard length % VioBlk.sectorSize == 0, let offset = byteRange(sector: sector, length: length) else {
            logBudget.log("\(name): \(what) of \(length) bytes at sector \(sector) is outside the \(backend.capacity)-byte image")
            pending.status = VirtioBlockStatus.ioError
            return
        }
        let extents: [DiskExtent]
        do {
            extents = try backend.extents(at: offset, length: length, forWrite: !pending.isRead)
        } catch {
            logBudget.log("\(name): \(what) at \(offset): \(error)")
            pending.status = VirtioBlockStatus.ioError
            return
        }
        var position: UInt64 = 0
        for extent in extents {
            let iovecs = Self.slice(segments, from: position, length: extent.length)
            switch extent {
            case .file(let fd, let hostOffset, let n):
                let tag = nextTag
                if !pending.isRead, iovecs.count <= BlockIOEngine.maxSegments,
                   engine.writeIfNonBlocking(fd: fd, iovecs: iovecs, offset: hostOffset, length: n) {
                    // Into the page cache without blocking: done (io_uring
                    // would hand a buffered write to a worker thread).
                    (backend as? DiskImageBackend)?.writeCompleted(hostOffset: hostOffset, length: n)
                } else if iovecs.count <= BlockIOEngine.maxSegments,
                   engine.transfer(write: !pending.isRead, fd: fd, iovecs: iovecs, offset: hostOffset, tag: tag) {
                    nextTag &+= 1
                    operations[tag] = AsyncOperation(request: pending, kind: pending.isRead ? .read : .write, fd: fd,
                                                     offset: hostOffset, iovecs: iovecs, length: n)
                    pending.outstanding += 1
                } else {
                    if !transferNow(write: !pending.isRead, fd: fd, iovecs: iovecs, offset: hostOffset) {
                        pending.status = VirtioBlockStatus.ioError
                    }
                    if !pending.isRead { (backend as? DiskImageBackend)?.writeCompleted(hostOffset: hostOffset, length: n) }
                }
            case .zero:
                for v in iovecs { memset(v.iov_base, 0, v.iov_len) }
            case .synchronous:
                // Through the backend: qcow2 allocation and compressed
                // clusters, serialised here on the device's thread.
                var at = offset + position
                if !pending.isRead && iovecs.count > 1 {
                    // One write of the whole range: a cluster the request
                    // fills is allocated whole, with nothing copied from the
                    // base (which would need a barrier before its link).
                    var data = [UInt8]()
                    data.reserveCapacity(Int(extent.length))
                    for v in iovecs { data.append(contentsOf: UnsafeRawBufferPointer(start: v.iov_base, count: v.iov_len)) }
                    if perform("write", { try data.withUnsafeBytes { try backend.write(from: $0, at: at) } }) != VirtioBlockStatus.ok {
                        pending.status = VirtioBlockStatus.ioError
                    }
                    break
                }
                for v in iovecs {
                    let status = pending.isRead
                        ? perform("read") { try backend.read(into: UnsafeMutableRawBufferPointer(start: v.iov_base, count: v.iov_len), at: at) }
                        : perform("write") { try backend.write(from: UnsafeRawBufferPointer(start: v.iov_base, count: v.iov_len), at: at) }
                    if status != VirtioBlockStatus.ok { pending.status = VirtioBlockStatus.ioError; break }
                    at += UInt64(v.iov_len)
                }
            }
            position += extent.length
        }
    }

    /// Moves `iovecs` at `offset` here and now (engine full, or the rest of
    /// a short transfer). Reads past the end of the file give zeroes.
    func transferNow(write: Bool, fd: Int32, iovecs: [iovec], offset: UInt64) -> Bool {
        var at = offset
        for v in iovecs {
            guard let base = v.iov_base else { continue }
            var done = 0
            while done < v.iov_len {
                do {
                    let n = write
                        ? try FileIO.write(fd, from: base + done, count: v.iov_len - done, at: at + UInt64(done))
                        : try FileIO.read(fd, into: base + done, count: v.iov_len - done, at: at + UInt64(done))
                    if n == 0 {
                        if write { return false }
                        memset(base + done, 0, v.iov_len - done)
                        break
                    }
                    done += n
                } catch {
                    logBudget.log("\(name): \(write ? "pwrite" : "pread") at \(at + UInt64(done)): \(error)")
                    return false
                }
            }
            at += UInt64(v.iov_len)
        }
        return true
    }

    /// Writes the status byte; returns the used length.
    @discardableResult
    func finish(_ r: AsyncRequest) -> UInt32 {
        var statusCursor = ChainCursor(memory: r.memory, elements: r.writable)
        statusCursor.skip(r.dataLength)
        statusCursor.write([r.status])
        let written = r.isRead && r.status == VirtioBlockStatus.ok ? r.dataLength : 0
        return UInt32(truncatingIfNeeded: min(written + 1, UInt64(UInt32.max)))
    }

    /// Takes the engine's completions and returns the requests they finish
    /// on their queues (one interrupt decision per queue and batch).
    func completeReady(wait: Bool, serving current: (index: Int, queue: Virtqueue)? = nil) {
        guard let engine else { return }
        var done: [Int: [(UInt16, UInt32)]] = [:]
        var first = true
        while true {
            let completions = engine.reap(wait: wait && first)
            first = false
            if completions.isEmpty { break }
            for c in completions {
                if let done = barriers.removeValue(forKey: c.tag) {
                    if c.result >= 0 { done() }
                    continue
                }
                guard let op = operations.removeValue(forKey: c.tag) else { continue }
                let r = op.request
                if c.result < 0 {
                    logBudget.log("\(name): \(op.kind) at \(op.offset): \(virtioErrnoDescription(Int32(-c.result)))")
                    r.status = VirtioBlockStatus.ioError
                    if op.kind == .sync { unflushed = true }
                } else if op.kind != .sync, UInt64(c.result) < op.length {
                    // Short: finish the rest here.
                    let rest = Self.slice(op.iovecs.map { UnsafeMutableRawBufferPointer(start: $0.iov_base, count: $0.iov_len) },
                                          from: UInt64(c.result), length: op.length - UInt64(c.result))
                    if !transferNow(write: op.kind == .write, fd: op.fd, iovecs: rest, offset: op.offset + UInt64(c.result)) {
                        r.status = VirtioBlockStatus.ioError
                    }
                }
                if op.kind == .write {
                    unflushed = true
                    // A cluster being filled reads from the file from now on.
                    (backend as? DiskImageBackend)?.writeCompleted(hostOffset: op.offset, length: op.length)
                }
                r.outstanding -= 1
                if r.outstanding == 0 {
                    done[r.queue, default: []].append((r.head, finish(r)))
                }
            }
        }
        for (queue, heads) in done {
            if let current, current.index == queue {
                // Inside the queue's own processing: its host checks the interrupt after.
                for (head, length) in heads { try? current.queue.pushUsed(head: head, length: length) }
                continue
            }
            host?.withQueue(queue) { q in
                for (head, length) in heads { try q.pushUsed(head: head, length: length) }
            }
        }
    }

    /// The engine refused a submission (it never should): fail what was queued.
    func completeFailedSubmission(errno: Int32) {
        logBudget.log("\(name): asynchronous I/O submission failed: \(virtioErrnoDescription(errno)); waiting for what is in flight")
        completeInflight()
    }

    /// Waits for every operation in flight and returns its request (a
    /// vhost-user ring about to stop, a memory table about to change).
    public func completeInflight() {
        while let engine, engine.inflight > 0 { completeReady(wait: true) }
    }

    /// Waits for every operation in flight and forgets the requests.
    func dropInflight() {
        guard let engine else { return }
        while engine.inflight > 0 { _ = engine.reap(wait: true) }
        operations = [:]
        barriers = [:]
        (backend as? DiskImageBackend)?.allWritesCompleted()
    }
}
