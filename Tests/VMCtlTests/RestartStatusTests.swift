import Foundation
import XCTest
import VMDControl
@testable import VMCtlCLI

/// `vmctl status --json`: per-device restart counts, only for a running VM
/// whose devices were restarted.
final class RestartStatusTests: XCTestCase {
    func testRestartCountsInTheJSON() {
        var vm = VMInfo(id: 1, pid: 4242, vcpus: 1, maxMemory: 512 << 20, curMemory: 512 << 20,
                        tty: "/dev/pts/3", owner: "root", state: "running", name: "web")
        XCTAssertFalse(StatusTable.json([vm]).contains("device_restarts"))
        vm.deviceRestarts = [DeviceRestartReport(device: "vioblk0", restarts: 3),
                             DeviceRestartReport(device: "viornd", restarts: 1)]
        XCTAssertTrue(StatusTable.json([vm]).contains("\"device_restarts\":{\"vioblk0\":3,\"viornd\":1}"),
                      StatusTable.json([vm]))
        vm.state = "stopped"
        vm.pid = 0
        XCTAssertFalse(StatusTable.json([vm]).contains("device_restarts"))
    }
}
