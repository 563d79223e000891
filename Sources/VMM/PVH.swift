/// PVH direct boot (Xen's x86 HVM direct boot ABI, docs/misc/pvh.pandoc and
/// xen/include/public/arch-x86/hvm/start_info.h), as QEMU (hw/i386/x86.c)
/// and Firecracker use it: an ELF kernel carrying the note
/// XEN_ELFNOTE_PHYS32_ENTRY is loaded at its segments' physical addresses
/// and entered at that address in 32-bit protected mode, paging off, flat
/// 4 GiB code and data segments, with EBX = the physical address of an
/// `hvm_start_info` (version 1: command line, modules, memory map).
/// Linux's `vmlinux` carries the note when built with CONFIG_PVH.
enum PVH {
    static let noteType: UInt32 = 18  // XEN_ELFNOTE_PHYS32_ENTRY
    static let startInfoMagic: UInt32 = 0x336E_C578
    static let startInfoVersion: UInt32 = 1
    static let maxProgramHeaders = 128
    static let maxNotes = 256

    // struct hvm_start_info (56 bytes).
    static let magicOffset = 0, versionOffset = 4, flagsOffset = 8, moduleCountOffset = 12
    static let moduleListOffset = 16, commandLineOffset = 24, rsdpOffset = 32
    static let memoryMapOffset = 40, memoryMapCountOffset = 48, reservedOffset = 52
    static let startInfoSize = 56
    /// struct hvm_modlist_entry: paddr, size, cmdline_paddr, reserved.
    static let moduleEntrySize = 32
    /// struct hvm_memmap_table_entry: addr, size, type, reserved.
    static let memoryMapEntrySize = 24
    /// The memory map's room in BootLayout (pvhMemoryMap..<pvhModuleList).
    static var maxMemoryMapEntries: Int { Int(BootLayout.pvhModuleList - BootLayout.pvhMemoryMap) / memoryMapEntrySize }

    /// A loadable segment of the kernel file.
    struct Segment: Equatable {
        let fileOffset: Int
        let fileSize: Int
        let address: UInt64
        let memorySize: UInt64
    }

    struct Kernel: Equatable {
        let segments: [Segment]
        let entry: UInt32
        /// The first byte above every segment: an initrd goes above it.
        var end: UInt64 { segments.map { $0.address + $0.memorySize }.max() ?? 0 }
    }

    /// The PVH entry point if `file` is an ELF (32 or 64 bit, little-endian,
    /// x86) with a XEN_ELFNOTE_PHYS32_ENTRY note in a PT_NOTE segment; nil
    /// for anything else. Never traps on malformed input.
    static func findEntry(_ file: [UInt8]) -> UInt32? {
        guard let elf = try? ELFFile(file, path: "") else { return nil }
        return elf.pvhEntry
    }

    /// The segments and the entry, or an error naming what is wrong.
    static func parse(_ file: [UInt8], path: String) throws -> Kernel {
        let elf = try ELFFile(file, path: path)
        guard let entry = elf.pvhEntry else {
            throw VMMError("\(path): no PVH entry (ELF note Xen/XEN_ELFNOTE_PHYS32_ENTRY) in the kernel")
        }
        let segments = elf.programHeaders.filter { $0.type == 1 && $0.memorySize > 0 }.map {
            Segment(fileOffset: Int($0.offset), fileSize: Int($0.fileSize), address: $0.paddr, memorySize: $0.memorySize)
        }
        guard !segments.isEmpty else { throw VMMError("\(path): ELF file has no loadable segment") }
        guard segments.contains(where: { UInt64(entry) >= $0.address && UInt64(entry) < $0.address + $0.memorySize }) else {
            throw VMMError("\(path): PVH entry 0x\(hex(entry)) is not inside a loaded segment")
        }
        return Kernel(segments: segments, entry: entry)
    }

