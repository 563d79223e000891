// virtio-blk (spec 5.2) over a BlockBackend. Reads and writes of a backend
// that can say where its data lives (AsyncBlockBackend: raw, qcow2) go to a
// BlockIOEngine (io_uring, or a thread pool): many in flight, completed in
// any order (VioBlkAsync.swift). Everything else (metadata: qcow2
// allocation, discard, write zeroes; GET_ID) is served synchronously, on the
// device's one thread, between submissions, so qcow2 metadata updates never
// race. Data moves between the image and guest memory directly (the
// guest's buffers are the iovecs), with no bounce buffer.
import DiskImage
import Glibc
import Virtio
import VMDSystem

public enum VirtioBlockFeature {
    public static let sizeMax: UInt64 = 1 << 1
    public static let segMax: UInt64 = 1 << 2
    public static let readOnly: UInt64 = 1 << 5
    public static let blockSize: UInt64 = 1 << 6
    public static let flush: UInt64 = 1 << 9
    public static let discard: UInt64 = 1 << 13
    public static let writeZeroes: UInt64 = 1 << 14
    public static let multiQueue: UInt64 = 1 << 12
}

public enum VirtioBlockRequestType {
    public static let read: UInt32 = 0          // VIRTIO_BLK_T_IN
    public static let write: UInt32 = 1         // VIRTIO_BLK_T_OUT
    public static let flush: UInt32 = 4
    public static let getID: UInt32 = 8
    public static let discard: UInt32 = 11
    public static let writeZeroes: UInt32 = 13
}

public enum VirtioBlockStatus {
    public static let ok: UInt8 = 0
    public static let ioError: UInt8 = 1
    public static let unsupported: UInt8 = 2
}

public final class VioBlk: VirtioDevice {
    public static let sectorSize: UInt64 = 512
    public static let queueSize: UInt16 = 128
    public static let segMax: UInt32 = 126
    public static let sizeMax: UInt32 = 1 << 20
    public static let idLength = 20
    /// Per discard / write-zeroes request: one segment of up to 2 GiB.
    public static let maxDiscardSectors: UInt32 = 1 << 22
    public static let maxDiscardSegments: UInt32 = 1

    public let name: String
    public let backend: BlockBackend
    /// GET_ID answer: the image's name, at most 20 bytes, NUL-padded.
    public let identifier: [UInt8]
    public let queueMaxSizes: [UInt16]
    weak var host: VirtioDeviceHost?
    /// Runs reads, writes and flushes asynchronously (nil: all synchronous).
    public let engine: BlockIOEngine?
    /// Serve every request in turn even with an engine (VMD_BLOCK_IO=sync).
    let synchronous: Bool
    /// Requests handed to the engine and not yet returned, by operation tag.
    var operations: [UInt64: AsyncOperation] = [:]
    var nextTag: UInt64 = 1
    /// Anything written since the last flush was started (true at start,
    /// for whatever came before us): a FLUSH with nothing new is answered
    /// at once.
    var unflushed = true
    /// Asynchronous barriers of a qcow2 image's cluster reservations, by
    /// operation tag: what to call when the fdatasync has succeeded.
    var barriers: [UInt64: () -> Void] = [:]
    public var onInputWanted: (() -> Void)?

    public init(name: String, backend: BlockBackend, identifier: String, engine: BlockIOEngine? = nil, queues: Int = 1,
                synchronous: Bool = false) {
        self.synchronous = synchronous
        var parameters = DeviceParameters()
        parameters.queueCount = queues
        self.queueMaxSizes = VioBlk.model.queueSizes(for: parameters)
        self.name = name
        self.backend = backend
        self.identifier = Array(identifier.utf8.prefix(VioBlk.idLength))
        self.engine = engine
        if let engine, !synchronous, !backend.isReadOnly, let disk = backend as? DiskImageBackend,
           let image = disk.disk as? Qcow2Image, let fd = disk.flushDescriptor {
            // The next batch of reserved clusters is made durable on the
            // ring while the current one lasts.
            image.asyncBarrier = { [weak self] done in
                guard let self else { return }
                let tag = self.nextTag
                self.nextTag &+= 1
                if engine.syncData(fd: fd, tag: tag) { self.barriers[tag] = done }
            }
        }
    }

