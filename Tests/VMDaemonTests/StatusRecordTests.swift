import XCTest
@testable import VMDaemon
import VMConfig
import VMDControl

/// A VM's status record is encoded once and kept until a field it is made
/// of changes (issue 14): whatever changes, the bytes sent are always
/// `VMTable.info(e).encoded()`.
final class StatusRecordTests: XCTestCase {
    func testRecordIsKeptAndRebuiltOnEveryChange() {
        var c = VMConfiguration(name: "web", location: SourceLocation(file: "vm.conf", line: 1))
        c.bootPath = "/dev/null"
        let e = VMTable.Entry(id: 7, config: c, fromConfigFile: true)
        XCTAssertNil(e.statusRecord)
        var seen: [[UInt8]] = []
        func check(_ what: String, line: UInt = #line) {
            let payload = e.statusPayload
            XCTAssertEqual(payload, VMTable.info(e).encoded(), what, line: line)
            XCTAssertEqual(e.statusRecord, payload, what, line: line)
            XCTAssertFalse(seen.contains(payload), "\(what): the record did not change", line: line)
            seen.append(payload)
        }
        check("new")
        XCTAssertEqual(try VMInfo(decoding: e.statusPayload).name, "web")
        e.lifecycle.launching(); check("launching")
        e.pid = 4242; check("pid")
        e.tty = "/dev/pts/3"; check("tty")
        _ = e.lifecycle.started(); check("running")
        e.deviceRestarts["vioblk0"] = 2; check("device restarts")
        e.config.memoryBytes = 128 << 20; check("memory")
        e.config.name = "db"; check("name")
        // Fields the record is not made of keep it.
        let kept = e.statusRecord
        e.waiters.append(3)
        e.startRequester = 9
        XCTAssertEqual(e.statusRecord, kept)
    }
}
