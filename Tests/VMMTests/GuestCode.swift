@testable import VMM

/// Tiny 32-bit guests assembled by hand: a Multiboot a.out-kludge image
/// (header at offset 0, loaded at 1 MiB, entry right after the header), so KVM
/// tests need no compiler.
struct GuestCode {
    static let loadAddress: UInt32 = 0x10_0000
    static let headerSize = 32
    var code: [UInt8] = []

    var here: UInt32 { Self.loadAddress + UInt32(Self.headerSize + code.count) }

    mutating func movDX(_ port: UInt16) { code += [0x66, 0xBA, UInt8(port & 0xFF), UInt8(port >> 8)] }
    mutating func movAL(_ value: UInt8) { code += [0xB0, value] }
    mutating func movAX(_ value: UInt16) { code += [0x66, 0xB8, UInt8(value & 0xFF), UInt8(value >> 8)] }
    mutating func movEAX(_ value: UInt32) { code += [0xB8] + le32(value) }
    mutating func outAL() { code += [0xEE] }
    mutating func outAX() { code += [0x66, 0xEF] }
    mutating func outEAX() { code += [0xEF] }
    mutating func inAL() { code += [0xEC] }
    mutating func inEAX() { code += [0xED] }

    mutating func outByte(_ port: UInt16, _ value: UInt8) { movDX(port); movAL(value); outAL() }
    /// Reads a byte from `port` and writes it to COM1.
    mutating func echoPort(_ port: UInt16) { movDX(port); inAL(); movDX(0x3F8); outAL() }
    mutating func print(_ text: String) { for byte in text.utf8 { outByte(0x3F8, byte) } }
    mutating func powerOff() { movDX(0x604); movAX(0x2000); outAX(); hang() }
    mutating func hang() { code += [0xF4, 0xEB, 0xFD] }  // hlt; jmp back to hlt
    /// Busy loop of `count` iterations (emulated code runs ~1.5 M/s under PVM).
    mutating func delay(_ count: UInt32) { code += [0xB9] + le32(count) + [0x49, 0x75, 0xFD] }  // mov ecx; dec ecx; jnz

    func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

    /// The bootable image.
    var image: [UInt8] {
        let magic: UInt32 = 0x1BAD_B002, flags: UInt32 = 0x0001_0002
        var header: [UInt8] = []
        for v in [magic, flags, 0 &- (magic &+ flags), Self.loadAddress, Self.loadAddress, 0, 0,
                  Self.loadAddress + UInt32(Self.headerSize)] {
            header += le32(v)
        }
        return header + code
    }
}
