import XCTest
@testable import VMM
import CKVM

final class GuestMemoryLayoutTests: XCTestCase {
    func testSmallGuestIsAllLowMemory() throws {
        let layout = try GuestMemoryLayout(memoryBytes: 64 << 20)
        XCTAssertEqual(layout.regions, [MemoryRegion(guestPhysical: 0, size: 64 << 20, fdOffset: 0)])
        XCTAssertEqual(layout.e820, [
            E820Entry(address: 0, size: 0x9FC00, type: 1),
            E820Entry(address: 0x9FC00, size: 0x100000 - 0x9FC00, type: 2),
            E820Entry(address: 0x100000, size: (64 << 20) - 0x100000, type: 1),
        ])
    }

    func testLargeGuestSplitsAroundThePCIHole() throws {
        let layout = try GuestMemoryLayout(memoryBytes: 5 << 30)
        XCTAssertEqual(layout.lowBytes, 3 << 30)
        XCTAssertEqual(layout.highBytes, 2 << 30)
        XCTAssertEqual(layout.regions[1], MemoryRegion(guestPhysical: 1 << 32, size: 2 << 30, fdOffset: 3 << 30))
        XCTAssertEqual(layout.e820.last, E820Entry(address: 1 << 32, size: 2 << 30, type: 1))
    }

    func testLimitsAndRounding() throws {
        XCTAssertThrowsError(try GuestMemoryLayout(memoryBytes: 1 << 20))
        XCTAssertThrowsError(try GuestMemoryLayout(memoryBytes: UInt64.max))
        XCTAssertEqual(try GuestMemoryLayout(memoryBytes: (4 << 20) + 1).totalBytes, (4 << 20) + 4096)
    }

    func testGuestMemoryBoundsChecks() throws {
        let memory = try GuestMemory(layout: GuestMemoryLayout(memoryBytes: 4 << 20), name: "t")
        XCTAssertNotNil(memory.pointer(0, length: 4 << 20))
        XCTAssertNil(memory.pointer(1, length: 4 << 20))
        XCTAssertNil(memory.pointer(UInt64.max, length: 2), "overflow is outside, not a trap")
        XCTAssertThrowsError(try memory.write([1, 2], at: (4 << 20) - 1, what: "x"))
        try memory.write([1, 2, 3], at: 0x1000, what: "x")
        XCTAssertEqual(memory.read(0x1000, count: 3), [1, 2, 3])
    }
}

/// Builds ELF32 files for the Multiboot loader.
enum ELFBuilder {
    struct Segment { var vaddr: UInt32; var paddr: UInt32; var data: [UInt8]; var memorySize: UInt32 }

    static func elf32(entry: UInt32, segments: [Segment], multibootFlags: UInt32 = 0x3) -> [UInt8] {
        var file = ByteImage(count: 52 + 32 * segments.count)
        file.putBytes(0, [0x7F, 0x45, 0x4C, 0x46, 1, 1, 1])
        file.put16(16, 2)      // ET_EXEC
        file.put16(18, 3)      // EM_386
        file.put32(20, 1)
        file.put32(24, entry)
        file.put32(28, 52)     // phoff
        file.put16(40, 52)
        file.put16(42, 32)
        file.put16(44, UInt16(segments.count))
        var offset = 0x1000
        for (i, segment) in segments.enumerated() {
            let ph = 52 + 32 * i
            file.put32(ph, 1)
            file.put32(ph + 4, UInt32(offset))
            file.put32(ph + 8, segment.vaddr)
            file.put32(ph + 12, segment.paddr)
            file.put32(ph + 16, UInt32(segment.data.count))
            file.put32(ph + 20, segment.memorySize)
            file.putBytes(offset, segment.data)
            offset += (segment.data.count + 0xFFF) & ~0xFFF
        }
        // The Multiboot header at the start of the first segment's bytes.
        let magic: UInt32 = 0x1BAD_B002
        file.put32(0x1000, magic)
        file.put32(0x1004, multibootFlags)
        file.put32(0x1008, 0 &- (magic &+ multibootFlags))
        return file.bytes
    }
}

