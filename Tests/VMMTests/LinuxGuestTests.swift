import Foundation
import XCTest
@testable import VMM

/// Boots Debian's linux-image-cloud-amd64 with a busybox initramfs built here.
/// Needs hardware virtualization: under PVM (these development machines) an
/// unmodified Linux cannot boot (see shared/notes/kvm-here.md), so it skips.
final class LinuxGuestTests: XCTestCase {
    static let marker = "VMD-LINUX-BOOT-OK"

    func testBzImageBootsToInitAndReboots() throws {
        try XCTSkipUnless(TestSupport.kvmAvailable, "/dev/kvm is missing: Linux boot skipped")
        let environment = ProcessInfo.processInfo.environment
        // VMM_TEST_LINUX_UNDER_PVM=1 runs it anyway (to watch how far it gets).
        try XCTSkipIf(TestSupport.isPVM && environment["VMM_TEST_LINUX_UNDER_PVM"] == nil,
                      "/sys/module/kvm_pvm exists: KVM here is PVM, where Linux cannot boot; this test needs VT-x/AMD-V")
        let kernels = (try? FileManager.default.contentsOfDirectory(atPath: "/boot"))?
            .filter { $0.hasPrefix("vmlinuz-") }.sorted() ?? []
        guard let kernel = environment["VMM_TEST_BZIMAGE"] ?? kernels.last.map({ "/boot/" + $0 }) else {
            throw XCTSkip("no /boot/vmlinuz-* (apt-get install linux-image-cloud-amd64) and no VMM_TEST_BZIMAGE")
        }
        let busybox = environment["VMM_TEST_BUSYBOX"] ?? "/bin/busybox"
        try XCTSkipUnless(FileManager.default.fileExists(atPath: busybox), "no \(busybox): apt-get install busybox-static")

        let script = "#!/bin/busybox sh\n/bin/busybox echo \(Self.marker)\n/bin/busybox reboot -f\n"
        var archive = CPIOWriter()
        archive.directory("bin")
        archive.directory("dev")
        archive.characterDevice("dev/console", major: 5, minor: 1)
        archive.file("bin/busybox", Array(try Data(contentsOf: URL(fileURLWithPath: busybox))))
        archive.file("init", Array(script.utf8))
        let initrd = try TestSupport.writeFile(archive.finish(), name: "initrd.cpio")

        let run = try GuestRun(spec: VMSpec(
            name: "linux", memoryBytes: 512 << 20, vcpus: 2, kernelPath: kernel,
            commandLine: "console=ttyS0 earlyprintk=serial,ttyS0 i8042.noaux reboot=k panic=-1 rdinit=/init", initrdPath: initrd))
        XCTAssertTrue(run.vm.boot.format.hasPrefix("Linux bzImage"))
        let started = Date()
        let reason = try run.run(timeout: Double(environment["VMM_TEST_LINUX_TIMEOUT"] ?? "") ?? 120)
        print("linux: \(String(format: "%.2f", Date().timeIntervalSince(started))) s to \(String(describing: reason))")
        XCTAssertTrue(run.console.contains(Self.marker), "console:\n\(run.console)")
        XCTAssertEqual(reason, .reboot)
    }
}

/// The Linux 64-bit entry under KVM, with a stand-in kernel whose startup_64
/// is a few instructions: runs under PVM too, so the boot protocol state (long
/// mode, identity map, GDT selectors, RSI = zero page, stack) is checked here
/// even where a real Linux cannot boot.
final class LinuxEntryTests: XCTestCase {
    func testSixtyFourBitEntrySeesZeroPageCommandLineAndInitrd() throws {
        try XCTSkipUnless(TestSupport.kvmAvailable, "/dev/kvm is missing: Linux entry test skipped")
        var code: [UInt8] = []
        func out(_ byte: UInt8) { code += [0x66, 0xBA, 0xF8, 0x03, 0xB0, byte, 0xEE] }  // mov dx,0x3f8; mov al,b; out
        func outAL() { code += [0x66, 0xBA, 0xF8, 0x03, 0xEE] }
        code += [0x8B, 0x86, 0x02, 0x02, 0x00, 0x00]          // mov eax, [rsi+0x202]
        code += [0x3D] + Array("HdrS".utf8)                   // cmp eax, "HdrS"
        code += [0x75, 0x07]                                   // jne +7
        out(UInt8(ascii: "L"))
        code += [0x8B, 0xBE, 0x28, 0x02, 0x00, 0x00]          // mov edi, [rsi+0x228] (cmd_line_ptr)
        code += [0x0F, 0xB6, 0x07]; outAL()                    // movzx eax, byte [rdi]
        code += [0x8B, 0xBE, 0x18, 0x02, 0x00, 0x00]          // mov edi, [rsi+0x218] (ramdisk_image)
        code += [0x0F, 0xB6, 0x07]; outAL()                    // movzx eax, byte [rdi]
        code += [0x8C, 0xC8]; outAL()                          // mov eax, cs
        code += [0x8C, 0xD8]; outAL()                          // mov eax, ds
        code += [0x48, 0xB8] + [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]  // mov rax, imm64
        code += [0x50, 0x5B]                                   // push rax; pop rbx (the stack works)
        code += [0x48, 0x89, 0xD8]                             // mov rax, rbx
        code += [0x48, 0xC1, 0xE8, 0x38]; outAL()              // shr rax, 56 -> 0x88
        code += [0x66, 0xBA, 0x04, 0x06, 0x66, 0xB8, 0x00, 0x20, 0x66, 0xEF]  // power off
        code += [0xF4, 0xEB, 0xFD]
        let kernel = try TestSupport.writeFile(BzImageBuilder.make(code64: code), name: "bzImage")
        let initrd = try TestSupport.writeFile([UInt8](repeating: UInt8(ascii: "R"), count: 5000), name: "initrd")
        let run = try GuestRun(spec: VMSpec(name: "entry", memoryBytes: 64 << 20, vcpus: 2, kernelPath: kernel,
                                            commandLine: "Console=ttyS0", initrdPath: initrd))
        XCTAssertEqual(run.vm.boot.format, "Linux bzImage, boot protocol 2.15")
        XCTAssertEqual(try run.run(timeout: 30), .powerOff)
        XCTAssertEqual(run.vm.consoleReplay(), Array("LCR".utf8) + [0x10, 0x18, 0x88])
    }
}

