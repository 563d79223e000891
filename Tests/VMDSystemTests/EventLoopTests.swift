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
