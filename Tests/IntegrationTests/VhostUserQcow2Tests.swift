import Foundation
import XCTest
import Glibc

/// Issue 11: vhost-user blk backends serve qcow2 images too (the Linux
/// restart scenario runs fio verify on one); a qcow2 image with a backing
/// file, which one descriptor cannot serve, is refused with a clear error.
extension VhostUserManagedTests {
    func qcow2(_ path: String, backing: String? = nil) throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-img") else {
            throw XCTSkip("qemu-img is not installed (qemu-utils)")
        }
        var args = ["create", "-q", "-f", "qcow2"]
        if let backing { args += ["-b", backing, "-F", "raw"] }
        let r = try runCommand("/usr/bin/qemu-img", args + [path, "16M"])
        XCTAssertEqual(r.status, 0, r.out)
    }

    func testManagedQcow2BackendServesAndBackingFilesAreRefused() throws {
        try requireRoot()
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vhost-qcow2-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        chmod(dir.path, 0o755)
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = dir.appendingPathComponent("disk.qcow2").path
        let base = dir.appendingPathComponent("base.raw").path
        let overlay = dir.appendingPathComponent("overlay.qcow2").path
        try qcow2(image)
        XCTAssertTrue(FileManager.default.createFile(atPath: base, contents: Data(count: 16 << 20)))
        try qcow2(overlay, backing: base)
        let socket = dir.appendingPathComponent("q.sock").path
        let chained = dir.appendingPathComponent("o.sock").path
        let d = try Daemon(config: """
            vhost-user "q" {
            \ttype blk
            \tdisk "\(image)" format qcow2
            \tsocket "\(socket)"
            }
            vhost-user "o" {
            \ttype blk
            \tdisk "\(overlay)"
            \tsocket "\(chained)"
            }

            """)
        defer { d.stop() }
        try d.waitReady()
        try waitFor("the qcow2 backend") { backendPIDs("q").count == 1 }
        let frontend = try Frontend(socket: socket)
        try waitFor("connected") { try row(d, "q") == ["q", "blk", socket, "connected", String(frontend.pid), "0"] }
        frontend.finish()
        // The overlay's backend refuses its backing file until given up.
        try waitFor("the overlay given up", timeout: 30) { try row(d, "o").dropFirst(3).first == "failed" }
        XCTAssertTrue(d.log.contains("backing file \(base): not supported by vhost-user backends"), d.log)
        XCTAssertEqual(try row(d, "q").dropFirst(3).first, "listening")

        // Run by hand: the same refusal, and -F checks its value.
        let r = try runCommand(Repo.vmd, ["-P", "vhost-user", "-d", "-t", "blk", "-S", dir.appendingPathComponent("h.sock").path,
                                          "-i", overlay])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.out.contains("backing file \(base): not supported by vhost-user backends"), r.out)
        let f = try runCommand(Repo.vmd, ["-P", "vhost-user", "-t", "blk", "-S", dir.appendingPathComponent("f.sock").path,
                                          "-i", image, "-F", "vmdk"])
        XCTAssertNotEqual(f.status, 0)
        XCTAssertTrue(f.out.contains("-F must be raw or qcow2"), f.out)
    }
}
