import Foundation
import XCTest
@testable import VMM

/// ELF64 files with notes, for the PVH loader.
enum ELF64Builder {
    struct Segment { var paddr: UInt64; var data: [UInt8]; var memorySize: UInt64 }

    /// One note in the ELF note format: namesz, descsz, type, name, desc (4-aligned).
    static func note(name: String, type: UInt32, descriptor: [UInt8]) -> [UInt8] {
        var bytes = ByteImage(count: 12)
        let nameBytes = Array(name.utf8) + [0]
        bytes.put32(0, UInt32(nameBytes.count))
        bytes.put32(4, UInt32(descriptor.count))
        bytes.put32(8, type)
        bytes.putBytes(12, nameBytes)
        bytes.putBytes((12 + nameBytes.count + 3) & ~3, descriptor)
        var out = bytes.bytes
        while out.count % 4 != 0 { out.append(0) }
        return out
    }

    static func pvhNote(entry: UInt64, width: Int = 8) -> [UInt8] {
        note(name: "Xen", type: 18, descriptor: (0..<width).map { UInt8(truncatingIfNeeded: entry >> (8 * UInt64($0))) })
    }

    static func elf64(segments: [Segment], notes: [UInt8]) -> [UInt8] {
        let headers = segments.count + (notes.isEmpty ? 0 : 1)
        var file = ByteImage(count: 64 + 56 * headers)
        file.putBytes(0, [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1])
        file.put16(16, 2)       // ET_EXEC
        file.put16(18, 62)      // EM_X86_64
        file.put32(20, 1)
        file.put64(24, 0xFFFF_FFFF_8100_0000)  // e_entry: virtual, unused by PVH
        file.put64(32, 64)      // phoff
        file.put16(52, 64)
        file.put16(54, 56)
        file.put16(56, UInt16(headers))
        var offset = 0x1000
        for (i, segment) in segments.enumerated() {
            let ph = 64 + 56 * i
            file.put32(ph, 1)
            file.put64(ph + 8, UInt64(offset))
            file.put64(ph + 16, 0xFFFF_FFFF_8000_0000 &+ segment.paddr)
            file.put64(ph + 24, segment.paddr)
            file.put64(ph + 32, UInt64(segment.data.count))
            file.put64(ph + 40, segment.memorySize)
            file.putBytes(offset, segment.data)
            offset += (segment.data.count + 0xFFF) & ~0xFFF
        }
        if !notes.isEmpty {
            let ph = 64 + 56 * segments.count
            file.put32(ph, 4)   // PT_NOTE
            file.put64(ph + 8, UInt64(offset))
            file.put64(ph + 32, UInt64(notes.count))
            file.put64(ph + 40, UInt64(notes.count))
            file.putBytes(offset, notes)
        }
        return file.bytes
    }
}

final class PVHTests: XCTestCase {
    func testStartInfoFieldByField() throws {
        let layout = try GuestMemoryLayout(memoryBytes: 64 << 20)
        let (info, map, modules) = PVH.startInfo(layout: layout, commandLineAddress: 0x20000,
                                                 initrd: (address: 0x3F0_0000, size: 0x1234))
        XCTAssertEqual(info.count, 56, "sizeof(struct hvm_start_info)")
        XCTAssertEqual(info.u32(0), 0x336E_C578, "magic")
        XCTAssertEqual(info.u32(4), 1, "version")
        XCTAssertEqual(info.u32(8), 0, "flags")
        XCTAssertEqual(info.u32(12), 1, "nr_modules")
        XCTAssertEqual(info.u64(16), 0x7800, "modlist_paddr")
        XCTAssertEqual(info.u64(24), 0x20000, "cmdline_paddr")
        XCTAssertEqual(info.u64(32), 0, "rsdp_paddr: no ACPI")
        XCTAssertEqual(info.u64(40), 0x7100, "memmap_paddr")
        XCTAssertEqual(info.u32(48), 3, "memmap_entries")
        XCTAssertEqual(info.u32(52), 0, "reserved")
        // struct hvm_memmap_table_entry: addr, size, type, reserved.
        XCTAssertEqual(map.count, 3 * 24)
        XCTAssertEqual(map.u64(0), 0)
        XCTAssertEqual(map.u64(8), 0x9FC00)
        XCTAssertEqual(map.u32(16), 1, "E820 RAM")
        XCTAssertEqual(map.u32(20), 0)
        XCTAssertEqual(map.u64(24), 0x9FC00)
        XCTAssertEqual(map.u32(40), 2, "reserved")
        XCTAssertEqual(map.u64(48), 0x100000)
        XCTAssertEqual(map.u64(56), (64 << 20) - 0x100000)
        // struct hvm_modlist_entry: paddr, size, cmdline_paddr, reserved.
        XCTAssertEqual(modules.count, 32)
        XCTAssertEqual(modules.u64(0), 0x3F0_0000)
        XCTAssertEqual(modules.u64(8), 0x1234)
        XCTAssertEqual(modules.u64(16), 0)
        XCTAssertEqual(modules.u64(24), 0)
    }

