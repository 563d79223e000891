/// Where the boot paths put their data in low guest memory (one table for
/// both paths, so nothing can collide). Kernels may not load below `dataEnd`.
enum BootLayout {
    static let gdt: UInt64 = 0x500            // 4 descriptors (null, null, code 0x10, data 0x18)
    static let idt: UInt64 = 0x520            // empty IDT for the Linux 64-bit entry
    static let zeroPage: UInt64 = 0x7000      // Linux boot_params
    static let multibootInfo: UInt64 = 0x7000 // Multiboot information structure
    static let multibootMemoryMap: UInt64 = 0x7100
    static let multibootLoaderName: UInt64 = 0x7400
    static let pvhStartInfo: UInt64 = 0x7000  // PVH hvm_start_info (56 bytes)
    static let pvhMemoryMap: UInt64 = 0x7100  // PVH memory map, up to 74 entries
    static let pvhModuleList: UInt64 = 0x7800 // PVH module list (the initrd)
    static let stackTop: UInt64 = 0x8FF0      // Linux boot stack (0x8000-0x8FFF)
    static let pml4: UInt64 = 0x9000          // Linux identity map: PML4, PDPT, 4 PDs
    static let pdpt: UInt64 = 0xA000
    static let pageDirectories: UInt64 = 0xB000  // 4 pages: 4 GiB in 2 MiB pages
    static let commandLine: UInt64 = 0x20000
    static let commandLineMax = 4096          // bytes including the terminating NUL
    static let dataEnd: UInt64 = 0x30000
    static let mpTable: UInt64 = 0xF0000      // BIOS area: every MP scanner looks here
    static let acpiRSDP: UInt64 = 0xE0000     // BIOS area: every RSDP scanner looks here
    static let acpiTables: UInt64 = 0xE0040   // the other ACPI tables, up to the MP table
    static let acpiEnd: UInt64 = 0xF0000
    static let codeSelector: UInt16 = 0x10, dataSelector: UInt16 = 0x18

    /// The GDT both paths load: null, null, flat code at 0x10, flat data at 0x18.
    /// `longMode` picks a 64-bit (L) or 32-bit (D) code segment.
    static func gdtBytes(longMode: Bool) -> [UInt8] {
        var image = ByteImage(count: 32)
        image.put64(16, longMode ? 0x00AF_9B00_0000_FFFF : 0x00CF_9B00_0000_FFFF)
        image.put64(24, 0x00CF_9300_0000_FFFF)
        return image.bytes
    }
}
