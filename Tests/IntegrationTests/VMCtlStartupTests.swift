import Foundation
import XCTest
import Glibc

/// Issue 14 item 4, the parts that do not depend on timing (the timings are
/// bench/vmctl-startup.sh): vmctl is one static file with no Foundation,
/// and a status of 100 VMs, answered in one batch, is complete and in order.
final class VMCtlStartupTests: XCTestCase {
    /// Start-up: no dynamic loader, no shared Swift runtime, no Foundation
    /// (libFoundation.so alone pulled in ICU's 40 MB).
    func testVmctlIsStaticWithoutFoundation() throws {
        try requireVmctl()
        let ldd = try runCommand("/usr/bin/ldd", [Repo.vmctl])
        XCTAssertFalse(ldd.out.lowercased().contains("foundation"), ldd.out)
        XCTAssertFalse(ldd.out.contains("libswift"), ldd.out)
        XCTAssertTrue(ldd.out.contains("not a dynamic executable"), ldd.out)
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/readelf") else { return }
        let headers = try runCommand("/usr/bin/readelf", ["-lW", Repo.vmctl])
        XCTAssertEqual(headers.status, 0, headers.out)
        XCTAssertFalse(headers.out.contains("INTERP"), "vmctl needs a dynamic loader:\n\(headers.out)")
        // And it still runs: a missing socket is the usual error.
        let r = try runCommand(Repo.vmctl, ["-s", "/nonexistent/vmd.sock", "status"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.out, "vmctl: connect: /nonexistent/vmd.sock: No such file or directory\n")
    }

    /// 100 VMs defined (disabled: nothing boots): every row, in order, in the
    /// table and in JSON; one VM by name and by id still gets one row.
    func testStatusOfHundredVMs() throws {
        try requireRoot()
        var conf = ""
        for i in 1...100 { conf += "vm \"b\(i)\" {\n    disable\n    memory 64M\n    boot \"/dev/null\"\n}\n" }
        let d = try Daemon(config: conf)
        defer { d.stop() }
        try d.waitReady()

        let table = try d.vmctl(["status"])
        XCTAssertEqual(table.status, 0, table.out)
        let lines = table.out.split(separator: "\n")
        XCTAssertEqual(lines.count, 101, table.out)
        XCTAssertTrue(lines.first?.hasSuffix("STATE NAME") ?? false, table.out)
        for (i, line) in lines.dropFirst().enumerated() {
            let fields = line.split(separator: " ")
            XCTAssertEqual(fields.first.map(String.init), String(i + 1), String(line))
            XCTAssertEqual(fields.last.map(String.init), "b\(i + 1)", String(line))
            XCTAssertEqual(fields.dropLast().last.map(String.init), "stopped", String(line))
        }

        let json = try d.vmctl(["status", "--json"])
        XCTAssertEqual(json.status, 0, json.out)
        let rows = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.out.utf8)) as? [[String: Any]])
        XCTAssertEqual(rows.map { $0["name"] as? String }, (1...100).map { "b\($0)" })
        XCTAssertEqual(rows.last?["maxmem"] as? Int, 64 << 20)

        let byName = try d.vmctl(["status", "b42"])
        XCTAssertEqual(byName.out.split(separator: "\n").count, 2, byName.out)
        XCTAssertTrue(byName.out.hasSuffix(" b42\n"), byName.out)
        let byID = try d.vmctl(["status", "42"])
        XCTAssertEqual(byID.out, byName.out)
        // "042" is a name, not id 42 (as before the batching).
        let notID = try d.vmctl(["status", "042"])
        XCTAssertEqual(notID.status, 1, notID.out)
        XCTAssertTrue(notID.out.contains("vm not found"), notID.out)
    }
}
