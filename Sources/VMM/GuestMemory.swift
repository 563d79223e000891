import Glibc
import VMDSystem

/// A piece of guest RAM as device processes must map it: `size` bytes of the
/// memory fd from `fdOffset`, seen by the guest at `guestPhysical`.
public struct MemoryRegion: Equatable {
    public let guestPhysical: UInt64
    public let size: UInt64
    public let fdOffset: UInt64
}

/// One BIOS e820 map entry.
public struct E820Entry: Equatable {
    public static let ram: UInt32 = 1, reserved: UInt32 = 2
    public let address: UInt64
    public let size: UInt64
    public let type: UInt32
}

/// The guest-physical layout, as the e820 map tells the guest:
///
///     0x0000_0000 - 0x0009_FBFF   RAM (640 KiB less the EBDA)
///     0x0009_FC00 - 0x000F_FFFF   reserved: EBDA, VGA hole, BIOS area (MP table at 0xF0000)
///     0x0010_0000 - low end       RAM, low end = min(memory, 3 GiB)
///     0xC000_0000 - 0xFFFF_FFFF   PCI hole: memory BARs from 0xC000_0000, IOAPIC
///                                 0xFEC0_0000, LAPIC 0xFEE0_0000 (no RAM)
///     0x1_0000_0000 - ...         RAM above 4 GiB: the rest of the memory
///
/// The memfd holds the low RAM at offset 0 and the high RAM right after it.
public struct GuestMemoryLayout: Equatable {
    public static let pciHoleStart: UInt64 = 0xC000_0000
    public static let highMemoryStart: UInt64 = 0x1_0000_0000
    public static let ebdaStart: UInt64 = 0x9FC00
    public static let highMemoryBase: UInt64 = 0x10_0000  // 1 MiB
    public static let minimumBytes: UInt64 = 2 << 20
    /// 1 TiB: far beyond any host this runs on, and keeps all arithmetic small.
    public static let maximumBytes: UInt64 = 1 << 40

    public let totalBytes: UInt64
    public let lowBytes: UInt64
    public let highBytes: UInt64
    public let regions: [MemoryRegion]
    public let e820: [E820Entry]

    public init(memoryBytes: UInt64) throws {
        guard memoryBytes >= Self.minimumBytes else {
            throw VMMError("memory \(memoryBytes) bytes: at least 2 MiB are needed (the kernel loads at 1 MiB)")
        }
        guard memoryBytes <= Self.maximumBytes else {
            throw VMMError("memory \(memoryBytes) bytes: more than the 1 TiB this VMM supports")
        }
        let total = (memoryBytes + 0xFFF) & ~0xFFF
        totalBytes = total
        lowBytes = min(total, Self.pciHoleStart)
        highBytes = total - lowBytes
        var regions = [MemoryRegion(guestPhysical: 0, size: lowBytes, fdOffset: 0)]
        if highBytes > 0 {
            regions.append(MemoryRegion(guestPhysical: Self.highMemoryStart, size: highBytes, fdOffset: lowBytes))
        }
        self.regions = regions
        var e820 = [
            E820Entry(address: 0, size: Self.ebdaStart, type: E820Entry.ram),
            E820Entry(address: Self.ebdaStart, size: Self.highMemoryBase - Self.ebdaStart, type: E820Entry.reserved),
            E820Entry(address: Self.highMemoryBase, size: lowBytes - Self.highMemoryBase, type: E820Entry.ram),
        ]
        if highBytes > 0 {
            e820.append(E820Entry(address: Self.highMemoryStart, size: highBytes, type: E820Entry.ram))
        }
        self.e820 = e820
    }
}

/// Guest RAM: a sealed memfd mapped shared, with bounds-checked access for the
/// loaders. Every guest address and length is checked with overflow-checked
/// arithmetic and must lie inside one region.
final class GuestMemory {
    let layout: GuestMemoryLayout
    let fd: Int32
    private(set) var mappings: [(region: MemoryRegion, host: UnsafeMutableRawPointer)] = []

    init(layout: GuestMemoryLayout, name: String) throws {
        self.layout = layout
        fd = try Memfd.create(name: "vm \(name) memory", size: Int(layout.totalBytes))
        do {
            for region in layout.regions {
                let host = try SharedMemory.map(fd: fd, size: Int(region.size), offset: Int(region.fdOffset),
                                                what: "guest memory at 0x\(hex(region.guestPhysical))")
                mappings.append((region, host))
            }
        } catch {
            release()
            throw error
        }
    }

    deinit { release() }

    private func release() {
        for mapping in mappings { SharedMemory.unmap(mapping.host, size: Int(mapping.region.size)) }
        mappings.removeAll()
        FD.close(fd)
    }

    /// Host pointer to `length` bytes at `address`, or nil if any byte falls outside RAM.
    func pointer(_ address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        let (end, overflow) = address.addingReportingOverflow(length)
        guard !overflow else { return nil }
        for mapping in mappings {
            let region = mapping.region
            if address >= region.guestPhysical && end <= region.guestPhysical + region.size {
                return mapping.host + Int(address - region.guestPhysical)
            }
        }
        return nil
    }

    func contains(_ address: UInt64, length: UInt64) -> Bool { pointer(address, length: length) != nil }

    func write(_ bytes: [UInt8], at address: UInt64, what: @autoclosure () -> String) throws {
        guard let p = pointer(address, length: UInt64(bytes.count)) else {
            throw VMMError("\(what()): 0x\(hex(address)) + \(bytes.count) bytes is outside guest RAM")
        }
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress { p.copyMemory(from: base, byteCount: source.count) }
        }
    }

    func write(_ bytes: ArraySlice<UInt8>, at address: UInt64, what: @autoclosure () -> String) throws {
        try write(Array(bytes), at: address, what: what())
    }

    func fill(_ value: UInt8, at address: UInt64, length: UInt64, what: @autoclosure () -> String) throws {
        guard let p = pointer(address, length: length) else {
            throw VMMError("\(what()): 0x\(hex(address)) + \(length) bytes is outside guest RAM")
        }
        memset(p, Int32(value), Int(length))
    }

    func read(_ address: UInt64, count: Int) -> [UInt8]? {
        guard count >= 0, let p = pointer(address, length: UInt64(count)) else { return nil }
        return [UInt8](UnsafeRawBufferPointer(start: p, count: count))
    }
}