final class MultibootTests: XCTestCase {
    func testHeaderSearchNeedsMagicChecksumAndAlignment() {
        var file = [UInt8](repeating: 0, count: 9000)
        XCTAssertNil(Multiboot.findHeader(file))
        var image = ByteImage(file)
        image.put32(8190, 0x1BAD_B002)  // unaligned
        XCTAssertNil(Multiboot.findHeader(image.bytes))
        image = ByteImage(file)
        image.put32(8192, 0x1BAD_B002)  // beyond 8 KiB
        image.put32(8196, 0)
        image.put32(8200, 0 &- 0x1BAD_B002)
        XCTAssertNil(Multiboot.findHeader(image.bytes))
        image = ByteImage(file)
        image.put32(4096, 0x1BAD_B002)
        image.put32(4100, 2)
        image.put32(4104, 0)  // bad checksum
        XCTAssertNil(Multiboot.findHeader(image.bytes))
        image.put32(4104, 0 &- (0x1BAD_B002 &+ 2))
        file = image.bytes
        XCTAssertEqual(Multiboot.findHeader(file)?.offset, 4096)
        XCTAssertEqual(Multiboot.findHeader(file)?.flags, 2)
    }

    func testInformationStructureFieldByField() throws {
        let layout = try GuestMemoryLayout(memoryBytes: 64 << 20)
        let (info, map) = Multiboot.information(layout: layout, commandLineAddress: 0x20000,
                                                loaderNameAddress: 0x7400, memoryMapAddress: 0x7100)
        XCTAssertEqual(info.count, 88)
        XCTAssertEqual(info.u32(0), 0x245, "mem, cmdline, mmap, loader name")
        XCTAssertEqual(info.u32(4), 639, "mem_lower KiB")
        XCTAssertEqual(info.u32(8), 64 * 1024 - 1024, "mem_upper KiB above 1 MiB")
        XCTAssertEqual(info.u32(16), 0x20000)
        XCTAssertEqual(info.u32(20), 0, "no modules")
        XCTAssertEqual(info.u32(44), 3 * 24, "mmap_length")
        XCTAssertEqual(info.u32(48), 0x7100)
        XCTAssertEqual(info.u32(64), 0x7400)
        // mmap entries: size 20, base, length, type.
        XCTAssertEqual(map.u32(0), 20)
        XCTAssertEqual(map.u64(4), 0)
        XCTAssertEqual(map.u64(12), 0x9FC00)
        XCTAssertEqual(map.u32(20), 1)
        XCTAssertEqual(map.u64(28), 0x9FC00)
        XCTAssertEqual(map.u32(44), 2, "reserved")
        XCTAssertEqual(map.u64(52), 0x100000)
        XCTAssertEqual(map.u64(60), (64 << 20) - 0x100000)
        XCTAssertEqual(map.u32(68), 1)
    }

    func testELFLoadPlacesSegmentsZeroesBSSAndTranslatesEntry() throws {
        let code = [UInt8](repeating: 0xAB, count: 0x20)
        let file = ELFBuilder.elf32(entry: 0xC010_0010, segments: [
            .init(vaddr: 0xC010_0000, paddr: 0x0010_0000, data: code, memorySize: 0x2000),
        ])
        let memory = try GuestMemory(layout: GuestMemoryLayout(memoryBytes: 16 << 20), name: "t")
        try memory.fill(0xEE, at: 0x100000, length: 0x3000, what: "dirt")
        let result = try Multiboot.load(file, path: "/k.elf", commandLine: "console=ttyS0", memory: memory)
        XCTAssertEqual(result.entry, .protected32(eip: 0x0010_0010, eax: 0x2BAD_B002, ebx: 0x7000))
        XCTAssertEqual(memory.read(0x100000 + 12, count: 4), [0xAB, 0xAB, 0xAB, 0xAB])
        XCTAssertEqual(memory.read(0x100000 + 0x1FFF, count: 1), [0], "bss zeroed")
        XCTAssertEqual(memory.read(0x102000, count: 1), [0xEE], "nothing beyond memsz")
        XCTAssertEqual(memory.read(0x20000, count: 21), Array("/k.elf console=ttyS0\0".utf8))
        XCTAssertEqual(memory.read(0x7400, count: 4), Array("vmd\0".utf8))
        XCTAssertEqual(memory.read(0x7000, count: 4), [0x45, 0x02, 0, 0])
        XCTAssertEqual(ByteImage(memory.read(0x500, count: 32)!).u64(16), 0x00CF_9B00_0000_FFFF, "32-bit code at 0x10")
    }

