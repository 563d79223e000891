// A qcow2 disk (with its backing chain) for vioblk: the image and its bases
// arrive as open descriptors, in chain order; DiskImage does the format.
import DiskImage
import Glibc

public final class DiskImageBackend: AsyncBlockBackend {
    let disk: VirtualDisk
    /// The top image's descriptor: every write (data and metadata) goes to it.
    public let flushDescriptor: Int32?
    public var capacity: UInt64 { disk.virtualSize }
    public var isReadOnly: Bool { disk.isReadOnly }
    public var supportsDiscard: Bool { !disk.isReadOnly }
    public var supportsWriteZeroes: Bool { !disk.isReadOnly }

    /// `fds`: the image, then each base; `formats`: "raw" or "qcow2" for each.
    public init(fds: [Int32], formats: [String], readOnly: Bool) throws {
        var links: [(file: ImageFile, format: DiskFormat)] = []
        for (fd, name) in zip(fds, formats) {
            guard let format = DiskFormat(rawValue: name) else {
                throw BlockBackendError(errno: EINVAL, operation: "disk format \(name)")
            }
            links.append((FDImageFile(fd: fd), format))
        }
        flushDescriptor = readOnly ? nil : fds.first
        do {
            disk = try BackingChain.open(links, readOnly: readOnly)
        } catch let error as DiskImageError {
            throw BlockBackendError(errno: error.errnoValue, operation: "\(error)")
        }
    }

    func map<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let error as DiskImageError {
            throw BlockBackendError(errno: error.errnoValue, operation: "\(error)")
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        try map { try disk.read(into: buffer, at: offset) }
    }
    public func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try map { try disk.write(from: buffer, at: offset) }
    }
    /// For a write to qcow2, clusters the write fills whole are allocated
    /// and linked here (Qcow2Image.mapForWrite), so their data goes on the
    /// ring like any other file range.
    public func extents(at offset: UInt64, length: UInt64, forWrite: Bool) throws -> [DiskExtent] {
        if forWrite, let image = disk as? Qcow2Image { return try map { try image.mapForWrite(at: offset, length: length) } }
        return try map { try disk.extents(at: offset, length: length, forWrite: forWrite) }
    }
    public func flush() throws { try map { try disk.flush() } }
    /// A write of a range `extents` handed out is done (or failed).
    public func writeCompleted(hostOffset: UInt64, length: UInt64) {
        (disk as? Qcow2Image)?.fillCompleted(hostOffset: hostOffset, length: length)
    }
    /// Every write is done or dropped.
    public func allWritesCompleted() { (disk as? Qcow2Image)?.allFillsCompleted() }

    /// Before the process exits: a qcow2 image gives back the clusters it
    /// reserved and did not use, and everything is made durable.
    public func close() throws {
        guard let image = disk as? Qcow2Image else { return try flush() }
        try map { try image.close() }
    }
    public func discard(offset: UInt64, length: UInt64) throws {
        try map { try disk.discard(offset: offset, length: length) }
    }
    public func writeZeroes(offset: UInt64, length: UInt64) throws {
        try map { try disk.writeZeroes(offset: offset, length: length) }
    }
}
