import XCTest
import Glibc
import VMDSystem

final class SandboxTests: XCTestCase {
    func testForbiddenOpenatKillsWithSIGSYS() throws {
        XCTAssertEqual(try ChildHarness.run("seccomp-openat"), .signaled(SIGSYS))
    }

    func testForbiddenExecveKillsWithSIGSYS() throws {
        XCTAssertEqual(try ChildHarness.run("seccomp-execve"), .signaled(SIGSYS))
    }

    func testAllowedCallsStillWork() throws {
        XCTAssertEqual(try ChildHarness.run("seccomp-allowed"), .exited(7))
    }

    func testFailRuleReturnsErrnoInsteadOfKilling() throws {
        XCTAssertEqual(try ChildHarness.run("seccomp-fail-errno"), .exited(8))
    }

    func testArgumentFilterAllowsOnlyTheNamedValue() throws {
        XCTAssertEqual(try ChildHarness.run("seccomp-arg-filter"), .signaled(SIGSYS))
    }

    func testLandlockDeniesFileSystem() throws {
        guard Sandbox.landlockABI > 0 else { throw XCTSkip("Landlock is not available on this kernel") }
        XCTAssertEqual(try ChildHarness.run("landlock"), .exited(9))
    }

    func testDropPrivilegesClearsGroupsAndSticks() throws {
        guard getuid() == 0 else { throw XCTSkip("needs root to change users") }
        XCTAssertEqual(try ChildHarness.run("drop-privileges"), .exited(10))
    }
}

/// Issue 9, item 5: the crash line is built without libc formatting.
final class CrashLineTests: XCTestCase {
    func testTheLineNamesTheSignalAndTheAddress() {
        XCTAssertEqual(Crash.format(signal: SIGSEGV, code: 1, address: 0xdead0000),
                       "crashed: SIGSEGV at address 0xdead0000 (si_code 1)")
        XCTAssertEqual(Crash.format(signal: SIGBUS, code: 2, address: 0), "crashed: SIGBUS at address 0x0 (si_code 2)")
        XCTAssertEqual(Crash.format(signal: SIGABRT, code: -6, address: nil), "crashed: SIGABRT (si_code -6)")
        XCTAssertEqual(Crash.format(signal: 42, code: 0, address: UInt.max),
                       "crashed: signal 42 at address 0xffffffffffffffff (si_code 0)")
    }
}