    /// hvm_start_info, the memory map and the module list, as bytes to put
    /// at BootLayout.pvhStartInfo, .pvhMemoryMap and .pvhModuleList.
    static func startInfo(layout: GuestMemoryLayout, commandLineAddress: UInt64,
                          initrd: (address: UInt64, size: UInt64)?,
                          rsdpAddress: UInt64 = 0) -> (info: ByteImage, memoryMap: ByteImage, modules: ByteImage) {
        var info = ByteImage(count: startInfoSize)
        info.put32(magicOffset, startInfoMagic)
        info.put32(versionOffset, startInfoVersion)
        info.put32(flagsOffset, 0)
        info.put64(commandLineOffset, commandLineAddress)
        info.put64(rsdpOffset, rsdpAddress)
        var modules = ByteImage(count: 0)
        if let initrd {
            modules = ByteImage(count: moduleEntrySize)
            modules.put64(0, initrd.address)
            modules.put64(8, initrd.size)
            info.put32(moduleCountOffset, 1)
            info.put64(moduleListOffset, BootLayout.pvhModuleList)
        }
        let entries = layout.e820.prefix(maxMemoryMapEntries)
        var map = ByteImage(count: entries.count * memoryMapEntrySize)
        for (i, entry) in entries.enumerated() {
            map.put64(i * memoryMapEntrySize, entry.address)
            map.put64(i * memoryMapEntrySize + 8, entry.size)
            map.put32(i * memoryMapEntrySize + 16, entry.type)
        }
        info.put64(memoryMapOffset, BootLayout.pvhMemoryMap)
        info.put32(memoryMapCountOffset, UInt32(entries.count))
        return (info, map, modules)
    }

    /// Where the initrd goes: as high as possible in low RAM (below 4 GiB,
    /// the PCI hole), page-aligned, above the kernel.
    static func initrdAddress(size: UInt64, kernelEnd: UInt64, layout: GuestMemoryLayout, path: String) throws -> UInt64 {
        let limit = layout.lowBytes
        guard size <= limit, (limit - size) & ~0xFFF >= max(kernelEnd, BootLayout.dataEnd) else {
            throw VMMError("\(path): initrd of \(size) bytes does not fit between the kernel (ends 0x\(hex(kernelEnd))) and 0x\(hex(limit))")
        }
        return (limit - size) & ~0xFFF
    }

    static func load(_ file: [UInt8], path: String, commandLine: String, initrd: [UInt8]?, initrdPath: String,
                     memory: GuestMemory) throws -> BootResult {
        let kernel = try parse(file, path: path)
        for segment in kernel.segments {
            try BootLoader.checkPlacement(segment.address, size: segment.memorySize, layout: memory.layout,
                                          path: path, what: "segment")
            try memory.write(file[segment.fileOffset..<(segment.fileOffset + segment.fileSize)],
                             at: segment.address, what: "\(path): segment")
            try memory.fill(0, at: segment.address + UInt64(segment.fileSize),
                            length: segment.memorySize - UInt64(segment.fileSize), what: "\(path): bss")
        }
        let line = try BootLoader.commandLineBytes(commandLine, max: BootLayout.commandLineMax, path: path)
        try memory.write(line, at: BootLayout.commandLine, what: "command line")
        var initrdPlace: (UInt64, UInt64)?
        if let initrd {
            let address = try initrdAddress(size: UInt64(initrd.count), kernelEnd: kernel.end,
                                            layout: memory.layout, path: initrdPath)
            try memory.write(initrd, at: address, what: "\(initrdPath): initrd")
            initrdPlace = (address, UInt64(initrd.count))
        }
        let (info, map, modules) = startInfo(layout: memory.layout, commandLineAddress: BootLayout.commandLine,
                                             initrd: initrdPlace)
        try memory.write(info.bytes, at: BootLayout.pvhStartInfo, what: "hvm_start_info")
        try memory.write(map.bytes, at: BootLayout.pvhMemoryMap, what: "PVH memory map")
        try memory.write(modules.bytes, at: BootLayout.pvhModuleList, what: "PVH module list")
        try memory.write(BootLayout.gdtBytes(longMode: false), at: BootLayout.gdt, what: "GDT")
        // EAX is not part of the ABI; QEMU's option ROM leaves the magic there.
        return BootResult(entry: .protected32(eip: kernel.entry, eax: startInfoMagic, ebx: UInt32(BootLayout.pvhStartInfo)),
                          format: "PVH")
    }
}

/// The parts of an ELF file (ELFCLASS32 or ELFCLASS64, little-endian, x86)
/// a PVH loader reads: program headers and the notes in PT_NOTE segments.
struct ELFFile {
    struct ProgramHeader: Equatable {
        let type: UInt32
        let offset: UInt64
        let paddr: UInt64
        let fileSize: UInt64
        let memorySize: UInt64
    }

    struct Note: Equatable {
        let name: [UInt8]
        let type: UInt32
        let descriptor: [UInt8]
    }

    let is64: Bool
    let programHeaders: [ProgramHeader]
    let notes: [Note]