    func testWithoutInitrdThereAreNoModules() throws {
        let (info, _, modules) = PVH.startInfo(layout: try GuestMemoryLayout(memoryBytes: 8 << 20),
                                               commandLineAddress: 0x20000, initrd: nil)
        XCTAssertEqual(info.u32(12), 0)
        XCTAssertEqual(info.u64(16), 0)
        XCTAssertEqual(modules.count, 0)
    }

    func testNoteIsFoundInEightAndFourByteForms() {
        let other = ELF64Builder.note(name: "Xen", type: 6, descriptor: Array("linux\0".utf8))
        let gnu = ELF64Builder.note(name: "GNU", type: 18, descriptor: [1, 2, 3, 4])  // right type, wrong owner
        let seg = ELF64Builder.Segment(paddr: 0x100000, data: [0x90], memorySize: 0x1000)
        XCTAssertEqual(PVH.findEntry(ELF64Builder.elf64(segments: [seg], notes: other + gnu + ELF64Builder.pvhNote(entry: 0x100000))),
                       0x100000)
        XCTAssertEqual(PVH.findEntry(ELF64Builder.elf64(segments: [seg], notes: ELF64Builder.pvhNote(entry: 0x100004, width: 4))),
                       0x100004)
        XCTAssertNil(PVH.findEntry(ELF64Builder.elf64(segments: [seg], notes: other + gnu)))
        XCTAssertNil(PVH.findEntry(ELF64Builder.elf64(segments: [seg], notes: ELF64Builder.pvhNote(entry: 1 << 32))),
                     "an entry above 4 GiB is no 32-bit entry")
        XCTAssertNil(PVH.findEntry([UInt8](repeating: 0, count: 100)))
    }

    func testLoadPlacesSegmentsZeroesBSSAndFillsStartInfo() throws {
        let code = [UInt8](repeating: 0xAB, count: 0x30)
        let file = ELF64Builder.elf64(segments: [.init(paddr: 0x200000, data: code, memorySize: 0x3000)],
                                      notes: ELF64Builder.pvhNote(entry: 0x200010))
        let memory = try GuestMemory(layout: GuestMemoryLayout(memoryBytes: 16 << 20), name: "t")
        try memory.fill(0xEE, at: 0x200000, length: 0x4000, what: "dirt")
        let result = try PVH.load(file, path: "k", commandLine: "console=ttyS0", initrd: [1, 2, 3], initrdPath: "rd",
                                  memory: memory)
        XCTAssertEqual(result.entry, .protected32(eip: 0x200010, eax: 0x336E_C578, ebx: 0x7000))
        XCTAssertEqual(result.format, "PVH")
        XCTAssertEqual(memory.read(0x200000, count: 2), [0xAB, 0xAB])
        XCTAssertEqual(memory.read(0x202FFF, count: 1), [0], "bss zeroed")
        XCTAssertEqual(memory.read(0x203000, count: 1), [0xEE], "nothing beyond memsz")
        XCTAssertEqual(memory.read(0x20000, count: 14), Array("console=ttyS0\0".utf8), "no kernel name, unlike Multiboot")
        let info = ByteImage(try XCTUnwrap(memory.read(0x7000, count: 56)))
        XCTAssertEqual(info.u32(0), 0x336E_C578)
        XCTAssertEqual(info.u64(24), 0x20000)
        let module = ByteImage(try XCTUnwrap(memory.read(0x7800, count: 32)))
        XCTAssertEqual(module.u64(0), (16 << 20) - 0x1000, "initrd at the top of RAM, page-aligned")
        XCTAssertEqual(module.u64(8), 3)
        XCTAssertEqual(memory.read((16 << 20) - 0x1000, count: 3), [1, 2, 3])
        XCTAssertEqual(ByteImage(memory.read(0x500, count: 32)!).u64(16), 0x00CF_9B00_0000_FFFF, "32-bit code at 0x10")
    }

