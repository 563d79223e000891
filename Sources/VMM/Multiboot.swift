/// Multiboot v1 (the Multiboot Specification 0.6.96): ELF32 kernels, or any
/// file with the a.out kludge (header flag 16). The kernel is entered in 32-bit
/// protected mode with paging off, flat 4 GiB code and data segments,
/// EAX = 0x2BADB002 and EBX = the physical address of the information structure.
enum Multiboot {
    static let headerMagic: UInt32 = 0x1BAD_B002
    static let bootloaderMagic: UInt32 = 0x2BAD_B002
    static let searchLength = 8192

    // Header flags.
    static let flagPageAlignModules: UInt32 = 1 << 0
    static let flagMemoryInfo: UInt32 = 1 << 1
    static let flagVideoMode: UInt32 = 1 << 2
    static let flagAoutKludge: UInt32 = 1 << 16

    // Information structure flags.
    static let infoMemory: UInt32 = 1 << 0
    static let infoCommandLine: UInt32 = 1 << 2
    static let infoMemoryMap: UInt32 = 1 << 6
    static let infoLoaderName: UInt32 = 1 << 9
    static let infoSize = 88

    struct Header: Equatable {
        let offset: Int
        let flags: UInt32
        // a.out kludge fields, valid when flags has bit 16.
        let headerAddress: UInt32, loadAddress: UInt32, loadEndAddress: UInt32
        let bssEndAddress: UInt32, entryAddress: UInt32
    }

    struct Segment: Equatable {
        let fileOffset: Int
        let fileSize: Int
        let address: UInt64
        let memorySize: UInt64
    }

    /// The header: 4-byte aligned in the first 8 KiB, magic + flags + checksum == 0.
    static func findHeader(_ file: [UInt8]) -> Header? {
        let image = ByteImage(file)
        var at = 0
        while at + 12 <= min(file.count, searchLength) {
            if image.u32(at) == headerMagic, let flags = image.u32(at + 4), let checksum = image.u32(at + 8),
               headerMagic &+ flags &+ checksum == 0 {
                return Header(offset: at, flags: flags,
                              headerAddress: image.u32(at + 12) ?? 0, loadAddress: image.u32(at + 16) ?? 0,
                              loadEndAddress: image.u32(at + 20) ?? 0, bssEndAddress: image.u32(at + 24) ?? 0,
                              entryAddress: image.u32(at + 28) ?? 0)
            }
            at += 4
        }
        return nil
    }

    /// Which bytes of the file go where, and the entry point.
    static func plan(_ file: [UInt8], header: Header, path: String) throws -> (segments: [Segment], entry: UInt32) {
        // Bits 0-15 are requirements: refuse what this loader does not do.
        let known = flagPageAlignModules | flagMemoryInfo | flagVideoMode
        if header.flags & 0xFFFF & ~known != 0 {
            throw VMMError("\(path): Multiboot header asks for unsupported features (flags 0x\(hex(header.flags)))")
        }
        if header.flags & flagAoutKludge != 0 { return try planAout(file, header: header, path: path) }
        return try ELF32.loadPlan(file, path: path)
    }

    private static func planAout(_ file: [UInt8], header h: Header, path: String) throws -> ([Segment], UInt32) {
        guard h.headerAddress >= h.loadAddress, UInt64(h.headerAddress - h.loadAddress) <= UInt64(h.offset) else {
            throw VMMError("\(path): Multiboot a.out header: header_addr 0x\(hex(h.headerAddress)) is not inside the loaded image")
        }
        let fileOffset = h.offset - Int(h.headerAddress - h.loadAddress)
        let fileSize: Int
        if h.loadEndAddress == 0 {
            fileSize = file.count - fileOffset
        } else {
            guard h.loadEndAddress >= h.loadAddress, Int(h.loadEndAddress - h.loadAddress) <= file.count - fileOffset else {
                throw VMMError("\(path): Multiboot a.out header: load_end_addr 0x\(hex(h.loadEndAddress)) is beyond the file")
            }
            fileSize = Int(h.loadEndAddress - h.loadAddress)
        }
        var memorySize = UInt64(fileSize)
        if h.bssEndAddress != 0 {
            let loadEnd = UInt64(h.loadAddress) + UInt64(fileSize)
            guard UInt64(h.bssEndAddress) >= loadEnd else {
                throw VMMError("\(path): Multiboot a.out header: bss_end_addr 0x\(hex(h.bssEndAddress)) is below the loaded image")
            }
            memorySize = UInt64(h.bssEndAddress) - UInt64(h.loadAddress)
        }
        return ([Segment(fileOffset: fileOffset, fileSize: fileSize, address: UInt64(h.loadAddress), memorySize: memorySize)],
                h.entryAddress)
    }

    /// The Multiboot information structure at `BootLayout.multibootInfo`, with
    /// the memory map after it; returns (info, memory map).
    static func information(layout: GuestMemoryLayout, commandLineAddress: UInt32,
                            loaderNameAddress: UInt32, memoryMapAddress: UInt32) -> (info: ByteImage, memoryMap: ByteImage) {
        var map = ByteImage(count: 0)
        for (i, entry) in layout.e820.enumerated() {
            let at = i * 24
            map.put32(at, 20)  // size of the rest of the entry
            map.put64(at + 4, entry.address)
            map.put64(at + 12, entry.size)
            map.put32(at + 20, entry.type)
        }
        var info = ByteImage(count: infoSize)
        info.put32(0, infoMemory | infoCommandLine | infoMemoryMap | infoLoaderName)
        info.put32(4, UInt32(GuestMemoryLayout.ebdaStart / 1024))                     // mem_lower, KiB
        info.put32(8, UInt32(clamping: (layout.lowBytes - GuestMemoryLayout.highMemoryBase) / 1024))  // mem_upper
        info.put32(16, commandLineAddress)
        info.put32(44, UInt32(map.count))  // mmap_length
        info.put32(48, memoryMapAddress)   // mmap_addr
        info.put32(64, loaderNameAddress)
        return (info, map)
    }

