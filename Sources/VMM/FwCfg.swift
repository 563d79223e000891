import VMDSystem

/// Guest RAM as fw_cfg DMA sees it: bounds-checked, RAM only (never the
/// BIOS ROM or MMIO). Returns nil / false for anything outside.
protocol DMAMemory: AnyObject {
    func dmaRead(_ address: UInt64, count: Int) -> [UInt8]?
    func dmaWrite(_ bytes: [UInt8], at address: UInt64) -> Bool
    func dmaFill(_ value: UInt8, at address: UInt64, count: UInt64) -> Bool
}

extension GuestMemory: DMAMemory {
    func dmaRead(_ address: UInt64, count: Int) -> [UInt8]? { read(address, count: count) }
    func dmaWrite(_ bytes: [UInt8], at address: UInt64) -> Bool { (try? write(bytes, at: address, what: "fw_cfg")) != nil }
    func dmaFill(_ value: UInt8, at address: UInt64, count: UInt64) -> Bool { (try? fill(value, at: address, length: count, what: "fw_cfg")) != nil }
}

/// QEMU's firmware configuration device (docs/specs/fw_cfg.rst,
/// hw/nvram/fw_cfg.c), as SeaBIOS reads it, on the x86 I/O ports:
///
///     0x510  selector, 16-bit write (resets the item's read offset)
///     0x511  data, 8-bit reads in sequence; past an item's end they read 0
///            (so do reads of a selector that names no item); writes ignored
///     0x514  DMA address, big-endian: a 32-bit write of the high half at
///            0x514, a 32-bit write of the low half at 0x518 starts the
///            transfer; reading 0x514 gives the signature "QEMU CFG"
///
/// A DMA transfer reads a 16-byte big-endian descriptor (control, length,
/// address) from guest RAM and does what QEMU does: SELECT (selector in
/// control's high 16 bits), then READ, WRITE or SKIP `length` bytes; a read
/// past the item fills zeros; every item here is read-only, so a WRITE sets
/// the ERROR bit; a descriptor or buffer outside guest RAM sets ERROR (the
/// ROM is not RAM: nothing is ever written there). Completion writes the
/// control word back (0 or ERROR). All on the vCPU thread doing the `out`.
///
/// Items: signature (0x00), ID 0x01 = traditional | DMA, NOGRAPHIC (0x04),
/// NB_CPUS (0x05), MAX_CPUS (0x0f), the file directory (0x19), and files
/// from 0x20 sorted by name.
final class FwCfg: BusDevice {
    static let basePort: UInt64 = 0x510
    static let portCount: UInt64 = 12       // 0x510-0x51B
    static let dmaOffset: UInt64 = 4
    static let signature = Array("QEMU".utf8)
    static let dmaSignature = Array("QEMU CFG".utf8)

    static let selectSignature: UInt16 = 0x00, selectID: UInt16 = 0x01, selectNoGraphic: UInt16 = 0x04
    static let selectCPUs: UInt16 = 0x05, selectMaxCPUs: UInt16 = 0x0F, selectFileDir: UInt16 = 0x19
    static let firstFile: UInt16 = 0x20
    static let entryMask: UInt16 = 0x3FFF   // without the write-channel and arch-local bits
    static let maxFileName = 56

    static let dmaError: UInt32 = 0x01, dmaRead: UInt32 = 0x02, dmaSkip: UInt32 = 0x04
    static let dmaSelect: UInt32 = 0x08, dmaWrite: UInt32 = 0x10

    private let lock = Mutex()
    private var items: [UInt16: [UInt8]] = [:]
    private var files: [String: [UInt8]] = [:]
    private var selected: UInt16?
    private var offset = 0
    private var dmaHigh: UInt32 = 0
    private let memory: DMAMemory
    private let log: (String) -> Void

    init(cpus: Int, memory: DMAMemory, log: @escaping (String) -> Void = { _ in }) {
        self.memory = memory
        self.log = log
        items[Self.selectSignature] = Self.signature
        items[Self.selectID] = le32(3)
        items[Self.selectNoGraphic] = le16(1)
        items[Self.selectCPUs] = le16(UInt16(cpus))
        items[Self.selectMaxCPUs] = le16(UInt16(cpus))
        rebuildDirectory()
    }

    /// Adds or replaces a file (before the guest runs: the directory changes).
    func setFile(_ name: String, _ bytes: [UInt8]) {
        precondition(name.utf8.count < Self.maxFileName, "fw_cfg file name \(name) too long")
        lock.locked {
            files[name] = bytes
            rebuildDirectory()
        }
    }