    func testAoutKludge() throws {
        let code = GuestCode()
        var image = code
        image.print("a")
        let file = image.image
        let header = try XCTUnwrap(Multiboot.findHeader(file))
        let (segments, entry) = try Multiboot.plan(file, header: header, path: "k")
        XCTAssertEqual(segments, [Multiboot.Segment(fileOffset: 0, fileSize: file.count, address: 0x100000,
                                                    memorySize: UInt64(file.count))])
        XCTAssertEqual(entry, 0x100020)
    }

    func testHostileFilesGiveErrorsNotTraps() throws {
        let memory = try GuestMemory(layout: GuestMemoryLayout(memoryBytes: 4 << 20), name: "t")
        // Segment beyond RAM.
        var file = ELFBuilder.elf32(entry: 0x100000, segments: [.init(vaddr: 0x100000, paddr: 0xF000_0000, data: [1], memorySize: 1)])
        XCTAssertThrowsError(try Multiboot.load(file, path: "k", commandLine: "", memory: memory)) {
            XCTAssertTrue("\($0)".contains("does not fit"), "\($0)")
        }
        // Segment over the boot data.
        file = ELFBuilder.elf32(entry: 0x7000, segments: [.init(vaddr: 0x7000, paddr: 0x7000, data: [1], memorySize: 1)])
        XCTAssertThrowsError(try Multiboot.load(file, path: "k", commandLine: "", memory: memory))
        // memsz wrapping around 4 GiB.
        file = ELFBuilder.elf32(entry: 0x100000, segments: [.init(vaddr: 0x100000, paddr: 0xFFFF_F000, data: [1], memorySize: 0xFFFF_FFFF)])
        XCTAssertThrowsError(try Multiboot.load(file, path: "k", commandLine: "", memory: memory))
        // Program headers past the end of the file.
        var broken = ByteImage(ELFBuilder.elf32(entry: 0x100000, segments: [.init(vaddr: 0x100000, paddr: 0x100000, data: [1], memorySize: 1)]))
        broken.put32(28, 0xFFFF_FFF0)
        XCTAssertThrowsError(try Multiboot.load(broken.bytes, path: "k", commandLine: "", memory: memory))
        // Entry outside every segment.
        file = ELFBuilder.elf32(entry: 0x300000, segments: [.init(vaddr: 0x100000, paddr: 0x100000, data: [1], memorySize: 1)])
        XCTAssertThrowsError(try Multiboot.load(file, path: "k", commandLine: "", memory: memory))
        // Unsupported required flag (bit 3).
        file = ELFBuilder.elf32(entry: 0x100000, segments: [.init(vaddr: 0x100000, paddr: 0x100000, data: [1], memorySize: 1)],
                                multibootFlags: 0x8)
        XCTAssertThrowsError(try Multiboot.load(file, path: "k", commandLine: "", memory: memory)) {
            XCTAssertTrue("\($0)".contains("unsupported"), "\($0)")
        }
        // ELF64.
        var elf64 = ByteImage(ELFBuilder.elf32(entry: 0x100000, segments: [.init(vaddr: 0x100000, paddr: 0x100000, data: [1], memorySize: 1)]))
        elf64.put8(4, 2)
        XCTAssertThrowsError(try Multiboot.load(elf64.bytes, path: "k", commandLine: "", memory: memory)) {
            XCTAssertTrue("\($0)".contains("ELF64"), "\($0)")
        }
        // Command line too long.
        file = ELFBuilder.elf32(entry: 0x100000, segments: [.init(vaddr: 0x100000, paddr: 0x100000, data: [1], memorySize: 1)])
        XCTAssertThrowsError(try Multiboot.load(file, path: "k", commandLine: String(repeating: "x", count: 5000), memory: memory))
    }

