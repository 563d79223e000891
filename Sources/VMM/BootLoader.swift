import VMDSystem
import Glibc
/// How the boot vCPU starts.
public enum BootEntry: Equatable {
    /// Multiboot: 32-bit protected mode, paging off, flat segments.
    case protected32(eip: UInt32, eax: UInt32, ebx: UInt32)
    /// Linux 64-bit boot protocol: long mode, identity-mapped, RSI = zero page.
    case long64(rip: UInt64, rsi: UInt64, rsp: UInt64, cr3: UInt64)
    /// A BIOS: KVM's reset state (real mode, F000:FFF0), nothing to set.
    case firmware
}

/// What a boot loader leaves for the VM: the entry and a description.
public struct BootResult: Equatable {
    public let entry: BootEntry
    public let format: String
    /// A BIOS image to map below 4 GiB (`BIOS`); nil for a kernel.
    public var firmware: [UInt8]? = nil
}

/// How to boot a kernel file: by what it carries (`automatic`: bzImage, then
/// a PVH note, then a Multiboot header), or one protocol forced.
public enum BootProtocol: String, CaseIterable, Sendable {
    case automatic = "auto", linux, pvh, multiboot
}

/// Kernel format detection from the file's bytes.
enum KernelFormat: Equatable {
    case multiboot
    case bzImage
    case bios
    case pvh

    static func detect(_ file: [UInt8], path: String, forced: BootProtocol = .automatic) throws -> KernelFormat {
        let isBzImage = ByteImage(file).u32(0x202) == LinuxBoot.headerMagic
        switch forced {
        case .automatic: break
        case .linux: return .bzImage     // LinuxBoot.parse explains what is missing
        case .pvh: return .pvh           // PVH.parse explains what is missing
        case .multiboot: return .multiboot
        }
        if isBzImage { return .bzImage }
        if PVH.findEntry(file) != nil { return .pvh }
        if Multiboot.findHeader(file) != nil { return .multiboot }
        if BIOS.looksLikeBIOS(file) { return .bios }
        throw VMMError("\(path): not a kernel or BIOS this VMM can boot (no bzImage \"HdrS\" magic at 0x202, no PVH ELF note, no Multiboot header in the first 8 KiB, not a 64 KiB-multiple BIOS image with a far jump at its reset vector)")
    }
}

/// A file to boot: where to open it and what to call it in messages.
struct BootFile {
    let path: String
    let name: String

    init(path: String, name: String? = nil) {
        self.path = path
        self.name = name ?? path
    }
}

/// Reads a whole regular file (a kernel or initrd), capped at `limit`
/// bytes; messages call it `name`.
func readBootFile(_ path: String, name: String, limit: Int) throws -> [UInt8] {
    let fd = try FD.open(path, flags: O_RDONLY, what: name)
    defer { FD.close(fd) }
    var info = stat()
    try sys(name) { fstat(fd, &info) }
    if (info.st_mode & S_IFMT) != S_IFREG { throw VMMError("\(name): not a regular file") }
    if info.st_size > limit { throw VMMError("\(name): \(info.st_size) bytes, more than the \(limit) this VM can hold") }
    let size = Int(info.st_size)
    var bytes = [UInt8](repeating: 0, count: size)
    var done = 0
    while done < size {
        let n = try bytes.withUnsafeMutableBytes {
            try FileIO.read(fd, into: $0.baseAddress! + done, count: size - done, at: UInt64(done))
        }
        if n == 0 { throw VMMError("\(name): file shrank while being read") }
        done += n
    }
    return bytes
}

enum BootLoader {
    /// Loads the kernel (and initrd) into memory; returns the entry.
    static func load(kernel: BootFile, commandLine: String, initrd: BootFile?,
                     memory: GuestMemory, protocol forced: BootProtocol = .automatic) throws -> BootResult {
        let limit = Int(min(memory.layout.lowBytes, 1 << 31))
        let file = try readBootFile(kernel.path, name: kernel.name, limit: limit)
        switch try KernelFormat.detect(file, path: kernel.name, forced: forced) {
        case .pvh:
            let initrdBytes = try initrd.map { try readBootFile($0.path, name: $0.name, limit: limit) }
            return try PVH.load(file, path: kernel.name, commandLine: commandLine,
                                initrd: initrdBytes, initrdPath: initrd?.name ?? "", memory: memory)
        case .multiboot:
            if initrd != nil { throw VMMError("\(kernel.name): initrd is supported for Linux kernels only, not Multiboot") }
            return try Multiboot.load(file, path: kernel.name, commandLine: commandLine, memory: memory)
        case .bzImage:
            let initrdBytes = try initrd.map { try readBootFile($0.path, name: $0.name, limit: limit) }
            return try LinuxBoot.load(file, path: kernel.name, commandLine: commandLine,
                                      initrd: initrdBytes, initrdPath: initrd?.name ?? "", memory: memory)
        case .bios:
            if initrd != nil { throw VMMError("\(kernel.name): a BIOS takes no initrd") }
            return try BIOS.load(file, path: kernel.name, memory: memory)
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