    func file(_ name: String) -> [UInt8]? { lock.locked { files[name] } }

    /// The selector a file is read through.
    func selector(of name: String) -> UInt16? {
        lock.locked { files.keys.sorted().firstIndex(of: name).map { Self.firstFile + UInt16($0) } }
    }

    private func rebuildDirectory() {
        for key in items.keys where key >= Self.firstFile { items[key] = nil }
        var dir = be32(UInt32(files.count))
        for (i, name) in files.keys.sorted().enumerated() {
            let selector = Self.firstFile + UInt16(i)
            items[selector] = files[name]
            var entry = be32(UInt32(files[name]!.count)) + be16(selector) + [0, 0]
            entry += Array(name.utf8) + [UInt8](repeating: 0, count: Self.maxFileName - name.utf8.count)
            dir += entry
        }
        items[Self.selectFileDir] = dir
    }

    // MARK: ports

    func read(offset port: UInt64, size: Int) -> UInt64 {
        switch port {
        case 0, 1:
            // QEMU's combined port: byte reads at 0x510 or 0x511 are data reads.
            guard size == 1 else { return allOnes(size: size) }
            return UInt64(lock.locked { nextByte() })
        case Self.dmaOffset..<(Self.dmaOffset + 8):
            let at = Int(port - Self.dmaOffset)
            guard (size == 4 && (at == 0 || at == 4)) || (size == 8 && at == 0) else { return allOnes(size: size) }
            var v: UInt64 = 0
            for i in 0..<size { v |= UInt64(Self.dmaSignature[at + i]) << (8 * UInt64(i)) }
            return v
        default:
            return allOnes(size: size)
        }
    }

    func write(offset port: UInt64, size: Int, value: UInt64) {
        switch port {
        case 0 where size == 2:
            lock.locked { select(UInt16(truncatingIfNeeded: value)) }
        case Self.dmaOffset where size == 4:
            lock.locked { dmaHigh = UInt32(truncatingIfNeeded: value).byteSwapped }
        case Self.dmaOffset + 4 where size == 4:
            let address: UInt64 = lock.locked {
                let a = UInt64(dmaHigh) << 32 | UInt64(UInt32(truncatingIfNeeded: value).byteSwapped)
                dmaHigh = 0
                return a
            }
            transfer(descriptorAt: address)
        default:
            break  // data-port writes are ignored (QEMU >= 2.4), as are bad sizes
        }
    }

    /// Called with the lock held.
    private func select(_ key: UInt16) {
        offset = 0
        selected = items[key & Self.entryMask] != nil && key & 0x8000 == 0 ? key & Self.entryMask : nil
    }

    /// Called with the lock held.
    private func nextByte() -> UInt8 {
        guard let key = selected, let item = items[key], offset < item.count else { return 0 }
        defer { offset += 1 }
        return item[offset]
    }

    // MARK: DMA

    func transfer(descriptorAt address: UInt64) {
        guard let raw = memory.dmaRead(address, count: 16) else {
            _ = memory.dmaWrite(be32(Self.dmaError), at: address)
            return
        }
        let d = ByteImage(raw)
        var control = d.u32(0)!.byteSwapped
        var length = UInt64(d.u32(4)!.byteSwapped)
        var target = d.u64(8)!.byteSwapped
        let status: UInt32 = lock.locked {
            if control & Self.dmaSelect != 0 { select(UInt16(truncatingIfNeeded: control >> 16)) }
            let isRead = control & Self.dmaRead != 0
            let isWrite = !isRead && control & Self.dmaWrite != 0
            if !isRead && !isWrite && control & Self.dmaSkip == 0 { length = 0 }
            control = 0
            while length > 0 && control & Self.dmaError == 0 {
                let item = selected.flatMap { items[$0] } ?? []
                let count: UInt64
                if offset >= item.count {
                    count = length
                    if isRead && !memory.dmaFill(0, at: target, count: count) { control |= Self.dmaError }
                    if isWrite { control |= Self.dmaError }  // nothing here to write into
                } else {
                    count = min(length, UInt64(item.count - offset))
                    if isRead && !memory.dmaWrite(Array(item[offset..<(offset + Int(count))]), at: target) {
                        control |= Self.dmaError
                    }
                    if isWrite { control |= Self.dmaError }  // every item is read-only
                    offset += Int(count)
                }
                let (next, overflow) = target.addingReportingOverflow(count)
                if overflow { control |= Self.dmaError }
                target = next
                length -= count
            }
            return control
        }
        _ = memory.dmaWrite(be32(status), at: address)
    }
}

func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
func be32(_ v: UInt32) -> [UInt8] { le32(v).reversed() }