    static func load(_ file: [UInt8], path: String, commandLine: String, memory: GuestMemory) throws -> BootResult {
        guard let header = findHeader(file) else { throw VMMError("\(path): no Multiboot header in the first 8 KiB") }
        let (segments, entry) = try plan(file, header: header, path: path)
        var entryInside = false
        for segment in segments {
            try BootLoader.checkPlacement(segment.address, size: segment.memorySize, layout: memory.layout,
                                          path: path, what: "segment")
            try memory.write(file[segment.fileOffset..<(segment.fileOffset + segment.fileSize)],
                             at: segment.address, what: "\(path): segment")
            let bss = segment.memorySize - UInt64(segment.fileSize)
            try memory.fill(0, at: segment.address + UInt64(segment.fileSize), length: bss, what: "\(path): bss")
            if UInt64(entry) >= segment.address && UInt64(entry) < segment.address + segment.memorySize { entryInside = true }
        }
        guard entryInside else { throw VMMError("\(path): Multiboot entry 0x\(hex(entry)) is not inside a loaded segment") }

        // QEMU and GRUB pass the kernel's name first, then the arguments.
        let line = commandLine.isEmpty ? path : path + " " + commandLine
        let lineBytes = try BootLoader.commandLineBytes(line, max: BootLayout.commandLineMax, path: path)
        try memory.write(lineBytes, at: BootLayout.commandLine, what: "command line")
        try memory.write(Array("vmd".utf8) + [0], at: BootLayout.multibootLoaderName, what: "loader name")
        let (info, map) = information(layout: memory.layout,
                                      commandLineAddress: UInt32(BootLayout.commandLine),
                                      loaderNameAddress: UInt32(BootLayout.multibootLoaderName),
                                      memoryMapAddress: UInt32(BootLayout.multibootMemoryMap))
        try memory.write(info.bytes, at: BootLayout.multibootInfo, what: "Multiboot information")
        try memory.write(map.bytes, at: BootLayout.multibootMemoryMap, what: "Multiboot memory map")
        try memory.write(BootLayout.gdtBytes(longMode: false), at: BootLayout.gdt, what: "GDT")
        return BootResult(entry: .protected32(eip: entry, eax: bootloaderMagic, ebx: UInt32(BootLayout.multibootInfo)),
                          format: "Multiboot")
    }
}

/// ELF32 program headers, as a Multiboot loader reads them. Segments load at
/// their physical address (p_paddr); a virtual entry point is translated
/// through the segment that holds it, as QEMU does.
enum ELF32 {
    static let maxProgramHeaders = 64

    static func loadPlan(_ file: [UInt8], path: String) throws -> ([Multiboot.Segment], UInt32) {
        let elf = ByteImage(file)
        guard elf.u32(0) == 0x464C_457F else {
            throw VMMError("\(path): Multiboot kernel is not ELF and has no a.out kludge (header flag 16)")
        }
        guard elf.u8(4) == 1 else { throw VMMError("\(path): ELF64 file: Multiboot v1 loads ELF32 only (objcopy -O elf32-i386)") }
        guard elf.u8(5) == 1 else { throw VMMError("\(path): big-endian ELF") }
        guard let machine = elf.u16(18), machine == 3 || machine == 62 else { throw VMMError("\(path): ELF for another machine than x86") }
        guard let entry = elf.u32(24), let phoff = elf.u32(28), let phentsize = elf.u16(42), let phnum = elf.u16(44),
              phentsize >= 32, phnum <= maxProgramHeaders else {
            throw VMMError("\(path): ELF program headers are missing or malformed")
        }
        var segments: [Multiboot.Segment] = []
        var physicalEntry: UInt32?
        for i in 0..<Int(phnum) {
            let at = Int(phoff) + i * Int(phentsize)
            guard let type = elf.u32(at), let offset = elf.u32(at + 4), let vaddr = elf.u32(at + 8),
                  let paddr = elf.u32(at + 12), let fileSize = elf.u32(at + 16), let memorySize = elf.u32(at + 20) else {
                throw VMMError("\(path): ELF program header \(i) is beyond the end of the file")
            }
            guard type == 1 else { continue }  // PT_LOAD
            guard fileSize <= memorySize, UInt64(offset) + UInt64(fileSize) <= UInt64(file.count) else {
                throw VMMError("\(path): ELF segment \(i) lies outside the file")
            }
            segments.append(Multiboot.Segment(fileOffset: Int(offset), fileSize: Int(fileSize),
                                              address: UInt64(paddr), memorySize: UInt64(memorySize)))
            if physicalEntry == nil, entry >= vaddr, UInt64(entry) < UInt64(vaddr) + UInt64(memorySize) {
                physicalEntry = paddr &+ (entry - vaddr)
            }
        }
        guard !segments.isEmpty else { throw VMMError("\(path): ELF file has no loadable segment") }
        return (segments, physicalEntry ?? entry)
    }
}
