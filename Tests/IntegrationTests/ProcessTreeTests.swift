import Foundation
import XCTest
import Glibc

/// Issue "foundation": the daemon's process tree, its sandbox, its exit.
final class ProcessTreeTests: XCTestCase {
    let emptyConfig = "# no VMs\n"

    func testTreeTitlesUsersAndSandbox() throws {
        try requireRoot()
        let d = try Daemon(config: emptyConfig)
        try d.waitReady()
        // The parent is ready before its children have named themselves (a
        // loaded machine shows that): wait for the three titles.
        var tree = descendants(of: d.pid)
        func find(_ title: String) -> (pid: Int32, ppid: Int32, user: String, args: String)? {
            tree.first { $0.args.trimmingCharacters(in: .whitespaces) == title }
        }
        let deadline = Date().addingTimeInterval(10)
        while ["vmd: priv", "vmd: control", "vmd: vmm"].contains(where: { find($0) == nil }) && Date() < deadline {
            usleep(50_000)
            tree = descendants(of: d.pid)
        }
        let priv = try XCTUnwrap(find("vmd: priv"), "\(tree)")
        let control = try XCTUnwrap(find("vmd: control"), "\(tree)")
        let vmm = try XCTUnwrap(find("vmd: vmm"), "\(tree)")
        for c in [priv, control, vmm] { XCTAssertEqual(c.ppid, d.pid) }
        XCTAssertEqual(priv.user, "root")
        XCTAssertEqual(vmm.user, "root")
        XCTAssertEqual(control.user, "_vmd")

        let st = procStatus(control.pid)
        XCTAssertEqual(st["Seccomp"], "2")
        XCTAssertEqual(st["NoNewPrivs"], "1")
        let uid = st["Uid"]?.split(separator: "\t").first.flatMap { Int($0) }
        XCTAssertNotNil(uid); XCTAssertNotEqual(uid, 0)
        for role in [priv, vmm] {
            XCTAssertEqual(procStatus(role.pid)["Seccomp"], "2", "\(role.args) has a seccomp filter")
        }
        // control holds nothing but stdio, its parent channel, its listening
        // socket and libevent's own descriptors.
        let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(control.pid)/fd")
        XCTAssertLessThanOrEqual(fds.count, 8, "\(fds)")

        // The socket is 0600 root when no `socket owner` is set.
        var sb = stat()
        XCTAssertEqual(stat(d.socket, &sb), 0)
        XCTAssertEqual(sb.st_mode & 0o777, 0o600)

        let pids = tree.map(\.pid)
        XCTAssertEqual(d.stop(), 0)
        usleep(200_000)
        for p in pids { XCTAssertFalse(processExists(p), "process \(p) survived SIGTERM") }
        XCTAssertFalse(FileManager.default.fileExists(atPath: d.socket))
    }

    func testSandboxViolationIsReportedByTheParent() throws {
        try requireRoot()
        for syscall in ["openat", "execve"] {
            let d = try Daemon(config: emptyConfig, env: ["VMD_SANDBOX_SELFTEST": "control:\(syscall)"])
            let deadline = Date().addingTimeInterval(20)
            while d.process.isRunning && Date() < deadline { usleep(50_000) }
            guard !d.process.isRunning else {
                XCTFail("vmd kept running after its control process died; log:\n\(d.log)")
                d.stop()
                continue
            }
            XCTAssertEqual(d.process.terminationStatus, 1)
            XCTAssertTrue(d.log.contains("control process"), d.log)
            XCTAssertTrue(d.log.contains("killed by SIGSYS"), d.log)
            XCTAssertTrue(descendants(of: d.pid).isEmpty)
        }
    }

    func testChildDeathShutsTheDaemonDown() throws {
        try requireRoot()
        let d = try Daemon(config: emptyConfig)
        try d.waitReady()
        let tree = descendants(of: d.pid)
        let vmm = try XCTUnwrap(tree.first { $0.args.hasPrefix("vmd: vmm") })
        kill(vmm.pid, SIGKILL)
        let deadline = Date().addingTimeInterval(20)
        while d.process.isRunning && Date() < deadline { usleep(50_000) }
        XCTAssertEqual(d.process.terminationStatus, 1)
        XCTAssertTrue(d.log.contains("vmm process \(vmm.pid) killed by SIGKILL"), d.log)
        usleep(200_000)
        for p in tree { XCTAssertFalse(processExists(p.pid)) }
    }

    func testCheckOnlyAndBadConfig() throws {
        let dir = NSTemporaryDirectory()
        let good = dir + "/vmd-good-\(getpid()).conf"
        try "vm \"a\" {\n  memory 64M\n  boot \"/dev/null\"\n}\n".write(toFile: good, atomically: true, encoding: .utf8)
        defer { unlink(good) }
        let r = try runCommand(Repo.vmd, ["-n", "-f", good])
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.out, "configuration OK\n")
        // Files the VMs name must exist (realpath at parse time, as vmd).
        let bad = dir + "/vmd-bad-\(getpid()).conf"
        try "vm \"a\" {\n  memory 64M\n  boot \"/nonexistent/k\"\n  disk \"/nonexistent/d.img\"\n}\n"
            .write(toFile: bad, atomically: true, encoding: .utf8)
        defer { unlink(bad) }
        let missingFiles = try runCommand(Repo.vmd, ["-n", "-f", bad])
        XCTAssertEqual(missingFiles.status, 1)
        XCTAssertTrue(missingFiles.out.contains("\(bad):3: boot /nonexistent/k: No such file or directory"), missingFiles.out)
        XCTAssertTrue(missingFiles.out.contains("\(bad):4: disk /nonexistent/d.img: No such file or directory"), missingFiles.out)
        // No vm.conf at all is not an error for vmd: a warning, no VMs.
        let missing = try runCommand(Repo.vmd, ["-n", "-f", "/nonexistent/vm.conf"])
        XCTAssertEqual(missing.status, 0, missing.out)
        XCTAssertTrue(missing.out.contains("/nonexistent/vm.conf: failed to open: No such file or directory"), missing.out)
        XCTAssertTrue(missing.out.hasSuffix("configuration OK\n"), missing.out)
        let unreadable = try runCommand(Repo.vmd, ["-n", "-f", "/dev/zero"])
        XCTAssertEqual(unreadable.status, 1, "a file that exists but cannot be read is still an error")
        let usage = try runCommand(Repo.vmd, ["-Z"])
        XCTAssertEqual(usage.status, 1)
        XCTAssertTrue(usage.out.contains("usage: vmd [-dnv] [-D macro=value] [-f file] [-s socket]"))
    }
}
