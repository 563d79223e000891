import Foundation
import XCTest
@testable import VMM

/// SeaBIOS (Debian's seabios package) on our VMM: fw_cfg, the ROM mapping,
/// its serial console. Real mode runs emulated under PVM: tens of seconds.
final class BIOSBootTests: XCTestCase {
    static let seabios = "/usr/share/seabios/bios-256k.bin"

    override func setUpWithError() throws {
        try XCTSkipUnless(TestSupport.kvmAvailable, "/dev/kvm is missing: BIOS boot skipped")
        try XCTSkipUnless(FileManager.default.fileExists(atPath: Self.seabios), "\(Self.seabios) missing (Debian seabios)")
    }

    /// The ROM is a read-only KVM slot; a guest write exits to the MMIO bus,
    /// which drops it. The shadow copy below 1 MiB holds the image's top.
    func testROMMappingIgnoresWritesAndShadowsTheTop() throws {
        let vm = try VirtualMachine(spec: VMSpec(name: "rom", memoryBytes: 64 << 20, kernelPath: Self.seabios))
        let image = Array(try Data(contentsOf: URL(fileURLWithPath: Self.seabios)))
        let resetVector: UInt64 = 0xFFFF_FFF0
        XCTAssertEqual(vm.mmioBus.read(resetVector, size: 1), UInt64(image[image.count - 16]), "0xEA: jmp far")
        vm.mmioBus.write(resetVector, size: 4, value: 0)
        XCTAssertEqual(vm.mmioBus.read(resetVector, size: 1), 0xEA, "the write was dropped")
        XCTAssertEqual(vm.boot.entry, .firmware)
    }

    /// Nothing to boot: SeaBIOS says so on COM1 and waits; the VM stops when told.
    func testSeaBIOSWithNoDiskSaysNoBootableDevice() throws {
        let run = try GuestRun(spec: VMSpec(name: "bios", memoryBytes: 128 << 20, vcpus: 1, kernelPath: Self.seabios))
        XCTAssertEqual(run.vm.boot.format, "BIOS")
        let started = Date()
        try run.vm.start { _ in }
        while !run.console.contains("No bootable device"), Date().timeIntervalSince(started) < 85 {
            usleep(100_000)
        }
        let took = Date().timeIntervalSince(started)
        print("SeaBIOS console after \(String(format: "%.1f", took)) s:\n\(run.console)")
        XCTAssertTrue(run.console.contains("No bootable device"), run.console)
        XCTAssertTrue(run.console.contains("SeaBIOS (version"), run.console)
        XCTAssertLessThan(took, 60)
        // It waits (boot-fail-wait -1) and the VM still stops at once.
        let stopping = Date()
        XCTAssertTrue(run.vm.stop(timeout: 5))
        XCTAssertLessThan(Date().timeIntervalSince(stopping), 5)
    }
}
