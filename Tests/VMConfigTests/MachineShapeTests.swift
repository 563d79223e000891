// `virtio pci|mmio` and `boot path format linux|pvh|multiboot`.
import Foundation
import XCTest
@testable import VMConfig

final class MachineShapeTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("vmconfig-shape-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: directory.appendingPathComponent("vmlinux").path, contents: nil)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private var kernel: String { directory.appendingPathComponent("vmlinux").path }

    private func parse(_ text: String) -> Result<VMDConfiguration, ConfigErrors> {
        ConfigParser.parse(text: text, filename: "vm.conf")
    }

    private func errors(_ text: String) -> [String] {
        if case .failure(let e) = parse(text) { return e.errors.map(\.description) }
        return []
    }

    func testMMIOAndPVHParsePrintAndReparse() throws {
        let text = """
            vm "micro" {
            	boot "\(kernel)" format pvh
            	virtio mmio
            }
            vm "pc" {
            	boot "\(kernel)"
            	virtio pci
            }
            vm "plain" {
            	boot "\(kernel)" format multiboot
            }
            """
        let config = try parse(text).get()
        let micro = try XCTUnwrap(config.vms.first { $0.name == "micro" })
        XCTAssertEqual(micro.virtioTransport, .mmio)
        XCTAssertEqual(micro.kernelFormat, .pvh)
        let pc = try XCTUnwrap(config.vms.first { $0.name == "pc" })
        XCTAssertEqual(pc.virtioTransport, .pci)
        XCTAssertNil(pc.kernelFormat, "chosen by what the file carries")
        let plain = try XCTUnwrap(config.vms.first { $0.name == "plain" })
        XCTAssertNil(plain.virtioTransport, "default: pci")
        XCTAssertEqual(plain.kernelFormat, .multiboot)
        let printed = config.printed()
        XCTAssertTrue(printed.contains("\tboot \"\(kernel)\" format pvh\n"), printed)
        XCTAssertTrue(printed.contains("\tvirtio mmio\n"), printed)
        XCTAssertEqual(try parse(printed).get().printed(), printed)
    }

    func testInstancesInheritTheShape() throws {
        let config = try parse("""
            vm "base" {
            	boot "\(kernel)" format pvh
            	virtio mmio
            	allow instance { boot, instance }
            }
            vm "base" instance "child" {
            }
            """).get()
        let child = config.resolved(try XCTUnwrap(config.vm(named: "child")))
        XCTAssertEqual(child.virtioTransport, .mmio)
        XCTAssertEqual(child.kernelFormat, .pvh)
    }

    func testBadValuesAreErrorsWithTheirLine() {
        XCTAssertEqual(errors("""
            vm "a" {
            	virtio usb
            }
            """), ["vm.conf:2: unknown virtio transport usb (expected pci or mmio)"])
        XCTAssertEqual(errors("""
            vm "a" {
            	boot "\(kernel)" format elf
            }
            """), ["vm.conf:2: unknown boot format elf (expected linux, pvh or multiboot)"])
        XCTAssertEqual(errors("""
            vm "a" {
            	virtio mmio
            	virtio pci
            }
            """).count, 1, "virtio given twice")
        // "virtio" is a word, not a keyword: it still names things.
        XCTAssertEqual(errors("""
            vm virtio {
            	boot "\(kernel)"
            }
            """), [])
    }
}
