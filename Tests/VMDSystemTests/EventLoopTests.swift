import XCTest
import Glibc
import VMDSystem

final class EventLoopTests: XCTestCase {
    func testTimersSignalsAndReadiness() throws {
        let loop = EventLoop()
        var order: [String] = []
        let (a, b) = try FD.socketPair()
        defer { FD.close(a); FD.close(b) }
        loop.onReadable(b) { [unowned loop] in
            _ = try? FD.read(b, count: 10)
            order.append("readable")
            kill(getpid(), SIGUSR1)
            _ = loop
        }
        loop.onSignal(SIGUSR1) { [unowned loop] in
            order.append("signal")
            loop.after(seconds: 0.01) { [unowned loop] in order.append("timer"); loop.exit() }
        }
        try FD.writeAll(a, [1])
        loop.after(seconds: 5) { [unowned loop] in order.append("timeout"); loop.exit() }
        loop.run()
        XCTAssertEqual(order, ["readable", "signal", "timer"])
    }
}

/// `runOnce`, which a device process drives between its polls.
final class EventLoopPassTests: XCTestCase {
    func testNonBlockingPassRunsOnlyWhatIsReadyAndCountsIt() throws {
        let loop = EventLoop()
        let (a, b) = try FD.socketPair()
        defer { FD.close(a); FD.close(b) }
        var reads = 0
        loop.onReadable(b) {
            _ = try? FD.read(b, count: 10)
            reads += 1
        }
        let before = loop.callbacksRun
        let t0 = Clock.nanos()
        XCTAssertTrue(loop.runOnce(block: false))
        XCTAssertLessThan(Clock.nanos() - t0, 500_000_000, "a non-blocking pass must not wait")
        XCTAssertEqual(loop.callbacksRun, before, "nothing was ready")
        XCTAssertEqual(reads, 0)
        try FD.writeAll(a, [1])
        XCTAssertTrue(loop.runOnce(block: false))
        XCTAssertEqual(reads, 1)
        XCTAssertEqual(loop.callbacksRun, before + 1)
    }

    func testBlockingPassWaitsForAnEventAndExitStopsTheLoop() throws {
        let loop = EventLoop()
        var fired = false
        loop.after(seconds: 0.02) { fired = true }
        XCTAssertTrue(loop.runOnce(block: true))
        XCTAssertTrue(fired, "the pass returns after the timer ran")
        loop.every(seconds: 0.01) { [unowned loop] in loop.exit() }
        XCTAssertFalse(loop.runOnce(block: true), "exit() inside a callback ends the loop")
        XCTAssertTrue(loop.exitRequested)
        XCTAssertFalse(loop.runOnce(block: false), "and every later pass")
    }
}
