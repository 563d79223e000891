// viodev_msg: what the VM process and a device process say to each other,
// byte for byte vmd's packed struct (virtio.h), carried in IMSG_DEVOP_MSG:
//
//   offset 0 type u8 · 1 reg u16 · 3 io_sz u8 · 4 vcpu u8 · 5 irq u8
//          6 state i8 · 7 data u32 · 11 data_valid u8          = 12 bytes
//
// Host byte order, as imsg is: both ends run on the same machine.

public struct ViodevMsg: Equatable, Sendable {
    public static let size = 12

    public enum Kind: UInt8, Sendable {
        case ready = 1      // VIODEV_MSG_READY
        case error = 2      // VIODEV_MSG_ERROR
        case kick = 3       // VIODEV_MSG_KICK
        case ioRead = 4     // VIODEV_MSG_IO_READ
        case ioWrite = 5    // VIODEV_MSG_IO_WRITE
        case dump = 6       // VIODEV_MSG_DUMP
        case shutdown = 7   // VIODEV_MSG_SHUTDOWN
    }

    /// VIODEV_MSG_INVALID: never valid on the wire.
    public static let invalidType: UInt8 = 0

    /// Interrupt state toggles (INTR_STATE_*).
    public static let stateAssert: Int8 = 1
    public static let stateNoop: Int8 = 0
    public static let stateDeassert: Int8 = -1

    public var kind: Kind
    public var reg: UInt16
    public var ioSize: UInt8
    public var vcpu: UInt8
    public var irq: UInt8
    public var state: Int8
    public var data: UInt32
    public var dataValid: Bool

    public init(kind: Kind, reg: UInt16 = 0, ioSize: UInt8 = 0, vcpu: UInt8 = 0, irq: UInt8 = 0,
                state: Int8 = ViodevMsg.stateNoop, data: UInt32 = 0, dataValid: Bool = false) {
        self.kind = kind
        self.reg = reg
        self.ioSize = ioSize
        self.vcpu = vcpu
        self.irq = irq
        self.state = state
        self.data = data
        self.dataValid = dataValid
    }

    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = [kind.rawValue]
        bytes.reserveCapacity(Self.size)
        withUnsafeBytes(of: reg) { bytes.append(contentsOf: $0) }
        bytes.append(ioSize)
        bytes.append(vcpu)
        bytes.append(irq)
        bytes.append(UInt8(bitPattern: state))
        withUnsafeBytes(of: data) { bytes.append(contentsOf: $0) }
        bytes.append(dataValid ? 1 : 0)
        return bytes
    }

    /// Decode a message from a peer, or nil if it is not exactly one
    /// well-formed viodev_msg: wrong size, unknown type, an I/O access that
    /// is not 1, 2 or 4 bytes wide, a state other than -1/0/1, or a
    /// data_valid that is not 0/1.
    public init?(bytes: UnsafeRawBufferPointer) {
        guard bytes.count == Self.size, let kind = Kind(rawValue: bytes[0]) else { return nil }
        let reg = bytes.loadUnaligned(fromByteOffset: 1, as: UInt16.self)
        let ioSize = bytes[3]
        let state = Int8(bitPattern: bytes[6])
        let data = bytes.loadUnaligned(fromByteOffset: 7, as: UInt32.self)
        let dataValid = bytes[11]
        if kind == .ioRead || kind == .ioWrite {
            guard ioSize == 1 || ioSize == 2 || ioSize == 4 else { return nil }
        }
        guard (-1...1).contains(state), dataValid <= 1 else { return nil }
        self.init(kind: kind, reg: reg, ioSize: ioSize, vcpu: bytes[4], irq: bytes[5], state: state,
                  data: data, dataValid: dataValid == 1)
    }

    public init?(bytes: [UInt8]) {
        guard let message = bytes.withUnsafeBytes({ ViodevMsg(bytes: $0) }) else { return nil }
        self = message
    }
}

/// Something that answers register accesses: both transports.
public protocol VirtioRegisterFile: AnyObject {
    func read(offset: UInt16, size: Int) -> UInt32
    func write(offset: UInt16, size: Int, value: UInt32)
    /// The driver notified queue `index` (a kick from a queue-notify eventfd).
    func notify(queue index: Int)
    var isInterruptAsserted: Bool { get }
}

extension VirtioPCITransport: VirtioRegisterFile {}
extension VirtioLegacyPCITransport: VirtioRegisterFile {}

extension VirtioRegisterFile {
    /// Serve one IO_READ/IO_WRITE from the sync channel. Returns the reply
    /// for a read (data_valid set; state DEASSERT when the read lowered the
    /// interrupt line, i.e. an ISR read, as vmd applies it inline), nil for
    /// a write or any other message, which the caller handles itself.
    public func handle(_ message: ViodevMsg) -> ViodevMsg? {
        switch message.kind {
        case .ioRead:
            let wasAsserted = isInterruptAsserted
            let value = read(offset: message.reg, size: Int(message.ioSize))
            var reply = message
            reply.data = value
            reply.dataValid = true
            reply.state = wasAsserted && !isInterruptAsserted ? ViodevMsg.stateDeassert : ViodevMsg.stateNoop
            return reply
        case .ioWrite:
            write(offset: message.reg, size: Int(message.ioSize), value: message.data)
            return nil
        default:
            return nil
        }
    }
}
