import Foundation
import XCTest
import Glibc

/// Issue 13, concurrent vioblk: a VM with two vCPUs gets a vioblk with two
/// request queues (VIRTIO_BLK_F_MQ, num_queues 2), each kicked through its
/// own ioeventfd; the guest reads on queue 1 with 16 requests in flight,
/// and the device process serves them on its restricted io_uring.
final class VioBlkMQTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
    }

    func testTwoVCPUsGiveTwoQueuesOnIoUring() throws {
        try runTwoQueues(env: [:], engine: "io_uring (restricted")
    }

    /// The fallback where io_uring is unavailable (forced here with
    /// VMD_BLOCK_IO=threads): a pool of threads made before the sandbox,
    /// which the seccomp filter covers too.
    func testThreadPoolFallbackInsideTheSandbox() throws {
        try runTwoQueues(env: ["VMD_BLOCK_IO": "threads"], engine: "a pool of 4 threads")
    }

    func runTwoQueues(env: [String: String], engine expected: String) throws {
        let disk = NSTemporaryDirectory() + "vmd-mq-\(getpid()).img"
        try Guest.makeDisk(disk)
        defer { unlink(disk) }
        let d = try Daemon(config: """
            vm "mq" {
                memory 64M
                cpus 2
                boot "\(Repo.vmtestELF)"
                disk "\(disk)"
                cmdline "stay"
            }
            """, extraArgs: ["-v"], env: env)
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vmtest summary:", timeout: 90), d.log)
        let log = d.log
        let r = Guest.results(log)
        XCTAssertEqual(r["blk"], true, log)
        XCTAssertEqual(r["blk_mq"], true, log)
        XCTAssertTrue(log.contains("vmtest: blk_mq ok queues=2"), log)
        // Which engine runs is logged; on this kernel io_uring is allowed.
        let engine = log.split(separator: "\n").first { $0.contains("vioblk0: asynchronous I/O on") }
        XCTAssertNotNil(engine, log)
        if !env.isEmpty || (try? String(contentsOfFile: "/proc/sys/kernel/io_uring_disabled", encoding: .utf8))?.hasPrefix("0") == true {
            XCTAssertTrue(engine?.contains(expected) == true, log)
        }
        XCTAssertFalse(log.contains("killed"), log)
        XCTAssertFalse(log.contains("submission failed"), log)
        let stop = try d.vmctl(["stop", "-w", "mq"], timeout: 60)
        XCTAssertEqual(stop.status, 0, stop.out)
        XCTAssertEqual(d.stop(), 0)
    }
}