    init(_ file: [UInt8], path: String) throws {
        let elf = ByteImage(file)
        guard elf.u32(0) == 0x464C_457F else { throw VMMError("\(path): not an ELF file") }
        guard let elfClass = elf.u8(4), elfClass == 1 || elfClass == 2 else { throw VMMError("\(path): unknown ELF class") }
        guard elf.u8(5) == 1 else { throw VMMError("\(path): big-endian ELF") }
        guard let machine = elf.u16(18), machine == 3 || machine == 62 else {
            throw VMMError("\(path): ELF for another machine than x86")
        }
        is64 = elfClass == 2
        let phoff: UInt64?, phentsize: UInt16?, phnum: UInt16?
        if is64 {
            (phoff, phentsize, phnum) = (elf.u64(32), elf.u16(54), elf.u16(56))
        } else {
            (phoff, phentsize, phnum) = (elf.u32(28).map(UInt64.init), elf.u16(42), elf.u16(44))
        }
        guard let phoff, let phentsize, let phnum, Int(phentsize) >= (is64 ? 56 : 32),
              phnum <= PVH.maxProgramHeaders, phoff <= UInt64(file.count) else {
            throw VMMError("\(path): ELF program headers are missing or malformed")
        }
        var headers: [ProgramHeader] = []
        for i in 0..<Int(phnum) {
            let at = Int(phoff) + i * Int(phentsize)
            let header: ProgramHeader?
            if is64 {
                header = elf.u32(at).flatMap { type in
                    guard let offset = elf.u64(at + 8), let paddr = elf.u64(at + 24), let fileSize = elf.u64(at + 32),
                          let memorySize = elf.u64(at + 40) else { return nil }
                    return ProgramHeader(type: type, offset: offset, paddr: paddr, fileSize: fileSize, memorySize: memorySize)
                }
            } else {
                header = elf.u32(at).flatMap { type in
                    guard let offset = elf.u32(at + 4), let paddr = elf.u32(at + 12), let fileSize = elf.u32(at + 16),
                          let memorySize = elf.u32(at + 20) else { return nil }
                    return ProgramHeader(type: type, offset: UInt64(offset), paddr: UInt64(paddr),
                                         fileSize: UInt64(fileSize), memorySize: UInt64(memorySize))
                }
            }
            guard let header else { throw VMMError("\(path): ELF program header \(i) is beyond the end of the file") }
            if header.type == 1 || header.type == 4 {  // PT_LOAD, PT_NOTE: their bytes must be in the file
                let (end, overflow) = header.offset.addingReportingOverflow(header.fileSize)
                guard !overflow, end <= UInt64(file.count) else {
                    throw VMMError("\(path): ELF segment \(i) lies outside the file")
                }
            }
            if header.type == 1 {
                let (_, overflow) = header.paddr.addingReportingOverflow(header.memorySize)
                guard header.fileSize <= header.memorySize, !overflow else {
                    throw VMMError("\(path): ELF segment \(i) has a malformed size or address")
                }
            }
            headers.append(header)
        }
        programHeaders = headers
        var notes: [Note] = []
        for header in headers where header.type == 4 {
            var at = Int(header.offset)
            let end = Int(header.offset + header.fileSize)
            while at + 12 <= end, notes.count < PVH.maxNotes {
                guard let nameSize = elf.u32(at), let descSize = elf.u32(at + 4), let type = elf.u32(at + 8) else { break }
                let nameStart = at + 12
                let (nameLength, descLength) = (Int(nameSize), Int(descSize))
                let descStart = nameStart + ((nameLength + 3) & ~3)
                let next = descStart + ((descLength + 3) & ~3)
                guard nameLength <= end - nameStart, descStart <= end, descLength <= end - descStart, next > at else { break }
                notes.append(Note(name: Array(file[nameStart..<(nameStart + nameLength)]), type: type,
                                  descriptor: Array(file[descStart..<(descStart + descLength)])))
                at = next
            }
        }
        self.notes = notes
    }

    /// XEN_ELFNOTE_PHYS32_ENTRY: a 32-bit physical address; Linux stores it
    /// as a pointer-sized value (8 bytes in a 64-bit kernel).
    var pvhEntry: UInt32? {
        for note in notes where note.type == PVH.noteType && note.name == Array("Xen".utf8) + [0] {
            let value = ByteImage(note.descriptor)
            if note.descriptor.count >= 8, let v = value.u64(0), v <= UInt64(UInt32.max) { return UInt32(v) }
            if note.descriptor.count == 4, let v = value.u32(0) { return v }
        }
        return nil
    }
}