    func testFormatDetection() throws {
        XCTAssertEqual(try KernelFormat.detect(GuestCode().image, path: "a"), .multiboot)
        var bz = ByteImage(count: 0x1000)
        bz.put32(0x202, 0x5372_6448)
        XCTAssertEqual(try KernelFormat.detect(bz.bytes, path: "b"), .bzImage)
        XCTAssertThrowsError(try KernelFormat.detect([1, 2, 3], path: "/x/y.img")) { error in
            XCTAssertEqual("\(error)", "/x/y.img: not a kernel or BIOS this VMM can boot (no bzImage \"HdrS\" magic at 0x202, no PVH ELF note, no Multiboot header in the first 8 KiB, not a 64 KiB-multiple BIOS image with a far jump at its reset vector)")
        }
        var bios = [UInt8](repeating: 0, count: 128 << 10)
        bios[bios.count - 16] = 0xEA
        XCTAssertEqual(try KernelFormat.detect(bios, path: "c"), .bios)
        bios[bios.count - 16] = 0x90
        XCTAssertThrowsError(try KernelFormat.detect(bios, path: "d"), "no far jump at the reset vector")
    }
}

/// Builds a minimal bzImage: 4 setup sectors, a header, a payload.
enum BzImageBuilder {
    static func make(version: UInt16 = 0x020F, payload: Int = 0x10000, initSize: UInt32 = 0x40_0000,
                     xloadflags: UInt16 = 0x1, loadflags: UInt8 = 0x1, initrdMax: UInt32 = 0x7FFF_FFFF,
                     code64: [UInt8]? = nil) -> [UInt8] {
        var image = ByteImage(count: 5 * 512 + payload)
        image.put8(0x1F1, 4)               // setup_sects
        image.put16(0x1FE, 0xAA55)
        image.put8(0x200, 0xEB)            // jmp short
        image.put8(0x201, 0x66)            // header ends at 0x202 + 0x66 = 0x268
        image.put32(0x202, 0x5372_6448)
        image.put16(0x206, version)
        image.put8(0x211, loadflags)
        image.put32(0x214, 0x100000)
        image.put32(0x22C, initrdMax)
        image.put32(0x230, 0x20_0000)      // kernel_alignment
        image.put16(0x236, xloadflags)
        image.put32(0x238, 2047)           // cmdline_size
        image.put32(0x260, initSize)
        image.put8(0x250, 0x77)            // a byte inside the header, to see it copied
        for i in 0..<payload { image.bytes[5 * 512 + i] = UInt8(truncatingIfNeeded: i * 7) }
        if let code64 { image.putBytes(5 * 512 + 0x200, code64) }  // startup_64 sits at +0x200
        return image.bytes
    }
}

