// A disk as a guest sees it: a virtual size, reads that return zeroes past
// the end (a shorter base image reads as zeroes beyond its own size), and,
// for writable images, writes, flush, discard and write-zeroes.
import CZlib

public protocol VirtualDisk: AnyObject {
    var virtualSize: UInt64 { get }
    var isReadOnly: Bool { get }
    /// Fills `buffer` from `offset`; bytes past `virtualSize` read as 0.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws
    func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws
    func flush() throws
    /// Deallocates whole clusters in the range (reads back as zeroes, or
    /// for a raw image, whatever the caller's hole punching gives).
    func discard(offset: UInt64, length: UInt64) throws
    /// The range reads back as zeroes.
    func writeZeroes(offset: UInt64, length: UInt64) throws
    /// Where [offset, offset+length) lives, for a caller that moves the data
    /// itself (asynchronous I/O): file ranges it may read, or for a write
    /// overwrite in place, zeroes (reads only), and ranges it must pass to
    /// `read`/`write` (anything that needs metadata: allocation, compressed
    /// clusters, files without a descriptor). Calling it changes nothing.
    func extents(at offset: UInt64, length: UInt64, forWrite: Bool) throws -> [DiskExtent]
}

/// A piece of a disk range: see `VirtualDisk.extents`.
public enum DiskExtent: Equatable {
    case file(fd: Int32, offset: UInt64, length: UInt64)
    case zero(length: UInt64)
    case synchronous(length: UInt64)

    public var length: UInt64 {
        switch self {
        case .file(_, _, let n), .zero(let n), .synchronous(let n): return n
        }
    }

    /// Appends `extent`, merging it with the last one where they are contiguous.
    static func append(_ extent: DiskExtent, to list: inout [DiskExtent]) {
        guard extent.length > 0 else { return }
        if let last = list.last {
            switch (last, extent) {
            case let (.file(fa, oa, na), .file(fb, ob, nb)) where fa == fb && oa &+ na == ob:
                list[list.count - 1] = .file(fd: fa, offset: oa, length: na + nb)
                return
            case let (.zero(na), .zero(nb)):
                list[list.count - 1] = .zero(length: na + nb)
                return
            case let (.synchronous(na), .synchronous(nb)):
                list[list.count - 1] = .synchronous(length: na + nb)
                return
            default:
                break
            }
        }
        list.append(extent)
    }
}

/// The image formats vmd knows.
public enum DiskFormat: String, Equatable, CaseIterable {
    case raw
    case qcow2

    /// Detects the format by magic (qcow2 starts with "QFI\xfb"), else raw.
    public static func detect(_ file: ImageFile) throws -> DiskFormat {
        var magic = [UInt8](repeating: 0, count: 4)
        let n = try magic.withUnsafeMutableBytes { try file.read(into: $0, at: 0) }
        return n == 4 && magic == qcow2Magic ? .qcow2 : .raw
    }

    /// Splits an optional `raw:`/`qcow2:` prefix off a path, as vmctl does.
    public static func splitPrefix(_ path: String) -> (format: DiskFormat?, path: String) {
        for format in DiskFormat.allCases {
            let prefix = format.rawValue + ":"
            if path.hasPrefix(prefix) { return (format, String(path.dropFirst(prefix.count))) }
        }
        return (nil, path)
    }
}

/// A raw image: the file is the disk. Used for raw bases of a qcow2 chain.
public final class RawDisk: VirtualDisk {
    let file: ImageFile
    public let virtualSize: UInt64
    public let isReadOnly: Bool

    public init(file: ImageFile, readOnly: Bool) throws {
        self.file = file
        self.virtualSize = try file.size()
        self.isReadOnly = readOnly
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        let n = offset >= virtualSize ? 0 : try file.read(into: buffer, at: offset)
        if n < buffer.count { (base + n).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - n) }
    }

    public func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard !isReadOnly else { throw DiskImageError.readOnly("image is read-only") }
        try file.write(from: buffer, at: offset)
    }

    public func flush() throws { try file.flush() }
    public func discard(offset: UInt64, length: UInt64) throws {}

    public func extents(at offset: UInt64, length: UInt64, forWrite: Bool) throws -> [DiskExtent] {
        if forWrite && isReadOnly { throw DiskImageError.readOnly("image is read-only") }
        guard let fd = file.descriptor else { return [.synchronous(length: length)] }
        var list: [DiskExtent] = []
        let (end, overflow) = offset.addingReportingOverflow(length)
        if forWrite || (!overflow && end <= virtualSize) {
            DiskExtent.append(.file(fd: fd, offset: offset, length: length), to: &list)
        } else {
            let inside = offset >= virtualSize ? 0 : virtualSize - offset
            DiskExtent.append(.file(fd: fd, offset: offset, length: inside), to: &list)
            DiskExtent.append(.zero(length: length - inside), to: &list)
        }
        return list
    }

    public func writeZeroes(offset: UInt64, length: UInt64) throws {
        let zeroes = [UInt8](repeating: 0, count: 64 * 1024)
        var done: UInt64 = 0
        while done < length {
            let n = Int(min(UInt64(zeroes.count), length - done))
            try zeroes.withUnsafeBytes { try write(from: UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: offset + done) }
            done += UInt64(n)
        }
    }
}

/// Inflates a raw deflate stream (qcow2 compressed clusters: no zlib
/// header) into exactly `outputCount` bytes, or returns nil.
func inflateRaw(_ input: [UInt8], outputCount: Int) -> [UInt8]? {
    var output = [UInt8](repeating: 0, count: outputCount)
    var stream = z_stream()
    guard inflateInit2_(&stream, -15, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return nil }
    defer { inflateEnd(&stream) }
    var input = input
    let ok: Bool = input.withUnsafeMutableBytes { source in
        output.withUnsafeMutableBytes { target in
            stream.next_in = source.baseAddress?.assumingMemoryBound(to: Bytef.self)
            stream.avail_in = uInt(source.count)
            stream.next_out = target.baseAddress?.assumingMemoryBound(to: Bytef.self)
            stream.avail_out = uInt(target.count)
            let status = inflate(&stream, Z_FINISH)
            // As QEMU: the output buffer full is success (trailing input ignored).
            return (status == Z_STREAM_END || status == Z_BUF_ERROR) && stream.avail_out == 0
        }
    }
    return ok ? output : nil
}
