import Foundation
import XCTest
import Glibc

/// Issue "the daemon users run": the real daemon driven only through vmctl
/// and its socket.
final class VMCtlIntegrationTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
        try requireVmctl()
    }

    func vmConfig(_ name: String, cmdline: String = "stay", memory: String = "64M", extra: String = "") -> String {
        """
        vm "\(name)" {
            memory \(memory)
            boot "\(Repo.vmtestELF)"
            cmdline "\(cmdline)"
        \(extra)
        }

        """
    }

    func waitState(_ d: Daemon, _ name: String, _ state: String, timeout: Double = 30) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let r = try? d.vmctl(["status", name]), r.out.contains(" \(state) \(name)") { return true }
            usleep(50_000)
        }
        return false
    }

    func testStatusLayoutJSONPauseUnpauseStopForce() throws {
        let d = try Daemon(config: vmConfig("web") + vmConfig("idle", memory: "1G", extra: "    disable"))
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vm web: running", timeout: 30), d.log)
        XCTAssertTrue(waitState(d, "web", "running"))
        let st = try d.vmctl(["status"])
        XCTAssertEqual(st.status, 0, st.out)
        let lines = st.out.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        // vmd's printf("%5s %5s %5s %7s %7s %7s %12s %8s %s\n", ...), byte for byte.
        XCTAssertEqual(lines[0], "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE NAME")
        XCTAssertEqual(lines[2], "    2     -     1    1.0G       -       -         root  stopped idle")
        let web = lines[1]
        XCTAssertTrue(web.hasPrefix("    1 "), web)
        XCTAssertTrue(web.hasSuffix("  running web"), web)
        XCTAssertTrue(web.contains("   64.0M   64.0M   pts/"), web)

        let json = try d.vmctl(["status", "--json"])
        let parsed = try JSONSerialization.jsonObject(with: Data(json.out.utf8)) as? [[String: Any]]
        XCTAssertEqual(parsed?.count, 2)
        XCTAssertEqual(parsed?.first?["name"] as? String, "web")
        XCTAssertEqual(parsed?.first?["state"] as? String, "running")

        XCTAssertEqual(try d.vmctl(["pause", "web"]).status, 0)
        XCTAssertTrue(waitState(d, "web", "paused"))
        XCTAssertNotEqual(try d.vmctl(["pause", "web"]).status, 0, "pausing twice is an error")
        XCTAssertEqual(try d.vmctl(["unpause", "web"]).status, 0)
        XCTAssertTrue(waitState(d, "web", "running"))

        // Unique prefixes work like vmctl's; ambiguous ones do not.
        XCTAssertEqual(try d.vmctl(["stat", "web"]).status, 0)
        let amb = try d.vmctl(["sta", "web"])
        XCTAssertNotEqual(amb.status, 0)
        XCTAssertTrue(amb.out.contains("ambiguous"), amb.out)

        let stop = try d.vmctl(["stop", "-f", "web"])
        XCTAssertEqual(stop.status, 0, stop.out)
        XCTAssertTrue(waitState(d, "web", "stopped"))
        XCTAssertTrue(d.log.contains("forced stop"), d.log)
        let none = try d.vmctl(["status", "-r"])
        XCTAssertNotEqual(none.status, 0, "an empty listing with -r exits non-zero")

        let missing = try d.vmctl(["start", "nosuch"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertEqual(missing.out.split(separator: "\n").count, 1, missing.out)
        XCTAssertTrue(missing.out.hasPrefix("vmctl: start nosuch: "), missing.out)
        XCTAssertEqual(d.stop(), 0)
    }

    func testWaitAndGracefulStop() throws {
        let d = try Daemon(config: vmConfig("g"))
        try d.waitReady()
        XCTAssertTrue(waitState(d, "g", "running"))
        usleep(500_000)   // the guest reaches `stay` (it waits for vmmci) within ~0.2 s
        let waiter = Process()
        waiter.executableURL = URL(fileURLWithPath: Repo.vmctl)
        waiter.arguments = ["-s", d.socket, "wait", "g"]
        waiter.standardOutput = FileHandle.nullDevice
        waiter.standardError = FileHandle.nullDevice
        try waiter.run()
        usleep(300_000)
        XCTAssertTrue(waiter.isRunning, "wait returns only when the VM stops")
        let stop = try d.vmctl(["stop", "g"])
        XCTAssertEqual(stop.status, 0, stop.out)
        waiter.waitUntilExit()
        XCTAssertEqual(waiter.terminationStatus, 0)
        XCTAssertTrue(d.log.contains("asked the guest to shut down (vmmci)"), d.log)
        XCTAssertTrue(waitState(d, "g", "stopped"))
        XCTAssertEqual(d.stop(), 0)
    }

    /// A pty session: vmctl console replays the guest's output, `~.` leaves.
    func testConsoleThroughAPty() throws {
        let d = try Daemon(config: vmConfig("c"))
        try d.waitReady()
        XCTAssertTrue(waitState(d, "c", "running"))
        usleep(500_000)
        let script = #"""
import os, pty, sys, time, select
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "-s", sys.argv[2], "console", "c"])
out = b""
deadline = time.time() + 30
while time.time() < deadline and b"vmtest summary" not in out:
    r, _, _ = select.select([fd], [], [], 0.5)
    if r:
        try: out += os.read(fd, 4096)
        except OSError: break
os.write(fd, b"\r~.")
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.5)
    if r:
        try:
            chunk = os.read(fd, 4096)
            if not chunk: break
            out += chunk
        except OSError: break
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.stdout.write("\nEXIT %d\n" % os.waitstatus_to_exitcode(status))
"""#
        let r = try runCommand("/usr/bin/env", ["python3", "-c", script, Repo.vmctl, d.socket], timeout: 60)
        XCTAssertTrue(r.out.contains("vmtest: serial ok"), r.out)
        XCTAssertTrue(r.out.contains("vmtest summary: passed="), r.out)
        XCTAssertTrue(r.out.contains("EXIT 0"), r.out)
        XCTAssertTrue(waitState(d, "c", "running"), "detaching leaves the VM running")
        XCTAssertEqual(d.stop(), 0)
    }

    func testReloadAllOrNothing() throws {
        let d = try Daemon(config: vmConfig("a", extra: "    disable"))
        try d.waitReady()
        try (vmConfig("a", extra: "    disable") + "vm \"b\" {\n    memory 12Q\n}\n")
            .write(toFile: d.config, atomically: true, encoding: .utf8)
        let bad = try d.vmctl(["reload"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.out.contains("vm.conf:"), bad.out)
        XCTAssertFalse(try d.vmctl(["status"]).out.contains(" b\n"), "an invalid file changes nothing")
        try (vmConfig("a", extra: "    disable") + vmConfig("b", extra: "    disable"))
            .write(toFile: d.config, atomically: true, encoding: .utf8)
        let good = try d.vmctl(["reload"])
        XCTAssertEqual(good.status, 0, good.out)
        let st = try d.vmctl(["status"]).out
        XCTAssertTrue(st.contains("stopped a\n") && st.contains("stopped b\n"), st)
        // SIGHUP with an invalid file logs the errors and keeps running.
        try "vm {\n".write(toFile: d.config, atomically: true, encoding: .utf8)
        kill(d.pid, SIGHUP)
        XCTAssertTrue(d.waitLog("vm.conf:1:", timeout: 10), d.log)
        XCTAssertTrue(d.process.isRunning)
        XCTAssertEqual(d.stop(), 0)
    }

    func testNonRootOwnerMayOnlyControlItsOwnVM() throws {
        let user = "vmdtest\(getpid() % 10000)"
        XCTAssertEqual(try runCommand("/usr/sbin/useradd", ["--system", "-U", "-M", "-s", "/usr/sbin/nologin", user]).status, 0)
        defer { _ = try? runCommand("/usr/sbin/userdel", [user]) }
        let conf = "socket owner root:\(user)\n"
            + vmConfig("mine", extra: "    disable\n    owner \(user)")
            + vmConfig("theirs", extra: "    disable")
        let d = try Daemon(config: conf)
        try d.waitReady()
        var sb = stat()
        XCTAssertEqual(stat(d.socket, &sb), 0)
        XCTAssertEqual(sb.st_mode & 0o777, 0o660)
        func asUser(_ args: [String]) throws -> (status: Int32, out: String) {
            try runCommand("/usr/sbin/runuser", ["-u", user, "--", Repo.vmctl, "-s", d.socket] + args)
        }
        let start = try asUser(["start", "mine"])
        XCTAssertEqual(start.status, 0, start.out)
        XCTAssertTrue(waitState(d, "mine", "running"))
        let denied = try asUser(["start", "theirs"])
        XCTAssertNotEqual(denied.status, 0)
        XCTAssertTrue(denied.out.contains("start theirs: permission denied"), denied.out)
        let reload = try asUser(["reload"])
        XCTAssertNotEqual(reload.status, 0)
        XCTAssertTrue(reload.out.contains("permission denied"), reload.out)
        let paths = try asUser(["start", "-b", "/etc/shadow", "x"])
        XCTAssertNotEqual(paths.status, 0, "users cannot make the daemon open files for them")
        usleep(500_000)
        // The owner attaches to the console (the pty is handed to it).
        let console = try runCommand("/usr/sbin/runuser", ["-u", user, "--", Repo.vmctl, "-s", d.socket, "console", "mine"],
                                     input: "~.", timeout: 30)
        XCTAssertEqual(console.status, 0, console.out)
        XCTAssertTrue(console.out.contains("vmtest: serial ok"), console.out)
        XCTAssertEqual(try asUser(["pause", "mine"]).status, 0)
        XCTAssertEqual(try asUser(["unpause", "mine"]).status, 0)
        XCTAssertEqual(try asUser(["stop", "-f", "-w", "mine"]).status, 0)
        XCTAssertTrue(waitState(d, "mine", "stopped"))
        XCTAssertEqual(d.stop(), 0)
    }
}
