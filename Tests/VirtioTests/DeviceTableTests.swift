import XCTest
import Glibc
import Virtio
@testable import VirtioDevices

/// The device table is what the VM process, the device process, the launch
/// code and the sandbox read: each row must describe its device exactly.
final class DeviceTableTests: XCTestCase {
    private func temporaryImage(bytes: Int) throws -> Int32 {
        var template = Array("/tmp/vmd-table-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        guard fd >= 0 else { throw XCTSkip("mkstemp failed") }
        unlink(String(cString: template))
        XCTAssertEqual(ftruncate(fd, off_t(bytes)), 0)
        return fd
    }

    func testEveryRowBuildsTheDeviceItDescribes() throws {
        let image = try temporaryImage(bytes: 1 << 20)
        defer { close(image) }
        for kind in DeviceKind.allCases where kind != .net {   // net's make needs a real tap (ioctl)
            let model = kind.model
            XCTAssertEqual(model.kind, kind)
            let backends = model.backends.map { (role: $0, fd: image) }
            let device = try model.make(DeviceConstruction(name: model.instanceName(0), parameters: .init(),
                                                           backends: backends))
            XCTAssertEqual(device.queueMaxSizes, model.queueSizes, "\(kind)")
            XCTAssertEqual(device.name, model.instanceName(0))
            XCTAssertEqual(device is HostCommandDevice, model.takesHostCommands, "\(kind)")
        }
    }

    func testNamesAndPresentation() {
        XCTAssertEqual(DeviceKind.blk.model.instanceName(1), "vioblk1")
        XCTAssertEqual(DeviceKind.net.model.instanceName(0), "vionet0")
        XCTAssertEqual(DeviceKind.rnd.model.instanceName(0), "viornd")
        XCTAssertEqual(Set(DeviceKind.allCases.map { $0.model.baseName }).count, DeviceKind.allCases.count)
        XCTAssertEqual(DeviceKind.allCases.filter { $0.model.takesHostCommands }, [.vmmci])
        XCTAssertEqual(DeviceKind.vmmci.model.presentation.isrOffset, VirtioLegacyLayout.isr)
        XCTAssertEqual(DeviceKind.blk.model.presentation.isrOffset, VirtioPCILayout.isr)
        XCTAssertEqual(DeviceKind.net.model.queueSizes.count, 2)
        XCTAssertEqual(DeviceKind.scsi.model.queueSizes.count, 3)
        XCTAssertEqual(DeviceKind.net.model.backends, [.tap])
    }

    func testAMissingDescriptorIsAnErrorNamingTheDevice() {
        XCTAssertThrowsError(try DeviceKind.blk.model.make(
            DeviceConstruction(name: "vioblk3", parameters: .init(), backends: []))) { error in
            XCTAssertEqual("\(error)", "vioblk3: no disk descriptor")
        }
    }
}
