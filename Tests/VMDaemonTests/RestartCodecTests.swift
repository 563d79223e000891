import XCTest
import VMDControl
import VirtioDevices
@testable import VMDaemon

/// Issue 12's payloads: the state-region descriptor role, the restart
/// report, and restart counts in VMInfo.
final class RestartCodecTests: XCTestCase {
    func testDeviceStateRoleRoundTrips() throws {
        var d = DeviceSetup(kind: .blk, name: "vioblk0", vmName: "web",
                            regions: [.init(guestPhysicalAddress: 0, size: 1 << 20, offsetInMapping: 0)])
        d.descriptors.append(.sync)
        d.descriptors.append(.async)
        d.descriptors.append(.guestMemory)
        d.descriptors.append(.queueNotify(0))
        d.descriptors.append(.deviceState)
        let decoded = try DeviceSetup(decoding: d.encoded())
        XCTAssertEqual(decoded, d)
        XCTAssertEqual(decoded.descriptors.first(.deviceState), 7)
    }

    func testRestartCountsRoundTripAndJunkIsRefused() throws {
        var i = VMInfo(id: 1, pid: 99, vcpus: 2, maxMemory: 1 << 30, curMemory: 1 << 30, tty: "/dev/pts/3",
                       owner: "root", state: "running", name: "web")
        i.deviceRestarts = [DeviceRestartReport(device: "vioblk0", restarts: 3),
                            DeviceRestartReport(device: "vionet0", restarts: 1)]
        XCTAssertEqual(try VMInfo(decoding: i.encoded()), i)
        // Without counts (as before issue 12): still a VMInfo, with none.
        var plain = i
        plain.deviceRestarts = []
        let old = Array(plain.encoded().dropLast(4))
        XCTAssertEqual(try VMInfo(decoding: old), plain)
        // A count past the bound, a truncated entry.
        var w = WireWriter()
        w.u32(1000)
        XCTAssertThrowsError(try VMInfo(decoding: old + w.bytes))
        XCTAssertThrowsError(try VMInfo(decoding: Array(i.encoded().dropLast(2))))
        let r = DeviceRestartReport(device: "viornd", restarts: 7)
        XCTAssertEqual(try DeviceRestartReport(decoding: r.encoded()), r)
        XCTAssertThrowsError(try DeviceRestartReport(decoding: r.encoded() + [0]))
        XCTAssertThrowsError(try DeviceRestartReport(decoding: Array(r.encoded().dropLast())))
    }

    func testTheRestartReportIsAllowedOnlyFromTheVMSide() {
        XCTAssertTrue(MessagePolicy.permits(MessageType.vmmDeviceRestarted.rawValue, on: .vmToVMM))
        XCTAssertTrue(MessagePolicy.permits(MessageType.vmmDeviceRestarted.rawValue, on: .vmmToParent))
        XCTAssertFalse(MessagePolicy.permits(MessageType.vmmDeviceRestarted.rawValue, on: .clientToControl))
        XCTAssertFalse(MessagePolicy.permits(MessageType.vmmDeviceRestarted.rawValue, on: .deviceToVMAsync))
    }
}
