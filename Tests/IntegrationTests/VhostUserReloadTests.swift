import Foundation
import XCTest
import Glibc

/// Issue 11: reload of a net backend is all or nothing. A changed stanza
/// whose tap cannot be opened leaves the running backend serving with its
/// previous configuration (and says so in the log); once the stanza is
/// fixed, reload replaces it.
extension VhostUserManagedTests {
    func testNetReloadWhoseTapFailsKeepsTheRunningBackend() throws {
        try requireRoot()
        let ns = try NetNamespace()
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vhost-netreload-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let socket = dir.appendingPathComponent("net0.sock").path
        let tap = "vhra\(getpid() % 100000)"
        let fixed = "vhrb\(getpid() % 100000)"
        func stanza(_ interface: String) -> String {
            "vhost-user \"net0\" {\n\ttype net\n\tinterface \"\(interface)\"\n\tsocket \"\(socket)\"\n}\n"
        }
        func tapExists(_ name: String) throws -> Bool {
            try runCommand("/usr/sbin/ip", ["-n", ns.name, "link", "show", name]).status == 0
        }
        let d = try Daemon(config: stanza(tap), netns: ns.name)
        defer { d.stop() }
        try d.waitReady()
        try waitFor("the backend") { backendPIDs("net0").count == 1 }
        let pid = backendPIDs("net0")[0]
        XCTAssertTrue(try tapExists(tap), d.log)

        // "lo" exists in the namespace and is no tun device: TUNSETIFF fails.
        try stanza("lo").write(toFile: d.config, atomically: true, encoding: .utf8)
        let bad = try d.vmctl(["reload"])
        XCTAssertEqual(bad.status, 0, bad.out)
        try waitFor("the tap failure logged") { d.log.contains("vhost-user net0: reload: cannot open its tap") }
        XCTAssertTrue(d.log.contains("the backend keeps running with its previous configuration"), d.log)
        // Nothing changed: same process, same tap, same socket, still serving.
        XCTAssertEqual(backendPIDs("net0"), [pid])
        XCTAssertTrue(try tapExists(tap), d.log)
        XCTAssertEqual(try row(d, "net0"), ["net0", "net", socket, "listening", "-", "0"])
        let frontend = try Frontend(socket: socket)
        try waitFor("connected") { try row(d, "net0") == ["net0", "net", socket, "connected", String(frontend.pid), "0"] }
        frontend.finish()

        // Fixed: the new backend takes over with its new tap; the old tap goes.
        try stanza(fixed).write(toFile: d.config, atomically: true, encoding: .utf8)
        let reload = try d.vmctl(["reload"])
        XCTAssertEqual(reload.status, 0, reload.out + d.log)
        try waitFor("the new backend") { let p = backendPIDs("net0"); return p.count == 1 && p != [pid] }
        try waitFor("the new tap") { try tapExists(fixed) }
        try waitFor("the old tap gone") { try !tapExists(tap) }
        XCTAssertTrue(d.log.contains("vhost-user net0: tap \(fixed)"), d.log)
        let again = try Frontend(socket: socket)
        try waitFor("connected again") { try row(d, "net0") == ["net0", "net", socket, "connected", String(again.pid), "0"] }
        again.finish()
    }
}
