// Image locks QEMU understands (its block/file-posix.c): open file
// description (OFD) read locks on single bytes, byte 100 + n for "holds
// permission n" and byte 200 + n for "lets no one else have permission n",
// where n is 0 consistent read, 1 write, 2 write unchanged, 3 resize. So an
// image a QEMU process writes is refused here and the other way round,
// while base images are shared read-only. The locks belong to the open file
// description: they last while any process (the device) holds the fd.
import Glibc

public enum QEMULocks {
    static let permBase: Int = 100
    static let sharedBase: Int = 200
    static let F_OFD_GETLK: Int32 = 36
    static let F_OFD_SETLK: Int32 = 37

    /// Takes QEMU's locks on `fd` for a writer (`write`) or a read-only
    /// user; returns what conflicts (nil: locked) or a system error text.
    public static func acquire(fd: Int32, write: Bool) -> String? {
        // A writer holds read, write and resize; a reader only read. Both
        // keep others from writing and resizing (as QEMU for a disk and for
        // the bases under it), and share "write unchanged".
        let held: [Int] = write ? [0, 1, 3] : [0]
        let unshared: [Int] = [1, 3]
        let names = ["consistent read", "write", "write unchanged", "resize"]
        for n in held {
            if let owner = holder(fd: fd, byte: sharedBase + n) {
                return "locked by another process\(owner) that does not share \(names[n]) access"
            }
        }
        for n in unshared {
            if let owner = holder(fd: fd, byte: permBase + n) {
                return "locked by another process\(owner) that has \(names[n]) access"
            }
        }
        for byte in held.map({ permBase + $0 }) + unshared.map({ sharedBase + $0 }) {
            var lock = flock()
            lock.l_type = Int16(F_RDLCK)
            lock.l_whence = Int16(SEEK_SET)
            lock.l_start = off_t(byte)
            lock.l_len = 1
            if fcntl(fd, F_OFD_SETLK, &lock) != 0 {
                let err = errno
                if err == EAGAIN || err == EACCES { return "locked by another process" }
                return "lock: \(String(cString: strerror(err)))"
            }
        }
        return nil
    }

    /// " (pid N)" if someone else's lock conflicts with a write lock on `byte`.
    static func holder(fd: Int32, byte: Int) -> String? {
        var lock = flock()
        lock.l_type = Int16(F_WRLCK)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = off_t(byte)
        lock.l_len = 1
        guard fcntl(fd, F_OFD_GETLK, &lock) == 0 else { return nil }
        guard lock.l_type != Int16(F_UNLCK) else { return nil }
        // OFD locks report no owner (-1); classic POSIX locks do.
        return lock.l_pid > 0 ? " (pid \(lock.l_pid))" : ""
    }
}
