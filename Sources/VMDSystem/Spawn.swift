import Glibc
import CVMDSys

/// How a child process ended, in words for the log.
public enum ExitStatus: Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public init(waitStatus s: Int32) {
        if cvmd_wifsignaled(s) != 0 { self = .signaled(cvmd_wtermsig(s)) }
        else { self = .exited(cvmd_wexitstatus(s)) }
    }

    public var description: String {
        switch self {
        case .exited(let c): return "exited with status \(c)"
        case .signaled(let s): return "killed by \(signalName(s))"
        }
    }
}

public enum Spawn {
    /// The running executable, re-executed for every child role.
    public static let selfExecutable = "/proc/self/exe"

    /// Starts `path` with `arguments` (argv[0] included); `descriptors[i]`
    /// becomes fd 3+i in the child and nothing else above 2 crosses exec.
    public static func spawn(_ path: String, arguments: [String],
                             descriptors: [Int32]) throws -> pid_t {
        var cargs: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        cargs.append(nil)
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let r = descriptors.withUnsafeBufferPointer { fds in
            cvmd_spawn(path, cargs, fds.baseAddress, Int32(fds.count), &pid)
        }
        if r != 0 { throw SystemError("posix_spawn \(path)", code: r) }
        return pid
    }

    /// Re-executes this binary as a child.
    public static func spawnSelf(arguments: [String], descriptors: [Int32]) throws -> pid_t {
        try spawn(selfExecutable, arguments: arguments, descriptors: descriptors)
    }

    /// Non-blocking reap of any child: (pid, status) or nil.
    public static func reapAny() -> (pid_t, ExitStatus)? {
        var status: Int32 = 0
        let pid = waitpid(-1, &status, WNOHANG)
        if pid <= 0 { return nil }
        return (pid, ExitStatus(waitStatus: status))
    }

    /// Blocking wait for one pid.
    public static func wait(_ pid: pid_t) throws -> ExitStatus {
        var status: Int32 = 0
        try sys("waitpid") { waitpid(pid, &status, 0) }
        return ExitStatus(waitStatus: status)
    }

    /// Makes orphaned descendants this process's children (to be reaped
    /// here) instead of init's.
    public static func becomeSubreaper() {
        _ = cvmd_set_child_subreaper()
    }

    /// Makes the kernel kill this process when its parent dies, so a crashed
    /// parent leaves no orphans; exits at once if the parent is already gone.
    public static func dieWithParent() {
        _ = cvmd_set_parent_death_signal(SIGKILL)
        if getppid() == 1 { _exit(1) }
    }
}