    public var deviceFeatures: UInt64 {
        var features = VirtioBlockFeature.sizeMax | VirtioBlockFeature.segMax | VirtioBlockFeature.blockSize
            | VirtioBlockFeature.flush
        if queueMaxSizes.count > 1 { features |= VirtioBlockFeature.multiQueue }
        if backend.isReadOnly {
            features |= VirtioBlockFeature.readOnly
        } else {
            if backend.supportsDiscard { features |= VirtioBlockFeature.discard }
            if backend.supportsWriteZeroes { features |= VirtioBlockFeature.writeZeroes }
        }
        return features
    }

    public func attach(to host: VirtioDeviceHost) { self.host = host }
    /// The driver reset the device: wait for what is in flight (it writes
    /// into guest memory) and drop it unanswered.
    public func reset() { dropInflight() }
    var logBudget = LogBudget()

    /// struct virtio_blk_config, up to write_zeroes_may_unmap.
    public var configSpace: [UInt8] {
        var bytes: [UInt8] = []
        appendLittleEndian(backend.capacity / VioBlk.sectorSize, to: &bytes)   // capacity
        appendLittleEndian(VioBlk.sizeMax, to: &bytes)                         // size_max
        appendLittleEndian(VioBlk.segMax, to: &bytes)                          // seg_max
        appendLittleEndian(UInt32(0), to: &bytes)                              // geometry
        appendLittleEndian(UInt32(VioBlk.sectorSize), to: &bytes)              // blk_size
        bytes += [0, 0]                                                        // physical_block_exp, alignment_offset
        appendLittleEndian(UInt16(0), to: &bytes)                              // min_io_size
        appendLittleEndian(UInt32(0), to: &bytes)                              // opt_io_size
        bytes += [0, 0]                                                        // writeback, unused
        appendLittleEndian(UInt16(queueMaxSizes.count), to: &bytes)            // num_queues
        appendLittleEndian(VioBlk.maxDiscardSectors, to: &bytes)               // max_discard_sectors
        appendLittleEndian(VioBlk.maxDiscardSegments, to: &bytes)              // max_discard_seg
        appendLittleEndian(UInt32(8), to: &bytes)                              // discard_sector_alignment (4 KiB)
        appendLittleEndian(VioBlk.maxDiscardSectors, to: &bytes)               // max_write_zeroes_sectors
        appendLittleEndian(VioBlk.maxDiscardSegments, to: &bytes)              // max_write_zeroes_seg
        bytes += [0, 0, 0, 0]                                                  // write_zeroes_may_unmap
        return bytes
    }

    public func readConfig(offset: Int, size: Int) -> UInt32 {
        readLittleEndian(configSpace, offset: offset, size: size)
    }

    public func process(queue: Virtqueue, index: Int) throws {
        while let request = try queue.popRequest() {
            if let written = start(request, queue: index, memory: queue.memory) {
                try queue.pushUsed(head: request.head, length: written)
            }
        }
        if let engine {
            let r = engine.submit()
            if r < 0 { completeFailedSubmission(errno: -r) }
            // Reads from the page cache complete inside the submission:
            // return them now, without another trip through the event loop.
            if engine.inflight > 0 { completeReady(wait: false, serving: (index, queue)) }
        }
    }

