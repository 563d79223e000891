// A qcow2 image, read and written (QEMU's docs/interop/qcow2.txt): L1/L2
// tables, refcount table and blocks of any width 1..64 bits, allocation on
// write, zero clusters (v3), compressed clusters (read; a write moves the
// cluster to a fresh one), a backing disk for unallocated clusters.
//
// Crash consistency. Every link (L2 or L1 entry) is written into the file
// before the write it belongs to completes, so a killed and restarted
// process (which rereads the metadata) finds every completed write. For a
// power loss the order of what reaches the disk matters:
// - clusters are reserved ahead, in batches that grow to `reserveLimit`:
//   counted in their refcount blocks (and the file extended over them),
//   then one barrier (fdatasync) for the whole batch (with `asyncBarrier`,
//   the next batch's runs in the background while this one lasts).
//   Allocating a cluster of the batch then needs no barrier: data and L2
//   entry, done (`mapForWrite`: the link first, the caller writes the data
//   before completing the request);
// - a cluster whose old content a crash must not lose (copied from the
//   base, a compressed cluster, a preallocated one) is made durable (a
//   barrier) before its link: else the link could land without the data;
// - a new L2 table is written, then (after a barrier) its L1 entry;
// - freeing runs the other way: unlink, barrier, then the refcount drops.
// A crash at any point leaves at worst leaked clusters (reservations not
// used yet), which `qemu-img check` accepts; `close()` gives unused ones
// back. A FLUSH (fdatasync) makes every completed write and its links durable.
// The image metadata is hostile input: every offset is checked against the
// file and the metadata areas, and bad metadata is an error, never a trap.

public final class Qcow2Image: VirtualDisk {
    public private(set) var header: Qcow2Header
    let file: ImageFile
    public private(set) var isReadOnly: Bool
    public let backing: VirtualDisk?

    let clusterBits: UInt64
    let clusterSize: UInt64
    let l2Entries: UInt64
    /// Refcount entries per refcount block.
    let refcountEntries: UInt64
    var fileSize: UInt64

    var l1: [UInt64] = []
    var refcountTable: [UInt64] = []
    var l2Cache: [UInt64: [UInt64]] = [:]
    var refBlockCache: [UInt64: [UInt8]] = [:]
    let cacheLimit: Int
    /// Cluster indices holding metadata (header, L1, refcount table and
    /// blocks, L2 tables): data must never land there.
    var metadataClusters = Set<UInt64>()
    /// Where the allocator looks for a free cluster next.
    var nextFreeCluster: UInt64 = 0
    var compressedCache: (offset: UInt64, data: [UInt8])?
    var hasUnflushedWrites = true
    /// Clusters counted (refcount 1, durable) and not used yet, ascending;
    /// `allocateCluster` takes them from `reservedNext` on.
    var reserved: [UInt64] = []
    var reservedNext = 0
    /// Clusters the next reservation counts (doubles up to `reserveLimit`).
    var reserveBatch: UInt64 = 1
    var reserveLimit: UInt64
    /// A refcount change not yet written: block offset, changed bytes.
    var pendingRefcounts: (block: UInt64, bytes: Range<Int>)?
    /// Reservations start at this many bytes and grow to `maxReserveBytes`.
    static let firstReserveBytes: UInt64 = 1 << 20
    static let maxReserveBytes: UInt64 = 32 << 20
    /// Clusters `mapForWrite` allocated whose data is still being written
    /// by the caller (host cluster -> what the guest cluster was): reads
    /// see what was there until the write completes (`fillCompleted`).
    var filling: [UInt64: Mapping] = [:]
    /// The next batch, counted before the current one runs out; usable once
    /// an asynchronous barrier made it durable (`nextDurable`).
    var nextReserved: [UInt64] = []
    var nextDurable = false
    var barrierGeneration = 0
    /// Starts an fdatasync of the file without waiting and calls the
    /// closure when it has succeeded (vioblk: on its ring); nil: none, every
    /// batch is made durable in place.
    public var asyncBarrier: ((@escaping () -> Void) -> Void)?
    /// Unused reserved clusters (leaked if the process dies now).
    public var reservedClusters: Int { reserved.count - reservedNext + nextReserved.count }

    static let l1OffsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let l1ReservedMask: UInt64 = 0x7f00_0000_0000_01ff
    static let l2OffsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let l2ReservedMask: UInt64 = 0x3f00_0000_0000_01fe
    static let copiedFlag: UInt64 = 1 << 63
    static let compressedFlag: UInt64 = 1 << 62
    static let zeroFlag: UInt64 = 1
    /// Host offsets are at most 56 bits.
    static let maxHostOffset: UInt64 = 1 << 56

    public var virtualSize: UInt64 { header.size }

    /// Opens a qcow2 image on `file`. `backing` is its already-opened base
    /// (nil if the image has none); with `requireBacking` false a missing
    /// base reads as zeroes (for inspecting a single image).
    public init(file: ImageFile, readOnly: Bool, backing: VirtualDisk? = nil, requireBacking: Bool = true) throws {
        self.file = file
        self.backing = backing
        self.isReadOnly = readOnly
        fileSize = try file.size()
        var first = [UInt8](repeating: 0, count: Int(min(fileSize, UInt64(Qcow2Header.probeLength))))
        let n = try first.withUnsafeMutableBytes { try file.read(into: $0, at: 0) }
        if n < first.count { first.removeLast(first.count - n) }
        header = try Qcow2Header.parse(first, fileSize: fileSize)
        clusterBits = UInt64(header.clusterBits)
        clusterSize = header.clusterSize
        l2Entries = header.l2Entries
        refcountEntries = clusterSize * 8 / header.refcountBits
        cacheLimit = max(16, Int((32 << 20) / clusterSize))
        reserveBatch = max(1, Self.firstReserveBytes / clusterSize)
        reserveLimit = max(reserveBatch, Self.maxReserveBytes / clusterSize)
        if header.backingFile != nil && backing == nil && requireBacking {
            throw DiskImageError.invalid("backing file \(header.backingFile!) was not opened")
        }
        if !readOnly, let refusal = Self.writeRefusal(header) { throw refusal }
        try loadTables()
        nextFreeCluster = fileSize / clusterSize + (fileSize % clusterSize == 0 ? 0 : 1)
        if !readOnly && header.isDirty {
            // Not closed cleanly with lazy refcounts: as QEMU does, rebuild
            // the refcounts from the tables before writing anything.
            try repairRefcounts()
        }
        if !readOnly && header.version == 3 && header.autoclearFeatures != 0 {
            // Features this implementation does not keep up to date (bitmaps)
            // are cleared before the first write, as the format requires.
            var field = [UInt8](repeating: 0, count: 8)
            putBE64(&field, 0, 0)
            try file.write(field, at: 88)
            try file.flush()
            header.autoclearFeatures = 0
        }
    }

