import Foundation
import XCTest
import Glibc

/// The man pages lint clean, the systemd unit verifies, the example config
/// parses, and `make install` lays out what it promises.
final class PackagingTests: XCTestCase {
    func testManPagesLintClean() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/mandoc") else {
            throw XCTSkip("mandoc is not installed")
        }
        let pages = ["man/vmd.8", "man/vmctl.8", "man/vm.conf.5"].map { Repo.root.appendingPathComponent($0).path }
        let r = try runCommand("/usr/bin/mandoc", ["-Tlint", "-Wwarning"] + pages)
        XCTAssertEqual(r.status, 0, r.out)
        XCTAssertEqual(r.out, "", r.out)
    }

    func testSystemdUnitVerifies() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else {
            throw XCTSkip("systemd-analyze is not installed")
        }
        let tmp = NSTemporaryDirectory() + "vmd-unit-\(getpid())"
        try FileManager.default.createDirectory(atPath: tmp + "/sbin", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        try FileManager.default.createSymbolicLink(atPath: tmp + "/sbin/vmd", withDestinationPath: Repo.vmd)
        try FileManager.default.createSymbolicLink(atPath: tmp + "/sbin/vmctl", withDestinationPath: Repo.vmctl)
        let unit = try String(contentsOf: Repo.root.appendingPathComponent("etc/systemd/vmd.service"), encoding: .utf8)
        XCTAssertTrue(unit.contains("Type=notify"))
        XCTAssertTrue(unit.contains("ExecReload="))
        try unit.replacingOccurrences(of: "@PREFIX@", with: tmp).write(toFile: tmp + "/vmd.service", atomically: true, encoding: .utf8)
        let r = try runCommand("/usr/bin/systemd-analyze", ["verify", "--man=no", tmp + "/vmd.service"])
        XCTAssertEqual(r.status, 0, r.out)
    }

    /// Device processes exist many times per host: the binary they run
    /// must not load Foundation.
    func testDaemonLinksNoFoundation() throws {
        let r = try runCommand("/usr/bin/ldd", [Repo.vmd])
        XCTAssertEqual(r.status, 0, r.out)
        XCTAssertTrue(r.out.contains("libswiftCore"), r.out)
        XCTAssertFalse(r.out.lowercased().contains("foundation"), r.out)
    }

    func testExampleConfigurationParses() throws {
        let r = try runCommand(Repo.vmd, ["-n", "-f", Repo.root.appendingPathComponent("etc/vm.conf").path])
        XCTAssertEqual(r.status, 0, r.out)
        XCTAssertTrue(r.out.hasSuffix("configuration OK\n"), r.out)
    }

    func testSdNotifyReady() throws {
        try requireRoot()
        // A fake $NOTIFY_SOCKET: the daemon itself must say READY=1.
        let path = NSTemporaryDirectory() + "vmd-notify-\(getpid()).sock"
        unlink(path)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd); unlink(path) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        XCTAssertEqual(bound, 0)
        var tv = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let d = try Daemon(config: "# empty\n", env: ["NOTIFY_SOCKET": path])
        var buf = [UInt8](repeating: 0, count: 256)
        let n = recv(fd, &buf, buf.count, 0)
        XCTAssertGreaterThan(n, 0)
        XCTAssertEqual(String(decoding: buf.prefix(max(n, 0)), as: UTF8.self), "READY=1")
        XCTAssertEqual(d.stop(), 0)
    }
}
