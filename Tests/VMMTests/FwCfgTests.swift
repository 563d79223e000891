import XCTest
@testable import VMM

/// fw_cfg as SeaBIOS drives it, and as a hostile guest might.
final class FwCfgTests: XCTestCase {
    /// 64 KiB of "RAM" at 0; everything else (the ROM, MMIO) is not RAM.
    final class RAM: DMAMemory {
        var bytes = [UInt8](repeating: 0xAA, count: 64 << 10)
        func range(_ a: UInt64, _ n: UInt64) -> Range<Int>? {
            let (end, o) = a.addingReportingOverflow(n)
            return !o && end <= UInt64(bytes.count) ? Int(a)..<Int(end) : nil
        }
        func dmaRead(_ address: UInt64, count: Int) -> [UInt8]? { range(address, UInt64(count)).map { Array(bytes[$0]) } }
        func dmaWrite(_ b: [UInt8], at address: UInt64) -> Bool {
            guard let r = range(address, UInt64(b.count)) else { return false }
            bytes.replaceSubrange(r, with: b)
            return true
        }
        func dmaFill(_ value: UInt8, at address: UInt64, count: UInt64) -> Bool {
            guard let r = range(address, count) else { return false }
            for i in r { bytes[i] = value }
            return true
        }
    }

    func make() -> (FwCfg, RAM) {
        let ram = RAM()
        let f = FwCfg(cpus: 2, memory: ram)
        f.setFile("etc/b", [1, 2, 3])
        f.setFile("etc/a", Array("hello".utf8))
        return (f, ram)
    }

