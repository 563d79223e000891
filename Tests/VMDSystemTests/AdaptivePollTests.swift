import XCTest
import VMDSystem

/// The device processes' poll window (AdaptivePoll.swift).
final class AdaptivePollTests: XCTestCase {
    let us = 1_000

    func testWindowGrowsWhileWaitsAreShortAndStopsAtTheMaximum() {
        var w = AdaptivePollWindow(maxNanos: 100 * us)
        XCTAssertEqual(w.window(now: 0), 0, "no polling until a short wait is seen")
        var seen: [Int] = []
        for _ in 0..<8 {
            w.waitEnded(after: 40 * us)        // a guest that comes back after 40 us
            seen.append(w.nanos)
        }
        XCTAssertEqual(seen, [4, 8, 16, 32, 64, 64, 64, 64].map { $0 * us },
                       "doubling until the window covers the wait, then steady")
        for _ in 0..<3 { w.waitEnded(after: 90 * us) }
        XCTAssertEqual(w.nanos, 100 * us, "never past the maximum")
    }

    func testLongWaitsHalveTheWindowDownToNothing() {
        var w = AdaptivePollWindow(maxNanos: 100 * us)
        for _ in 0..<10 { w.waitEnded(after: 90 * us) }
        XCTAssertEqual(w.nanos, 100 * us)
        w.waitEnded(after: 5_000 * us)         // an idle guest
        XCTAssertEqual(w.nanos, 50 * us)
        for _ in 0..<5 { w.waitEnded(after: 5_000 * us) }
        XCTAssertEqual(w.nanos, 0, "an idle device stops polling")
        XCTAssertEqual(w.window(now: 0), 0)
    }

    func testZeroMaximumNeverPolls() {
        var w = AdaptivePollWindow(maxNanos: 0)
        for _ in 0..<5 { w.waitEnded(after: 1_000) }
        XCTAssertEqual(w.window(now: 0), 0)
    }

    func testPreemptionClosesTheWindowLongerEachTimeItRepeats() {
        var w = AdaptivePollWindow(maxNanos: 100 * us)
        for _ in 0..<10 { w.waitEnded(after: 50 * us) }
        let open = w.nanos
        XCTAssertGreaterThan(open, 0)
        var now = 1_000_000_000
        w.polled(preempted: false, now: now)
        XCTAssertEqual(w.window(now: now), open, "a poll nobody interrupted changes nothing")

        w.polled(preempted: true, now: now)
        XCTAssertEqual(w.window(now: now), 0)
        XCTAssertEqual(w.window(now: now + AdaptivePollWindow.firstBackoff - 1), 0)
        XCTAssertEqual(w.window(now: now + AdaptivePollWindow.firstBackoff), open,
                       "a lone preemption closes the window for 1 ms, and it reopens as it was")

        // A loaded host: preempted again each time polling resumes.
        var closed: [Int] = []
        for _ in 0..<12 {
            now = w.closedUntil
            w.polled(preempted: true, now: now)
            closed.append(w.closedUntil - now)
        }
        XCTAssertEqual(Array(closed.prefix(4)), [2, 4, 8, 16].map { $0 * AdaptivePollWindow.firstBackoff })
        XCTAssertEqual(closed.last, AdaptivePollWindow.longestBackoff, "at most 50 ms closed")
        XCTAssertEqual(w.contended, 13)

        // Quiet again: the next preemption, long after the last, starts over at 1 ms.
        now = w.closedUntil + AdaptivePollWindow.repeatWithin
        w.polled(preempted: true, now: now)
        XCTAssertEqual(w.closedUntil - now, AdaptivePollWindow.firstBackoff)
    }
}