final class LinuxBootTests: XCTestCase {
    func testZeroPageFieldByField() throws {
        let kernel = BzImageBuilder.make()
        let memory = try GuestMemory(layout: GuestMemoryLayout(memoryBytes: 128 << 20), name: "t")
        let initrd = [UInt8](repeating: 0x11, count: 10000)
        let result = try LinuxBoot.load(kernel, path: "bz", commandLine: "console=ttyS0 quiet", initrd: initrd,
                                        initrdPath: "rd", memory: memory)
        XCTAssertEqual(result.entry, .long64(rip: 0x100200, rsi: 0x7000, rsp: 0x8FF0, cr3: 0x9000))
        XCTAssertEqual(result.format, "Linux bzImage, boot protocol 2.15")
        let page = ByteImage(try XCTUnwrap(memory.read(0x7000, count: 4096)))
        XCTAssertEqual(page.u8(0x1F1), 4, "setup_sects copied")
        XCTAssertEqual(page.u16(0x1FE), 0xAA55)
        XCTAssertEqual(page.u32(0x202), 0x5372_6448)
        XCTAssertEqual(page.u16(0x206), 0x020F)
        XCTAssertEqual(page.u8(0x250), 0x77, "whole setup header copied")
        XCTAssertEqual(page.u8(0x268), 0, "nothing past the header")
        XCTAssertEqual(page.u8(0x210), 0xFF, "type_of_loader")
        XCTAssertEqual(page.u8(0x211), 0x01, "loadflags: LOADED_HIGH")
        XCTAssertEqual(page.u32(0x214), 0x100000, "code32_start")
        XCTAssertEqual(page.u32(0x228), 0x20000, "cmd_line_ptr")
        XCTAssertEqual(memory.read(0x20000, count: 20), Array("console=ttyS0 quiet\0".utf8))
        // initrd: page-aligned, as high as possible below the end of RAM.
        let rdAddress = try XCTUnwrap(page.u32(0x218))
        XCTAssertEqual(page.u32(0x21C), 10000)
        XCTAssertEqual(rdAddress & 0xFFF, 0)
        XCTAssertEqual(UInt64(rdAddress), ((128 << 20) - 10000) & ~0xFFF)
        XCTAssertEqual(memory.read(UInt64(rdAddress), count: 2), [0x11, 0x11])
        // e820.
        XCTAssertEqual(page.u8(0x1E8), 3)
        XCTAssertEqual(page.u64(0x2D0), 0)
        XCTAssertEqual(page.u64(0x2D8), 0x9FC00)
        XCTAssertEqual(page.u32(0x2E0), 1)
        XCTAssertEqual(page.u64(0x2E4), 0x9FC00)
        XCTAssertEqual(page.u32(0x2F4), 2)
        XCTAssertEqual(page.u64(0x2F8), 0x100000)
        XCTAssertEqual(page.u64(0x300), (128 << 20) - 0x100000)
        XCTAssertEqual(page.u32(0x308), 1)
        // The protected-mode kernel at 1 MiB.
        XCTAssertEqual(memory.read(0x100000, count: 3), [0, 7, 14])
        // Identity map and GDT.
        let tables = ByteImage(try XCTUnwrap(memory.read(0x9000, count: 0x6000)))
        XCTAssertEqual(tables.u64(0), 0xA003)
        XCTAssertEqual(tables.u64(0x1000), 0xB003)
        XCTAssertEqual(tables.u64(0x1018), 0xE003)
        XCTAssertEqual(tables.u64(0x2000), 0x83)
        XCTAssertEqual(tables.u64(0x2008), 0x20_0083)
        XCTAssertEqual(tables.u64(0x5FF8), 0xFFE0_0083, "4 GiB mapped")
        let gdt = ByteImage(try XCTUnwrap(memory.read(0x500, count: 32)))
        XCTAssertEqual(gdt.u64(16), 0x00AF_9B00_0000_FFFF, "__BOOT_CS 0x10: 64-bit code")
        XCTAssertEqual(gdt.u64(24), 0x00CF_9300_0000_FFFF, "__BOOT_DS 0x18")
    }

    func testInitrdRespectsInitrdAddressMax() throws {
        let kernel = BzImageBuilder.make(initrdMax: 0x37FF_FFFF)
        let layout = try GuestMemoryLayout(memoryBytes: 2 << 30)
        let image = try LinuxBoot.parse(kernel, path: "bz")
        let address = try LinuxBoot.initrdAddress(size: 0x100000, image: image, layout: layout, path: "rd")
        XCTAssertEqual(address, 0x3800_0000 - 0x100000)
        XCTAssertThrowsError(try LinuxBoot.initrdAddress(size: 0x3800_0000, image: image, layout: layout, path: "rd")) {
            XCTAssertTrue("\($0)".hasPrefix("rd: initrd"), "\($0)")
        }
    }

