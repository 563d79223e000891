import Glibc
import VMDSystem
import VMDControl
import Imsg
import VMM
import Virtio

/// The VM side of one device process: a PCI function whose BAR accesses
/// become viodev_msg IO_READ/IO_WRITE on the device's sync channel (vCPU
/// threads block for a read's reply), and whose interrupt line follows the
/// KICK messages the device sends on its async channel.
final class VirtioProxy: PCIFunction {
    let name: String
    let configHeader: PCIConfigHeader
    let pid: pid_t
    let sync: ImsgBuffer
    let asyncFD: Int32
    /// The ISR register's offset in the BAR: reading it clears the device's
    /// interrupt, so the vCPU lowers the line at once (as vmd does).
    let isrOffset: UInt32
    var interrupt: InterruptLine?
    var async: ImsgChannel?
    private let lock = Mutex()
    private var broken = false
    var onFailure: ((String) -> Void)?
    /// One eventfd per queue, signalled by KVM itself when the guest writes
    /// the queue's index to the notify register: kicks reach the device
    /// process without an exit to this process.
    var notifyFDs: [Int32] = []
    /// Registers (or removes) a port eventfd with KVM.
    var registerNotify: ((Int32, UInt16, UInt64, Bool) throws -> Void)?
    private var notifyPort: UInt16?

    init(name: String, header: PCIConfigHeader, pid: pid_t, syncFD: Int32, asyncFD: Int32, isrOffset: UInt32) {
        self.name = name
        self.configHeader = header
        self.pid = pid
        self.sync = ImsgBuffer(fd: syncFD)
        self.asyncFD = asyncFD
        self.isrOffset = isrOffset
    }

    /// A virtio 1.x function: vendor capabilities in one I/O BAR.
    static func modernHeader(_ type: VirtioDeviceType) -> PCIConfigHeader {
        let id = VirtioPCITransport.identity(for: type)
        return PCIConfigHeader(vendorID: id.vendorID, deviceID: id.deviceID, revision: id.revision,
                               classCode: id.classCode, subclass: id.subclass, progIF: id.programmingInterface,
                               subsystemVendorID: id.subsystemVendorID, subsystemID: id.subsystemID,
                               bars: [PCIConfigHeader.Bar(kind: .io, size: VirtioPCILayout.barSize)],
                               capabilities: capabilityChunks(VirtioPCITransport.capabilityList()))
    }

    /// Splits the transport's linked capability list into the separate
    /// structures the PCI bus lays out and links itself.
    static func capabilityChunks(_ list: [UInt8]) -> [[UInt8]] {
        var chunks: [[UInt8]] = []
        var i = 0
        while i + 2 < list.count {
            let len = Int(list[i + 2])
            guard len >= 3, i + len <= list.count else { break }
            var cap = Array(list[i..<(i + len)])
            cap[1] = 0
            chunks.append(cap)
            i += len
        }
        return chunks
    }

    /// vmmci: legacy virtio 0.9 with OpenBSD's ids.
    static func vmmciHeader() -> PCIConfigHeader {
        let id = VirtioLegacyPCITransport.vmmciIdentity
        return PCIConfigHeader(vendorID: id.vendorID, deviceID: id.deviceID, revision: id.revision,
                               classCode: id.classCode, subclass: id.subclass, progIF: id.programmingInterface,
                               subsystemVendorID: id.subsystemVendorID, subsystemID: id.subsystemID,
                               bars: [PCIConfigHeader.Bar(kind: .io, size: 0x100)], capabilities: [])
    }

    /// Blocks until the device reports READY on the sync channel.
    func waitReady() throws {
        let m = try sync.readMessage()
        guard let msg = ViodevMsg(bytes: m.data), msg.kind == .ready else {
            throw SystemError("\(name): did not report ready", code: EPROTO)
        }
    }

    func setup(_ s: DeviceSetup) throws {
        try sync.sendBlocking(Imsg(type: MessageType.devopVMInfo.rawValue, data: s.encoded()))
    }

    // MARK: PCIFunction (vCPU threads)

    func barRead(bar: Int, offset: UInt32, size: Int) -> UInt32 {
        guard bar == 0, offset <= UInt32(UInt16.max) else { return 0xffff_ffff }
        let req = ViodevMsg(kind: .ioRead, reg: UInt16(offset), ioSize: UInt8(size))
        let reply: ViodevMsg? = lock.locked {
            guard !broken else { return nil }
            do {
                try sync.sendBlocking(Imsg(type: MessageType.devopMsg.rawValue, data: req.encoded()))
                while true {
                    let m = try sync.readMessage()
                    if let f = m.fd { FD.close(f) }
                    guard MessagePolicy.permits(m.type, on: .deviceToVMSync), let r = ViodevMsg(bytes: m.data) else { continue }
                    if r.kind == .ioRead && r.dataValid { return r }
                }
            } catch {
                broken = true
                onFailure?("\(name): sync channel: \(error)")
                return nil
            }
        }
        guard let reply else { return 0xffff_ffff }
        if offset == isrOffset || reply.state == ViodevMsg.stateDeassert { interrupt?.deassert() }
        let mask: UInt32 = size >= 4 ? 0xffff_ffff : (1 << (UInt32(size) * 8)) - 1
        return reply.data & mask
    }

    func barWrite(bar: Int, offset: UInt32, size: Int, value: UInt32) {
        guard bar == 0, offset <= UInt32(UInt16.max) else { return }
        let req = ViodevMsg(kind: .ioWrite, reg: UInt16(offset), ioSize: UInt8(size), data: value)
        lock.locked {
            guard !broken else { return }
            do {
                try sync.sendBlocking(Imsg(type: MessageType.devopMsg.rawValue, data: req.encoded()))
            } catch {
                broken = true
                onFailure?("\(name): sync channel: \(error)")
            }
        }
    }

    /// The guest (or the VMM) placed BAR 0: the notify eventfds follow it.
    /// A notify write that misses them still arrives as an IO_WRITE.
    func barMoved(bar: Int, base: UInt64?) {
        guard bar == 0, !notifyFDs.isEmpty, let register = registerNotify else { return }
        if let old = notifyPort {
            for (i, fd) in notifyFDs.enumerated() { try? register(fd, old, UInt64(i), false) }
            notifyPort = nil
        }
        guard let base, base + UInt64(VirtioPCILayout.notify) + 2 <= 0x10000 else { return }
        let port = UInt16(base) + VirtioPCILayout.notify
        do {
            for (i, fd) in notifyFDs.enumerated() { try register(fd, port, UInt64(i), true) }
            notifyPort = port
        } catch {
            for (i, fd) in notifyFDs.enumerated() { try? register(fd, port, UInt64(i), false) }
            onFailure?("\(name): queue notify eventfds: \(error); notifies go through the VM process")
        }
    }

    // MARK: event loop (main thread)

    func asyncMessage(_ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        guard MessageType(rawValue: m.type) == .devopMsg, let msg = ViodevMsg(bytes: m.data) else { return }
        switch msg.kind {
        case .kick:
            if Log.verbosity > 2 { Log.debug("\(name): kick state \(msg.state) -> IRQ \(interrupt.map { String($0.irq) } ?? "none")") }
            if msg.state == ViodevMsg.stateAssert { interrupt?.assert() }
            else if msg.state == ViodevMsg.stateDeassert { interrupt?.deassert() }
        default:
            break
        }
    }

    func shutdown() {
        lock.locked {
            if !broken {
                try? sync.sendBlocking(Imsg(type: MessageType.devopMsg.rawValue,
                                            data: ViodevMsg(kind: .shutdown).encoded()))
            }
            broken = true
        }
    }
}