    /// Why an image with this header cannot be opened for writing, if it cannot.
    public static func writeRefusal(_ header: Qcow2Header) -> DiskImageError? {
        if header.isCorrupt {
            return .readOnly("image is marked corrupt: refused for writing (repair it with qemu-img check -r all)")
        }
        if header.nbSnapshots > 0 { return .unsupported("internal snapshots (for writing)") }
        return nil
    }

    /// Reads the L1 and refcount tables and checks every entry.
    func loadTables() throws {
        metadataClusters = [0]
        let cs = clusterSize
        func addRange(_ offset: UInt64, _ length: UInt64) {
            guard length > 0 else { return }
            var c = offset / cs
            while c <= (offset + length - 1) / cs { metadataClusters.insert(c); c += 1 }
        }
        let l1Bytes = UInt64(header.l1Size) * 8
        addRange(header.l1TableOffset, l1Bytes)
        let refBytes = UInt64(header.refcountTableClusters) * cs
        addRange(header.refcountTableOffset, refBytes)
        let fixed = metadataClusters

        let l1Raw = l1Bytes == 0 ? [] : try file.readExactly(Int(l1Bytes), at: header.l1TableOffset, what: "L1 table")
        l1 = l1Raw.withUnsafeBytes { b in (0..<Int(header.l1Size)).map { be64(b, $0 * 8) } }
        let refRaw = try file.readExactly(Int(refBytes), at: header.refcountTableOffset, what: "refcount table")
        refcountTable = refRaw.withUnsafeBytes { b in (0..<Int(refBytes / 8)).map { be64(b, $0 * 8) } }

        let fileClusters = fileSize / cs
        for (i, entry) in refcountTable.enumerated() where entry != 0 {
            guard entry & 0x1ff == 0 else { throw DiskImageError.invalid("refcount table entry \(i) has reserved bits set") }
            guard entry % cs == 0 else { throw DiskImageError.invalid("refcount block \(i) at offset \(entry) is not cluster-aligned") }
            let c = entry / cs
            guard c < fileClusters else { throw DiskImageError.invalid("refcount block \(i) at offset \(entry) is past the end of the file") }
            guard !metadataClusters.contains(c) else {
                throw DiskImageError.invalid("refcount block \(i) at offset \(entry) overlaps other metadata")
            }
            metadataClusters.insert(c)
        }
        for (i, entry) in l1.enumerated() {
            let offset = entry & Self.l1OffsetMask
            guard entry & Self.l1ReservedMask == 0 else { throw DiskImageError.invalid("L1 entry \(i) has reserved bits set") }
            guard offset != 0 else { continue }
            guard offset % cs == 0 else { throw DiskImageError.invalid("L1 entry \(i): L2 table offset \(offset) is not cluster-aligned") }
            let c = offset / cs
            guard c < fileClusters else { throw DiskImageError.invalid("L1 entry \(i): L2 table at offset \(offset) is past the end of the file") }
            guard !metadataClusters.contains(c) else {
                throw DiskImageError.invalid("L1 entry \(i): L2 table at offset \(offset) overlaps \(fixed.contains(c) ? "the header, L1 or refcount table" : "other metadata")")
            }
            metadataClusters.insert(c)
        }
    }

    // MARK: Mapping

    enum Mapping {
        case unallocated
        case zero
        /// A standard cluster at `host`; `zeroFlag`: preallocated, reads as zeroes.
        case data(host: UInt64, zeroFlag: Bool)
        case compressed(offset: UInt64, sectors: UInt64)
    }

    func split(_ guestCluster: UInt64) -> (l1Index: Int, l2Index: Int) {
        (Int(guestCluster / l2Entries), Int(guestCluster % l2Entries))
    }

    func l2Table(at offset: UInt64) throws -> [UInt64] {
        if let table = l2Cache[offset] { return table }
        let raw = try file.readExactly(Int(clusterSize), at: offset, what: "L2 table")
        let table = raw.withUnsafeBytes { b in (0..<Int(l2Entries)).map { be64(b, $0 * 8) } }
        if l2Cache.count >= cacheLimit { l2Cache.remove(at: l2Cache.startIndex) }
        l2Cache[offset] = table
        return table
    }

