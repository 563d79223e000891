/// A small ACPI Machine Language encoder (ACPI 6.5, chapter 20): the subset a
/// VMM's DSDT needs, built from code as Firecracker and Cloud Hypervisor do.
/// Every node renders to bytes with `aml`; containers (Scope, Device, Method,
/// Package, Buffer) compute their PkgLength from their contents.
///
///     AML.Scope("\\_SB", [
///         AML.Device("COM1", [
///             AML.Name("_HID", AML.EISAID("PNP0501")),
///             AML.Name("_CRS", AML.ResourceTemplate([.io(0x3F8, length: 8), .irq(4)])),
///         ]),
///     ])
public protocol AMLNode {
    var aml: [UInt8] { get }
}

public enum AML {
    // Opcodes (ACPI 6.5, 20.3).
    static let zeroOp: UInt8 = 0x00, oneOp: UInt8 = 0x01, onesOp: UInt8 = 0xFF
    static let bytePrefix: UInt8 = 0x0A, wordPrefix: UInt8 = 0x0B, dwordPrefix: UInt8 = 0x0C
    static let stringPrefix: UInt8 = 0x0D, qwordPrefix: UInt8 = 0x0E
    static let nameOp: UInt8 = 0x08, scopeOp: UInt8 = 0x10, bufferOp: UInt8 = 0x11
    static let packageOp: UInt8 = 0x12, methodOp: UInt8 = 0x14, returnOp: UInt8 = 0xA4
    static let extOpPrefix: UInt8 = 0x5B, deviceOp: UInt8 = 0x82
    static let rootChar: UInt8 = 0x5C, parentChar: UInt8 = 0x5E
    static let dualNamePrefix: UInt8 = 0x2E, multiNamePrefix: UInt8 = 0x2F

