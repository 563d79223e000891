import Foundation
import XCTest
@testable import VMM

/// Debian's vmlinux through the PVH entry on the microVM shape (no PCI host
/// bridge), with the same busybox initramfs as LinuxGuestTests. Needs
/// hardware virtualization: under PVM an unmodified Linux cannot boot (see
/// shared/notes/kvm-here.md), so it skips there; RealVmlinuxPVHTests covers
/// the loader and QEMU's boot of the same file on every machine.
final class LinuxPVHGuestTests: XCTestCase {
    func testVmlinuxBootsThroughPVHToInitAndReboots() throws {
        try XCTSkipUnless(TestSupport.kvmAvailable, "/dev/kvm is missing: Linux boot skipped")
        let environment = ProcessInfo.processInfo.environment
        try XCTSkipIf(TestSupport.isPVM && environment["VMM_TEST_LINUX_UNDER_PVM"] == nil,
                      "/sys/module/kvm_pvm exists: KVM here is PVM, where Linux cannot boot; this test needs VT-x/AMD-V")
        let busybox = environment["VMM_TEST_BUSYBOX"] ?? "/bin/busybox"
        try XCTSkipUnless(FileManager.default.fileExists(atPath: busybox), "no \(busybox): apt-get install busybox-static")
        let vmlinux = try RealVmlinuxPVHTests.extractVmlinux()
        defer { try? FileManager.default.removeItem(atPath: (vmlinux as NSString).deletingLastPathComponent) }

        let script = "#!/bin/busybox sh\n/bin/busybox echo \(LinuxGuestTests.marker)\n/bin/busybox reboot -f\n"
        var archive = CPIOWriter()
        archive.directory("bin")
        archive.directory("dev")
        archive.characterDevice("dev/console", major: 5, minor: 1)
        archive.file("bin/busybox", Array(try Data(contentsOf: URL(fileURLWithPath: busybox))))
        archive.file("init", Array(script.utf8))
        let initrd = try TestSupport.writeFile(archive.finish(), name: "initrd.cpio")

        var spec = VMSpec(name: "linux-pvh", memoryBytes: 512 << 20, vcpus: 1, kernelPath: vmlinux,
                          commandLine: "console=ttyS0 earlyprintk=serial,ttyS0 i8042.noaux reboot=k panic=-1 rdinit=/init",
                          initrdPath: initrd)
        spec.bootProtocol = .pvh
        spec.virtioMMIOSlots = 0
        let run = try GuestRun(spec: spec)
        XCTAssertEqual(run.vm.boot.format, "PVH")
        let started = Date()
        let reason = try run.run(timeout: Double(environment["VMM_TEST_LINUX_TIMEOUT"] ?? "") ?? 120)
        print("linux (PVH): \(String(format: "%.2f", Date().timeIntervalSince(started))) s to \(String(describing: reason))")
        XCTAssertTrue(run.console.contains(LinuxGuestTests.marker), "console:\n\(run.console)")
        XCTAssertEqual(reason, .reboot)
    }
}
