// Guest-physical memory as a device process sees it.
//
// Every address and length that reaches this file came from the guest, so
// every range is checked with overflow-checked arithmetic and a failed check
// is a nil, never a trap. Multi-byte values are little-endian (virtio 1.x).
import Glibc

/// Guest memory, addressed by guest-physical address.
///
/// Conformers implement only `buffer(at:length:)`; the typed accessors are
/// built on it. The guest may change its memory at any moment, so callers
/// read each ring field once into a local and validate the copy.
public protocol GuestMemory: AnyObject {
    /// The host view of `[address, address + length)`, or nil unless the
    /// whole range lies inside one RAM region. A zero length yields an empty
    /// buffer for any address.
    func buffer(at address: UInt64, length: Int) -> UnsafeMutableRawBufferPointer?
}

extension GuestMemory {
    /// Whether `[address, address + length)` is guest RAM.
    public func contains(_ address: UInt64, length: UInt64) -> Bool {
        guard length <= UInt64(Int.max) else { return false }
        return buffer(at: address, length: Int(length)) != nil
    }

    public func read(at address: UInt64, into destination: UnsafeMutableRawBufferPointer) -> Bool {
        guard let source = buffer(at: address, length: destination.count) else { return false }
        if let to = destination.baseAddress, let from = source.baseAddress {
            memcpy(to, from, destination.count)
        }
        return true
    }

    public func write(at address: UInt64, from source: UnsafeRawBufferPointer) -> Bool {
        guard let destination = buffer(at: address, length: source.count) else { return false }
        if let to = destination.baseAddress, let from = source.baseAddress {
            memcpy(to, from, source.count)
        }
        return true
    }

    public func readBytes(at address: UInt64, count: Int) -> [UInt8]? {
        guard count >= 0, let source = buffer(at: address, length: count) else { return nil }
        return Array(UnsafeRawBufferPointer(source))
    }

    public func writeBytes(at address: UInt64, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { write(at: address, from: $0) }
    }

    // The typed accessors are what the rings use, and the guest writes ring
    // indices while the device reads them: each naturally aligned access must
    // be ONE load or store, never a byte copy. (A generic loadUnaligned went
    // through memcpy, whose 2-byte case reads the high byte a second time:
    // a read racing avail_idx 0xDFFF -> 0xE000 returned 0xE0FF, the queue
    // failed with "available index ... more than 128 ahead", and the guest's
    // ring stuck; issue 9, item 6.) Concrete typed pointers compile to single
    // loads and stores even unoptimised; x86-64 makes aligned ones atomic.
    // Unaligned addresses (never a ring index: enable() checks alignment)
    // take the byte-copy path.

    public func load16(at address: UInt64) -> UInt16? {
        guard let p = buffer(at: address, length: 2)?.baseAddress else { return nil }
        if UInt(bitPattern: p) & 1 == 0 { return UInt16(littleEndian: p.assumingMemoryBound(to: UInt16.self).pointee) }
        return UInt16(littleEndian: p.loadUnaligned(as: UInt16.self))
    }

    public func load32(at address: UInt64) -> UInt32? {
        guard let p = buffer(at: address, length: 4)?.baseAddress else { return nil }
        if UInt(bitPattern: p) & 3 == 0 { return UInt32(littleEndian: p.assumingMemoryBound(to: UInt32.self).pointee) }
        return UInt32(littleEndian: p.loadUnaligned(as: UInt32.self))
    }

    public func load64(at address: UInt64) -> UInt64? {
        guard let p = buffer(at: address, length: 8)?.baseAddress else { return nil }
        if UInt(bitPattern: p) & 7 == 0 { return UInt64(littleEndian: p.assumingMemoryBound(to: UInt64.self).pointee) }
        return UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
    }

    @discardableResult
    public func store16(_ value: UInt16, at address: UInt64) -> Bool {
        guard let p = buffer(at: address, length: 2)?.baseAddress else { return false }
        if UInt(bitPattern: p) & 1 == 0 { p.assumingMemoryBound(to: UInt16.self).pointee = value.littleEndian }
        else { p.storeBytes(of: value.littleEndian, as: UInt16.self) }
        return true
    }

    @discardableResult
    public func store32(_ value: UInt32, at address: UInt64) -> Bool {
        guard let p = buffer(at: address, length: 4)?.baseAddress else { return false }
        if UInt(bitPattern: p) & 3 == 0 { p.assumingMemoryBound(to: UInt32.self).pointee = value.littleEndian }
        else { p.storeBytes(of: value.littleEndian, as: UInt32.self) }
        return true
    }

    @discardableResult
    public func store64(_ value: UInt64, at address: UInt64) -> Bool {
        guard let p = buffer(at: address, length: 8)?.baseAddress else { return false }
        if UInt(bitPattern: p) & 7 == 0 { p.assumingMemoryBound(to: UInt64.self).pointee = value.littleEndian }
        else { p.storeBytes(of: value.littleEndian, as: UInt64.self) }
        return true
    }
}

/// One contiguous stretch of guest RAM inside a host mapping.
public struct GuestMemoryRegion: Equatable, Sendable {
    public var guestPhysicalAddress: UInt64
    public var size: UInt64
    public var offsetInMapping: UInt64

    public init(guestPhysicalAddress: UInt64, size: UInt64, offsetInMapping: UInt64) {
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.offsetInMapping = offsetInMapping
    }
}

public enum GuestMemoryLayoutError: Error, Equatable, CustomStringConvertible {
    case regionOutsideMapping(GuestMemoryRegion, mappingSize: UInt64)
    case regionWrapsAddressSpace(GuestMemoryRegion)
    case regionsOverlap(GuestMemoryRegion, GuestMemoryRegion)
    case mappingFailed(errno: Int32)

