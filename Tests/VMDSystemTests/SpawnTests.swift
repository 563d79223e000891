import Foundation
import XCTest
import Glibc
import VMDSystem

final class SpawnTests: XCTestCase {
    func runShell(_ script: String, descriptors: [Int32]) throws -> (ExitStatus, String) {
        var p: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&p), 0)
        try FD.setCloseOnExec(p[0]); try FD.setCloseOnExec(p[1])
        // fd 3 in the child is the pipe's write end; the rest follow.
        let pid = try Spawn.spawn("/bin/sh", arguments: ["sh", "-c", script], descriptors: [p[1]] + descriptors)
        FD.close(p[1])
        var out = [UInt8]()
        while true {
            let chunk = try FD.read(p[0], count: 4096)
            if chunk.isEmpty { break }
            out += chunk
        }
        FD.close(p[0])
        return (try Spawn.wait(pid), String(decoding: out, as: UTF8.self))
    }

    func testOnlyMappedDescriptorsCrossExec() throws {
        // A descriptor that is NOT close-on-exec must still not leak.
        let leaky = open("/dev/null", O_RDONLY)
        try FD.setCloseOnExec(leaky, false)
        defer { FD.close(leaky) }
        let (a, b) = try FD.socketPair()
        let (c, d) = try FD.socketPair()
        defer { [a, b, c, d].forEach(FD.close) }
        // sleep opens nothing of its own: what it holds is what crossed exec.
        let pid = try Spawn.spawn("/bin/sleep", arguments: ["sleep", "10"], descriptors: [b, d])
        defer { kill(pid, SIGKILL); _ = try? Spawn.wait(pid) }
        var fds: [String] = []
        // Wait until sleep is asleep (clock_nanosleep or nanosleep): before
        // that the dynamic loader may hold a library open.
        for _ in 0..<500 {
            let call = (try? String(contentsOfFile: "/proc/\(pid)/syscall", encoding: .utf8))?
                .split(separator: " ").first.map(String.init) ?? ""
            if call == "230" || call == "35" { break }
            usleep(10_000)
        }
        fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        XCTAssertEqual(fds.compactMap { Int($0) }.sorted(), [0, 1, 2, 3, 4])
        let three = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/3")
        let mine = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(b)")
        XCTAssertEqual(three, mine, "fd 3 is the first descriptor given")
    }

    func testDescriptorsLandInOrderEvenWhenSourcesCollideWithTargets() throws {
        // Make sources that sit exactly on the target numbers, in reverse.
        let (a, b) = try FD.socketPair()
        let (c, d) = try FD.socketPair()
        defer { [a, b, c, d].forEach(FD.close) }
        let (st, out) = try runShell("echo one >&4; echo two >&5; echo done >&3", descriptors: [b, d])
        XCTAssertEqual(st, .exited(0))
        XCTAssertEqual(out, "done\n")
        XCTAssertEqual(String(decoding: try FD.read(a, count: 100), as: UTF8.self), "one\n")
        XCTAssertEqual(String(decoding: try FD.read(c, count: 100), as: UTF8.self), "two\n")
    }

    func testArgumentsAndExitStatus() throws {
        let (st, out) = try runShell("printf '%s|' \"$0\" >&3; exit 3", descriptors: [])
        XCTAssertEqual(out, "sh|")
        XCTAssertEqual(st, .exited(3))
    }

    func testSignalStatusIsReported() throws {
        let (st, _) = try runShell("kill -SYS $$", descriptors: [])
        XCTAssertEqual(st, .signaled(SIGSYS))
        XCTAssertEqual(st.description, "killed by SIGSYS")
    }

    func testMissingExecutableIsAnError() {
        XCTAssertThrowsError(try Spawn.spawn("/nonexistent/x", arguments: ["x"], descriptors: [])) {
            XCTAssertEqual(($0 as? SystemError)?.code, ENOENT)
        }
    }

    func testNoDescriptorLeakInTheParent() throws {
        let before = FD.openDescriptors()
        for _ in 0..<20 {
            let (a, b) = try FD.socketPair()
            let pid = try Spawn.spawn("/bin/true", arguments: ["true"], descriptors: [a, b])
            FD.close(a); FD.close(b)
            _ = try Spawn.wait(pid)
        }
        XCTAssertEqual(FD.openDescriptors(), before)
    }
}
