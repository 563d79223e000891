import XCTest
@testable import VMConfig

/// BIOS boot: `boot device disk|cdrom` and a VM without `boot` start; `boot
/// device net` is refused (no iPXE option ROM for virtio-net yet).
final class BootDeviceTests: XCTestCase {
    func testOnlyNetBootIsRefused() throws {
        let config = try ConfigParser.parse(text: """
            vm "cd" { cdrom "/dev/null"
            	boot device cdrom }
            vm "hd" { disk "/dev/null" format raw
            	boot device disk }
            vm "bios" { disk "/dev/null" format raw }
            vm "pxe" { boot device net }
            """, filename: "vm.conf", macros: [:]).get()
        for name in ["cd", "hd", "bios"] {
            XCTAssertEqual(unsupportedFeatures(of: try XCTUnwrap(config.vm(named: name))), [], name)
        }
        XCTAssertEqual(unsupportedFeatures(of: try XCTUnwrap(config.vm(named: "pxe"))), ["boot device net"])
    }
}