    func decode(_ entry: UInt64, l1Index: Int, l2Index: Int) throws -> Mapping {
        let cs = clusterSize
        // Only an error spells out where (this runs for every cluster looked up).
        var where_: String { "L2 entry \(l2Index) of L1 entry \(l1Index)" }
        if entry & Self.compressedFlag != 0 {
            let x = 62 - (clusterBits - 8)
            let offset = entry & ((1 << x) - 1)
            let sectors = ((entry >> x) & ((1 << (62 - x)) - 1)) + 1
            guard offset >= cs, offset < fileSize else {
                throw DiskImageError.invalid("\(where_): compressed cluster at offset \(offset) is outside the file")
            }
            guard !metadataClusters.contains(offset / cs) else {
                throw DiskImageError.invalid("\(where_): compressed cluster at offset \(offset) overlaps metadata")
            }
            return .compressed(offset: offset, sectors: sectors)
        }
        guard entry & Self.l2ReservedMask == 0 else { throw DiskImageError.invalid("\(where_) has reserved bits set") }
        let zero = entry & Self.zeroFlag != 0
        if zero && header.version < 3 { throw DiskImageError.invalid("\(where_) has the zero flag in a version 2 image") }
        let host = entry & Self.l2OffsetMask
        if host == 0 { return zero ? .zero : .unallocated }
        guard host % cs == 0 else { throw DiskImageError.invalid("\(where_): data cluster offset \(host) is not cluster-aligned") }
        let allocatedEnd = (fileSize + cs - 1) / cs
        guard host / cs < allocatedEnd else {
            throw DiskImageError.invalid("\(where_): data cluster at offset \(host) is past the end of the file")
        }
        guard !metadataClusters.contains(host / cs) else {
            throw DiskImageError.invalid("\(where_): data cluster at offset \(host) overlaps metadata")
        }
        return .data(host: host, zeroFlag: zero)
    }

    func lookup(_ guestCluster: UInt64) throws -> Mapping {
        let (i, j) = split(guestCluster)
        guard i < l1.count else { return .unallocated }
        let l2Offset = l1[i] & Self.l1OffsetMask
        guard l2Offset != 0 else { return .unallocated }
        return try decode(try l2Table(at: l2Offset)[j], l1Index: i, l2Index: j)
    }

    /// `lookup`, except that a cluster whose first data is still being
    /// written reads as what it was before.
    func lookupForRead(_ guestCluster: UInt64) throws -> Mapping {
        let mapping = try lookup(guestCluster)
        if !filling.isEmpty, case .data(let host, false) = mapping, let old = filling[host >> clusterBits] { return old }
        return mapping
    }

    /// The caller's write of [hostOffset, +length) (from `mapForWrite`) is
    /// done, or failed: reads see the file there again.
    public func fillCompleted(hostOffset: UInt64, length: UInt64) {
        guard !filling.isEmpty, length > 0 else { return }
        var c = hostOffset >> clusterBits
        while c <= (hostOffset + length - 1) >> clusterBits { filling[c] = nil; c += 1 }
    }

    /// Every write of the caller is done (or dropped).
    public func allFillsCompleted() { filling = [:] }

    func decompress(offset: UInt64, sectors: UInt64) throws -> [UInt8] {
        if let cached = compressedCache, cached.offset == offset { return cached.data }
        // As QEMU: the stored size counts 512-byte sectors from the sector
        // the data starts in; the last cluster of the file may be short.
        let stored = sectors * 512 - (offset & 511)
        let length = Int(min(stored, fileSize - offset, 2 * clusterSize))
        var input = [UInt8](repeating: 0, count: length)
        let n = try input.withUnsafeMutableBytes { try file.read(into: $0, at: offset) }
        input.removeLast(length - n)
        guard let data = inflateRaw(input, outputCount: Int(clusterSize)) else {
            throw DiskImageError.invalid("compressed cluster at offset \(offset) does not decompress")
        }
        compressedCache = (offset, data)
        return data
    }