    /// Serve one request; returns the bytes written into the guest's buffers.
    func serve(_ request: VirtqueueRequest, memory: GuestMemory) -> UInt32 {
        let writableLength = request.writableLength
        guard writableLength >= 1 else {
            logBudget.log("\(name): request without room for a status byte")
            return 0
        }
        var readable = ChainCursor(memory: memory, elements: request.readable)
        var header = [UInt8](repeating: 0, count: 16)
        let headerLength = header.withUnsafeMutableBytes { readable.read(into: $0) }
        let dataLength = writableLength - 1
        var status = VirtioBlockStatus.ioError
        var dataWritten: UInt64 = 0
        if headerLength == 16 {
            let type = UInt32(readLittleEndian(header, offset: 0, size: 4))
            let sector = UInt64(readLittleEndian(header, offset: 8, size: 4))
                | UInt64(readLittleEndian(header, offset: 12, size: 4)) << 32
            switch type {
            case VirtioBlockRequestType.read:
                status = readData(sector: sector, into: request.writable, length: dataLength, memory: memory)
                if status == VirtioBlockStatus.ok { dataWritten = dataLength }
            case VirtioBlockRequestType.write:
                unflushed = true
                status = writeData(sector: sector, from: &readable)
            case VirtioBlockRequestType.flush:
                unflushed = false
                status = perform("flush") { try backend.flush() }
                if status != VirtioBlockStatus.ok { unflushed = true }
            case VirtioBlockRequestType.getID:
                var data = ChainCursor(memory: memory, elements: request.writable)
                let answer = identifier + [UInt8](repeating: 0, count: VioBlk.idLength - identifier.count)
                dataWritten = UInt64(data.write(Array(answer.prefix(Int(min(dataLength, UInt64(VioBlk.idLength)))))))
                status = VirtioBlockStatus.ok
            case VirtioBlockRequestType.discard, VirtioBlockRequestType.writeZeroes:
                unflushed = true
                status = discardOrZero(type: type, segments: &readable)
            default:
                status = VirtioBlockStatus.unsupported
            }
        }
        var statusCursor = ChainCursor(memory: memory, elements: request.writable)
        statusCursor.skip(dataLength)
        statusCursor.write([status])
        return UInt32(truncatingIfNeeded: min(dataWritten + 1, UInt64(UInt32.max)))
    }

    /// Byte offset of a sector range, if it lies within the image.
    func byteRange(sector: UInt64, length: UInt64) -> UInt64? {
        let (offset, overflow) = sector.multipliedReportingOverflow(by: VioBlk.sectorSize)
        guard !overflow else { return nil }
        let (end, overflow2) = offset.addingReportingOverflow(length)
        guard !overflow2, end <= backend.capacity else { return nil }
        return offset
    }

    private func readData(sector: UInt64, into writable: [ChainElement], length: UInt64,
                          memory: GuestMemory) -> UInt8 {
        guard length % VioBlk.sectorSize == 0, var offset = byteRange(sector: sector, length: length) else {
            logBudget.log("\(name): read of \(length) bytes at sector \(sector) is outside the \(backend.capacity)-byte image")
            return VirtioBlockStatus.ioError
        }
        var data = ChainCursor(memory: memory, elements: writable)
        var left = length
        while left > 0, let segment = data.nextSegment(maxLength: Int(min(left, UInt64(Int.max)))) {
            guard perform("read", { try backend.read(into: segment, at: offset) }) == VirtioBlockStatus.ok else {
                return VirtioBlockStatus.ioError
            }
            offset += UInt64(segment.count)
            left -= UInt64(segment.count)
        }
        return VirtioBlockStatus.ok
    }

    private func writeData(sector: UInt64, from readable: inout ChainCursor) -> UInt8 {
        guard !backend.isReadOnly else { return VirtioBlockStatus.ioError }
        let length = readable.remaining
        guard length % VioBlk.sectorSize == 0, var offset = byteRange(sector: sector, length: length) else {
            logBudget.log("\(name): write of \(length) bytes at sector \(sector) is outside the \(backend.capacity)-byte image")
            return VirtioBlockStatus.ioError
        }
        if backend is DiskImageBackend {
            // qcow2: one write of the whole request, so a cluster it fills
            // is allocated whole (nothing copied from the base).
            var data = [UInt8]()
            data.reserveCapacity(Int(min(length, UInt64(Int32.max))))
            while let segment = readable.nextSegment() { data.append(contentsOf: UnsafeRawBufferPointer(segment)) }
            return perform("write") { try data.withUnsafeBytes { try backend.write(from: $0, at: offset) } }
        }
        while let segment = readable.nextSegment() {
            let source = UnsafeRawBufferPointer(segment)
            guard perform("write", { try backend.write(from: source, at: offset) }) == VirtioBlockStatus.ok else {
                return VirtioBlockStatus.ioError
            }
            offset += UInt64(segment.count)
        }
        return VirtioBlockStatus.ok
    }

