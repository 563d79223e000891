import CKVM
import Glibc
import VMDSystem

/// Booting a PC BIOS image (SeaBIOS's bios-256k.bin) as on a PC:
///
/// - The image is mapped at the top of the 32-bit space (4 GiB - size), in a
///   read-only KVM memory slot where KVM offers one (guest writes exit as MMIO
///   and are dropped), so the reset vector at 0xFFFFFFF0 is the BIOS's.
/// - Its last 256 KiB (all of it if smaller) are also copied into RAM below
///   1 MiB (0xC0000-0xFFFFF for 256 KiB), the shadow RAM a chipset would
///   unlock: SeaBIOS runs from there and keeps its data there. We have no
///   PAM registers, so SeaBIOS's "unlock" finds nothing to do and its copy
///   is already in place.
/// - The boot vCPU starts in KVM's reset state (real mode, F000:FFF0).
/// - fw_cfg carries the rest (see `FwCfg`, `BIOS.configure`).
enum BIOS {
    static let minimumSize = 64 << 10
    static let maximumSize = 16 << 20
    static let shadowSize = 256 << 10
    static let romSlot: UInt32 = 8
    /// SeaBIOS's `etc/boot-fail-wait`: -1 = never reboot after "No bootable device".
    static let bootFailWait: UInt32 = 0xFFFF_FFFF

    /// A BIOS image: 64 KiB to 16 MiB in whole 64 KiB, a far jump at the reset vector.
    static func looksLikeBIOS(_ file: [UInt8]) -> Bool {
        file.count >= minimumSize && file.count <= maximumSize && file.count % (64 << 10) == 0
            && file[file.count - 16] == 0xEA
    }

    static func load(_ file: [UInt8], path: String, memory: GuestMemory) throws -> BootResult {
        guard looksLikeBIOS(file) else { throw VMMError("\(path): not a BIOS image") }
        let shadow = file.suffix(min(file.count, shadowSize))
        try memory.write(shadow, at: 0x10_0000 - UInt64(shadow.count), what: "\(path): BIOS shadow copy")
        return BootResult(entry: .firmware, format: "BIOS", firmware: file)
    }

    /// The host copy of the ROM mapped at 4 GiB - size.
    final class ROM {
        let host: UnsafeMutableRawPointer
        let size: Int
        let readOnly: Bool
        var guestPhysical: UInt64 { (1 << 32) - UInt64(size) }

        init(_ image: [UInt8], vmFD: Int32) throws {
            size = image.count
            guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
                throw SystemError("mmap BIOS ROM", code: errno)
            }
            host = p
            let count = image.count
            image.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: count) }
            readOnly = ckvm_readonly_memory_supported(vmFD) != 0
            let e = ckvm_set_readonly_memory_region(vmFD, BIOS.romSlot, (1 << 32) - UInt64(size), UInt64(size), host, readOnly ? 1 : 0)
            if e != 0 {
                munmap(host, size)
                throw SystemError("KVM_SET_USER_MEMORY_REGION (BIOS ROM)", code: e)
            }
        }

        deinit { munmap(host, size) }
    }

    /// The fw_cfg files SeaBIOS reads (docs/specs/fw_cfg.rst, SeaBIOS
    /// fw/paravirt.c, boot.c): e820 (all RAM; SeaBIOS reserves what it uses),
    /// boot-fail-wait, sercon-port (COM1: its screen output and GRUB's go to
    /// the console), the ACPI tables and their loader script. `bootorder`
    /// comes later, once the PCI slots are known (`setBootOrder`).
    static func configure(_ fwcfg: FwCfg, layout: GuestMemoryLayout, acpi: ACPITables) {
        var e820: [UInt8] = []
        for region in layout.regions {
            e820 += le64(region.guestPhysical) + le64(region.size) + le32(E820Entry.ram)
        }
        fwcfg.setFile("etc/e820", e820)
        fwcfg.setFile("etc/boot-fail-wait", le32(bootFailWait))
        fwcfg.setFile("etc/sercon-port", le16(0x3F8))
        fwcfg.setFile(ACPITables.rsdpFile, acpi.rsdp)
        fwcfg.setFile(ACPITables.tablesFile, acpi.tables)
        fwcfg.setFile(ACPITables.loaderFile, acpi.loaderScript)
    }

    /// OpenFirmware paths SeaBIOS matches (boot.c: `/pci@i0cf8/*@slot` for
    /// virtio-blk, `/pci@i0cf8/*@slot/*@0/*@target,lun` for SCSI), as QEMU writes them.
    static func bootPath(slot: Int, scsi: Bool) -> String {
        scsi ? "/pci@i0cf8/scsi@\(hex(slot))/channel@0/disk@0,0" : "/pci@i0cf8/scsi@\(hex(slot))/disk@0,0"
    }

    /// QEMU's `bootorder` file: one path a line, NUL-terminated.
    static func bootOrder(_ paths: [String]) -> [UInt8] {
        Array(paths.joined(separator: "\n").utf8) + [0]
    }
}

func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

/// QEMU's debug console port 0x402, where SeaBIOS writes its debug log:
/// whole lines go to the VM's log as `bios: ...` (at most `limit` lines, so
/// a chatty or hostile guest cannot flood it).
final class DebugConsolePort: BusDevice {
    static let port: UInt64 = 0x402
    private let lock = Mutex()
    private var line: [UInt8] = []
    private var lines = 0
    private let limit = 500
    private let log: (String) -> Void

    init(log: @escaping (String) -> Void) { self.log = log }

    func read(offset: UInt64, size: Int) -> UInt64 { 0xE9 }  // QEMU's debugcon reads back 0xe9

    func write(offset: UInt64, size: Int, value: UInt64) {
        let byte = UInt8(truncatingIfNeeded: value)
        let done: String? = lock.locked {
            guard lines < limit else { return nil }
            if byte != 0x0A && line.count < 512 {
                if byte >= 0x20 && byte < 0x7F { line.append(byte) }
                return nil
            }
            defer { line.removeAll(keepingCapacity: true) }
            lines += 1
            return lines == limit ? "bios: debug log limit reached" : "bios: " + String(decoding: line, as: UTF8.self)
        }
        if let done { log(done) }
    }
}