    func testLoaderChoiceAndForcing() throws {
        let pvhOnly = ELF64Builder.elf64(segments: [.init(paddr: 0x100000, data: [0x90], memorySize: 0x1000)],
                                         notes: ELF64Builder.pvhNote(entry: 0x100000))
        XCTAssertEqual(try KernelFormat.detect(pvhOnly, path: "k"), .pvh)
        // A Multiboot ELF32 that also carries the note: PVH wins unless forced.
        let multiboot = ELFBuilder.elf32(entry: 0x100000, segments: [
            .init(vaddr: 0x100000, paddr: 0x100000, data: [UInt8](repeating: 0, count: 0x20), memorySize: 0x1000),
        ])
        XCTAssertEqual(try KernelFormat.detect(multiboot, path: "k"), .multiboot)
        XCTAssertEqual(try KernelFormat.detect(multiboot, path: "k", forced: .multiboot), .multiboot)
        XCTAssertEqual(try KernelFormat.detect(pvhOnly, path: "k", forced: .multiboot), .multiboot)
        XCTAssertEqual(try KernelFormat.detect(multiboot, path: "k", forced: .pvh), .pvh)
        var bz = ByteImage(pvhOnly)
        bz.put32(0x202, 0x5372_6448)
        XCTAssertEqual(try KernelFormat.detect(bz.bytes, path: "k"), .bzImage, "bzImage first")
        XCTAssertThrowsError(try KernelFormat.detect([UInt8](repeating: 0, count: 0x300), path: "k"))
        // Forced PVH on a file without the note: a clear error from the loader.
        let memory = try GuestMemory(layout: GuestMemoryLayout(memoryBytes: 4 << 20), name: "t")
        XCTAssertThrowsError(try PVH.load(multiboot, path: "k", commandLine: "", initrd: nil, initrdPath: "", memory: memory)) {
            XCTAssertTrue("\($0)".contains("no PVH entry"), "\($0)")
        }
    }

    func testHostileFilesGiveErrorsNotTraps() throws {
        let memory = try GuestMemory(layout: GuestMemoryLayout(memoryBytes: 4 << 20), name: "t")
        func load(_ file: [UInt8]) -> String {
            do {
                _ = try PVH.load(file, path: "k", commandLine: "", initrd: nil, initrdPath: "", memory: memory)
                return "loaded"
            } catch {
                return "\(error)"
            }
        }
        let note = ELF64Builder.pvhNote(entry: 0x100000)
        XCTAssertTrue(load(ELF64Builder.elf64(segments: [.init(paddr: 0xF000_0000, data: [1], memorySize: 1)],
                                              notes: ELF64Builder.pvhNote(entry: 0xF000_0000)))
            .contains("does not fit"))
        XCTAssertTrue(load(ELF64Builder.elf64(segments: [.init(paddr: 0x200000, data: [1], memorySize: 1)], notes: note))
            .contains("not inside a loaded segment"))
        XCTAssertTrue(load(ELF64Builder.elf64(segments: [.init(paddr: UInt64.max - 1, data: [1], memorySize: 4)], notes: note))
            .contains("malformed"))
        XCTAssertTrue(load(ELF64Builder.elf64(segments: [.init(paddr: 0x100000, data: [1], memorySize: 1)],
                                              notes: ELF64Builder.note(name: "Xen", type: 6, descriptor: [0])))
            .contains("no PVH entry"))
        // Truncations and corrupted note sizes at every length: errors, never traps.
        let good = ELF64Builder.elf64(segments: [.init(paddr: 0x100000, data: [0x90], memorySize: 0x1000)], notes: note)
        XCTAssertEqual(load(good), "loaded")
        for length in stride(from: 0, to: good.count, by: 7) {
            XCTAssertNotEqual(load(Array(good[..<length])), "loaded", "truncated at \(length)")
        }
        let noteOffset = good.count - note.count
        for (field, value) in [(0, UInt32.max), (4, UInt32.max), (0, 0x7FFF_FFFF), (4, 0xFFFF_FFFC)] {
            var bad = ByteImage(good)
            bad.put32(noteOffset + field, value)
            XCTAssertEqual(PVH.findEntry(bad.bytes), nil, "note field \(field) = \(value)")
        }
    }
}

