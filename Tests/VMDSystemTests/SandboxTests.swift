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