    func readData(_ f: FwCfg, _ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(f.read(offset: 1, size: 1)) } }

    /// A DMA descriptor at `at`, then the low-half doorbell (big-endian, as SeaBIOS writes it).
    func dma(_ f: FwCfg, _ ram: RAM, at: UInt32, control: UInt32, length: UInt32, address: UInt64, high: UInt32 = 0) -> UInt32 {
        var d = ByteImage(count: 16)
        d.put32(0, control.byteSwapped)
        d.put32(4, length.byteSwapped)
        d.put64(8, address.byteSwapped)
        _ = ram.dmaWrite(d.bytes, at: UInt64(at))
        if high != 0 { f.write(offset: 4, size: 4, value: UInt64(high.byteSwapped)) }
        f.write(offset: 8, size: 4, value: UInt64(at.byteSwapped))
        return ram.dmaRead(UInt64(at), count: 4).map { ByteImage($0).u32(0)!.byteSwapped } ?? 0xDEAD
    }

    func testSignatureIDAndDirectoryThroughThePorts() {
        let (f, _) = make()
        f.write(offset: 0, size: 2, value: 0)
        XCTAssertEqual(readData(f, 4), Array("QEMU".utf8))
        f.write(offset: 0, size: 2, value: 1)
        XCTAssertEqual(readData(f, 4), [3, 0, 0, 0], "traditional + DMA")
        // Reading 0x514 gives "QEMU CFG" in memory order.
        XCTAssertEqual(f.read(offset: 4, size: 4), 0x554D_4551)
        XCTAssertEqual(f.read(offset: 8, size: 4), 0x4746_4320)
        f.write(offset: 0, size: 2, value: 0x19)
        let dir = readData(f, 4 + 2 * 64)
        XCTAssertEqual(Array(dir[0..<4]), [0, 0, 0, 2], "big-endian count")
        XCTAssertEqual(Array(dir[4..<8]), [0, 0, 0, 5], "etc/a first (sorted), 5 bytes")
        XCTAssertEqual(Array(dir[8..<10]), [0, 0x20])
        XCTAssertEqual(Array(dir[12..<17]), Array("etc/a".utf8))
        XCTAssertEqual(Array(dir[68..<72]), [0, 0, 0, 3])
        XCTAssertEqual(Array(dir[72..<74]), [0, 0x21])
        XCTAssertEqual(f.selector(of: "etc/b"), 0x21)
    }

    func testBadSelectorsAndReadsPastTheEndReadZero() {
        let (f, _) = make()
        for selector: UInt64 in [0x7FFF, 0x3FFF, 0x8000, 0x8003, 0xFFFF, 0x22, 0x0002] {
            f.write(offset: 0, size: 2, value: selector)
            XCTAssertEqual(readData(f, 8), [UInt8](repeating: 0, count: 8), "selector 0x\(String(selector, radix: 16))")
        }
        f.write(offset: 0, size: 2, value: 0x21)
        XCTAssertEqual(readData(f, 6), [1, 2, 3, 0, 0, 0])
        // Data-port writes are ignored; odd-sized accesses read all ones.
        f.write(offset: 1, size: 1, value: 0x55)
        f.write(offset: 0, size: 2, value: 0x21)
        XCTAssertEqual(readData(f, 1), [1])
        XCTAssertEqual(f.read(offset: 1, size: 2), 0xFFFF)
        XCTAssertEqual(f.read(offset: 5, size: 4), 0xFFFF_FFFF)
    }

    func testDMAReadSelectSkipAndPastTheEnd() {
        let (f, ram) = make()
        let sel = UInt32(0x20) << 16 | FwCfg.dmaSelect
        XCTAssertEqual(dma(f, ram, at: 0x100, control: sel | FwCfg.dmaRead, length: 3, address: 0x200), 0)
        XCTAssertEqual(Array(ram.bytes[0x200..<0x204]), Array("hel".utf8) + [0xAA])
        XCTAssertEqual(dma(f, ram, at: 0x100, control: FwCfg.dmaSkip, length: 1, address: 0), 0)
        // Past the end: the rest of the buffer is zeroed, as QEMU does.
        XCTAssertEqual(dma(f, ram, at: 0x100, control: FwCfg.dmaRead, length: 4, address: 0x300), 0)
        XCTAssertEqual(Array(ram.bytes[0x300..<0x305]), [UInt8(ascii: "o"), 0, 0, 0, 0xAA])
        // An unknown selector reads as zeros, no error.
        XCTAssertEqual(dma(f, ram, at: 0x100, control: UInt32(0x1234) << 16 | FwCfg.dmaSelect | FwCfg.dmaRead, length: 2, address: 0x400), 0)
        XCTAssertEqual(Array(ram.bytes[0x400..<0x403]), [0, 0, 0xAA])
    }

    func testHostileDMA() {
        let (f, ram) = make()
        let before = ram.bytes
        let sel = UInt32(0x20) << 16 | FwCfg.dmaSelect
        // Buffer outside RAM (the ROM at 0xFFFC0000, past the end, wrapping): ERROR, nothing written.
        for address: UInt64 in [0xFFFC_0000, UInt64(ram.bytes.count) - 2, UInt64.max - 1] {
            XCTAssertEqual(dma(f, ram, at: 0x100, control: sel | FwCfg.dmaRead, length: 5, address: address), FwCfg.dmaError)
        }
        // Writes to read-only items (and to no item): ERROR, the item is unchanged.
        XCTAssertEqual(dma(f, ram, at: 0x100, control: sel | FwCfg.dmaWrite, length: 5, address: 0x200), FwCfg.dmaError)
        XCTAssertEqual(dma(f, ram, at: 0x100, control: UInt32(0x777) << 16 | FwCfg.dmaSelect | FwCfg.dmaWrite, length: 5, address: 0x200), FwCfg.dmaError)
        XCTAssertEqual(f.file("etc/a"), Array("hello".utf8))
        // A huge length past the item, into memory that ends: ERROR, bounded.
        XCTAssertEqual(dma(f, ram, at: 0x100, control: sel | FwCfg.dmaRead, length: 0xFFFF_FFFF, address: 0x1000), FwCfg.dmaError)
        // A descriptor outside RAM: nothing happens (there is nowhere to report).
        f.write(offset: 8, size: 4, value: UInt64(UInt32(0xFFFF_0000).byteSwapped))
        f.write(offset: 4, size: 4, value: UInt64(UInt32(1).byteSwapped))          // high half, then low
        f.write(offset: 8, size: 4, value: 0)
        // Only the descriptors and the one legitimate partial write above changed RAM.
        XCTAssertEqual(Array(ram.bytes[0x2000...]), Array(before[0x2000...]))
        // No control bits: length treated as 0, success.
        XCTAssertEqual(dma(f, ram, at: 0x100, control: 0, length: 100, address: 0x200), 0)
    }

    func testTableLoaderScriptShape() {
        let acpi = ACPITables(cpus: 2)
        let script = acpi.loaderScript
        XCTAssertEqual(script.count % 128, 0)
        let commands = stride(from: 0, to: script.count, by: 128).map { ByteImage(Array(script[$0..<($0 + 128)])) }
        XCTAssertEqual(commands[0].u32(0), 1)
        XCTAssertEqual(String(decoding: commands[0].bytes[4..<17], as: UTF8.self), "etc/acpi/rsdp")
        XCTAssertEqual(commands[0].u8(64), 2, "RSDP in the F segment")
        XCTAssertEqual(commands[1].u8(64), 1, "tables in high memory")
        XCTAssertEqual(commands.filter { $0.u32(0) == 2 }.count, acpi.pointers.count)
        XCTAssertEqual(commands.filter { $0.u32(0) == 3 }.count, acpi.layout.filter(\.checksummed).count + 2)
        // Every pointer command follows both allocations and precedes every checksum.
        let kinds = commands.map { $0.u32(0)! }
        XCTAssertEqual(kinds, kinds.sorted())
    }
}
