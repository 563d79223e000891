import Glibc
import CVMDSys

/// A pthread mutex for the few places threads meet (vCPU threads, device
/// emulation in the VM process, logging). A class: its storage never moves.
public final class Mutex: @unchecked Sendable {
    fileprivate let mutex: UnsafeMutablePointer<pthread_mutex_t>
    public init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }
    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }
    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }
    @inline(__always)
    @discardableResult
    public func locked<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A condition variable used with a `Mutex`.
public final class Condition: @unchecked Sendable {
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    public init() {
        cond = .allocate(capacity: 1)
        pthread_cond_init(cond, nil)
    }
    deinit {
        pthread_cond_destroy(cond)
        cond.deallocate()
    }
    public func wait(_ mutex: Mutex) { pthread_cond_wait(cond, mutex.mutex) }
    /// Waits at most until `deadline` (CLOCK_REALTIME, the condition's clock).
    public func wait(_ mutex: Mutex, until deadline: timespec) {
        var d = deadline
        pthread_cond_timedwait(cond, mutex.mutex, &d)
    }
    public func broadcast() { pthread_cond_broadcast(cond) }
}

/// Threads of our own (vCPU threads), and the signal that wakes one out of
/// a blocking call such as KVM_RUN.
public enum Threads {
    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    /// Starts a joinable thread running `body`.
    public static func start(_ body: @escaping () -> Void) throws -> pthread_t {
        let box = Unmanaged.passRetained(Body(body)).toOpaque()
        var thread = pthread_t()
        let e = pthread_create(&thread, nil, { arg in
            Unmanaged<Body>.fromOpaque(arg!).takeRetainedValue().run()
            return nil
        }, box)
        if e != 0 {
            Unmanaged<Body>.fromOpaque(box).release()
            throw SystemError("pthread_create", code: e)
        }
        return thread
    }

    public static func join(_ thread: pthread_t) { pthread_join(thread, nil) }
    public static var current: pthread_t { pthread_self() }

    /// Interrupts `thread`'s blocking system call with the wake signal.
    public static func wake(_ thread: pthread_t) { pthread_kill(thread, cvmd_wake_signal()) }

    /// Installs the wake signal's handler (it does nothing, and does not
    /// restart the interrupted call). Once per process, before threads start.
    public static func installWakeHandler() throws {
        try sys("sigaction(SIGRTMIN)") { cvmd_install_wake_handler() }
    }

    /// A thread that must be woken receives the wake signal even if the
    /// thread that started it blocks it.
    public static func unblockWakeSignal() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, cvmd_wake_signal())
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}