    private func discardOrZero(type: UInt32, segments readable: inout ChainCursor) -> UInt8 {
        let isDiscard = type == VirtioBlockRequestType.discard
        guard !backend.isReadOnly else { return VirtioBlockStatus.ioError }
        guard isDiscard ? backend.supportsDiscard : backend.supportsWriteZeroes else {
            return VirtioBlockStatus.unsupported
        }
        let count = readable.remaining / 16
        guard count >= 1, count <= UInt64(VioBlk.maxDiscardSegments), readable.remaining % 16 == 0 else {
            return VirtioBlockStatus.ioError
        }
        for _ in 0..<count {
            let segment = readable.readBytes(16)
            let sector = UInt64(readLittleEndian(segment, offset: 0, size: 4))
                | UInt64(readLittleEndian(segment, offset: 4, size: 4)) << 32
            let sectors = readLittleEndian(segment, offset: 8, size: 4)
            let flags = readLittleEndian(segment, offset: 12, size: 4)
            // Only the unmap flag exists, and only for write zeroes.
            guard flags & ~1 == 0, !(isDiscard && flags != 0), sectors <= VioBlk.maxDiscardSectors else {
                return VirtioBlockStatus.unsupported
            }
            let length = UInt64(sectors) * VioBlk.sectorSize
            guard let offset = byteRange(sector: sector, length: length) else { return VirtioBlockStatus.ioError }
            let status = perform(isDiscard ? "discard" : "write zeroes") {
                if isDiscard {
                    try backend.discard(offset: offset, length: length)
                } else {
                    try backend.writeZeroes(offset: offset, length: length)
                }
            }
            guard status == VirtioBlockStatus.ok else { return status }
        }
        return VirtioBlockStatus.ok
    }

    /// Run a backend operation; failures become a status and one log line.
    func perform(_ what: String, _ operation: () throws -> Void) -> UInt8 {
        do {
            try operation()
            return VirtioBlockStatus.ok
        } catch let error as BlockBackendError where error.isUnsupported {
            return VirtioBlockStatus.unsupported
        } catch {
            logBudget.log("\(name): \(what): \(error)")
            return VirtioBlockStatus.ioError
        }
    }
}

extension VioBlk {
    public static let model = DeviceModel(
        kind: .blk, baseName: "vioblk", single: false, presentation: .modern(.block),
        queueSizes: [queueSize], backends: [.disk],
        syscalls: ["pread64", "pwrite64", "preadv", "pwritev", "fsync", "fdatasync", "fallocate",
                   "lseek", "fstat", "newfstatat",
                   // the ring, set up (and restricted) before the sandbox
                   "io_uring_enter", "pwritev2"],
        multiQueue: true,
        make: { c in
            let (engine, synchronous) = try VioBlk.makeEngine(name: c.name)
            let formats = c.parameters.diskFormats
            let disk = try c.backend(.disk)
            let backend: BlockBackend
            if formats.isEmpty || formats == ["raw"] {
                backend = try RawImageBackend(fd: disk, readOnly: c.parameters.readOnly)
            } else {
                // qcow2 (through DiskImage), with its bases in chain order.
                let bases = c.backends.filter { $0.role == .baseImage }.map(\.fd)
                guard bases.count == formats.count - 1 else {
                    throw DeviceConstructionError("\(c.name): \(formats.count) disk formats for \(bases.count + 1) images")
                }
                backend = try DiskImageBackend(fds: [disk] + bases, formats: formats, readOnly: c.parameters.readOnly)
            }
            let blk = VioBlk(name: c.name, backend: backend, identifier: c.parameters.identifier, engine: engine,
                             queues: max(1, c.parameters.queueCount), synchronous: synchronous)
            VioBlk.closeAtExit(blk)
            return blk
        })
}