    func testRefusesWhatItCannotBoot() throws {
        let memory = try GuestMemory(layout: GuestMemoryLayout(memoryBytes: 64 << 20), name: "t")
        func fails(_ kernel: [UInt8], _ words: String, memory: GuestMemory = memory) {
            XCTAssertThrowsError(try LinuxBoot.load(kernel, path: "bz", commandLine: "", initrd: nil, initrdPath: "", memory: memory)) {
                XCTAssertTrue("\($0)".contains(words), "\($0)")
            }
        }
        fails(BzImageBuilder.make(version: 0x0205), "older than 2.06")
        fails(BzImageBuilder.make(xloadflags: 0), "64-bit entry")
        fails(BzImageBuilder.make(loadflags: 0), "zImage")
        fails(Array(BzImageBuilder.make().prefix(0x300)), "shorter than its setup")
        fails(BzImageBuilder.make(initSize: 0x1000_0000), "does not fit")
        XCTAssertThrowsError(try LinuxBoot.load(BzImageBuilder.make(), path: "bz", commandLine: String(repeating: "x", count: 2048),
                                                initrd: nil, initrdPath: "", memory: memory))
    }
}

final class MPTableTests: XCTestCase {
    func testFloatingPointerAndTableFieldByField() throws {
        let image = MPTable.build(cpus: 2, base: 0xF0000)
        // Floating pointer.
        XCTAssertEqual(Array(image.bytes[0..<4]), Array("_MP_".utf8))
        XCTAssertEqual(image.u32(4), 0xF0010)
        XCTAssertEqual(image.u8(8), 1)
        XCTAssertEqual(image.u8(9), 4)
        XCTAssertEqual(image.sum(0..<16), 0, "checksum")
        XCTAssertEqual(image.u8(11), 0, "a config table is present (no default config)")
        // Config table header.
        let t = 16
        XCTAssertEqual(Array(image.bytes[t..<t + 4]), Array("PCMP".utf8))
        let length = Int(try XCTUnwrap(image.u16(t + 4)))
        XCTAssertEqual(t + length, image.count)
        XCTAssertEqual(image.sum(t..<t + length), 0, "checksum")
        XCTAssertEqual(image.u8(t + 6), 4)
        XCTAssertEqual(image.u32(t + 36), 0xFEE0_0000)
        let count = Int(try XCTUnwrap(image.u16(t + 34)))
        // Walk the entries.
        var at = t + 44
        var processors: [(id: UInt8, flags: UInt8)] = []
        var buses: [UInt8: String] = [:]
        var ioapics: [(id: UInt8, address: UInt32)] = []
        var routes: [(type: UInt8, flags: UInt16, bus: UInt8, irq: UInt8, pin: UInt8)] = []
        var locals: [(type: UInt8, lint: UInt8)] = []
        for _ in 0..<count {
            let type = try XCTUnwrap(image.u8(at))
            switch type {
            case 0:
                processors.append((image.u8(at + 1)!, image.u8(at + 3)!))
                XCTAssertEqual(image.u32(at + 8)! & 0x200, 0x200, "APIC feature")
                at += 20
            case 1:
                buses[image.u8(at + 1)!] = String(decoding: image.bytes[at + 2..<at + 8], as: UTF8.self)
                at += 8
            case 2:
                ioapics.append((image.u8(at + 1)!, image.u32(at + 4)!))
                XCTAssertEqual(image.u8(at + 3), 1, "enabled")
                at += 8
            case 3:
                routes.append((image.u8(at + 1)!, image.u16(at + 2)!, image.u8(at + 4)!, image.u8(at + 5)!, image.u8(at + 7)!))
                XCTAssertEqual(image.u8(at + 6), 2, "to the IOAPIC")
                at += 8
            case 4:
                locals.append((image.u8(at + 1)!, image.u8(at + 7)!))
                at += 8
            default:
                XCTFail("unknown entry type \(type)")
                return
            }
        }
        XCTAssertEqual(at, image.count)
        XCTAssertEqual(processors.map { $0.id }, [0, 1])
        XCTAssertEqual(processors.map { $0.flags }, [3, 1], "CPU 0 is the BSP")
        XCTAssertEqual(buses, [0: "PCI   ", 1: "ISA   "])
        XCTAssertEqual(ioapics.first?.id, 2)
        XCTAssertEqual(ioapics.first?.address, 0xFEC0_0000)
        let isa = routes.filter { $0.bus == 1 }
        XCTAssertEqual(isa.map { $0.irq }, [0, 1, 2, 3, 4, 6, 7, 8, 12, 13, 14, 15])
        XCTAssertTrue(isa.allSatisfy { $0.irq == $0.pin && $0.flags == 0 })
        let pci = routes.filter { $0.bus == 0 }
        XCTAssertEqual(pci.count, 31)
        XCTAssertEqual(pci.first.map { [$0.irq, $0.pin] }, [1 << 2, 5], "slot 1 INTA# -> IRQ 5")
        XCTAssertEqual(pci[1].pin, 9)
        XCTAssertTrue(pci.allSatisfy { $0.flags == 0x0D }, "level, active high")
        XCTAssertEqual(locals.map { $0.type }, [3, 1], "ExtINT, NMI")
        XCTAssertEqual(locals.map { $0.lint }, [0, 1])
    }

