/// Linux x86 boot protocol (Documentation/arch/x86/boot.rst), version 2.06 or
/// later, entered at the 64-bit entry point as Firecracker and crosvm do: the
/// protected-mode kernel at 1 MiB, a zero page (boot_params) with the setup
/// header copied from the image, an e820 map, the command line and an initrd;
/// long mode with the first 4 GiB identity-mapped in 2 MiB pages, a GDT with
/// flat __BOOT_CS (0x10) and __BOOT_DS (0x18), RIP = 1 MiB + 0x200,
/// RSI = zero page.
enum LinuxBoot {
    static let headerMagic: UInt32 = 0x5372_6448  // "HdrS"
    static let minimumVersion: UInt16 = 0x0206
    static let kernelAddress: UInt64 = 0x10_0000
    static let entryOffset: UInt64 = 0x200  // startup_64 relative to the load address

    // Zero page (struct boot_params) offsets.
    static let e820Count = 0x1E8, e820Table = 0x2D0, e820Max = 128
    static let setupSects = 0x1F1, bootFlag = 0x1FE, jump = 0x200, header = 0x202, version = 0x206
    static let typeOfLoader = 0x210, loadFlags = 0x211, code32Start = 0x214
    static let ramdiskImage = 0x218, ramdiskSize = 0x21C, commandLinePointer = 0x228
    static let initrdAddressMax = 0x22C, commandLineSize = 0x238, xloadFlags = 0x236
    static let initSize = 0x260
    static let loadedHigh: UInt8 = 0x01, xlfKernel64: UInt16 = 0x0001

    struct Image: Equatable {
        let version: UInt16
        let setupBytes: Int         // real-mode part, skipped
        let headerEnd: Int          // the setup header spans 0x1F1..<headerEnd
        let initrdAddressMax: UInt32
        let commandLineSize: Int
        let initSize: UInt64        // memory the kernel needs from its load address
    }

    static func parse(_ file: [UInt8], path: String) throws -> Image {
        let image = ByteImage(file)
        guard image.u32(header) == headerMagic, let version = image.u16(version) else {
            throw VMMError("\(path): no bzImage \"HdrS\" magic at 0x202")
        }
        guard version >= minimumVersion else {
            throw VMMError("\(path): Linux boot protocol \(version >> 8).\(String(format2: version & 0xFF)) is older than 2.06")
        }
        guard let loadFlags = image.u8(loadFlags), loadFlags & loadedHigh != 0 else {
            throw VMMError("\(path): not a bzImage (zImage kernels that load low are not supported)")
        }
        if version >= 0x020C, let xflags = image.u16(xloadFlags), xflags & xlfKernel64 == 0 {
            throw VMMError("\(path): kernel has no 64-bit entry point (XLF_KERNEL_64 clear)")
        }
        var sects = Int(image.u8(setupSects) ?? 0)
        if sects == 0 { sects = 4 }
        let setupBytes = (sects + 1) * 512
        guard setupBytes < file.count else { throw VMMError("\(path): bzImage is shorter than its setup code") }
        let headerEnd = min(jump + 2 + Int(image.u8(jump + 1) ?? 0), setupBytes, 0x1000)
        let payload = UInt64(file.count - setupBytes)
        let initSize = version >= 0x020A ? max(UInt64(image.u32(initSize) ?? 0), payload) : payload
        return Image(version: version, setupBytes: setupBytes, headerEnd: headerEnd,
                     initrdAddressMax: image.u32(initrdAddressMax) ?? 0x37FF_FFFF,
                     commandLineSize: Int(image.u32(commandLineSize) ?? 255),
                     initSize: initSize)
    }

    /// The zero page for `file`, given where the command line and initrd went.
    static func zeroPage(_ file: [UInt8], image: Image, layout: GuestMemoryLayout,
                         commandLineAddress: UInt32, initrd: (address: UInt32, size: UInt32)?) -> ByteImage {
        var page = ByteImage(count: 4096)
        page.putBytes(setupSects, Array(file[setupSects..<image.headerEnd]))
        page.put8(typeOfLoader, 0xFF)  // undefined loader
        page.put32(code32Start, UInt32(kernelAddress))
        page.put32(commandLinePointer, commandLineAddress)
        page.put32(ramdiskImage, initrd?.address ?? 0)
        page.put32(ramdiskSize, initrd?.size ?? 0)
        let entries = layout.e820.prefix(e820Max)
        page.put8(e820Count, UInt8(entries.count))
        for (i, entry) in entries.enumerated() {
            page.put64(e820Table + i * 20, entry.address)
            page.put64(e820Table + i * 20 + 8, entry.size)
            page.put32(e820Table + i * 20 + 16, entry.type)
        }
        return page
    }