    public var description: String {
        switch self {
        case .regionOutsideMapping(let r, let size):
            return "guest memory region at 0x\(String(r.guestPhysicalAddress, radix: 16)) (offset 0x\(String(r.offsetInMapping, radix: 16)), size 0x\(String(r.size, radix: 16))) lies outside the 0x\(String(size, radix: 16))-byte mapping"
        case .regionWrapsAddressSpace(let r):
            return "guest memory region at 0x\(String(r.guestPhysicalAddress, radix: 16)) wraps the address space"
        case .mappingFailed(let code):
            return "cannot map guest memory: \(virtioErrnoDescription(code))"
        case .regionsOverlap(let a, let b):
            return "guest memory regions at 0x\(String(a.guestPhysicalAddress, radix: 16)) and 0x\(String(b.guestPhysicalAddress, radix: 16)) overlap"
        }
    }
}

/// Guest RAM mapped into this process (e.g. an mmap of the VM's memfd):
/// RAM below the PCI hole and RAM above 4 GiB are regions of one mapping.
/// The mapping is owned by the caller and must outlive this object.
public final class MappedGuestMemory: GuestMemory {
    public let base: UnsafeMutableRawPointer
    public let mappingSize: UInt64
    public let regions: [GuestMemoryRegion]

    /// Set when this object made the mapping (see `map(fd:...)`) and must undo it.
    private var ownsMapping = false

    /// Map `mappingSize` bytes of guest RAM from `fd` (the VM's memfd),
    /// shared and read-write, as a device process does at start.
    public static func map(fd: Int32, mappingSize: UInt64,
                           regions: [GuestMemoryRegion]) throws -> MappedGuestMemory {
        guard mappingSize > 0, mappingSize <= UInt64(Int.max) else {
            throw GuestMemoryLayoutError.mappingFailed(errno: EINVAL)
        }
        guard let base = mmap(nil, Int(mappingSize), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0),
              base != MAP_FAILED else {
            throw GuestMemoryLayoutError.mappingFailed(errno: errno)
        }
        do {
            let memory = try MappedGuestMemory(base: base, mappingSize: mappingSize, regions: regions)
            memory.ownsMapping = true
            return memory
        } catch {
            munmap(base, Int(mappingSize))
            throw error
        }
    }

    deinit {
        if ownsMapping { munmap(base, Int(mappingSize)) }
    }

    public init(base: UnsafeMutableRawPointer, mappingSize: UInt64,
                regions: [GuestMemoryRegion]) throws {
        for region in regions {
            let (guestEnd, wraps) = region.guestPhysicalAddress.addingReportingOverflow(region.size)
            if wraps || guestEnd == 0 && region.size != 0 {   // ends exactly at 2^64: unaddressable
                throw GuestMemoryLayoutError.regionWrapsAddressSpace(region)
            }
            let (hostEnd, overflow) = region.offsetInMapping.addingReportingOverflow(region.size)
            if overflow || hostEnd > mappingSize || mappingSize > UInt64(Int.max) {
                throw GuestMemoryLayoutError.regionOutsideMapping(region, mappingSize: mappingSize)
            }
        }
        let sorted = regions.filter { $0.size > 0 }.sorted { $0.guestPhysicalAddress < $1.guestPhysicalAddress }
        for (a, b) in zip(sorted, sorted.dropFirst())
        where a.guestPhysicalAddress + a.size > b.guestPhysicalAddress {
            throw GuestMemoryLayoutError.regionsOverlap(a, b)
        }
        self.base = base
        self.mappingSize = mappingSize
        self.regions = sorted
    }

    public func buffer(at address: UInt64, length: Int) -> UnsafeMutableRawBufferPointer? {
        guard length >= 0 else { return nil }
        if length == 0 { return UnsafeMutableRawBufferPointer(start: nil, count: 0) }
        let (end, overflow) = address.addingReportingOverflow(UInt64(length))
        guard !overflow else { return nil }
        for region in regions where address >= region.guestPhysicalAddress {
            // region.guestPhysicalAddress + size cannot overflow: checked in init.
            let regionEnd = region.guestPhysicalAddress + region.size
            guard end <= regionEnd else { continue }
            let offset = region.offsetInMapping + (address - region.guestPhysicalAddress)
            return UnsafeMutableRawBufferPointer(start: base + Int(offset), count: length)
        }
        return nil
    }
}

/// Guest memory in an ordinary heap allocation, for tests and fuzzing:
/// `size` bytes of zeroed RAM starting at guest-physical `baseAddress`.
public final class PlainGuestMemory: GuestMemory {
    public let baseAddress: UInt64
    public let size: Int
    public let storage: UnsafeMutableRawPointer

    public init(size: Int, baseAddress: UInt64 = 0) {
        precondition(size > 0 && baseAddress.addingReportingOverflow(UInt64(size)).overflow == false,
                     "PlainGuestMemory: bad test layout")
        self.size = size
        self.baseAddress = baseAddress
        self.storage = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        memset(storage, 0, size)
    }

    deinit { storage.deallocate() }

    public func buffer(at address: UInt64, length: Int) -> UnsafeMutableRawBufferPointer? {
        guard length >= 0 else { return nil }
        if length == 0 { return UnsafeMutableRawBufferPointer(start: nil, count: 0) }
        guard address >= baseAddress else { return nil }
        let offset = address - baseAddress
        let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
        guard !overflow, end <= UInt64(size) else { return nil }
        return UnsafeMutableRawBufferPointer(start: storage + Int(offset), count: length)
    }
}