    /// PkgLength (20.2.4) for `contentLength` bytes that follow it: the
    /// encoded length counts its own bytes too.
    static func pkgLength(_ contentLength: Int) -> [UInt8] {
        if contentLength + 1 <= 0x3F { return [UInt8(contentLength + 1)] }
        for extra in 1...3 {
            let total = contentLength + 1 + extra
            guard total < 1 << (4 + 8 * extra) else { continue }
            var bytes = [UInt8(extra << 6) | UInt8(total & 0x0F)]
            for i in 0..<extra { bytes.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * i))) }
            return bytes
        }
        preconditionFailure("AML package of \(contentLength) bytes exceeds 2^28")
    }

    /// A NameString (20.2.2): `\` and `^` prefixes, then 1-4 character
    /// segments separated by dots, each padded with `_`.
    static func nameString(_ path: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var rest = Substring(path)
        while let c = rest.first, c == "\\" || c == "^" {
            bytes.append(c == "\\" ? rootChar : parentChar)
            rest = rest.dropFirst()
        }
        let segments = rest.split(separator: ".", omittingEmptySubsequences: false).map(nameSegment)
        switch segments.count {
        case 0: bytes.append(zeroOp)
        case 1: bytes += segments[0]
        case 2: bytes += [dualNamePrefix] + segments[0] + segments[1]
        default: bytes += [multiNamePrefix, UInt8(segments.count)] + segments.flatMap { $0 }
        }
        return bytes
    }

    /// One 4-byte NameSeg: a leading A-Z or `_`, then A-Z, 0-9 or `_`.
    static func nameSegment(_ s: Substring) -> [UInt8] {
        let chars = Array(s.utf8)
        let ok = !chars.isEmpty && chars.count <= 4 && chars.enumerated().allSatisfy { i, c in
            (c >= 0x41 && c <= 0x5A) || c == 0x5F || (i > 0 && c >= 0x30 && c <= 0x39)
        }
        precondition(ok, "bad AML name segment \"\(s)\"")
        return chars + [UInt8](repeating: 0x5F, count: 4 - chars.count)
    }

    // MARK: data objects

    /// An integer with the shortest encoding.
    public struct Integer: AMLNode {
        public let value: UInt64
        public init(_ value: UInt64) { self.value = value }
        public init(_ value: Int) { self.value = UInt64(value) }
        public var aml: [UInt8] {
            switch value {
            case 0: return [zeroOp]
            case 1: return [oneOp]
            case ...0xFF: return [bytePrefix, UInt8(value)]
            case ...0xFFFF: return [wordPrefix] + le(value, 2)
            case ...0xFFFF_FFFF: return [dwordPrefix] + le(value, 4)
            default: return [qwordPrefix] + le(value, 8)
            }
        }
    }

    public struct StringConstant: AMLNode {
        public let value: String
        public init(_ value: String) { self.value = value }
        public var aml: [UInt8] { [stringPrefix] + Array(value.utf8) + [0] }
    }

    /// A compressed EISA id ("PNP0A03") as the 32-bit integer ACPI expects.
    public struct EISAID: AMLNode {
        public let id: String
        public init(_ id: String) { self.id = id }
        public var value: UInt32 {
            let c = Array(id.utf8)
            precondition(c.count == 7, "EISA id \(id) is not 7 characters")
            func hexDigit(_ b: UInt8) -> UInt32 {
                switch b {
                case 0x30...0x39: return UInt32(b - 0x30)
                case 0x41...0x46: return UInt32(b - 0x41 + 10)
                default: preconditionFailure("EISA id \(id): bad hex digit")
                }
            }
            let vendor = (UInt32(c[0] - 0x40) << 10) | (UInt32(c[1] - 0x40) << 5) | UInt32(c[2] - 0x40)
            let product = (hexDigit(c[3]) << 12) | (hexDigit(c[4]) << 8) | (hexDigit(c[5]) << 4) | hexDigit(c[6])
            // Stored big-endian in the 32-bit little-endian integer.
            let be = (vendor << 16) | product
            return be.byteSwapped
        }
        public var aml: [UInt8] { [dwordPrefix] + le(UInt64(value), 4) }
    }

    public struct Package: AMLNode {
        public let elements: [AMLNode]
        public init(_ elements: [AMLNode]) { self.elements = elements }
        public var aml: [UInt8] {
            precondition(elements.count <= 255, "AML package of more than 255 elements")
            let body = [UInt8(elements.count)] + elements.flatMap { $0.aml }
            return [packageOp] + pkgLength(body.count) + body
        }
    }

    public struct Buffer: AMLNode {
        public let bytes: [UInt8]
        public init(_ bytes: [UInt8]) { self.bytes = bytes }
        public var aml: [UInt8] {
            let body = Integer(bytes.count).aml + bytes
            return [bufferOp] + pkgLength(body.count) + body
        }
    }

    // MARK: named objects and containers

    public struct Name: AMLNode {
        public let name: String
        public let value: AMLNode
        public init(_ name: String, _ value: AMLNode) { self.name = name; self.value = value }
        public var aml: [UInt8] { [nameOp] + nameString(name) + value.aml }
    }

    public struct Scope: AMLNode {
        public let path: String
        public let children: [AMLNode]
        public init(_ path: String, _ children: [AMLNode]) { self.path = path; self.children = children }
        public var aml: [UInt8] {
            let body = nameString(path) + children.flatMap { $0.aml }
            return [scopeOp] + pkgLength(body.count) + body
        }
    }

    public struct Device: AMLNode {
        public let name: String
        public let children: [AMLNode]
        public init(_ name: String, _ children: [AMLNode]) { self.name = name; self.children = children }
        public var aml: [UInt8] {
            let body = nameString(name) + children.flatMap { $0.aml }
            return [extOpPrefix, deviceOp] + pkgLength(body.count) + body
        }
    }

    /// A method whose body returns a constant (`Return (value)`): `_STA`
    /// and the like. Not serialized, no arguments.
    public struct ConstantMethod: AMLNode {
        public let name: String
        public let value: AMLNode
        public init(_ name: String, returns value: AMLNode) { self.name = name; self.value = value }
        public var aml: [UInt8] {
            let body = nameString(name) + [0x00] + [returnOp] + value.aml
            return [methodOp] + pkgLength(body.count) + body
        }
    }

    // MARK: resource templates (ACPI 6.5, 6.4)

    public enum Resource {
        /// IO (Decode16, base, base, 1, length): a fixed I/O range.
        case io(UInt16, length: UInt8)
        /// IRQNoFlags () {irq}: an edge-triggered, active-high ISA IRQ.
        case irq(UInt8)
        /// WordBusNumber (ResourceProducer, MinFixed, MaxFixed, ...).
        case busNumbers(ClosedRange<UInt16>)
        /// WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange).
        case ioWindow(ClosedRange<UInt16>)
        /// DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite).
        case memoryWindow(ClosedRange<UInt32>)
        /// Memory32Fixed (ReadWrite, base, length): a device's MMIO registers.
        case memory32Fixed(UInt32, length: UInt32)
        /// Interrupt (ResourceConsumer, Level|Edge, ActiveHigh, Exclusive) {gsi}.
        case interrupt(UInt32, level: Bool)

        var bytes: [UInt8] {
            switch self {
            case .memory32Fixed(let base, let length):
                return [0x86, 0x09, 0x00, 0x01] + le(UInt64(base), 4) + le(UInt64(length), 4)
            case .interrupt(let gsi, let level):
                return [0x89, 0x06, 0x00, level ? 0x01 : 0x03, 0x01] + le(UInt64(gsi), 4)
            case .io(let base, let length):
                return [0x47, 0x01] + le(UInt64(base), 2) + le(UInt64(base), 2) + [0x01, length]
            case .irq(let irq):
                return [0x22] + le(UInt64(1) << UInt64(irq & 15), 2)
            case .busNumbers(let r):
                return Self.word(type: 2, typeFlags: 0, r)
            case .ioWindow(let r):
                return Self.word(type: 1, typeFlags: 0x03, r)
            case .memoryWindow(let r):
                let length = UInt64(r.upperBound) - UInt64(r.lowerBound) + 1
                let body: [UInt8] = [0x00, 0x0C, 0x01] + le(0, 4) + le(UInt64(r.lowerBound), 4)
                    + le(UInt64(r.upperBound), 4) + le(0, 4) + le(length, 4)
                return [0x87] + le(UInt64(body.count), 2) + body
            }
        }

        private static func word(type: UInt8, typeFlags: UInt8, _ r: ClosedRange<UInt16>) -> [UInt8] {
            let length = UInt64(r.upperBound) - UInt64(r.lowerBound) + 1
            let body: [UInt8] = [type, 0x0C, typeFlags] + le(0, 2) + le(UInt64(r.lowerBound), 2)
                + le(UInt64(r.upperBound), 2) + le(0, 2) + le(length, 2)
            return [0x88] + le(UInt64(body.count), 2) + body
        }
    }

    /// ResourceTemplate(): a buffer of descriptors closed by an End Tag.
    public struct ResourceTemplate: AMLNode {
        public let resources: [Resource]
        public init(_ resources: [Resource]) { self.resources = resources }
        public var aml: [UInt8] {
            var bytes: [UInt8] = resources.flatMap { $0.bytes } + [0x79]
            bytes.append(0 &- bytes.reduce(UInt8(0), &+))  // End Tag checksum: the whole template sums to 0
            return Buffer(bytes).aml
        }
    }

    /// Raw bytes already in AML (for a caller's own encoder).
    public struct Raw: AMLNode {
        public let aml: [UInt8]
        public init(_ aml: [UInt8]) { self.aml = aml }
    }

    static func le(_ value: UInt64, _ width: Int) -> [UInt8] {
        (0..<width).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
    }
}
