// The frontend's guest memory as SET_MEM_TABLE describes it: up to eight
// regions, each a descriptor mapped shared and read-write. Descriptor
// addresses are guest-physical; ring addresses arrive as the frontend's own
// (user) addresses and are translated to guest-physical once, at
// SET_VRING_ADDR.
import Glibc
import CVhostUser
import Virtio

public struct VhostMemoryError: Error, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Guest memory made of the regions of one SET_MEM_TABLE.
public final class VhostGuestMemory: GuestMemory {
    public struct Region {
        public var description: VhostMemoryRegionDescription
        /// Host address of the region's first byte.
        public var host: UnsafeMutableRawPointer
        var mapping: UnsafeMutableRawPointer
        var mappingLength: Int
    }

    public let regions: [Region]
    private let ownsMappings: Bool

    /// Map every region from its descriptor (`fds[i]` for region i). The
    /// descriptors are not closed. A region must lie inside its file, and
    /// no two may overlap in guest-physical or user address space.
    public static func map(_ table: MemoryTablePayload, fds: [Int32]) throws -> VhostGuestMemory {
        guard fds.count == table.regions.count else {
            throw VhostMemoryError("memory table has \(table.regions.count) regions but \(fds.count) descriptors")
        }
        try validate(table.regions)
        var mapped: [Region] = []
        do {
            for (region, fd) in zip(table.regions, fds) {
                var info = stat()
                guard fstat(fd, &info) == 0 else {
                    throw VhostMemoryError("region at 0x\(hex(region.guestPhysicalAddress)): fstat: \(String(cString: strerror(errno)))")
                }
                let fileSize = UInt64(max(info.st_size, 0))
                let end = region.mmapOffset + region.size   // no overflow: validated
                // Past the end of the file an access would be SIGBUS.
                guard end <= fileSize || info.st_mode & S_IFMT == S_IFCHR else {
                    throw VhostMemoryError("region at 0x\(hex(region.guestPhysicalAddress)) (offset 0x\(hex(region.mmapOffset)), size 0x\(hex(region.size))) lies past the end of its 0x\(hex(fileSize))-byte file")
                }
                guard end <= UInt64(Int.max) else { throw VhostMemoryError("region too large") }
                guard let p = mmap(nil, Int(end), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
                    throw VhostMemoryError("region at 0x\(hex(region.guestPhysicalAddress)): mmap: \(String(cString: strerror(errno)))")
                }
                mapped.append(Region(description: region, host: p + Int(region.mmapOffset), mapping: p, mappingLength: Int(end)))
            }
        } catch {
            for m in mapped { munmap(m.mapping, m.mappingLength) }
            throw error
        }
        return VhostGuestMemory(regions: mapped, ownsMappings: true)
    }

    /// Sizes, overflow and overlap of a table, before anything is mapped.
    public static func validate(_ regions: [VhostMemoryRegionDescription]) throws {
        guard !regions.isEmpty, regions.count <= VhostUserLimits.maxMemoryRegions else {
            throw VhostMemoryError("memory table with \(regions.count) regions")
        }
        for r in regions {
            guard r.size > 0 else { throw VhostMemoryError("empty region at 0x\(hex(r.guestPhysicalAddress))") }
            guard !r.guestPhysicalAddress.addingReportingOverflow(r.size).overflow,
                  !r.userAddress.addingReportingOverflow(r.size).overflow,
                  !r.mmapOffset.addingReportingOverflow(r.size).overflow else {
                throw VhostMemoryError("region at 0x\(hex(r.guestPhysicalAddress)) (size 0x\(hex(r.size)), offset 0x\(hex(r.mmapOffset))) wraps the address space")
            }
        }
        for (i, a) in regions.enumerated() {
            for b in regions[(i + 1)...] {
                if a.guestPhysicalAddress < b.guestPhysicalAddress + b.size && b.guestPhysicalAddress < a.guestPhysicalAddress + a.size {
                    throw VhostMemoryError("regions at 0x\(hex(a.guestPhysicalAddress)) and 0x\(hex(b.guestPhysicalAddress)) overlap")
                }
                if a.userAddress < b.userAddress + b.size && b.userAddress < a.userAddress + a.size {
                    throw VhostMemoryError("regions at user address 0x\(hex(a.userAddress)) and 0x\(hex(b.userAddress)) overlap")
                }
            }
        }
    }

    /// Regions over memory this process already has (tests): `host[i]` is
    /// the host address of region i, valid for its whole size.
    public init(regions: [VhostMemoryRegionDescription], hostAddresses: [UnsafeMutableRawPointer]) throws {
        try Self.validate(regions)
        precondition(regions.count == hostAddresses.count)
        self.regions = zip(regions, hostAddresses).map {
            Region(description: $0, host: $1, mapping: $1, mappingLength: 0)
        }
        self.ownsMappings = false
    }

    private init(regions: [Region], ownsMappings: Bool) {
        self.regions = regions
        self.ownsMappings = ownsMappings
    }

    deinit {
        if ownsMappings { for r in regions { munmap(r.mapping, r.mappingLength) } }
    }

    public func buffer(at address: UInt64, length: Int) -> UnsafeMutableRawBufferPointer? {
        guard length >= 0 else { return nil }
        if length == 0 { return UnsafeMutableRawBufferPointer(start: nil, count: 0) }
        let (end, overflow) = address.addingReportingOverflow(UInt64(length))
        guard !overflow else { return nil }
        for r in regions {
            let start = r.description.guestPhysicalAddress
            guard address >= start, end <= start + r.description.size else { continue }
            return UnsafeMutableRawBufferPointer(start: r.host + Int(address - start), count: length)
        }
        return nil
    }

    /// The guest-physical address of `[user, user + length)` in the
    /// frontend's address space, if one region holds all of it.
    public func guestAddress(ofUser user: UInt64, length: UInt64) -> UInt64? {
        let (end, overflow) = user.addingReportingOverflow(length)
        guard !overflow else { return nil }
        for r in regions {
            let start = r.description.userAddress
            guard user >= start, end <= start + r.description.size else { continue }
            return r.description.guestPhysicalAddress + (user - start)
        }
        return nil
    }
}

/// A GuestMemory whose backing is replaced at each SET_MEM_TABLE, so that
/// virtqueues made once keep working across frontends. With no table every
/// access fails (a guest error, never a trap).
public final class SwitchableGuestMemory: GuestMemory {
    public var current: VhostGuestMemory?
    public init() {}
    public func buffer(at address: UInt64, length: Int) -> UnsafeMutableRawBufferPointer? {
        current?.buffer(at: address, length: length)
    }
}

@inline(__always) func hex(_ value: UInt64) -> String { String(value, radix: 16) }