/// The loader against Debian's real vmlinux (the ELF inside its bzImage,
/// extracted as the kernel's scripts/extract-vmlinux does). No KVM needed.
final class RealVmlinuxPVHTests: XCTestCase {
    /// The ELF inside the newest /boot/vmlinuz-* (or VMM_TEST_BZIMAGE), in a
    /// temporary file; skips when there is none or no decompressor for it.
    static func extractVmlinux() throws -> String {
        let boot = (try? FileManager.default.contentsOfDirectory(atPath: "/boot"))?
            .filter { $0.hasPrefix("vmlinuz-") }.sorted().last.map { "/boot/" + $0 }
        guard let path = ProcessInfo.processInfo.environment["VMM_TEST_BZIMAGE"] ?? boot else {
            throw XCTSkip("no real bzImage: set VMM_TEST_BZIMAGE or install linux-image-cloud-amd64")
        }
        let file = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        let image = ByteImage(file)
        // The setup header's payload_offset/payload_length (boot protocol 2.08+).
        let setupBytes = (Int(file[0x1F1] == 0 ? 4 : file[0x1F1]) + 1) * 512
        guard let offset = image.u32(0x248), let length = image.u32(0x24C),
              setupBytes + Int(offset) + Int(length) <= file.count else {
            throw VMMError("\(path): no payload in the setup header")
        }
        let payload = Array(file[(setupBytes + Int(offset))..<(setupBytes + Int(offset) + Int(length))])
        let tools: [([UInt8], [String])] = [
            ([0x02, 0x21, 0x4C, 0x18], ["lz4", "-dc"]), ([0x28, 0xB5, 0x2F, 0xFD], ["zstd", "-dc"]),
            ([0xFD, 0x37, 0x7A, 0x58], ["xz", "-dc"]), ([0x1F, 0x8B], ["gzip", "-dc"]),
        ]
        guard let tool = tools.first(where: { payload.starts(with: $0.0) })?.1 else {
            throw XCTSkip("\(path): payload compression \(payload.prefix(4)) not handled by this test")
        }
        let directory = try TestSupport.temporaryDirectory()
        let compressed = directory.appendingPathComponent("payload").path
        let output = directory.appendingPathComponent("vmlinux").path
        try Data(payload).write(to: URL(fileURLWithPath: compressed))
        // As extract-vmlinux does, the exit status is not checked (lz4 complains
        // about the size word the kernel's build appends); the output must be ELF.
        _ = try? TestSupport.run(["sh", "-c", "\(tool.joined(separator: " ")) \"$1\" > \"$2\"", "sh", compressed, output])
        guard let head = FileManager.default.contents(atPath: output)?.prefix(4), Array(head) == [0x7F, 0x45, 0x4C, 0x46] else {
            throw XCTSkip("\(tool[0]) did not turn \(path)'s payload into an ELF file (is \(tool[0]) installed?)")
        }
        return output
    }

    func testDebianVmlinuxHasPVHEntryAndLoads() throws {
        let path = try Self.extractVmlinux()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let file = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        XCTAssertEqual(try KernelFormat.detect(file, path: path), .pvh)
        let kernel = try PVH.parse(file, path: path)
        // Linux's pvh_start_xen, in the first loaded segment at 16 MiB.
        XCTAssertGreaterThanOrEqual(kernel.entry, 0x100_0000)
        XCTAssertLessThan(UInt64(kernel.entry), kernel.segments[0].address + kernel.segments[0].memorySize)
        let memory = try GuestMemory(layout: GuestMemoryLayout(memoryBytes: 256 << 20), name: "t")
        let result = try PVH.load(file, path: path, commandLine: "console=ttyS0", initrd: [1, 2, 3, 4], initrdPath: "rd",
                                  memory: memory)
        XCTAssertEqual(result.entry, .protected32(eip: kernel.entry, eax: 0x336E_C578, ebx: 0x7000))
        let info = ByteImage(try XCTUnwrap(memory.read(0x7000, count: 56)))
        XCTAssertEqual(info.u32(0), 0x336E_C578)
        XCTAssertEqual(info.u32(4), 1)
        XCTAssertEqual(info.u32(12), 1)
        XCTAssertEqual(info.u32(48), 3)
        let first = kernel.segments[0]
        XCTAssertEqual(memory.read(first.address, count: 64), Array(file[first.fileOffset..<first.fileOffset + 64]))
        // pvh_start_xen begins with `cld` (0xFC): the entry is code, not a guess.
        XCTAssertEqual(memory.read(UInt64(kernel.entry), count: 1), [0xFC])
        print("\(path): PVH entry 0x\(String(kernel.entry, radix: 16)), kernel ends 0x\(String(kernel.end, radix: 16))")
    }

    /// The reference: QEMU (software emulation; no Linux boots under this
    /// host's PVM KVM) starts the same file through its own PVH loader.
    func testQEMUBootsTheSameVmlinuxThroughPVH() throws {
        let qemu = "/usr/bin/qemu-system-x86_64"
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: qemu), "no \(qemu): apt-get install qemu-system-x86")
        let path = try Self.extractVmlinux()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let start = Date()
        // No root file system: the kernel panics at mount, which is far past the PVH entry.
        // -M pc (QEMU's PVH option ROM) rather than microvm: microvm has no HPET,
        // and on a loaded host the kernel's PIT calibration of the TSC fails
        // there and the boot hangs.
        let output = try TestSupport.run(["timeout", "60", qemu, "-M", "pc", "-accel", "tcg", "-m", "256",
                                          "-kernel", path, "-append", "console=ttyS0 panic=-1",
                                          "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot"])
        XCTAssertTrue(output.contains("Linux version"), output)
        XCTAssertTrue(output.contains("VFS: Unable to mount root fs") || output.contains("Kernel panic"), output)
        print("QEMU pc (TCG) booted \(path) via PVH to the root mount in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
    }
}
