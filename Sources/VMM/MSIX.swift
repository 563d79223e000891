import CKVM
import VMDSystem

// MSI-X for PCI functions (PCI Local Bus 3.0, 6.8.2) and the KVM side of
// interrupts that bypass the VMM's threads: irqfds (an eventfd KVM turns
// into an interrupt) and the GSI routing that points MSI GSIs at the
// guest's message address and data.

/// The MSI-X capability's layout: the table at offset 0 of its BAR, the
/// pending-bit array (PBA) at `pbaOffset`, both in one memory BAR.
public enum MSIXLayout {
    public static let capabilityID: UInt8 = 0x11
    public static let entrySize = 16
    public static let maxVectors = 64
    public static let pbaOffset: UInt32 = 0x800
    public static let barSize: UInt32 = 0x1000
    public static let controlEnable: UInt16 = 0x8000
    public static let controlFunctionMask: UInt16 = 0x4000

    /// The capability structure (ID, next placeholder, message control,
    /// table offset/BIR, PBA offset/BIR) for `vectors` vectors in BAR `bar`.
    public static func capability(vectors: Int, bar: UInt8) -> [UInt8] {
        var bytes: [UInt8] = [capabilityID, 0]
        appendLE(UInt16(vectors - 1), to: &bytes)
        appendLE(UInt32(bar), to: &bytes)
        appendLE(pbaOffset | UInt32(bar), to: &bytes)
        return bytes
    }

    static func appendLE<T: FixedWidthInteger>(_ v: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
}

/// Where the mask and pending bits of a function's vectors live, so that
/// whoever raises a vector (another process) sees the masks and leaves
/// pending bits: the VMM keeps them in memory it shares with that process.
public protocol MSIXVectorState: AnyObject {
    func setControl(enabled: Bool, functionMask: Bool)
    func setVectorMask(_ vector: Int, masked: Bool)
    /// Clears `vector`'s pending bit; true if it was set.
    func takePending(_ vector: Int) -> Bool
    var pendingBits: UInt64 { get }
}

/// The MSI-X table of one function, served by the VMM on vCPU threads (no
/// round trip to the device). Each vector has a GSI whose KVM route follows
/// the entry's address and data, and an eventfd bound to that GSI (irqfd);
/// `signal` writes it when a pending vector is unmasked. Thread-safe.
public final class MSIXTable {
    public let vectorCount: Int
    public let gsis: [UInt32]
    private let state: MSIXVectorState
    private let route: ([(gsi: UInt32, address: UInt64, data: UInt32)]) -> Void
    private let signal: (Int) -> Void
    private let lock = Mutex()
    private var entries: [[UInt32]]            // address lo, address hi, data, vector control
    private var routed: [(UInt64, UInt32)?]
    private var enabled = false
    private var functionMask = false

    /// `route` is given the (GSI, address, data) of vectors whose message
    /// changed while live (the VM's MSIRouter; a recorder in tests).
    init(vectorCount: Int, gsis: [UInt32], state: MSIXVectorState,
         route: @escaping ([(gsi: UInt32, address: UInt64, data: UInt32)]) -> Void,
         signal: @escaping (Int) -> Void) {
        self.vectorCount = vectorCount
        self.gsis = gsis
        self.state = state
        self.route = route
        self.signal = signal
        // Every vector starts masked (PCI 3.0 6.8.2.9).
        entries = Array(repeating: [0, 0, 0, 1], count: vectorCount)
        routed = Array(repeating: nil, count: vectorCount)
        state.setControl(enabled: false, functionMask: false)
        for v in 0..<vectorCount { state.setVectorMask(v, masked: true) }
    }

    private func masked(_ v: Int) -> Bool { functionMask || entries[v][3] & 1 != 0 }

    /// A read of the table or the PBA (offset in the BAR).
    public func read(offset: UInt32, size: Int) -> UInt32 {
        lock.locked {
            let dword = Int(offset / 4), shift = UInt32(offset % 4) * 8
            let value: UInt32
            if offset >= MSIXLayout.pbaOffset {
                let word = Int(offset - MSIXLayout.pbaOffset) / 4
                let bits = state.pendingBits
                value = word == 0 ? UInt32(truncatingIfNeeded: bits) : word == 1 ? UInt32(truncatingIfNeeded: bits >> 32) : 0
            } else if dword / 4 < vectorCount {
                value = entries[dword / 4][dword % 4]
            } else {
                value = 0
            }
            let mask: UInt32 = size >= 4 ? 0xffff_ffff : (1 << (UInt32(size) * 8)) - 1
            return (value >> shift) & mask
        }
    }

