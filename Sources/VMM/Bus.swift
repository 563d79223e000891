import Glibc
import VMDSystem

/// A device reached through port I/O or MMIO. Offsets are relative to the base
/// the device was registered at; `size` is 1, 2, 4 or 8. Called on vCPU threads,
/// possibly several at once: a device guards its own state.
public protocol BusDevice: AnyObject {
    func read(offset: UInt64, size: Int) -> UInt64
    func write(offset: UInt64, size: Int, value: UInt64)
}

/// All ones of an access size: what a read of nothing returns on a PC.
func allOnes(size: Int) -> UInt64 {
    size >= 8 ? UInt64.max : (UInt64(1) << UInt64(max(size, 0) * 8)) &- 1
}

/// An address space (I/O ports or guest-physical MMIO) with devices claiming
/// ranges. An access nobody claims is logged once per address, reads return all
/// ones, writes are dropped: a curious guest never stops.
final class Bus {
    struct Range {
        let base: UInt64
        let length: UInt64
        let device: BusDevice
        var end: UInt64 { base + length }  // checked at registration
    }

    let name: String
    private let lock = Mutex()
    private var ranges: [Range] = []  // sorted by base, never overlapping
    private var unclaimedLogged = Set<UInt64>()
    private let unclaimedLogLimit = 64
    private let log: (String) -> Void

    init(name: String, log: @escaping (String) -> Void) {
        self.name = name
        self.log = log
    }

    func register(base: UInt64, length: UInt64, device: BusDevice) throws {
        let (end, overflow) = base.addingReportingOverflow(length)
        guard length > 0, !overflow else {
            throw VMMError("\(name) bus: bad range 0x\(hex(base)) + 0x\(hex(length))")
        }
        try lock.locked {
            if let other = ranges.first(where: { $0.base < end && base < $0.end }) {
                throw VMMError("\(name) bus: 0x\(hex(base))-0x\(hex(end - 1)) overlaps 0x\(hex(other.base))-0x\(hex(other.end - 1))")
            }
            ranges.append(Range(base: base, length: length, device: device))
            ranges.sort { $0.base < $1.base }
        }
    }

    /// Removes the range registered at `base` for `device` (a BAR being moved).
    func unregister(base: UInt64, device: BusDevice) {
        lock.locked { ranges.removeAll { $0.base == base && $0.device === device } }
    }

    /// Drops every device: the PCI bus holds the buses it maps BARs on, and
    /// the buses hold it, so the VM breaks that cycle when it goes away.
    func removeAll() { lock.locked { ranges.removeAll() } }

    /// The device claiming `address` and the offset into it.
    func find(_ address: UInt64) -> (BusDevice, UInt64)? {
        lock.locked {
            var low = 0, high = ranges.count
            while low < high {
                let mid = (low + high) / 2
                if ranges[mid].end <= address { low = mid + 1 } else { high = mid }
            }
            guard low < ranges.count, ranges[low].base <= address else { return nil }
            return (ranges[low].device, address - ranges[low].base)
        }
    }

    func read(_ address: UInt64, size: Int) -> UInt64 {
        if let (device, offset) = find(address) {
            return device.read(offset: offset, size: size) & allOnes(size: size)
        }
        unclaimed(address, size: size, write: nil)
        return allOnes(size: size)
    }

    func write(_ address: UInt64, size: Int, value: UInt64) {
        if let (device, offset) = find(address) {
            device.write(offset: offset, size: size, value: value & allOnes(size: size))
            return
        }
        unclaimed(address, size: size, write: value)
    }

    private func unclaimed(_ address: UInt64, size: Int, write: UInt64?) {
        let message: String? = lock.locked {
            if unclaimedLogged.contains(address) || unclaimedLogged.count > unclaimedLogLimit { return nil }
            unclaimedLogged.insert(address)
            if unclaimedLogged.count > unclaimedLogLimit {
                return "\(name) bus: more than \(unclaimedLogLimit) unclaimed addresses, no longer logging them"
            }
            let what = write.map { "write 0x\(hex($0)) to" } ?? "read from"
            return "\(name) bus: unclaimed \(size)-byte \(what) 0x\(hex(address))"
        }
        if let message { log(message) }
    }
}

func hex<T: BinaryInteger>(_ value: T) -> String { String(value, radix: 16) }

/// A port that reads as zero and ignores writes (port 0x80 POST codes).
final class SinkDevice: BusDevice {
    func read(offset: UInt64, size: Int) -> UInt64 { 0 }
    func write(offset: UInt64, size: Int, value: UInt64) {}
}

/// Lets a device that spans non-adjacent ports (the i8042's 0x60 and 0x64)
/// see the offset it expects: forwards with `offset + shift`.
final class ShiftedPort: BusDevice {
    private let device: BusDevice
    private let shift: UInt64

    init(_ device: BusDevice, shift: UInt64) {
        self.device = device
        self.shift = shift
    }

    func read(offset: UInt64, size: Int) -> UInt64 { device.read(offset: offset + shift, size: size) }
    func write(offset: UInt64, size: Int, value: UInt64) { device.write(offset: offset + shift, size: size, value: value) }
}