    func testManyCPUsStillAValidTable() {
        let image = MPTable.build(cpus: 64)
        XCTAssertEqual(image.sum(16..<image.count), 0)
        let entries: UInt16 = 64 + 2 + 1 + 12 + 31 + 2  // CPUs, buses, IOAPIC, ISA, PCI, local
        XCTAssertEqual(image.u16(16 + 34), entries)
        XCTAssertLessThan(image.count, 0x10000, "fits in the BIOS area")
    }
}

final class CPUIDTests: XCTestCase {
    func entry(_ function: UInt32, _ index: UInt32 = 0, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) -> kvm_cpuid_entry2 {
        var e = kvm_cpuid_entry2()
        e.function = function; e.index = index; e.eax = eax; e.ebx = ebx; e.ecx = ecx; e.edx = edx
        return e
    }

    func testAPICIDsAndTopologyPerVCPU() {
        let supported = [entry(1, ebx: 0xFFFF_0800, ecx: 0, edx: 0), entry(4, eax: 0x121), entry(0xB, 0), entry(0xB, 1), entry(0xB, 2)]
        let cpu2 = CPUIDTopology.entries(supported, vcpu: 2, cpus: 3)
        XCTAssertEqual(cpu2[0].ebx >> 24, 2, "APIC id")
        XCTAssertEqual((cpu2[0].ebx >> 16) & 0xFF, 3, "logical CPUs per package")
        XCTAssertEqual(cpu2[0].ebx & 0xFFFF, 0x0800, "CLFLUSH size kept")
        XCTAssertEqual(cpu2[0].ecx >> 31, 1, "hypervisor bit")
        XCTAssertEqual(cpu2[0].edx & (1 << 28), 1 << 28, "HTT")
        XCTAssertEqual(cpu2[1].eax >> 26, 2, "cores - 1")
        XCTAssertEqual(cpu2[1].eax & 0x3FF_FFFF, 0x121)
        XCTAssertEqual([cpu2[2].eax, cpu2[2].ebx, cpu2[2].ecx, cpu2[2].edx], [0, 1, 0x100, 2])
        XCTAssertEqual([cpu2[3].eax, cpu2[3].ebx, cpu2[3].ecx, cpu2[3].edx], [2, 3, 0x201, 2])
        XCTAssertEqual([cpu2[4].eax, cpu2[4].ebx, cpu2[4].ecx], [0, 0, 2])
        let single = CPUIDTopology.entries(supported, vcpu: 0, cpus: 1)
        XCTAssertEqual(single[0].edx & (1 << 28), 0)
    }
}

final class SeccompListTests: XCTestCase {
    func testIoctlNumbersMatchTheKernelHeaders() {
        let list = Dictionary(uniqueKeysWithValues: VirtualMachine.ioctlsAfterStart.map { ($0.name, $0.request) })
        XCTAssertEqual(list, ["KVM_RUN": 0xAE80, "KVM_IRQ_LINE": 0x4008_AE61, "KVM_GET_REGS": 0x8090_AE81,
                              "KVM_IOEVENTFD": 0x4040_AE79, "KVM_SET_GSI_ROUTING": 0x4008_AE6A])
    }
}
