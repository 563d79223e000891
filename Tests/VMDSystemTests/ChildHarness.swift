import Foundation
import XCTest
import Glibc
import VMDSystem

/// Runs a piece of a test in a fresh process: the test binary re-executes
/// itself with a filter naming `ChildEntryTests/testChildEntry` and the
/// action in the environment, so sandboxing never touches the test runner.
enum ChildHarness {
    static let actionVariable = "VMDSYS_TEST_CHILD_ACTION"

    static func run(_ action: String) throws -> ExitStatus {
        setenv(actionVariable, action, 1)
        defer { unsetenv(actionVariable) }
        let pid = try Spawn.spawn("/proc/self/exe",
                                  arguments: ["xctest", "VMDSystemTests.ChildEntryTests/testChildEntry"],
                                  descriptors: [])
        return try Spawn.wait(pid)
    }
}

/// The child side. Does nothing unless the harness set the variable.
final class ChildEntryTests: XCTestCase {
    func testChildEntry() throws {
        guard let action = ProcessInfo.processInfo.environment[ChildHarness.actionVariable] else { return }
        let minimal = ["write", "exit", "exit_group", "rt_sigreturn", "futex", "getpid", "gettid",
                       "mmap", "munmap", "brk", "rt_sigprocmask", "tgkill"]
        switch action {
        case "seccomp-openat":
            try SeccompPolicy(name: "test", allowing: minimal).apply()
            _ = open("/etc/hostname", O_RDONLY)
            _exit(0)   // not reached: openat is not allowed
        case "seccomp-execve":
            try SeccompPolicy(name: "test", allowing: minimal).apply()
            _ = execv("/bin/true", [strdup("true"), nil])
            _exit(0)
        case "seccomp-allowed":
            try SeccompPolicy(name: "test", allowing: minimal).apply()
            _ = getpid()
            _exit(7)
        case "seccomp-fail-errno":
            try SeccompPolicy(name: "test", allowing: minimal, extra: [.fail("socket", errno: EACCES)]).apply()
            let r = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            _exit(r == -1 && errno == EACCES ? 8 : 1)
        case "seccomp-arg-filter":
            try SeccompPolicy(name: "test", allowing: minimal,
                              extra: [.allowIfArgEquals("kill", index: 1, value: 0)]).apply()
            // kill(pid, 0) is allowed; kill(pid, SIGCONT) is not.
            guard kill(getpid(), 0) == 0 else { _exit(1) }
            _ = kill(getpid(), SIGCONT)
            _exit(0)
        case "landlock":
            try Sandbox.setNoNewPrivileges()
            guard Sandbox.noNewPrivileges else { _exit(2) }
            try Sandbox.denyFileSystem()
            let fd = open("/etc/hostname", O_RDONLY)
            _exit(fd == -1 && errno == EACCES ? 9 : 1)
        case "drop-privileges":
            try Sandbox.dropPrivileges(to: Credentials(uid: 65534, gid: 65534))
            var groups = [gid_t](repeating: 0, count: 8)
            let n = getgroups(8, &groups)
            guard getuid() == 65534, geteuid() == 65534, getgid() == 65534, n == 0 else { _exit(1) }
            _exit(setuid(0) == -1 ? 10 : 1)
        default:
            _exit(99)
        }
    }
}