    /// Where the initrd goes: as high as the kernel allows, page-aligned, below
    /// the PCI hole and above the kernel's init_size.
    static func initrdAddress(size: UInt64, image: Image, layout: GuestMemoryLayout, path: String) throws -> UInt64 {
        let limit = min(UInt64(image.initrdAddressMax) + 1, layout.lowBytes)
        let kernelEnd = kernelAddress + image.initSize
        guard size <= limit, (limit - size) & ~0xFFF >= kernelEnd else {
            throw VMMError("\(path): initrd of \(size) bytes does not fit between the kernel (ends 0x\(hex(kernelEnd))) and 0x\(hex(limit))")
        }
        return (limit - size) & ~0xFFF
    }

    /// The identity map for the first 4 GiB: PML4 -> PDPT -> 4 page directories of 2 MiB pages.
    static func pageTables() -> ByteImage {
        let size = Int(BootLayout.pageDirectories - BootLayout.pml4) + 4 * 4096
        var tables = ByteImage(count: size)
        let present: UInt64 = 0x3, large: UInt64 = 0x80  // present | writable, PS
        tables.put64(0, BootLayout.pdpt | present)
        for gib in 0..<4 {
            let directory = BootLayout.pageDirectories + UInt64(gib) * 4096
            tables.put64(Int(BootLayout.pdpt - BootLayout.pml4) + gib * 8, directory | present)
            for entry in 0..<512 {
                let physical = (UInt64(gib) << 30) | (UInt64(entry) << 21)
                tables.put64(Int(directory - BootLayout.pml4) + entry * 8, physical | present | large)
            }
        }
        return tables
    }

    static func load(_ file: [UInt8], path: String, commandLine: String, initrd: [UInt8]?, initrdPath: String,
                     memory: GuestMemory) throws -> BootResult {
        let image = try parse(file, path: path)
        let layout = memory.layout
        try BootLoader.checkPlacement(kernelAddress, size: image.initSize, layout: layout, path: path, what: "kernel")
        try memory.write(file[image.setupBytes...], at: kernelAddress, what: "\(path): kernel")

        let line = try BootLoader.commandLineBytes(commandLine, max: min(image.commandLineSize + 1, BootLayout.commandLineMax),
                                                   path: path)
        try memory.write(line, at: BootLayout.commandLine, what: "command line")

        var initrdPlace: (UInt32, UInt32)?
        if let initrd {
            let address = try initrdAddress(size: UInt64(initrd.count), image: image, layout: layout, path: initrdPath)
            try memory.write(initrd, at: address, what: "\(initrdPath): initrd")
            initrdPlace = (UInt32(address), UInt32(initrd.count))
        }
        let page = zeroPage(file, image: image, layout: layout, commandLineAddress: UInt32(BootLayout.commandLine),
                            initrd: initrdPlace)
        try memory.write(page.bytes, at: BootLayout.zeroPage, what: "zero page")
        try memory.write(pageTables().bytes, at: BootLayout.pml4, what: "page tables")
        try memory.write(BootLayout.gdtBytes(longMode: true), at: BootLayout.gdt, what: "GDT")
        try memory.fill(0, at: BootLayout.idt, length: 8, what: "IDT")
        return BootResult(entry: .long64(rip: kernelAddress + entryOffset, rsi: BootLayout.zeroPage,
                                         rsp: BootLayout.stackTop, cr3: BootLayout.pml4),
                          format: "Linux bzImage, boot protocol \(image.version >> 8).\(String(format2: image.version & 0xFF))")
    }
}

extension String {
    /// Two decimal digits (boot protocol minor versions: 2.06, 2.15).
    init(format2 value: UInt16) {
        self = value < 10 ? "0\(value)" : "\(value)"
    }
}
