/// Where the boot paths put their data in low guest memory (one table for
/// both paths, so nothing can collide). Kernels may not load below `dataEnd`.
enum BootLayout {
    static let gdt: UInt64 = 0x500            // 4 descriptors (null, null, code 0x10, data 0x18)
    static let idt: UInt64 = 0x520            // empty IDT for the Linux 64-bit entry
    static let zeroPage: UInt64 = 0x7000      // Linux boot_params
    static let multibootInfo: UInt64 = 0x7000 // Multiboot information structure
    static let multibootMemoryMap: UInt64 = 0x7100
    static let multibootLoaderName: UInt64 = 0x7400
    static let stackTop: UInt64 = 0x8FF0      // Linux boot stack (0x8000-0x8FFF)
    static let pml4: UInt64 = 0x9000          // Linux identity map: PML4, PDPT, 4 PDs
    static let pdpt: UInt64 = 0xA000
    static let pageDirectories: UInt64 = 0xB000  // 4 pages: 4 GiB in 2 MiB pages
    static let commandLine: UInt64 = 0x20000
    static let commandLineMax = 4096          // bytes including the terminating NUL
    static let dataEnd: UInt64 = 0x30000
    static let mpTable: UInt64 = 0xF0000      // BIOS area: every MP scanner looks here
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

/// How the boot vCPU starts.
public enum BootEntry: Equatable {
    /// Multiboot: 32-bit protected mode, paging off, flat segments.
    case protected32(eip: UInt32, eax: UInt32, ebx: UInt32)
    /// Linux 64-bit boot protocol: long mode, identity-mapped, RSI = zero page.
    case long64(rip: UInt64, rsi: UInt64, rsp: UInt64, cr3: UInt64)
}

/// What a boot loader leaves for the VM: the entry and a description.
public struct BootResult: Equatable {
    public let entry: BootEntry
    public let format: String
}

/// Kernel format detection from the file's bytes.
enum KernelFormat: Equatable {
    case multiboot
    case bzImage

    static func detect(_ file: [UInt8], path: String) throws -> KernelFormat {
        if Multiboot.findHeader(file) != nil { return .multiboot }
        if ByteImage(file).u32(0x202) == LinuxBoot.headerMagic { return .bzImage }
        throw VMMError("\(path): not a kernel this VMM can boot (no Multiboot header in the first 8 KiB, no bzImage \"HdrS\" magic at 0x202)")
    }
}

enum BootLoader {
    /// Loads the kernel (and initrd) at `path` into memory; returns the entry.
    static func load(kernelPath: String, commandLine: String, initrdPath: String?,
                     memory: GuestMemory) throws -> BootResult {
        let limit = Int(min(memory.layout.lowBytes, 1 << 31))
        let file = try System.readFile(kernelPath, limit: limit)
        switch try KernelFormat.detect(file, path: kernelPath) {
        case .multiboot:
            if initrdPath != nil { throw VMMError("\(kernelPath): initrd is supported for Linux kernels only, not Multiboot") }
            return try Multiboot.load(file, path: kernelPath, commandLine: commandLine, memory: memory)
        case .bzImage:
            let initrd = try initrdPath.map { try System.readFile($0, limit: limit) }
            return try LinuxBoot.load(file, path: kernelPath, commandLine: commandLine,
                                      initrd: initrd, initrdPath: initrdPath ?? "", memory: memory)
        }
    }

    /// Checks that [address, address + size) lies in e820 RAM and above the boot data.
    static func checkPlacement(_ address: UInt64, size: UInt64, layout: GuestMemoryLayout,
                               path: String, what: String) throws {
        let (end, overflow) = address.addingReportingOverflow(size)
        let inRAM = !overflow && layout.e820.contains {
            $0.type == E820Entry.ram && address >= $0.address && end <= $0.address + $0.size
        }
        guard inRAM, address >= BootLayout.dataEnd || size == 0 else {
            throw VMMError("\(path): \(what) at 0x\(hex(address)) (\(size) bytes) does not fit in guest RAM (\(layout.lowBytes >> 20) MiB below the PCI hole, loads from 0x\(hex(BootLayout.dataEnd)))")
        }
    }

    /// The command line as stored in guest memory, NUL-terminated, size-checked.
    static func commandLineBytes(_ commandLine: String, max: Int, path: String) throws -> [UInt8] {
        let bytes = Array(commandLine.utf8) + [0]
        guard bytes.count <= max else {
            throw VMMError("\(path): command line of \(bytes.count - 1) bytes is longer than \(max - 1)")
        }
        return bytes
    }
}