/// The loader against a real distribution kernel (no KVM needed): set
/// VMM_TEST_BZIMAGE, or have /boot/vmlinuz-* (linux-image-cloud-amd64).
final class RealBzImageLoadTests: XCTestCase {
    func testRealKernelLoads() throws {
        let boot = (try? FileManager.default.contentsOfDirectory(atPath: "/boot"))?
            .filter { $0.hasPrefix("vmlinuz-") }.sorted().last.map { "/boot/" + $0 }
        guard let path = ProcessInfo.processInfo.environment["VMM_TEST_BZIMAGE"] ?? boot else {
            throw XCTSkip("no real bzImage: set VMM_TEST_BZIMAGE or install linux-image-cloud-amd64")
        }
        let file = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        XCTAssertEqual(try KernelFormat.detect(file, path: path), .bzImage)
        let memory = try GuestMemory(layout: GuestMemoryLayout(memoryBytes: 256 << 20), name: "t")
        let result = try LinuxBoot.load(file, path: path, commandLine: "console=ttyS0", initrd: [1, 2, 3],
                                        initrdPath: "rd", memory: memory)
        XCTAssertEqual(result.entry, .long64(rip: 0x100200, rsi: 0x7000, rsp: 0x8FF0, cr3: 0x9000))
        let page = ByteImage(try XCTUnwrap(memory.read(0x7000, count: 4096)))
        XCTAssertEqual(page.u32(0x202), 0x5372_6448)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(page.u16(0x206)), 0x020C)
        XCTAssertEqual(page.u16(0x236).map { $0 & 1 }, 1, "XLF_KERNEL_64")
        let image = try LinuxBoot.parse(file, path: path)
        XCTAssertGreaterThan(image.initSize, UInt64(file.count - image.setupBytes), "init_size covers decompression")
        XCTAssertEqual(memory.read(0x100000, count: 64), Array(file[image.setupBytes..<image.setupBytes + 64]))
        print("\(path): \(result.format), init_size \(image.initSize >> 20) MiB")
    }
}

/// A newc ("070701") cpio archive, the initramfs format.
struct CPIOWriter {
    private(set) var bytes: [UInt8] = []
    private var inode = 1

    mutating func directory(_ name: String) { entry(name, mode: 0o040755, data: []) }
    mutating func file(_ name: String, _ data: [UInt8]) { entry(name, mode: 0o100755, data: data) }
    mutating func characterDevice(_ name: String, major: Int, minor: Int) {
        entry(name, mode: 0o020600, data: [], rdev: (major, minor))
    }

    mutating func finish() -> [UInt8] {
        entry("TRAILER!!!", mode: 0, data: [])
        return bytes
    }

    private mutating func entry(_ name: String, mode: Int, data: [UInt8], rdev: (Int, Int) = (0, 0)) {
        let fields = [inode, mode, 0, 0, 1, 0, data.count, 0, 0, rdev.0, rdev.1, name.utf8.count + 1, 0]
        inode += 1
        var header = "070701"
        for field in fields { header += String(format: "%08X", field) }
        bytes += Array(header.utf8) + Array(name.utf8) + [0]
        pad()
        bytes += data
        pad()
    }

    private mutating func pad() { while bytes.count % 4 != 0 { bytes.append(0) } }
}
