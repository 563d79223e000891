// Writes a new, empty qcow2 image, laid out as `qemu-img create -f qcow2`
// does: the header (with its extensions and the backing file's name) in
// cluster 0, the refcount table in cluster 1, its first refcount block in
// cluster 2, the L1 table from cluster 3.

public struct Qcow2CreateOptions: Equatable {
    public var size: UInt64
    public var version: UInt32 = 3
    public var clusterBits: UInt32 = 16
    public var refcountOrder: UInt32 = 4
    /// The backing file's name as it is to be stored (relative names are
    /// resolved against the directory of the new image when it is opened).
    public var backingFile: String?
    public var backingFormat: DiskFormat?

    public init(size: UInt64, backingFile: String? = nil, backingFormat: DiskFormat? = nil) {
        self.size = size
        self.backingFile = backingFile
        self.backingFormat = backingFormat
    }
}

public enum Qcow2Creator {
    /// Writes the image to `file` (which should be empty).
    public static func create(_ options: Qcow2CreateOptions, on file: ImageFile) throws {
        guard options.version == 2 || options.version == 3 else { throw DiskImageError.invalid("qcow2 version must be 2 or 3") }
        guard (9...21).contains(options.clusterBits) else { throw DiskImageError.invalid("cluster size must be 512 B .. 2 MiB") }
        guard options.refcountOrder <= 6, options.version == 3 || options.refcountOrder == 4 else {
            throw DiskImageError.invalid("refcount width must be 1..64 bits (16 in version 2)")
        }
        guard options.size <= UInt64(Int64.max) else { throw DiskImageError.invalid("size is too large") }
        let cs = UInt64(1) << UInt64(options.clusterBits)
        let coverage = cs * (cs / 8)
        let l1Size = options.size / coverage + (options.size % coverage == 0 ? 0 : 1)
        guard l1Size * 8 <= Qcow2Header.maxL1Bytes else { throw DiskImageError.invalid("size is too large for this cluster size") }
        let l1Clusters = max(1, (l1Size * 8 + cs - 1) / cs)
        let metadataClusters = 3 + l1Clusters
        let refcountEntries = (cs * 8) >> UInt64(options.refcountOrder)
        guard metadataClusters <= refcountEntries else { throw DiskImageError.invalid("size is too large for this cluster size") }

        var head = [UInt8](repeating: 0, count: Int(cs))
        head.replaceSubrange(0..<4, with: qcow2Magic)
        putBE32(&head, 4, options.version)
        putBE32(&head, 20, options.clusterBits)
        putBE64(&head, 24, options.size)
        putBE32(&head, 36, UInt32(l1Size))
        putBE64(&head, 40, 3 * cs)
        putBE64(&head, 48, cs)
        putBE32(&head, 56, 1)
        var at = 72
        if options.version == 3 {
            putBE32(&head, 96, options.refcountOrder)
            putBE32(&head, 100, 104)
            at = 104
        }
        if let format = options.backingFormat, options.backingFile != nil {
            let name = Array(format.rawValue.utf8)
            putBE32(&head, at, 0xe279_2aca)
            putBE32(&head, at + 4, UInt32(name.count))
            head.replaceSubrange((at + 8)..<(at + 8 + name.count), with: name)
            at += 8 + (name.count + 7) / 8 * 8
        }
        at += 8   // end of extensions (type 0, length 0)
        if let backing = options.backingFile {
            let name = Array(backing.utf8)
            guard !name.isEmpty, name.count <= Int(Qcow2Header.maxBackingNameLength), at + name.count <= Int(cs) else {
                throw DiskImageError.invalid("backing file name is empty or too long")
            }
            putBE64(&head, 8, UInt64(at))
            putBE32(&head, 16, UInt32(name.count))
            head.replaceSubrange(at..<(at + name.count), with: name)
        }
        var table = [UInt8](repeating: 0, count: Int(cs))
        putBE64(&table, 0, 2 * cs)
        var block = [UInt8](repeating: 0, count: Int(cs))
        for c in 0..<metadataClusters { _ = Qcow2Image.setEntry(&block, c, 1, order: options.refcountOrder) }
        try file.write(head, at: 0)
        try file.write(table, at: cs)
        try file.write(block, at: 2 * cs)
        try file.write([UInt8](repeating: 0, count: Int(l1Clusters * cs)), at: 3 * cs)
        try file.flush()
    }
}
