import Foundation
import Glibc
import XCTest
import VMDSystem
@testable import VMCtlCLI

final class ConsoleEscapeTests: XCTestCase {
    func feed(_ text: String, _ escape: inout ConsoleEscape) -> ConsoleEscape.Output {
        escape.feed(Array(text.utf8))
    }

    func testTildeDotAtStartDetaches() {
        var e = ConsoleEscape()
        XCTAssertEqual(feed("~.", &e), .detach(sendFirst: []))
    }

    func testTildeDotAfterReturnDetachesAndSendsWhatCameBefore() {
        var e = ConsoleEscape()
        XCTAssertEqual(feed("ls\r~.rest", &e), .detach(sendFirst: Array("ls\r".utf8)))
        var f = ConsoleEscape()
        XCTAssertEqual(feed("ls\n~\u{04}", &f), .detach(sendFirst: Array("ls\n".utf8)))
    }

    func testTildeInsideALineIsPlain() {
        var e = ConsoleEscape()
        XCTAssertEqual(feed("a~.", &e), .send(Array("a~.".utf8)))
    }

    func testDoubleTildeSendsOne() {
        var e = ConsoleEscape()
        XCTAssertEqual(feed("~~.", &e), .send(Array("~.".utf8)))
    }

    func testTildeOtherSendsBoth() {
        var e = ConsoleEscape()
        XCTAssertEqual(feed("~x", &e), .send(Array("~x".utf8)))
        XCTAssertFalse(e.atLineStart)
    }

    /// The escape may be split over two reads (a user types slowly).
    func testSplitAcrossReads() {
        var e = ConsoleEscape()
        XCTAssertEqual(feed("echo hi\r", &e), .send(Array("echo hi\r".utf8)))
        XCTAssertEqual(feed("~", &e), .send([]))
        XCTAssertTrue(e.holdingTilde)
        XCTAssertEqual(feed(".", &e), .detach(sendFirst: []))
    }

    func testTildeReturnKeepsLineStart() {
        var e = ConsoleEscape()
        XCTAssertEqual(feed("~\r", &e), .send(Array("~\r".utf8)))
        XCTAssertEqual(feed("~.", &e), .detach(sendFirst: []))
    }
}

/// The relay with real descriptors: pipes for the user's side, a pty pair
/// standing in for the VM's console (the test holds the master, as the VM
/// process does).
final class ConsoleRelayTests: XCTestCase {
    var master: Int32 = -1
    var tty: Int32 = -1
    var input: [Int32] = [-1, -1]
    var output: [Int32] = [-1, -1]
    var wake: [Int32] = [-1, -1]

    override func setUpWithError() throws {
        let pair = try Pty.open()
        master = pair.master
        tty = pair.slave
        try FD.setNonBlocking(tty)
        var t = termios()
        tcgetattr(tty, &t)
        cfmakeraw(&t)
        tcsetattr(tty, TCSANOW, &t)
        XCTAssertEqual(pipe(&input), 0)
        XCTAssertEqual(pipe(&output), 0)
        XCTAssertEqual(pipe(&wake), 0)
    }

    override func tearDown() {
        for fd in [master, tty] + input + output + wake where fd >= 0 { close(fd) }
    }

    /// Runs the relay on a thread; the result arrives through the expectation.
    func startRelay(endOnInputEOF: Bool = false) -> (XCTestExpectation, () -> ConsoleRelay.Ending?) {
        let done = expectation(description: "relay ended")
        final class Box: @unchecked Sendable { var ending: ConsoleRelay.Ending? }
        let box = Box()
        let relay = ConsoleRelay(input: input[0], output: output[1], tty: tty, wakeFD: wake[0],
                                 endOnInputEOF: endOnInputEOF)
        Thread.detachNewThread {
            box.ending = relay.run()
            done.fulfill()
        }
        return (done, { box.ending })
    }

    func write(_ fd: Int32, _ text: String) {
        XCTAssertTrue(Output.writeAll(fd, Array(text.utf8)))
    }

    /// Reads from `fd` until `expected` has arrived (or 5 s pass).
    func read(_ fd: Int32, until expected: String) -> String {
        var got = [UInt8]()
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = Glibc.read(fd, &buf, buf.count)
            if n <= 0 { break }
            got += buf[0..<n]
            if String(decoding: got, as: UTF8.self).contains(expected) { break }
        }
        return String(decoding: got, as: UTF8.self)
    }

    func testBothWaysThenDetach() {
        let (done, ending) = startRelay()
        write(master, "vmtest: hello from the guest\r\n")
        XCTAssertEqual(read(output[0], until: "guest\r\n"), "vmtest: hello from the guest\r\n")
        write(input[1], "status\r")
        XCTAssertEqual(read(master, until: "\r"), "status\r")
        write(input[1], "~.")
        wait(for: [done], timeout: 5)
        XCTAssertEqual(ending(), .detached)
    }

    func testEscapedTildeReachesTheGuest() {
        let (done, ending) = startRelay()
        write(input[1], "~~x\r~.")
        wait(for: [done], timeout: 5)
        XCTAssertEqual(ending(), .detached)
        XCTAssertEqual(read(master, until: "\r"), "~x\r")
    }

    /// stdin at end of file (a pipe, /dev/null): the guest's output keeps
    /// coming until its console closes.
    func testInputEOFKeepsRelayingUntilTheConsoleCloses() {
        let (done, ending) = startRelay()
        write(input[1], "typed before EOF\r")
        close(input[1]); input[1] = -1
        XCTAssertEqual(read(master, until: "\r"), "typed before EOF\r")
        write(master, "output after EOF\n")
        XCTAssertEqual(read(output[0], until: "\n"), "output after EOF\n")
        close(master); master = -1
        wait(for: [done], timeout: 5)
        XCTAssertEqual(ending(), .consoleClosed)
    }

    /// A terminal that hangs up ends the session (input from a terminal).
    func testInputEOFFromATerminalEndsTheSession() {
        let (done, ending) = startRelay(endOnInputEOF: true)
        close(input[1]); input[1] = -1
        wait(for: [done], timeout: 5)
        XCTAssertEqual(ending(), .inputClosed)
    }

    func testSignalEndsTheSession() {
        let (done, ending) = startRelay()
        var sig = UInt8(SIGTERM)
        XCTAssertEqual(Glibc.write(wake[1], &sig, 1), 1)
        wait(for: [done], timeout: 5)
        XCTAssertEqual(ending(), .signal(SIGTERM))
    }

    func testClosedOutputEndsTheSession() {
        signal(SIGPIPE, SIG_IGN)
        let (done, ending) = startRelay()
        close(output[0]); output[0] = -1
        write(master, "nobody listens\n")
        wait(for: [done], timeout: 5)
        XCTAssertEqual(ending(), .outputClosed)
    }
}
