import Glibc
import CVMDSys

extension Spawn {
    /// Like `spawnSelf`, but the child becomes this process's sibling: a
    /// child of this process's parent, which reaps it and is the one whose
    /// death its parent-death signal follows (clone with CLONE_PARENT).
    /// Only from a single-threaded process.
    public static func spawnSelfAsSibling(arguments: [String], descriptors: [Int32]) throws -> pid_t {
        var cargs: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        cargs.append(nil)
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let r = descriptors.withUnsafeBufferPointer { fds in
            cvmd_spawn_sibling(selfExecutable, cargs, fds.baseAddress, Int32(fds.count), &pid)
        }
        if r != 0 { throw SystemError("clone \(selfExecutable)", code: r) }
        return pid
    }
}
