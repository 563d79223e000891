import Foundation
import XCTest
import VMDControl
@testable import VMCtlCLI

/// `vmctl status`'s second table: vhost-user backends.
final class BackendTableTests: XCTestCase {
    let connected = BackendInfo(name: "disk0", kind: "blk", socket: "/run/vhost/disk0.sock",
                                state: "connected", frontendPID: 31337, restarts: 2)
    let listening = BackendInfo(name: "rng", kind: "rnd", socket: "/run/vhost/rng.sock",
                                state: "listening", frontendPID: 0, restarts: 0)

    func testGolden() {
        let expected = """
            NAME  KIND SOCKET                    STATE FRONTEND-PID RESTARTS
            disk0  blk /run/vhost/disk0.sock connected        31337        2
            rng    rnd /run/vhost/rng.sock   listening            -        0

            """
        XCTAssertEqual(BackendTable.render([connected, listening]), expected)
    }

    func testNoBackendsNoTable() {
        XCTAssertEqual(BackendTable.render([]), "")
        XCTAssertEqual(BackendTable.json(vms: [], backends: []), "[]\n")
    }

    func testLongFieldsAreNeverCut() {
        let long = BackendInfo(name: String(repeating: "n", count: 63), kind: "scsi",
                               socket: "/" + String(repeating: "s", count: 106), state: "failed",
                               frontendPID: 0, restarts: 5)
        let lines = BackendTable.render([long, listening]).split(separator: "\n")
        XCTAssertEqual(lines.count, 3)
        XCTAssertTrue(lines[1].hasPrefix(long.name + " scsi " + long.socket + "    failed"))
        // Every line is as wide as the header up to the last column.
        XCTAssertEqual(Set(lines.map(\.utf8.count)).count, 1)
    }

    func testJSONHasTheTableFields() throws {
        let vm = VMInfo(id: 1, pid: 4242, vcpus: 1, maxMemory: 512 << 20, curMemory: 512 << 20,
                        tty: "/dev/pts/3", owner: "root", state: "running", name: "web")
        let text = BackendTable.json(vms: [vm], backends: [connected, listening])
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let vms = try XCTUnwrap(object["vms"] as? [[String: Any]])
        XCTAssertEqual(vms.first?["name"] as? String, "web")
        let backends = try XCTUnwrap(object["vhost_user"] as? [[String: Any]])
        XCTAssertEqual(backends.count, 2)
        XCTAssertEqual(backends[0]["name"] as? String, "disk0")
        XCTAssertEqual(backends[0]["kind"] as? String, "blk")
        XCTAssertEqual(backends[0]["socket"] as? String, "/run/vhost/disk0.sock")
        XCTAssertEqual(backends[0]["state"] as? String, "connected")
        XCTAssertEqual(backends[0]["frontend_pid"] as? Int, 31337)
        XCTAssertEqual(backends[0]["restarts"] as? Int, 2)
        XCTAssertTrue(backends[1]["frontend_pid"] is NSNull)
    }

    func testWireRoundTripAndTruncation() throws {
        let bytes = connected.encoded()
        XCTAssertEqual(try BackendInfo(decoding: bytes), connected)
        for n in 0..<bytes.count {
            XCTAssertThrowsError(try BackendInfo(decoding: Array(bytes.prefix(n))), "\(n) bytes")
        }
        XCTAssertThrowsError(try BackendInfo(decoding: bytes + [0]))
    }
}
