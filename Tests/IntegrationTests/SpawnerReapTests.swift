import Foundation
import XCTest
import Glibc

/// The per-VM device spawner (`vmd: device spawner for vm NAME`) is the VM
/// process's own child (posix_spawn; only the devices it starts again are
/// cloned with CLONE_PARENT). When the VM stops, the VM process reaps it
/// before it reports the stop: no spawner, running or zombie, is left
/// under vmm, and stopping takes no longer for it.
final class SpawnerReapTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
        try requireVmctl()
    }

    /// Whether `pid` has a /proc entry at all (a zombie has one).
    private func present(_ pid: Int32) -> Bool {
        FileManager.default.fileExists(atPath: "/proc/\(pid)/stat")
    }

    /// Shared with the watcher thread.
    private final class Watch: @unchecked Sendable {
        private let lock = NSLock()
        private var _done = false, _outlived = false
        var done: Bool {
            get { lock.withLock { _done } }
            set { lock.withLock { _done = newValue } }
        }
        var outlived: Bool {
            get { lock.withLock { _outlived } }
            set { lock.withLock { _outlived = newValue } }
        }
    }

    private struct Stop { let took: Double; let spawnerOutlivedVM: Bool; let spawnerGoneAfter: Double? }

    /// Starts `name` (vmtest `stay`), finds its spawner, runs `vmctl stop
    /// <flags> -w`, and watches (every ms) whether the spawner's /proc
    /// entry outlives the VM process's.
    private func startAndStop(_ d: Daemon, _ name: String, flags: [String]) throws -> Stop {
        XCTAssertTrue(d.waitLog("vm \(name): running", timeout: 30), d.log)
        XCTAssertTrue(d.waitLog("vmtest: stay: waiting for a vmmci request", timeout: 30), d.log)
        var tree = descendants(of: d.pid)
        var vm = tree.first { $0.args == "vmd: vm \(name)" }
        var spawner = tree.first { $0.args == "vmd: device spawner for vm \(name)" }
        let found = Date().addingTimeInterval(10)
        while (vm == nil || spawner == nil) && Date() < found {
            usleep(20_000)
            tree = descendants(of: d.pid)
            vm = tree.first { $0.args == "vmd: vm \(name)" }
            spawner = tree.first { $0.args == "vmd: device spawner for vm \(name)" }
        }
        let v = try XCTUnwrap(vm, "\(tree)"), s = try XCTUnwrap(spawner, "\(tree)")
        XCTAssertEqual(s.ppid, v.pid, "the spawner is the VM process's child\n\(tree)")
        // Why the VM process cannot signal it: it runs as _vmd, the spawner as root.
        XCTAssertEqual(procStatus(s.pid)["Uid"]?.split(separator: "\t").first, "0")
        XCTAssertNotEqual(procStatus(v.pid)["Uid"]?.split(separator: "\t").first, "0")

        let watch = Watch()
        let watcher = Thread {
            while !watch.done {
                if !self.present(v.pid) {
                    if self.present(s.pid) { watch.outlived = true }
                    return
                }
                usleep(1_000)
            }
        }
        watcher.start()
        let started = Date()
        let stop = try d.vmctl(["stop"] + flags + ["-w", name], timeout: 30)
        let took = Date().timeIntervalSince(started)
        XCTAssertEqual(stop.status, 0, stop.out)
        let bound = Date().addingTimeInterval(3)
        while present(s.pid) && Date() < bound { usleep(1_000) }
        let gone: Double? = present(s.pid) ? nil : Date().timeIntervalSince(started)
        let vmBound = Date().addingTimeInterval(3)
        while present(v.pid) && Date() < vmBound { usleep(1_000) }
        usleep(20_000)
        watch.done = true
        return Stop(took: took, spawnerOutlivedVM: watch.outlived, spawnerGoneAfter: gone)
    }

    func testNoSpawnerRemainsAfterAStop() throws {
        let d = try Daemon(config: """
            vm "sr" {
                memory 64M
                boot "\(Repo.vmtestELF)"
                cmdline "stay"
            }
            """, extraArgs: ["-v"])
        try d.waitReady()
        for (round, flags) in [[], ["-f"]].enumerated() {
            if round > 0 {
                let start = try d.vmctl(["start", "sr"], timeout: 30)
                XCTAssertEqual(start.status, 0, start.out)
            }
            let r = try startAndStop(d, "sr", flags: flags)
            print("SpawnerReapTests: stop \(flags) took \(String(format: "%.3f", r.took)) s, spawner gone after \(r.spawnerGoneAfter.map { String(format: "%.3f", $0) } ?? "never") s, outlived the VM process: \(r.spawnerOutlivedVM)")
            XCTAssertNotNil(r.spawnerGoneAfter, "the spawner (or its zombie) is still there 3 s after the stop\n\(d.log)")
            XCTAssertFalse(r.spawnerOutlivedVM, "the VM process exited before it reaped its spawner\n\(d.log)")
            XCTAssertTrue(descendants(of: d.pid).filter { $0.args.contains("spawner") }.isEmpty,
                          "\(descendants(of: d.pid))")
            // Waiting for a spawner that never exits cost the whole device
            // exit grace (2 s, 0.5 s forced) and 1 s more.
            XCTAssertLessThan(r.took, flags.isEmpty ? 2.0 : 1.5, "stop \(flags) waited for the spawner\n\(d.log)")
        }
        XCTAssertFalse(d.log.contains("did not exit after SIGKILL"), d.log)

        // A VM process that dies without finishing (SIGKILL): its spawner
        // reads EOF (or gets its parent-death signal) and vmm reaps it.
        let start = try d.vmctl(["start", "sr"], timeout: 30)
        XCTAssertEqual(start.status, 0, start.out)
        var tree: [(pid: Int32, ppid: Int32, user: String, args: String)] = []
        let found = Date().addingTimeInterval(10)
        repeat {
            usleep(20_000)
            tree = descendants(of: d.pid)
        } while !tree.contains(where: { $0.args == "vmd: device spawner for vm sr" }) && Date() < found
        let vm = try XCTUnwrap(tree.first { $0.args == "vmd: vm sr" }, "\(tree)")
        let spawner = try XCTUnwrap(tree.first { $0.args == "vmd: device spawner for vm sr" }, "\(tree)")
        let killed = Date()
        kill(vm.pid, SIGKILL)
        let bound = Date().addingTimeInterval(3)
        while present(spawner.pid) && Date() < bound { usleep(1_000) }
        XCTAssertFalse(present(spawner.pid), "the spawner of a killed VM process is still there after 3 s")
        print("SpawnerReapTests: VM process SIGKILLed: spawner gone after \(String(format: "%.3f", Date().timeIntervalSince(killed))) s")
        XCTAssertEqual(d.stop(), 0)
    }
}
