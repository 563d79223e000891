import Foundation
import XCTest
import Glibc

/// Issue 9, item 6: the two bench workloads that stalled (blk_randread_qd1
/// "no completion for 5 s", net_tx_1500 "transmit ring stuck") run 20 times
/// each in one VM (vmtest `kick_stress=20`) while a busy loop runs on every
/// core, and none may stall.
final class KickStressTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
    }

    func testQueueKicksAreNeverLostUnderCPULoad() throws {
        let rounds = 20
        let ns = try NetNamespace()
        let disk = NSTemporaryDirectory() + "vmd-kicks-\(getpid()).img"
        try Guest.makeDisk(disk, sectors: 16384)
        defer { unlink(disk) }
        let tap = "vmdk\(getpid() % 100000)"
        // bench_scale=50: 2000 QD1 reads and 10000 frames per round.
        let d = try Daemon(config: """
            vm "kicks" {
                memory 64M
                boot "\(Repo.vmtestELF)"
                disk "\(disk)"
                interface "\(tap)"
                cmdline "kick_stress=\(rounds) bench_scale=50 ip=10.0.2.15/24 gw=10.0.2.2"
            }
            """, extraArgs: ["-v"], netns: ns.name)
        try d.waitReady()
        XCTAssertTrue(ns.configureTap(tap, address: "10.0.2.2/24"), "tap \(tap) never appeared\n\(d.log)")
        // One busy loop per core, competing with the vCPU and the device processes.
        var hogs: [pid_t] = []
        for _ in 0..<max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) {
            var pid: pid_t = 0
            var argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup("while :; do :; done"), nil]
            if posix_spawn(&pid, "/bin/sh", nil, nil, &argv, environ) == 0 { hogs.append(pid) }
            for p in argv { free(p) }
        }
        defer {
            for pid in hogs { kill(pid, SIGKILL); var st: Int32 = 0; waitpid(pid, &st, 0) }
        }
        let start = Date()
        let finished = d.waitLog("vmd: vm kicks: stopped", timeout: 170)
        let log = d.log
        XCTAssertTrue(finished, "the guest did not finish \(rounds) rounds in 170 s\n\(log)")
        XCTAssertTrue(log.contains("vmtest stress: rounds=\(rounds)"), log)
        XCTAssertEqual(log.components(separatedBy: "vmtest bench: blk_randread_qd1 iops=").count - 1, rounds, log)
        XCTAssertEqual(log.components(separatedBy: "vmtest bench: net_tx_1500 fps=").count - 1, rounds, log)
        let failures = log.split(separator: "\n").filter { $0.contains("FAIL") }
        XCTAssertEqual(failures, [], log)
        XCTAssertTrue(log.contains("vm kicks: stopped: guest powered off"), log)
        // The device's backstop (a queue with requests and no notification
        // for 100-200 ms is served anyway) is reported, not asserted: a guest
        // descheduled in the middle of a transmit batch can trigger it.
        let backstop = log.split(separator: "\n").filter {
            $0.contains("without a notification") || $0.contains("vmtest: note ")
        }
        print("kick stress: \(rounds) rounds of each workload in \(Int(Date().timeIntervalSince(start))) s; "
              + "device backstop or late completions: \(backstop.isEmpty ? "none" : backstop.joined(separator: " | "))")
        XCTAssertEqual(d.stop(), 0)
    }
}