    /// A write to the table (the PBA is read-only).
    public func write(offset: UInt32, size: Int, value: UInt32) {
        let fire: [Int] = lock.locked {
            guard offset < MSIXLayout.pbaOffset, size == 4 || size == 2 || size == 1 else { return [] }
            let dword = Int(offset / 4)
            guard dword / 4 < vectorCount else { return [] }
            let v = dword / 4, field = dword % 4
            let shift = UInt32(offset % 4) * 8
            let mask: UInt32 = (size >= 4 ? 0xffff_ffff : (1 << (UInt32(size) * 8)) - 1) << shift
            let wasMasked = masked(v)
            var newValue = (entries[v][field] & ~mask) | ((value << shift) & mask)
            if field == 3 { newValue &= 1 }   // only the mask bit is writable
            entries[v][field] = newValue
            if field == 3 { state.setVectorMask(v, masked: newValue & 1 != 0) }
            return update([v], wasMasked: [wasMasked])
        }
        for v in fire { signal(v) }
    }

    /// The guest wrote the capability's message control.
    public func controlWritten(_ control: UInt16) {
        let fire: [Int] = lock.locked {
            let all = Array(0..<vectorCount)
            let was = all.map { masked($0) || !enabled }
            enabled = control & MSIXLayout.controlEnable != 0
            functionMask = control & MSIXLayout.controlFunctionMask != 0
            state.setControl(enabled: enabled, functionMask: functionMask)
            return update(all, wasMasked: was)
        }
        for v in fire { signal(v) }
    }

    /// Routes the vectors that are live with their current message, and
    /// returns those that were just unmasked with an interrupt pending.
    private func update(_ vectors: [Int], wasMasked: [Bool]) -> [Int] {
        var changes: [(gsi: UInt32, address: UInt64, data: UInt32)] = []
        var fire: [Int] = []
        for (i, v) in vectors.enumerated() {
            let message = (UInt64(entries[v][1]) << 32 | UInt64(entries[v][0]), entries[v][2])
            if enabled && !masked(v), routed[v].map({ $0 != message }) ?? true {
                routed[v] = message
                changes.append((gsis[v], message.0, message.1))
            }
            if enabled && !masked(v) && wasMasked[i] && state.takePending(v) { fire.append(v) }
        }
        if !changes.isEmpty { route(changes) }
        return fire
    }
}

/// The VM's MSI routes: GSIs from 24 up (above the IOAPIC's pins), each
/// pointing at an MSI address and data. KVM_SET_GSI_ROUTING replaces the
/// whole table, so this keeps it and rewrites it on each change.
final class MSIRouter {
    static let firstGSI: UInt32 = 24
    private let vm: KVMVirtualMachine
    private let lock = Mutex()
    private var nextGSI = firstGSI
    private var routes: [UInt32: (UInt64, UInt32)] = [:]

    init(vm: KVMVirtualMachine) { self.vm = vm }

    func allocate(_ count: Int) -> [UInt32] {
        lock.locked {
            let first = nextGSI
            nextGSI += UInt32(count)
            return (0..<UInt32(count)).map { first + $0 }
        }
    }

    func set(_ changes: [(gsi: UInt32, address: UInt64, data: UInt32)]) {
        lock.locked {
            for c in changes { routes[c.gsi] = (c.address, c.data) }
            let keys = routes.keys.sorted()
            let addresses = keys.map { routes[$0]!.0 }, datas = keys.map { routes[$0]!.1 }
            let e = ckvm_set_msi_routing(vm.fd, UInt32(keys.count), keys, addresses, datas)
            if e != 0 { vm.log("KVM_SET_GSI_ROUTING (\(keys.count) MSI routes): \(errnoDescription(e))") }
        }
    }
}

extension VirtualMachine {
    /// Binds `eventfd` to `gsi` in the kernel (KVM_IRQFD): a write to it
    /// raises the interrupt without an exit to this process. With
    /// `resampleFD` the GSI is level-triggered (INTx): lowered at the
    /// guest's EOI, which signals `resampleFD`.
    public func bindIRQFD(_ eventfd: Int32, gsi: UInt32, resampleFD: Int32?) throws {
        let e = ckvm_irqfd(kvmVM.fd, eventfd, gsi, resampleFD ?? -1, 1)
        if e != 0 { throw SystemError("KVM_IRQFD gsi \(gsi)\(resampleFD == nil ? "" : " (resample)")", code: e) }
    }

    /// An MSI-X table for a function with one eventfd per vector: each is
    /// bound to a fresh MSI GSI (before `start`: KVM_IRQFD). `signal`
    /// writes a vector's eventfd (a pending vector that was unmasked).
    public func makeMSIXTable(eventfds: [Int32], state: MSIXVectorState,
                              signal: @escaping (Int) -> Void) throws -> MSIXTable {
        guard !eventfds.isEmpty, eventfds.count <= MSIXLayout.maxVectors else {
            throw VMMError("msi-x: \(eventfds.count) vectors, need 1 to \(MSIXLayout.maxVectors)")
        }
        let gsis = msiRouter.allocate(eventfds.count)
        for (fd, gsi) in zip(eventfds, gsis) { try bindIRQFD(fd, gsi: gsi, resampleFD: nil) }
        return MSIXTable(vectorCount: eventfds.count, gsis: gsis, state: state,
                         route: { [msiRouter] in msiRouter.set($0) }, signal: signal)
    }
}
