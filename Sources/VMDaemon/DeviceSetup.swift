import VMDControl
import Virtio

/// What a device process is told at start, in the first message on its
/// sync channel (devopVMInfo). Descriptors: 3 sync, 4 async, 5 guest
/// memory, 6 the backend (disk image, tap, ISO) when the device has one.
struct DeviceSetup: Equatable {
    enum Kind: String { case blk, net, rnd, scsi, vmmci }

    var kind: Kind
    var name: String           // vioblk0, vionet1, viornd, vioscsi, vmmci
    var vmName: String
    /// Where guest RAM lies in the memfd, as the device will map it.
    var regions: [GuestMemoryRegion]
    var readOnly = false
    var identifier = ""        // vioblk GET_ID
    var mac: [UInt8] = []
    var lockedLladdr = false
    /// Queue-notify eventfds passed after the backend (or after guest
    /// memory when there is none), one per queue, in queue order.
    var notifyFDs: UInt32 = 0
    /// vioblk: the image's format and its bases' ("raw", "qcow2"); the
    /// bases' descriptors follow the backend's, before the notify eventfds.
    var diskFormats: [String] = ["raw"]

    func encoded() -> [UInt8] {
        var w = WireWriter()
        w.string(kind.rawValue); w.string(name); w.string(vmName)
        w.u32(UInt32(regions.count))
        for r in regions { w.u64(r.guestPhysicalAddress); w.u64(r.size); w.u64(r.offsetInMapping) }
        w.u32(readOnly ? 1 : 0); w.string(identifier)
        w.u32(UInt32(mac.count)); for b in mac { w.u32(UInt32(b)) }
        w.u32(lockedLladdr ? 1 : 0)
        w.u32(notifyFDs)
        w.u32(UInt32(diskFormats.count)); for f in diskFormats { w.string(f) }
        return w.bytes
    }

    init(kind: Kind, name: String, vmName: String, regions: [GuestMemoryRegion]) {
        self.kind = kind; self.name = name; self.vmName = vmName; self.regions = regions
    }

    init(decoding bytes: [UInt8]) throws {
        var r = WireReader(bytes)
        guard let k = Kind(rawValue: try r.string(max: 16)) else { throw WireReader.Truncated() }
        kind = k
        name = try r.string(max: 32); vmName = try r.string(max: 64)
        let n = try r.u32()
        guard n <= 8 else { throw WireReader.Truncated() }
        regions = []
        for _ in 0..<n { regions.append(GuestMemoryRegion(guestPhysicalAddress: try r.u64(), size: try r.u64(), offsetInMapping: try r.u64())) }
        readOnly = try r.u32() != 0
        identifier = try r.string(max: 64)
        let m = try r.u32()
        guard m == 0 || m == 6 else { throw WireReader.Truncated() }
        mac = []
        for _ in 0..<m { mac.append(UInt8(truncatingIfNeeded: try r.u32())) }
        lockedLladdr = try r.u32() != 0
        notifyFDs = try r.u32()
        guard notifyFDs <= 8 else { throw WireReader.Truncated() }
        let nf = try r.u32()
        guard nf >= 1 && nf <= 17 else { throw WireReader.Truncated() }
        diskFormats = try (0..<nf).map { _ in try r.string(max: 8) }
    }
}
