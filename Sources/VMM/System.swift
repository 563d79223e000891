import CKVM
import Glibc

// The one place where the VM core calls generic libc (memory, fds, threads,
// signals). KVM ioctls live in KVM.swift. Errors carry errno in words.

enum System {
    /// Writes a line to stderr without buffering, safe from any thread.
    static func log(_ line: String) {
        var text = line
        if !text.hasSuffix("\n") { text += "\n" }
        text.withCString { p in _ = Glibc.write(2, p, strlen(p)) }
    }

    static func memfd(name: String, size: UInt64) throws -> Int32 {
        var fd: Int32 = -1
        let e = ckvm_memfd_create(name, size, &fd)
        if e != 0 { throw VMMError.system("memfd_create \(name) (\(size) bytes)", errno: e) }
        return fd
    }

    /// Maps `size` bytes of `fd` from `offset`, shared, read-write.
    static func mapShared(fd: Int32, size: Int, offset: Int = 0, what: String) throws -> UnsafeMutableRawPointer {
        let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(offset))
        guard p != MAP_FAILED, let p else { throw VMMError.system("mmap \(what)", errno: errno) }
        return p
    }

    static func unmap(_ p: UnsafeMutableRawPointer, size: Int) { munmap(p, size) }

    static func open(_ path: String, flags: Int32) throws -> Int32 {
        let fd = Glibc.open(path, flags | O_CLOEXEC)
        if fd < 0 { throw VMMError.system(path, errno: errno) }
        return fd
    }

    static func close(_ fd: Int32) { if fd >= 0 { _ = Glibc.close(fd) } }

    /// Reads a whole regular file (a kernel or initrd), capped at `limit` bytes;
    /// messages call it `name`.
    static func readFile(_ path: String, name: String? = nil, limit: Int) throws -> [UInt8] {
        let name = name ?? path
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw VMMError.system(name, errno: errno) }
        defer { close(fd) }
        var st = stat()
        if fstat(fd, &st) != 0 { throw VMMError.system(name, errno: errno) }
        if (st.st_mode & S_IFMT) != S_IFREG { throw VMMError("\(name): not a regular file") }
        if st.st_size > limit { throw VMMError("\(name): \(st.st_size) bytes, more than the \(limit) this VM can hold") }
        let size = Int(st.st_size)
        var bytes = [UInt8](repeating: 0, count: size)
        var done = 0
        while done < size {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, size - done, off_t(done)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw VMMError.system(name, errno: errno)
            }
            if n == 0 { throw VMMError("\(name): file shrank while being read") }
            done += n
        }
        return bytes
    }

    struct PTY { var master: Int32; var slave: Int32; var name: String }

    static func openPTY() throws -> PTY {
        var master: Int32 = -1, slave: Int32 = -1
        var name = [CChar](repeating: 0, count: 128)
        let e = ckvm_open_pty(&master, &slave, &name, name.count)
        if e != 0 { throw VMMError.system("console pty", errno: e) }
        return PTY(master: master, slave: slave, name: String(cString: name))
    }

    /// Non-blocking write; returns bytes written (0 when the pty is full).
    static func writeNonBlocking(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return 0 }
        while true {
            let n = Glibc.write(fd, base, bytes.count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            return 0  // EAGAIN (no reader draining), EIO (slave closed): drop, ring keeps it
        }
    }

    // MARK: threads

    /// Starts a joinable pthread running `body`.
    static func startThread(_ body: @escaping () -> Void) throws -> pthread_t {
        let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
        var tid = pthread_t()
        let e = pthread_create(&tid, nil, { arg in
            let body = Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue()
            body.run()
            return nil
        }, box)
        if e != 0 {
            Unmanaged<ThreadBody>.fromOpaque(box).release()
            throw VMMError.system("pthread_create", errno: e)
        }
        return tid
    }

    static func join(_ thread: pthread_t) { pthread_join(thread, nil) }
    static func kick(_ thread: pthread_t) { pthread_kill(thread, ckvm_kick_signal()) }
    static func currentThread() -> pthread_t { pthread_self() }

    static func installKickHandler() throws {
        let e = ckvm_install_kick_handler()
        if e != 0 { throw VMMError.system("sigaction(SIGRTMIN)", errno: e) }
    }

    /// Seconds since the epoch, UTC.
    static func now() -> Int64 { Int64(time(nil)) }
}

final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// A pthread mutex in stable memory (Swift may move a struct, never this).
final class Lock {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }
    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }
    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
    @discardableResult
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock(); defer { unlock() }
        return try body()
    }
    var raw: UnsafeMutablePointer<pthread_mutex_t> { mutex }
}

/// A condition variable used with a `Lock`.
final class Condition {
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    init() {
        cond = .allocate(capacity: 1)
        pthread_cond_init(cond, nil)
    }
    deinit {
        pthread_cond_destroy(cond)
        cond.deallocate()
    }
    func wait(_ lock: Lock) { pthread_cond_wait(cond, lock.raw) }
    /// Waits at most until `deadline` (CLOCK_REALTIME, the condition's clock).
    func wait(_ lock: Lock, until deadline: timespec) {
        var d = deadline
        pthread_cond_timedwait(cond, lock.raw, &d)
    }
    func broadcast() { pthread_cond_broadcast(cond) }
}

extension System {
    /// vCPU threads must receive the kick signal even if the thread that
    /// started them blocks it.
    static func unblockKickSignal() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, ckvm_kick_signal())
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}