    // MARK: Reading

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        guard let base = buffer.baseAddress else { return }
        let cs = clusterSize
        var done = 0
        while done < buffer.count {
            let (pos, overflow) = offset.addingReportingOverflow(UInt64(done))
            let remaining = buffer.count - done
            if overflow || pos >= header.size {
                (base + done).initializeMemory(as: UInt8.self, repeating: 0, count: remaining)
                return
            }
            let inCluster = pos & (cs - 1)
            let n = Int(min(cs - inCluster, UInt64(remaining), header.size - pos))
            let part = UnsafeMutableRawBufferPointer(start: base + done, count: n)
            switch try lookupForRead(pos >> clusterBits) {
            case .unallocated:
                if let backing { try backing.read(into: part, at: pos) } else { part.initializeMemory(as: UInt8.self, repeating: 0) }
            case .zero, .data(_, true):
                part.initializeMemory(as: UInt8.self, repeating: 0)
            case .data(let host, false):
                let got = try file.read(into: part, at: host + inCluster)
                if got < n { (base + done + got).initializeMemory(as: UInt8.self, repeating: 0, count: n - got) }
            case .compressed(let coffset, let sectors):
                let data = try decompress(offset: coffset, sectors: sectors)
                data.withUnsafeBytes { part.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(inCluster)..<Int(inCluster) + n])) }
            }
            done += n
        }
    }

    /// See `VirtualDisk.extents`. Only clusters already allocated (and,
    /// for writes, standard data clusters, overwritten in place) are file
    /// ranges; everything a write must allocate is `.synchronous`.
    public func extents(at offset: UInt64, length: UInt64, forWrite: Bool) throws -> [DiskExtent] {
        if forWrite {
            try checkWritable()
            try checkRange(offset, length)
        }
        let cs = clusterSize
        var list: [DiskExtent] = []
        var done: UInt64 = 0
        while done < length {
            let (pos, overflow) = offset.addingReportingOverflow(done)
            if overflow || pos >= header.size {
                DiskExtent.append(.zero(length: length - done), to: &list)
                break
            }
            let inCluster = pos & (cs - 1)
            let n = min(cs - inCluster, length - done, header.size - pos)
            let mapping = forWrite ? try lookup(pos >> clusterBits) : try lookupForRead(pos >> clusterBits)
            if forWrite, !filling.isEmpty, case .data(let host, false) = mapping { filling[host >> clusterBits] = nil }
            switch mapping {
            case .data(let host, false):
                if let fd = file.descriptor {
                    DiskExtent.append(.file(fd: fd, offset: host + inCluster, length: n), to: &list)
                } else {
                    DiskExtent.append(.synchronous(length: n), to: &list)
                }
            case _ where forWrite:
                DiskExtent.append(.synchronous(length: n), to: &list)
            case .unallocated:
                if let backing {
                    for e in try backing.extents(at: pos, length: n, forWrite: false) { DiskExtent.append(e, to: &list) }
                } else {
                    DiskExtent.append(.zero(length: n), to: &list)
                }
            case .zero, .data(_, true):
                DiskExtent.append(.zero(length: n), to: &list)
            case .compressed:
                DiskExtent.append(.synchronous(length: n), to: &list)
            }
            done += n
        }
        return list
    }

    // MARK: Refcounts

    func refBlock(at offset: UInt64) throws -> [UInt8] {
        if let block = refBlockCache[offset] { return block }
        let block = try file.readExactly(Int(clusterSize), at: offset, what: "refcount block")
        if refBlockCache.count >= cacheLimit { refBlockCache.remove(at: refBlockCache.startIndex) }
        refBlockCache[offset] = block
        return block
    }

    static func entry(_ block: [UInt8], _ index: UInt64, order: UInt32) -> UInt64 {
        let i = Int(index)
        switch order {
        case 0: return UInt64(block[i / 8] >> UInt8(i % 8)) & 1
        case 1: return UInt64(block[i / 4] >> UInt8(2 * (i % 4))) & 3
        case 2: return UInt64(block[i / 2] >> UInt8(4 * (i % 2))) & 15
        default:
            let width = 1 << (Int(order) - 3)
            var value: UInt64 = 0
            for k in 0..<width { value = value << 8 | UInt64(block[i * width + k]) }
            return value
        }
    }

    /// Sets entry `index`; returns the byte range that changed.
    static func setEntry(_ block: inout [UInt8], _ index: UInt64, _ value: UInt64, order: UInt32) -> Range<Int> {
        let i = Int(index)
        switch order {
        case 0, 1, 2:
            let bits = 1 << Int(order)
            let perByte = 8 / bits
            let shift = UInt8(bits * (i % perByte))
            let mask = UInt8((1 << bits) - 1) << shift
            block[i / perByte] = block[i / perByte] & ~mask | (UInt8(truncatingIfNeeded: value) << shift) & mask
            return (i / perByte)..<(i / perByte + 1)
        default:
            let width = 1 << (Int(order) - 3)
            for k in 0..<width {
                block[i * width + k] = UInt8(truncatingIfNeeded: value >> UInt64(8 * (width - 1 - k)))
            }
            return (i * width)..<((i + 1) * width)
        }
    }

    func refcount(_ cluster: UInt64) throws -> UInt64 {
        let t = cluster / refcountEntries
        guard t < UInt64(refcountTable.count), refcountTable[Int(t)] != 0 else { return 0 }
        return Self.entry(try refBlock(at: refcountTable[Int(t)]), cluster % refcountEntries, order: header.refcountOrder)
    }

    /// Sets a refcount; with `deferred`, the change is written with the
    /// next ones of the same block (`writePendingRefcounts`).
    func setRefcount(_ cluster: UInt64, _ value: UInt64, deferred: Bool = false) throws {
        let t = cluster / refcountEntries
        guard t < UInt64(refcountTable.count), refcountTable[Int(t)] != 0 else {
            throw DiskImageError.invalid("cluster \(cluster) has no refcount block")
        }
        let offset = refcountTable[Int(t)]
        if let p = pendingRefcounts, p.block != offset { try writePendingRefcounts() }
        var block = try refBlock(at: offset)
        let changed = Self.setEntry(&block, cluster % refcountEntries, value, order: header.refcountOrder)
        refBlockCache[offset] = block
        if deferred {
            let bytes = pendingRefcounts.map { min($0.bytes.lowerBound, changed.lowerBound)..<max($0.bytes.upperBound, changed.upperBound) } ?? changed
            pendingRefcounts = (offset, bytes)
        } else {
            try file.write(Array(block[changed]), at: offset + UInt64(changed.lowerBound))
        }
    }

    /// Writes the deferred refcount changes (one block's, see `setRefcount`).
    func writePendingRefcounts() throws {
        guard let p = pendingRefcounts else { return }
        pendingRefcounts = nil
        guard let block = refBlockCache[p.block] else {
            throw DiskImageError.invalid("refcount block at \(p.block) left the cache with changes not written")
        }
        try file.write(Array(block[p.bytes]), at: p.block + UInt64(p.bytes.lowerBound))
    }

    /// Drops one reference to each cluster touched by [offset, offset+length).
    func release(offset: UInt64, length: UInt64) throws {
        guard length > 0 else { return }
        var c = offset / clusterSize
        while c <= (offset + length - 1) / clusterSize {
            let count = try refcount(c)
            if count > 0 { try setRefcount(c, count - 1) }
            c += 1
        }
    }

    /// A cluster for new data or an L2 table, from the reservation (its
    /// refcount already durable: the caller may link it without a barrier).
    func allocateCluster() throws -> UInt64 {
        if reservedNext == reserved.count {
            if !nextReserved.isEmpty {
                // Counted ahead: durable already, or made so here.
                if !nextDurable { try file.flush() }
                reserved = nextReserved
                reservedNext = 0
                nextReserved = []
                nextDurable = false
                barrierGeneration += 1
            } else {
                let list = try countClusters()
                try file.flush()
                reserved = list
                reservedNext = 0
            }
        }
        let c = reserved[reservedNext]
        reservedNext += 1
        if let start = asyncBarrier, nextReserved.isEmpty, reservedNext * 2 >= reserved.count {
            // Half used: count the next batch now, and make it durable in
            // the background while this one lasts.
            nextReserved = try countClusters()
            nextDurable = false
            let generation = barrierGeneration
            start { [weak self] in
                guard let self, self.barrierGeneration == generation else { return }
                self.nextDurable = true
            }
        }
        return c * clusterSize
    }

    /// Counts the next `reserveBatch` free clusters and extends the file
    /// over them (a link to one never points past the end); the caller
    /// makes that durable (a barrier) before linking any of them.
    func countClusters() throws -> [UInt64] {
        var list: [UInt64] = []
        list.reserveCapacity(Int(reserveBatch))
        while UInt64(list.count) < reserveBatch { list.append(try claimCluster(deferred: true) / clusterSize) }
        try writePendingRefcounts()
        // Claims ascend, past every metadata cluster they made.
        let end = (list[list.count - 1] + 1) * clusterSize
        if try file.size() < end { try file.write([0], at: end - 1) }
        fileSize = max(fileSize, end)
        reserveBatch = min(reserveBatch * 2, reserveLimit)
        return list
    }

    /// Whether host cluster `cluster` is counted in use (refcount > 0).
    public func isAllocatedInFile(cluster: UInt64) throws -> Bool { try refcount(cluster) > 0 }

    /// Gives the reserved clusters not used yet back (refcount 0) and
    /// makes everything durable: call before the image is closed (a
    /// process that dies instead leaves them leaked, which is consistent).
    public func close() throws {
        guard !isReadOnly else { return }
        if reservedNext < reserved.count || !nextReserved.isEmpty {
            for c in reserved[reservedNext...] + nextReserved { try setRefcount(c, 0, deferred: true) }
            try writePendingRefcounts()
            reserved = []
            reservedNext = 0
            nextReserved = []
            barrierGeneration += 1
            hasUnflushedWrites = true
        }
        try flush()
    }

    /// Finds a free cluster, counts it (refcount 1) and returns its offset.
    /// Allocation is at the end of the file (freed clusters inside it are
    /// not reused), creating refcount blocks and growing the refcount table
    /// as needed. The count is not durable yet (no barrier); with
    /// `deferred` it may not even be written yet (`writePendingRefcounts`).
    func claimCluster(deferred: Bool = false) throws -> UInt64 {
        while true {
            let c = nextFreeCluster
            guard c < Self.maxHostOffset >> clusterBits else {
                throw DiskImageError.io(errno: 28 /* ENOSPC */, operation: "allocate cluster")
            }
            let t = c / refcountEntries
            if t >= UInt64(refcountTable.count) {
                try writePendingRefcounts()
                try growRefcountTable(from: c)
                continue
            }
            if refcountTable[Int(t)] == 0 {
                try writePendingRefcounts()
                // A new refcount block at c, counting itself.
                var block = [UInt8](repeating: 0, count: Int(clusterSize))
                _ = Self.setEntry(&block, c % refcountEntries, 1, order: header.refcountOrder)
                try file.write(block, at: c * clusterSize)
                try file.flush()
                var entry = [UInt8](repeating: 0, count: 8)
                putBE64(&entry, 0, c * clusterSize)
                try file.write(entry, at: header.refcountTableOffset + t * 8)
                refcountTable[Int(t)] = c * clusterSize
                refBlockCache[c * clusterSize] = block
                metadataClusters.insert(c)
                fileSize = max(fileSize, (c + 1) * clusterSize)
                nextFreeCluster = c + 1
                continue
            }
            // The deferred changes first: reading another block may evict theirs.
            if let p = pendingRefcounts, p.block != refcountTable[Int(t)] { try writePendingRefcounts() }
            if try refcount(c) != 0 {
                nextFreeCluster = c + 1
                continue
            }
            try setRefcount(c, 1, deferred: deferred)
            nextFreeCluster = c + 1
            return c * clusterSize
        }
    }

    /// Moves the refcount table to a bigger one at the end of the file, with
    /// the refcount blocks that count it, then switches the header to it
    /// and frees the old table (as QEMU's qcow2_refcount_area does).
    func growRefcountTable(from c: UInt64) throws {
        let cs = clusterSize
        let oldClusters = UInt64(header.refcountTableClusters)
        var blocks: UInt64 = 1
        var tableClusters = oldClusters * 2
        while true {
            let end = c + blocks + tableClusters
            let first = c / refcountEntries
            let last = (end - 1) / refcountEntries
            let needBlocks = last - first + 1
            let needTable = max(oldClusters * 2, ((last + 1) * 8 + cs - 1) / cs)
            if needBlocks == blocks && needTable == tableClusters { break }
            blocks = needBlocks
            tableClusters = needTable
        }
        guard tableClusters * cs <= Qcow2Header.maxRefcountTableBytes else {
            throw DiskImageError.io(errno: 28 /* ENOSPC */, operation: "grow refcount table")
        }
        let end = c + blocks + tableClusters
        let first = c / refcountEntries
        var newTable = refcountTable + [UInt64](repeating: 0, count: Int(tableClusters * cs / 8) - refcountTable.count)
        for k in 0..<blocks {
            var block = [UInt8](repeating: 0, count: Int(cs))
            let t = first + k
            var cluster = max(c, t * refcountEntries)
            while cluster < min(end, (t + 1) * refcountEntries) {
                _ = Self.setEntry(&block, cluster % refcountEntries, 1, order: header.refcountOrder)
                cluster += 1
            }
            try file.write(block, at: (c + k) * cs)
            refBlockCache[(c + k) * cs] = block
            newTable[Int(t)] = (c + k) * cs
        }
        var raw = [UInt8](repeating: 0, count: Int(tableClusters * cs))
        for (i, entry) in newTable.enumerated() { putBE64(&raw, i * 8, entry) }
        let tableOffset = (c + blocks) * cs
        try file.write(raw, at: tableOffset)
        try file.flush()
        var field = [UInt8](repeating: 0, count: 12)
        putBE64(&field, 0, tableOffset)
        putBE32(&field, 8, UInt32(tableClusters))
        try file.write(field, at: 48)
        try file.flush()
        let oldOffset = header.refcountTableOffset
        header.refcountTableOffset = tableOffset
        header.refcountTableClusters = UInt32(tableClusters)
        refcountTable = newTable
        fileSize = max(fileSize, end * cs)
        for k in 0..<oldClusters { metadataClusters.remove(oldOffset / cs + k) }
        for cluster in c..<end { metadataClusters.insert(cluster) }
        nextFreeCluster = end
        try release(offset: oldOffset, length: oldClusters * cs)
    }

    // MARK: Repair

    /// How many references each cluster has, from the header, the tables
    /// and every L2 entry.
    func computeReferences() throws -> [UInt64: UInt64] {
        let cs = clusterSize
        var refs: [UInt64: UInt64] = [:]
        func add(_ offset: UInt64, _ length: UInt64) {
            guard length > 0 else { return }
            var c = offset / cs
            while c <= (offset + length - 1) / cs { refs[c, default: 0] += 1; c += 1 }
        }
        add(0, cs)
        add(header.l1TableOffset, UInt64(header.l1Size) * 8)
        add(header.refcountTableOffset, UInt64(header.refcountTableClusters) * cs)
        for block in refcountTable where block != 0 { add(block, cs) }
        for (i, entry) in l1.enumerated() {
            let table = entry & Self.l1OffsetMask
            guard table != 0 else { continue }
            add(table, cs)
            for (j, l2) in try l2Table(at: table).enumerated() {
                switch try decode(l2, l1Index: i, l2Index: j) {
                case .data(let host, _): add(host, cs)
                case .compressed(let offset, let sectors): add(offset & ~511, sectors * 512)
                default: break
                }
            }
        }
        return refs
    }

    /// Rebuilds every refcount from the references (the dirty bit of lazy
    /// refcounts), then clears the dirty bit.
    func repairRefcounts() throws {
        var refs = try computeReferences()
        // Refcount blocks the lazy updates never made.
        while let missing = refs.keys.first(where: { c in
            let t = c / refcountEntries
            return t >= UInt64(refcountTable.count) || refcountTable[Int(t)] == 0
        }) {
            let t = missing / refcountEntries
            guard t < UInt64(refcountTable.count) else {
                throw DiskImageError.readOnly("image was not closed cleanly and its refcount table is too small to repair here (repair it with qemu-img check -r all)")
            }
            let block = try claimCluster()
            try file.write([UInt8](repeating: 0, count: Int(clusterSize)), at: block)
            fileSize = max(fileSize, block + clusterSize)
            try file.flush()
            var entry = [UInt8](repeating: 0, count: 8)
            putBE64(&entry, 0, block)
            try file.write(entry, at: header.refcountTableOffset + t * 8)
            refcountTable[Int(t)] = block
            refBlockCache[block] = [UInt8](repeating: 0, count: Int(clusterSize))
            metadataClusters.insert(block / clusterSize)
            refs = try computeReferences()
        }
        let last = max(refs.keys.max() ?? 0, (fileSize + clusterSize - 1) / clusterSize)
        let maxRefcount: UInt64 = header.refcountOrder >= 6 ? .max : (1 << header.refcountBits) - 1
        for c in 0...last {
            let want = refs[c] ?? 0
            let t = c / refcountEntries
            guard t < UInt64(refcountTable.count), refcountTable[Int(t)] != 0 else { continue }
            guard want <= maxRefcount else {
                throw DiskImageError.invalid("cluster \(c) has \(want) references, more than refcounts of \(header.refcountBits) bits count")
            }
            if try refcount(c) != want { try setRefcount(c, want) }
        }
        try file.flush()
        header.incompatibleFeatures &= ~Qcow2Header.dirtyBit
        var field = [UInt8](repeating: 0, count: 8)
        putBE64(&field, 0, header.incompatibleFeatures)
        try file.write(field, at: 72)
        try file.flush()
    }

    // MARK: Writing

    func checkWritable() throws {
        guard !isReadOnly else { throw DiskImageError.readOnly("image is read-only") }
    }

    func checkRange(_ offset: UInt64, _ length: UInt64) throws {
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= header.size else {
            throw DiskImageError.io(errno: 5 /* EIO */, operation: "access past the end of the disk at \(offset)")
        }
    }

    /// Marks the image corrupt (v3, as QEMU does on finding metadata
    /// overlaps while writing) and stops writing to it.
    func markCorrupt() {
        isReadOnly = true
        guard header.version == 3 else { return }
        header.incompatibleFeatures |= Qcow2Header.corruptBit
        var field = [UInt8](repeating: 0, count: 8)
        putBE64(&field, 0, header.incompatibleFeatures)
        try? file.write(field, at: 72)
        try? file.flush()
    }

    /// After a failed update the in-memory tables may be ahead of the file:
    /// reload them from it.
    func resync() {
        // Reservations stay: their counts are in the file (a failed
        // reservation never became `reserved`).
        pendingRefcounts = nil
        filling = [:]
        l2Cache = [:]
        refBlockCache = [:]
        compressedCache = nil
        if let size = try? file.size() {
            fileSize = size
            nextFreeCluster = max(nextFreeCluster, (size + clusterSize - 1) / clusterSize)
        }
        do { try loadTables() } catch { markCorrupt() }
    }

    struct PendingL2 { var table: UInt64; var index: Int; var entry: UInt64 }

    /// The L2 table for `l1Index`, allocating (and writing, zeroed) a new one
    /// if there is none. A new table's L1 entry is recorded in `newL1`.
    func l2ForWrite(_ l1Index: Int, newL1: inout [Int]) throws -> UInt64 {
        guard l1Index < l1.count else { throw DiskImageError.invalid("L1 index \(l1Index) beyond the L1 table") }
        let existing = l1[l1Index] & Self.l1OffsetMask
        if existing != 0 { return existing }
        let offset = try allocateCluster()
        try file.write([UInt8](repeating: 0, count: Int(clusterSize)), at: offset)
        fileSize = max(fileSize, offset + clusterSize)
        metadataClusters.insert(offset / clusterSize)
        l2Cache[offset] = [UInt64](repeating: 0, count: Int(l2Entries))
        l1[l1Index] = offset | Self.copiedFlag
        newL1.append(l1Index)
        return offset
    }

    /// Writes the recorded L2 entries, then (after a barrier) the L1 entries
    /// of new L2 tables. The new clusters are reserved ones (refcounts
    /// durable): no barrier before the L2 entries unless `barrier` (a new
    /// cluster holds old data a crash must not lose).
    func commit(_ pending: [PendingL2], newL1: [Int], barrier: Bool) throws {
        guard !pending.isEmpty || !newL1.isEmpty else { return }
        if barrier { try file.flush() }
        var entry = [UInt8](repeating: 0, count: 8)
        for update in pending {
            putBE64(&entry, 0, update.entry)
            try file.write(entry, at: update.table + UInt64(update.index) * 8)
        }
        if !newL1.isEmpty {
            try file.flush()
            for i in newL1 {
                putBE64(&entry, 0, l1[i])
                try file.write(entry, at: header.l1TableOffset + UInt64(i) * 8)
            }
        }
    }

    func setCached(_ table: UInt64, _ index: Int, _ entry: UInt64) throws {
        if l2Cache[table] == nil { _ = try l2Table(at: table) }
        l2Cache[table]?[index] = entry    // in place: no copy of the table
    }

    public func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try checkWritable()
        try checkRange(offset, UInt64(buffer.count))
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        hasUnflushedWrites = true
        do {
            try writeClusters(base, buffer.count, offset)
        } catch let error as DiskImageError {
            if case .invalid = error { markCorrupt() }
            resync()
            throw error
        }
    }

    func writeClusters(_ base: UnsafeRawPointer, _ count: Int, _ offset: UInt64) throws {
        let cs = clusterSize
        var pending: [PendingL2] = []
        var newL1: [Int] = []
        var releases: [(UInt64, UInt64)] = []
        var barrier = false
        var done = 0
        while done < count {
            let pos = offset + UInt64(done)
            let inCluster = pos & (cs - 1)
            let n = Int(min(cs - inCluster, UInt64(count - done)))
            let data = UnsafeRawBufferPointer(start: base + done, count: n)
            let guestCluster = pos >> clusterBits
            let (i, j) = split(guestCluster)
            let mapping = try lookup(guestCluster)
            if case .data(let host, false) = mapping {
                if !filling.isEmpty { filling[host >> clusterBits] = nil }
                try file.write(from: data, at: host + inCluster)
                done += n
                continue
            }
            // A whole new cluster: what was there, with this write on top
            // (a write of the whole cluster goes straight from `data`).
            var cluster = [UInt8](repeating: 0, count: n < Int(cs) ? Int(cs) : 0)
            if n < Int(cs) {
                switch mapping {
                case .unallocated:
                    if let backing {
                        try cluster.withUnsafeMutableBytes { try backing.read(into: $0, at: guestCluster << clusterBits) }
                        // Base data that must survive a crash with the link.
                        if cluster.contains(where: { $0 != 0 }) { barrier = true }
                    }
                case .compressed(let coffset, let sectors):
                    cluster = try decompress(offset: coffset, sectors: sectors)
                case .zero, .data:
                    break
                }
            }
            // Replacing a compressed cluster: its data must not be lost either.
            if case .compressed = mapping { barrier = true }
            if n < Int(cs) {
                cluster.withUnsafeMutableBytes { (UnsafeMutableRawBufferPointer(rebasing: $0[Int(inCluster)..<Int(inCluster) + n])).copyMemory(from: data) }
            }
            let table = try l2ForWrite(i, newL1: &newL1)
            let host: UInt64
            if case .data(let preallocated, true) = mapping {
                host = preallocated    // a preallocated zero cluster: filled in place
                barrier = true         // its old bytes must not show through the link
            } else {
                host = try allocateCluster()
            }
            if n < Int(cs) { try file.write(cluster, at: host) } else { try file.write(from: data, at: host) }
            fileSize = max(fileSize, host + cs)
            if case .compressed(let coffset, let sectors) = mapping {
                releases.append((coffset & ~511, sectors * 512))
                compressedCache = nil
            }
            let entry = host | Self.copiedFlag
            try setCached(table, j, entry)
            pending.append(PendingL2(table: table, index: j, entry: entry))
            done += n
        }
        try commit(pending, newL1: newL1, barrier: barrier)
        if !releases.isEmpty {
            try file.flush()
            for (start, length) in releases { try release(offset: start, length: length) }
        }
    }

    /// Where a write of [offset, offset+length) goes, for a caller that
    /// moves the data itself (asynchronous I/O), allocating what can be:
    /// clusters already allocated and clusters the write fills whole (new
    /// ones are allocated and linked here, before the data is written: the
    /// link lands in the file before the write completes, and a crash
    /// before the data is durable reads zeroes there, as for any write
    /// not flushed) are file ranges; the rest (partial clusters that
    /// need what was there, compressed ones) is `.synchronous`, for `write`.
    public func mapForWrite(at offset: UInt64, length: UInt64) throws -> [DiskExtent] {
        try checkWritable()
        try checkRange(offset, length)
        guard let fd = file.descriptor else { return [.synchronous(length: length)] }
        hasUnflushedWrites = true
        let cs = clusterSize
        var list: [DiskExtent] = []
        var pending: [PendingL2] = []
        var newL1: [Int] = []
        do {
            var done: UInt64 = 0
            while done < length {
                let pos = offset + done
                let inCluster = pos & (cs - 1)
                let n = min(cs - inCluster, length - done)
                let guestCluster = pos >> clusterBits
                let mapping = try lookup(guestCluster)
                switch mapping {
                case .data(let host, false):
                    // A write into a cluster still being filled: reads see
                    // the file from now on (both writes are the guest's).
                    if !filling.isEmpty { filling[host >> clusterBits] = nil }
                    DiskExtent.append(.file(fd: fd, offset: host + inCluster, length: n), to: &list)
                case .unallocated, .zero:
                    guard n == cs else { fallthrough }
                    let (i, j) = split(guestCluster)
                    let table = try l2ForWrite(i, newL1: &newL1)
                    let host = try allocateCluster()
                    fileSize = max(fileSize, host + cs)
                    let entry = host | Self.copiedFlag
                    try setCached(table, j, entry)
                    pending.append(PendingL2(table: table, index: j, entry: entry))
                    filling[host >> clusterBits] = mapping
                    DiskExtent.append(.file(fd: fd, offset: host, length: n), to: &list)
                default:
                    DiskExtent.append(.synchronous(length: n), to: &list)
                }
                done += n
            }
            try commit(pending, newL1: newL1, barrier: false)
        } catch let error as DiskImageError {
            if case .invalid = error { markCorrupt() }
            resync()
            throw error
        }
        return list
    }

    public func flush() throws {
        guard !isReadOnly else { return }
        guard hasUnflushedWrites else { return }
        try file.flush()
        hasUnflushedWrites = false
    }

    /// Sets every whole cluster in the range to `newEntry` (0: unallocated,
    /// or the zero flag), then frees what they held. Partial clusters at
    /// either end are left to the caller.
    func replaceWholeClusters(offset: UInt64, length: UInt64, newEntry: UInt64) throws {
        let cs = clusterSize
        var first = (offset + cs - 1) / cs
        let end = (offset + length) / cs
        var pending: [PendingL2] = []
        var releases: [(UInt64, UInt64)] = []
        while first < end {
            let (i, j) = split(first)
            defer { first += 1 }
            guard i < l1.count else { break }
            let table = l1[i] & Self.l1OffsetMask
            if table == 0 {
                // No L2 table: reads fall through to the backing disk. Only
                // the zero flag over a backing disk needs a table here.
                if newEntry == 0 || backing == nil { continue }
                throw DiskImageError.io(errno: 95 /* EOPNOTSUPP */, operation: "zero clusters without an L2 table")
            }
            let mapping = try decode(try l2Table(at: table)[j], l1Index: i, l2Index: j)
            switch mapping {
            case .data(let host, _):
                filling[host >> clusterBits] = nil
                releases.append((host, cs))
            case .compressed(let coffset, let sectors): releases.append((coffset & ~511, sectors * 512))
            case .unallocated where newEntry == 0: continue
            case .zero where newEntry != 0: continue
            default: break
            }
            try setCached(table, j, newEntry)
            pending.append(PendingL2(table: table, index: j, entry: newEntry))
        }
        guard !pending.isEmpty else { return }
        var entry = [UInt8](repeating: 0, count: 8)
        for update in pending {
            putBE64(&entry, 0, update.entry)
            try file.write(entry, at: update.table + UInt64(update.index) * 8)
        }
        compressedCache = nil
        if !releases.isEmpty {
            try file.flush()
            for (start, len) in releases { try release(offset: start, length: len) }
        }
    }

    public func discard(offset: UInt64, length: UInt64) throws {
        try checkWritable()
        try checkRange(offset, length)
        hasUnflushedWrites = true
        // With a base under it, a discarded cluster becomes a zero cluster
        // (v3) so the base's data does not show through, as QEMU does.
        let newEntry: UInt64 = header.version >= 3 && backing != nil ? Self.zeroFlag : 0
        do {
            try replaceWholeClusters(offset: offset, length: length, newEntry: newEntry)
        } catch let error as DiskImageError {
            if case .io(95, _) = error { resync(); return }   // advisory: nothing more to do
            if case .invalid = error { markCorrupt() }
            resync()
            throw error
        }
    }

    public func writeZeroes(offset: UInt64, length: UInt64) throws {
        try checkWritable()
        try checkRange(offset, length)
        hasUnflushedWrites = true
        let cs = clusterSize
        let wholeStart = (offset + cs - 1) / cs * cs
        let wholeEnd = (offset + length) / cs * cs
        let canUnmap = header.version >= 3 || backing == nil
        if wholeStart < wholeEnd && canUnmap {
            let entry: UInt64 = header.version >= 3 ? Self.zeroFlag : 0
            do {
                try replaceWholeClusters(offset: wholeStart, length: wholeEnd - wholeStart, newEntry: entry)
                try writeZeroBytes(offset: offset, length: wholeStart - offset)
                try writeZeroBytes(offset: wholeEnd, length: offset + length - wholeEnd)
                return
            } catch let error as DiskImageError {
                if case .io(95, _) = error { resync() } else {
                    if case .invalid = error { markCorrupt() }
                    resync()
                    throw error
                }
            }
        }
        try writeZeroBytes(offset: offset, length: length)
    }

    func writeZeroBytes(offset: UInt64, length: UInt64) throws {
        guard length > 0 else { return }
        let chunk = Int(min(max(clusterSize, 64 * 1024), length))
        let zeroes = [UInt8](repeating: 0, count: chunk)
        var done: UInt64 = 0
        while done < length {
            let n = Int(min(UInt64(chunk), length - done))
            try zeroes.withUnsafeBytes { try write(from: UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: offset + done) }
            done += UInt64(n)
        }
    }
}
